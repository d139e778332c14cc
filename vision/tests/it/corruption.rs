//! Corrupted inputs never panic: deterministic damage (see the shared mutator) to every
//! committed image format, to an image index whose checksum is recomputed after the damage
//! (so the parser behind the checksum is reached, as with a buggy writer), and to a CLIP
//! checkpoint's weights and config, each loaded and used.

use std::ops::Range;
use std::path::Path;

use candle_core::Device;
use tessera_vision::decode::{DecodeOptions, load_rgb};
use tessera_vision::index::{INDEX_FILE, ImageIndex, update};
use tessera_vision::pipeline::ClipPipeline;

use crate::common::fixture;

#[path = "../../../models/tests/support/mutate.rs"]
mod mutate;
use mutate::{Outcomes, RUN, Rng, json_variants, mutate};

fn clip_dir(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/clip")
        .join(name)
}

#[test]
fn corrupted_images_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0x1a6e);
    let mut names: Vec<String> = std::fs::read_dir(fixture("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".expected.png"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    let opts = DecodeOptions::default();
    for name in names {
        let bytes = std::fs::read(fixture("images").join(&name)).unwrap();
        let damaged = format!("damaged-{name}");
        let path = dir.path().join(&damaged);
        let mut outcomes = Outcomes::default();
        let header = 0..bytes.len().min(256);
        let hot = std::slice::from_ref(&header);
        for _ in 0..300 {
            let (what, v) = mutate(&mut rng, &bytes, hot);
            std::fs::write(&path, &v).unwrap();
            outcomes.run(&what, &damaged, || {
                let image = load_rgb(&path, &opts).map_err(|e| e.to_string())?;
                assert!(image.width() > 0 && image.height() > 0, "an empty image was accepted");
                Ok(())
            });
        }
        outcomes.assert_clean(&name, 10, 0);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[test]
fn damaged_indexes_with_valid_checksums_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for name in ["rgb.png", "gray.jpg", "rgba.webp"] {
        std::fs::copy(fixture("images").join(name), images.join(name)).unwrap();
    }
    let pipeline = ClipPipeline::from_dir(&clip_dir("tiny"), &Device::Cpu).unwrap();
    update(&images, &pipeline, "tiny", &mut ()).unwrap();
    let path = images.join(INDEX_FILE);
    let bytes = std::fs::read(&path).unwrap();
    let body = bytes.len() - 8;
    // The magic, version and header length, then the JSON header.
    let header_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let hot: Range<usize> = 0..20 + header_len;
    let mut rng = Rng::new(0x1dec);
    let mut outcomes = Outcomes::default();
    for _ in 0..1000 {
        let (what, mut v) = mutate(&mut rng, &bytes[..body], std::slice::from_ref(&hot));
        let sum = fnv1a(&v);
        v.extend_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &v).unwrap();
        outcomes.run(&what, INDEX_FILE, || {
            let index = ImageIndex::load(&path).map_err(|e| e.to_string())?;
            for i in 0..index.len() {
                assert_eq!(index.embedding(i).len(), index.dim);
            }
            // The update that follows a damaged-but-readable index rebuilds or reuses it.
            let (updated, _) = update(&images, &pipeline, "tiny", &mut ()).map_err(|e| format!("{RUN}{e}"))?;
            assert_eq!(updated.len(), 3);
            Ok(())
        });
    }
    outcomes.assert_clean("image index", 300, 20);
}

#[test]
fn corrupted_clip_checkpoints_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(clip_dir("tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let image = load_rgb(&fixture("images/rgb.png"), &DecodeOptions::default()).unwrap();
    let use_model = |dir: &Path| -> Result<(), String> {
        let pipeline = ClipPipeline::from_dir(dir, &Device::Cpu).map_err(|e| e.to_string())?;
        pipeline
            .embed_texts(&["a photo of a cat".to_owned()])
            .map_err(|e| format!("{RUN}{e}"))?;
        pipeline
            .embed_images(std::slice::from_ref(&image))
            .map_err(|e| format!("{RUN}{e}"))?;
        Ok(())
    };
    use_model(&dir).expect("the undamaged checkpoint works");

    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    let header = 0..8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut rng = Rng::new(0xc11b);
    let mut outcomes = Outcomes::default();
    for _ in 0..500 {
        let (what, v) = mutate(&mut rng, &bytes, std::slice::from_ref(&header));
        std::fs::write(&weights, &v).unwrap();
        outcomes.run(&what, "tiny", || use_model(&dir));
    }
    std::fs::write(&weights, &bytes).unwrap();
    outcomes.assert_clean("CLIP model.safetensors", 100, 20);

    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut outcomes = Outcomes::default();
    for (what, variant) in json_variants(&text) {
        std::fs::write(&config, variant).unwrap();
        outcomes.run(&what, "tiny", || use_model(&dir));
    }
    outcomes.assert_clean("CLIP config.json", 5, 5);
}
