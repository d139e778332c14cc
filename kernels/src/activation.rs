//! Quantizing the activation rows to 8 bits, once per call, into the interleaved layout.
//!
//! The rounding is candle's (`BlockQ8_0::from_float`, `BlockQ8_1::from_float`,
//! `BlockQ8K::from_float`), so the integer dot products equal the ones candle's `QMatMul`
//! computes and the two results differ only by float summation order. This runs on one
//! thread: it touches `rows * k` values, a small fraction of the weight work.

use half::f16;

use crate::QuantType;
use crate::layout::{LANES, Layout, VECTOR};

/// One group of an activation row: its interleaved bytes and per-lane values, together so
/// that the kernels find everything a group needs at one address. Cache-line aligned: a
/// 32-byte load that straddles two lines costs two of the core's two loads per cycle, and a
/// tile of several rows is limited by its loads (4-row Q8_0 tiles ran 40% faster aligned).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct XGroup<const NV: usize> {
    pub q: [[i8; VECTOR]; NV],
    /// `offset * sum(q over the lane)`, subtracted from the lane's integer dot product.
    pub corr: [i32; LANES],
    /// Scale of each lane (the scale of its block or super-block).
    pub d: [f32; LANES],
    /// Formats with a minimum only: the lane's activation sum in real units, multiplied by
    /// the weight lane's minimum.
    pub min: [f32; LANES],
}

impl<const NV: usize> XGroup<NV> {
    pub const ZERO: XGroup<NV> = XGroup {
        q: [[0; VECTOR]; NV],
        corr: [0; LANES],
        d: [0.0; LANES],
        min: [0.0; LANES],
    };
}

/// Quantized activation rows: `rows * layout.wide` wide groups, then the narrow ones.
pub(crate) struct Activations {
    layout: Layout,
    wide: Vec<XGroup<8>>,
    narrow: Vec<XGroup<4>>,
}

/// One activation row of [`Activations`].
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub wide: &'a [XGroup<8>],
    pub narrow: &'a [XGroup<4>],
}

impl Activations {
    pub fn quantize(ty: QuantType, layout: &Layout, offset: i32, x: &[f32], rows: usize, k: usize) -> Activations {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features.
            return unsafe { Self::quantize_avx2(ty, layout, offset, x, rows, k) };
        }
        Self::quantize_portable(ty, layout, offset, x, rows, k)
    }

    /// The same code compiled for AVX2, for builds without `-C target-cpu=native`: on
    /// baseline x86-64 (no SSE4.1) `f32::round` is a libm call per value; here it is a
    /// vector instruction sequence.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn quantize_avx2(ty: QuantType, layout: &Layout, offset: i32, x: &[f32], rows: usize, k: usize) -> Activations {
        Self::quantize_portable(ty, layout, offset, x, rows, k)
    }

    #[inline(always)]
    fn quantize_portable(ty: QuantType, layout: &Layout, offset: i32, x: &[f32], rows: usize, k: usize) -> Activations {
        let mut act = Activations {
            layout: *layout,
            wide: vec![XGroup::ZERO; rows * layout.wide],
            narrow: vec![XGroup::ZERO; rows * layout.narrow],
        };
        let k_blocks = matches!(ty, QuantType::Q4K | QuantType::Q6K);
        let block = if k_blocks { 256 } else { 32 };
        let blocks = k / block;
        let mut natural = vec![0i8; layout.bytes()];
        let mut interleaved = vec![0i8; layout.bytes()];
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
            layout.interleave(&natural, &mut interleaved);
            let mut start = 0;
            for g in 0..layout.groups() {
                let lane_len = layout.lane_len(g);
                let (q, corr, d, min) = if g < layout.wide {
                    let grp = &mut act.wide[r * layout.wide + g];
                    (grp.q.as_flattened_mut(), &mut grp.corr, &mut grp.d, &mut grp.min)
                } else {
                    let grp = &mut act.narrow[r * layout.narrow + g - layout.wide];
                    (grp.q.as_flattened_mut(), &mut grp.corr, &mut grp.d, &mut grp.min)
                };
                q.copy_from_slice(&interleaved[start..start + LANES * lane_len]);
                for i in 0..LANES {
                    let lane_start = layout.lane_start(g, i);
                    let b = lane_start / block;
                    if b >= blocks {
                        // Padding: zero values and scales.
                        continue;
                    }
                    let sum: i32 = natural[lane_start..lane_start + lane_len]
                        .iter()
                        .map(|&q| q as i32)
                        .sum();
                    d[i] = block_d[b];
                    corr[i] = offset * sum;
                    match ty {
                        // The block's minimum term counted once, on its first lane.
                        QuantType::Q4_1 if lane_start.is_multiple_of(block) => min[i] = block_s[b],
                        QuantType::Q4K => min[i] = block_d[b] * sum as f32,
                        _ => {}
                    }
                }
                start += LANES * lane_len;
            }
        }
        act
    }

    pub fn row(&self, r: usize) -> ActRow<'_> {
        let (wide, narrow) = (self.layout.wide, self.layout.narrow);
        ActRow {
            wide: &self.wide[r * wide..(r + 1) * wide],
            narrow: &self.narrow[r * narrow..(r + 1) * narrow],
        }
    }
}

