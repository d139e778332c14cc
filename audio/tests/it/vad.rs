//! Voice activity detection against faster-whisper 1.2.1 (`tests/fixtures/vad_reference.json`,
//! written by `gen_vad.py` with onnxruntime): Silero VAD v6's per-window probabilities on
//! the JFK clip and on a composite of speech, silence and a tone; the speech chunks for six
//! option sets (hysteresis, minimum speech and silence, splitting long speech, padding);
//! the map from the joined speech's times back to the file's; and the speech-only reader.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;
use tessera_audio::vad::{
    SpeechChunk, SpeechOnly, TimestampMap, VadOptions, detect_speech, speech_probabilities, speech_timestamps,
};
use tessera_audio::{SampleReader, load_audio};
use tessera_models::silero_vad::SileroVad;

use crate::common::{cached, fixture, mono, write_wav};

#[derive(Deserialize)]
struct Reference {
    inputs: std::collections::HashMap<String, Input>,
}

#[derive(Deserialize)]
struct Input {
    num_samples: usize,
    probs: Vec<f32>,
    timestamps: Vec<Timestamps>,
    #[serde(default)]
    time_map: Vec<TimeMapSample>,
}

#[derive(Deserialize)]
struct Timestamps {
    options: Options,
    speeches: Vec<SpeechChunk>,
}

#[derive(Deserialize)]
struct Options {
    threshold: f64,
    neg_threshold: Option<f64>,
    min_speech_duration_ms: u32,
    max_speech_duration_s: Option<f32>,
    min_silence_duration_ms: u32,
    speech_pad_ms: u32,
}

impl Options {
    fn vad(&self) -> VadOptions {
        VadOptions {
            threshold: self.threshold,
            neg_threshold: self.neg_threshold,
            min_speech_duration_ms: self.min_speech_duration_ms,
            max_speech_duration_s: self.max_speech_duration_s.unwrap_or(f32::INFINITY),
            min_silence_duration_ms: self.min_silence_duration_ms,
            speech_pad_ms: self.speech_pad_ms,
        }
    }
}

#[derive(Deserialize)]
struct TimeMapSample {
    t: f32,
    start: f32,
    end: f32,
}

