//! Attention of a few new tokens over a KV cache kept in blocks: the decode step of an LM
//! (one token per sequence, one sequence per beam) and the short prefills of per-keystroke
//! completion.
//!
//! The engine's cache is a list of fixed-size blocks shared between sequences (beams fork
//! a prefix without copying it). Attending through a tensor library means concatenating a
//! sequence's blocks into one contiguous key and one value matrix per layer first: for
//! three beams over an 800-token prompt that is 57 MB copied per decode step, more than
//! the attention itself reads. Here each block is read where it lies: scores against every
//! cached key, a softmax over them, then the values weighted in place.
//!
//! Grouped-query attention: the query heads that share a key/value head are scored
//! together, so each key and value row is loaded once per group rather than once per head.
//! With AVX-512 a query is scored against 16 keys at a time, their lane sums reduced
//! together by one transposing network instead of a horizontal sum per key, and up to four
//! heads' weighted values are summed per pass over the value rows (independent chains of
//! multiply-adds instead of one per head): at 512 positions, 4 beams of Qwen2.5-0.5B's
//! layer took 67 rather than 103 µs.
//!
//! Work is split over (sequence, token, key/value head) units; units run in parallel on
//! rayon's pool when there are enough of them to pay for waking it. Beams of one search
//! share their prompt's blocks: when every sequence has one new token and they start with
//! the same blocks, the units of a key/value head run together and read each shared block
//! once (`run_joint`), with results identical to attending each beam alone.

use rayon::prelude::*;

use crate::elementwise::softmax_row;
use crate::{Error, Result};

/// Keys and values of consecutive positions for every key/value head, each
/// `[kv_heads, len, head_dim]` row-major.
#[derive(Clone, Copy, Debug)]
pub struct KvSpan<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub len: usize,
}

/// Head counts and sizes shared by every sequence of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub query: usize,
    pub key_value: usize,
    pub dim: usize,
}

/// One sequence's new tokens.
pub struct SequenceAttention<'a> {
    /// The new tokens' queries `[n, query heads, head_dim]`, position-encoded.
    pub queries: &'a [f32],
    /// Keys and values of every position in order, ending with the new tokens' own: the
    /// `i`-th of `n` new tokens sees all positions up to and including itself.
    pub spans: Vec<KvSpan<'a>>,
    /// `[n, query heads, head_dim]`.
    pub out: &'a mut [f32],
}

