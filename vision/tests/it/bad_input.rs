//! Bad input never panics and never passes silently: corrupt, truncated, zero-sized and
//! unsupported images, decompression bombs (refused from the header, before decoding),
//! empty and over-long texts, and models that are not there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use tessera_vision::Error;
use tessera_vision::decode::{DecodeOptions, decode_rgb, load_rgb};
use tessera_vision::pipeline::ClipPipeline;

use crate::common::fixture;

fn decode(bytes: &[u8], name: &str) -> Result<image::RgbImage, Error> {
    decode_rgb(bytes, Path::new(name), &DecodeOptions::default())
}

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&crc_input);
    out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG header declaring `width × height` 8-bit RGB pixels, followed by a small valid
/// zlib stream of zeros: a few hundred bytes that would decode to gigabytes.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // zlib: a stored empty block is enough to look like the start of pixel data.
    let idat = [0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01];
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &idat));
    png.extend(png_chunk(b"IEND", b""));
    png
}

/// A baseline JPEG (SOI, DQT, SOF0, SOS, a few bytes of scan) declaring `width × height`.
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut j = vec![0xFF, 0xD8];
    j.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    j.extend(std::iter::repeat_n(1u8, 64));
    j.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    j.extend_from_slice(&height.to_be_bytes());
    j.extend_from_slice(&width.to_be_bytes());
    j.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    j.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    j.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    j.extend_from_slice(&[0xFF, 0xD9]);
    j
}

#[test]
fn decompression_bombs_are_refused_before_decoding() {
    for (name, bytes) in [
        ("bomb.png", png_declaring(30_000, 30_000)),
        ("bomb.jpg", jpeg_declaring(30_000, 30_000)),
    ] {
        assert!(bytes.len() < 200, "{name} is {} bytes", bytes.len());
        let t0 = Instant::now();
        let err = decode(&bytes, name).unwrap_err();
        assert!(
            t0.elapsed().as_millis() < 500,
            "{name}: refusing took {:?}",
            t0.elapsed()
        );
        match &err {
            Error::TooLarge { width, height, .. } => assert_eq!((*width, *height), (30_000, 30_000)),
            other => panic!("{name}: {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains("30000x30000") && msg.contains("refused"),
            "{msg}"
        );
    }
    // The limit is configurable; at its edge an image passes the check.
    let small = DecodeOptions { max_pixels: 100 };
    let img = std::fs::read(fixture("images/rgb.png")).unwrap();
    assert!(matches!(
        decode_rgb(&img, Path::new("rgb.png"), &small),
        Err(Error::TooLarge { .. })
    ));
    let exact = DecodeOptions { max_pixels: 48 * 36 };
    assert!(decode_rgb(&img, Path::new("rgb.png"), &exact).is_ok());
}

#[test]
fn corrupt_truncated_and_zero_sized_images_are_errors() {
    let names = [
        "rgb.png",
        "baseline.jpg",
        "progressive.jpg",
        "rgb.webp",
        "lossy.webp",
        "anim.gif",
        "rgb.bmp",
        "rgb.tiff",
        "lzw.tiff",
    ];
    for name in names {
        let bytes = std::fs::read(fixture("images").join(name)).unwrap();
        // Every prefix length class: header only, half, all but the end.
        for cut in [8, 30, bytes.len() / 2, bytes.len() - 40] {
            // Must not panic; most cuts are errors (JPEG: "truncated"), a few decoders
            // accept a file missing only its trailer.
            if let Err(e) = decode(&bytes[..cut], name) {
                assert!(e.to_string().contains(name), "{e}");
            }
        }
        // Flipped bytes in the middle of the data.
        let mut bad = bytes.clone();
        let n = bad.len();
        for b in &mut bad[n / 3..n / 3 + 16] {
            *b ^= 0x5a;
        }
        let _ = decode(&bad, name);
    }
    let half_jpeg = std::fs::read(fixture("images/baseline.jpg")).unwrap();
    let err = decode(&half_jpeg[..half_jpeg.len() / 2], "half.jpg")
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    let half_png = std::fs::read(fixture("images/rgb.png")).unwrap();
    assert!(decode(&half_png[..half_png.len() / 2], "half.png").is_err());

    for (name, bytes) in [
        ("zero.png", png_declaring(0, 10)),
        ("zero-height.png", png_declaring(10, 0)),
        ("zero.jpg", jpeg_declaring(0, 10)),
    ] {
        let err = decode(&bytes, name).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    assert!(decode(b"", "empty.png").unwrap_err().to_string().contains("empty"));
}

#[test]
fn unsupported_formats_and_non_images() {
    for (name, bytes) in [
        ("text.jpg", b"just some text, not an image".to_vec()),
        ("image.ppm", b"P6\n2 2\n255\n\0\0\0\0\0\0\0\0\0\0\0\0".to_vec()),
        ("image.qoi", b"qoif\0\0\0\x02\0\0\0\x02\x03\0".to_vec()),
    ] {
        match decode(&bytes, name) {
            Err(Error::Unsupported { path, msg }) => {
                assert_eq!(path, PathBuf::from(name));
                assert!(msg.contains("supported"), "{msg}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // A directory and a missing file are I/O errors naming them.
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_rgb(dir.path(), &DecodeOptions::default()),
        Err(Error::Io { .. })
    ));
    let missing = dir.path().join("missing.png");
    let err = load_rgb(&missing, &DecodeOptions::default()).unwrap_err().to_string();
    assert!(err.contains("missing.png"), "{err}");
}

#[test]
fn texts_empty_and_too_long() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/clip/tiny");
    let p = ClipPipeline::from_dir(&dir, &Device::Cpu).unwrap();
    let err = p.embed_texts(&["a cat".into(), "  ".into()]).unwrap_err().to_string();
    assert_eq!(err, "text 2 is empty");
    assert!(p.embed_texts(&[]).is_err());
    let long = "the quick brown fox jumps over the lazy dog ".repeat(20);
    let out = p.embed_texts(&["short".into(), long.clone(), long]).unwrap();
    assert_eq!(out.truncated, vec![1, 2]);
    assert_eq!(out.embeddings.len(), 3);
    assert_eq!(out.embeddings[1], out.embeddings[2]);
}

#[test]
fn missing_models_say_no_clip_weights_ship() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClipPipeline::load(&dir.path().join("nope").display().to_string(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    // Not in the hub cache: offline this fails at once, online the hub has no such repo.
    let err = ClipPipeline::load("no-such-owner/no-such-clip", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no CLIP weights ship with Tessera"), "{err}");
    // A directory without config.json.
    let err = ClipPipeline::load(&dir.path().display().to_string(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
}
