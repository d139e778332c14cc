//! `tessera transcribe` with the fetched Whisper models on real speech (the JFK clip):
//! every output format, language detection, long-form audio across windows, word
//! timestamps, and one clear error (exit code 2) for each kind of bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

const JFK: &str =
    "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.";

fn tessera_home() -> PathBuf {
    match std::env::var_os("TESSERA_HOME").filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/tessera"),
    }
}

fn jfk(ext: &str) -> PathBuf {
    let p = tessera_home().join(format!("data/jfk.{ext}"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models", p.display());
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .args(args)
        .output()
        .expect("tessera runs")
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{args:?}: {err}");
    String::from_utf8(o.stdout).expect("utf-8 output")
}

/// Lower case, letters and spaces only.
fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn both_models_transcribe_jfk_word_for_word_with_beams_and_greedy() {
    let wav = jfk("wav");
    for model in ["whisper-tiny.en", "whisper-base"] {
        for beams in ["5", "1"] {
            let text = ok(&[
                "transcribe",
                "--model",
                model,
                "--beam-size",
                beams,
                wav.to_str().unwrap(),
            ]);
            assert_eq!(words(&text), words(JFK), "{model}, beam size {beams}: {text}");
        }
    }
}

#[test]
fn tiny_en_transcribes_jfk_as_json_segments() {
    let wav = jfk("wav");

    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "transcribe",
        "--format",
        "json",
        "--model",
        "whisper-tiny.en",
        wav.to_str().unwrap(),
    ]))
    .expect("json output");
    assert_eq!(json["language"], "en");
    assert!((json["duration"].as_f64().unwrap() - 11.0).abs() < 0.1, "{json}");
    assert_eq!(words(json["text"].as_str().unwrap()), words(JFK));
    let segments = json["segments"].as_array().unwrap();
    assert!(!segments.is_empty());
    let mut last_end = 0.0;
    for s in segments {
        let (start, end) = (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap());
        assert!(start >= last_end - 1e-6 && end > start && end <= 11.05, "{s}");
        last_end = end;
        assert!(s["avg_logprob"].as_f64().unwrap() > -1.0, "{s}");
        assert!(s["no_speech_prob"].as_f64().unwrap() < 0.6, "{s}");
        assert_eq!(s["temperature"], 0.0);
        assert!(s["compression_ratio"].as_f64().unwrap() < 2.4);
        assert!(s.get("words").is_none());
    }
}

/// Seconds of `HH:MM:SS,mmm` (srt) or `[HH:]MM:SS.mmm` (vtt).
fn cue_time(t: &str, srt: bool) -> f64 {
    let (clock, ms) = t
        .split_once(if srt { ',' } else { '.' })
        .unwrap_or_else(|| panic!("bad time {t:?}"));
    assert_eq!(ms.len(), 3, "{t}");
    let parts: Vec<f64> = clock.split(':').map(|p| p.parse().unwrap()).collect();
    assert!(parts.len() == 3 || (!srt && parts.len() == 2), "{t}");
    parts.iter().fold(0.0, |acc, p| acc * 60.0 + p) + ms.parse::<f64>().unwrap() / 1000.0
}

/// Parses subtitle cues strictly; returns how many there are.
fn parse_cues(text: &str, srt: bool) -> usize {
    let mut last_end = 0.0;
    let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    for (i, block) in blocks.iter().enumerate() {
        let mut lines = block.lines();
        if srt {
            assert_eq!(lines.next().unwrap().parse::<usize>().unwrap(), i + 1, "{block}");
        }
        let (start, end) = lines.next().unwrap().split_once(" --> ").expect("a cue timing line");
        let (start, end) = (cue_time(start, srt), cue_time(end, srt));
        assert!(start >= last_end - 1e-9 && end > start, "{block}");
        last_end = end;
        let body: Vec<&str> = lines.collect();
        assert!(
            !body.is_empty() && body.iter().all(|l| !l.trim().is_empty() && !l.contains("-->")),
            "{block}"
        );
    }
    blocks.len()
}

