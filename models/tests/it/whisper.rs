//! Whisper: parity with transformers on tiny random checkpoints (safetensors f32/f16,
//! CTranslate2 `model.bin`, 128 mel bins), the decoder's KV cache (incremental = full,
//! batch = one by one, reorder), bad input, and the fetched real models on the JFK clip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use tessera_models::whisper::{AudioFeatures, Task, Whisper};

use crate::common::{device, fixture, max_abs_diff};

const TOL: f32 = 1e-4;

/// A fixture in f32 on the test device (`common::device`).
fn load(name: &str) -> Whisper {
    Whisper::load_with_dtype(&fixture(&format!("whisper/{name}")), &device(), DType::F32)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn expected() -> &'static std::collections::HashMap<String, Tensor> {
    static E: OnceLock<std::collections::HashMap<String, Tensor>> = OnceLock::new();
    E.get_or_init(|| {
        candle_core::safetensors::load(fixture("whisper/expected.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                let v = if v.dtype() == DType::F16 {
                    v.to_dtype(DType::F32).unwrap()
                } else {
                    v
                };
                (k, v)
            })
            .collect()
    })
}

fn exp(name: &str) -> &'static Tensor {
    expected()
        .get(name)
        .unwrap_or_else(|| panic!("expected.safetensors has no {name}"))
}

/// The two reference token sequences of a fixture (same length).
fn input_ids(mels: usize) -> Vec<Vec<u32>> {
    exp(&format!("input_ids{mels}"))
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= tol, "{what}: max abs diff {diff} > {tol}");
}

/// Encoder output, prompt logits (batch of two audios) and incremental logits (one token
/// per step, both sequences in lockstep) against the reference of `reference`.
fn check_parity(model: &Whisper, mels: usize, reference: &str, tol: f32) {
    let mel = exp(&format!("mel{mels}"));
    let features = model.encode(mel).unwrap();
    assert_close(
        &format!("{reference} encoder"),
        &features.encoder_output().to_dtype(DType::F32).unwrap(),
        exp(&format!("{reference}.encoder")),
        tol,
    );
    let logits = exp(&format!("{reference}.logits")); // [2, tokens, vocab]
    let ids = input_ids(mels);
    let n = ids[0].len();

    // The whole prompt at once: the last position's logits.
    let mut dec = model.decoder(&features, &[0, 1]).unwrap();
    let got = dec.step(&[&ids[0], &ids[1]]).unwrap();
    assert_eq!(got.dims(), &[2, model.config().n_vocab]);
    assert_close(
        &format!("{reference} prompt logits"),
        &got,
        &logits.i((.., n - 1)).unwrap(),
        tol,
    );
    assert_eq!(dec.len(), n);

    // Three tokens, then one at a time: every position's logits.
    let mut dec = model.decoder(&features, &[0, 1]).unwrap();
    let got = dec.step(&[&ids[0][..3], &ids[1][..3]]).unwrap();
    assert_close(
        &format!("{reference} logits @2"),
        &got,
        &logits.i((.., 2)).unwrap(),
        tol,
    );
    for p in 3..n {
        let got = dec.step(&[&ids[0][p..p + 1], &ids[1][p..p + 1]]).unwrap();
        assert_close(
            &format!("{reference} logits @{p}"),
            &got,
            &logits.i((.., p)).unwrap(),
            tol,
        );
    }
    assert_eq!(dec.tokens(1), ids[1].as_slice());
}

#[test]
fn parity_safetensors_f32() {
    check_parity(&load("tiny"), 80, "tiny", TOL);
}

#[test]
fn parity_safetensors_f16() {
    check_parity(&load("tiny-f16"), 80, "tiny-f16", TOL);
}

#[test]
fn parity_ctranslate2() {
    let ct2 = load("tiny-ct2");
    let hf = load("tiny-f16");
    assert_eq!(ct2.config(), hf.config());
    assert_eq!(ct2.alignment_heads(), hf.alignment_heads());
    check_parity(&ct2, 80, "tiny-f16", TOL);
}

#[test]
fn parity_128_mel_bins() {
    let model = load("tiny-128");
    let c = model.config();
    assert_eq!(
        (c.n_mels, c.n_audio_layer, c.n_text_layer, c.n_audio_head, c.d_model),
        (128, 1, 3, 3, 24)
    );
    check_parity(&model, 128, "tiny-128", TOL);
}

