//! Decoding one weight row from its ggml blocks into the interleaved layout: unsigned
//! bytes (the quantized values, plus the mode's offset) and per-lane scales and minimums.
//!
//! This is the portable decoder that `repack` builds the stored form from, and the
//! reference its unpacking is tested against. Block layouts and value orders follow
//! ggml's `dequantize_row_*` (candle's `to_float`).

use half::f16;

use crate::layout::{LANES, Layout};
use crate::{Mode, QuantType};

/// Scratch holding one decoded weight row, reused for every row of a task.
pub(crate) struct DecodedRow {
    /// Interleaved weight bytes.
    pub q: Vec<u8>,
    /// Per-lane scale: the block scale, times the sub-block scale for K-quants.
    pub scale: Vec<f32>,
    /// Formats with a minimum only: the per-lane additive term (Q4_1 `m`, Q4_K `-dmin * m`).
    pub min: Vec<f32>,
    /// Natural-order staging for the portable decoder.
    natural: Vec<u8>,
    /// Scratch: per run of values sharing a scale, its scale and minimum.
    run_scale: Vec<f32>,
    run_min: Vec<f32>,
}

impl DecodedRow {
    pub fn new(ty: QuantType, layout: &Layout) -> DecodedRow {
        DecodedRow {
            q: vec![0; layout.bytes()],
            scale: vec![0.0; layout.lanes()],
            min: if ty.has_min() {
                vec![0.0; layout.lanes()]
            } else {
                Vec::new()
            },
            natural: Vec::new(),
            run_scale: Vec::new(),
            run_min: Vec::new(),
        }
    }
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of Q4_K sub-block `j`.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Decodes `row` (the GGUF bytes of one weight row) into `out`. Q8_0 weights become
/// `w + mode.offset`; the signed mode of AVX2 has its own decoder.
pub(crate) fn decode_row(ty: QuantType, layout: &Layout, mode: Mode, row: &[u8], out: &mut DecodedRow) {
    debug_assert!(!mode.signed, "the signed mode is AVX2's");
    let mut natural = std::mem::take(&mut out.natural);
    natural.clear();
    natural.resize(layout.bytes(), 0);
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    let blocks = row.len() / bb;
    // Scale and minimum of each run of values sharing them (a block, or a sub-block of a
    // K-quant), in natural order; lanes pick theirs below.
    let run = match ty {
        QuantType::Q4K => 32,
        QuantType::Q6K => 16,
        _ => 32,
    };
    // Reused across rows: a model's load decodes every row of every matrix once.
    let mut run_scale = std::mem::take(&mut out.run_scale);
    let mut run_min = std::mem::take(&mut out.run_min);
    run_scale.clear();
    run_scale.resize(blocks * bs / run, 0.0);
    run_min.clear();
    run_min.resize(blocks * bs / run, 0.0);
    for b in 0..blocks {
        let blk = &row[b * bb..(b + 1) * bb];
        let vals = &mut natural[b * bs..(b + 1) * bs];
        match ty {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q8_0 => {
                run_scale[b] = f16_at(blk, 0);
                match ty {
                    QuantType::Q4_0 => nibbles(&blk[2..18], vals),
                    QuantType::Q4_1 => {
                        run_min[b] = f16_at(blk, 2);
                        nibbles(&blk[4..20], vals)
                    }
                    QuantType::Q5_0 => {
                        nibbles(&blk[6..22], vals);
                        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                        for (j, v) in vals.iter_mut().enumerate() {
                            *v |= (((qh >> j) & 1) << 4) as u8;
                        }
                    }
                    _ => {
                        for (j, v) in vals.iter_mut().enumerate() {
                            *v = (blk[2 + j] as i8 as i32 + mode.offset) as u8;
                        }
                    }
                }
            }
            QuantType::Q4K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let (scales, qs) = (&blk[4..16], &blk[16..144]);
                for j in 0..4 {
                    let q = &qs[32 * j..32 * j + 32];
                    for l in 0..32 {
                        vals[64 * j + l] = q[l] & 0xF;
                        vals[64 * j + 32 + l] = q[l] >> 4;
                    }
                }
                for sub in 0..8 {
                    let (sc, m) = scale_min_k4(sub, scales);
                    run_scale[b * 8 + sub] = d * sc as f32;
                    run_min[b * 8 + sub] = -dmin * m as f32;
                }
            }
            QuantType::Q6K => {
                let (ql, qh, scales) = (&blk[..128], &blk[128..192], &blk[192..208]);
                let d = f16_at(blk, 208);
                for half in 0..2 {
                    let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                    let vals = &mut vals[128 * half..];
                    for l in 0..32 {
                        vals[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                        vals[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                        vals[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                        vals[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                    }
                }
                for sub in 0..16 {
                    run_scale[b * 16 + sub] = d * scales[sub] as i8 as f32;
                }
            }
        }
    }
    for g in 0..layout.groups() {
        for i in 0..LANES {
            let lane = g * LANES + i;
            // Padding lanes keep the zeros the scratch was made with.
            let Some(&scale) = run_scale.get(layout.lane_start(g, i) / run) else {
                continue;
            };
            out.scale[lane] = scale;
            if ty.has_min() {
                out.min[lane] = run_min[layout.lane_start(g, i) / run];
            }
        }
    }
    layout.interleave(&natural, &mut out.q);
    out.natural = natural;
    out.run_scale = run_scale;
    out.run_min = run_min;
}

/// ggml's nibble order: low nibbles are values 0..16, high nibbles values 16..32.
fn nibbles(qs: &[u8], vals: &mut [u8]) {
    for (j, &q) in qs.iter().enumerate() {
        vals[j] = q & 0xF;
        vals[j + 16] = q >> 4;
    }
}
