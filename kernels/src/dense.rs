//! Dense f32 linear layers on the CPU: `act(x · Wᵀ + b)` written once into one output
//! buffer.
//!
//! candle computes a linear layer as a matmul into a freshly zeroed buffer, then a second
//! buffer for the bias (`broadcast_add`) and one to three more for the activation (CLIP's
//! quick-GELU is a multiply, a sigmoid and another multiply). For a ViT-B/32 batch of 32
//! images those passes cost as much as a fifth of the matrix products. Here the output
//! rows start as copies of the bias, the GEMM (the `gemm` crate, as candle uses it)
//! accumulates into them, and the activation runs in place with the vectorised functions
//! of `elementwise`.

use crate::elementwise;
use crate::{Error, Result};

/// What runs on the output after the bias.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact GELU, `x/2 · (1 + erf(x/√2))`.
    GeluErf,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x · sigmoid(1.702 x)`, OpenAI CLIP's activation.
    QuickGelu,
}

/// How the `[n, k]` weight of a linear layer (n outputs, k inputs) lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[n, k]` row-major, as checkpoints store it.
    OutIn,
    /// `[k, n]` row-major (the transpose). The `gemm` crate multiplies this layout without
    /// repacking it when the activation has few rows; `OutIn` is repacked on every call.
    InOut,
}

/// `epilogue(x · wᵀ + bias)` for `x`: `[rows, k]` row-major and `w`: `[n, k]` stored as
/// `layout` says; returns `[rows, n]` row-major.
#[allow(clippy::too_many_arguments)]
pub fn linear_f32(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    layout: WeightLayout,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Result<Vec<f32>> {
    let overflow = || Error::Overflow { rows, n, k };
    let x_len = rows.checked_mul(k).ok_or_else(overflow)?;
    let w_len = n.checked_mul(k).ok_or_else(overflow)?;
    let out_len = rows.checked_mul(n).ok_or_else(overflow)?;
    if x.len() != x_len {
        return Err(Error::InputSize {
            rows,
            k,
            expected: x_len,
            actual: x.len(),
        });
    }
    if w.len() != w_len {
        return Err(Error::DenseWeightSize {
            n,
            k,
            expected: w_len,
            actual: w.len(),
        });
    }
    if let Some(b) = bias
        && b.len() != n
    {
        return Err(Error::OutputSize {
            rows: 1,
            n,
            expected: n,
            actual: b.len(),
        });
    }
    let mut out = match bias {
        Some(b) if n > 0 => {
            let mut out = Vec::with_capacity(out_len);
            for _ in 0..rows {
                out.extend_from_slice(b);
            }
            out
        }
        _ => vec![0.0; out_len],
    };
    if out_len == 0 {
        return Ok(out);
    }
    if k > 0 {
        let threads = rayon::current_num_threads();
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // Strides of wᵀ, the `[k, n]` right-hand side: (column, row).
        let (rhs_cs, rhs_rs) = match layout {
            WeightLayout::OutIn => (k as isize, 1),
            WeightLayout::InOut => (1, n as isize),
        };
        // SAFETY: the three pointers cover `rows * k`, `n * k` and `rows * n` values (checked
        // above) and the strides address exactly those matrices; `out` is not aliased.
        // dst = 1 · dst + 1 · x · wᵀ.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                bias.is_some(),
                x.as_ptr(),
                1,
                k as isize,
                w.as_ptr(),
                rhs_cs,
                rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
    apply(&mut out, epilogue);
    Ok(out)
}

/// Runs `epilogue` in place over `data`.
pub fn apply(data: &mut [f32], epilogue: Epilogue) {
    match epilogue {
        Epilogue::None => {}
        Epilogue::GeluErf => elementwise::gelu_erf(data),
        Epilogue::GeluTanh => elementwise::gelu_tanh(data),
        Epilogue::QuickGelu => elementwise::quick_gelu(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0.0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |b| b[j] as f64);
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[j * k + i] as f64;
                }
                out[r * n + j] = acc as f32;
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_a_float64_reference_with_and_without_bias() {
        for (rows, k, n) in [(1, 7, 5), (5, 384, 97), (64, 33, 130), (3, 0, 4)] {
            let x = values(rows * k, 1);
            let w = values(n * k, 2);
            let b = values(n, 3);
            let w_t: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for bias in [None, Some(b.as_slice())] {
                let want = reference(&x, rows, k, &w, n, bias);
                for (layout, stored) in [(WeightLayout::OutIn, &w), (WeightLayout::InOut, &w_t)] {
                    let got = linear_f32(&x, rows, k, stored, n, layout, bias, Epilogue::None).unwrap();
                    for (g, e) in got.iter().zip(&want) {
                        assert!(
                            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{layout:?} [{rows},{k}]x[{n},{k}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn epilogues_equal_the_activation_of_the_plain_product() {
        let (rows, k, n) = (9, 40, 33);
        let x = values(rows * k, 4);
        let w = values(n * k, 5);
        let b = values(n, 6);
        let plain = linear_f32(&x, rows, k, &w, n, WeightLayout::OutIn, Some(&b), Epilogue::None).unwrap();
        for (epilogue, f) in [
            (
                Epilogue::GeluErf,
                (|v: f64| 0.5 * v * (1.0 + libm_erf(v / 2f64.sqrt()))) as fn(f64) -> f64,
            ),
            (Epilogue::GeluTanh, |v: f64| {
                0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
            }),
            (Epilogue::QuickGelu, |v: f64| v / (1.0 + (-1.702 * v).exp())),
        ] {
            let got = linear_f32(&x, rows, k, &w, n, WeightLayout::OutIn, Some(&b), epilogue).unwrap();
            for (g, p) in got.iter().zip(&plain) {
                let want = f(*p as f64);
                assert!(
                    (*g as f64 - want).abs() < 2e-6 * (1.0 + want.abs()),
                    "{epilogue:?}({p}) = {g}, want {want}"
                );
            }
        }
    }

    fn libm_erf(x: f64) -> f64 {
        // Abramowitz & Stegun 7.1.28 is too coarse for a reference; integrate instead.
        let steps = 2000;
        let h = x / steps as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..steps {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn bad_sizes_are_errors() {
        let x = vec![0.0; 6];
        let w = vec![0.0; 6];
        assert!(matches!(
            linear_f32(&x, 2, 4, &w, 2, WeightLayout::OutIn, None, Epilogue::None),
            Err(Error::InputSize { .. })
        ));
        assert!(matches!(
            linear_f32(&x, 2, 3, &w, 3, WeightLayout::OutIn, None, Epilogue::None),
            Err(Error::DenseWeightSize { .. })
        ));
        assert!(matches!(
            linear_f32(&x, 2, 3, &w, 2, WeightLayout::OutIn, Some(&[1.0]), Epilogue::None),
            Err(Error::OutputSize { .. })
        ));
        assert!(matches!(
            linear_f32(&x, usize::MAX, 3, &w, 2, WeightLayout::OutIn, None, Epilogue::None),
            Err(Error::Overflow { .. })
        ));
    }
}
