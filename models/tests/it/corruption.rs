//! Corrupted model files never panic: thousands of deterministic variants of each format
//! the engine reads (GGUF, safetensors with config.json, CTranslate2's model.bin, GGUF
//! tokenizer metadata, Whisper's JSON files) are each either loaded and run, or refused
//! with an error naming the file. Each variant that loads also runs a forward pass, so
//! damage that slips past the loader cannot panic later either.

use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use tessera_models::engine::Engine;
use tessera_models::gguf::GgufFile;
use tessera_models::llama::Llama;
use tessera_models::tokenizer::{GgufVocab, Tokenizer};
use tessera_models::whisper::{Task, Whisper};

use crate::common::fixture;
use crate::gguf::{convert, convert_with};

#[path = "../support/mutate.rs"]
mod mutate;
use mutate::{Outcomes, RUN, Rng, json_variants, mutate};

fn run_err(e: impl std::fmt::Display) -> String {
    format!("{RUN}{e}")
}

fn gguf_forward(path: &Path) -> Result<(), String> {
    let gguf = GgufFile::open(path).map_err(|e| e.to_string())?;
    let model = Llama::from_gguf(gguf, &Device::Cpu).map_err(|e| e.to_string())?;
    let engine = Engine::new(std::sync::Arc::new(model));
    let logits = engine.logits(&[1, 2, 3]).map_err(run_err)?;
    logits.to_dtype(DType::F32).map_err(run_err)?;
    Ok(())
}

#[test]
fn corrupted_gguf_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("tiny.gguf");
    convert("qwen2", "qwen2", &original);
    gguf_forward(&original).expect("the undamaged file loads");
    let bytes = std::fs::read(&original).unwrap();
    let data_offset = {
        let mut f = std::fs::File::open(&original).unwrap();
        gguf_file::Content::read(&mut f).unwrap().tensor_data_offset as usize
    };
    let path = dir.path().join("damaged.gguf");
    let mut rng = Rng::new(0x6767_7566);
    let mut outcomes = Outcomes::default();
    let header = 0..data_offset;
    for _ in 0..1500 {
        let (what, v) = mutate(&mut rng, &bytes, std::slice::from_ref(&header));
        std::fs::write(&path, &v).unwrap();
        outcomes.run(&what, "damaged.gguf", || gguf_forward(&path));
    }
    outcomes.assert_clean("GGUF bytes", 300, 100);
}

#[test]
fn gguf_metadata_with_extreme_values_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extreme.gguf");
    let mut keys = Vec::new();
    convert_with("qwen2", "qwen2", &path, |md| {
        keys = md.iter().map(|(k, _)| k.clone()).collect()
    });
    let values = || {
        [
            gguf_file::Value::U32(0),
            gguf_file::Value::U32(1),
            gguf_file::Value::U32(3),
            gguf_file::Value::U32(u32::MAX),
            gguf_file::Value::U64(1 << 40),
            gguf_file::Value::I32(-1),
            gguf_file::Value::F32(f32::NAN),
            gguf_file::Value::F32(f32::INFINITY),
            gguf_file::Value::F32(0.0),
            gguf_file::Value::String("x".into()),
            gguf_file::Value::Bool(true),
            gguf_file::Value::Array(Vec::new()),
        ]
    };
    let mut outcomes = Outcomes::default();
    for key in &keys {
        for value in values() {
            let what = format!("{key} = {value:?}");
            convert_with("qwen2", "qwen2", &path, |md| {
                md.iter_mut().find(|(k, _)| k == key).unwrap().1 = value;
            });
            outcomes.run(&what, "extreme.gguf", || gguf_forward(&path));
        }
        convert_with("qwen2", "qwen2", &path, |md| md.retain(|(k, _)| k != key));
        outcomes.run(&format!("{key} removed"), "extreme.gguf", || gguf_forward(&path));
    }
    outcomes.assert_clean("GGUF metadata", keys.len(), keys.len());
}

/// The byte ranges of a safetensors file that describe it: the length and the JSON header.
fn safetensors_header(bytes: &[u8]) -> Range<usize> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    0..8 + n
}

