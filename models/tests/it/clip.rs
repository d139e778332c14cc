//! CLIP: the tokenizer on the real CLIP BPE against transformers and openai/CLIP, and the
//! tiny random checkpoints (`tests/fixtures/clip`, `gen_clip.py`) against transformers.

use candle_core::{Device, Tensor};
use tessera_models::clip::{Clip, l2_normalize};
use tessera_models::clip_tokenizer::{CONTEXT_LENGTH, ClipTokenizer};

use crate::common::{fixture, max_abs_diff};

fn table() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("clip/tokenizer_table.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn real_tokenizer() -> ClipTokenizer {
    let path = tessera_models::loader::tessera_home().join("data/clip/bpe_simple_vocab_16e6.txt.gz");
    assert!(path.exists(), "{} is missing: run scripts/fetch-models", path.display());
    ClipTokenizer::from_openai_bpe(&path, CONTEXT_LENGTH).unwrap()
}

#[test]
fn real_clip_bpe_matches_transformers_and_openai() {
    let tok = real_tokenizer();
    let table = table();
    assert_eq!(tok.vocab_size(), 49_408);
    assert_eq!(tok.sot_id() as u64, table["sot"].as_u64().unwrap());
    assert_eq!(tok.eot_id() as u64, table["eot"].as_u64().unwrap());
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 25);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got.ids, ids(&case["ids"]), "{text:?}");
        assert_eq!(got.truncated, case["truncated"].as_bool().unwrap(), "{text:?}");
        // openai's tokenizer agrees except where its ftfy/html clean-up changes the text;
        // without that clean-up it agrees everywhere.
        if case.get("openai_differs").is_some() {
            assert_eq!(got.ids, ids(&case["openai_without_ftfy_html"]), "{text:?}");
        } else {
            assert_eq!(got.ids, ids(&case["openai"]), "{text:?}");
        }
    }
}

#[test]
fn tokenizer_sources_agree() {
    // tokenizer.json (tiny/) and vocab.json + merges.txt (tiny-gelu/) of the same cut-down
    // vocabulary, on the table's strings.
    let json = ClipTokenizer::from_dir(&fixture("clip/tiny"), CONTEXT_LENGTH).unwrap();
    let files = ClipTokenizer::from_dir(&fixture("clip/tiny-gelu"), CONTEXT_LENGTH).unwrap();
    assert_eq!(json.vocab_size(), 914);
    for case in table()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(json.encode(text).unwrap(), files.encode(text).unwrap(), "{text:?}");
    }
    let err = ClipTokenizer::from_dir(&fixture("whisper"), CONTEXT_LENGTH)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer.json"), "{err}");
}

struct Reference {
    texts: Vec<String>,
    ids: Vec<Vec<u32>>,
    t: std::collections::HashMap<String, Tensor>,
}

fn reference(model: &str) -> Reference {
    let t = candle_core::safetensors::load(fixture("clip/expected.safetensors"), &Device::Cpu).unwrap();
    let input = t[&format!("{model}.input_ids")].to_vec2::<i64>().unwrap();
    let lengths = t[&format!("{model}.lengths")].to_vec1::<i64>().unwrap();
    let ids = input
        .iter()
        .zip(&lengths)
        .map(|(row, &n)| row[..n as usize].iter().map(|&x| x as u32).collect())
        .collect();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/texts.json")).unwrap()).unwrap();
    let texts = meta["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    Reference { texts, ids, t }
}

/// The generator's synthetic pixels: `2 sin(0.37 (b + 1) + 0.011 i)`.
fn synthetic_pixels(n: usize, size: usize) -> Tensor {
    let per = 3 * size * size;
    let v: Vec<f32> = (0..n)
        .flat_map(|b| (0..per).map(move |i| (2.0 * (0.37 * (b as f64 + 1.0) + 0.011 * i as f64).sin()) as f32))
        .collect();
    Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).unwrap()
}

