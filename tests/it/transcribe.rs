//! `tessera transcribe` with the fetched Whisper models on real speech (the JFK clip,
//! espeak-ng German): every output format, language detection and translation, prompts,
//! no-speech windows, long-form audio across windows, word timestamps, `--model` as a
//! directory or a Hugging Face repo id, several files, the progress bar on a terminal, and
//! one clear error (exit code 2) for each kind of bad input.

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

pub(crate) fn jfk(ext: &str) -> PathBuf {
    let p = tessera_home().join(format!("data/jfk.{ext}"));
    assert!(p.is_file(), "{} is missing: run scripts/fetch-models", p.display());
    p
}

fn run(args: &[&str]) -> Output {
    run_with_env(args, &[])
}

/// [`run`] with extra environment variables (an empty value removes the variable).
fn run_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.env_remove("RUST_LOG").env("HF_HUB_OFFLINE", "1").args(args);
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.output().expect("tessera runs")
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
    let mut out = wav_header((samples.len() * 2) as u32);
    for s in samples {
        out.extend(s.to_le_bytes());
    }
    out
}

/// The header of a 16-bit mono WAV at 16 kHz with `data_len` bytes of samples.
pub(crate) fn wav_header(data_len: u32) -> Vec<u8> {
    mono_16k_wav_header(1, 16, data_len)
}

/// A mono 16 kHz WAV header: `format` 1 (integer PCM) or 3 (float), `bits` per sample.
fn mono_16k_wav_header(format: u16, bits: u16, data_len: u32) -> Vec<u8> {
    let block = bits / 8;
    let mut out = Vec::with_capacity(44);
    out.extend(b"RIFF");
    out.extend((36 + data_len).to_le_bytes());
    out.extend(b"WAVEfmt ");
    out.extend(16u32.to_le_bytes());
    out.extend(format.to_le_bytes());
    out.extend(1u16.to_le_bytes());
    out.extend(16_000u32.to_le_bytes());
    out.extend((16_000 * u32::from(block)).to_le_bytes());
    out.extend(block.to_le_bytes());
    out.extend(bits.to_le_bytes());
    out.extend(b"data");
    out.extend(data_len.to_le_bytes());
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
    // With word timestamps, the next window starts at the last word's end instead of the
    // last timestamp token (openai's rule): the copies must come out the same.
    for extra in [None, Some("--word-timestamps")] {
        let mut args = vec!["transcribe", "--format", "json", "--beam-size", "1"];
        args.extend(extra);
        args.push(path.to_str().unwrap());
        check_six_copies(&serde_json::from_str(&ok(&args)).unwrap(), &starts, duration);
    }
}

fn check_six_copies(json: &serde_json::Value, starts: &[f64], duration: f64) {
    let text = words(json["text"].as_str().unwrap());
    assert_eq!(
        text.matches("ask not what your country can do for you").count(),
        6,
        "{json}"
    );
    let segments = json["segments"].as_array().unwrap();
    // Each copy starts a segment within a second of where it starts in the audio, and that
    // segment's text is the beginning of the speech: the windows and timestamps line up
    // with the audio, not just the text with itself.
    let opening = "and so my fellow americans";
    let starts_seen: Vec<(f64, String)> = segments
        .iter()
        .map(|s| (s["start"].as_f64().unwrap(), words(s["text"].as_str().unwrap())))
        .collect();
    for &start in starts {
        assert!(
            starts_seen
                .iter()
                .any(|(s, text)| (s - start).abs() <= 1.0 && text.starts_with(opening)),
            "no segment starting with {opening:?} starts within 1 s of {start}: {starts_seen:?}"
        );
    }
    for pair in segments.windows(2) {
        assert!(pair[0]["start"].as_f64() <= pair[1]["start"].as_f64());
    }
    assert!(segments.last().unwrap()["end"].as_f64().unwrap() <= duration + 0.1);
    let word_times: Vec<(f64, f64)> = segments
        .iter()
        .flat_map(|s| s["words"].as_array().into_iter().flatten())
        .map(|w| (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap()))
        .collect();
    for pair in word_times.windows(2) {
        assert!(pair[0].0 <= pair[1].0 && pair[0].0 <= pair[0].1, "{pair:?}");
    }
    assert!(word_times.iter().all(|&(_, end)| end <= duration + 0.1));
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

/// A committed fixture of the audio crate.
fn audio_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("audio/tests/fixtures")
        .join(name)
}

