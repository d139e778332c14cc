//! The decoding pieces that depend on a real Whisper vocabulary or real weights: the token
//! suppression lists against faster-whisper's (`tests/fixtures/suppress_tokens.json`, from
//! `gen_suppress.py`) and language detection on real speech, with the models fetched by
//! `scripts/fetch-models`.

use candle_core::{Device, Tensor};
use tessera_audio::transcribe::decoding::{detect_language, non_speech_tokens, suppressed_tokens};
use tessera_audio::{MelSpectrogram, N_FRAMES, load_audio};
use tessera_models::whisper::Whisper;

use crate::common::{cached, fixture};

fn model(name: &str) -> Whisper {
    let dir = cached(&format!("models/{name}"));
    Whisper::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn sha256_hex(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

#[test]
fn suppression_lists_equal_faster_whispers_for_the_real_vocabularies() {
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("suppress_tokens.json")).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    for name in ["whisper-tiny.en", "whisper-base"] {
        let want = &reference[name];
        // A refetched, different tokenizer would be a stale fixture, not a regression.
        let tokenizer = cached(&format!("models/{name}/tokenizer.json"));
        assert_eq!(
            sha256_hex(&tokenizer),
            want["tokenizer_sha256"].as_str().unwrap(),
            "{name}: tokenizer.json changed; rerun gen_suppress.py"
        );
        let m = model(name);
        assert_eq!(non_speech_tokens(&m).unwrap(), ids(&want["non_speech"]), "{name}");
        assert_eq!(suppressed_tokens(&m).unwrap(), ids(&want["suppressed"]), "{name}");
    }
}

/// The language whisper-base detects in the first 30 s of an audio file.
fn detected(model: &Whisper, file: &str) -> (String, f32) {
    let samples = load_audio(fixture(file)).unwrap();
    let mel = MelSpectrogram::new(model.config().n_mels)
        .unwrap()
        .compute_padded(&samples);
    let window = mel.segment(0, N_FRAMES.min(mel.content_frames), N_FRAMES);
    let input = Tensor::from_vec(window, (1, mel.n_mels, N_FRAMES), model.device()).unwrap();
    let features = model.encode(&input).unwrap();
    let (code, token, p) = detect_language(model, &features, 0).unwrap();
    assert_eq!(model.special().language_token(&code), Some(token), "{code}");
    (code, p)
}

#[test]
fn base_detects_german_and_english_speech() {
    let base = model("whisper-base");
    // faster-whisper 1.2.1 gives p = 0.87 for German on german.ogg; "en" is token 0, so a
    // detector that always answered the first language would fail here.
    let (code, p) = detected(&base, "german.ogg");
    assert_eq!(code, "de", "p = {p}");
    assert!(p > 0.5 && p <= 1.0, "p = {p}");
    let (code, p) = detected(&base, "speech_16k.wav");
    assert_eq!(code, "en", "p = {p}");
    assert!(p > 0.5 && p <= 1.0, "p = {p}");
}

#[test]
fn an_english_only_model_has_no_language_detection() {
    let tiny = model("whisper-tiny.en");
    let input = Tensor::zeros((1, 80, N_FRAMES), tiny.dtype(), tiny.device()).unwrap();
    let features = tiny.encode(&input).unwrap();
    let err = detect_language(&tiny, &features, 0).unwrap_err();
    assert!(err.to_string().contains("English-only"), "{err}");
}