#[test]
fn f16_compute_follows_the_reference() {
    // The accelerator path (f16 weights and activations), run on the CPU.
    let model = Whisper::load_with_dtype(&fixture("whisper/tiny-f16"), &device(), DType::F16).unwrap();
    assert_eq!(model.dtype(), DType::F16);
    check_parity(&model, 80, "tiny-f16", 0.1);
}

#[test]
fn cross_attention_of_the_alignment_heads() {
    let model = load("tiny");
    assert_eq!(model.alignment_heads(), &[(1, 0), (1, 3), (0, 2)]);
    let features = model.encode(exp("mel80")).unwrap();
    let ids = input_ids(80);
    let w = model.cross_attention_weights(&features, 0, &ids[0]).unwrap();
    assert_close("cross-attention", &w, exp("tiny.cross"), TOL);
    let sums = w
        .sum(D::Minus1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-4), "{sums:?}");
    let logits = model.cross_attention_logits(&features, 0, &ids[0]).unwrap();
    assert_close(
        "softmax of the logits",
        &candle_nn::ops::softmax_last_dim(&logits).unwrap(),
        &w,
        1e-6,
    );

    // Default heads (no alignment_heads anywhere): the second half of the layers.
    let t128 = load("tiny-128");
    assert_eq!(
        t128.alignment_heads(),
        &[(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    );
    let features = t128.encode(exp("mel128")).unwrap();
    let w = t128.cross_attention_weights(&features, 0, &input_ids(128)[0]).unwrap();
    assert_close("cross-attention (128)", &w, exp("tiny-128.cross"), TOL);
}

#[test]
fn special_tokens_from_the_tokenizer() {
    let model = load("tiny");
    let s = model.special();
    assert_eq!((s.eot, s.sot, s.translate, s.transcribe), (256, 257, 261, 262));
    assert_eq!(
        (s.sot_lm, s.sot_prev, s.no_speech, s.no_timestamps),
        (263, 264, 265, 266)
    );
    assert_eq!(s.timestamp_begin, 267);
    assert!(s.is_multilingual, "generation_config.json says so");
    let langs: Vec<(&str, u32)> = s.languages.iter().map(|(c, i)| (c.as_str(), *i)).collect();
    assert_eq!(langs, [("en", 258), ("de", 259), ("fr", 260)]);
    assert_eq!(s.sot_sequence(Some("fr"), Task::Translate).unwrap(), [257, 260, 261]);
    assert_eq!(s.sot_sequence(None, Task::Transcribe).unwrap(), [257]);
    assert!(s.sot_sequence(Some("xx"), Task::Transcribe).is_err());
    assert_eq!(model.tokenizer().decode(&[257, 72, 105, 256], true).unwrap(), "Hi");
    assert_eq!(
        model.tokenizer().decode(&[257, 72, 105, 267], false).unwrap(),
        "<|startoftranscript|>Hi<|0.00|>"
    );

    // English-only layout: `<|nocaptions|>`, no timestamp tokens listed, no languages.
    let s = load("tiny-128").special().clone();
    assert_eq!((s.no_speech, s.no_timestamps, s.timestamp_begin), (265, 266, 267));
    assert!(!s.is_multilingual && s.languages.is_empty());
    assert_eq!(s.sot_sequence(Some("en"), Task::Transcribe).unwrap(), [257]);
    assert!(s.sot_sequence(Some("de"), Task::Transcribe).is_err());
    assert!(s.sot_sequence(None, Task::Translate).is_err());
}

/// Logits of each sequence run alone through a fresh decoder, all tokens at once.
fn alone(model: &Whisper, features: &AudioFeatures, audio: usize, tokens: &[u32]) -> Tensor {
    let mut dec = model.decoder(features, &[audio]).unwrap();
    dec.step(&[tokens]).unwrap().squeeze(0).unwrap()
}

#[test]
fn beams_in_a_batch_equal_sequences_one_by_one() {
    let model = load("tiny");
    let features = model.encode(exp("mel80")).unwrap();
    let prompt = [257u32, 258, 262, 266];
    let mut dec = model.decoder(&features, &[1]).unwrap();
    dec.step(&[&prompt]).unwrap();
    // Fork into three beams that then diverge.
    dec.reorder(&[0, 0, 0]).unwrap();
    let mut seqs: Vec<Vec<u32>> = vec![prompt.to_vec(); 3];
    for (step, tokens) in [[65u32, 66, 67], [32, 32, 100], [101, 102, 103]].iter().enumerate() {
        let logits = dec.step(&[&tokens[0..1], &tokens[1..2], &tokens[2..3]]).unwrap();
        for (i, seq) in seqs.iter_mut().enumerate() {
            seq.push(tokens[i]);
            let want = alone(&model, &features, 1, seq);
            assert_close(&format!("beam {i} step {step}"), &logits.get(i).unwrap(), &want, TOL);
        }
    }
    // Reorder: drop beam 1, duplicate beam 2, and continue.
    dec.reorder(&[2, 0, 2]).unwrap();
    let mut seqs = [seqs[2].clone(), seqs[0].clone(), seqs[2].clone()];
    let logits = dec.step(&[&[70], &[71], &[72]]).unwrap();
    for (i, t) in [70u32, 71, 72].iter().enumerate() {
        seqs[i].push(*t);
        assert_eq!(dec.tokens(i), seqs[i].as_slice());
        let want = alone(&model, &features, 1, &seqs[i]);
        assert_close(&format!("reordered beam {i}"), &logits.get(i).unwrap(), &want, TOL);
    }
    assert_eq!(dec.n_sequences(), 3);
    dec.reorder(&[1]).unwrap();
    assert_eq!(dec.n_sequences(), 1);
    assert_eq!(dec.tokens(0), seqs[1].as_slice());
}

#[test]
fn sequences_of_different_audios_interleaved() {
    let model = load("tiny");
    let features = model.encode(exp("mel80")).unwrap();
    let seqs: [&[u32]; 4] = [&[257, 258, 65], &[257, 259, 66], &[257, 260, 67], &[257, 258, 68]];
    let audios = [1, 0, 1, 0];
    let mut dec = model.decoder(&features, &audios).unwrap();
    let logits = dec.step(&seqs).unwrap();
    for i in 0..4 {
        let want = alone(&model, &features, audios[i], seqs[i]);
        assert_close(&format!("sequence {i}"), &logits.get(i).unwrap(), &want, TOL);
    }
    // Each sequence's engine cache holds its audio's cross-attention keys and values as
    // its context, one shared context per audio.
    let context = |dec: &tessera_models::whisper::WhisperDecoder, i: usize| dec.cache(i).context().unwrap().clone();
    assert!(std::sync::Arc::ptr_eq(&context(&dec, 0), &context(&dec, 2)));
    assert!(std::sync::Arc::ptr_eq(&context(&dec, 1), &context(&dec, 3)));
    assert!(!std::sync::Arc::ptr_eq(&context(&dec, 0), &context(&dec, 1)));
    assert_eq!(context(&dec, 0).layers.len(), model.config().n_text_layer);
    let (before_0, before_1) = (context(&dec, 0), context(&dec, 1));
    // After a reorder the audio (and its context) follows its sequence.
    dec.reorder(&[3, 0]).unwrap();
    assert_eq!(dec.audio_indices(), &[0, 1]);
    assert!(std::sync::Arc::ptr_eq(&context(&dec, 0), &before_1));
    assert!(std::sync::Arc::ptr_eq(&context(&dec, 1), &before_0));
    let logits = dec.step(&[&[32], &[33]]).unwrap();
    for (i, (src, t)) in [(3usize, 32u32), (0, 33)].into_iter().enumerate() {
        let mut seq = seqs[src].to_vec();
        seq.push(t);
        let want = alone(&model, &features, audios[src], &seq);
        assert_close(&format!("reordered {i}"), &logits.get(i).unwrap(), &want, TOL);
    }
    // Features of a subset: the same audio gives the same logits.
    let one = features.select(&[1]).unwrap();
    assert_eq!(one.len(), 1);
    assert_close(
        "selected features",
        &alone(&model, &one, 0, seqs[0]),
        &alone(&model, &features, 1, seqs[0]),
        1e-6,
    );
}

#[test]
fn decoder_input_errors() {
    let model = load("tiny");
    assert_eq!(model.config().n_text_ctx, 64);
    let features = model.encode(exp("mel80")).unwrap();
    let mut dec = model.decoder(&features, &[0]).unwrap();
    let long: Vec<u32> = (0..60).collect();
    dec.step(&[&long]).unwrap();
    assert_eq!(dec.remaining(), 4);
    let e = dec.step(&[&[1, 2, 3, 4, 5]]).unwrap_err().to_string();
    assert!(
        e.contains("60 tokens plus 5 new exceed the text context of 64 tokens"),
        "{e}"
    );
    dec.step(&[&[1, 2, 3, 4]]).unwrap();
    assert!(dec.step(&[&[1]]).is_err());

    let mut dec = model.decoder(&features, &[0, 1]).unwrap();
    let e = dec.step(&[&[1]]).unwrap_err().to_string();
    assert!(e.contains("tokens for 1 sequences but has 2"), "{e}");
    let e = dec.step(&[&[1], &[1, 2]]).unwrap_err().to_string();
    assert!(e.contains("same number"), "{e}");
    let e = dec.step(&[&[1], &[318]]).unwrap_err().to_string();
    assert!(e.contains("token id 318 is outside"), "{e}");
    let e = dec.reorder(&[2]).unwrap_err().to_string();
    assert!(e.contains("reorder source 2 is out of range"), "{e}");
    let e = model.decoder(&features, &[2]).unwrap_err().to_string();
    assert!(e.contains("audio index 2 is out of range"), "{e}");

    let e = model.encode(&Tensor::zeros((1, 80, 3000), DType::F32, &Device::Cpu).unwrap());
    let e = e.unwrap_err().to_string();
    assert!(e.contains("shape [1, 80, 3000], expected [audios, 80, 100]"), "{e}");
    let other = load("tiny-128").encode(exp("mel128")).unwrap();
    assert!(model.decoder(&other, &[0]).is_err(), "features of another model");
}

/// A copy of a fixture directory to break.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(fixture(&format!("whisper/{name}"))).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    (tmp, dir)
}

