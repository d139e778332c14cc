//! The x86-64 kernels, chosen at run time by [`crate::Isa`] so that one binary runs on any
//! x86-64 CPU: every function carries `#[target_feature]` and is only entered after the
//! features were detected.
//!
//! A task walks its weight rows; each group of a row is decoded once, into registers, by an
//! AVX2 decoder for its format, and multiplied with every activation row, either with AVX2
//! (`vpmaddubsw` + `vpmaddwd`) or with AVX-512 VNNI on 256-bit vectors (`vpdpbusd`). The
//! accumulators of the activation rows stay on the stack for the whole weight row.
//!
//! Everything computes the same integers and the same fused multiply-adds, in the same
//! order, as [`crate::scalar`], so results agree bit for bit with the portable path.

use std::arch::x86_64::*;

use crate::activation::{ActRow, Activations};
use crate::decode::{f16_at, scale_min_k4};
use crate::layout::Layout;
use crate::{Isa, Mode, QuantType};

pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

pub(crate) fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

// Formats as const parameters, so that each gets its own loop with its decoder inlined.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
/// Q8_0 as `w + 128`.
const Q8_0: u8 = 3;
/// Q8_0 as `|w|` with the signed weights alongside (AVX2's signed mode, see [`Mode`]).
const Q8_0_SIGNED: u8 = 4;
const Q4K: u8 = 5;
const Q6K: u8 = 6;

const fn has_min(ty: u8) -> bool {
    ty == Q4_1 || ty == Q4K
}

/// Activation rows per pass over a task's weights; more rows decode the weights again.
/// 16 accumulators of 32 bytes stay in L1 next to the activations.
const ROW_TILE: usize = 16;

/// Computes the output columns of one task (see [`crate::scalar::run`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    isa: Isa,
    ty: QuantType,
    layout: &Layout,
    mode: Mode,
    weight: &[u8],
    row_bytes: usize,
    act: &Activations,
    outs: &mut [&mut [f32]],
) {
    if row_bytes == 0 {
        // k = 0: empty sums.
        outs.iter_mut().for_each(|out| out.fill(0.0));
        return;
    }
    let rows: Vec<XRow<'_>> = (0..outs.len()).map(|r| XRow::new(layout, act.row(r))).collect();
    macro_rules! dispatch {
        ($task:ident) => {
            match ty {
                QuantType::Q4_0 => $task::<Q4_0, 18>(layout, weight, row_bytes, &rows, outs),
                QuantType::Q4_1 => $task::<Q4_1, 20>(layout, weight, row_bytes, &rows, outs),
                QuantType::Q5_0 => $task::<Q5_0, 22>(layout, weight, row_bytes, &rows, outs),
                QuantType::Q8_0 if mode.signed => {
                    $task::<Q8_0_SIGNED, 34>(layout, weight, row_bytes, &rows, outs)
                }
                QuantType::Q8_0 => $task::<Q8_0, 34>(layout, weight, row_bytes, &rows, outs),
                QuantType::Q4K => $task::<Q4K, 144>(layout, weight, row_bytes, &rows, outs),
                QuantType::Q6K => $task::<Q6K, 210>(layout, weight, row_bytes, &rows, outs),
            }
        };
    }
    match isa {
        // SAFETY: `Isa::is_available` checked the features before any task was started.
        Isa::Avx2 => unsafe { dispatch!(task_avx2) },
        // SAFETY: as above.
        Isa::Avx512Vnni => unsafe { dispatch!(task_vnni) },
        Isa::Scalar => unreachable!("the scalar path does not come here"),
    }
}

/// One activation row as fixed-size pieces per group, so that the hot loops index arrays.
struct XRow<'a> {
    wide: &'a [[[i8; 32]; 8]],
    narrow: &'a [[[i8; 32]; 4]],
    d: &'a [[f32; 8]],
    corr: &'a [[i32; 8]],
    min: &'a [[f32; 8]],
}

