//! Quantizing the activation rows to 8 bits, once per call, into the interleaved layout.
//!
//! The rounding is candle's (`BlockQ8_0::from_float`, `BlockQ8_1::from_float`,
//! `BlockQ8K::from_float`), so the integer dot products equal the ones candle's `QMatMul`
//! computes and the two results differ only by float summation order. This runs on one
//! thread: it touches `rows * k` values, a small fraction of the weight work.

use half::f16;

use crate::QuantType;
use crate::layout::{LANES, Layout};

/// Quantized activation rows, each in the interleaved layout with its per-lane values.
pub(crate) struct Activations {
    bytes: usize,
    lanes: usize,
    q: Vec<i8>,
    /// Scale of each lane (the scale of its block or super-block).
    d: Vec<f32>,
    /// `offset * sum(q over the lane)`, subtracted from the lane's integer dot product.
    corr: Vec<i32>,
    /// Formats with a minimum only: the lane's activation sum in real units, multiplied by
    /// the weight lane's minimum. Empty otherwise.
    min: Vec<f32>,
}

/// One activation row of [`Activations`].
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub corr: &'a [i32],
    pub min: &'a [f32],
}

impl Activations {
    pub fn quantize(ty: QuantType, layout: &Layout, offset: i32, x: &[f32], rows: usize, k: usize) -> Activations {
        let (bytes, lanes) = (layout.bytes(), layout.lanes());
        let mut act = Activations {
            bytes,
            lanes,
            q: vec![0; rows * bytes],
            d: vec![0.0; rows * lanes],
            corr: vec![0; rows * lanes],
            min: if ty.has_min() {
                vec![0.0; rows * lanes]
            } else {
                Vec::new()
            },
        };
        let k_blocks = matches!(ty, QuantType::Q4K | QuantType::Q6K);
        let block = if k_blocks { 256 } else { 32 };
        let blocks = k / block;
        let mut natural = vec![0i8; bytes];
        let mut block_d = vec![0f32; blocks];
        // Q4_1 only: candle's `BlockQ8_1::s`, the block sum times its scale, in f16.
        let mut block_s = vec![0f32; blocks];
        for r in 0..rows {
            let x = &x[r * k..(r + 1) * k];
            for b in 0..blocks {
                let (x, q) = (&x[b * block..][..block], &mut natural[b * block..][..block]);
                if k_blocks {
                    block_d[b] = quantize_q8k(x, q);
                } else {
                    (block_d[b], block_s[b]) = quantize_q8_0(x, q);
                }
            }
            let lane_range = r * lanes..(r + 1) * lanes;
            let (d, corr) = (&mut act.d[lane_range.clone()], &mut act.corr[lane_range.clone()]);
            let mut start = 0;
            for g in 0..layout.groups() {
                let lane_len = layout.lane_len(g);
                for i in 0..LANES {
                    let lane = g * LANES + i;
                    let b = start / block;
                    if b < blocks {
                        let sum: i32 = natural[start..start + lane_len].iter().map(|&q| q as i32).sum();
                        d[lane] = block_d[b];
                        corr[lane] = offset * sum;
                        match ty {
                            // The block's minimum term counted once, on its first lane.
                            QuantType::Q4_1 if start % block == 0 => act.min[lane_range.start + lane] = block_s[b],
                            QuantType::Q4K => act.min[lane_range.start + lane] = block_d[b] * sum as f32,
                            _ => {}
                        }
                    }
                    start += lane_len;
                }
            }
            layout.interleave(&natural, &mut act.q[r * bytes..(r + 1) * bytes]);
        }
        act
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let lanes = r * self.lanes..(r + 1) * self.lanes;
        ActRow {
            q: &self.q[r * self.bytes..(r + 1) * self.bytes],
            d: &self.d[lanes.clone()],
            corr: &self.corr[lanes.clone()],
            min: if self.min.is_empty() { &[] } else { &self.min[lanes] },
        }
    }
}

/// candle's `BlockQ8_0::from_float` (and `BlockQ8_1`, which adds the sum): returns the
/// scale as stored (f16, widened) and the Q8_1 `s`.
fn quantize_q8_0(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |m, &x| m.max(x.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &x) in q.iter_mut().zip(x) {
        *q = (x * id).round() as i8;
        sum += *q as i32;
    }
    let dh = f16::from_f32(d);
    (dh.to_f32(), (f16::from_f32(sum as f32) * dh).to_f32())
}

/// candle's `BlockQ8K::from_float`: the value of largest magnitude maps to -128.
fn quantize_q8k(x: &[f32], q: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &x in x {
        if amax < x.abs() {
            amax = x.abs();
            max = x;
        }
    }
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let iscale = -128.0 / max;
    for (q, &x) in q.iter_mut().zip(x) {
        *q = (iscale * x).round().min(127.0) as i8;
    }
    1.0 / iscale
}
