//! The x86-64 kernels, chosen at run time by [`crate::Isa`] so that one binary runs on any
//! x86-64 CPU: every function carries `#[target_feature]` and is only entered after the
//! features were detected.
//!
//! A task walks its weight rows; each group of a row is decoded once, into registers, by an
//! AVX2 decoder for its format, and multiplied with every activation row of a tile (up to
//! 8, their accumulators in registers too), either with AVX2 (`vpmaddubsw` + `vpmaddwd`) or
//! with AVX-512 VNNI on 256-bit vectors (`vpdpbusd`).
//!
//! Everything computes the same integers and the same fused multiply-adds, in the same
//! order, as [`crate::scalar`], so results agree bit for bit with the portable path.

use std::arch::x86_64::*;

use crate::activation::{ActRow, Activations, XGroup};
use crate::decode::f16_at;
use crate::layout::Layout;
use crate::repack::{narrow_bytes, wide_bytes};
use crate::{Isa, Mode, QuantType};

pub(crate) fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
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

/// Bytes of a tile's quantized activations that a pass over a block of weight rows keeps
/// in L1 (32 KiB here, shared with the streaming weights). Past it, every weight row read
/// its activations from L2 again: 8 rows of k = 4864 cost twice 8 rows of k = 896.
const L1_ACTIVATIONS: usize = 16 << 10;

/// Weight rows that go by a span of activations before the next span is loaded (only long
/// rows are cut into spans). Small: the next block's span is then prefetched shortly before
/// it is needed. A down projection (k = 4864) of 3 rows took 0.098 instead of 0.120 ms
/// with 4 rows a block rather than 16 (Q4_K, weights from memory, medians of 6); 1-row and
/// 8-row products were unchanged.
const ROW_BLOCK: usize = 4;

/// How far ahead (in weight rows) the weights are prefetched into L2, when the activations
/// overflow [`L1_ACTIVATIONS`]: then (3 or more rows of k = 4864) the hardware prefetchers
/// alone left the product waiting on memory, twice as slow as with the weights in cache.
/// Otherwise they do better alone: prefetching cost 10% to 40% there.
const PREFETCH_ROWS: usize = 2;

/// Asks for the first `len` bytes of `bytes` (fewer if it is shorter) to be brought into
/// L2.
#[inline]
#[target_feature(enable = "avx2")]
fn prefetch(bytes: &[u8], len: usize) {
    let start = bytes.as_ptr();
    for offset in (0..len.min(bytes.len())).step_by(64) {
        _mm_prefetch::<_MM_HINT_T1>(start.wrapping_add(offset).cast());
    }
}

/// Activation rows per pass over a task's weights; more rows decode the weights again. The
/// tile size is a const parameter so that its accumulators are registers: kept in memory,
/// each weight row became a chain of store-to-load latencies that out-of-order execution
/// could not hide with one or two rows.
const ROW_TILE: usize = 8;

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
    // Tiles are built on the stack: this runs in the pool's tasks, where a heap
    // allocation per task contended for the allocator's lock with the other threads.
    let last_row = outs.len().saturating_sub(1);
    let vnni = match isa {
        Isa::Avx2 => false,
        Isa::Avx512Vnni => true,
        Isa::Scalar => unreachable!("the scalar path does not come here"),
    };
    // Tiles one after the other: the first one streams the task's weights from memory, the
    // next ones find them in L2. (Interleaving tiles per block of weight rows was slower:
    // memory then idles while the later tiles compute.)
    for (t, outs) in outs.chunks_mut(ROW_TILE).enumerate() {
        let rows: [ActRow<'_>; ROW_TILE] = std::array::from_fn(|i| act.row((t * ROW_TILE + i).min(last_row)));
        let tile = &rows[..outs.len()];
        let tile_fn = match ty {
            QuantType::Q4_0 => run_tile::<Q4_0, { wide_bytes(QuantType::Q4_0) }, { narrow_bytes(QuantType::Q4_0) }>,
            QuantType::Q4_1 => run_tile::<Q4_1, { wide_bytes(QuantType::Q4_1) }, { narrow_bytes(QuantType::Q4_1) }>,
            QuantType::Q5_0 => run_tile::<Q5_0, { wide_bytes(QuantType::Q5_0) }, { narrow_bytes(QuantType::Q5_0) }>,
            QuantType::Q8_0 if mode.signed => {
                run_tile::<Q8_0_SIGNED, { wide_bytes(QuantType::Q8_0) }, { narrow_bytes(QuantType::Q8_0) }>
            }
            QuantType::Q8_0 => run_tile::<Q8_0, { wide_bytes(QuantType::Q8_0) }, { narrow_bytes(QuantType::Q8_0) }>,
            QuantType::Q4K => run_tile::<Q4K, { wide_bytes(QuantType::Q4K) }, 0>,
            QuantType::Q6K => run_tile::<Q6K, 0, { narrow_bytes(QuantType::Q6K) }>,
        };
        tile_fn(vnni, layout, weight, row_bytes, tile, outs);
    }
}