impl<'a> XRow<'a> {
    fn new(layout: &Layout, a: ActRow<'a>) -> XRow<'a> {
        let (wide, narrow) = a.q.as_chunks::<32>().0.split_at(layout.wide * 8);
        XRow {
            wide: wide.as_chunks().0,
            narrow: narrow.as_chunks().0,
            d: a.d.as_chunks().0,
            corr: a.corr.as_chunks().0,
            min: a.min.as_chunks().0,
        }
    }
}

/// One decoded group of a weight row: interleaved weight vectors and per-lane values.
#[derive(Clone, Copy)]
struct Group<const NV: usize> {
    q: [__m256i; NV],
    /// `Q8_0_SIGNED` only: the signed weights (`q` holds their magnitudes).
    sign: [__m256i; NV],
    scale: __m256,
    /// Formats with a minimum only.
    min: __m256,
}

macro_rules! task {
    ($name:ident, $features:literal, $sums:ident) => {
        /// Computes a task's outputs: each group of each weight row is decoded once and
        /// multiplied with every activation row of the tile.
        #[target_feature(enable = $features)]
        fn $name<const TY: u8, const BB: usize>(
            layout: &Layout,
            weight: &[u8],
            row_bytes: usize,
            rows: &[XRow<'_>],
            outs: &mut [&mut [f32]],
        ) {
            let mut acc = [_mm256_setzero_ps(); ROW_TILE];
            for (tile, outs) in rows.chunks(ROW_TILE).zip(outs.chunks_mut(ROW_TILE)) {
                let acc = &mut acc[..tile.len()];
                for (j, row) in weight.chunks_exact(row_bytes).enumerate() {
                    acc.fill(_mm256_setzero_ps());
                    for g in 0..layout.wide {
                        let grp = decode_wide::<TY, BB>(row, g);
                        for (acc, x) in acc.iter_mut().zip(tile) {
                            let s = $sums::<TY, 8>(&grp, &x.wide[g]);
                            *acc = epilogue::<TY, 8>(*acc, s, &grp, x, g);
                        }
                    }
                    for g in layout.wide..layout.groups() {
                        let grp = decode_narrow::<TY, BB>(row, layout, g);
                        for (acc, x) in acc.iter_mut().zip(tile) {
                            let s = $sums::<TY, 4>(&grp, &x.narrow[g - layout.wide]);
                            *acc = epilogue::<TY, 4>(*acc, s, &grp, x, g);
                        }
                    }
                    for (out, acc) in outs.iter_mut().zip(acc.iter()) {
                        out[j] = hsum(*acc);
                    }
                }
            }
        }
    };
}

task!(task_avx2, "avx2,fma,f16c", sums_avx2);
task!(task_vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", sums_vnni);

/// Applies the per-lane scales of group `g` to its integer lane sums `s` and accumulates.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue<const TY: u8, const NV: usize>(
    acc: __m256,
    s: __m256i,
    grp: &Group<NV>,
    x: &XRow<'_>,
    g: usize,
) -> __m256 {
    let s = _mm256_sub_epi32(s, load_i32(&x.corr[g]));
    let scale = _mm256_mul_ps(grp.scale, load_f32(&x.d[g]));
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
    if has_min(TY) { _mm256_fmadd_ps(grp.min, load_f32(&x.min[g]), acc) } else { acc }
}

/// Integer lane sums of one group with AVX2. Unsigned weights are at most 63 (Q6_K), so
/// two `vpmaddubsw` results (4 products, at most 4 * 63 * 128 < 2^15) are added in 16 bits
/// before widening. Q8_0's signed weights reach 127: one pair per 16-bit sum, computed as
/// `|w| * sign(x, w)` since `vpmaddubsw` wants an unsigned operand.
#[inline]
#[target_feature(enable = "avx2")]
fn sums_avx2<const TY: u8, const NV: usize>(grp: &Group<NV>, x: &[[i8; 32]; NV]) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut s = _mm256_setzero_si256();
    if TY == Q8_0_SIGNED {
        for v in 0..NV {
            let x = _mm256_sign_epi8(load_i8(&x[v]), grp.sign[v]);
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(grp.q[v], x), ones));
        }
    } else {
        for v in (0..NV).step_by(2) {
            let p0 = _mm256_maddubs_epi16(grp.q[v], load_i8(&x[v]));
            let p1 = _mm256_maddubs_epi16(grp.q[v + 1], load_i8(&x[v + 1]));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
        }
    }
    s
}

/// Integer lane sums of one group with AVX-512 VNNI: `vpdpbusd` multiplies and sums four
/// byte pairs into 32 bits without saturation; two accumulators halve its dependency chain.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn sums_vnni<const TY: u8, const NV: usize>(grp: &Group<NV>, x: &[[i8; 32]; NV]) -> __m256i {
    debug_assert_ne!(TY, Q8_0_SIGNED);
    let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for v in (0..NV).step_by(2) {
        s0 = _mm256_dpbusd_epi32(s0, grp.q[v], load_i8(&x[v]));
        s1 = _mm256_dpbusd_epi32(s1, grp.q[v + 1], load_i8(&x[v + 1]));
    }
    _mm256_add_epi32(s0, s1)
}

// Loads and stores through fixed-size arrays, so that bounds are checked by the types and
// the hot loops need no `unsafe`.

