//! f32 linear layers: the `gemm` crate on checkpoint-layout weights (`dense::linear_f32`,
//! repacking the weights on every call) vs weights packed once (`packed::linear_packed`),
//! for the shapes Tessera's models run: Whisper decode steps (5 beams), one CLIP image (50
//! tokens), CLIP batches and the Whisper encoder. Threads from `RAYON_NUM_THREADS`.
//!
//! `cargo run --release -p tessera-kernels --example bench_dense`

use std::time::Instant;

use tessera_kernels::dense::{Epilogue, WeightLayout, linear_f32};
use tessera_kernels::packed::{PackedWeight, linear_packed};

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    let mut reps = 0;
    while reps < 3 || t.elapsed().as_secs_f64() < 1.0 {
        f();
        reps += 1;
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    println!("| rows | k | n | gemm crate (ms) | packed (ms) | packed GFLOP/s |");
    println!("|---|---|---|---|---|---|");
    for (rows, k, n) in [
        (1, 384, 1536),
        (5, 384, 1536),
        (5, 1536, 384),
        (5, 384, 51864),
        (50, 768, 3072),
        (50, 3072, 768),
        (1600, 768, 3072),
        (1500, 384, 1536),
    ] {
        let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 11) as f32 * 0.01).collect();
        let packed = PackedWeight::pack(&w, n, k, WeightLayout::OutIn).unwrap();
        let a = time(|| {
            linear_f32(&x, rows, k, &w, n, WeightLayout::OutIn, None, Epilogue::None).unwrap();
        });
        let b = time(|| {
            linear_packed(&x, rows, &packed, None, Epilogue::None).unwrap();
        });
        let gflops = 2.0 * (rows * k * n) as f64 / b / 1e9;
        println!("| {rows} | {k} | {n} | {:.3} | {:.3} | {gflops:.1} |", a * 1e3, b * 1e3);
    }
}