fn json_of(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("json output")
}

#[test]
fn base_detects_german_and_translates_it_into_english() {
    // Three German sentences by espeak-ng (see audio/tests/fixtures/README.md).
    let german = audio_fixture("german.ogg");
    let german = german.to_str().unwrap();
    let transcribed = json_of(&["transcribe", "--model", "whisper-base", "--format", "json", german]);
    assert_eq!(transcribed["language"], "de", "{transcribed}");
    let text = words(transcribed["text"].as_str().unwrap());
    for w in ["guten morgen", "heute sehr schön", "in den park", "kaffee mit milch"] {
        assert!(text.contains(w), "{w:?} not in {text:?}");
    }
    // Measured: "Good morning, the weather is very nice today and we're going to the park.
    // My master thinks of coffee with milk." (the same as faster-whisper's).
    let translated = json_of(&[
        "transcribe",
        "--model",
        "whisper-base",
        "--format",
        "json",
        "--task",
        "translate",
        german,
    ]);
    assert_eq!(translated["language"], "de", "{translated}");
    let english = words(translated["text"].as_str().unwrap());
    for w in ["good morning", "the weather", "today", "the park", "coffee with milk"] {
        assert!(english.contains(w), "{w:?} not in {english:?}");
    }
    for w in ["guten", "morgen", "wetter", "heute", "milch"] {
        assert!(!english.split(' ').any(|x| x == w), "German {w:?} in {english:?}");
    }
}

#[test]
fn a_lowercase_unpunctuated_prompt_gives_lowercase_unpunctuated_text() {
    // Classic Whisper: the prompt sets the style. Nothing of JFK's text is in it.
    let wav = jfk("wav");
    let wav = wav.to_str().unwrap();
    let plain = ok(&["transcribe", wav]);
    let prompted = ok(&[
        "transcribe",
        "--initial-prompt",
        "hello everyone welcome back to the show today we talk about politics and history",
        wav,
    ]);
    // Measured with tiny.en: "And so, my fellow Americans ask not what your country can
    // do for you / ask what you can do for your country." and, prompted, "and so my fellow
    // Americans ask not what your country can do for you ask what you can do for your
    // country".
    assert_eq!(words(&plain), words(JFK), "{plain}");
    assert_eq!(words(&prompted), words(JFK), "{prompted}");
    assert!(plain.trim_start().starts_with("And") && plain.contains('.'), "{plain}");
    assert!(prompted.trim_start().starts_with("and "), "{prompted}");
    assert!(!prompted.contains(['.', ',']), "{prompted}");
}

/// `seconds` of white noise at 16 kHz, uniform in ±0.2 of full scale (about -19 dBFS RMS),
/// from a fixed xorshift seed.
fn white_noise(seconds: usize) -> Vec<i16> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..seconds * 16_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let uniform = (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            (uniform * 0.2 * 32767.0) as i16
        })
        .collect()
}

#[test]
fn noise_is_no_speech_and_skipped_unless_the_test_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.wav");
    std::fs::write(&path, wav_bytes(&white_noise(10))).unwrap();
    let path = path.to_str().unwrap();
    // Default thresholds: tiny.en's no-speech probability for this window is 0.94 and no
    // decode reaches a mean log-probability of -1, so the window is skipped.
    let json = json_of(&["transcribe", "--format", "json", "--beam-size", "1", path]);
    assert_eq!(json["segments"].as_array().unwrap().len(), 0, "{json}");
    assert_eq!(json["text"], "", "{json}");
    // Without the no-speech test the same window is decoded into (garbage) segments, and
    // they carry the probability that skipped it above.
    let json = json_of(&[
        "transcribe",
        "--format",
        "json",
        "--beam-size",
        "1",
        "--no-speech-threshold",
        "-1",
        path,
    ]);
    let segments = json["segments"].as_array().unwrap();
    assert!(!segments.is_empty(), "{json}");
    for s in segments {
        assert!(s["no_speech_prob"].as_f64().unwrap() > 0.6, "{s}");
    }
}