std::thread_local! {
    /// Each thread's score rows, reused across units: units run as pool tasks, where an
    /// allocation each contended for the allocator's lock with the other threads.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Below this many multiply-adds a call runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// `softmax(q·kᵀ · scale) · V` for each new token of each sequence, with causal masking
/// among the new tokens. With a sliding `window` (Mistral's, StarCoder2's), the token at
/// position `p` sees only positions `p - window + 1 ..= p`.
pub fn attend(heads: Heads, scale: f32, window: Option<usize>, sequences: &mut [SequenceAttention<'_>]) -> Result<()> {
    attend_with(heads, scale, window, sequences, has_avx512(), true)
}

/// Positions that sequences must share (the same blocks, at the start of every one) for
/// them to be attended together.
const MIN_SHARED_POSITIONS: usize = 64;

/// [`attend`], with the AVX-512 path allowed or not and shared blocks read once or once
/// per sequence (tests run every combination).
fn attend_with(
    heads: Heads,
    scale: f32,
    window: Option<usize>,
    sequences: &mut [SequenceAttention<'_>],
    avx512: bool,
    share: bool,
) -> Result<()> {
    let Heads { query, key_value, dim } = heads;
    if key_value == 0 || dim == 0 || !query.is_multiple_of(key_value) {
        return Err(Error::AttentionShape(format!(
            "{query} query heads cannot share {key_value} key/value heads of size {dim}"
        )));
    }
    if window == Some(0) {
        return Err(Error::AttentionShape("a sliding window of 0 positions".into()));
    }
    let group = query / key_value;
    let token_width = query * dim;
    let mut shared = if share { shared_spans(sequences, token_width) } else { 0 };
    let mut units = Vec::new();
    let mut work = 0usize;
    for (s, seq) in sequences.iter_mut().enumerate() {
        if !seq.queries.len().is_multiple_of(token_width) || seq.out.len() != seq.queries.len() {
            return Err(Error::AttentionShape(format!(
                "sequence {s}: {} query values and {} outputs for rows of {token_width}",
                seq.queries.len(),
                seq.out.len()
            )));
        }
        let n = seq.queries.len() / token_width;
        let mut total = 0usize;
        for (i, span) in seq.spans.iter().enumerate() {
            let want = key_value
                .checked_mul(span.len)
                .and_then(|x| x.checked_mul(dim))
                .ok_or_else(|| Error::AttentionShape(format!("sequence {s}, span {i}: size overflows")))?;
            if span.keys.len() != want || span.values.len() != want {
                return Err(Error::AttentionShape(format!(
                    "sequence {s}, span {i} of {} positions: {} keys and {} values, expected {want} each",
                    span.len,
                    span.keys.len(),
                    span.values.len()
                )));
            }
            total += span.len;
        }
        if total < n {
            return Err(Error::AttentionShape(format!(
                "sequence {s}: {n} new tokens but only {total} positions to attend over"
            )));
        }
        work = work.saturating_add(n.saturating_mul(total).saturating_mul(token_width));
        let queries = seq.queries;
        let spans = &seq.spans;
        for (u, out) in seq.out.chunks_mut(group * dim).enumerate() {
            let (token, kv_head) = (u / key_value, u % key_value);
            let first_head = kv_head * group;
            let visible = total - n + token + 1;
            let first = window.map_or(0, |w| visible.saturating_sub(w));
            if first > 0 {
                // The shared blocks are read from position 0 for every beam; a window
                // that starts later is attended beam by beam.
                shared = 0;
            }
            units.push(Unit {
                queries: &queries[token * token_width + first_head * dim..][..group * dim],
                spans,
                first,
                visible,
                kv_head,
                out,
            });
        }
    }
    let shape = UnitShape { group, dim, scale };
    if shared > 0 {
        // Beams: one new token each, and the same prompt blocks at the start of every
        // sequence. Units of one key/value head go together, so that each shared block
        // is read from memory once, not once per beam. (Units are in sequence order,
        // `key_value` per sequence.)
        let mut joint: Vec<Vec<Unit<'_, '_>>> = (0..key_value).map(|_| Vec::new()).collect();
        for u in units {
            joint[u.kv_head].push(u);
        }
        if work >= PARALLEL_WORK && joint.len() > 1 {
            joint.par_iter_mut().for_each(|j| run_joint(j, shared, shape, avx512));
        } else {
            joint.iter_mut().for_each(|j| run_joint(j, shared, shape, avx512));
        }
        return Ok(());
    }
    if work >= PARALLEL_WORK && units.len() > 1 {
        units.par_iter_mut().for_each(|u| run_unit(u, shape, avx512));
    } else {
        units.iter_mut().for_each(|u| run_unit(u, shape, avx512));
    }
    Ok(())
}

/// How many leading spans every sequence shares (the same memory), when there are several
/// sequences of one new token each and the shared spans cover enough positions to be
/// worth attending together; 0 otherwise.
fn shared_spans(sequences: &[SequenceAttention<'_>], token_width: usize) -> usize {
    let Some((first, rest)) = sequences.split_first() else {
        return 0;
    };
    if rest.is_empty() || sequences.iter().any(|s| s.queries.len() != token_width) {
        return 0;
    }
    let same = |a: &KvSpan<'_>, b: &KvSpan<'_>| {
        a.len == b.len && std::ptr::eq(a.keys, b.keys) && std::ptr::eq(a.values, b.values)
    };
    let mut shared = 0;
    // The last span holds the new token's own key, which differs per sequence.
    while shared + 1 < first.spans.len()
        && rest
            .iter()
            .all(|s| shared + 1 < s.spans.len() && same(&first.spans[shared], &s.spans[shared]))
    {
        shared += 1;
    }
    let positions: usize = first.spans[..shared].iter().map(|s| s.len).sum();
    if positions >= MIN_SHARED_POSITIONS { shared } else { 0 }
}

struct Unit<'s, 'a> {
    /// `group` query rows of one token.
    queries: &'s [f32],
    spans: &'s [KvSpan<'a>],
    /// Positions this token sees: `first..visible` of the spans (`first` > 0 only under a
    /// sliding window).
    first: usize,
    visible: usize,
    kv_head: usize,
    out: &'s mut [f32],
}

#[derive(Clone, Copy)]
struct UnitShape {
    group: usize,
    dim: usize,
    scale: f32,
}

fn run_unit(u: &mut Unit<'_, '_>, shape: UnitShape, avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: the CPU has AVX-512F and FMA (checked by `has_avx512`).
        unsafe { run_unit_avx512(u, shape) };
        return;
    }
    let _ = avx512;
    run_unit_generic::<false>(u, shape);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_unit_avx512(u: &mut Unit<'_, '_>, shape: UnitShape) {
    run_unit_generic::<true>(u, shape);
}

/// `FMA`: fused multiply-adds (only where the CPU has them: without, `mul_add` is a libm
/// call). Common head sizes get a version whose rows are fixed-size arrays, which the
/// compiler keeps in registers.
#[inline(always)]
fn run_unit_generic<const FMA: bool>(u: &mut Unit<'_, '_>, shape: UnitShape) {
    match shape.dim {
        64 => run_unit_sized::<FMA, 64>(u, shape),
        128 => run_unit_sized::<FMA, 128>(u, shape),
        _ => run_unit_any::<FMA>(u, shape),
    }
}

#[inline(always)]
fn run_unit_sized<const FMA: bool, const D: usize>(u: &mut Unit<'_, '_>, shape: UnitShape) {
    let UnitShape { group, scale, .. } = shape;
    SCORES.with_borrow_mut(|scores| run_unit_sized_with::<FMA, D>(u, group, scale, scores));
}

/// Score rows are indexed from the unit's first visible position.
#[inline(always)]
fn run_unit_sized_with<const FMA: bool, const D: usize>(
    u: &mut Unit<'_, '_>,
    group: usize,
    scale: f32,
    scores: &mut Vec<f32>,
) {
    let (first, visible) = (u.first, u.visible);
    let seen = visible - first;
    scores.clear();
    scores.resize(group * seen, 0.0);
    for (h, q) in u.queries.chunks_exact(D).enumerate() {
        let q: &[f32; D] = q.try_into().expect("rows of D");
        let row = &mut scores[h * seen..][..seen];
        for (pos, keys) in visible_rows(u.spans, u.kv_head, D, first, visible, Part::Keys) {
            score_rows::<FMA, D>(q, keys, scale, &mut row[pos..][..keys.len() / D]);
        }
        softmax_row(row);
    }
    u.out.fill(0.0);
    for (pos, values) in visible_rows(u.spans, u.kv_head, D, first, visible, Part::Values) {
        let rows = values.len() / D;
        accumulate_heads::<FMA, D>(u.out, |h| &scores[h * seen + pos..][..rows], values);
    }
}

#[inline(always)]
fn run_unit_any<const FMA: bool>(u: &mut Unit<'_, '_>, shape: UnitShape) {
    SCORES.with_borrow_mut(|scores| run_unit_any_with::<FMA>(u, shape, scores));
}

#[inline(always)]
fn run_unit_any_with<const FMA: bool>(u: &mut Unit<'_, '_>, shape: UnitShape, scores: &mut Vec<f32>) {
    let UnitShape { group, dim, scale } = shape;
    let (first, visible) = (u.first, u.visible);
    let seen = visible - first;
    scores.clear();
    scores.resize(group * seen, 0.0);
    for (pos, keys) in visible_rows(u.spans, u.kv_head, dim, first, visible, Part::Keys) {
        for (j, key) in keys.chunks_exact(dim).enumerate() {
            for (h, q) in u.queries.chunks_exact(dim).enumerate() {
                scores[h * seen + pos + j] = dot::<FMA>(q, key) * scale;
            }
        }
    }
    for row in scores.chunks_exact_mut(seen) {
        softmax_row(row);
    }
    u.out.fill(0.0);
    for (pos, values) in visible_rows(u.spans, u.kv_head, dim, first, visible, Part::Values) {
        for (j, value) in values.chunks_exact(dim).enumerate() {
            for (h, out) in u.out.chunks_exact_mut(dim).enumerate() {
                axpy::<FMA>(out, scores[h * seen + pos + j], value);
            }
        }
    }
}

/// Runs units of one key/value head whose sequences all start with the same `shared`
/// spans and have one new token each: every shared key and value row is loaded once for
/// all of them. Each unit's scores and sums are computed in the same order as by
/// [`run_unit`], so the results are identical.
fn run_joint(units: &mut [Unit<'_, '_>], shared: usize, shape: UnitShape, avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: the CPU has AVX-512F and FMA (checked by `has_avx512`).
        unsafe { run_joint_avx512(units, shared, shape) };
        return;
    }
    let _ = avx512;
    run_joint_generic::<false>(units, shared, shape);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn run_joint_avx512(units: &mut [Unit<'_, '_>], shared: usize, shape: UnitShape) {
    run_joint_generic::<true>(units, shared, shape);
}

#[inline(always)]
fn run_joint_generic<const FMA: bool>(units: &mut [Unit<'_, '_>], shared: usize, shape: UnitShape) {
    match shape.dim {
        64 => SCORES.with_borrow_mut(|s| run_joint_sized::<FMA, 64>(units, shared, shape, s)),
        128 => SCORES.with_borrow_mut(|s| run_joint_sized::<FMA, 128>(units, shared, shape, s)),
        _ => units.iter_mut().for_each(|u| run_unit_any::<FMA>(u, shape)),
    }
}

#[inline(always)]
fn run_joint_sized<const FMA: bool, const D: usize>(
    units: &mut [Unit<'_, '_>],
    shared: usize,
    shape: UnitShape,
    scores: &mut Vec<f32>,
) {
    let UnitShape { group, scale, .. } = shape;
    let Some(first) = units.first() else {
        return;
    };
    let (kv_head, shared_spans) = (first.kv_head, &first.spans[..shared]);
    let shared_len: usize = shared_spans.iter().map(|s| s.len).sum();
    // Unit `m`'s score rows start at `m * stride`.
    let stride = group * units.iter().map(|u| u.visible).max().unwrap_or(0);
    scores.clear();
    scores.resize(units.len() * stride, 0.0);

    // Scores against the shared keys, block by block: a block stays in cache while every
    // unit's queries go over it.
    let mut pos = 0;
    for span in shared_spans {
        let keys = &span.keys[kv_head * span.len * D..][..span.len * D];
        for (m, u) in units.iter().enumerate() {
            for (h, q) in u.queries.chunks_exact(D).enumerate() {
                let q: &[f32; D] = q.try_into().expect("rows of D");
                let row = &mut scores[m * stride + h * u.visible + pos..][..span.len];
                score_rows::<FMA, D>(q, keys, scale, row);
            }
        }
        pos += span.len;
    }
    // Each unit's own keys, then its softmax.
    for (m, u) in units.iter().enumerate() {
        let own = &u.spans[shared..];
        for (h, q) in u.queries.chunks_exact(D).enumerate() {
            let q: &[f32; D] = q.try_into().expect("rows of D");
            let row = &mut scores[m * stride + h * u.visible..][..u.visible];
            for (at, keys) in visible_rows(own, kv_head, D, 0, u.visible - shared_len, Part::Keys) {
                score_rows::<FMA, D>(q, keys, scale, &mut row[shared_len + at..][..keys.len() / D]);
            }
            softmax_row(row);
        }
    }
    // Values: the running sums live in the outputs between blocks.
    for u in units.iter_mut() {
        u.out.fill(0.0);
    }
    let mut pos = 0;
    for span in shared_spans {
        let values = &span.values[kv_head * span.len * D..][..span.len * D];
        for (m, u) in units.iter_mut().enumerate() {
            let probs = |h: usize| &scores[m * stride + h * u.visible + pos..][..span.len];
            accumulate_heads::<FMA, D>(u.out, probs, values);
        }
        pos += span.len;
    }
    for (m, u) in units.iter_mut().enumerate() {
        let own = &u.spans[shared..];
        for (at, values) in visible_rows(own, kv_head, D, 0, u.visible - shared_len, Part::Values) {
            let rows = values.len() / D;
            let probs = |h: usize| &scores[m * stride + h * u.visible + shared_len + at..][..rows];
            accumulate_heads::<FMA, D>(u.out, probs, values);
        }
    }
}

/// `out_h += Σ_k probs(h)[k] · values_k` for each head `h` whose `D` outputs are in `outs`:
/// up to four heads at a time, so that each value row loaded feeds several independent
/// sums (one head's sums are chains of dependent multiply-adds, a value row per latency).
/// Each output sees the same operations in the same order as one head at a time.
#[inline(always)]
fn accumulate_heads<'p, const FMA: bool, const D: usize>(
    outs: &mut [f32],
    probs: impl Fn(usize) -> &'p [f32],
    values: &[f32],
) {
    let heads = outs.len() / D;
    let mut h = 0;
    while h < heads {
        let take = (heads - h).min(4);
        let outs = &mut outs[h * D..(h + take) * D];
        match take {
            4 => accumulate_n::<FMA, D, 4>(outs, [probs(h), probs(h + 1), probs(h + 2), probs(h + 3)], values),
            3 => accumulate_n::<FMA, D, 3>(outs, [probs(h), probs(h + 1), probs(h + 2)], values),
            2 => accumulate_n::<FMA, D, 2>(outs, [probs(h), probs(h + 1)], values),
            _ => accumulate_n::<FMA, D, 1>(outs, [probs(h)], values),
        }
        h += take;
    }
}

#[inline(always)]
fn accumulate_n<const FMA: bool, const D: usize, const H: usize>(outs: &mut [f32], probs: [&[f32]; H], values: &[f32]) {
    let rows = values.len() / D;
    let mut acc = [[0f32; D]; H];
    for ((a, out), p) in acc.iter_mut().zip(outs.chunks_exact(D)).zip(probs) {
        a.copy_from_slice(out);
        assert_eq!(p.len(), rows, "a probability per value row");
    }
    for (k, value) in values.chunks_exact(D).enumerate() {
        let value: &[f32; D] = value.try_into().expect("rows of D");
        for (a, p) in acc.iter_mut().zip(probs) {
            let p = p[k];
            for d in 0..D {
                a[d] = madd::<FMA>(p, value[d], a[d]);
            }
        }
    }
    for (a, out) in acc.iter().zip(outs.chunks_exact_mut(D)) {
        out.copy_from_slice(a);
    }
}

/// A unit's rows of keys (or values) among the positions it sees, span by span: the
/// position of each span's first row and the span's rows for the unit's key/value head.
#[inline(always)]
fn visible_rows<'s>(
    spans: &'s [KvSpan<'s>],
    kv_head: usize,
    dim: usize,
    first: usize,
    visible: usize,
    part: Part,
) -> impl Iterator<Item = (usize, &'s [f32])> {
    let mut start = 0;
    spans
        .iter()
        .map_while(move |span| {
            let span_start = start;
            start += span.len;
            (span_start < visible).then_some((span_start, span))
        })
        .filter_map(move |(span_start, span)| {
            // This span's rows `skip..take`, clipped to `first..visible`.
            let skip = first.saturating_sub(span_start).min(span.len);
            let take = span.len.min(visible - span_start);
            if skip >= take {
                return None;
            }
            let all = match part {
                Part::Keys => span.keys,
                Part::Values => span.values,
            };
            let rows = &all[(kv_head * span.len + skip) * dim..][..(take - skip) * dim];
            Some((span_start + skip - first, rows))
        })
}