/// Runs one tile of up to [`ROW_TILE`] activation rows with the kernel for its size.
#[allow(clippy::too_many_arguments)]
fn run_tile<const TY: u8, const WB: usize, const NB: usize>(
    vnni: bool,
    layout: &Layout,
    weight: &[u8],
    row_bytes: usize,
    tile: &[ActRow<'_>],
    outs: &mut [&mut [f32]],
) {
    macro_rules! sizes {
        ($($r:literal)*) => {
            match tile.len() {
                $($r => {
                    let tile: &[ActRow<'_>; $r] = tile.try_into().expect("tile of this size");
                    if vnni {
                        // SAFETY: `Isa::is_available` checked the features before any task
                        // was started.
                        unsafe { task_vnni::<TY, WB, NB, $r>(layout, weight, row_bytes, tile, outs) }
                    } else {
                        // SAFETY: as above.
                        unsafe { task_avx2::<TY, WB, NB, $r>(layout, weight, row_bytes, tile, outs) }
                    }
                })*
                _ => unreachable!("tiles have 1 to ROW_TILE rows"),
            }
        };
    }
    sizes!(1 2 3 4 5 6 7 8)
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

// Placeholders to initialise arrays of group references (closures such as those of
// `array::map` are not always inlined into `#[target_feature]` code, and then they are slow).
static NO_WIDE: [XGroup<8>; 1] = [XGroup::ZERO];
static NO_NARROW: [XGroup<4>; 1] = [XGroup::ZERO];

macro_rules! task {
    ($name:ident, $features:literal, $sums:ident, $vnni:literal) => {
        /// Computes a task's outputs for `R` activation rows: each group of each weight row
        /// is decoded once and multiplied with every row. Long rows are cut into spans of
        /// groups whose activations stay in L1 while a block of weight rows goes by.
        #[target_feature(enable = $features)]
        fn $name<const TY: u8, const WB: usize, const NB: usize, const R: usize>(
            layout: &Layout,
            weight: &[u8],
            row_bytes: usize,
            tile: &[ActRow<'_>; R],
            outs: &mut [&mut [f32]],
        ) {
            let span = (L1_ACTIVATIONS / (R * size_of::<XGroup<8>>())).max(1);
            let prefetching = span < layout.groups();
            let cols = weight.len() / row_bytes;
            let mut acc = [[_mm256_setzero_ps(); R]; ROW_BLOCK];
            for first in (0..cols).step_by(ROW_BLOCK) {
                let acc = &mut acc[..ROW_BLOCK.min(cols - first)];
                acc.fill([_mm256_setzero_ps(); R]);
                for start in (0..layout.groups()).step_by(span) {
                    let end = layout.groups().min(start + span);
                    let offset = |g: usize| g.min(layout.wide) * WB + g.saturating_sub(layout.wide) * NB;
                    let (from, to) = (offset(start), offset(end));
                    let (wide, narrow) = (
                        start.min(layout.wide)..end.min(layout.wide),
                        start.max(layout.wide) - layout.wide..end.max(layout.wide) - layout.wide,
                    );
                    // The span's groups of each activation row, checked once here: indexing
                    // them per group cost a pointer and a length load and a compare per row,
                    // and loads are what a many-row tile runs short of.
                    let mut xw = [NO_WIDE.as_ptr(); R];
                    let mut xn = [NO_NARROW.as_ptr(); R];
                    for ((xw, xn), row) in xw.iter_mut().zip(&mut xn).zip(tile) {
                        *xw = row.wide[wide.clone()].as_ptr();
                        *xn = row.narrow[narrow.clone()].as_ptr();
                    }
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let row = &weight[(first + j) * row_bytes..][..row_bytes];
                        if prefetching {
                            if first == 0 && start == 0 {
                                // The first block: whole rows a little ahead.
                                let ahead = weight.get((j + PREFETCH_ROWS) * row_bytes..).unwrap_or(&[]);
                                prefetch(ahead, row_bytes);
                            }
                            // The same span of the next block's rows: the block's memory
                            // traffic then overlaps the compute of every span, not only
                            // the first one's.
                            let next = (first + ROW_BLOCK + j) * row_bytes;
                            prefetch(weight.get(next + from..).unwrap_or(&[]), to - from);
                        }
                        let mut a = *acc;
                        let groups = &row[wide.start * WB..wide.end * WB];
                        for (i, grp) in groups.chunks_exact(WB.max(1)).enumerate() {
                            let grp = decode_wide::<TY, WB, R, $vnni>(array(grp));
                            let mut x = [&NO_WIDE[0]; R];
                            for (x, p) in x.iter_mut().zip(xw) {
                                // SAFETY: `i` < `wide.len()`, the length of the slice `p`
                                // starts.
                                *x = unsafe { &*p.add(i) };
                            }
                            let s = $sums::<TY, 8, R>(&grp, x);
                            for ((a, s), x) in a.iter_mut().zip(s).zip(x) {
                                *a = epilogue::<TY, 8>(*a, s, &grp, x);
                            }
                        }
                        let groups = &row[layout.wide * WB + narrow.start * NB..layout.wide * WB + narrow.end * NB];
                        for (i, grp) in groups.chunks_exact(NB.max(1)).enumerate() {
                            let grp = decode_narrow::<TY, NB, R, $vnni>(array(grp));
                            let mut x = [&NO_NARROW[0]; R];
                            for (x, p) in x.iter_mut().zip(xn) {
                                // SAFETY: `i` < `narrow.len()`, as above.
                                *x = unsafe { &*p.add(i) };
                            }
                            let s = $sums::<TY, 4, R>(&grp, x);
                            for ((a, s), x) in a.iter_mut().zip(s).zip(x) {
                                *a = epilogue::<TY, 4>(*a, s, &grp, x);
                            }
                        }
                        *acc = a;
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    for (out, &a) in outs.iter_mut().zip(acc) {
                        out[first + j] = hsum(a);
                    }
                }
            }
        }
    };
}

task!(task_avx2, "avx2,fma,f16c", sums_avx2, false);
task!(task_vnni, "avx2,fma,f16c,avx512f,avx512vl,avx512vnni", sums_vnni, true);

/// Applies the per-lane scales of a group to its integer lane sums `s` and accumulates.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn epilogue<const TY: u8, const NV: usize>(acc: __m256, s: __m256i, grp: &Group<NV>, x: &XGroup<NV>) -> __m256 {
    let s = _mm256_sub_epi32(s, load_i32(&x.corr));
    let scale = _mm256_mul_ps(grp.scale, load_f32(&x.d));
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc);
    if has_min(TY) {
        _mm256_fmadd_ps(grp.min, load_f32(&x.min), acc)
    } else {
        acc
    }
}

/// Integer lane sums of one group for each of `R` activation rows, with AVX2; the rows
/// are interleaved to give out-of-order execution independent work. Unsigned weights are
/// at most 63 (Q6_K), so two `vpmaddubsw` results (4 products, at most 4 * 63 * 128 <
/// 2^15) are added in 16 bits before widening. Q8_0's signed weights reach 127: one pair
/// per 16-bit sum, computed as `|w| * sign(x, w)` since `vpmaddubsw` wants an unsigned
/// operand.
#[inline]
#[target_feature(enable = "avx2")]
fn sums_avx2<const TY: u8, const NV: usize, const R: usize>(grp: &Group<NV>, x: [&XGroup<NV>; R]) -> [__m256i; R] {
    let ones = _mm256_set1_epi16(1);
    let mut s = [_mm256_setzero_si256(); R];
    if TY == Q8_0_SIGNED {
        for v in 0..NV {
            for (s, x) in s.iter_mut().zip(x) {
                let x = _mm256_sign_epi8(load_i8(&x.q[v]), grp.sign[v]);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(grp.q[v], x), ones);
                *s = _mm256_add_epi32(*s, p);
            }
        }
    } else {
        for v in (0..NV).step_by(2) {
            for (s, x) in s.iter_mut().zip(x) {
                let p0 = _mm256_maddubs_epi16(grp.q[v], load_i8(&x.q[v]));
                let p1 = _mm256_maddubs_epi16(grp.q[v + 1], load_i8(&x.q[v + 1]));
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(_mm256_add_epi16(p0, p1), ones));
            }
        }
    }
    s
}

