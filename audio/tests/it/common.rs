//! Shared helpers: fixture and cache paths, an `.npz` reader, WAV writing, signal
//! comparisons.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A file in the data cache that `scripts/fetch-models` fills (`$TESSERA_HOME`, by default
/// `~/.cache/tessera`).
pub fn cached(relative: &str) -> PathBuf {
    let home = std::env::var_os("TESSERA_HOME").filter(|h| !h.is_empty()).map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/tessera")
        },
        PathBuf::from,
    );
    let path = home.join(relative);
    assert!(path.exists(), "{} is missing: run scripts/fetch-models", path.display());
    path
}

/// One array of an `.npz` file, as f64 whatever its dtype, with its shape.
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Every array of an `.npz` (a zip of `.npy` files, compressed or not).
pub fn read_npz(path: &Path) -> HashMap<String, Array> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut out = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().trim_end_matches(".npy").to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.insert(name, parse_npy(&bytes));
    }
    out
}

/// A little-endian, C-order `.npy` of f4, f8, i4 or i8.
fn parse_npy(bytes: &[u8]) -> Array {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not an npy file");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "{header}");
    let descr = header.split("'descr': '").nth(1).unwrap().split('\'').next().unwrap();
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let body = &bytes[start + header_len..];
    let data: Vec<f64> = match descr {
        "<f4" => body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        "<f8" => body
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        "<i4" => body
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        "<i8" => body
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        other => panic!("unexpected dtype {other}"),
    };
    assert_eq!(data.len(), shape.iter().product::<usize>());
    Array { shape, data }
}

/// 16-bit samples of a WAV as f32 in [-1, 1), the way whisper (and symphonia) scale them.
pub fn read_wav_i16(path: &Path) -> (hound::WavSpec, Vec<f32>) {
    let mut reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        (spec.bits_per_sample, spec.sample_format),
        (16, hound::SampleFormat::Int)
    );
    let samples = reader.samples::<i16>().map(|s| s.unwrap() as f32 / 32768.0).collect();
    (spec, samples)
}

/// The reference recording every format is compared with (16 kHz mono s16).
pub fn speech() -> Vec<f32> {
    let (spec, samples) = read_wav_i16(&fixture("speech_16k.wav"));
    assert_eq!((spec.sample_rate, spec.channels), (16_000, 1));
    samples
}

pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Normalised correlation of `a` and `b` shifted by `lag` (`b[i + lag]` against `a[i]`) over
/// their overlap.
pub fn correlation_at(a: &[f32], b: &[f32], lag: i64) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (i, &x) in a.iter().enumerate() {
        let j = i as i64 + lag;
        if j < 0 || j >= b.len() as i64 {
            continue;
        }
        let y = b[j as usize] as f64;
        ab += x as f64 * y;
        aa += (x as f64).powi(2);
        bb += y * y;
    }
    ab / (aa * bb).sqrt().max(1e-30)
}

/// The lag in `-max_lag..=max_lag` with the highest correlation, and that correlation.
pub fn best_lag(a: &[f32], b: &[f32], max_lag: i64) -> (i64, f64) {
    (-max_lag..=max_lag)
        .map(|lag| (lag, correlation_at(a, b, lag)))
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap()
}

/// Writes `frames` (one inner vec per frame, one value per channel, in [-1, 1]) as a WAV
/// with the given rate and sample format.
pub fn write_wav(path: &Path, rate: u32, bits: u16, float: bool, frames: &[Vec<f32>]) {
    let spec = hound::WavSpec {
        channels: frames.first().map_or(1, |f| f.len() as u16),
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for frame in frames {
        for &x in frame {
            if float {
                w.write_sample(x).unwrap();
            } else {
                // Full scale of a signed `bits`-bit integer (8-bit WAV is unsigned on disk;
                // hound converts).
                let scale = (1i64 << (bits - 1)) as f64;
                let v = (x as f64 * scale).round().clamp(-scale, scale - 1.0) as i32;
                w.write_sample(v).unwrap();
            }
        }
    }
    w.finalize().unwrap();
}

pub fn mono(samples: &[f32]) -> Vec<Vec<f32>> {
    samples.iter().map(|&x| vec![x]).collect()
}

pub fn sine(rate: u32, freq: f64, amplitude: f64, seconds: f64) -> Vec<f32> {
    let n = (rate as f64 * seconds).round() as usize;
    (0..n)
        .map(|i| (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32)
        .collect()
}