#[derive(Clone, Copy)]
enum Part {
    Keys,
    Values,
}

/// Reductions run in 16 independent lanes (a single running sum is a dependency chain the
/// compiler may not turn into SIMD).
const LANES: usize = 16;

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// The 16 lanes summed pairwise: halves added as vectors, not 15 dependent scalar adds.
#[inline(always)]
fn reduce_lanes(acc: [f32; LANES]) -> f32 {
    let mut a8 = [0f32; 8];
    for l in 0..8 {
        a8[l] = acc[l] + acc[l + 8];
    }
    let mut a4 = [0f32; 4];
    for l in 0..4 {
        a4[l] = a8[l] + a8[l + 4];
    }
    (a4[0] + a4[2]) + (a4[1] + a4[3])
}

/// `out[j] = q · keys[j] * scale` for each of the `out.len()` rows of `keys`. Both the
/// joint and the per-unit paths score through here, span by span, so their scores are
/// identical.
#[inline(always)]
fn score_rows<const FMA: bool, const D: usize>(q: &[f32; D], keys: &[f32], scale: f32, out: &mut [f32]) {
    debug_assert_eq!(keys.len(), out.len() * D);
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` code runs only inside `run_unit_avx512` and `run_joint_avx512`, on
        // CPUs with AVX-512F.
        unsafe { score_rows_avx512::<D>(q, keys, scale, out) };
        return;
    }
    for (s, key) in out.iter_mut().zip(keys.chunks_exact(D)) {
        *s = dot_sized::<FMA, D>(q, key.try_into().expect("rows of D")) * scale;
    }
}

/// [`score_rows`] with AVX-512, 16 keys at a time. Each key's products go into two 16-lane
/// accumulators (even and odd 16-value chunks), added; the 16 keys' vectors are then summed
/// across lanes together, by a transposing network of shuffles and adds (lanes `l + 8`,
/// then `l + 4`, `l + 2`, `l + 1`, the tree of `_mm512_reduce_add_ps`), which leaves the
/// 16 scores in one vector. A reduction per key cost three times the multiply-adds.
/// Fewer than 16 keys go through the same network with the missing keys' sums zero, so a
/// score does not depend on where its key falls.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn score_rows_avx512<const D: usize>(q: &[f32; D], keys: &[f32], scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    const { assert!(D.is_multiple_of(2 * LANES)) };
    let n = out.len();
    assert!(keys.len() >= n * D, "{} keys of {D} values need {} values", n, n * D);
    let (pq, pk) = (q.as_ptr(), keys.as_ptr());
    // The key order the network leaves in its result, undone by one permutation.
    let order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    let scale = _mm512_set1_ps(scale);
    let mut first = 0;
    while first < n {
        let count = (n - first).min(LANES);
        // Keys j and j + 8 are summed across lanes l + 8 as soon as both are there: all 16
        // keys' vectors at once (with the query's) overflowed the 32 registers.
        let mut half = [_mm512_setzero_ps(); 8];
        if count == LANES {
            for (j, h) in half.iter_mut().enumerate() {
                // SAFETY: AVX-512F is enabled here; `q` holds D values and keys
                // `first + j` and `first + j + 8` (< n) are rows of D values in `keys`.
                let (a, b) = unsafe {
                    (
                        key_sum::<D>(pq, pk.add((first + j) * D)),
                        key_sum::<D>(pq, pk.add((first + j + 8) * D)),
                    )
                };
                *h = fold_halves(a, b);
            }
        } else {
            for (j, h) in half.iter_mut().enumerate() {
                let key = |k: usize| {
                    // SAFETY: as above, for the keys below `count`.
                    if k < count {
                        unsafe { key_sum::<D>(pq, pk.add((first + k) * D)) }
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                *h = fold_halves(key(j), key(j + 8));
            }
        }
        let scores = _mm512_mul_ps(_mm512_permutexvar_ps(order, sum_lanes_of_halves(half)), scale);
        let mask: __mmask16 = if count == LANES { !0 } else { (1 << count) - 1 };
        // SAFETY: the mask covers keys first..first + count, all within `out`.
        unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(first), mask, scores) };
        first += count;
    }
}

/// The 16 lanes of `q · key` before the reduction across lanes: two accumulators over
/// alternate 16-value chunks, added.
///
/// # Safety
/// AVX-512F; `q` and `key` point to `D` readable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn key_sum<const D: usize>(q: *const f32, key: *const f32) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let mut even = _mm512_setzero_ps();
    let mut odd = _mm512_setzero_ps();
    for i in (0..D).step_by(2 * LANES) {
        // SAFETY: i + 32 <= D for both rows (the caller's contract).
        unsafe {
            even = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(i)), _mm512_loadu_ps(key.add(i)), even);
            odd = _mm512_fmadd_ps(
                _mm512_loadu_ps(q.add(i + LANES)),
                _mm512_loadu_ps(key.add(i + LANES)),
                odd,
            );
        }
    }
    _mm512_add_ps(even, odd)
}

/// Lanes `l` and `l + 8` of `a` and of `b` added: `a`'s eight sums in lanes 0..8, `b`'s in
/// lanes 8..16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn fold_halves(a: std::arch::x86_64::__m512, b: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    )
}

/// The lane sums of 16 vectors, as one vector, from their [`fold_halves`] (vectors `j` and
/// `j + 8` in `half[j]`), in the order `0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13,
/// 15` (see [`score_rows_avx512`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn sum_lanes_of_halves(half: [std::arch::x86_64::__m512; 8]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Lanes l + 4: each 128-bit lane of vector j holds one input's four partial sums.
    let mut quarter = [_mm512_setzero_ps(); 4];
    for (j, h) in quarter.iter_mut().enumerate() {
        let (a, b) = (half[j], half[j + 4]);
        *h = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        );
    }
    // Lanes l + 2, then l + 1, within 128-bit lanes.
    let mut eighth = [_mm512_setzero_ps(); 2];
    for (j, h) in eighth.iter_mut().enumerate() {
        let (a, b) = (quarter[j], quarter[j + 2]);
        *h = _mm512_add_ps(
            _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
            _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
        );
    }
    let (a, b) = (eighth[0], eighth[1]);
    _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
        _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
    )
}

