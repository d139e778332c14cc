//! JPEG pixels from libjpeg-turbo's decoder (the `mozjpeg-sys` build of it), the decoder
//! Pillow itself wraps.
//!
//! Why not the `image` crate's pure-Rust JPEG decoder: its IDCT and YCbCr conversion round
//! differently from libjpeg-turbo's `islow` IDCT and fixed-point colour tables, so about
//! 1% of the values of a decoded photo differ by one to three levels. After CLIP's
//! normalisation one level is 0.015, more than the 1e-2 the parity reference allows on
//! 99.9% of values. With libjpeg-turbo's own code the pixels are Pillow's, bit for bit.
//! (Its SIMD paths are bit-exact with its C paths; without `nasm` at build time the C
//! paths are used.)
//!
//! Mirrors Pillow's `JpegImagePlugin`: default IDCT and fancy upsampling; 1 component is
//! grayscale, 3 are RGB, 4 are CMYK taken as Adobe-inverted (Pillow's `CMYK;I`) and
//! converted with Pillow's `cmyk2rgb`; a file that ends early is an error ("image file is
//! truncated"), other corrupt-data warnings are tolerated as libjpeg tolerates them.
//!
//! libjpeg reports fatal errors through `error_exit`, which must not return: ours unwinds
//! (`mozjpeg-sys` builds libjpeg with `-fexceptions` for that) with a payload that
//! [`decode`] catches, so no error escapes as a panic.

use std::ffi::{c_int, c_ulong};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys::{
    J_COLOR_SPACE, jpeg_common_struct, jpeg_create_decompress, jpeg_decompress_struct, jpeg_destroy_decompress,
    jpeg_error_mgr, jpeg_finish_decompress, jpeg_mem_src, jpeg_read_header, jpeg_read_scanlines, jpeg_save_markers,
    jpeg_start_decompress, jpeg_std_error,
};

/// `JPEG_APP0 + 1`: the marker that carries EXIF.
const APP1: c_int = 0xE1;

/// A failure inside libjpeg, carried through the unwind.
struct Failure(String);

/// The formatted text of libjpeg's current message.
///
/// # Safety
/// `cinfo.err` must point to an initialised error manager.
unsafe fn message(cinfo: &mut jpeg_common_struct) -> String {
    let buffer = [0u8; 80];
    // SAFETY: the caller guarantees `err` is valid; `format_message` writes at most 80
    // bytes, NUL-terminated, into the buffer (JMSG_LENGTH_MAX).
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            format(cinfo, &buffer);
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // SAFETY: libjpeg calls this with its own, initialised error manager.
    let msg = unsafe { message(cinfo) };
    // `resume_unwind` skips the panic hook: a corrupt file is not a crash to report.
    resume_unwind(Box::new(Failure(msg)));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level >= 0 {
        return; // trace messages
    }
    // SAFETY: as in `error_exit`.
    let msg = unsafe { message(cinfo) };
    // Pillow refuses images whose data ends early rather than showing a gray remainder.
    if msg.starts_with("Premature end of JPEG file") {
        resume_unwind(Box::new(Failure("the file is truncated".into())));
    }
    tracing::debug!("libjpeg warning: {msg}");
}

/// A decoded JPEG: 8-bit RGB pixels and the EXIF orientation tag, if any.
pub(crate) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub exif: Option<Vec<u8>>,
}

/// Why a JPEG was not decoded.
pub(crate) enum Refused {
    /// More pixels than `max_pixels`, found in the frame header before any pixel data.
    TooLarge(u32, u32),
    NoPixels(u32, u32),
    Failed(String),
}

/// Decodes a JPEG, refusing it after the header if it has more than `max_pixels`.
pub(crate) fn decode(bytes: &[u8], max_pixels: u64) -> Result<Decoded, Refused> {
    if bytes.is_empty() {
        return Err(Refused::Failed("the file is empty".into()));
    }
    let mut err: jpeg_error_mgr = unsafe_zeroed_error_mgr();
    // SAFETY: `jpeg_std_error` fills in every field of the manager.
    unsafe { jpeg_std_error(&mut err) };
    err.error_exit = Some(error_exit);
    err.emit_message = Some(emit_message);
    // SAFETY: an all-zero `jpeg_decompress_struct` is what libjpeg's own examples start
    // from; `jpeg_create_decompress` initialises it.
    let mut cinfo: Box<jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
    cinfo.common.err = &mut err;
    // SAFETY: `cinfo` is zeroed with a valid error manager, as libjpeg requires; the
    // struct is destroyed below on every path, including unwinds.
    unsafe { jpeg_create_decompress(&mut *cinfo) };
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `bytes` outlives the decompression; libjpeg only reads it.
        unsafe { read(&mut cinfo, bytes, max_pixels) }
    }));
    // SAFETY: created above; destroying is valid in any state.
    unsafe { jpeg_destroy_decompress(&mut cinfo) };
    match result {
        Ok(decoded) => decoded,
        Err(payload) => match payload.downcast::<Failure>() {
            Ok(failure) => Err(Refused::Failed(failure.0)),
            Err(other) => resume_unwind(other),
        },
    }
}

