//! The portable implementation: plain loops over the interleaved layout, computing exactly
//! what the SIMD kernels compute (same integer sums, same fused multiply-adds in the same
//! order), so that tests can require the two to agree bit for bit.

use crate::QuantType;
use crate::activation::{ActRow, Activations};
use crate::decode::DecodedRow;
use crate::layout::{LANES, Layout, VECTOR};
use crate::repack::unpack_row;

/// Computes the output columns of one task: `weight` holds its repacked rows, `outs[r]`
/// the matching slice of output row `r`.
pub(crate) fn run(
    ty: QuantType,
    layout: &Layout,
    weight: &[u8],
    row_bytes: usize,
    act: &Activations,
    outs: &mut [&mut [f32]],
) {
    let mut decoded = DecodedRow::new(ty, layout);
    for (j, w) in weight.chunks_exact(row_bytes.max(1)).enumerate() {
        unpack_row(ty, layout, w, &mut decoded);
        for (r, out) in outs.iter_mut().enumerate() {
            out[j] = dot(&decoded, act.row(r));
        }
    }
    if row_bytes == 0 {
        // k = 0: empty sums.
        outs.iter_mut().for_each(|out| out.fill(0.0));
    }
}

/// Dot product of a decoded weight row with an activation row.
pub(crate) fn dot(w: &DecodedRow, a: ActRow<'_>) -> f32 {
    let wide = a.wide.iter().map(|x| (x.q.as_flattened(), &x.corr, &x.d, &x.min));
    let narrow = a.narrow.iter().map(|x| (x.q.as_flattened(), &x.corr, &x.d, &x.min));
    let mut acc = [0f32; LANES];
    let mut start = 0;
    for (g, (aq, corr, d, amin)) in wide.chain(narrow).enumerate() {
        let wq = &w.q[start..start + aq.len()];
        let mut sums = [0i32; LANES];
        for (wv, av) in wq.chunks_exact(VECTOR).zip(aq.chunks_exact(VECTOR)) {
            for (i, sum) in sums.iter_mut().enumerate() {
                for t in 4 * i..4 * i + 4 {
                    *sum += wv[t] as i32 * av[t] as i32;
                }
            }
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let lane = g * LANES + i;
            let s = (sums[i] - corr[i]) as f32;
            *acc = s.mul_add(w.scale[lane] * d[i], *acc);
            if !w.min.is_empty() {
                *acc = w.min[lane].mul_add(amin[i], *acc);
            }
        }
        start += aq.len();
    }
    hsum(acc)
}

/// The reduction order of the AVX horizontal sum (halves, then quarters, then pairs).
pub(crate) fn hsum(a: [f32; LANES]) -> f32 {
    let q = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}