#[inline]
#[target_feature(enable = "avx2")]
fn load_u8(v: &[u8; 32]) -> __m256i {
    // SAFETY: `v` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_i8(v: &[i8; 32]) -> __m256i {
    // SAFETY: as in `load_u8`.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_half(v: &[u8; 16]) -> __m128i {
    // SAFETY: `v` is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(v.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_i32(v: &[i32; 8]) -> __m256i {
    // SAFETY: `v` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_f32(v: &[f32; 8]) -> __m256 {
    // SAFETY: `v` is 8 readable floats; the load has no alignment requirement.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}



#[inline]
#[target_feature(enable = "avx2")]
fn array<const N: usize>(bytes: &[u8]) -> &[u8; N] {
    bytes[..N].try_into().expect("slice of N bytes")
}

/// Sum of the 8 floats, in the order of [`crate::scalar::hsum`].
#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
}

/// 8x8 transpose of 32-bit elements: row `i` of the input is lane `i` (32 natural bytes),
/// row `v` of the output is interleaved vector `v`.
#[inline]
#[target_feature(enable = "avx2")]
fn interleave_wide(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// Interleaves a narrow group given as 4 natural 32-byte vectors (`n[m]` holds lanes
/// `2m` and `2m + 1`): two 4x4 transposes of 32-bit elements, one per 128-bit half.
#[inline]
#[target_feature(enable = "avx2")]
fn interleave_narrow(n: [__m256i; 4]) -> [__m256i; 4] {
    let r0 = _mm256_permute2x128_si256::<0x20>(n[0], n[2]);
    let r1 = _mm256_permute2x128_si256::<0x31>(n[0], n[2]);
    let r2 = _mm256_permute2x128_si256::<0x20>(n[1], n[3]);
    let r3 = _mm256_permute2x128_si256::<0x31>(n[1], n[3]);
    let t0 = _mm256_unpacklo_epi32(r0, r1);
    let t1 = _mm256_unpackhi_epi32(r0, r1);
    let t2 = _mm256_unpacklo_epi32(r2, r3);
    let t3 = _mm256_unpackhi_epi32(r2, r3);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// ggml's nibble order: low nibbles are values 0..16, high nibbles values 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    let q = load_half(qs);
    let both = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(q), _mm_srli_epi16::<4>(q));
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// Byte `i` is 0xFF where bit `i` of `bits` is set (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2")]
fn bit_bytes(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        ),
    );
    // Each byte keeps only its own bit clear in the mask, so it becomes all-ones iff set.
    let all_but_own_bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(
        _mm256_or_si256(spread, all_but_own_bit),
        _mm256_set1_epi32(-1),
    )
}


/// Eight f16 values, widened.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(bits: &[u16; 8]) -> __m256 {
    // SAFETY: `bits` is 16 readable bytes; the load has no alignment requirement.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(bits.as_ptr().cast()) })
}

/// The 32 natural values of a legacy block (Q8_0: the signed weights).
#[inline]
#[target_feature(enable = "avx2")]
fn legacy_values<const TY: u8, const BB: usize>(blk: &[u8; BB]) -> __m256i {
    match TY {
        Q4_0 => nibbles(array(&blk[2..])),
        Q4_1 => nibbles(array(&blk[4..])),
        Q5_0 => {
            let qh = u32::from_le_bytes(*array(&blk[2..]));
            let fifth = _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(nibbles(array(&blk[6..])), fifth)
        }
        _ => load_u8(array(&blk[2..])),
    }
}

/// A legacy group from its interleaved values and f16 scales (and minimums): Q8_0 becomes
/// `w + 128`, or `|w|` with the signs kept.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn legacy_group<const TY: u8, const NV: usize>(q: [__m256i; NV], d: &[u16; 8], m: &[u16; 8]) -> Group<NV> {
    let mut grp = Group { q, sign: q, scale: f16x8(d), min: _mm256_setzero_ps() };
    if TY == Q4_1 {
        grp.min = f16x8(m);
    }
    for q in &mut grp.q {
        match TY {
            Q8_0 => *q = _mm256_xor_si256(*q, _mm256_set1_epi8(-128)),
            Q8_0_SIGNED => *q = _mm256_abs_epi8(*q),
            _ => {}
        }
    }
    grp
}