fn reference() -> &'static Reference {
    static R: OnceLock<Reference> = OnceLock::new();
    R.get_or_init(|| {
        let path = fixture("vad_reference.json");
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

pub fn vad() -> &'static SileroVad {
    static VAD: OnceLock<SileroVad> = OnceLock::new();
    VAD.get_or_init(|| {
        let path = cached("models/silero-vad/silero_vad_v6.onnx");
        SileroVad::load(&path).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// The JFK clip as float32 samples (`int16 / 32768`).
fn jfk() -> Vec<f32> {
    load_audio(cached("data/jfk.wav")).unwrap()
}

/// `gen_vad.py`'s composite: silence, speech, silence, a 440 Hz tone, silence, speech,
/// silence.
pub fn composite() -> Vec<f32> {
    let jfk = jfk();
    let mut out = vec![0f32; 24_000];
    out.extend_from_slice(&jfk[..80_000]);
    out.extend(std::iter::repeat_n(0f32, 64_000));
    out.extend((0..16_000).map(|n| (0.1 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / 16_000.0).sin()) as f32));
    out.extend(std::iter::repeat_n(0f32, 48_000));
    out.extend_from_slice(&jfk[80_000..]);
    out.extend(std::iter::repeat_n(0f32, 32_000));
    out
}

/// `samples` as a 32-bit float WAV in `dir` (decoded back exactly).
pub fn write_composite(dir: &Path) -> PathBuf {
    let path = dir.join("composite.wav");
    write_wav(&path, 16_000, 32, true, &mono(&composite()));
    path
}

#[test]
fn probabilities_match_faster_whisper() {
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("jfk_cut.wav");
    write_wav(&cut, 16_000, 32, true, &mono(&jfk()[..40_436]));
    for (name, path) in [
        ("jfk", cached("data/jfk.wav")),
        ("composite", write_composite(dir.path())),
        // Its last window is long enough for faster-whisper's context quirk to matter (its
        // probability moves by 1.7e-3 without it, `gen_vad.py` reports).
        ("jfk_cut", cut),
    ] {
        let want = &reference().inputs[name];
        let (got, samples) = speech_probabilities(vad(), &path, |_| {}).unwrap();
        assert_eq!(samples, want.num_samples, "{name}");
        assert_eq!(got.len(), want.probs.len(), "{name}: windows");
        let worst = got
            .iter()
            .zip(&want.probs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{name}: max probability difference {worst}");
        eprintln!("{name}: {} windows, max probability difference {worst:e}", got.len());
    }
    // The composite has speech and non-speech windows both.
    let probs = &reference().inputs["composite"].probs;
    assert!(probs.iter().any(|&p| p > 0.9) && probs.iter().any(|&p| p < 0.05));
}

#[test]
fn speech_chunks_match_faster_whisper_for_every_option_set() {
    for (name, input) in &reference().inputs {
        assert_eq!(input.timestamps.len(), 6, "{name}");
        for t in &input.timestamps {
            let got = speech_timestamps(&input.probs, input.num_samples, &t.options.vad());
            assert_eq!(got, t.speeches, "{name} with {:?}", t.options.vad());
        }
    }
    // The option sets differ in what they give, so each rule is exercised.
    let c = &reference().inputs["composite"].timestamps;
    for i in 0..c.len() {
        for j in i + 1..c.len() {
            assert_ne!(c[i].speeches, c[j].speeches, "option sets {i} and {j}");
        }
    }
}

#[test]
fn detected_speech_from_our_probabilities_equals_the_reference_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_composite(dir.path());
    for t in &reference().inputs["composite"].timestamps {
        let speech = detect_speech(vad(), &path, &t.options.vad(), |_| {}).unwrap();
        assert_eq!(speech.chunks, t.speeches, "{:?}", t.options.vad());
        assert_eq!(speech.total_samples, 360_000);
    }
}

#[test]
fn times_map_back_as_faster_whisper_maps_them() {
    let input = &reference().inputs["composite"];
    let map = TimestampMap::new(&input.timestamps[0].speeches);
    assert!(!input.time_map.is_empty());
    for s in &input.time_map {
        assert_eq!(map.original_time(s.t, None, false), s.start, "t = {}", s.t);
        assert_eq!(map.original_time(s.t, None, true), s.end, "t = {} as an end", s.t);
    }
}

#[test]
fn the_speech_only_reader_joins_the_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_composite(dir.path());
    let all = composite();
    let chunks = &reference().inputs["composite"].timestamps[1].speeches;
    assert!(chunks.len() > 2);
    let mut reader = SpeechOnly::open(&path, chunks).unwrap();
    let mut got = Vec::new();
    loop {
        // An odd read size, so chunk edges fall inside reads.
        let part = reader.read_samples(7_777).unwrap();
        if part.is_empty() {
            break;
        }
        got.extend(part);
    }
    let want: Vec<f32> = chunks
        .iter()
        .flat_map(|c| all[c.start..c.end].iter().copied())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_file_that_is_not_the_vad_model_is_a_clear_error() {
    let e = SileroVad::load(&fixture("speech_16k.wav")).unwrap_err().to_string();
    assert!(
        e.contains("speech_16k.wav") && e.contains("not a readable ONNX model"),
        "{e}"
    );
    let e = SileroVad::load(Path::new("/nonexistent/vad.onnx"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/vad.onnx"), "{e}");
}

/// Speech-only audio too long to hold streams like any long file: its streamed windows
/// equal the spectrogram of the joined speech, to the bit.
#[test]
fn speech_only_audio_streams_the_same_as_it_loads() {
    use tessera_audio::{MelSource, MelSpectrogram, Spectrogram};
    let dir = tempfile::tempdir().unwrap();
    let path = write_composite(dir.path());
    let chunks = reference().inputs["composite"].timestamps[1].speeches.clone();
    let all = composite();
    let joined: Vec<f32> = chunks
        .iter()
        .flat_map(|c| all[c.start..c.end].iter().copied())
        .collect();
    let mel = MelSpectrogram::new(80).unwrap();
    let whole = mel.compute_padded(&joined);
    let open = || -> tessera_audio::Result<Box<dyn SampleReader>> { Ok(Box::new(SpeechOnly::open(&path, &chunks)?)) };
    for limit in [joined.len(), 16_000] {
        let mut s = Spectrogram::open_samples(&mel, &path, &open, limit, |_| {}).unwrap();
        assert_eq!(matches!(s, Spectrogram::Streamed(_)), limit < joined.len());
        assert_eq!(s.content_frames(), whole.content_frames);
        let size = whole.content_frames.min(3000);
        assert_eq!(
            s.segment(0, size, 3000).unwrap(),
            whole.segment(0, size, 3000),
            "limit {limit}"
        );
    }
}
