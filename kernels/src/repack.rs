//! Weight matrices rearranged once, at load time, into the kernels' interleaved layout.
//!
//! A ggml block stores its values in natural order, so every product used to transpose
//! each group of 8 blocks into the interleaved layout (`layout`) before multiplying it:
//! with several activation rows (beams) that shuffling was half of the kernel's time, and
//! it was repeated on every call. [`QuantizedWeight`] holds the same bits already
//! interleaved: per group a small header (scales, minimums) and the values packed as
//! tightly as in the file, so that unpacking is a few masks and shifts and the matrix is
//! no larger than the ggml original (padding of a row's last group aside).
//!
//! Group formats (all little-endian; `I_v` is interleaved vector `v` of the group's
//! unsigned values, see `decode`):
//! - Q4_0, Q4_1, Q5_0: f16 scale per lane (8, or 4 for a narrow group: its lanes `i` and
//!   `i + 4` share block `i`), then (Q4_1) f16 minimums likewise, then nibble vectors
//!   `I_u | I_(u + h) << 4` with `h` half the group's vectors; Q5_0 then adds the fifth
//!   bits: byte `b` of a 32-byte vector has bit `j` set where `I_j[b]` has bit 4 (narrow
//!   groups: 16 bytes, bit `j` for byte `b` and bit `4 + j` for byte `16 + b`).
//! - Q8_0: f16 scales as above, then the vectors of `w + 128`.
//! - Q4_K (one wide group per super-block): f16 `d` and `dmin`, the 8 sub-block scales and
//!   the 8 minimums as bytes, then nibble vectors as above.
//! - Q6_K (one narrow group per half super-block): f16 `d`, the 8 i8 sub-block scales in
//!   lane order, nibble vectors of the low 4 bits, then one vector whose byte `b` holds
//!   bits 4-5 of `I_j[b]` at bits `2j`-`2j + 1`.

use rayon::prelude::*;

use crate::buffer::WeightBuffer;

use crate::decode::{DecodedRow, decode_row, f16_at, scale_min_k4};
use crate::layout::{LANES, Layout, VECTOR, narrow_run};
use crate::{Error, Mode, QuantType, Result};

/// Bytes of one wide group of a repacked row (0: the type has none).
pub(crate) const fn wide_bytes(ty: QuantType) -> usize {
    match ty {
        QuantType::Q4_0 => 16 + 4 * VECTOR,
        QuantType::Q4_1 => 32 + 4 * VECTOR,
        QuantType::Q5_0 => 16 + 5 * VECTOR,
        QuantType::Q8_0 => 16 + 8 * VECTOR,
        QuantType::Q4K => 20 + 4 * VECTOR,
        QuantType::Q6K => 0,
    }
}

/// Bytes of one narrow group of a repacked row (0: the type has none).
pub(crate) const fn narrow_bytes(ty: QuantType) -> usize {
    match ty {
        QuantType::Q4_0 => 8 + 2 * VECTOR,
        QuantType::Q4_1 => 16 + 2 * VECTOR,
        QuantType::Q5_0 => 8 + 2 * VECTOR + 16,
        QuantType::Q8_0 => 8 + 4 * VECTOR,
        QuantType::Q4K => 0,
        QuantType::Q6K => 10 + 3 * VECTOR,
    }
}

/// Offset of group `g` in a repacked row.
#[inline(always)]
pub(crate) fn group_offset(ty: QuantType, layout: &Layout, g: usize) -> usize {
    if g < layout.wide {
        g * wide_bytes(ty)
    } else {
        layout.wide * wide_bytes(ty) + (g - layout.wide) * narrow_bytes(ty)
    }
}

/// The offset the repacked values carry (Q8_0 is stored as `w + 128`).
const fn stored_offset(ty: QuantType) -> i32 {
    match ty {
        QuantType::Q8_0 => 128,
        _ => 0,
    }
}

