//! Dense f32 weights packed once, at load, into the panel layout a GEMM microkernel reads,
//! and the product of a few to a few thousand activation rows with them.
//!
//! The `gemm` crate packs the weight matrix into panels on every call. For the 50 tokens of
//! one CLIP image, or the 5 beams of a Whisper decode step, that packing (a full read and
//! write of the weights) took as long as the multiply-adds themselves. Here the weights are
//! stored as panels of [`PANEL`] output columns, each panel `k` rows of 16 contiguous
//! floats, so a microkernel streams them in order with no per-call copy. Weights of f16
//! checkpoints can stay f16 in the panels: the microkernel widens them (exactly), which
//! halves the bytes a memory-bound decode step reads.
//!
//! Work: tiles of up to [`TILE_ROWS`] activation rows × [`BLOCK_PANELS`] panels (64 output
//! columns), whose 24 accumulators stay in AVX-512 registers while `k` runs; rayon tasks
//! over (row chunk, column block) pairs write disjoint rectangles of the output. A portable
//! path (same loop order, plain arrays) serves CPUs without AVX-512 and the tests.

use half::f16;
use rayon::prelude::*;

use crate::buffer::{Plain, WeightBuffer};
use crate::dense::{Epilogue, WeightLayout, apply};
use crate::{Error, Result};

/// Output columns in one panel: one AVX-512 vector of f32.
pub const PANEL: usize = 16;
/// Panels a tile covers (their accumulators: `TILE_ROWS × BLOCK_PANELS` vectors).
const BLOCK_PANELS: usize = 4;
/// Activation rows a tile covers.
const TILE_ROWS: usize = 6;
/// Activation rows a task covers: its slice of `x` (48 × k floats) stays in L2 next to the
/// column block's panels while the task's tiles run.
const TASK_ROWS: usize = 8 * TILE_ROWS;

/// An `[n, k]` weight matrix (n outputs, k inputs) as panels of [`PANEL`] outputs; the last
/// panel is padded with zero columns.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    data: Panels,
}

/// The panels' values: f32, or f16 for checkpoints stored in f16, widened to f32 in the
/// microkernel (exactly: every f16 is an f32), which halves the bytes a product reads.
#[derive(Clone, Debug)]
enum Panels {
    F32(WeightBuffer<f32>),
    F16(WeightBuffer<f16>),
}

impl Panels {
    fn get(&self, i: usize) -> f32 {
        match self {
            Panels::F32(v) => v[i],
            Panels::F16(v) => v[i].to_f32(),
        }
    }

    fn range(&self, start: usize, end: usize) -> PanelSlice<'_> {
        match self {
            Panels::F32(v) => PanelSlice::F32(&v[start..end]),
            Panels::F16(v) => PanelSlice::F16(&v[start..end]),
        }
    }
}

#[derive(Clone, Copy)]
enum PanelSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl PackedWeight {
    /// Packs `w`, stored as `layout` says.
    pub fn pack(w: &[f32], n: usize, k: usize, layout: WeightLayout) -> Result<Self> {
        Ok(PackedWeight {
            n,
            k,
            data: Panels::F32(pack_values(w, n, k, layout)?),
        })
    }

    /// Packs f16 weights, kept in f16 (products still compute in f32).
    pub fn pack_f16(w: &[f16], n: usize, k: usize, layout: WeightLayout) -> Result<Self> {
        Ok(PackedWeight {
            n,
            k,
            data: Panels::F16(pack_values(w, n, k, layout)?),
        })
    }

    /// Whether the values are kept in f16.
    pub fn is_f16(&self) -> bool {
        matches!(self.data, Panels::F16(_))
    }

    /// Outputs.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The matrix back as `[n, k]` row-major.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0.0f32; n * k];
        for (j, row) in w.chunks_mut(k.max(1)).enumerate().take(n) {
            let panel = (j / PANEL) * k * PANEL;
            for (kk, v) in row.iter_mut().enumerate() {
                *v = self.data.get(panel + kk * PANEL + j % PANEL);
            }
        }
        w
    }

    /// Row `j` of the `[n, k]` matrix (the weights of output `j`; for a tied embedding,
    /// token `j`'s vector), or `None` past the end.
    pub fn row(&self, j: usize) -> Option<Vec<f32>> {
        if j >= self.n {
            return None;
        }
        let panel = (j / PANEL) * self.k * PANEL;
        Some(
            (0..self.k)
                .map(|kk| self.data.get(panel + kk * PANEL + j % PANEL))
                .collect(),
        )
    }

    fn panel_count(&self) -> usize {
        self.n.div_ceil(PANEL)
    }
}

