//! Shared helpers: fixture paths, tiny models, tensor comparisons.

use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use tessera_models::decoder::Decoder;
use tessera_models::engine::Engine;
use tessera_models::llama::Llama;

/// A committed fixture. `TESSERA_FIXTURES` points elsewhere than this checkout's
/// `models/tests/fixtures`, for a test binary carried to another machine (a GPU's).
pub fn fixture(name: &str) -> PathBuf {
    match std::env::var_os("TESSERA_FIXTURES").filter(|v| !v.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
    .join(name)
}

/// The device the parity and engine tests run their models on: the CPU, or
/// `TESSERA_TEST_DEVICE` (`cuda:0` on a machine with a GPU and a `--features cuda` build).
pub fn device() -> Device {
    match std::env::var("TESSERA_TEST_DEVICE") {
        Ok(spec) if !spec.is_empty() => {
            tessera_models::loader::parse_device(&spec).unwrap_or_else(|e| panic!("TESSERA_TEST_DEVICE: {e}"))
        }
        _ => Device::Cpu,
    }
}

pub fn load_fixture_llama(name: &str) -> Arc<Decoder> {
    Arc::new(Llama::from_dir(&fixture(name), &device()).unwrap_or_else(|e| panic!("{name}: {e}")))
}

/// An engine over any fixture checkpoint, dispatched on its `model_type`.
pub fn engine(name: &str) -> Engine {
    let model = tessera_models::loader::load_checkpoint_model(&fixture(name), &device())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    Engine::new(model)
}

/// Largest absolute difference, compared on the CPU whatever devices the tensors are on.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let (a, b) = (a.to_device(&Device::Cpu).unwrap(), b.to_device(&Device::Cpu).unwrap());
    (&a - &b)
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
