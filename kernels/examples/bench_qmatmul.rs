//! Times `quantized_matmul` against candle's `QMatMul` on the shapes of Qwen2.5-Coder-0.5B
//! (hidden 896, MLP 4864, vocabulary 151936) for 1, 4, 8 and 16 activation rows.
//!
//! `cargo run --release -p tessera-kernels --example bench_qmatmul [-- FILTER]`: FILTER
//! keeps the lines whose type or shape contains it (e.g. `Q5_0`, `151936`); a second
//! argument `ours` skips candle, `BENCH_ROWS=4` times one row count (for profiling) and
//! `BENCH_ISA=avx2` (or `scalar`) forces an implementation and `BENCH_SHAPE=n,k` times
//! another shape.
//!
//! By default the weight matrix stays in cache between calls, which makes every kernel
//! compute-bound. `BENCH_COLD=1` cycles through enough copies of it (256 MiB) that each call
//! reads its weights from memory, as a decode step of a real model does.

use std::time::{Duration, Instant};

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use tessera_kernels::{Isa, QuantType, QuantizedWeight};

fn ggml_dtype(ty: QuantType) -> GgmlDType {
    match ty {
        QuantType::Q4_0 => GgmlDType::Q4_0,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q5_0 => GgmlDType::Q5_0,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q6K => GgmlDType::Q6K,
    }
}

/// Fastest time of `f`, run for about `budget` after a warm-up: the machine is shared, and
/// the minimum is the figure least disturbed by other processes.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < budget || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.into_iter().fold(f64::INFINITY, f64::min)
}

fn main() {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let with_candle = std::env::args().nth(2).is_none_or(|a| a != "ours");
    // BENCH_ROWS=4 (or 1,3,4) times only those row counts (for profiling).
    let cold = std::env::var("BENCH_COLD").is_ok_and(|v| v == "1");
    let row_counts: Vec<usize> = match std::env::var("BENCH_ROWS") {
        Ok(rows) => rows
            .split(',')
            .map(|r| {
                r.trim()
                    .parse()
                    .expect("BENCH_ROWS is a comma-separated list of numbers")
            })
            .collect(),
        Err(_) => vec![1, 4, 8, 16],
    };
    // BENCH_ISA=avx2 or scalar forces a slower implementation.
    let isa = match std::env::var("BENCH_ISA").as_deref() {
        Ok("avx2") => Isa::Avx2,
        Ok("scalar") => Isa::Scalar,
        _ => Isa::best(),
    };
    println!(
        "isa {isa:?}, {} rayon threads, weights {}",
        rayon::current_num_threads(),
        if cold {
            "cold (read from memory)"
        } else {
            "hot (in cache)"
        }
    );
    println!(
        "{:<6} {:>14} {:>4} {:>10} {:>10} {:>7} {:>9}",
        "type", "[n, k]", "rows", "ours ms", "candle ms", "speedup", "vs 1 row"
    );
    // BENCH_SHAPE=n,k times one other shape (e.g. one that fits in L2, to see compute alone).
    let shapes = match std::env::var("BENCH_SHAPE") {
        Ok(shape) => {
            let dims: Vec<usize> = shape
                .split(',')
                .map(|d| d.trim().parse().expect("BENCH_SHAPE is n,k"))
                .collect();
            assert_eq!(dims.len(), 2, "BENCH_SHAPE is n,k");
            vec![(dims[0], dims[1])]
        }
        Err(_) => vec![(4864, 896), (896, 896), (896, 4864), (151936, 896)],
    };
    let dev = Device::Cpu;
    for ty in QuantType::ALL {
        for &(n, k) in &shapes {
            let label = format!("{ty:?} [{n}, {k}]");
            if !label.contains(&filter) || k % ty.block_size() != 0 || (n > 100_000 && ty != QuantType::Q8_0) {
                continue;
            }
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05)
                .collect();
            let w = Tensor::from_vec(w, (n, k), &dev).unwrap();
            let qt = QTensor::quantize(&w, ggml_dtype(ty)).unwrap();
            let bytes = qt.data().unwrap().into_owned();
            let copies = if cold {
                (256usize << 20).div_ceil(bytes.len())
            } else {
                1
            };
            let weights: Vec<Vec<u8>> = vec![bytes; copies];
            let mms: Vec<QMatMul> = weights
                .iter()
                .map(|w| {
                    let storage = QStorage::from_data(Cow::Borrowed(w), &dev, ggml_dtype(ty)).unwrap();
                    QMatMul::from_qtensor(QTensor::new(storage, (n, k)).unwrap()).unwrap()
                })
                .collect();
            drop(qt);
            // Repacked once, as a model does at load time.
            let ours: Vec<QuantizedWeight> = weights
                .iter()
                .map(|w| QuantizedWeight::from_ggml(ty, w, n, k).unwrap())
                .collect();
            let budget = Duration::from_millis(if n > 100_000 { 1500 } else { 400 });
            let mut one_row = 0.0;
            for rows in row_counts.iter().copied() {
                let x: Vec<f32> = (0..rows * k).map(|i| (i * 31 % 97) as f32 / 48.0 - 1.0).collect();
                let xt = Tensor::from_vec(x.clone(), (rows, k), &dev).unwrap();
                let mut y = vec![0f32; rows * n];
                let mut next = 0;
                let ours = time(budget, || {
                    next = (next + 1) % copies;
                    ours[next].matmul_with(isa, &x, rows, &mut y).unwrap();
                });
                let candle = if with_candle {
                    time(budget, || {
                        next = (next + 1) % copies;
                        mms[next].forward(&xt).unwrap();
                    })
                } else {
                    f64::NAN
                };
                if rows == row_counts[0] {
                    one_row = ours;
                }
                println!(
                    "{:<6} {:>14} {:>4} {:>10.3} {:>10.3} {:>6.2}x {:>8.2}x",
                    format!("{ty:?}"),
                    format!("[{n}, {k}]"),
                    rows,
                    ours,
                    candle,
                    candle / ours,
                    ours / one_row
                );
            }
        }
    }
}
