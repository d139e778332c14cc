//! The x86-64 kernels: AVX2 decoders for every format, and the dot product of a decoded
//! weight row with an activation row in two flavours, AVX2 (`vpmaddubsw` + `vpmaddwd`) and
//! AVX-512 VNNI on 256-bit vectors (`vpdpbusd`). Chosen at run time by [`crate::Isa`], so
//! one binary runs on any x86-64 CPU; the functions carry `#[target_feature]` and are only
//! entered after the features were detected.
//!
//! Everything computes the same integers and the same fused multiply-adds, in the same
//! order, as [`crate::scalar`], so results agree bit for bit with the portable path.

use std::arch::x86_64::*;

use crate::activation::{ActRow, Activations};
use crate::decode::{DecodedRow, f16_at, scale_min_k4};
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
    let mut decoded = DecodedRow::new(ty, layout, mode);
    match isa {
        // SAFETY: `Isa::is_available` checked the features before any task was started.
        Isa::Avx2 => unsafe {
            run_avx2(ty, layout, mode, weight, row_bytes, act, outs, &mut decoded)
        },
        // SAFETY: as above.
        Isa::Avx512Vnni => unsafe {
            run_vnni(ty, layout, mode, weight, row_bytes, act, outs, &mut decoded)
        },
        Isa::Scalar => unreachable!("the scalar path does not come here"),
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn run_avx2(
    ty: QuantType,
    layout: &Layout,
    mode: Mode,
    weight: &[u8],
    row_bytes: usize,
    act: &Activations,
    outs: &mut [&mut [f32]],
    decoded: &mut DecodedRow,
) {
    let rows: Vec<ActRow<'_>> = (0..outs.len()).map(|r| act.row(r)).collect();
    for (j, w) in weight.chunks_exact(row_bytes).enumerate() {
        decode(ty, layout, mode, w, decoded);
        for (out, &a) in outs.iter_mut().zip(&rows) {
            out[j] = match (ty.has_min(), mode.signed) {
                (false, false) => dot_avx2::<false, false>(layout, decoded, a),
                (true, false) => dot_avx2::<true, false>(layout, decoded, a),
                (false, true) => dot_avx2::<false, true>(layout, decoded, a),
                (true, true) => unreachable!("no format with a minimum is signed"),
            };
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn run_vnni(
    ty: QuantType,
    layout: &Layout,
    mode: Mode,
    weight: &[u8],
    row_bytes: usize,
    act: &Activations,
    outs: &mut [&mut [f32]],
    decoded: &mut DecodedRow,
) {
    debug_assert!(!mode.signed);
    let rows: Vec<ActRow<'_>> = (0..outs.len()).map(|r| act.row(r)).collect();
    for (j, w) in weight.chunks_exact(row_bytes).enumerate() {
        decode(ty, layout, mode, w, decoded);
        for (out, &a) in outs.iter_mut().zip(&rows) {
            out[j] = if ty.has_min() {
                dot_vnni::<true>(layout, decoded, a)
            } else {
                dot_vnni::<false>(layout, decoded, a)
            };
        }
    }
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
fn store_u8(out: &mut [u8; 32], v: __m256i) {
    // SAFETY: `out` is 32 writable bytes; the store has no alignment requirement.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn store_i8(out: &mut [i8; 32], v: __m256i) {
    // SAFETY: as in `store_u8`.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
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

/// The per-lane arrays of one weight row and one activation row, 8 lanes per group.
struct Lanes<'a> {
    scale: &'a [[f32; 8]],
    d: &'a [[f32; 8]],
    corr: &'a [[i32; 8]],
    wmin: &'a [[f32; 8]],
    amin: &'a [[f32; 8]],
}

impl<'a> Lanes<'a> {
    fn new(w: &'a DecodedRow, a: &ActRow<'a>) -> Lanes<'a> {
        Lanes {
            scale: w.scale.as_chunks().0,
            d: a.d.as_chunks().0,
            corr: a.corr.as_chunks().0,
            wmin: w.min.as_chunks().0,
            amin: a.min.as_chunks().0,
        }
    }
}

/// Applies the per-lane scales of group `g` to its integer lane sums `s` and accumulates.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue<const MIN: bool>(acc: __m256, s: __m256i, g: usize, l: &Lanes<'_>) -> __m256 {
    let s = _mm256_sub_epi32(s, load_i32(&l.corr[g]));
    let scale = _mm256_mul_ps(load_f32(&l.scale[g]), load_f32(&l.d[g]));
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
    if MIN { _mm256_fmadd_ps(load_f32(&l.wmin[g]), load_f32(&l.amin[g]), acc) } else { acc }
}

/// Integer lane sums of one group, AVX2, unsigned mode: two `vpmaddubsw` results are added
/// in 16 bits before widening, as weights are at most 63 (Q6_K) and 4 * 63 * 128 < 2^15.
#[inline]
#[target_feature(enable = "avx2")]
fn sums_avx2<const NV: usize>(w: &[[u8; 32]; NV], x: &[[i8; 32]; NV]) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut s = _mm256_setzero_si256();
    for v in (0..NV).step_by(2) {
        let p0 = _mm256_maddubs_epi16(load_u8(&w[v]), load_i8(&x[v]));
        let p1 = _mm256_maddubs_epi16(load_u8(&w[v + 1]), load_i8(&x[v + 1]));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
    }
    s
}

/// Integer lane sums of one group, AVX2, signed mode (Q8_0, whose weights reach 127: one
/// product pair per 16-bit sum, `|w| * sign(x, w)`).
#[inline]
#[target_feature(enable = "avx2")]
fn sums_avx2_signed<const NV: usize>(w: &[[u8; 32]; NV], sign: &[[i8; 32]; NV], x: &[[i8; 32]; NV]) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    let mut s = _mm256_setzero_si256();
    for v in 0..NV {
        let x = _mm256_sign_epi8(load_i8(&x[v]), load_i8(&sign[v]));
        s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(load_u8(&w[v]), x), ones));
    }
    s
}