/// Integer lane sums of one group for each of `R` activation rows, with AVX-512 VNNI:
/// `vpdpbusd` multiplies and sums four byte pairs into 32 bits without saturation. Its
/// latency is several times its throughput, so each row gets independent partial sums
/// (four for a lone row) and the rows are interleaved.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn sums_vnni<const TY: u8, const NV: usize, const R: usize>(grp: &Group<NV>, x: [&XGroup<NV>; R]) -> [__m256i; R] {
    debug_assert_ne!(TY, Q8_0_SIGNED);
    let zero = _mm256_setzero_si256();
    if R == 1 {
        let mut s = [zero; 4];
        for v in 0..NV {
            s[v % 4] = _mm256_dpbusd_epi32(s[v % 4], grp.q[v], load_i8(&x[0].q[v]));
        }
        let sum = _mm256_add_epi32(_mm256_add_epi32(s[0], s[1]), _mm256_add_epi32(s[2], s[3]));
        return [sum; R];
    }
    let (mut s0, mut s1) = ([zero; R], [zero; R]);
    for v in (0..NV).step_by(2) {
        for r in 0..R {
            s0[r] = _mm256_dpbusd_epi32(s0[r], grp.q[v], load_i8(&x[r].q[v]));
            s1[r] = _mm256_dpbusd_epi32(s1[r], grp.q[v + 1], load_i8(&x[r].q[v + 1]));
        }
    }
    for (s0, s1) in s0.iter_mut().zip(s1) {
        *s0 = _mm256_add_epi32(*s0, s1);
    }
    s0
}