/// Builds a Hugging Face hub cache under `root` holding `repo` (`owner/name`) at one
/// revision, its files linked as the hub links them (snapshot -> blob) to `files`.
fn hub_cache(root: &std::path::Path, repo: &str, files: &std::path::Path) {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    let revision = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo_dir.join("snapshots").join(revision);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), revision).unwrap();
    for entry in std::fs::read_dir(files).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".sha256") {
            continue;
        }
        let blob = repo_dir.join("blobs").join(format!("blob-{name}"));
        std::os::unix::fs::symlink(entry.path(), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/blob-{name}"), snapshot.join(&name)).unwrap();
    }
}

#[test]
fn model_as_a_ct2_directory_or_a_hub_repo_id_from_an_offline_cache() {
    let wav = jfk("wav");
    let wav = wav.to_str().unwrap();
    let fetched = tessera_home().join("models/whisper-tiny.en");
    let text = ok(&[
        "transcribe",
        "--model",
        fetched.to_str().unwrap(),
        "--beam-size",
        "1",
        wav,
    ]);
    assert_eq!(words(&text), words(JFK), "{text}");

    // faster-whisper's repo layout (config.json, model.bin, tokenizer.json, vocabulary.*),
    // found through HF_HUB_CACHE, then through HF_HOME (its `hub/`), never downloaded.
    let repo = "Systran/faster-whisper-tiny.en";
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    hub_cache(&cache, repo, &fetched);
    let args = ["transcribe", "--model", repo, "--beam-size", "1", wav];
    for env in [
        [("HF_HUB_CACHE", cache.to_str().unwrap()), ("HF_HOME", "/nonexistent")],
        [("HF_HUB_CACHE", ""), ("HF_HOME", home.path().to_str().unwrap())],
    ] {
        let o = run_with_env(&args, &env);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{env:?}: {err}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(words(&text), words(JFK), "{env:?}: {text}");
    }

    // A repo the offline cache lacks: one clear error, no download attempted.
    let o = run_with_env(
        &["transcribe", "--model", "Systran/faster-whisper-base", wav],
        &[("HF_HUB_CACHE", cache.to_str().unwrap())],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Systran/faster-whisper-base") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn a_bad_file_among_several_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.wav");
    std::fs::write(&bad, "these are not samples\n").unwrap();
    let good = jfk("wav");
    let (good, bad) = (good.to_str().unwrap(), bad.to_str().unwrap());
    // Either order: a failure neither stops the files after it nor loses those before.
    for files in [[good, bad], [bad, good]] {
        let o = run(&["transcribe", "--beam-size", "1", files[0], files[1]]);
        let err = String::from_utf8_lossy(&o.stderr);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(2), "{files:?}: {err}");
        assert_eq!(words(&text), words(JFK), "{files:?}: {text}");
        assert!(
            err.contains(&format!("{bad}: not a recognised audio file")),
            "{files:?}: {err}"
        );
        assert!(err.contains("1 of 2 files failed"), "{files:?}: {err}");
        assert!(!err.contains(good), "{files:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn the_progress_bar_is_drawn_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let wav = jfk("wav");
    let quote = |p: &std::path::Path| format!("'{}'", p.display());
    // util-linux's `script` gives the command a pseudo-terminal; stdout goes to a file,
    // so what `script` prints is the command's stderr, as a user's terminal shows it.
    let command = format!(
        "{} transcribe --beam-size 1 {} > {}",
        quote(std::path::Path::new(env!("CARGO_BIN_EXE_tessera"))),
        quote(&wav),
        quote(&out)
    );
    let o = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("util-linux `script` is installed (it gives the test a terminal)");
    let terminal = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{terminal} {}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(words(&text), words(JFK), "{text}");
    // The bar: the file name, the bar's blocks and a percentage, redrawn in place.
    assert!(terminal.contains("jfk.wav "), "{terminal:?}");
    assert!(terminal.contains(['█', '░']) && terminal.contains('%'), "{terminal:?}");
    assert!(terminal.contains('\r'), "{terminal:?}");
    assert!(!text.contains(['█', '░', '\r']), "{text:?}");

    // No terminal: stderr carries no bar and no terminal control codes.
    let o = run(&["transcribe", "--beam-size", "1", wav.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains(['█', '░', '\r', '\u{1b}']), "{err:?}");
    assert!(!err.contains("jfk.wav"), "{err:?}");
}

/// A 32-bit float mono WAV at 16 kHz.
fn wav_f32_bytes(samples: &[f32]) -> Vec<u8> {
    let mut out = mono_16k_wav_header(3, 32, (samples.len() * 4) as u32);
    for s in samples {
        out.extend(s.to_le_bytes());
    }
    out
}

/// `audio/tests/fixtures/gen_vad.py`'s composite (silence, speech, silence, a 440 Hz tone,
/// silence, speech, silence: 22.5 s) and faster-whisper's reference for it.
fn vad_composite(dir: &std::path::Path) -> (PathBuf, serde_json::Value) {
    let jfk: Vec<f32> = jfk_samples().iter().map(|&s| f32::from(s) / 32768.0).collect();
    let mut samples = vec![0f32; 24_000];
    samples.extend_from_slice(&jfk[..80_000]);
    samples.extend(std::iter::repeat_n(0f32, 64_000));
    samples
        .extend((0..16_000).map(|n| (0.1 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 16_000.0).sin()) as f32));
    samples.extend(std::iter::repeat_n(0f32, 48_000));
    samples.extend_from_slice(&jfk[80_000..]);
    samples.extend(std::iter::repeat_n(0f32, 32_000));
    let path = dir.join("composite.wav");
    std::fs::write(&path, wav_f32_bytes(&samples)).unwrap();
    let reference = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("audio/tests/fixtures/vad_reference.json");
    let reference: serde_json::Value = serde_json::from_slice(&std::fs::read(reference).unwrap()).unwrap();
    (path, reference["inputs"]["composite"].clone())
}

#[test]
fn vad_transcribes_only_the_speech_with_the_files_times_as_faster_whisper_does() {
    let dir = tempfile::tempdir().unwrap();
    let (path, reference) = vad_composite(dir.path());
    let path = path.to_str().unwrap();
    let json = json_of(&["transcribe", "--vad", "--format", "json", path]);
    // faster-whisper (tiny.en, beam 5, vad_filter=True): one segment over both pieces of
    // speech, the 9.7 s left out between them added back.
    let want = reference["transcription"]["segments"].as_array().unwrap();
    let got = json["segments"].as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{json}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["text"], w["text"], "{json}");
        for key in ["start", "end"] {
            let (g, w) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
            assert!((g - w).abs() <= 0.021, "{key}: {g} vs faster-whisper's {w}");
        }
    }
    assert_eq!(json["duration"].as_f64(), Some(22.5), "{json}");
    assert_eq!(words(json["text"].as_str().unwrap()), words(JFK));

    // Word times fall inside the speech the VAD kept (1.42-6.22 s and 14.51-22.5 s, with
    // its padding), in order, and the words of the second piece after the gap. A word cut
    // by the join ("what", at the cut at 5 s of the clip) is mapped through the piece its
    // middle falls in, as faster-whisper maps it, so it may start up to a word before it.
    let json = json_of(&["transcribe", "--vad", "--word-timestamps", "--format", "json", path]);
    let words_json: Vec<&serde_json::Value> = json["segments"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["words"].as_array().unwrap())
        .collect();
    assert!(words_json.len() >= 20, "{json}");
    let mut last = 0.0;
    for w in &words_json {
        let (start, end) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
        assert!(start >= last - 1e-6 && end >= start, "{w} after {last}");
        let inside = (1.42..=6.23).contains(&start) || (14.0..=22.5).contains(&start);
        assert!(inside, "{w} starts outside the speech");
        last = end;
    }
    // Word for word and time for time faster-whisper's (word_timestamps=True, vad_filter=True).
    let want_words = reference["transcription"]["words"].as_array().unwrap();
    assert_eq!(words_json.len(), want_words.len(), "{json}");
    for (g, w) in words_json.iter().zip(want_words) {
        assert_eq!(g["word"], w["word"], "{g} vs {w}");
        for key in ["start", "end"] {
            let (gt, wt) = (g[key].as_f64().unwrap(), w[key].as_f64().unwrap());
            assert!((gt - wt).abs() <= 0.021, "{key} of {g}: faster-whisper has {w}");
        }
    }
    // The clip is cut at 5 s, after "ask not": those seven words come from the first piece,
    // the rest from the second, 9.71 s later in the file.
    let text: Vec<String> = words_json.iter().map(|w| words(w["word"].as_str().unwrap())).collect();
    assert_eq!(text[..7].join(" "), "and so my fellow americans ask not", "{text:?}");
    for (w, t) in words_json.iter().zip(&text).take(7) {
        assert!(w["end"].as_f64().unwrap() < 6.3, "{t}: {w}");
    }
    for (w, t) in words_json.iter().zip(&text).skip(8) {
        assert!(w["start"].as_f64().unwrap() > 14.5, "{t}: {w}");
    }
}