/// Integer lane sums of one group with AVX-512 VNNI: `vpdpbusd` multiplies and sums four
/// byte pairs into 32 bits with no saturation; two accumulators halve its dependency chain.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn sums_vnni<const NV: usize>(w: &[[u8; 32]; NV], x: &[[i8; 32]; NV]) -> __m256i {
    let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    for v in (0..NV).step_by(2) {
        s0 = _mm256_dpbusd_epi32(s0, load_u8(&w[v]), load_i8(&x[v]));
        s1 = _mm256_dpbusd_epi32(s1, load_u8(&w[v + 1]), load_i8(&x[v + 1]));
    }
    _mm256_add_epi32(s0, s1)
}

/// A row's vectors split into its wide and narrow groups.
#[allow(clippy::type_complexity)]
fn groups<'a, T>(layout: &Layout, v: &'a [T]) -> (&'a [[[T; 32]; 8]], &'a [[[T; 32]; 4]])
where
    T: Copy,
{
    let (vectors, _) = v.as_chunks::<32>();
    let (wide, narrow) = vectors.split_at(layout.wide * 8);
    (wide.as_chunks().0, narrow.as_chunks().0)
}

/// AVX2 dot product of a decoded weight row with an activation row.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2<const MIN: bool, const SIGNED: bool>(layout: &Layout, w: &DecodedRow, a: ActRow<'_>) -> f32 {
    let lanes = Lanes::new(w, &a);
    let ((ww, wn), (xw, xn)) = (groups(layout, &w.q), groups(layout, a.q));
    let mut acc = _mm256_setzero_ps();
    if SIGNED {
        let (sw, sn) = groups(layout, &w.sign);
        for (g, ((w, s), x)) in ww.iter().zip(sw).zip(xw).enumerate() {
            acc = epilogue::<MIN>(acc, sums_avx2_signed(w, s, x), g, &lanes);
        }
        for (g, ((w, s), x)) in wn.iter().zip(sn).zip(xn).enumerate() {
            acc = epilogue::<MIN>(acc, sums_avx2_signed(w, s, x), layout.wide + g, &lanes);
        }
    } else {
        for (g, (w, x)) in ww.iter().zip(xw).enumerate() {
            acc = epilogue::<MIN>(acc, sums_avx2(w, x), g, &lanes);
        }
        for (g, (w, x)) in wn.iter().zip(xn).enumerate() {
            acc = epilogue::<MIN>(acc, sums_avx2(w, x), layout.wide + g, &lanes);
        }
    }
    hsum(acc)
}

