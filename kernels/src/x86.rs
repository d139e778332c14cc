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

/// Weight rows that go by a span of activations before the next span is loaded.
const ROW_BLOCK: usize = 16;

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
            QuantType::Q4_0 => run_tile::<Q4_0, 18>,
            QuantType::Q4_1 => run_tile::<Q4_1, 20>,
            QuantType::Q5_0 => run_tile::<Q5_0, 22>,
            QuantType::Q8_0 if mode.signed => run_tile::<Q8_0_SIGNED, 34>,
            QuantType::Q8_0 => run_tile::<Q8_0, 34>,
            QuantType::Q4K => run_tile::<Q4K, 144>,
            QuantType::Q6K => run_tile::<Q6K, 210>,
        };
        tile_fn(vnni, layout, weight, row_bytes, tile, outs);
    }
}

/// Runs one tile of up to [`ROW_TILE`] activation rows with the kernel for its size.
#[allow(clippy::too_many_arguments)]
fn run_tile<const TY: u8, const BB: usize>(
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
                        unsafe { task_vnni::<TY, BB, $r>(layout, weight, row_bytes, tile, outs) }
                    } else {
                        // SAFETY: as above.
                        unsafe { task_avx2::<TY, BB, $r>(layout, weight, row_bytes, tile, outs) }
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
static NO_WIDE: XGroup<8> = XGroup::ZERO;
static NO_NARROW: XGroup<4> = XGroup::ZERO;

macro_rules! task {
    ($name:ident, $features:literal, $sums:ident, $vnni:literal) => {
        /// Computes a task's outputs for `R` activation rows: each group of each weight row
        /// is decoded once and multiplied with every row. Long rows are cut into spans of
        /// groups whose activations stay in L1 while a block of weight rows goes by.
        #[target_feature(enable = $features)]
        fn $name<const TY: u8, const BB: usize, const R: usize>(
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
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let row = &weight[(first + j) * row_bytes..][..row_bytes];
                        if prefetching && start == 0 {
                            prefetch(
                                weight
                                    .get((first + j + PREFETCH_ROWS) * row_bytes..)
                                    .unwrap_or(&[]),
                                row_bytes,
                            );
                        }
                        let mut a = *acc;
                        for g in start..end.min(layout.wide) {
                            let grp = decode_wide::<TY, BB, R, $vnni>(row, g);
                            let mut x = [&NO_WIDE; R];
                            for (x, row) in x.iter_mut().zip(tile) {
                                *x = &row.wide[g];
                            }
                            let s = $sums::<TY, 8, R>(&grp, x);
                            for ((a, s), x) in a.iter_mut().zip(s).zip(x) {
                                *a = epilogue::<TY, 8>(*a, s, &grp, x);
                            }
                        }
                        for g in start.max(layout.wide)..end {
                            let grp = decode_narrow::<TY, BB, R, $vnni>(row, layout, g);
                            let mut x = [&NO_NARROW; R];
                            for (x, row) in x.iter_mut().zip(tile) {
                                *x = &row.narrow[g - layout.wide];
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

/// Interleaves a narrow group given as 4 natural 32-byte vectors (`n[m]` holds runs `2m`
/// and `2m + 1` of 16 values): two 4x4 transposes of 32-bit elements, one per 128-bit
/// half, which is what the lane order of narrow groups ([`crate::layout::narrow_run`])
/// was chosen for.
#[inline]
#[target_feature(enable = "avx2")]
fn interleave_narrow(n: [__m256i; 4]) -> [__m256i; 4] {
    transpose_halves(n)
}

/// Interleaves the 16 bytes of nibbles of 8 legacy blocks (row `i` is block `i`): dword `i`
/// of output `u` is bytes `4u..4u + 4` of block `i`. Their low nibbles are values `4u..`
/// and their high nibbles values `16 + 4u..` of the block, i.e. interleaved vectors `u` and
/// `4 + u`: interleaving the packed bytes moves half the data of interleaving the values.
#[inline]
#[target_feature(enable = "avx2")]
fn interleave_nibble_rows(r: [__m128i; 8]) -> [__m256i; 4] {
    let pair = |lo: __m128i, hi: __m128i| _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
    transpose_halves([pair(r[0], r[4]), pair(r[1], r[5]), pair(r[2], r[6]), pair(r[3], r[7])])
}

/// A 4x4 transpose of 32-bit elements in each 128-bit half.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_halves(r: [__m256i; 4]) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}

/// Q5_0's fifth bits in the interleaved layout: byte `t` of dword `i` of vector `v` is 0x10
/// where bit `4v + t` of `qh[i]` is set. Shift and multiply, not shuffles, which are busy
/// with the interleaving: the multiply copies the 4 bits at offsets 4, 11, 18 and 25, which
/// puts bit `t` of copy `t` at bit `8t + 4`, and no other bit lands on those positions.
#[inline]
#[target_feature(enable = "avx2")]
fn fifth_bits(qh: __m256i, v: usize) -> __m256i {
    let bits = _mm256_and_si256(
        _mm256_srl_epi32(qh, _mm_cvtsi32_si128(4 * v as i32)),
        _mm256_set1_epi32(0xF),
    );
    let spread = _mm256_mullo_epi32(bits, _mm256_set1_epi32(0x0204_0810));
    _mm256_and_si256(spread, _mm256_set1_epi32(0x1010_1010))
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
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    // Each byte keeps only its own bit clear in the mask, so it becomes all-ones iff set.
    let all_but_own_bit = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, all_but_own_bit), _mm256_set1_epi32(-1))
}

/// Eight f16 values, widened. They are packed into two integers first: inserting them one
/// by one into a vector takes the shuffle units, which the interleaving already saturates.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(bits: &[u16; 8]) -> __m256 {
    let pack = |b: &[u16]| b.iter().rev().fold(0u64, |acc, &b| (acc << 16) | b as u64) as i64;
    _mm256_cvtph_ps(_mm_set_epi64x(pack(&bits[4..]), pack(&bits[..4])))
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
    let mut grp = Group {
        q,
        sign: q,
        scale: f16x8(d),
        min: _mm256_setzero_ps(),
    };
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
///
/// `ROWS` and `VNNI` only make each caller get its own copy: LLVM always inlines a private function
/// with a single call site, while a shared copy of a large decoder was called instead, and
/// the group then went through memory (`#[inline(always)]` is not allowed with
/// `#[target_feature]`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_wide<const TY: u8, const BB: usize, const ROWS: usize, const VNNI: bool>(row: &[u8], g: usize) -> Group<8> {
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
    }
    if TY == Q8_0 || TY == Q8_0_SIGNED {
        for (v, blk) in v.iter_mut().zip(&blocks[..8]) {
            *v = legacy_values::<TY, BB>(blk);
        }
        return legacy_group::<TY, 8>(interleave_wide(v), &d, &m);
    }
    let nibble_offset = if TY == Q4_0 {
        2
    } else if TY == Q4_1 {
        4
    } else {
        6
    };
    let mut rows = [_mm_setzero_si128(); 8];
    for (r, blk) in rows.iter_mut().zip(&blocks[..8]) {
        *r = load_half(array(&blk[nibble_offset..]));
    }
    let packed = interleave_nibble_rows(rows);
    let mask = _mm256_set1_epi8(0xF);
    for u in 0..4 {
        v[u] = _mm256_and_si256(packed[u], mask);
        v[4 + u] = _mm256_and_si256(_mm256_srli_epi16::<4>(packed[u]), mask);
    }
    if TY == Q5_0 {
        let mut qh = [0u32; 8];
        for (qh, blk) in qh.iter_mut().zip(&blocks[..8]) {
            *qh = u32::from_le_bytes(*array(&blk[2..]));
        }
        let pair = |i: usize| (qh[i] as u64 | (qh[i + 1] as u64) << 32) as i64;
        let qh = _mm256_set_epi64x(pair(6), pair(4), pair(2), pair(0));
        for (i, v) in v.iter_mut().enumerate() {
            *v = _mm256_or_si256(*v, fifth_bits(qh, i));
        }
    }
    legacy_group::<TY, 8>(v, &d, &m)
}

/// Narrow group `g` of a weight row: the legacy tail of up to 4 blocks, or half a Q6_K
/// super-block. `ROWS` and `VNNI` as in [`decode_wide`].
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn decode_narrow<const TY: u8, const BB: usize, const ROWS: usize, const VNNI: bool>(
    row: &[u8],
    layout: &Layout,
    g: usize,
) -> Group<4> {
    if TY == Q6K {
        return q6k_group(array(&row[g / 2 * 210..]), g % 2);
    }
    // Block `m` of the tail fills lanes `m` and `m + 4`; missing blocks are zeros. (The
    // copy is avoided when it can be: 32-byte loads from several smaller stores stall.)
    let mut padded = [[0u8; BB]; 4];
    let (present, _) = row[layout.wide * 8 * BB..].as_chunks::<BB>();
    let blocks = if present.len() == 4 {
        present
    } else {
        padded[..present.len()].copy_from_slice(present);
        &padded[..]
    };
    let (mut v, mut d, mut m) = ([_mm256_setzero_si256(); 4], [0u16; 8], [0u16; 8]);
    for (i, blk) in blocks[..4].iter().enumerate() {
        d[i] = u16::from_le_bytes([blk[0], blk[1]]);
        d[i + 4] = d[i];
        if TY == Q4_1 {
            m[i] = u16::from_le_bytes([blk[2], blk[3]]);
            m[i + 4] = m[i];
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
    // ggml's unpacking of the 12 bytes of 6-bit scales and minimums, 4 at a time (the
    // per-sub-block `get_scale_min_k4` in 32-bit words): scales end in `u[0..2]`, minimums
    // in `u[2..4]`.
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let w = |i: usize| u32::from_le_bytes(*array(&blk[4 + 4 * i..]));
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let u = [
        w0 & KMASK1,
        (w2 & KMASK2) | (((w0 >> 6) & KMASK3) << 4),
        w1 & KMASK1,
        ((w2 >> 4) & KMASK2) | (((w1 >> 6) & KMASK3) << 4),
    ];
    let sc = ((u[1] as u64) << 32 | u[0] as u64).to_le_bytes();
    let mn = ((u[3] as u64) << 32 | u[2] as u64).to_le_bytes();
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
    // Lane `i` holds sub-block `narrow_run(i)` of this half.
    let scales = _mm_set1_epi64x(i64::from_le_bytes(*array(&blk[192 + 8 * half..])));
    let scales = _mm_shuffle_epi8(scales, _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 0, 0, 0, 0, 0, 0, 0, 0));
    let scales = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(scales));
    let m4 = _mm256_set1_epi8(0xF);
    let q1 = load_u8(array(&blk[64 * half..]));
    let q2 = load_u8(array(&blk[64 * half + 32..]));
    let qh = load_u8(array(&blk[128 + 32 * half..]));
    let v = [
        _mm256_or_si256(_mm256_and_si256(q1, m4), high_bits(_mm256_slli_epi16::<4>(qh))),
        _mm256_or_si256(_mm256_and_si256(q2, m4), high_bits(_mm256_slli_epi16::<2>(qh))),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q1), m4), high_bits(qh)),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(q2), m4),
            high_bits(_mm256_srli_epi16::<2>(qh)),
        ),
    ];
    let q = interleave_narrow(v);
    Group {
        q,
        sign: q,
        scale: _mm256_mul_ps(_mm256_set1_ps(d), scales),
        min: _mm256_setzero_ps(),
    }
}

/// Q6_K's high bits: `qh` holds 2 bits per value, 4 values per byte; the caller shifts the
/// wanted pair to bits 4 and 5 of each byte (16-bit shifts: what crosses into a neighbour
/// byte is masked off here).
#[inline]
#[target_feature(enable = "avx2")]
fn high_bits(shifted: __m256i) -> __m256i {
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x30))
}