#[test]
fn vad_on_audio_without_speech_gives_an_empty_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-speech.wav");
    let mut samples: Vec<f32> = (0..32_000).map(|n| 0.2 * (n as f32 * 0.1).sin()).collect();
    samples.extend(std::iter::repeat_n(0f32, 48_000));
    samples.extend(white_noise(3).iter().map(|&s| f32::from(s) / 32768.0 * 0.1));
    std::fs::write(&path, wav_f32_bytes(&samples)).unwrap();
    let json = json_of(&["transcribe", "--vad", "--format", "json", path.to_str().unwrap()]);
    assert_eq!(json["segments"].as_array().unwrap().len(), 0, "{json}");
    assert_eq!(json["text"], "", "{json}");
    assert_eq!(json["duration"].as_f64(), Some(8.0), "{json}");
}

#[test]
fn bad_vad_settings_are_clear_errors() {
    let jfk = jfk("wav");
    let jfk = jfk.to_str().unwrap();
    let fails = |args: &[&str], needle: &str| {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    fails(
        &["transcribe", "--vad", "--vad-threshold", "1.5", jfk],
        "--vad-threshold 1.5: must be between 0 and 1",
    );
    fails(
        &["transcribe", "--vad", "--vad-model", "/nonexistent/vad.onnx", jfk],
        "/nonexistent/vad.onnx",
    );
    // A file that is not the model.
    fails(
        &["transcribe", "--vad", "--vad-model", jfk, jfk],
        "not a readable ONNX model",
    );
    // VAD settings without --vad.
    fails(&["transcribe", "--vad-threshold", "0.3", jfk], "--vad");
}

#[test]
fn audio_from_a_pipe_transcribes_with_and_without_vad() {
    // A FIFO can be read once: the VAD's pass must keep a short file's speech.
    let dir = tempfile::tempdir().unwrap();
    for vad in [false, true] {
        let fifo = dir.path().join(format!("jfk-{vad}.fifo"));
        assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(fifo, std::fs::read(jfk("mp3")).unwrap()))
        };
        let mut args = vec!["transcribe", "--format", "json", fifo.to_str().unwrap()];
        if vad {
            args.push("--vad");
        }
        let json = json_of(&args);
        writer.join().unwrap().unwrap();
        assert_eq!(words(json["text"].as_str().unwrap()), words(JFK), "vad {vad}: {json}");
        let duration = json["duration"].as_f64().unwrap();
        assert!((duration - 11.0).abs() < 0.1, "vad {vad}: {json}");
    }
}