/// A ggml-quantized weight matrix `[n, k]` in the kernels' layout: what a model keeps
/// for its linear layers on the CPU. Built once from the GGUF bytes.
#[derive(Clone)]
pub struct QuantizedWeight {
    ty: QuantType,
    n: usize,
    k: usize,
    layout: Layout,
    row_bytes: usize,
    bytes: WeightBuffer,
}

impl std::fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantizedWeight({:?} [{}, {}])", self.ty, self.n, self.k)
    }
}

impl QuantizedWeight {
    /// Repacks `W: [n, k]` given as its raw GGUF bytes (each row `k / block_size`
    /// consecutive blocks, as in candle's `QTensor::data()`).
    pub fn from_ggml(ty: QuantType, ggml: &[u8], n: usize, k: usize) -> Result<QuantizedWeight> {
        crate::check_weight(ty, ggml.len(), n, k)?;
        let layout = Layout::new(ty, k);
        let row_bytes = layout.wide * wide_bytes(ty) + layout.narrow * narrow_bytes(ty);
        let total = row_bytes.checked_mul(n).ok_or(Error::Overflow { rows: 0, n, k })?;
        let mut bytes = WeightBuffer::zeroed(total);
        let ggml_row = k / ty.block_size() * ty.block_bytes();
        if ggml_row > 0 {
            let mode = Mode {
                offset: stored_offset(ty),
                signed: false,
            };
            // On every thread: this is most of a model's load time after reading the file.
            ggml.par_chunks_exact(ggml_row)
                .zip(bytes.par_chunks_exact_mut(row_bytes))
                .with_min_len(64)
                .for_each_init(
                    || DecodedRow::new(ty, &layout),
                    |decoded, (src, dst)| {
                        decode_row(ty, &layout, mode, src, decoded);
                        pack_row(ty, &layout, src, decoded, dst);
                    },
                );
        }
        Ok(QuantizedWeight {
            ty,
            n,
            k,
            layout,
            row_bytes,
            bytes,
        })
    }

    pub fn ty(&self) -> QuantType {
        self.ty
    }

    /// Output features (rows of `W`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input features (columns of `W`).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// `[self; other]`: the rows of both, when they can be one matrix (same type and `k`).
    /// Rows are repacked independently, so this is a concatenation.
    pub fn stack(&self, other: &QuantizedWeight) -> Option<QuantizedWeight> {
        if self.ty != other.ty || self.k != other.k {
            return None;
        }
        let mut bytes = WeightBuffer::zeroed(self.bytes.len() + other.bytes.len());
        let (top, bottom) = bytes.split_at_mut(self.bytes.len());
        top.copy_from_slice(&self.bytes);
        bottom.copy_from_slice(&other.bytes);
        Some(QuantizedWeight {
            n: self.n + other.n,
            bytes,
            ..*self
        })
    }

    /// Rows `ids` of `W`, dequantized (`[ids.len(), k]`, row-major) exactly as ggml's
    /// `dequantize_row_*` computes them: for looking tokens up in an embedding table that
    /// doubles as the output projection.
    pub fn dequantize_rows(&self, ids: &[usize]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.k];
        let mut decoded = DecodedRow::new(self.ty, &self.layout);
        // The unpacked values carry the scalar mode's offset (the stored one for Q8_0).
        let offset = Mode::new(self.ty, crate::Isa::Scalar).offset;
        for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.k.max(1))) {
            if id >= self.n {
                return Err(Error::RowOutOfRange { row: id, n: self.n });
            }
            let row = &self.bytes[id * self.row_bytes..][..self.row_bytes];
            unpack_row(self.ty, &self.layout, row, &mut decoded);
            let mut group_start = 0;
            for g in 0..self.layout.groups() {
                let lane_len = self.layout.lane_len(g);
                for i in 0..LANES {
                    let first = self.layout.lane_start(g, i);
                    if first >= self.k {
                        continue;
                    }
                    let lane = g * LANES + i;
                    let scale = decoded.scale[lane];
                    for t in 0..lane_len {
                        let q = decoded.q[group_start + t / 4 * VECTOR + 4 * i + t % 4] as i32 - offset;
                        out[first + t] = match self.ty {
                            // ggml's order: `q * d + m`, no fused multiply-add.
                            QuantType::Q4_1 | QuantType::Q4K => q as f32 * scale + decoded.min[lane],
                            _ => q as f32 * scale,
                        };
                    }
                }
                group_start += LANES * lane_len;
            }
        }
        Ok(out)
    }
}