// Loads through fixed-size arrays, so that bounds are checked by the types and the hot
// loops need no `unsafe`.

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

/// Eight f16 values, widened.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(bytes: &[u8; 16]) -> __m256 {
    _mm256_cvtph_ps(load_half(bytes))
}

/// Four f16 values, widened into lanes `i` and `i + 4` (the lanes of a narrow legacy
/// group that share block `i`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x4_twice(bytes: &[u8; 8]) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi64x(i64::from_le_bytes(*bytes)))
}

/// Eight bytes, widened to floats.
#[inline]
#[target_feature(enable = "avx2")]
fn u8x8(bytes: &[u8; 8]) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set1_epi64x(i64::from_le_bytes(*bytes))))
}

/// Eight signed bytes, widened to floats.
#[inline]
#[target_feature(enable = "avx2")]
fn i8x8(bytes: &[u8; 8]) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_set1_epi64x(i64::from_le_bytes(*bytes))))
}

/// The `NV` value vectors of packed nibbles (`repack`): vector `u` and `u + NV / 2` share
/// a byte, low and high nibble.
#[inline]
#[target_feature(enable = "avx2")]
fn nibble_vectors<const NV: usize>(packed: &[u8]) -> [__m256i; NV] {
    let mask = _mm256_set1_epi8(0xF);
    let mut q = [_mm256_setzero_si256(); NV];
    for u in 0..NV / 2 {
        let p = load_u8(array(&packed[u * 32..]));
        q[u] = _mm256_and_si256(p, mask);
        q[u + NV / 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(p), mask);
    }
    q
}

/// Bit `from` of every byte of `bits`, moved to bit `to` (other bits cleared). 16-bit
/// shifts: what crosses from the neighbouring byte is cleared by the mask.
#[inline]
#[target_feature(enable = "avx2")]
fn move_bit(bits: __m256i, from: usize, to: usize, mask: __m256i) -> __m256i {
    let moved = if from <= to {
        _mm256_sll_epi16(bits, _mm_cvtsi32_si128((to - from) as i32))
    } else {
        _mm256_srl_epi16(bits, _mm_cvtsi32_si128((from - to) as i32))
    };
    _mm256_and_si256(moved, mask)
}

/// A legacy group from its values and scales (and minimums): Q8_0 is stored as
/// `w + 128`; AVX2's signed mode wants `|w|` with the signed weights alongside.
#[inline]
#[target_feature(enable = "avx2")]
fn legacy_group<const TY: u8, const NV: usize>(q: [__m256i; NV], scale: __m256, min: __m256) -> Group<NV> {
    let mut grp = Group { q, sign: q, scale, min };
    if TY == Q8_0_SIGNED {
        for (q, sign) in grp.q.iter_mut().zip(&mut grp.sign) {
            *sign = _mm256_xor_si256(*q, _mm256_set1_epi8(-128));
            *q = _mm256_abs_epi8(*sign);
        }
    }
    grp
}

