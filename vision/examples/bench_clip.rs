//! Tessera side of `scripts/bench-clip`: image and text embeddings per second of a CLIP
//! checkpoint, batch 1 and 32, with and without preprocessing (decoding + resizing for
//! images, tokenization for texts). Prints one JSON line.
//!
//! `bench_clip DIR PHOTO...` (threads from `RAYON_NUM_THREADS`).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use tessera_vision::decode::load_rgb;
use tessera_vision::pipeline::ClipPipeline;

const CAPTIONS: [&str; 8] = [
    "a photo of a cat sitting on a sofa",
    "an astronaut in a white space suit",
    "a cup of coffee with latte art on a wooden table",
    "a horse standing in a green field under a blue sky",
    "a black and white portrait of a man with a camera",
    "a rocket launching into the night sky with a bright trail of fire",
    "a motorcycle parked on the street",
    "deep field image of thousands of distant galaxies",
];

/// Items per second of `f` (one warm-up call, then at least 3 s and 2 calls).
fn rate(items: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    let mut reps = 0;
    loop {
        f();
        reps += 1;
        let el = t0.elapsed().as_secs_f64();
        if reps >= 2 && el >= 3.0 {
            return (items * reps) as f64 / el;
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `tessera` itself does.
    tessera_models::allocator::keep_freed_buffers();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, photos) = args.split_first().ok_or("usage: bench_clip DIR PHOTO...")?;
    if photos.is_empty() {
        return Err("usage: bench_clip DIR PHOTO...".into());
    }
    let t0 = Instant::now();
    let p = ClipPipeline::from_dir(&PathBuf::from(dir), &Device::Cpu)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let files: Vec<PathBuf> = (0..32).map(|i| PathBuf::from(&photos[i % photos.len()])).collect();
    let texts: Vec<String> = (0..32).map(|i| CAPTIONS[i % CAPTIONS.len()].to_owned()).collect();
    let mut out = serde_json::json!({
        "threads": candle_core::utils::get_num_threads(),
        "load_ms": load_ms,
    });
    for n in [1usize, 32] {
        let paths = &files[..n];
        let images: Vec<_> = paths.iter().map(|f| load_rgb(f, &p.decode)).collect::<Result<_, _>>()?;
        let px = p.pixel_values(&images)?;
        out[format!("image_b{n}")] = rate(n, || {
            p.model.image_embeddings(&px).unwrap();
        })
        .into();
        out[format!("image_b{n}_pre")] = rate(n, || {
            for r in p.embed_files(paths) {
                r.unwrap();
            }
        })
        .into();
        out[format!("preprocess_b{n}")] = rate(n, || {
            use rayon::prelude::*;
            let imgs: Vec<_> = paths.par_iter().map(|f| load_rgb(f, &p.decode).unwrap()).collect();
            p.pixel_values(&imgs).unwrap();
        })
        .into();
        let batch = &texts[..n];
        let ids: Vec<Vec<u32>> = batch.iter().map(|t| p.tokenizer.encode(t).unwrap().ids).collect();
        out[format!("text_b{n}")] = rate(n, || {
            p.model.text_embeddings(&ids, p.tokenizer.eot_id()).unwrap();
        })
        .into();
        out[format!("text_b{n}_pre")] = rate(n, || {
            p.embed_texts(batch).unwrap();
        })
        .into();
    }
    println!("{out}");
    Ok(())
}