/// Writes the repacked form of one row: `ggml` is its GGUF bytes (for the raw scales),
/// `decoded` its interleaved values with the stored offset.
fn pack_row(ty: QuantType, layout: &Layout, ggml: &[u8], decoded: &DecodedRow, out: &mut [u8]) {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    let blocks = ggml.len() / bb;
    let mut q_start = 0;
    for g in 0..layout.groups() {
        let wide = g < layout.wide;
        let vectors = if wide { 8 } else { 4 };
        let q = &decoded.q[q_start..q_start + vectors * VECTOR];
        q_start += vectors * VECTOR;
        let out = &mut out[group_offset(ty, layout, g)..];
        match ty {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q8_0 => {
                // One f16 per block of the group: lanes 0..8, or the 4 blocks of a narrow group.
                let lanes = if wide { LANES } else { LANES / 2 };
                let mut at = 0;
                let header_fields = if ty == QuantType::Q4_1 { 2 } else { 1 };
                for field in 0..header_fields {
                    for i in 0..lanes {
                        let b = layout.lane_start(g, i) / bs;
                        if b < blocks {
                            out[at..at + 2].copy_from_slice(&ggml[b * bb + 2 * field..][..2]);
                        }
                        at += 2;
                    }
                }
                if ty == QuantType::Q8_0 {
                    out[at..at + vectors * VECTOR].copy_from_slice(q);
                    continue;
                }
                at += pack_nibbles(q, &mut out[at..]);
                if ty == QuantType::Q5_0 {
                    pack_fifth_bits(q, &mut out[at..]);
                }
            }
            QuantType::Q4K => {
                let blk = &ggml[g * bb..(g + 1) * bb];
                out[..4].copy_from_slice(&blk[..4]);
                for i in 0..LANES {
                    let (sc, mn) = scale_min_k4(i, &blk[4..16]);
                    out[4 + i] = sc;
                    out[12 + i] = mn;
                }
                pack_nibbles(q, &mut out[20..]);
            }
            QuantType::Q6K => {
                let blk = &ggml[g / 2 * bb..(g / 2 + 1) * bb];
                out[..2].copy_from_slice(&blk[208..210]);
                for i in 0..LANES {
                    out[2 + i] = blk[192 + 8 * (g % 2) + narrow_run(i)];
                }
                let at = 10 + pack_nibbles(q, &mut out[10..]);
                let high = &mut out[at..at + VECTOR];
                high.fill(0);
                for (j, v) in q.chunks_exact(VECTOR).enumerate() {
                    for (h, &x) in high.iter_mut().zip(v) {
                        *h |= ((x >> 4) & 3) << (2 * j);
                    }
                }
            }
        }
    }
}

/// Low nibbles of vector `u` and of vector `u + half` (of the group's vectors `q`) in
/// one byte; returns the bytes written.
fn pack_nibbles(q: &[u8], out: &mut [u8]) -> usize {
    let (low, high) = q.split_at(q.len() / 2);
    for ((o, &l), &h) in out[..low.len()].iter_mut().zip(low).zip(high) {
        *o = (l & 0xF) | (h & 0xF) << 4;
    }
    low.len()
}