fn unsafe_zeroed_error_mgr() -> jpeg_error_mgr {
    // SAFETY: plain C struct of integers, pointers and nullable function pointers, for
    // which all-zero is a valid value (and `jpeg_std_error` overwrites it).
    unsafe { std::mem::zeroed() }
}

/// # Safety
/// `cinfo` must be a created decompressor whose error manager unwinds on errors.
unsafe fn read(cinfo: &mut jpeg_decompress_struct, bytes: &[u8], max_pixels: u64) -> Result<Decoded, Refused> {
    // SAFETY (whole function): libjpeg's documented call sequence on a valid decompressor;
    // saved markers are read while the decompressor (which owns them) is alive; each
    // scanline pointer points into `out` with room for one row of
    // `output_width * output_components` bytes.
    unsafe {
        jpeg_mem_src(cinfo, bytes.as_ptr(), bytes.len() as c_ulong);
        jpeg_save_markers(cinfo, APP1, 0xFFFF);
        jpeg_read_header(cinfo, 1);
        let (width, height) = (cinfo.image_width, cinfo.image_height);
        if width == 0 || height == 0 {
            return Err(Refused::NoPixels(width, height));
        }
        if u64::from(width) * u64::from(height) > max_pixels {
            return Err(Refused::TooLarge(width, height));
        }
        let mut exif = None;
        let mut marker = cinfo.marker_list;
        while !marker.is_null() {
            let m = &*marker;
            if c_int::from(m.marker) == APP1 && !m.data.is_null() {
                let data = std::slice::from_raw_parts(m.data, m.data_length as usize);
                if let Some(tiff) = data.strip_prefix(b"Exif\0\0") {
                    exif.get_or_insert_with(|| tiff.to_vec());
                }
            }
            marker = m.next;
        }
        let components = cinfo.num_components;
        cinfo.out_color_space = match components {
            1 => J_COLOR_SPACE::JCS_GRAYSCALE,
            3 => J_COLOR_SPACE::JCS_RGB,
            4 => J_COLOR_SPACE::JCS_CMYK,
            n => return Err(Refused::Failed(format!("cannot handle {n}-component JPEG images"))),
        };
        jpeg_start_decompress(cinfo);
        let (width, height) = (cinfo.output_width, cinfo.output_height);
        let channels = cinfo.output_components as usize;
        let row = width as usize * channels;
        let mut out = vec![0u8; row * height as usize];
        while cinfo.output_scanline < height {
            let start = cinfo.output_scanline as usize * row;
            let mut line = out[start..].as_mut_ptr();
            if jpeg_read_scanlines(cinfo, &mut line, 1) == 0 {
                return Err(Refused::Failed("the file is truncated".into()));
            }
        }
        jpeg_finish_decompress(cinfo);
        let rgb = match channels {
            1 => out.iter().flat_map(|&l| [l, l, l]).collect(),
            3 => out,
            4 => out.chunks_exact(4).flat_map(cmyk_to_rgb).collect(),
            n => return Err(Refused::Failed(format!("libjpeg returned {n} channels"))),
        };
        Ok(Decoded {
            width,
            height,
            rgb,
            exif,
        })
    }
}

/// Pillow's CMYK JPEG pixels to RGB: the samples are inverted (`CMYK;I`, the Adobe
/// convention Pillow always assumes), then `cmyk2rgb`.
fn cmyk_to_rgb(px: &[u8]) -> [u8; 3] {
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    let [c, m, y, k] = [0, 1, 2, 3].map(|i| 255 - i32::from(px[i]));
    let nk = 255 - k;
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"\xff\xd8\xff\xe0 not really a jpeg", 1 << 20).is_err());
        assert!(decode(b"", 1 << 20).is_err());
    }

    #[test]
    fn cmyk_conversion() {
        // Stored inverted: 255 means no ink.
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb(&[255, 255, 255, 0]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255]), [0, 255, 255]);
    }
}
