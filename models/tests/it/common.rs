//! Shared helpers: fixture paths, tiny models, tensor comparisons.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use tessera_models::decoder::Decoder;
use tessera_models::engine::Engine;
use tessera_models::llama::Llama;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_fixture_llama(name: &str) -> Arc<Decoder> {
    Arc::new(Llama::from_dir(&fixture(name), &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// An engine over any fixture checkpoint, dispatched on its `model_type`.
pub fn engine(name: &str) -> Engine {
    let model = tessera_models::loader::load_checkpoint_model(&fixture(name), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Engine::new(model)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The expected outputs written by `tests/fixtures/gen_parity.py`.
pub struct Expected {
    pub input_ids: Vec<Vec<u32>>,
    pub logits: Tensor,
    pub greedy: Vec<u32>,
    pub beam4: Vec<u32>,
    pub beam4_score: f32,
}

pub fn expected(name: &str) -> Expected {
    let t = candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = |k: &str| -> Vec<i64> { t[k].flatten_all().unwrap().to_vec1::<i64>().unwrap() };
    let input = t["input_ids"].to_dtype(candle_core::DType::I64).unwrap();
    let input_ids = input
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect();
    Expected {
        input_ids,
        logits: t["logits"].clone(),
        greedy: ids("greedy").into_iter().map(|x| x as u32).collect(),
        beam4: ids("beam4").into_iter().map(|x| x as u32).collect(),
        beam4_score: t["beam4_score"].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0],
    }
}
