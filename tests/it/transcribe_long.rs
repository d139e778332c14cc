//! `tessera transcribe` on long audio and on the decode loop's decisions: a 3-hour file in
//! bounded memory (its spectrogram streamed), and temperature fallback as the thresholds
//! ask for it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::transcribe::{jfk, wav_header};

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_logged(args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env_remove("RUST_LOG")
        .env("HF_HUB_OFFLINE", "1")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("tessera runs");
    Run {
        status: output.status,
        stdout: String::from_utf8(output.stdout).expect("utf-8 output"),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The peak memory a transcription logged (`peak_rss_mib=` of its `transcribed` event).
/// The process reports it itself: `wait4`'s figure for a child includes the parent's size
/// when it was spawned (the test process, which other tests make large).
fn logged_peak_rss_mib(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("transcribed"))
        .unwrap_or_else(|| panic!("no `transcribed` event: {stderr}"));
    let rest = &line[line.find("peak_rss_mib=").expect("a peak_rss_mib field") + "peak_rss_mib=".len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn a_three_hour_file_transcribes_in_bounded_memory() {
    // 3 h of 16 kHz s16 silence: 345.6 MB as a sparse file (no disk, little time). Held in
    // memory it would be 691 MB of samples and 345 MB of spectrogram; streamed, the
    // process needs the model and a few windows.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three_hours.wav");
    let data_len = 3 * 3600 * 16_000 * 2;
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&wav_header(data_len)).unwrap();
    file.set_len(44 + data_len as u64).unwrap();
    drop(file);

    let run = run_logged(
        &["transcribe", "--format", "json", path.to_str().unwrap()],
        &[("TESSERA_LOG", "info"), ("NO_COLOR", "1")],
    );
    assert!(run.status.success(), "{}", run.stderr);
    let out = json(&run.stdout);
    assert_eq!(out["duration"].as_f64(), Some(10_800.0));
    assert_eq!(out["segments"].as_array().map(Vec::len), Some(0), "silence has no text");
    assert_eq!(out["text"], "");
    let peak = logged_peak_rss_mib(&run.stderr);
    eprintln!("peak memory of a 3-hour transcription: {peak} MiB");
    assert!(peak > 0, "the peak should be measured: {}", run.stderr);
    assert!(peak < 450, "peak memory {peak} MiB for a 3-hour file");
}

/// A WAV of `lead_seconds` of silence, then the JFK clip.
fn jfk_after_silence(dir: &Path, lead_seconds: usize) -> PathBuf {
    let jfk = tessera_audio::load_audio(jfk("wav")).unwrap();
    let lead = lead_seconds * 16_000;
    let path = dir.join(format!("jfk_after_{lead_seconds}s.wav"));
    let data_len = ((lead + jfk.len()) * 2) as u32;
    let mut bytes = wav_header(data_len);
    bytes.resize(44 + lead * 2, 0);
    bytes.extend(jfk.iter().flat_map(|&x| ((x * 32767.0) as i16).to_le_bytes()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn speech_past_the_in_memory_limit_is_transcribed_from_the_stream_as_in_memory() {
    // JFK after 605 s of silence is over the 10-minute in-memory limit, so its spectrogram
    // streams; after 5 s it is held whole. The window at 600 s of the first holds exactly
    // what the window at 0 s of the second holds (silence elsewhere does not change the
    // spectrogram's maximum), so the segments must be the same, 600 s later.
    let dir = tempfile::tempdir().unwrap();
    let transcribe = |path: &Path| {
        let run = run_logged(
            &[
                "transcribe",
                "--beam-size",
                "1",
                "--format",
                "json",
                path.to_str().unwrap(),
            ],
            &[("TESSERA_LOG", "tessera_audio=debug")],
        );
        assert!(run.status.success(), "{}", run.stderr);
        (run.stderr.contains("streaming its spectrogram"), json(&run.stdout))
    };
    let (streamed, long) = transcribe(&jfk_after_silence(dir.path(), 605));
    assert!(streamed, "a 616 s file should stream its spectrogram");
    let (streamed, short) = transcribe(&jfk_after_silence(dir.path(), 5));
    assert!(!streamed, "a 16 s file should be held in memory");

    assert!(
        short["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("ask not what your country can do for you"),
        "{short}"
    );
    assert_eq!(long["text"], short["text"]);
    let (long, short) = (
        long["segments"].as_array().unwrap(),
        short["segments"].as_array().unwrap(),
    );
    assert_eq!(long.len(), short.len());
    for (l, s) in long.iter().zip(short) {
        assert_eq!(l["text"], s["text"]);
        for key in ["start", "end"] {
            let (l, s) = (l[key].as_f64().unwrap(), s[key].as_f64().unwrap());
            assert!((l - s - 600.0).abs() < 0.01, "{key}: {l} vs {s} + 600");
        }
    }
}

/// `window decoded` debug events of a run: the temperatures tried, in order.
fn temperatures_tried(stderr: &str) -> Vec<f32> {
    stderr
        .lines()
        .filter(|l| l.contains("window decoded"))
        .map(|l| {
            let rest = &l[l.find("temperature=").expect("a temperature field") + "temperature=".len()..];
            rest.split_whitespace().next().unwrap().parse().unwrap()
        })
        .collect()
}

fn transcribe_logged(audio: &Path, extra: &[&str]) -> (Vec<f32>, serde_json::Value) {
    let mut args = vec!["transcribe", "--beam-size", "1", "--format", "json"];
    args.extend_from_slice(extra);
    args.push(audio.to_str().unwrap());
    let run = run_logged(&args, &[("TESSERA_LOG", "tessera_audio=debug"), ("NO_COLOR", "1")]);
    assert!(run.status.success(), "{}", run.stderr);
    (temperatures_tried(&run.stderr), json(&run.stdout))
}

#[test]
fn temperature_fallback_runs_when_a_window_fails_the_thresholds_and_only_then() {
    let jfk = jfk("wav");
    // Clean speech passes at temperature 0: one decode.
    let (tried, out) = transcribe_logged(&jfk, &[]);
    assert_eq!(tried, vec![0.0]);
    assert_eq!(out["segments"][0]["temperature"].as_f64(), Some(0.0));
    // A log-probability threshold no text can meet: every temperature of the schedule is
    // tried, coolest first, and the window still gets the best attempt's text.
    let (tried, out) = transcribe_logged(&jfk, &["--logprob-threshold", "0", "--temperature-increment", "0.5"]);
    assert_eq!(tried, vec![0.0, 0.5, 1.0]);
    assert!(
        out["text"].as_str().unwrap().to_lowercase().contains("ask not"),
        "{out}"
    );
    // The same through the compression-ratio test.
    let (tried, _) = transcribe_logged(
        &jfk,
        &[
            "--compression-ratio-threshold",
            "0.1",
            "--temperature-increment",
            "0.25",
        ],
    );
    assert_eq!(tried, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    // With both tests disabled nothing falls back.
    let (tried, _) = transcribe_logged(
        &jfk,
        &["--compression-ratio-threshold", "-1", "--logprob-threshold=-inf"],
    );
    assert_eq!(tried, vec![0.0]);
}