fn load_err(dir: &Path) -> String {
    Whisper::load(dir, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn broken_model_directories() {
    // Truncated model.bin.
    let (_t, dir) = copy_fixture("tiny-ct2");
    let bin = dir.join("model.bin");
    let bytes = std::fs::read(&bin).unwrap();
    std::fs::write(&bin, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.bin") && e.contains("the file has"), "{e}");

    // A wrong binary version.
    let mut v = bytes.clone();
    v[..4].copy_from_slice(&7u32.to_le_bytes());
    std::fs::write(&bin, &v).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.bin: CTranslate2 binary version 7"), "{e}");

    // A variable whose shape and byte count agree but exceed the file: the token
    // embedding [318, 32] f16 grown to a million rows.
    let mut v = bytes.clone();
    let name = b"decoder/embeddings/weight\0";
    let at = v.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    assert_eq!(v[at], 2, "rank");
    v[at + 1..at + 5].copy_from_slice(&1_000_000u32.to_le_bytes());
    v[at + 10..at + 14].copy_from_slice(&64_000_000u32.to_le_bytes());
    std::fs::write(&bin, &v).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.bin: variable decoder/embeddings/weight declares 64000000 bytes but the file has"),
        "{e}"
    );

    // Missing config.json / tokenizer.json.
    std::fs::write(&bin, &bytes).unwrap();
    Whisper::load(&dir, &Device::Cpu).unwrap();
    std::fs::rename(dir.join("config.json"), dir.join("x.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json: missing"), "{e}");
    std::fs::rename(dir.join("x.json"), dir.join("config.json")).unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("tokenizer.json: missing"), "{e}");

    // A Hugging Face config that disagrees with the weights.
    let (_t, dir) = copy_fixture("tiny");
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"encoder_ffn_dim\": 64", "\"encoder_ffn_dim\": 96")).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("tensor model.encoder.layers.0.fc1.weight has shape [64, 32] but the config implies [96, 32]"),
        "{e}"
    );
    std::fs::write(
        &cfg,
        text.replace("\"encoder_attention_heads\": 4", "\"encoder_attention_heads\": 5"),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("d_model 32 is not a multiple of the 5 encoder heads"), "{e}");
    std::fs::write(&cfg, &text).unwrap();
    // Alignment heads outside the decoder.
    let gen_path = dir.join("generation_config.json");
    let gen_cfg = std::fs::read_to_string(&gen_path).unwrap();
    std::fs::write(
        &gen_path,
        gen_cfg.replace("\"alignment_heads\": [", "\"alignment_heads\": [[2, 0], "),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("alignment head (2, 0) is outside"), "{e}");

    // Nothing to load.
    let e = load_err(&dir.join("config.json"));
    assert!(e.contains("not a Whisper model file"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = load_err(empty.path());
    assert!(e.contains("no model.bin (CTranslate2) or model.safetensors"), "{e}");
}

// --- real weights ----------------------------------------------------------------------

fn fetched(name: &str) -> &'static Whisper {
    static TINY: OnceLock<Whisper> = OnceLock::new();
    static BASE: OnceLock<Whisper> = OnceLock::new();
    let cell = if name == "whisper-tiny.en" { &TINY } else { &BASE };
    cell.get_or_init(|| {
        let loc = tessera_models::loader::locate(name)
            .unwrap_or_else(|e| panic!("{e}\n(real-weight tests need scripts/fetch-models to have run)"));
        Whisper::load(loc.path(), &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"))
    })
}

fn data(name: &str) -> PathBuf {
    let path = tessera_models::loader::tessera_home().join("data").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-models", path.display());
    path
}

/// The log-mel spectrogram of the JFK clip padded to 30 s, as openai's
/// `log_mel_spectrogram` (400-point periodic Hann STFT, hop 160, reflect padding, mel
/// filters from the fetched `mel_filters.npz`), with a plain DFT: a test helper until the
/// audio crate's front end replaces it.
fn jfk_mel(n_mels: usize) -> &'static Tensor {
    static MEL: OnceLock<Tensor> = OnceLock::new();
    assert_eq!(n_mels, 80, "the fetched models take 80 mel bins");
    MEL.get_or_init(|| {
        const N_FFT: usize = 400;
        const HOP: usize = 160;
        const FRAMES: usize = 3000;
        let reader = hound::WavReader::open(data("jfk.wav")).unwrap();
        assert_eq!(reader.spec().sample_rate, 16_000);
        let mut audio: Vec<f32> = reader
            .into_samples::<i16>()
            .map(|s| s.unwrap() as f32 / 32768.0)
            .collect();
        audio.resize(FRAMES * HOP, 0.0);
        // Reflect padding of N_FFT / 2 on both sides (torch.stft center=True).
        let pad = N_FFT / 2;
        let n = audio.len();
        let padded: Vec<f32> = (0..n + 2 * pad)
            .map(|i| {
                let j = i as isize - pad as isize;
                let j = if j < 0 {
                    -j
                } else if j >= n as isize {
                    2 * (n as isize - 1) - j
                } else {
                    j
                };
                audio[j as usize]
            })
            .collect();
        let window: Vec<f32> = (0..N_FFT)
            .map(|i| 0.5 - 0.5 * (2.0 * std::f32::consts::PI * i as f32 / N_FFT as f32).cos())
            .collect();
        let bins = N_FFT / 2 + 1;
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..bins * N_FFT)
            .map(|i| {
                let (k, t) = (i / N_FFT, i % N_FFT);
                let a = 2.0 * std::f64::consts::PI * ((k * t) % N_FFT) as f64 / N_FFT as f64;
                (a.cos() as f32, a.sin() as f32)
            })
            .unzip();
        let mut power = vec![0f32; bins * FRAMES];
        for f in 0..FRAMES {
            let frame: Vec<f32> = (0..N_FFT).map(|t| padded[f * HOP + t] * window[t]).collect();
            for k in 0..bins {
                let (mut re, mut im) = (0f32, 0f32);
                for t in 0..N_FFT {
                    re += frame[t] * cos[k * N_FFT + t];
                    im += frame[t] * sin[k * N_FFT + t];
                }
                power[k * FRAMES + f] = re * re + im * im;
            }
        }
        let power = Tensor::from_vec(power, (bins, FRAMES), &Device::Cpu).unwrap();
        let filters = mel_filters(n_mels);
        let mel = filters
            .matmul(&power)
            .unwrap()
            .clamp(1e-10, f32::MAX)
            .unwrap()
            .log()
            .unwrap();
        let log10 = (mel / std::f64::consts::LN_10).unwrap();
        let max = log10.max_all().unwrap().to_scalar::<f32>().unwrap();
        let log10 = log10.clamp(max - 8.0, f32::MAX).unwrap();
        ((log10 + 4.0).unwrap() / 4.0).unwrap().unsqueeze(0).unwrap()
    })
}