/// AVX-512 VNNI dot product of a decoded weight row with an activation row.
#[inline]
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
fn dot_vnni<const MIN: bool>(layout: &Layout, w: &DecodedRow, a: ActRow<'_>) -> f32 {
    let lanes = Lanes::new(w, &a);
    let ((ww, wn), (xw, xn)) = (groups(layout, &w.q), groups(layout, a.q));
    let mut acc = _mm256_setzero_ps();
    for (g, (w, x)) in ww.iter().zip(xw).enumerate() {
        acc = epilogue::<MIN>(acc, sums_vnni(w, x), g, &lanes);
    }
    for (g, (w, x)) in wn.iter().zip(xn).enumerate() {
        acc = epilogue::<MIN>(acc, sums_vnni(w, x), layout.wide + g, &lanes);
    }
    hsum(acc)
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

/// Legacy formats as const parameters of the decoder, so that each gets its own loop.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
/// Q8_0 as `w + 128`.
const Q8_0: u8 = 3;
/// Q8_0 as `|w|`, with the signed weights kept aside (AVX2's signed mode).
const Q8_0_SIGNED: u8 = 4;

/// The 32 natural values of a legacy block (Q8_0: the signed weights).
#[inline]
#[target_feature(enable = "avx2")]
fn legacy_values<const TY: u8>(blk: &[u8]) -> __m256i {
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

/// Decodes one weight row (see [`crate::decode::decode_row`]).
#[target_feature(enable = "avx2,f16c")]
fn decode(ty: QuantType, layout: &Layout, mode: Mode, row: &[u8], out: &mut DecodedRow) {
    match ty {
        QuantType::Q4_0 => decode_legacy::<Q4_0>(layout, row, out),
        QuantType::Q4_1 => decode_legacy::<Q4_1>(layout, row, out),
        QuantType::Q5_0 => decode_legacy::<Q5_0>(layout, row, out),
        QuantType::Q8_0 if mode.signed => decode_legacy::<Q8_0_SIGNED>(layout, row, out),
        QuantType::Q8_0 => decode_legacy::<Q8_0>(layout, row, out),
        QuantType::Q4K => decode_q4k(row, out),
        QuantType::Q6K => decode_q6k(row, out),
    }
}

/// Stores interleaved vectors of a legacy format from vector `at` on.
#[inline]
#[target_feature(enable = "avx2")]
fn store_legacy<const TY: u8>(out: &mut DecodedRow, at: usize, v: &[__m256i]) {
    let (qv, _) = out.q.as_chunks_mut::<32>();
    let (sv, _) = out.sign.as_chunks_mut::<32>();
    for (i, &v) in v.iter().enumerate() {
        match TY {
            Q8_0 => store_u8(&mut qv[at + i], _mm256_xor_si256(v, _mm256_set1_epi8(-128))),
            Q8_0_SIGNED => {
                store_i8(&mut sv[at + i], v);
                store_u8(&mut qv[at + i], _mm256_abs_epi8(v));
            }
            _ => store_u8(&mut qv[at + i], v),
        }
    }
}

/// The values of block `b` of a legacy row, with its scale (and minimum) written to
/// `lanes`; zeros past the row's end (padding, whose scales stay zero).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn legacy_block<const TY: u8, const L: usize>(row: &[u8], b: usize, lanes: [usize; L], out: &mut DecodedRow) -> __m256i {
    let bb = QuantType::block_bytes(match TY {
        Q4_0 => QuantType::Q4_0,
        Q4_1 => QuantType::Q4_1,
        Q5_0 => QuantType::Q5_0,
        _ => QuantType::Q8_0,
    });
    let Some(blk) = row.get(b * bb..(b + 1) * bb) else {
        return _mm256_setzero_si256();
    };
    let d = f16_at(blk, 0);
    for lane in lanes {
        out.scale[lane] = d;
    }
    if TY == Q4_1 {
        let m = f16_at(blk, 2);
        for lane in lanes {
            out.min[lane] = m;
        }
    }
    legacy_values::<TY>(blk)
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_legacy<const TY: u8>(layout: &Layout, row: &[u8], out: &mut DecodedRow) {
    for g in 0..layout.wide {
        let mut r = [_mm256_setzero_si256(); 8];
        for (i, r) in r.iter_mut().enumerate() {
            *r = legacy_block::<TY, 1>(row, g * 8 + i, [g * 8 + i], out);
        }
        store_legacy::<TY>(out, g * 8, &interleave_wide(r));
    }
    if layout.narrow == 1 {
        // The tail: block `m` fills lanes `2m` and `2m + 1`.
        let base = layout.wide * 8;
        let mut n = [_mm256_setzero_si256(); 4];
        for (m, n) in n.iter_mut().enumerate() {
            *n = legacy_block::<TY, 2>(row, base + m, [base + 2 * m, base + 2 * m + 1], out);
        }
        store_legacy::<TY>(out, base, &interleave_narrow(n));
    }
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_q4k(row: &[u8], out: &mut DecodedRow) {
    let (qv, _) = out.q.as_chunks_mut::<32>();
    let mask = _mm256_set1_epi8(0xF);
    for (b, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        for sub in 0..8 {
            let (sc, m) = scale_min_k4(sub, &blk[4..16]);
            out.scale[b * 8 + sub] = d * sc as f32;
            out.min[b * 8 + sub] = -dmin * m as f32;
        }
        // Each 32 bytes of nibbles hold two sub-blocks: low nibbles, then high nibbles.
        let r: [__m256i; 8] = std::array::from_fn(|i| {
            let q = load_u8(array(&blk[16 + 32 * (i / 2)..]));
            let q = if i % 2 == 0 {
                q
            } else {
                _mm256_srli_epi16::<4>(q)
            };
            _mm256_and_si256(q, mask)
        });
        for (i, v) in interleave_wide(r).into_iter().enumerate() {
            store_u8(&mut qv[b * 8 + i], v);
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_q6k(row: &[u8], out: &mut DecodedRow) {
    let (qv, _) = out.q.as_chunks_mut::<32>();
    let m4 = _mm256_set1_epi8(0xF);
    for (b, blk) in row.chunks_exact(210).enumerate() {
        let d = f16_at(blk, 208);
        for sub in 0..16 {
            out.scale[b * 16 + sub] = d * blk[192 + sub] as i8 as f32;
        }
        for half in 0..2 {
            let q1 = load_u8(array(&blk[64 * half..]));
            let q2 = load_u8(array(&blk[64 * half + 32..]));
            let qh = load_u8(array(&blk[128 + 32 * half..]));
            let n = [
                _mm256_or_si256(_mm256_and_si256(q1, m4), high_bits::<0>(qh)),
                _mm256_or_si256(_mm256_and_si256(q2, m4), high_bits::<2>(qh)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q1), m4), high_bits::<4>(qh)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q2), m4), high_bits::<6>(qh)),
            ];
            for (i, v) in interleave_narrow(n).into_iter().enumerate() {
                store_u8(&mut qv[(2 * b + half) * 4 + i], v);
            }
        }
    }
}

/// Q6_K's two high bits of each value, 4 values per byte of `qh`: bits `SHIFT` and
/// `SHIFT + 1`, moved to bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2")]
fn high_bits<const SHIFT: i32>(qh: __m256i) -> __m256i {
    let bits = _mm256_and_si256(_mm256_srli_epi16::<SHIFT>(qh), _mm256_set1_epi8(3));
    _mm256_slli_epi16::<4>(bits)
}
