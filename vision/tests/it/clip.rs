//! End to end on real photos: our decoding + preprocessing + CLIP (tiny random checkpoints
//! from `models/tests/fixtures/clip`) against transformers' `CLIPImageProcessorPil` +
//! `CLIPModel` on the same files.

use std::path::PathBuf;

use candle_core::Device;
use tessera_vision::pipeline::ClipPipeline;

use crate::common::data;

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/clip")
        .join(name)
}

fn reference() -> (
    Vec<String>,
    Vec<String>,
    std::collections::HashMap<String, candle_core::Tensor>,
) {
    let dir = model_dir("");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("texts.json")).unwrap()).unwrap();
    let list = |k: &str| -> Vec<String> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let t = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    (list("photos"), list("texts"), t)
}

fn max_diff(a: &[Vec<f32>], b: &candle_core::Tensor) -> f32 {
    let b = b.to_vec2::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0f32, f32::max)
}

fn check(name: &str) {
    let pipeline = ClipPipeline::from_dir(&model_dir(name), &Device::Cpu).unwrap();
    let (photos, texts, t) = reference();
    let files: Vec<PathBuf> = photos.iter().map(|p| data(&format!("photos/{p}"))).collect();
    let images: Vec<Vec<f32>> = pipeline.embed_files(&files).into_iter().map(|r| r.unwrap()).collect();
    let d_img = max_diff(&images, &t[&format!("{name}.image_embeds")]);
    // The empty text is refused by the pipeline (see bad_input); the others are compared.
    let n = texts.iter().position(String::is_empty).unwrap_or(texts.len());
    let text_emb = pipeline.embed_texts(&texts[..n]).unwrap();
    assert!(text_emb.truncated.is_empty());
    let d_txt = max_diff(
        &text_emb.embeddings,
        &t[&format!("{name}.text_embeds")].narrow(0, 0, n).unwrap(),
    );
    let table = pipeline.match_table(&images, &text_emb.embeddings);
    let logits = t[&format!("{name}.logits_per_image")].narrow(1, 0, n).unwrap();
    let scaled: Vec<Vec<f32>> = table
        .similarity
        .iter()
        .map(|row| row.iter().map(|s| s * pipeline.model.logit_scale()).collect())
        .collect();
    let d_logits = max_diff(&scaled, &logits);
    eprintln!("{name}: image embeds {d_img:.2e}, text embeds {d_txt:.2e}, logits {d_logits:.2e}");
    assert!(d_img <= 1e-4, "{name}: image embeddings differ by {d_img}");
    assert!(d_txt <= 1e-4, "{name}: text embeddings differ by {d_txt}");
    assert!(d_logits <= 1e-4, "{name}: logits differ by {d_logits}");
    // Probabilities: the softmax of the reference logits over the same texts.
    for (row, probs) in logits.to_vec2::<f32>().unwrap().iter().zip(&table.probs) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        for (p, q) in probs.iter().zip(e.iter().map(|x| x / sum)) {
            assert!((p - q).abs() <= 1e-5, "{name}: probability {p} vs {q}");
        }
    }
    // Decoded images embed like files.
    let decoded: Vec<image::RgbImage> = files
        .iter()
        .map(|f| tessera_vision::decode::load_rgb(f, &Default::default()).unwrap())
        .collect();
    let again = pipeline.embed_images(&decoded).unwrap();
    assert!(max_diff(&again, &t[&format!("{name}.image_embeds")]) <= 1e-4);
}

#[test]
fn tiny_clip_on_real_photos_matches_transformers() {
    check("tiny");
}

#[test]
fn tiny_gelu_clip_on_real_photos_matches_transformers() {
    check("tiny-gelu");
}