/// A wide group of a repacked row (`repack`): 8 legacy blocks, or one Q4_K super-block.
///
/// `ROWS` and `VNNI` only make each caller get its own copy: LLVM always inlines a private
/// function with a single call site, while a shared copy of a large decoder was called
/// instead, and the group then went through memory (`#[inline(always)]` is not allowed
/// with `#[target_feature]`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_wide<const TY: u8, const WB: usize, const ROWS: usize, const VNNI: bool>(grp: &[u8; WB]) -> Group<8> {
    let zero = _mm256_setzero_ps();
    match TY {
        Q4K => {
            let (d, dmin) = (f16_at(grp, 0), f16_at(grp, 2));
            let q = nibble_vectors::<8>(&grp[20..]);
            Group {
                q,
                sign: q,
                scale: _mm256_mul_ps(_mm256_set1_ps(d), u8x8(array(&grp[4..]))),
                min: _mm256_mul_ps(_mm256_set1_ps(-dmin), u8x8(array(&grp[12..]))),
            }
        }
        Q8_0 | Q8_0_SIGNED => {
            let mut q = [_mm256_setzero_si256(); 8];
            for (v, q) in q.iter_mut().enumerate() {
                *q = load_u8(array(&grp[16 + 32 * v..]));
            }
            legacy_group::<TY, 8>(q, f16x8(array(grp)), zero)
        }
        _ => {
            let header = if TY == Q4_1 { 32 } else { 16 };
            let mut q = nibble_vectors::<8>(&grp[header..]);
            if TY == Q5_0 {
                let bits = load_u8(array(&grp[header + 128..]));
                let fifth = _mm256_set1_epi8(0x10);
                for (j, q) in q.iter_mut().enumerate() {
                    *q = _mm256_or_si256(*q, move_bit(bits, j, 4, fifth));
                }
            }
            let min = if TY == Q4_1 { f16x8(array(&grp[16..])) } else { zero };
            legacy_group::<TY, 8>(q, f16x8(array(grp)), min)
        }
    }
}

/// A narrow group of a repacked row: the legacy tail of up to 4 blocks, or half a Q6_K
/// super-block. `ROWS` and `VNNI` as in [`decode_wide`].
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_narrow<const TY: u8, const NB: usize, const ROWS: usize, const VNNI: bool>(grp: &[u8; NB]) -> Group<4> {
    let zero = _mm256_setzero_ps();
    match TY {
        Q6K => {
            let d = f16_at(grp, 0);
            let mut q = nibble_vectors::<4>(&grp[10..]);
            let high = load_u8(array(&grp[74..]));
            let mask = _mm256_set1_epi8(0x30);
            for (j, q) in q.iter_mut().enumerate() {
                *q = _mm256_or_si256(*q, move_bit(high, 2 * j, 4, mask));
            }
            Group {
                q,
                sign: q,
                scale: _mm256_mul_ps(_mm256_set1_ps(d), i8x8(array(&grp[2..]))),
                min: zero,
            }
        }
        Q8_0 | Q8_0_SIGNED => {
            let mut q = [_mm256_setzero_si256(); 4];
            for (v, q) in q.iter_mut().enumerate() {
                *q = load_u8(array(&grp[8 + 32 * v..]));
            }
            legacy_group::<TY, 4>(q, f16x4_twice(array(grp)), zero)
        }
        _ => {
            let header = if TY == Q4_1 { 16 } else { 8 };
            let mut q = nibble_vectors::<4>(&grp[header..]);
            if TY == Q5_0 {
                // Bytes 16.. of each vector have their bits in the high nibble.
                let half = load_half(array(&grp[header + 64..]));
                let bits = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(half), _mm_srli_epi16::<4>(half));
                let fifth = _mm256_set1_epi8(0x10);
                for (j, q) in q.iter_mut().enumerate() {
                    *q = _mm256_or_si256(*q, move_bit(bits, j, 4, fifth));
                }
            }
            let min = if TY == Q4_1 {
                f16x4_twice(array(&grp[8..]))
            } else {
                zero
            };
            legacy_group::<TY, 4>(q, f16x4_twice(array(grp)), min)
        }
    }
}
