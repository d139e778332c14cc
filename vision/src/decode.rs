//! From image files to 8-bit RGB pixels, the way the reference Python pipeline sees them
//! (Pillow's `Image.open`, `ImageOps.exif_transpose`, then transformers' `convert_to_rgb`):
//!
//! - formats: JPEG (baseline, progressive, CMYK), PNG (8/16-bit, palette, grayscale, alpha),
//!   WebP, GIF (first frame), BMP, TIFF, recognised by their bytes, not by the file name.
//!   JPEG goes through libjpeg-turbo's decoder ([`crate::jpeg`]) so its pixels are
//!   Pillow's bit for bit; everything else through the `image` crate;
//! - the EXIF orientation is applied;
//! - transparency is composited on white with Pillow's integer `alpha_composite`;
//! - grayscale becomes RGB by repeating the channel; 16-bit samples keep their high byte
//!   (what Pillow's 16-bit RGB unpackers do).
//!
//! The pixel count is read from the header and checked against a limit before a single
//! pixel is decoded, so a tiny file declaring 30,000 × 30,000 pixels (a decompression bomb)
//! is refused without allocating for it. Decoders are third-party code reading untrusted
//! bytes: a panic inside one becomes an error naming the file.

use std::io::Cursor;
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::jpeg::Refused;
use crate::{Error, Result};

/// Pillow's `DecompressionBombError` threshold (twice `Image.MAX_IMAGE_PIXELS`).
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// The formats this build decodes, for messages.
pub const SUPPORTED_FORMATS: &str = "JPEG, PNG, WebP, GIF, BMP, TIFF";

/// File name extensions of the supported formats (lowercase), used to pick the files of a
/// directory worth indexing; decoding itself goes by the bytes.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "jfif", "png", "webp", "gif", "bmp", "tif", "tiff"];

/// Whether a path's extension names a supported image format.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Limits applied while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Images with more pixels (width × height, from the header) are refused.
    pub max_pixels: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// Reads and decodes an image file into 8-bit RGB.
pub fn load_rgb(path: &Path, opts: &DecodeOptions) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, path, opts)
}

/// Decodes image bytes into 8-bit RGB; `path` names the input in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<RgbImage> {
    if bytes.is_empty() {
        return Err(Error::decode(path, "the file is empty"));
    }
    let image = match tessera_models::panics::catch(|| decode_dynamic(bytes, path, opts)) {
        Ok(result) => result?,
        Err(why) => {
            return Err(Error::decode(
                path,
                format!("the image decoder crashed on this file ({why})"),
            ));
        }
    };
    Ok(to_rgb8(image))
}

fn decode_dynamic(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<DynamicImage> {
    let format = image::guess_format(bytes).map_err(|_| Error::Unsupported {
        path: path.to_path_buf(),
        msg: format!("not an image in a supported format ({SUPPORTED_FORMATS})"),
    })?;
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::WebP
            | ImageFormat::Gif
            | ImageFormat::Bmp
            | ImageFormat::Tiff
    ) {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            msg: format!(
                "{} images are not supported (supported: {SUPPORTED_FORMATS})",
                format
                    .extensions_str()
                    .first()
                    .copied()
                    .unwrap_or("this kind of")
                    .to_uppercase()
            ),
        });
    }
    if format == ImageFormat::Jpeg {
        return decode_jpeg(bytes, path, opts);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // A second line of defence behind the pixel check: decoders must not allocate more
    // than the largest allowed image could need (16-bit RGBA) plus slack.
    let mut limits = Limits::default();
    limits.max_alloc = Some((opts.max_pixels.saturating_mul(8)).max(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| decode_error(path, e))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(Error::decode(
            path,
            format!("the image has no pixels ({width}x{height})"),
        ));
    }
    if u64::from(width) * u64::from(height) > opts.max_pixels {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: opts.max_pixels,
        });
    }
    // Malformed EXIF must not cost the image: it is shown as stored.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::debug!(path = %path.display(), "ignoring unreadable EXIF orientation: {e}");
        Orientation::NoTransforms
    });
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(path, e))?;
    image.apply_orientation(orientation);
    Ok(image)
}

fn decode_jpeg(bytes: &[u8], path: &Path, opts: &DecodeOptions) -> Result<DynamicImage> {
    let decoded = crate::jpeg::decode(bytes, opts.max_pixels).map_err(|refused| match refused {
        Refused::TooLarge(width, height) => Error::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: opts.max_pixels,
        },
        Refused::NoPixels(w, h) => Error::decode(path, format!("the image has no pixels ({w}x{h})")),
        Refused::Failed(msg) => Error::decode(path, format!("not a valid JPEG image: {}", msg.to_lowercase())),
    })?;
    let rgb = RgbImage::from_raw(decoded.width, decoded.height, decoded.rgb)
        .ok_or_else(|| Error::decode(path, "libjpeg returned fewer pixels than the image has"))?;
    let mut image = DynamicImage::ImageRgb8(rgb);
    if let Some(o) = decoded.exif.as_deref().and_then(Orientation::from_exif_chunk) {
        image.apply_orientation(o);
    }
    Ok(image)
}