/// Q5_0's bit 4 of every value of the group's vectors `q`, see the module docs.
fn pack_fifth_bits(q: &[u8], out: &mut [u8]) {
    let wide = q.len() == 8 * VECTOR;
    let out = &mut out[..if wide { VECTOR } else { VECTOR / 2 }];
    out.fill(0);
    for (j, v) in q.chunks_exact(VECTOR).enumerate() {
        if wide {
            for (o, &x) in out.iter_mut().zip(v) {
                *o |= ((x >> 4) & 1) << j;
            }
        } else {
            let (first, second) = v.split_at(VECTOR / 2);
            for ((o, &a), &b) in out.iter_mut().zip(first).zip(second) {
                *o |= ((a >> 4) & 1) << j | ((b >> 4) & 1) << (4 + j);
            }
        }
    }
}

/// The portable unpacking of a repacked row into interleaved values (with the type's
/// scalar-mode offset, which is the stored one) and per-lane scales and minimums: what
/// the SIMD decoders compute in registers.
pub(crate) fn unpack_row(ty: QuantType, layout: &Layout, row: &[u8], out: &mut DecodedRow) {
    let mut q_start = 0;
    for g in 0..layout.groups() {
        let wide = g < layout.wide;
        let vectors = if wide { 8 } else { 4 };
        let q = &mut out.q[q_start..q_start + vectors * VECTOR];
        q_start += vectors * VECTOR;
        let bytes = &row[group_offset(ty, layout, g)..];
        let lanes = g * LANES..(g + 1) * LANES;
        let (scale, min) = (&mut out.scale[lanes.clone()], &mut out.min);
        match ty {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q8_0 => {
                let n = if wide { LANES } else { LANES / 2 };
                for i in 0..LANES {
                    scale[i] = f16_at(bytes, 2 * (i % n));
                    if ty == QuantType::Q4_1 {
                        min[g * LANES + i] = f16_at(bytes, 2 * n + 2 * (i % n));
                    }
                }
                let at = if ty == QuantType::Q4_1 { 4 * n } else { 2 * n };
                if ty == QuantType::Q8_0 {
                    q.copy_from_slice(&bytes[at..at + vectors * VECTOR]);
                    continue;
                }
                let at = at + unpack_nibbles(vectors, &bytes[at..], q);
                if ty == QuantType::Q5_0 {
                    for b in 0..VECTOR {
                        for j in 0..vectors {
                            let bit = if wide || b < 16 {
                                bytes[at + b] >> j
                            } else {
                                bytes[at + b - 16] >> (4 + j)
                            };
                            q[j * VECTOR + b] |= (bit & 1) << 4;
                        }
                    }
                }
            }
            QuantType::Q4K => {
                let (d, dmin) = (f16_at(bytes, 0), f16_at(bytes, 2));
                for i in 0..LANES {
                    scale[i] = d * bytes[4 + i] as f32;
                    min[g * LANES + i] = -dmin * bytes[12 + i] as f32;
                }
                unpack_nibbles(vectors, &bytes[20..], q);
            }
            QuantType::Q6K => {
                let d = f16_at(bytes, 0);
                for i in 0..LANES {
                    scale[i] = d * bytes[2 + i] as i8 as f32;
                }
                let at = 10 + unpack_nibbles(vectors, &bytes[10..], q);
                for b in 0..VECTOR {
                    for j in 0..4 {
                        q[j * VECTOR + b] |= ((bytes[at + b] >> (2 * j)) & 3) << 4;
                    }
                }
            }
        }
    }
}

/// Inverse of [`pack_nibbles`]; returns the bytes read.
fn unpack_nibbles(vectors: usize, packed: &[u8], q: &mut [u8]) -> usize {
    let half = vectors / 2;
    for u in 0..half {
        for b in 0..VECTOR {
            let p = packed[u * VECTOR + b];
            q[u * VECTOR + b] = p & 0xF;
            q[(u + half) * VECTOR + b] = p >> 4;
        }
    }
    half * VECTOR
}