#[inline(always)]
fn dot_sized<const FMA: bool, const D: usize>(a: &[f32; D], b: &[f32; D]) -> f32 {
    let mut acc = [0f32; LANES];
    let full = D / LANES * LANES;
    for c in (0..full).step_by(LANES) {
        for l in 0..LANES {
            acc[l] = madd::<FMA>(a[c + l], b[c + l], acc[l]);
        }
    }
    let mut tail = 0f32;
    for d in full..D {
        tail = madd::<FMA>(a[d], b[d], tail);
    }
    reduce_lanes(acc) + tail
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] = madd::<FMA>(x[l], y[l], acc[l]);
        }
    }
    reduce_lanes(acc) + tail
}

#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = madd::<FMA>(a, x, *y);
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Attention in f64 over one contiguous `[kv_heads, total, dim]` key and value matrix.
    fn reference(heads: Heads, scale: f64, q: &[f32], k: &[f32], v: &[f32], total: usize) -> Vec<f64> {
        reference_windowed(heads, scale, None, q, k, v, total)
    }

    /// [`reference`] with a sliding window: position `p` sees `p - window + 1 ..= p`.
    fn reference_windowed(
        heads: Heads,
        scale: f64,
        window: Option<usize>,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        total: usize,
    ) -> Vec<f64> {
        let Heads { query, key_value, dim } = heads;
        let group = query / key_value;
        let n = q.len() / (query * dim);
        let mut out = vec![0f64; q.len()];
        for t in 0..n {
            let visible = total - n + t + 1;
            let first = window.map_or(0, |w| visible.saturating_sub(w));
            for h in 0..query {
                let g = h / group;
                let qrow = &q[(t * query + h) * dim..][..dim];
                let scores: Vec<f64> = (first..visible)
                    .map(|j| {
                        let krow = &k[(g * total + j) * dim..][..dim];
                        qrow.iter().zip(krow).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for (j, e) in (first..visible).zip(&exps) {
                    let vrow = &v[(g * total + j) * dim..][..dim];
                    for d in 0..dim {
                        out[(t * query + h) * dim + d] += e / sum * vrow[d] as f64;
                    }
                }
            }
        }
        out
    }

    /// Cuts `[kv_heads, total, dim]` into spans of the given lengths.
    fn split(m: &[f32], heads: Heads, total: usize, lens: &[usize]) -> Vec<Vec<f32>> {
        let mut start = 0;
        lens.iter()
            .map(|&len| {
                let mut block = Vec::with_capacity(heads.key_value * len * heads.dim);
                for g in 0..heads.key_value {
                    block.extend_from_slice(&m[(g * total + start) * heads.dim..][..len * heads.dim]);
                }
                start += len;
                block
            })
            .collect()
    }

    fn check(heads: Heads, lens: &[usize], n: usize, seed: u64) {
        check_with(heads, lens, n, seed, None, false);
        check_with(heads, lens, n, seed, None, has_avx512());
    }

    fn check_with(heads: Heads, lens: &[usize], n: usize, seed: u64, window: Option<usize>, avx512: bool) {
        let mut rng = StdRng::seed_from_u64(seed);
        let total: usize = lens.iter().sum();
        let mut rand = |len: usize| (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<f32>>();
        let k = rand(heads.key_value * total * heads.dim);
        let v = rand(heads.key_value * total * heads.dim);
        let q = rand(n * heads.query * heads.dim);
        let scale = 1.0 / (heads.dim as f32).sqrt();
        let (kb, vb) = (split(&k, heads, total, lens), split(&v, heads, total, lens));
        let spans = lens
            .iter()
            .zip(kb.iter().zip(&vb))
            .map(|(&len, (k, v))| KvSpan {
                keys: k,
                values: v,
                len,
            })
            .collect();
        let mut out = vec![f32::NAN; q.len()];
        attend_with(
            heads,
            scale,
            window,
            &mut [SequenceAttention {
                queries: &q,
                spans,
                out: &mut out,
            }],
            avx512,
            true,
        )
        .unwrap();
        let want = reference_windowed(heads, scale as f64, window, &q, &k, &v, total);
        for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
            assert!(
                (got as f64 - want).abs() < 2e-5,
                "{heads:?} {lens:?} n={n} window {window:?}: [{i}] {got} vs {want}"
            );
        }
    }

    #[test]
    fn a_sliding_window_sees_only_its_last_positions() {
        let gqa = Heads {
            query: 14,
            key_value: 2,
            dim: 64,
        };
        let odd = Heads {
            query: 6,
            key_value: 2,
            dim: 24,
        };
        for avx512 in [false, has_avx512()] {
            for heads in [gqa, odd] {
                // Windows that start inside a block, on a block boundary, inside the new
                // tokens, and one wider than everything (no masking).
                for window in [1, 5, 64, 70, 129, 1000] {
                    check_with(heads, &[64, 64, 17, 1], 1, 7, Some(window), avx512);
                    check_with(heads, &[64, 30, 5], 5, 8, Some(window), avx512);
                    check_with(heads, &[3, 3, 3], 9, 9, Some(window), avx512);
                }
            }
        }
        // Large enough to run on the pool.
        check_with(gqa, &[64; 20], 16, 10, Some(100), has_avx512());
        // A window wider than every sequence changes nothing.
        let q = vec![0.5f32; 14 * 64];
        let kv: Vec<f32> = (0..2 * 10 * 64).map(|i| (i % 13) as f32 * 0.1).collect();
        let run = |window| {
            let mut out = vec![0f32; q.len()];
            let spans = vec![KvSpan {
                keys: &kv,
                values: &kv,
                len: 10,
            }];
            attend(
                gqa,
                0.125,
                window,
                &mut [SequenceAttention {
                    queries: &q,
                    spans,
                    out: &mut out,
                }],
            )
            .unwrap();
            out
        };
        assert_eq!(run(None), run(Some(10)));
        assert_ne!(run(None), run(Some(9)));
        let mut out = vec![0f32; q.len()];
        let spans = vec![KvSpan {
            keys: &kv,
            values: &kv,
            len: 10,
        }];
        let e = attend(
            gqa,
            0.125,
            Some(0),
            &mut [SequenceAttention {
                queries: &q,
                spans,
                out: &mut out,
            }],
        );
        assert!(e.is_err());
    }

    #[test]
    fn matches_the_definition_over_blocks_with_grouped_heads_and_causal_new_tokens() {
        let gqa = Heads {
            query: 14,
            key_value: 2,
            dim: 64,
        };
        check(gqa, &[1], 1, 1);
        check(gqa, &[64, 64, 17, 1], 1, 2);
        check(gqa, &[64, 30, 5], 5, 3);
        let mha = Heads {
            query: 4,
            key_value: 4,
            dim: 20,
        };
        check(mha, &[3, 3, 3], 9, 4);
        let wide = Heads {
            query: 8,
            key_value: 2,
            dim: 128,
        };
        check(wide, &[64, 7], 2, 6);
        // Large enough to run on the pool.
        check(gqa, &[64; 20], 16, 5);
    }

    #[test]
    fn beams_sharing_prompt_blocks_are_attended_together_with_identical_results() {
        // Four beams: the same three prompt blocks (the same memory), then blocks of
        // their own; one new token each. Reading the shared blocks once for all beams
        // must give bit for bit what attending each beam alone gives, and the definition.
        for (heads, avx512) in [
            (
                Heads {
                    query: 14,
                    key_value: 2,
                    dim: 64,
                },
                true,
            ),
            (
                Heads {
                    query: 14,
                    key_value: 2,
                    dim: 64,
                },
                false,
            ),
            (
                Heads {
                    query: 4,
                    key_value: 1,
                    dim: 128,
                },
                true,
            ),
            (
                Heads {
                    query: 6,
                    key_value: 2,
                    dim: 24,
                },
                false,
            ),
        ] {
            if avx512 && !has_avx512() {
                continue;
            }
            let mut rng = StdRng::seed_from_u64(heads.dim as u64);
            let mut rand = |len: usize| (0..len).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<f32>>();
            let block = |rand: &mut dyn FnMut(usize) -> Vec<f32>, len: usize| {
                let n = heads.key_value * len * heads.dim;
                (rand(n), rand(n), len)
            };
            let prompt: Vec<_> = [64, 64, 40].iter().map(|&len| block(&mut rand, len)).collect();
            let own: Vec<Vec<_>> = (0..4)
                .map(|b| (0..=b % 2).map(|i| block(&mut rand, 3 + 5 * i)).collect())
                .collect();
            let queries: Vec<Vec<f32>> = (0..4).map(|_| rand(heads.query * heads.dim)).collect();
            let scale = 1.0 / (heads.dim as f32).sqrt();
            let run = |share: bool| {
                let mut outs: Vec<Vec<f32>> = queries.iter().map(|q| vec![f32::NAN; q.len()]).collect();
                let mut seqs: Vec<SequenceAttention<'_>> = outs
                    .iter_mut()
                    .zip(&queries)
                    .zip(&own)
                    .map(|((out, q), own)| SequenceAttention {
                        queries: q,
                        spans: prompt
                            .iter()
                            .chain(own)
                            .map(|(k, v, len)| KvSpan {
                                keys: k,
                                values: v,
                                len: *len,
                            })
                            .collect(),
                        out,
                    })
                    .collect();
                if share {
                    assert_eq!(shared_spans(&seqs, heads.query * heads.dim), 3);
                }
                attend_with(heads, scale, None, &mut seqs, avx512, share).unwrap();
                outs
            };
            let (together, apart) = (run(true), run(false));
            for (b, (t, a)) in together.iter().zip(&apart).enumerate() {
                let same = t.iter().zip(a).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{heads:?} avx512={avx512} beam {b}");
                // Against the definition, over the beam's blocks concatenated per head.
                let blocks: Vec<_> = prompt.iter().chain(&own[b]).collect();
                let total: usize = blocks.iter().map(|(_, _, len)| len).sum();
                let concat = |part: usize| {
                    let mut m = Vec::new();
                    for h in 0..heads.key_value {
                        for (k, v, len) in &blocks {
                            let src = if part == 0 { k } else { v };
                            m.extend_from_slice(&src[h * len * heads.dim..][..len * heads.dim]);
                        }
                    }
                    m
                };
                let want = reference(heads, scale as f64, &queries[b], &concat(0), &concat(1), total);
                for (&got, &want) in t.iter().zip(&want) {
                    assert!((got as f64 - want).abs() < 2e-5, "{heads:?} beam {b}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn sequences_of_a_batch_are_independent() {
        let heads = Heads {
            query: 2,
            key_value: 1,
            dim: 16,
        };
        let k1: Vec<f32> = (0..16 * 3).map(|i| (i % 7) as f32 * 0.1).collect();
        let k2: Vec<f32> = (0..16 * 2).map(|i| (i % 5) as f32 * -0.2).collect();
        let q: Vec<f32> = (0..32).map(|i| (i % 3) as f32).collect();
        let solo = |k: &[f32], len: usize| {
            let mut out = vec![0f32; 32];
            attend(
                heads,
                0.25,
                None,
                &mut [SequenceAttention {
                    queries: &q,
                    spans: vec![KvSpan {
                        keys: k,
                        values: k,
                        len,
                    }],
                    out: &mut out,
                }],
            )
            .unwrap();
            out
        };
        let (want1, want2) = (solo(&k1, 3), solo(&k2, 2));
        let (mut out1, mut out2) = (vec![0f32; 32], vec![0f32; 32]);
        attend(
            heads,
            0.25,
            None,
            &mut [
                SequenceAttention {
                    queries: &q,
                    spans: vec![KvSpan {
                        keys: &k1,
                        values: &k1,
                        len: 3,
                    }],
                    out: &mut out1,
                },
                SequenceAttention {
                    queries: &q,
                    spans: vec![KvSpan {
                        keys: &k2,
                        values: &k2,
                        len: 2,
                    }],
                    out: &mut out2,
                },
            ],
        )
        .unwrap();
        assert_eq!(out1, want1);
        assert_eq!(out2, want2);
    }

    /// One sequence of `queries` zeros over one span of `len` positions whose keys and
    /// values are `kv`.
    fn attend_zeros(heads: Heads, queries: usize, kv: &[f32], len: usize) -> Result<()> {
        let q = vec![0f32; queries];
        let mut out = vec![0f32; queries];
        let spans = if len == 0 {
            vec![]
        } else {
            vec![KvSpan {
                keys: kv,
                values: kv,
                len,
            }]
        };
        attend(
            heads,
            1.0,
            None,
            &mut [SequenceAttention {
                queries: &q,
                spans,
                out: &mut out,
            }],
        )
    }

    #[test]
    fn inconsistent_shapes_are_errors() {
        let uneven = Heads {
            query: 3,
            key_value: 2,
            dim: 4,
        };
        assert!(matches!(
            attend_zeros(uneven, 12, &[], 0),
            Err(Error::AttentionShape(_))
        ));
        let heads = Heads {
            query: 4,
            key_value: 2,
            dim: 4,
        };
        let err = attend_zeros(heads, 16, &[0.0; 7], 1).unwrap_err();
        assert!(err.to_string().contains("expected 8"), "{err}");
        let err = attend_zeros(heads, 32, &[0.0; 8], 1).unwrap_err();
        assert!(err.to_string().contains("2 new tokens but only 1"), "{err}");
    }
}