/// candle's `BlockQ8_0::from_float` (and `BlockQ8_1`, which adds the sum): returns the
/// scale as stored (f16, widened) and the Q8_1 `s`.
#[inline(always)]
fn quantize_q8_0(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = abs_max(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &x) in q.iter_mut().zip(x) {
        *q = saturate_i8(round_half_away(x * id));
        sum += *q as i32;
    }
    let dh = f16::from_f32(d);
    (dh.to_f32(), (f16::from_f32(sum as f32) * dh).to_f32())
}

/// candle's `BlockQ8K::from_float`: the value of largest magnitude maps to -128.
#[inline(always)]
fn quantize_q8k(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = abs_max(x);
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    // The first value of that magnitude, as candle's running comparison keeps.
    let max = x.iter().copied().find(|x| x.abs() == amax).unwrap_or(amax);
    let iscale = -128.0 / max;
    for (q, &x) in q.iter_mut().zip(x) {
        *q = saturate_i8(round_half_away(iscale * x).min(127.0));
    }
    1.0 / iscale
}

/// The largest magnitude in `x` (NaNs ignored, as `f32::max` does), computed lane-wise so
/// that it vectorises: one running maximum is a chain of dependent instructions.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let mut amax = 0f32;
    for &x in chunks.remainder() {
        if x.abs() > amax {
            amax = x.abs();
        }
    }
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            if x.abs() > *l {
                *l = x.abs();
            }
        }
    }
    lanes.iter().fold(amax, |m, &l| if l > m { l } else { m })
}

/// `f32::round` (halves away from zero) in operations that vectorise; `round` itself is a
/// scalar libm-style sequence per value here.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    // Exact: `x` and `t` share their exponent or `t` is 0.
    if (x - t).abs() >= 0.5 { t + 1f32.copysign(x) } else { t }
}

/// `x as i8` (saturating, NaN to 0) in operations that vectorise: the cast itself
/// compiles to a scalar conversion, clamps and an insert per value.
#[inline(always)]
fn saturate_i8(x: f32) -> i8 {
    let x = if x.is_nan() { 0.0 } else { x.clamp(-128.0, 127.0) };
    // SAFETY: `x` is finite and within i32's range.
    unsafe { x.to_int_unchecked::<i32>() as i8 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_maxima_match_the_standard_library() {
        let mut values: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.25).collect();
        values.extend([
            0.5,
            -0.5,
            1.5,
            -2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
            1e30,
            -0.0,
            f32::NAN,
        ]);
        for &x in &values {
            let (want, got) = (x.round(), round_half_away(x));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "{x}: {got} vs {want}"
            );
        }
        for &x in values
            .iter()
            .chain(&[300.7, -1e9, f32::INFINITY, f32::NEG_INFINITY, 127.4, -128.6])
        {
            assert_eq!(saturate_i8(x), x as i8, "{x}");
        }
        for len in [1, 15, 16, 17, 32, 256] {
            let x: Vec<f32> = (0..len).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.3).collect();
            let want = x.iter().fold(0f32, |m, &x| m.max(x.abs()));
            assert_eq!(abs_max(&x), want, "len {len}");
            let mut with_nan = x.clone();
            with_nan[len / 2] = f32::NAN;
            let want = with_nan.iter().fold(0f32, |m, &x| m.max(x.abs()));
            assert_eq!(abs_max(&with_nan), want, "len {len} with a NaN");
        }
    }
}