fn decode_error(path: &Path, e: image::ImageError) -> Error {
    match e {
        image::ImageError::Unsupported(u) => Error::Unsupported {
            path: path.to_path_buf(),
            msg: u.to_string().to_lowercase(),
        },
        image::ImageError::Limits(l) => Error::decode(path, format!("refused by the decoder's memory limit: {l}")),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::decode(path, "the file is truncated")
        }
        other => Error::decode(path, format!("not a valid image: {other}")),
    }
}

/// Pillow's `alpha_composite` of one channel value with alpha `a` over opaque white: its
/// integer path with 7 extra bits of precision and rounded divisions by 255.
#[inline]
pub fn composite_on_white(value: u8, alpha: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    if alpha == 0 {
        return 255;
    }
    let a = u32::from(alpha);
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = u32::from(value) * coef1 + 255 * coef2 + (0x80 << PRECISION_BITS);
    (((tmp >> 8) + tmp) >> 8 >> PRECISION_BITS) as u8
}

/// Any decoded image as 8-bit RGB, with Pillow's conversions (see the module docs).
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let gray = |l: u8| [l, l, l];
    let over_white = |[r, g, b, a]: [u8; 4]| {
        [
            composite_on_white(r, a),
            composite_on_white(g, a),
            composite_on_white(b, a),
        ]
    };
    let hi = |v: u16| (v >> 8) as u8;
    let pixels: Vec<u8> = match image {
        DynamicImage::ImageRgb8(img) => return img,
        DynamicImage::ImageLuma8(img) => img.into_raw().into_iter().flat_map(gray).collect(),
        DynamicImage::ImageLumaA8(img) => img
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| over_white([p[0], p[0], p[0], p[1]]))
            .collect(),
        DynamicImage::ImageRgba8(img) => img
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| over_white([p[0], p[1], p[2], p[3]]))
            .collect(),
        DynamicImage::ImageLuma16(img) => img.into_raw().into_iter().flat_map(|l| gray(hi(l))).collect(),
        DynamicImage::ImageLumaA16(img) => img
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| over_white([hi(p[0]), hi(p[0]), hi(p[0]), hi(p[1])]))
            .collect(),
        DynamicImage::ImageRgb16(img) => img.into_raw().into_iter().map(hi).collect(),
        DynamicImage::ImageRgba16(img) => img
            .into_raw()
            .chunks_exact(4)
            .flat_map(|p| over_white([hi(p[0]), hi(p[1]), hi(p[2]), hi(p[3])]))
            .collect(),
        other => {
            // Float and future variants: the image crate's own conversion, then composite.
            other
                .to_rgba8()
                .into_raw()
                .chunks_exact(4)
                .flat_map(|p| over_white([p[0], p[1], p[2], p[3]]))
                .collect()
        }
    };
    RgbImage::from_raw(w, h, pixels).expect("one RGB triple per pixel")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_keeps_opaque_and_whitens_transparent() {
        for v in [0u8, 1, 77, 128, 254, 255] {
            assert_eq!(composite_on_white(v, 255), v);
            assert_eq!(composite_on_white(v, 0), 255);
        }
        // Half transparent black over white is mid gray, rounded as Pillow rounds.
        assert_eq!(composite_on_white(0, 128), 127);
    }

    #[test]
    fn grayscale_and_alpha_become_rgb() {
        let la = image::GrayAlphaImage::from_raw(2, 1, vec![10, 255, 10, 0]).unwrap();
        let rgb = to_rgb8(DynamicImage::ImageLumaA8(la));
        assert_eq!(rgb.into_raw(), vec![10, 10, 10, 255, 255, 255]);
        let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(1, 1, vec![0xff00u16, 0x01ff, 0x8080]).unwrap();
        assert_eq!(
            to_rgb8(DynamicImage::ImageRgb16(rgb16)).into_raw(),
            vec![0xff, 0x01, 0x80]
        );
    }

    #[test]
    fn empty_and_garbage_bytes_are_errors() {
        let p = Path::new("x.png");
        let opts = DecodeOptions::default();
        assert!(matches!(decode_rgb(b"", p, &opts), Err(Error::Decode { .. })));
        assert!(matches!(
            decode_rgb(b"hello, this is text", p, &opts),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn extensions() {
        assert!(has_image_extension(Path::new("a/B.JPG")));
        assert!(has_image_extension(Path::new("x.webp")));
        assert!(!has_image_extension(Path::new("x.txt")));
        assert!(!has_image_extension(Path::new("jpg")));
    }
}
