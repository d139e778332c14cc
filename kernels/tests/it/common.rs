//! Random quantized weights and activations, quantized by candle, and error measures.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_kernels::QuantType;

pub fn ggml_dtype(ty: QuantType) -> GgmlDType {
    match ty {
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q6K => GgmlDType::Q6K,
    }
}

/// `len` values of roughly unit size, with a few larger ones as real activations have, and
/// an offset so that formats with a minimum see non-centred blocks.
pub fn random_values(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| {
            let v: f32 = rng.random_range(-1.0..1.0);
            if rng.random_range(0..64) == 0 { 8.0 * v } else { v + 0.1 }
        })
        .collect()
}

/// A weight matrix `[n, k]` quantized by candle.
pub struct Weight {
    pub n: usize,
    pub k: usize,
    pub bytes: Vec<u8>,
    pub qtensor: std::sync::Arc<QTensor>,
}

impl Weight {
    pub fn random(ty: QuantType, n: usize, k: usize, seed: u64) -> Weight {
        let w = Tensor::from_vec(random_values(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let qtensor = QTensor::quantize(&w, ggml_dtype(ty)).unwrap();
        let bytes = qtensor.data().unwrap().into_owned();
        Weight {
            n,
            k,
            bytes,
            qtensor: std::sync::Arc::new(qtensor),
        }
    }

    /// candle's quantized product, `x: [rows, k]`.
    pub fn candle_qmatmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mm = QMatMul::from_arc(self.qtensor.clone()).unwrap();
        let x = Tensor::from_vec(x.to_vec(), (rows, self.k), &Device::Cpu).unwrap();
        mm.forward(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The exact product with the dequantized weights, in f64.
    pub fn dequantized_matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let w: Vec<f32> = self
            .qtensor
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut y = vec![0f32; rows * self.n];
        for r in 0..rows {
            for j in 0..self.n {
                let (x, w) = (&x[r * self.k..][..self.k], &w[j * self.k..][..self.k]);
                y[r * self.n + j] = x.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
            }
        }
        y
    }
}

/// Largest difference relative to the largest magnitude of the reference, per row (the
/// scale of a row's outputs is what an error should be compared with; single outputs
/// can be near zero by cancellation).
pub fn relative_error(got: &[f32], want: &[f32], rows: usize) -> f32 {
    assert_eq!(got.len(), want.len());
    let n = want.len() / rows.max(1);
    (0..rows)
        .map(|r| {
            let (got, want) = (&got[r * n..][..n], &want[r * n..][..n]);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max) / scale
        })
        .fold(0f32, f32::max)
}
