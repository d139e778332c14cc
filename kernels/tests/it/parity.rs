//! Our product against candle's `QMatMul` and against the dequantized weights, for every
//! format, several row counts and odd column counts.

use tessera_kernels::{Isa, QuantType, quantized_matmul, quantized_matmul_with};

use crate::common::{Weight, random_values, relative_error};

const ROWS: [usize; 6] = [1, 2, 3, 4, 8, 16];

/// Row lengths per format: legacy ones cover a row of whole 8-block groups, a tail of 4
/// blocks (k = 896, Qwen2.5-0.5B's hidden size) and padded tails. candle's Q4_1 and Q5_0
/// kernels assume an even block count (debug assertions), so odd counts are only used in
/// `paths`.
fn ks(ty: QuantType) -> &'static [usize] {
    match ty {
        QuantType::Q4K | QuantType::Q6K => &[256, 768],
        _ => &[64, 192, 512, 896],
    }
}

/// Worst errors measured over all shapes: ours vs candle, ours vs dequantized f32, candle
/// vs dequantized f32.
fn worst_errors(ty: QuantType, isa: Isa) -> (f32, f32, f32) {
    let (mut vs_candle, mut vs_f32, mut candle_vs_f32) = (0f32, 0f32, 0f32);
    for (i, &k) in ks(ty).iter().enumerate() {
        let n = [37, 129, 3][i % 3];
        let w = Weight::random(ty, n, k, 7 + i as u64);
        for rows in ROWS {
            let x = random_values(rows * k, 1000 + rows as u64);
            let mut y = vec![f32::NAN; rows * n];
            quantized_matmul_with(isa, ty, &w.bytes, n, k, &x, rows, &mut y).unwrap();
            let (candle, exact) = (w.candle_qmatmul(&x, rows), w.dequantized_matmul(&x, rows));
            vs_candle = vs_candle.max(relative_error(&y, &candle, rows));
            vs_f32 = vs_f32.max(relative_error(&y, &exact, rows));
            candle_vs_f32 = candle_vs_f32.max(relative_error(&candle, &exact, rows));
        }
    }
    (vs_candle, vs_f32, candle_vs_f32)
}

#[test]
fn matches_candle_and_dequantized_weights() {
    for isa in Isa::ALL.into_iter().filter(|isa| isa.is_available()) {
        for ty in QuantType::ALL {
            let (vs_candle, vs_f32, candle_vs_f32) = worst_errors(ty, isa);
            eprintln!(
                "{isa:?} {ty:?}: relative error vs candle {vs_candle:.1e}, \
                 vs f32 {vs_f32:.1e} (candle's: {candle_vs_f32:.1e})"
            );
            // Same integer sums as candle: only float summation order differs.
            assert!(vs_candle < 1e-5, "{isa:?} {ty:?}: {vs_candle} vs candle");
            // 8-bit activations cost a few percent of a row's largest output on these
            // spiky inputs (one block value in 64 is 8x larger), exactly as much as candle.
            assert!(vs_f32 < 0.1, "{isa:?} {ty:?}: {vs_f32} vs f32");
            assert!(vs_f32 <= candle_vs_f32 + 1e-5, "{isa:?} {ty:?}: {vs_f32} vs f32");
        }
    }
}

#[test]
fn zero_rows_and_spikes_match_candle() {
    // An all-zero activation row (scale 0) and a row with one huge value.
    for ty in QuantType::ALL {
        let (n, k) = (19, 512);
        let w = Weight::random(ty, n, k, 3);
        let mut x = vec![0f32; 2 * k];
        x[k + 5] = 1e4;
        x[k + 300] = -0.5;
        let mut y = vec![f32::NAN; 2 * n];
        quantized_matmul(ty, &w.bytes, n, k, &x, 2, &mut y).unwrap();
        assert!(y[..n].iter().all(|&v| v == 0.0), "{ty:?}: {:?}", &y[..n]);
        let err = relative_error(&y[n..], &w.candle_qmatmul(&x, 2)[n..], 1);
        assert!(err < 1e-5, "{ty:?}: {err}");
    }
}

#[test]
fn repacked_rows_dequantize_as_candle_does() {
    // Embedding lookups read the repacked table: the values must be ggml's, bit for bit.
    for ty in QuantType::ALL {
        for k in [256, 896, 1024] {
            if k % ty.block_size() != 0 {
                continue;
            }
            let n = 7;
            let w = Weight::random(ty, n, k, 5);
            let want: Vec<f32> = w
                .qtensor
                .dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let repacked = tessera_kernels::QuantizedWeight::from_ggml(ty, &w.bytes, n, k).unwrap();
            let ids = [6, 0, 3, 3];
            let got = repacked.dequantize_rows(&ids).unwrap();
            for (i, &id) in ids.iter().enumerate() {
                let (got, want) = (&got[i * k..][..k], &want[id * k..][..k]);
                let same = got.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{ty:?} k={k} row {id}");
            }
            assert!(repacked.dequantize_rows(&[n]).is_err(), "{ty:?}: row past the end");
        }
    }
}