/// `w` (`[n, k]` as `layout` says) as panels of [`PANEL`] outputs, zero-padded.
fn pack_values<T: Plain>(w: &[T], n: usize, k: usize, layout: WeightLayout) -> Result<WeightBuffer<T>> {
    let expected = n.checked_mul(k).ok_or(Error::Overflow { rows: 0, n, k })?;
    if w.len() != expected {
        return Err(Error::DenseWeightSize {
            n,
            k,
            expected,
            actual: w.len(),
        });
    }
    let panels = n.div_ceil(PANEL);
    let mut data = WeightBuffer::<T>::zeroed(panels * k * PANEL);
    data.par_chunks_mut((k * PANEL).max(1))
        .enumerate()
        .for_each(|(p, panel)| {
            for c in 0..PANEL.min(n - p * PANEL) {
                let j = p * PANEL + c;
                for kk in 0..k {
                    panel[kk * PANEL + c] = match layout {
                        WeightLayout::OutIn => w[j * k + kk],
                        WeightLayout::InOut => w[kk * n + j],
                    };
                }
            }
        });
    Ok(data)
}

/// `epilogue(x · wᵀ + bias)` for `x`: `[rows, k]` row-major; returns `[rows, n]`.
pub fn linear_packed(
    x: &[f32],
    rows: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Result<Vec<f32>> {
    let (n, k) = (w.n, w.k);
    let x_len = rows.checked_mul(k).ok_or(Error::Overflow { rows, n, k })?;
    let out_len = rows.checked_mul(n).ok_or(Error::Overflow { rows, n, k })?;
    if x.len() != x_len {
        return Err(Error::InputSize {
            rows,
            k,
            expected: x_len,
            actual: x.len(),
        });
    }
    if let Some(b) = bias
        && b.len() != n
    {
        return Err(Error::OutputSize {
            rows: 1,
            n,
            expected: n,
            actual: b.len(),
        });
    }
    let mut out = match bias {
        Some(b) if n > 0 => {
            let mut out = Vec::with_capacity(out_len);
            for _ in 0..rows {
                out.extend_from_slice(b);
            }
            out
        }
        _ => vec![0.0; out_len],
    };
    if out_len == 0 || k == 0 {
        apply(&mut out, epilogue);
        return Ok(out);
    }
    let blocks = w.panel_count().div_ceil(BLOCK_PANELS);
    let row_chunks = rows.div_ceil(TASK_ROWS);
    let dst = OutPtr(out.as_mut_ptr());
    let avx512 = has_avx512();
    (0..row_chunks * blocks).into_par_iter().for_each(|task| {
        let (chunk, block) = (task / blocks, task % blocks);
        let row0 = chunk * TASK_ROWS;
        let chunk_rows = TASK_ROWS.min(rows - row0);
        let panel0 = block * BLOCK_PANELS;
        let panels = BLOCK_PANELS.min(w.panel_count() - panel0);
        let col0 = panel0 * PANEL;
        let cols = (panels * PANEL).min(n - col0);
        let mut r = 0;
        while r < chunk_rows {
            let tile_rows = TILE_ROWS.min(chunk_rows - r);
            let tile = Tile {
                x: &x[(row0 + r) * k..(row0 + r + tile_rows) * k],
                k,
                panels: w.data.range(panel0 * k * PANEL, (panel0 + panels) * k * PANEL),
                // SAFETY: tasks cover disjoint (row, column) rectangles of `out`, which
                // outlives the parallel loop; this one writes rows `row0 + r ..` and
                // columns `col0 .. col0 + cols` only.
                out: unsafe { dst.at((row0 + r) * n + col0) },
                out_stride: n,
                cols,
            };
            run_tile(&tile, tile_rows, panels, avx512);
            r += tile_rows;
        }
    });
    apply(&mut out, epilogue);
    Ok(out)
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: used only to hand disjoint output rectangles to rayon tasks (see above).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `offset` is inside the output buffer.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's.
        unsafe { self.0.add(offset) }
    }
}

