//! Pillow-compatible image resizing (`Image.resize` on 8-bit images), bit for bit.
//!
//! CLIP was trained on images resized by Pillow, and every reference pipeline (openai/CLIP,
//! open_clip, transformers' `CLIPImageProcessor`) still resizes with it; bilinear or
//! non-antialiased bicubic resizes (candle's example, clip.cpp) give visibly different
//! inputs and embeddings. This is Pillow's algorithm (`src/libImaging/Resample.c`):
//!
//! - separable: a horizontal pass into an 8-bit intermediate image (only over the rows the
//!   vertical pass will read), then a vertical pass;
//! - the filter's support is scaled by the downscale factor, so downscaling averages every
//!   source pixel (antialiasing); upscaling interpolates;
//! - per output pixel, weights are computed in `f64` and normalised to sum to one, then
//!   turned into fixed point with 22 fractional bits; sums start at one half and are
//!   shifted and clamped to 0..=255, so each pass rounds to 8 bits as Pillow does.
//!
//! Bicubic uses Keys' kernel with a = -0.5. Box, bilinear, Hamming and Lanczos are here too,
//! because `preprocessor_config.json` may name them (Pillow's codes 4, 2, 5, 1).

use crate::{Error, Result};

/// Fixed-point fraction bits of Pillow's 8-bit resampling (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// A resampling filter, as Pillow names and numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// From Pillow's `Image.Resampling` value (as stored in `preprocessor_config.json`).
    /// Nearest (0) is not a convolution in Pillow and is not supported.
    pub fn from_pil(code: i64) -> Result<Self> {
        Ok(match code {
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            other => {
                return Err(Error::InvalidInput(format!(
                    "resample {other}: only Pillow's convolution filters are supported (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"
                )));
            }
        })
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernel, with Pillow's exact floating-point operations.
    fn eval(self, x: f64) -> f64 {
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow writes the constants as C floats.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// Fixed-point weights of one pass: for output pixel `i`, source pixels
/// `start[i]..start[i] + len[i]` weighted by `weights[i * ksize..][..len[i]]`.
#[derive(Debug)]
struct Coefficients {
    ksize: usize,
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `in0..in1` of a
/// dimension of `in_size` pixels resampled to `out_size`, for the outputs in `outputs`
/// only (each output's weights depend on nothing but its own position).
fn coefficients(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    outputs: std::ops::Range<usize>,
    filter: Filter,
) -> Coefficients {
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let n_out = outputs.len();
    let mut start = Vec::with_capacity(n_out);
    let mut len = Vec::with_capacity(n_out);
    let mut weights = vec![0i32; n_out * ksize];
    let mut k = vec![0f64; ksize];
    for (slot, xx) in outputs.enumerate() {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) conversion truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[slot * ksize..slot * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *dst = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        start.push(xmin);
        len.push(n);
    }
    Coefficients {
        ksize,
        start,
        len,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an interleaved 8-bit image with `C` channels from `width × height` to
/// `new_width × new_height`, exactly as Pillow's `Image.resize(size, filter)` does.
pub fn resize<const C: usize>(
    pixels: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
    filter: Filter,
) -> Vec<u8> {
    resize_region::<C>(
        pixels,
        width,
        height,
        new_width,
        new_height,
        0..new_width,
        0..new_height,
        filter,
    )
}

/// The pixels `xs × ys` of [`resize`]'s output, computed without the rest: a centre crop
/// of a resize costs only what it keeps, and an extreme aspect ratio cannot make the
/// full resized image huge.
#[allow(clippy::too_many_arguments)]
pub fn resize_region<const C: usize>(
    pixels: &[u8],
    width: usize,
    height: usize,
    new_width: usize,
    new_height: usize,
    xs: std::ops::Range<usize>,
    ys: std::ops::Range<usize>,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(pixels.len(), width * height * C, "pixel buffer does not match its size");
    assert!(new_width > 0 && new_height > 0, "resize to an empty image");
    assert!(
        xs.start < xs.end && xs.end <= new_width && ys.start < ys.end && ys.end <= new_height,
        "region outside the resized image"
    );
    let need_h = new_width != width;
    let need_v = new_height != height;
    let (out_w, out_h) = (xs.len(), ys.len());
    // Rows of the source the vertical pass reads, and its weights.
    let vert = need_v.then(|| coefficients(height, 0.0, height as f32, new_height, ys.clone(), filter));
    let (first_row, last_row) = match &vert {
        Some(v) => (v.start[0], v.start[out_h - 1] + v.len[out_h - 1]),
        None => (ys.start, ys.end),
    };

    // Horizontal pass over the rows read, for the columns kept (or those columns copied).
    let rows = last_row - first_row;
    let mut temp = vec![0u8; rows * out_w * C];
    if need_h {
        let horiz = coefficients(width, 0.0, width as f32, new_width, xs.clone(), filter);
        for (y, out_row) in temp.chunks_exact_mut(out_w * C).enumerate() {
            let src_row = &pixels[(y + first_row) * width * C..(y + first_row + 1) * width * C];
            for (xx, out_px) in out_row.chunks_exact_mut(C).enumerate() {
                let ks = &horiz.weights[xx * horiz.ksize..xx * horiz.ksize + horiz.len[xx]];
                let src = &src_row[horiz.start[xx] * C..];
                let mut ss = [1i32 << (PRECISION_BITS - 1); C];
                for (x, &k) in ks.iter().enumerate() {
                    let px = &src[x * C..x * C + C];
                    for c in 0..C {
                        ss[c] = ss[c].wrapping_add(i32::from(px[c]).wrapping_mul(k));
                    }
                }
                for c in 0..C {
                    out_px[c] = clip8(ss[c]);
                }
            }
        }
    } else {
        for (y, out_row) in temp.chunks_exact_mut(out_w * C).enumerate() {
            let src_row = &pixels[(y + first_row) * width * C..(y + first_row + 1) * width * C];
            out_row.copy_from_slice(&src_row[xs.start * C..xs.end * C]);
        }
    }
    let Some(vert) = vert else {
        return temp;
    };

    let row_len = out_w * C;
    let mut out = vec![0u8; out_h * row_len];
    let mut ss = vec![0i32; row_len];
    for (yy, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let ks = &vert.weights[yy * vert.ksize..yy * vert.ksize + vert.len[yy]];
        let ymin = vert.start[yy] - first_row;
        ss.fill(1i32 << (PRECISION_BITS - 1));
        // Row-major accumulation: the same sums as Pillow's column loop, in an order the
        // compiler vectorises.
        for (y, &k) in ks.iter().enumerate() {
            let src = &temp[(ymin + y) * row_len..(ymin + y + 1) * row_len];
            for (s, &p) in ss.iter_mut().zip(src) {
                *s = s.wrapping_add(i32::from(p).wrapping_mul(k));
            }
        }
        for (o, &s) in out_row.iter_mut().zip(&ss) {
            *o = clip8(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let px: Vec<u8> = (0..2 * 3 * 3).map(|v| v as u8).collect();
        assert_eq!(resize::<3>(&px, 2, 3, 2, 3, Filter::Bicubic), px);
    }

    #[test]
    fn constant_image_stays_constant() {
        let px = vec![200u8; 17 * 9 * 3];
        for filter in [
            Filter::Box,
            Filter::Bilinear,
            Filter::Hamming,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            for (w, h) in [(5, 4), (40, 30), (17, 3), (1, 1)] {
                let out = resize::<3>(&px, 17, 9, w, h, filter);
                assert!(out.iter().all(|&v| v == 200), "{filter:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (inp, out) in [(655usize, 326usize), (100, 224), (4000, 224), (3, 7)] {
            let c = coefficients(inp, 0.0, inp as f32, out, 0..out, Filter::Bicubic);
            for i in 0..out {
                let sum: i64 = c.weights[i * c.ksize..i * c.ksize + c.len[i]]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= c.len[i] as i64,
                    "{inp}->{out} #{i}: {sum}"
                );
            }
        }
    }

    #[test]
    fn bicubic_kernel_values() {
        assert_eq!(Filter::Bicubic.eval(0.0), 1.0);
        assert_eq!(Filter::Bicubic.eval(1.0), 0.0);
        assert_eq!(Filter::Bicubic.eval(0.5), 0.5625);
        assert_eq!(Filter::Bicubic.eval(1.5), -0.0625);
        assert_eq!(Filter::Bicubic.eval(-1.5), -0.0625);
        assert_eq!(Filter::Bicubic.eval(2.0), 0.0);
    }

    #[test]
    fn regions_equal_crops_of_the_full_resize() {
        let (w, h) = (37usize, 23usize);
        let px: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 251) as u8).collect();
        for (nw, nh) in [(11, 9), (80, 50), (37, 40), (20, 23)] {
            let full = resize::<3>(&px, w, h, nw, nh, Filter::Bicubic);
            for (xs, ys) in [(0..nw, 0..nh), (2..nw - 1, 1..nh / 2), (nw / 2..nw / 2 + 1, nh - 1..nh)] {
                let region = resize_region::<3>(&px, w, h, nw, nh, xs.clone(), ys.clone(), Filter::Bicubic);
                let want: Vec<u8> = ys
                    .clone()
                    .flat_map(|y| full[(y * nw + xs.start) * 3..(y * nw + xs.end) * 3].to_vec())
                    .collect();
                assert_eq!(region, want, "{nw}x{nh} {xs:?} {ys:?}");
            }
        }
    }

    #[test]
    fn pil_codes() {
        assert_eq!(Filter::from_pil(3).unwrap(), Filter::Bicubic);
        assert!(Filter::from_pil(0).is_err());
        assert!(Filter::from_pil(9).is_err());
    }
}