#[test]
fn mp3_subtitles_and_output_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mp3 = jfk("mp3");
    for format in ["srt", "vtt", "tsv"] {
        let o = run(&[
            "transcribe",
            "--format",
            format,
            "--output-dir",
            dir.path().to_str().unwrap(),
            "--beam-size",
            "1",
            mp3.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout.is_empty(), "the transcript goes to the file");
        let out = std::fs::read_to_string(dir.path().join(format!("jfk.{format}"))).unwrap();
        match format {
            "srt" => assert!(parse_cues(&out, true) >= 1, "{out}"),
            "vtt" => {
                assert!(out.starts_with("WEBVTT\n\n"), "{out}");
                assert!(parse_cues(&out["WEBVTT\n\n".len()..], false) >= 1, "{out}");
            }
            _ => assert!(out.starts_with("start\tend\ttext\n0\t"), "{out}"),
        }
        assert!(
            words(&out).contains("ask not what your country can do for you"),
            "{out}"
        );
    }
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn base_detects_english_and_word_timestamps_are_ordered() {
    let wav = jfk("wav");
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "transcribe",
        "--model",
        "whisper-base",
        "--format",
        "json",
        "--word-timestamps",
        wav.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(json["language"], "en");
    assert_eq!(words(json["text"].as_str().unwrap()), words(JFK));
    let mut all = Vec::new();
    for s in json["segments"].as_array().unwrap() {
        for w in s["words"].as_array().expect("words with --word-timestamps") {
            all.push((
                w["word"].as_str().unwrap().to_owned(),
                w["start"].as_f64().unwrap(),
                w["end"].as_f64().unwrap(),
            ));
        }
    }
    // Translation into English of English speech is the speech; a prompt does not derail it.
    let translated = ok(&[
        "transcribe",
        "--model",
        "whisper-base",
        "--task",
        "translate",
        "--language",
        "en",
        "--beam-size",
        "1",
        wav.to_str().unwrap(),
    ]);
    assert!(
        words(&translated).contains("ask not what your country can do for you"),
        "{translated}"
    );
    let prompted = ok(&[
        "transcribe",
        "--initial-prompt",
        "President Kennedy's inaugural address, January 1961.",
        wav.to_str().unwrap(),
    ]);
    assert_eq!(words(&prompted), words(JFK), "{prompted}");

    let joined: String = all.iter().map(|(w, _, _)| w.as_str()).collect();
    assert_eq!(words(&joined), words(JFK));
    for pair in all.windows(2) {
        assert!(pair[0].1 <= pair[1].1 && pair[0].1 <= pair[0].2, "{pair:?}");
    }
    // "Americans" is spoken about 1.6 s into the clip, "country" last, before 11 s.
    let at = |word: &str| all.iter().find(|(w, _, _)| w.contains(word)).unwrap().1;
    assert!((1.0..2.5).contains(&at("Americans")), "{all:?}");
    assert!(all.last().unwrap().2 <= 11.1);
}

/// A 16-bit mono WAV of `samples` at 16 kHz.
fn wav_bytes(samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend(b"RIFF");
    out.extend((36 + data_len).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(16_000u32.to_le_bytes());
    out.extend(32_000u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(16u16.to_le_bytes());
    out.extend(b"data");
    out.extend(data_len.to_le_bytes());
    for s in samples {
        out.extend(s.to_le_bytes());
    }
    out
}

fn jfk_samples() -> Vec<i16> {
    let bytes = std::fs::read(jfk("wav")).unwrap();
    let data = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    bytes[data..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn long_audio_is_transcribed_window_after_window() {
    // Six copies of JFK with 2.5 s of silence between them: over 60 s, three windows.
    let speech = jfk_samples();
    let gap = 40_000;
    let mut samples = Vec::new();
    let mut starts = Vec::new();
    for i in 0..6 {
        if i > 0 {
            samples.extend(std::iter::repeat_n(0i16, gap));
        }
        starts.push(samples.len() as f64 / 16_000.0);
        samples.extend(&speech);
    }
    let duration = samples.len() as f64 / 16_000.0;
    assert!(duration > 60.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("six.wav");
    std::fs::write(&path, wav_bytes(&samples)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "transcribe",
        "--format",
        "json",
        "--beam-size",
        "1",
        path.to_str().unwrap(),
    ]))
    .unwrap();
    let text = words(json["text"].as_str().unwrap());
    assert_eq!(
        text.matches("ask not what your country can do for you").count(),
        6,
        "{json}"
    );
    let segments = json["segments"].as_array().unwrap();
    // Each copy starts a segment within a second of where it starts in the audio.
    let segment_starts: Vec<f64> = segments.iter().map(|s| s["start"].as_f64().unwrap()).collect();
    for start in starts {
        assert!(
            segment_starts.iter().any(|s| (s - start).abs() <= 1.0),
            "no segment starts near {start}: {segment_starts:?}"
        );
    }
    for pair in segments.windows(2) {
        assert!(pair[0]["start"].as_f64() <= pair[1]["start"].as_f64());
    }
    assert!(segments.last().unwrap()["end"].as_f64().unwrap() <= duration + 0.1);
}

#[test]
fn silence_gives_an_empty_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silence.wav");
    std::fs::write(&path, wav_bytes(&vec![0i16; 16_000 * 5])).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["transcribe", "--format", "json", path.to_str().unwrap()])).unwrap();
    assert_eq!(json["segments"].as_array().unwrap().len(), 0, "{json}");
    assert_eq!(json["text"], "");
    // Zero-length audio too.
    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, wav_bytes(&[])).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["transcribe", "--format", "json", empty.to_str().unwrap()])).unwrap();
    assert_eq!(json["duration"], 0.0);
    assert_eq!(json["text"], "");
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wav");
    std::fs::write(&text_file, "these are not samples\n").unwrap();
    let empty = dir.path().join("nothing.mp3");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.flac");
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![text_file.display().to_string()],
            vec![text_file.display().to_string(), "not a recognised audio file".into()],
        ),
        (
            vec![empty.display().to_string()],
            vec![empty.display().to_string(), "empty".into()],
        ),
        (vec![missing.display().to_string()], vec![missing.display().to_string()]),
        (
            vec![
                "--model".into(),
                "no-such-model".into(),
                jfk("wav").display().to_string(),
            ],
            vec!["no-such-model".into()],
        ),
        (
            vec!["--language".into(), "de".into(), jfk("wav").display().to_string()],
            vec!["English-only".into()],
        ),
        (
            vec!["--format".into(), "doc".into(), jfk("wav").display().to_string()],
            vec!["doc".into()],
        ),
        (
            vec!["--task".into(), "translate".into(), jfk("wav").display().to_string()],
            vec!["English-only".into()],
        ),
        (
            vec![
                "--model".into(),
                "whisper-base".into(),
                "--language".into(),
                "xx".into(),
                jfk("wav").display().to_string(),
            ],
            vec!["\"xx\"".into(), "not one the model knows".into()],
        ),
    ];
    for (args, needles) in cases {
        let mut all = vec!["transcribe".to_owned()];
        all.extend(args.iter().cloned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let o = run(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for n in &needles {
            assert!(err.contains(n.as_str()), "{args:?}: {err} lacks {n}");
        }
        assert!(!err.contains("panicked"), "{err}");
    }
}