/// One tile's operands: `rows` activation rows of `x`, the panels of one column block, and
/// where the `rows × cols` results are added.
struct Tile<'a> {
    x: &'a [f32],
    k: usize,
    panels: PanelSlice<'a>,
    out: *mut f32,
    out_stride: usize,
    cols: usize,
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`linear_packed`] runs its AVX-512 microkernel on this CPU (it is correct
/// everywhere, and fast where this is true).
pub fn is_accelerated() -> bool {
    has_avx512()
}

fn run_tile(t: &Tile, rows: usize, panels: usize, avx512: bool) {
    let f16 = matches!(t.panels, PanelSlice::F16(_));
    macro_rules! dispatch {
        ($f:ident, $($r:literal)*) => {
            match (rows, panels, f16) {
                $(
                    ($r, 1, false) => $f::<$r, 1, false>(t), ($r, 2, false) => $f::<$r, 2, false>(t),
                    ($r, 3, false) => $f::<$r, 3, false>(t), ($r, 4, false) => $f::<$r, 4, false>(t),
                    ($r, 1, true) => $f::<$r, 1, true>(t), ($r, 2, true) => $f::<$r, 2, true>(t),
                    ($r, 3, true) => $f::<$r, 3, true>(t), ($r, 4, true) => $f::<$r, 4, true>(t),
                )*
                _ => unreachable!("tile of {rows} rows and {panels} panels"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: AVX-512F was detected; the tile's slices hold `rows` rows of `k` values
        // and `panels` panels of `k * PANEL` values, and `out` has room for `rows` rows of
        // `out_stride` with `cols` columns from its start (see `linear_packed`).
        unsafe { dispatch!(tile_avx512, 1 2 3 4 5 6) };
        return;
    }
    let _ = avx512;
    dispatch!(tile_portable, 1 2 3 4 5 6)
}

/// The same arithmetic as [`tile_avx512`] in plain Rust (the reference the tests hold the
/// AVX-512 path to).
fn tile_portable<const R: usize, const P: usize, const F16: bool>(t: &Tile) {
    let k = t.k;
    let mut acc = [[[0f32; PANEL]; P]; R];
    let mut w = [[0f32; PANEL]; P];
    for kk in 0..k {
        for (p, wp) in w.iter_mut().enumerate() {
            let at = p * k * PANEL + kk * PANEL;
            match t.panels {
                PanelSlice::F32(v) => wp.copy_from_slice(&v[at..at + PANEL]),
                PanelSlice::F16(v) => {
                    for (d, s) in wp.iter_mut().zip(&v[at..at + PANEL]) {
                        *d = s.to_f32();
                    }
                }
            }
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xv = t.x[r * k + kk];
            for (p, acc_rp) in acc_r.iter_mut().enumerate() {
                for c in 0..PANEL {
                    acc_rp[c] = xv.mul_add(w[p][c], acc_rp[c]);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (p, acc_rp) in acc_r.iter().enumerate() {
            for (c, v) in acc_rp.iter().enumerate() {
                let col = p * PANEL + c;
                if col < t.cols {
                    // SAFETY: inside the tile's rectangle (see `Tile`).
                    unsafe { *t.out.add(r * t.out_stride + col) += v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const P: usize, const F16: bool>(t: &Tile) {
    use std::arch::x86_64::*;
    let k = t.k;
    let x = t.x.as_ptr();
    let (p32, p16) = match t.panels {
        PanelSlice::F32(v) => (v.as_ptr(), std::ptr::null()),
        PanelSlice::F16(v) => (std::ptr::null(), v.as_ptr()),
    };
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for kk in 0..k {
        let mut w = [_mm512_setzero_ps(); P];
        for (p, wp) in w.iter_mut().enumerate() {
            let at = p * k * PANEL + kk * PANEL;
            // SAFETY: panel `p` holds `k * PANEL` values of the type `F16` says (caller).
            *wp = unsafe {
                if F16 {
                    _mm512_cvtph_ps(_mm256_loadu_si256(p16.add(at) as *const __m256i))
                } else {
                    _mm512_loadu_ps(p32.add(at))
                }
            };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: row `r` of the tile holds `k` values (caller).
            let xv = _mm512_set1_ps(unsafe { *x.add(r * k + kk) });
            for (p, acc_rp) in acc_r.iter_mut().enumerate() {
                *acc_rp = _mm512_fmadd_ps(xv, w[p], *acc_rp);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (p, acc_rp) in acc_r.iter().enumerate() {
            let col = p * PANEL;
            if col >= t.cols {
                break;
            }
            let valid = (t.cols - col).min(PANEL);
            let mask: __mmask16 = if valid == PANEL { 0xffff } else { (1u16 << valid) - 1 };
            // SAFETY: the masked lanes lie inside the tile's rectangle (caller).
            unsafe {
                let dst = t.out.add(r * t.out_stride + col);
                let prev = _mm512_maskz_loadu_ps(mask, dst);
                _mm512_mask_storeu_ps(dst, mask, _mm512_add_ps(prev, *acc_rp));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0.0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut acc = bias.map_or(0.0, |b| b[j] as f64);
                for i in 0..k {
                    acc += x[r * k + i] as f64 * w[j * k + i] as f64;
                }
                out[r * n + j] = acc as f32;
            }
        }
        out
    }

    #[test]
    fn pack_and_unpack_round_trip_in_both_layouts() {
        let (n, k) = (37, 11);
        let w = values(n * k, 1);
        let w_t: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        assert_eq!(PackedWeight::pack(&w, n, k, WeightLayout::OutIn).unwrap().unpack(), w);
        let packed = PackedWeight::pack(&w_t, n, k, WeightLayout::InOut).unwrap();
        assert_eq!(packed.unpack(), w);
        for j in [0, 15, 16, 36] {
            assert_eq!(packed.row(j).unwrap(), &w[j * k..(j + 1) * k]);
        }
        assert_eq!(packed.row(37), None);
    }

    /// Every tile shape (1-6 rows, 1-4 panels, a partial last panel), row counts across
    /// task boundaries, with and without bias, on this CPU's path and the portable one.
    #[test]
    fn products_match_a_float64_reference() {
        for (rows, k, n) in [
            (1, 1, 1),
            (1, 384, 1536),
            (5, 64, 70),
            (6, 33, 64),
            (7, 16, 17),
            (50, 96, 200),
            (97, 40, 130),
        ] {
            let x = values(rows * k, 2);
            let w = values(n * k, 3);
            let b = values(n, 4);
            let packed = PackedWeight::pack(&w, n, k, WeightLayout::OutIn).unwrap();
            for bias in [None, Some(b.as_slice())] {
                let want = reference(&x, rows, k, &w, n, bias);
                let got = linear_packed(&x, rows, &packed, bias, Epilogue::None).unwrap();
                for (g, e) in got.iter().zip(&want) {
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "[{rows},{k}]x[{n},{k}]: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_portable_tile_agrees_with_this_cpus() {
        let (rows, k, n) = (6, 75, 61);
        let x = values(rows * k, 5);
        let w = PackedWeight::pack(&values(n * k, 6), n, k, WeightLayout::OutIn).unwrap();
        let run = |avx512: bool| {
            let mut out = vec![0.5f32; rows * n];
            let tile = Tile {
                x: &x,
                k,
                panels: w.data.range(0, 4 * k * PANEL),
                out: out.as_mut_ptr(),
                out_stride: n,
                cols: n,
            };
            run_tile(&tile, rows, 4, avx512);
            out
        };
        let portable = run(false);
        let native = run(has_avx512());
        for (a, b) in portable.iter().zip(&native) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    /// f16 panels give exactly the f32 result of the widened weights (the widening is
    /// exact and the arithmetic the same), on this CPU's path and the portable one.
    #[test]
    fn f16_panels_equal_f32_panels_of_the_same_values() {
        let (rows, k, n) = (7, 48, 75);
        let x = values(rows * k, 7);
        let w16: Vec<f16> = values(n * k, 8).into_iter().map(f16::from_f32).collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let (p16, p32) = (
            PackedWeight::pack_f16(&w16, n, k, WeightLayout::OutIn).unwrap(),
            PackedWeight::pack(&w32, n, k, WeightLayout::OutIn).unwrap(),
        );
        assert!(p16.is_f16() && !p32.is_f16());
        assert_eq!(p16.unpack(), w32);
        assert_eq!(p16.row(74).unwrap(), &w32[74 * k..]);
        let b = values(n, 9);
        assert_eq!(
            linear_packed(&x, rows, &p16, Some(&b), Epilogue::GeluErf).unwrap(),
            linear_packed(&x, rows, &p32, Some(&b), Epilogue::GeluErf).unwrap()
        );
        let run = |w: &PackedWeight, avx512: bool| {
            let mut out = vec![0.0f32; 6 * n];
            let tile = Tile {
                x: &x,
                k,
                panels: w.data.range(0, 4 * k * PANEL),
                out: out.as_mut_ptr(),
                out_stride: n,
                cols: 64,
            };
            run_tile(&tile, 6, 4, avx512);
            out
        };
        for (a, b) in run(&p16, false).iter().zip(&run(&p16, has_avx512())) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(matches!(
            PackedWeight::pack(&[0.0; 5], 2, 3, WeightLayout::OutIn),
            Err(Error::DenseWeightSize { .. })
        ));
        let w = PackedWeight::pack(&[0.0; 6], 2, 3, WeightLayout::OutIn).unwrap();
        assert!(matches!(
            linear_packed(&[0.0; 5], 2, &w, None, Epilogue::None),
            Err(Error::InputSize { .. })
        ));
        assert!(matches!(
            linear_packed(&[0.0; 6], 2, &w, Some(&[0.0]), Epilogue::None),
            Err(Error::OutputSize { .. })
        ));
        assert_eq!(
            linear_packed(&[], 0, &w, None, Epilogue::None).unwrap(),
            Vec::<f32>::new()
        );
    }
}
