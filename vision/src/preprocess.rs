//! CLIP image preprocessing exactly as transformers' `CLIPImageProcessor` (Pillow backend)
//! does it, which is also what openai/CLIP's torchvision pipeline gives:
//!
//! 1. resize so the shorter side is `size.shortest_edge`, the longer side
//!    `int(shortest * long / short)` (truncated), with Pillow's bicubic (see [`resample`]);
//! 2. centre crop to `crop_size`, the top-left corner at `(h - crop_h) // 2`,
//!    `(w - crop_w) // 2`, zero-padding a smaller image as transformers does;
//! 3. scale to `[0, 1]` by `rescale_factor` (in f64, rounded to f32), then
//!    `(x - mean) / std` per channel in f32.
//!
//! Every setting comes from the checkpoint's `preprocessor_config.json` (both the classic
//! `CLIPFeatureExtractor` layout with integer sizes and the current one with dicts); a
//! missing file means the OpenAI CLIP defaults.
//!
//! [`resample`]: crate::resample

use std::path::Path;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;

use crate::resample::{Filter, resize, resize_region};
use crate::{Error, Result};

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD`).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// How the first step resizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Shorter side to this many pixels, aspect ratio kept.
    ShortestEdge(u32),
    /// Exactly this size, aspect ratio ignored.
    Exact { height: u32, width: u32 },
}

/// The preprocessing a CLIP checkpoint expects.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipPreprocessor {
    pub resize: Option<Resize>,
    pub filter: Filter,
    /// `(height, width)` of the centre crop.
    pub crop: Option<(u32, u32)>,
    pub rescale: Option<f64>,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub normalize: bool,
}

impl Default for ClipPreprocessor {
    /// OpenAI CLIP at 224 pixels.
    fn default() -> Self {
        ClipPreprocessor::openai(224)
    }
}

impl ClipPreprocessor {
    /// OpenAI CLIP's preprocessing for a model of `image_size` pixels.
    pub fn openai(image_size: u32) -> Self {
        ClipPreprocessor {
            resize: Some(Resize::ShortestEdge(image_size)),
            filter: Filter::Bicubic,
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
            normalize: true,
        }
    }

    /// Reads `preprocessor_config.json`; `image_size` (the vision config's) fills in sizes
    /// the file leaves out.
    pub fn from_file(path: &Path, image_size: u32) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        Self::from_json(&json, image_size).map_err(|msg| Error::format(path, msg))
    }

    /// `preprocessor_config.json` in a checkpoint directory, or the OpenAI defaults.
    pub fn from_dir(dir: &Path, image_size: u32) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        if path.is_file() {
            Self::from_file(&path, image_size)
        } else {
            Ok(Self::openai(image_size))
        }
    }

    fn from_json(json: &Value, image_size: u32) -> std::result::Result<Self, String> {
        let mut p = Self::openai(image_size);
        let flag = |key: &str, default: bool| -> std::result::Result<bool, String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(format!("{key} is {other}, expected true or false")),
            }
        };
        let positive = |key: &str, v: &Value| -> std::result::Result<u32, String> {
            v.as_u64()
                .filter(|&n| n > 0 && n <= 16384)
                .map(|n| n as u32)
                .ok_or_else(|| format!("{key} is {v}, expected a size between 1 and 16384"))
        };
        if let Some(size) = json.get("size").filter(|v| !v.is_null()) {
            p.resize = Some(match size {
                Value::Number(_) => Resize::ShortestEdge(positive("size", size)?),
                Value::Object(m) => {
                    if let Some(s) = m.get("shortest_edge") {
                        Resize::ShortestEdge(positive("size.shortest_edge", s)?)
                    } else if let (Some(h), Some(w)) = (m.get("height"), m.get("width")) {
                        Resize::Exact {
                            height: positive("size.height", h)?,
                            width: positive("size.width", w)?,
                        }
                    } else {
                        return Err(format!(
                            "size {size} is not supported (expected shortest_edge or height and width)"
                        ));
                    }
                }
                other => return Err(format!("size is {other}, expected a number or an object")),
            });
        }
        if !flag("do_resize", true)? {
            p.resize = None;
        }
        if let Some(crop) = json.get("crop_size").filter(|v| !v.is_null()) {
            p.crop = Some(match crop {
                Value::Number(_) => {
                    let n = positive("crop_size", crop)?;
                    (n, n)
                }
                Value::Object(m) => match (m.get("height"), m.get("width")) {
                    (Some(h), Some(w)) => (positive("crop_size.height", h)?, positive("crop_size.width", w)?),
                    _ => return Err(format!("crop_size {crop} has no height and width")),
                },
                other => return Err(format!("crop_size is {other}, expected a number or an object")),
            });
        }
        if !flag("do_center_crop", true)? {
            p.crop = None;
        }
        if let Some(r) = json.get("resample").filter(|v| !v.is_null()) {
            let code = r
                .as_i64()
                .ok_or_else(|| format!("resample is {r}, expected a number"))?;
            p.filter = Filter::from_pil(code).map_err(|e| e.to_string())?;
        }
        if let Some(f) = json.get("rescale_factor").filter(|v| !v.is_null()) {
            p.rescale = Some(
                f.as_f64()
                    .ok_or_else(|| format!("rescale_factor is {f}, expected a number"))?,
            );
        }
        if !flag("do_rescale", true)? {
            p.rescale = None;
        }
        let triple = |key: &str, default: [f64; 3]| -> std::result::Result<[f64; 3], String> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => {
                    let v = n.as_f64().unwrap_or(f64::NAN);
                    Ok([v, v, v])
                }
                Some(Value::Array(a)) if a.len() == 3 && a.iter().all(Value::is_number) => {
                    Ok([0, 1, 2].map(|i| a[i].as_f64().unwrap_or(f64::NAN)))
                }
                Some(other) => Err(format!("{key} is {other}, expected three numbers")),
            }
        };
        p.mean = triple("image_mean", OPENAI_CLIP_MEAN)?;
        p.std = triple("image_std", OPENAI_CLIP_STD)?;
        if p.std.iter().any(|&s| s == 0.0 || !s.is_finite()) || p.mean.iter().any(|m| !m.is_finite()) {
            return Err(format!(
                "image_mean {:?} / image_std {:?} are not usable",
                p.mean, p.std
            ));
        }
        p.normalize = flag("do_normalize", true)?;
        Ok(p)
    }

    /// `(height, width)` of the output, when fixed by the config.
    pub fn output_size(&self) -> Option<(u32, u32)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Some(c),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            _ => None,
        }
    }

    /// The size transformers' `get_resize_output_image_size` computes (`(height, width)`).
    pub fn resized_size(&self, height: u32, width: u32) -> (u32, u32) {
        match self.resize {
            None => (height, width),
            Some(Resize::Exact { height, width }) => (height, width),
            Some(Resize::ShortestEdge(s)) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                // Python's int(s * long / short): a float division, truncated.
                let new_long = ((f64::from(s) * f64::from(long)) / f64::from(short)) as u32;
                let new_long = new_long.max(1);
                if width <= height { (new_long, s) } else { (s, new_long) }
            }
        }
    }

    /// Resized and cropped 8-bit pixels (`[height, width, 3]`), before scaling: what the
    /// model sees, as an image. Only the pixels the crop keeps are resampled, which gives
    /// the same values as resizing everything and cropping.
    pub fn resize_and_crop(&self, image: &RgbImage) -> RgbImage {
        let (h, w) = (image.height(), image.width());
        let (nh, nw) = self.resized_size(h, w);
        let Some((ch, cw)) = self.crop else {
            if (nh, nw) == (h, w) {
                return image.clone();
            }
            let px = resize::<3>(
                image.as_raw(),
                w as usize,
                h as usize,
                nw as usize,
                nh as usize,
                self.filter,
            );
            return RgbImage::from_raw(nw, nh, px).expect("resize returns the requested size");
        };
        let (sy, dy, ny) = crop_span(nh, ch);
        let (sx, dx, nx) = crop_span(nw, cw);
        let (xs, ys) = (sx as usize..(sx + nx) as usize, sy as usize..(sy + ny) as usize);
        let region = resize_region::<3>(
            image.as_raw(),
            w as usize,
            h as usize,
            nw as usize,
            nh as usize,
            xs,
            ys,
            self.filter,
        );
        if (dy, dx, ny, nx) == (0, 0, ch, cw) {
            return RgbImage::from_raw(cw, ch, region).expect("the region is the crop");
        }
        let mut out = RgbImage::new(cw, ch);
        let dst: &mut [u8] = &mut out;
        let row = nx as usize * 3;
        for (y, src) in region.chunks_exact(row).enumerate() {
            let d = ((dy as usize + y) * cw as usize + dx as usize) * 3;
            dst[d..d + row].copy_from_slice(src);
        }
        out
    }

    /// The model input for one image: `[3, height, width]` values, channel-major.
    pub fn pixel_values(&self, image: &RgbImage) -> Vec<f32> {
        let img = self.resize_and_crop(image);
        let (h, w) = (img.height() as usize, img.width() as usize);
        let plane = h * w;
        let mut out = vec![0f32; 3 * plane];
        let scale = self.rescale;
        let mean = self.mean.map(|m| m as f32);
        let std = self.std.map(|s| s as f32);
        for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                let v = match scale {
                    Some(s) => (f64::from(px[c]) * s) as f32,
                    None => f32::from(px[c]),
                };
                out[c * plane + i] = if self.normalize { (v - mean[c]) / std[c] } else { v };
            }
        }
        out
    }

    /// A batch of model inputs, `[n, 3, height, width]`. All images must come out the same
    /// size, which a config with a centre crop or an exact size guarantees.
    pub fn batch(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        let values: Vec<Vec<f32>> = {
            use rayon::prelude::*;
            images.par_iter().map(|img| self.pixel_values(img)).collect()
        };
        self.stack(values, images.iter().map(|i| self.final_size(i)).collect(), device)
    }

    /// Stacks already computed [`pixel_values`](Self::pixel_values) of images whose
    /// output sizes are `sizes`.
    pub fn stack(&self, values: Vec<Vec<f32>>, sizes: Vec<(u32, u32)>, device: &Device) -> Result<Tensor> {
        let Some(&(h, w)) = sizes.first() else {
            return Err(Error::InvalidInput("no images to preprocess".into()));
        };
        if sizes.iter().any(|&s| s != (h, w)) {
            return Err(Error::InvalidInput(
                "images preprocess to different sizes (the config has no centre crop); pass them one at a time".into(),
            ));
        }
        let n = values.len();
        let flat: Vec<f32> = values.into_iter().flatten().collect();
        Ok(Tensor::from_vec(flat, (n, 3, h as usize, w as usize), device)?)
    }

    /// `(height, width)` of the model input for an image of this size.
    pub fn final_size(&self, image: &RgbImage) -> (u32, u32) {
        self.crop
            .unwrap_or_else(|| self.resized_size(image.height(), image.width()))
    }
}

/// One dimension of transformers' `center_crop`: `(source offset, destination offset,
/// length)`. Where the image is larger it is cropped from `(orig - crop) // 2`; where it
/// is smaller it is zero-padded, centred with the extra pixel after.
fn crop_span(orig: u32, crop: u32) -> (u32, u32, u32) {
    if orig >= crop {
        ((orig - crop) / 2, 0, crop)
    } else {
        (0, (crop - orig).div_ceil(2), orig)
    }
}

/// transformers' `center_crop` of an 8-bit image.
pub fn center_crop(image: &RgbImage, crop_h: u32, crop_w: u32) -> RgbImage {
    let (h, w) = (image.height(), image.width());
    if (h, w) == (crop_h, crop_w) {
        return image.clone();
    }
    let (sy, dy, ny) = crop_span(h, crop_h);
    let (sx, dx, nx) = crop_span(w, crop_w);
    let mut out = RgbImage::new(crop_w, crop_h);
    let src = image.as_raw();
    let dst: &mut [u8] = &mut out;
    let (w, cw) = (w as usize, crop_w as usize);
    for y in 0..ny as usize {
        let s = ((sy as usize + y) * w + sx as usize) * 3;
        let d = ((dy as usize + y) * cw + dx as usize) * 3;
        dst[d..d + nx as usize * 3].copy_from_slice(&src[s..s + nx as usize * 3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_follows_transformers() {
        let p = ClipPreprocessor::openai(224);
        // franz-kafka.jpg: 450 wide, 655 high.
        assert_eq!(p.resized_size(655, 450), (326, 224));
        assert_eq!(p.resized_size(300, 451), (224, 336));
        assert_eq!(p.resized_size(224, 224), (224, 224));
        assert_eq!(p.resized_size(1, 1000), (224, 224000));
    }

    #[test]
    fn crop_takes_the_floor_offset_and_pads_small_images() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let c = center_crop(&img, 2, 2);
        // (4 - 2) // 2 = 1, (5 - 2) // 2 = 1
        assert_eq!(c.get_pixel(0, 0).0, [1, 1, 9]);
        let padded = center_crop(&img, 7, 8);
        // ceil(3 / 2) = 2 rows and ceil(3 / 2) = 2 columns of zeros before the image.
        assert_eq!(padded.get_pixel(1, 1).0, [0, 0, 0]);
        assert_eq!(padded.get_pixel(2, 2).0, [0, 0, 9]);
        assert_eq!(padded.get_pixel(6, 5).0, [4, 3, 9]);
        assert_eq!(padded.get_pixel(7, 6).0, [0, 0, 0]);
    }

    #[test]
    fn crop_of_a_resize_equals_resize_then_crop() {
        let img = RgbImage::from_fn(61, 29, |x, y| {
            image::Rgb([(x * 4) as u8, (y * 8) as u8, ((x * y) % 256) as u8])
        });
        for p in [
            ClipPreprocessor::openai(24),
            ClipPreprocessor {
                crop: Some((40, 10)),
                ..ClipPreprocessor::openai(24)
            },
            ClipPreprocessor {
                resize: None,
                crop: Some((50, 50)),
                ..ClipPreprocessor::openai(24)
            },
        ] {
            let (nh, nw) = p.resized_size(29, 61);
            let full = RgbImage::from_raw(
                nw,
                nh,
                resize::<3>(img.as_raw(), 61, 29, nw as usize, nh as usize, p.filter),
            )
            .unwrap();
            let (ch, cw) = p.crop.unwrap();
            assert_eq!(p.resize_and_crop(&img), center_crop(&full, ch, cw), "{p:?}");
        }
    }

    #[test]
    fn extreme_aspect_ratios_stay_small() {
        // A 1 x 20000 strip would resize to 224 x 4,480,000 pixels; only the crop is made.
        let strip = RgbImage::from_pixel(1, 20_000, image::Rgb([9, 9, 9]));
        let out = ClipPreprocessor::default().resize_and_crop(&strip);
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [9, 9, 9]));
    }

    #[test]
    fn config_layouts() {
        let classic = serde_json::json!({
            "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": 224
        });
        assert_eq!(
            ClipPreprocessor::from_json(&classic, 224).unwrap(),
            ClipPreprocessor::openai(224)
        );
        let current = serde_json::json!({
            "crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336},
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
            "rescale_factor": 0.00392156862745098
        });
        let p = ClipPreprocessor::from_json(&current, 224).unwrap();
        assert_eq!(p.resize, Some(Resize::ShortestEdge(336)));
        assert_eq!(p.crop, Some((336, 336)));
        assert_eq!(p.filter, Filter::Bilinear);
        assert_eq!(p.mean, [0.5; 3]);
        let bad = serde_json::json!({"image_std": [0.5, 0.0, 0.5]});
        assert!(ClipPreprocessor::from_json(&bad, 224).is_err());
        let bad = serde_json::json!({"size": {"longest_edge": 3}});
        assert!(ClipPreprocessor::from_json(&bad, 224).is_err());
        let bad = serde_json::json!({"resample": 0});
        assert!(ClipPreprocessor::from_json(&bad, 224).is_err());
    }

    #[test]
    fn normalisation_of_one_pixel() {
        let p = ClipPreprocessor {
            resize: None,
            crop: None,
            ..ClipPreprocessor::openai(1)
        };
        let img = RgbImage::from_pixel(1, 1, image::Rgb([255, 0, 128]));
        let v = p.pixel_values(&img);
        let expect = |x: f64, c: usize| ((x / 255.0) as f32 - OPENAI_CLIP_MEAN[c] as f32) / OPENAI_CLIP_STD[c] as f32;
        assert_eq!(v, vec![expect(255.0, 0), expect(0.0, 1), expect(128.0, 2)]);
    }
}