fn checkpoint_forward(dir: &Path) -> Result<(), String> {
    let model = tessera_models::loader::load_checkpoint_model(dir, &Device::Cpu).map_err(|e| e.to_string())?;
    let engine = Engine::new(model);
    engine.logits(&[1, 2, 3]).map_err(run_err)?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "expected.safetensors" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn corrupted_safetensors_checkpoints_never_panic() {
    for name in ["qwen2", "starcoder2"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        copy_dir(&fixture(name), &dir);
        checkpoint_forward(&dir).expect("the undamaged checkpoint loads");

        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        let mut rng = Rng::new(0x5afe);
        let mut outcomes = Outcomes::default();
        let header = safetensors_header(&bytes);
        for _ in 0..600 {
            let (what, v) = mutate(&mut rng, &bytes, std::slice::from_ref(&header));
            std::fs::write(&weights, &v).unwrap();
            // Errors about the tensors a damaged header lost name the checkpoint directory.
            outcomes.run(&what, name, || checkpoint_forward(&dir));
        }
        std::fs::write(&weights, &bytes).unwrap();
        outcomes.assert_clean(&format!("{name} model.safetensors"), 200, 50);

        let config = dir.join("config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        let mut outcomes = Outcomes::default();
        for (what, variant) in json_variants(&text) {
            std::fs::write(&config, variant).unwrap();
            outcomes.run(&what, name, || checkpoint_forward(&dir));
        }
        outcomes.assert_clean(&format!("{name} config.json"), 50, 20);
    }
}

fn whisper_forward(dir: &Path) -> Result<(), String> {
    let model = Whisper::load(dir, &Device::Cpu).map_err(|e| e.to_string())?;
    let cfg = model.config();
    let mel = Tensor::zeros((1, cfg.n_mels, cfg.n_frames()), DType::F32, &Device::Cpu).map_err(run_err)?;
    let features = model.encode(&mel).map_err(run_err)?;
    let sot = model.special().sot_sequence(None, Task::Transcribe).map_err(run_err)?;
    let mut decoder = model.decoder(&features, &[0]).map_err(run_err)?;
    decoder.step(&[&sot]).map_err(run_err)?;
    Ok(())
}

#[test]
fn corrupted_whisper_models_never_panic() {
    // CTranslate2: names, ranks, dims and byte counts are interleaved with the data, so the
    // damage is aimed at the bytes around each variable's name.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny-ct2");
    copy_dir(&fixture("whisper/tiny-ct2"), &dir);
    whisper_forward(&dir).expect("the undamaged model loads");
    let bin = dir.join("model.bin");
    let bytes = std::fs::read(&bin).unwrap();
    let ct2 = tessera_models::ct2::Ct2File::open(&bin).unwrap();
    let mut hot: Vec<std::ops::Range<usize>> = Vec::new();
    hot.push(0..64);
    for name in ct2.names() {
        let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
        hot.push(at.saturating_sub(2)..at + name.len() + 40);
    }
    drop(ct2);
    let mut rng = Rng::new(0xc72);
    let mut outcomes = Outcomes::default();
    for _ in 0..800 {
        let (what, v) = mutate(&mut rng, &bytes, &hot);
        std::fs::write(&bin, &v).unwrap();
        outcomes.run(&what, "model.bin", || whisper_forward(&dir));
    }
    std::fs::write(&bin, &bytes).unwrap();
    outcomes.assert_clean("whisper model.bin", 300, 50);

    // The JSON files of both layouts, key by key.
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("tiny");
    copy_dir(&fixture("whisper/tiny"), &hf);
    // The CTranslate2 config's suppression and language lists are not read (they are
    // derived from the tokenizer, as openai does), so most of its variants load.
    for (dir, file, min_refused, min_accepted) in [
        (&dir, "config.json", 5, 20),
        (&hf, "config.json", 100, 100),
        (&hf, "generation_config.json", 5, 10),
    ] {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut outcomes = Outcomes::default();
        for (what, variant) in json_variants(&text) {
            std::fs::write(&path, variant).unwrap();
            // Errors name the file, or the checkpoint directory for a tensor it disagrees with.
            let dir_name = dir.file_name().unwrap().to_str().unwrap();
            outcomes.run(&what, dir_name, || whisper_forward(dir));
        }
        std::fs::write(&path, &text).unwrap();
        outcomes.assert_clean(&format!("whisper {file}"), min_refused, min_accepted);
    }
    let tokenizer = dir.join("tokenizer.json");
    let bytes = std::fs::read(&tokenizer).unwrap();
    let mut rng = Rng::new(0x70c);
    let mut outcomes = Outcomes::default();
    for _ in 0..300 {
        let (what, v) = mutate(&mut rng, &bytes, &[]);
        std::fs::write(&tokenizer, &v).unwrap();
        outcomes.run(&what, "tokenizer.json", || whisper_forward(&dir));
    }
    outcomes.assert_clean("whisper tokenizer.json", 50, 10);
}

/// Tokenizer metadata that disagrees with itself, on a real vocabulary (SmolLM2's
/// byte-level BPE) and on the committed SentencePiece one.
#[test]
fn inconsistent_gguf_vocabularies_never_panic() {
    let path = crate::tokenizer::model_path("smollm2-135m");
    let real = GgufFile::open(&path).unwrap().vocab().unwrap();
    let (spm, _) = crate::tokenizer::spm_tiny();
    type Edit = fn(&mut GgufVocab);
    let edits: [(&str, Edit); 16] = [
        ("tokens halved", |v| v.tokens.truncate(v.tokens.len() / 2)),
        ("no tokens", |v| v.tokens.clear()),
        ("token types shorter than tokens", |v| {
            v.token_types = Some(vec![1; v.tokens.len() / 2]);
        }),
        ("token types out of range", |v| {
            v.token_types = Some(vec![99; v.tokens.len()])
        }),
        ("every token a control token", |v| {
            v.token_types = Some(vec![3; v.tokens.len()])
        }),
        ("scores shorter than tokens", |v| {
            v.scores = Some(vec![0.0; v.tokens.len() / 2])
        }),
        ("NaN scores", |v| v.scores = Some(vec![f32::NAN; v.tokens.len()])),
        ("merges of unknown tokens", |v| v.merges = vec!["zzzq qqqz".into(); 10]),
        ("merges without a space", |v| {
            v.merges = vec!["ab".into(), "".into(), "a b c".into()]
        }),
        ("bos past the vocabulary", |v| v.bos_id = Some(u32::MAX)),
        ("eos past the vocabulary", |v| v.eos_id = Some(v.tokens.len() as u32)),
        ("eot and pad past the vocabulary", |v| {
            v.eot_id = Some(1 << 30);
            v.pad_id = Some(1 << 30);
            v.unk_id = Some(1 << 30);
        }),
        ("empty token texts", |v| {
            v.tokens.iter_mut().take(300).for_each(String::clear)
        }),
        ("duplicate token texts", |v| {
            v.tokens.iter_mut().take(300).for_each(|t| *t = "a".into())
        }),
        ("an unknown pre-tokenizer", |v| v.pre = Some("no-such-pre".into())),
        ("an unknown model", |v| v.model = "bert".into()),
    ];
    let mut outcomes = Outcomes::default();
    for (label, base) in [("smollm2", &real), ("spm_tiny", &spm)] {
        for (what, edit) in edits {
            let mut vocab = base.clone();
            edit(&mut vocab);
            outcomes.run(&format!("{label}: {what}"), "vocab.gguf", || {
                let tok = Tokenizer::from_gguf(vocab, Path::new("vocab.gguf")).map_err(|e| e.to_string())?;
                for text in ["def f(x):\n    return x", "héllo 🦀 wörld", "", "<|endoftext|>"] {
                    let ids = tok.encode(text, true).map_err(|e| e.to_string())?;
                    tok.decode(&ids, false).map_err(|e| e.to_string())?;
                    tok.decode(&[0, u32::MAX, (1 << 20) + 7], true)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            });
        }
    }
    outcomes.assert_clean("GGUF vocabularies", 10, 4);
}

/// Silero VAD's ONNX file (fetched): damage aimed at each initializer's name, dims, type
/// and length fields; every variant that loads also runs two windows.
#[test]
fn corrupted_vad_models_never_panic() {
    use tessera_models::silero_vad::{SileroVad, VadState, WINDOW};
    let original = crate::tokenizer::cached("models/silero-vad/silero_vad_v6.onnx");
    let bytes = std::fs::read(&original).unwrap();
    let weights = tessera_models::onnx::OnnxWeights::open(&original).unwrap();
    let mut hot: Vec<std::ops::Range<usize>> = Vec::new();
    hot.push(0..64);
    for name in weights.names() {
        let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
        hot.push(at.saturating_sub(40)..at + name.len() + 16);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vad.onnx");
    let samples: Vec<f32> = (0..2 * WINDOW).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    let mut rng = Rng::new(0x5a1e);
    let mut outcomes = Outcomes::default();
    for _ in 0..400 {
        let (what, v) = mutate(&mut rng, &bytes, &hot);
        std::fs::write(&path, &v).unwrap();
        outcomes.run(&what, "vad.onnx", || {
            let vad = SileroVad::load(&path).map_err(|e| e.to_string())?;
            let probs = vad.probabilities(&mut VadState::default(), &samples).map_err(run_err)?;
            assert_eq!(probs.len(), 2);
            Ok(())
        });
    }
    outcomes.assert_clean("silero_vad_v6.onnx", 50, 50);
}