/// Wide group `g` of a weight row: 8 legacy blocks, or one Q4_K super-block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_wide<const TY: u8, const BB: usize>(row: &[u8], g: usize) -> Group<8> {
    if TY == Q4K {
        return q4k_group(array(&row[g * 144..]));
    }
    let mut padded = [[0u8; BB]; 8];
    let blocks = match row.get(g * 8 * BB..(g + 1) * 8 * BB) {
        Some(bytes) => bytes.as_chunks::<BB>().0,
        None => {
            // The last group of a row whose block count is 5 to 7 past a multiple of 8:
            // zero blocks (zero scales) pad it.
            let (present, _) = row[g * 8 * BB..].as_chunks::<BB>();
            padded[..present.len()].copy_from_slice(present);
            &padded[..]
        }
    };
    let (mut v, mut d, mut m) = ([_mm256_setzero_si256(); 8], [0u16; 8], [0u16; 8]);
    for (i, blk) in blocks[..8].iter().enumerate() {
        d[i] = u16::from_le_bytes([blk[0], blk[1]]);
        if TY == Q4_1 {
            m[i] = u16::from_le_bytes([blk[2], blk[3]]);
        }
        v[i] = legacy_values::<TY, BB>(blk);
    }
    legacy_group::<TY, 8>(interleave_wide(v), &d, &m)
}

/// Narrow group `g` of a weight row: the legacy tail of up to 4 blocks, or half a Q6_K
/// super-block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_narrow<const TY: u8, const BB: usize>(row: &[u8], layout: &Layout, g: usize) -> Group<4> {
    if TY == Q6K {
        return q6k_group(array(&row[g / 2 * 210..]), g % 2);
    }
    // Block `m` of the tail fills lanes `2m` and `2m + 1`; missing blocks are zeros.
    let mut padded = [[0u8; BB]; 4];
    let (present, _) = row[layout.wide * 8 * BB..].as_chunks::<BB>();
    padded[..present.len()].copy_from_slice(present);
    let (mut v, mut d, mut m) = ([_mm256_setzero_si256(); 4], [0u16; 8], [0u16; 8]);
    for (i, blk) in padded.iter().enumerate() {
        d[2 * i] = u16::from_le_bytes([blk[0], blk[1]]);
        d[2 * i + 1] = d[2 * i];
        if TY == Q4_1 {
            m[2 * i] = u16::from_le_bytes([blk[2], blk[3]]);
            m[2 * i + 1] = m[2 * i];
        }
        v[i] = legacy_values::<TY, BB>(blk);
    }
    legacy_group::<TY, 4>(interleave_narrow(v), &d, &m)
}

/// A Q4_K super-block: 8 sub-blocks of 32 values, each with a 6-bit scale and minimum.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q4k_group(blk: &[u8; 144]) -> Group<8> {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for sub in 0..8 {
        (sc[sub], mn[sub]) = scale_min_k4(sub, &blk[4..16]);
    }
    let widen = |v: [u8; 8]| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set1_epi64x(i64::from_le_bytes(v))));
    let mask = _mm256_set1_epi8(0xF);
    // Each 32 bytes of nibbles hold two sub-blocks: low nibbles, then high nibbles.
    let mut v = [_mm256_setzero_si256(); 8];
    for j in 0..4 {
        let q = load_u8(array(&blk[16 + 32 * j..]));
        v[2 * j] = _mm256_and_si256(q, mask);
        v[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
    }
    let q = interleave_wide(v);
    Group {
        q,
        sign: q,
        scale: _mm256_mul_ps(_mm256_set1_ps(d), widen(sc)),
        min: _mm256_mul_ps(_mm256_set1_ps(-dmin), widen(mn)),
    }
}

/// Half `half` of a Q6_K super-block: 8 sub-blocks of 16 values with i8 scales; the values
/// are 4 low bits from `ql` and 2 high bits from `qh`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn q6k_group(blk: &[u8; 210], half: usize) -> Group<4> {
    let d = f16_at(blk, 208);
    let scales = i64::from_le_bytes(*array(&blk[192 + 8 * half..]));
    let scales = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_set1_epi64x(scales)));
    let m4 = _mm256_set1_epi8(0xF);
    let q1 = load_u8(array(&blk[64 * half..]));
    let q2 = load_u8(array(&blk[64 * half + 32..]));
    let qh = load_u8(array(&blk[128 + 32 * half..]));
    let v = [
        _mm256_or_si256(_mm256_and_si256(q1, m4), high_bits::<0>(qh)),
        _mm256_or_si256(_mm256_and_si256(q2, m4), high_bits::<2>(qh)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q1), m4), high_bits::<4>(qh)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q2), m4), high_bits::<6>(qh)),
    ];
    let q = interleave_narrow(v);
    Group { q, sign: q, scale: _mm256_mul_ps(_mm256_set1_ps(d), scales), min: _mm256_setzero_ps() }
}

/// Q6_K's two high bits of each value, 4 values per byte of `qh`: bits `SHIFT` and
/// `SHIFT + 1`, moved to bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2")]
fn high_bits<const SHIFT: i32>(qh: __m256i) -> __m256i {
    let bits = _mm256_and_si256(_mm256_srli_epi16::<SHIFT>(qh), _mm256_set1_epi8(3));
    _mm256_slli_epi16::<4>(bits)
}