/// Half-precision bits of an f32 (tests only).
#[cfg(test)]
fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Random GGUF rows whose f16 fields are finite.
    fn random_ggml(ty: QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut raw = bytes(n * k / ty.block_size() * ty.block_bytes(), seed);
        let bb = ty.block_bytes();
        for (b, blk) in raw.chunks_exact_mut(bb).enumerate() {
            let scale = f16_bits(0.01 + (b % 7) as f32 * 0.003);
            let fields: &[usize] = match ty {
                QuantType::Q4_1 | QuantType::Q4K => &[0, 2],
                QuantType::Q6K => &[208],
                _ => &[0],
            };
            for &at in fields {
                blk[at..at + 2].copy_from_slice(&scale);
            }
        }
        raw
    }

    #[test]
    fn unpacking_a_repacked_row_gives_the_decoded_row() {
        for ty in QuantType::ALL {
            let ks: &[usize] = match ty {
                QuantType::Q4K | QuantType::Q6K => &[256, 512],
                _ => &[32, 96, 160, 192, 256, 288, 896],
            };
            for &k in ks {
                let n = 3;
                let ggml = random_ggml(ty, n, k, k as u64);
                let w = QuantizedWeight::from_ggml(ty, &ggml, n, k).unwrap();
                let layout = Layout::new(ty, k);
                let mode = Mode::new(ty, crate::Isa::Scalar);
                let ggml_row = k / ty.block_size() * ty.block_bytes();
                let (mut want, mut got) = (DecodedRow::new(ty, &layout), DecodedRow::new(ty, &layout));
                for r in 0..n {
                    decode_row(ty, &layout, mode, &ggml[r * ggml_row..][..ggml_row], &mut want);
                    unpack_row(ty, &layout, &w.bytes()[r * w.row_bytes()..][..w.row_bytes()], &mut got);
                    assert_eq!(got.q, want.q, "{ty:?} k={k} row {r}: values");
                    assert_eq!(got.scale, want.scale, "{ty:?} k={k} row {r}: scales");
                    assert_eq!(got.min, want.min, "{ty:?} k={k} row {r}: minimums");
                }
            }
        }
    }

    #[test]
    fn repacking_keeps_the_size_of_whole_groups() {
        // Rows of whole groups keep the ggml size; k = 896 (28 blocks) too, thanks to
        // its narrow tail group. Q4_K's unpacked sub-block scales take 4 more bytes per
        // super-block (148 instead of 144); Q6_K's `d` is held by both halves (212, not 210).
        for ty in QuantType::ALL {
            let k = if ty.block_size() == 256 { 4864 } else { 896 };
            let ggml = random_ggml(ty, 2, k, 1);
            let w = QuantizedWeight::from_ggml(ty, &ggml, 2, k).unwrap();
            let extra = match ty {
                QuantType::Q4K => 2 * k / 256 * 4,
                QuantType::Q6K => 2 * k / 256 * 2,
                _ => 0,
            };
            assert_eq!(w.size_in_bytes(), ggml.len() + extra, "{ty:?}");
        }
    }

    #[test]
    fn stacking_concatenates_rows() {
        let (a, b) = (
            random_ggml(QuantType::Q5_0, 2, 64, 1),
            random_ggml(QuantType::Q5_0, 3, 64, 2),
        );
        let both: Vec<u8> = a.iter().chain(&b).copied().collect();
        let stacked = QuantizedWeight::from_ggml(QuantType::Q5_0, &a, 2, 64)
            .unwrap()
            .stack(&QuantizedWeight::from_ggml(QuantType::Q5_0, &b, 3, 64).unwrap())
            .unwrap();
        let whole = QuantizedWeight::from_ggml(QuantType::Q5_0, &both, 5, 64).unwrap();
        assert_eq!(stacked.bytes(), whole.bytes());
        assert_eq!(stacked.n(), 5);
        let other_k =
            QuantizedWeight::from_ggml(QuantType::Q5_0, &random_ggml(QuantType::Q5_0, 1, 32, 3), 1, 32).unwrap();
        assert!(stacked.stack(&other_k).is_none());
    }
}