/// `mel_{n_mels}` `[n_mels, 201]` from openai's `mel_filters.npz` (deflate-compressed,
/// which candle's npz reader does not inflate: unzip here, read the `.npy` with candle).
fn mel_filters(n_mels: usize) -> Tensor {
    use std::io::Read;
    let file = std::fs::File::open(data("whisper/mel_filters.npz")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut npy = Vec::new();
    zip.by_name(&format!("mel_{n_mels}.npy"))
        .unwrap()
        .read_to_end(&mut npy)
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("filters.npy");
    std::fs::write(&path, npy).unwrap();
    Tensor::read_npy(&path).unwrap().to_dtype(DType::F32).unwrap()
}

fn greedy_text(model: &Whisper, language: Option<&str>) -> String {
    let s = model.special();
    let mut prompt = s.sot_sequence(language, Task::Transcribe).unwrap();
    prompt.push(s.no_timestamps);
    let features = model.encode(jfk_mel(model.config().n_mels)).unwrap();
    let mut dec = model.decoder(&features, &[0]).unwrap();
    let mut logits = dec.step(&[&prompt]).unwrap();
    let mut out = Vec::new();
    for _ in 0..64 {
        let next = logits.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap()[0];
        if next == s.eot {
            break;
        }
        out.push(next);
        logits = dec.step(&[&[next]]).unwrap();
    }
    model.tokenizer().decode(&out, true).unwrap()
}

#[test]
fn real_tiny_en_config_and_special_tokens() {
    let m = fetched("whisper-tiny.en");
    let c = m.config();
    assert_eq!(
        (c.n_mels, c.n_audio_ctx, c.n_text_ctx, c.n_vocab, c.d_model),
        (80, 1500, 448, 51_864, 384)
    );
    assert_eq!(
        (c.n_audio_layer, c.n_text_layer, c.n_audio_head, c.n_text_head),
        (4, 4, 6, 6)
    );
    let s = m.special();
    assert_eq!(
        (s.eot, s.sot, s.translate, s.transcribe),
        (50_256, 50_257, 50_357, 50_358)
    );
    assert_eq!(
        (s.sot_prev, s.no_speech, s.no_timestamps, s.timestamp_begin),
        (50_360, 50_361, 50_362, 50_363)
    );
    assert!(!s.is_multilingual && s.languages.is_empty());
    assert_eq!(m.alignment_heads().len(), 8);
    assert_eq!(m.alignment_heads()[0], (1, 0));
}

#[test]
fn real_base_config_and_special_tokens() {
    let m = fetched("whisper-base");
    let c = m.config();
    assert_eq!(
        (c.n_vocab, c.d_model, c.n_text_layer, c.n_text_head),
        (51_865, 512, 6, 8)
    );
    let s = m.special();
    assert_eq!(
        (s.eot, s.sot, s.translate, s.transcribe),
        (50_257, 50_258, 50_358, 50_359)
    );
    assert_eq!(
        (s.sot_prev, s.no_speech, s.no_timestamps, s.timestamp_begin),
        (50_361, 50_362, 50_363, 50_364)
    );
    assert!(s.is_multilingual);
    assert_eq!(s.languages.len(), 99);
    assert_eq!(s.languages[0], ("en".to_string(), 50_259));
    assert_eq!(s.language_token("de"), Some(50_261));
    assert_eq!(
        s.sot_sequence(Some("en"), Task::Transcribe).unwrap(),
        [50_258, 50_259, 50_359]
    );
    assert_eq!(m.alignment_heads()[0], (3, 1));
}

const JFK: &str = "ask not what your country can do for you";

#[test]
fn real_tiny_en_transcribes_jfk() {
    let text = greedy_text(fetched("whisper-tiny.en"), None);
    assert!(text.to_lowercase().contains(JFK), "{text:?}");
}

#[test]
fn real_base_transcribes_jfk() {
    let text = greedy_text(fetched("whisper-base"), Some("en"));
    assert!(text.to_lowercase().contains(JFK), "{text:?}");
}