fn check_model(name: &str) {
    let dir = fixture(&format!("clip/{name}"));
    let clip = Clip::from_dir(&dir, &Device::Cpu).unwrap();
    let tok = ClipTokenizer::from_dir(&dir, clip.config().max_position_embeddings).unwrap();
    let r = reference(name);
    // Our tokenizer gives the reference's ids.
    for (text, want) in r.texts.iter().zip(&r.ids) {
        assert_eq!(&tok.encode(text).unwrap().ids, want, "{name}: {text:?}");
    }
    let text_proj = clip.encode_text(&r.ids, tok.eot_id()).unwrap();
    let d = max_abs_diff(&text_proj, &r.t[&format!("{name}.text_proj")]);
    assert!(d <= 1e-4, "{name}: text projections differ by {d}");
    let text_embeds = clip.text_embeddings(&r.ids, tok.eot_id()).unwrap();
    let d = max_abs_diff(&text_embeds, &r.t[&format!("{name}.text_embeds")]);
    assert!(d <= 1e-4, "{name}: text embeddings differ by {d}");
    // One at a time equals the padded batch.
    for (i, seq) in r.ids.iter().enumerate() {
        let one = clip.encode_text(std::slice::from_ref(seq), tok.eot_id()).unwrap();
        let d = max_abs_diff(&one, &text_proj.narrow(0, i, 1).unwrap());
        assert!(d <= 1e-5, "{name}: text {i} alone differs by {d}");
    }
    let size = clip.config().image_size;
    let image_proj = clip.encode_images(&synthetic_pixels(2, size)).unwrap();
    let d = max_abs_diff(&image_proj, &r.t[&format!("{name}.synthetic_proj")]);
    assert!(d <= 1e-4, "{name}: image projections differ by {d}");
    let single = clip.encode_images(&synthetic_pixels(1, size)).unwrap();
    assert!(max_abs_diff(&single, &image_proj.narrow(0, 0, 1).unwrap()) <= 1e-5);
    // Logits from the reference image embeddings and ours for the texts.
    let logits = clip
        .logits(&r.t[&format!("{name}.image_embeds")], &text_embeds)
        .unwrap();
    let d = max_abs_diff(&logits, &r.t[&format!("{name}.logits_per_image")]);
    assert!(d <= 1e-4 * clip.logit_scale().max(1.0), "{name}: logits differ by {d}");
    let norms = l2_normalize(&image_proj)
        .unwrap()
        .sqr()
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
}

#[test]
fn tiny_quick_gelu_matches_transformers() {
    check_model("tiny");
    let clip = Clip::from_dir(&fixture("clip/tiny"), &Device::Cpu).unwrap();
    assert!((clip.logit_scale() - 100.0).abs() < 1e-3);
}

#[test]
fn tiny_gelu_f16_matches_transformers() {
    check_model("tiny-gelu");
}

#[test]
fn bad_input_is_an_error() {
    let clip = Clip::from_dir(&fixture("clip/tiny"), &Device::Cpu).unwrap();
    let eot = 913;
    assert!(clip.encode_text(&[], eot).is_err());
    assert!(clip.encode_text(&[vec![]], eot).is_err());
    assert!(
        clip.encode_text(&[vec![5_000, eot]], eot)
            .unwrap_err()
            .to_string()
            .contains("outside the vocabulary")
    );
    assert!(
        clip.encode_text(&[vec![1; 78]], eot)
            .unwrap_err()
            .to_string()
            .contains("longer")
    );
    let wrong = Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(
        clip.encode_images(&wrong)
            .unwrap_err()
            .to_string()
            .contains("pixel values")
    );
    // A config that is not CLIP's, and a checkpoint without weights.
    assert!(Clip::from_dir(&fixture("qwen2"), &Device::Cpu).is_err());
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("clip/tiny/config.json"), dir.path().join("config.json")).unwrap();
    let err = Clip::from_dir(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no model.safetensors"), "{err}");
}
