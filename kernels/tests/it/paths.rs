//! The portable path and the SIMD paths compute the same integers and the same fused
//! multiply-adds in the same order: their results must be identical.

use tessera_kernels::{Isa, QuantType, quantized_matmul_with};

use crate::common::{Weight, random_values};

#[test]
fn simd_paths_equal_the_portable_path_bit_for_bit() {
    let simd: Vec<Isa> = [Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect();
    for ty in QuantType::ALL {
        let ks: &[usize] = match ty {
            QuantType::Q4K | QuantType::Q6K => &[256, 1024, 2048],
            // Every tail shape: 1 to 8 blocks after whole groups; 1888 values (59 blocks)
            // are cut into several spans that fit in L1 when there are 8 rows.
            _ => &[32, 64, 96, 128, 160, 192, 224, 256, 288, 896, 1888],
        };
        for (i, &k) in ks.iter().enumerate() {
            let n = 21 + 2 * i;
            let w = Weight::random(ty, n, k, 40 + i as u64);
            // Tiles of up to 8 rows: one, several (3, 4 and 6 as beams make them), and a
            // partial last one.
            for rows in [1, 3, 4, 8, 9, 14, 17] {
                let x = random_values(rows * k, 90 + rows as u64);
                let run = |isa| {
                    let mut y = vec![f32::NAN; rows * n];
                    quantized_matmul_with(isa, ty, &w.bytes, n, k, &x, rows, &mut y).unwrap();
                    y
                };
                let scalar = run(Isa::Scalar);
                for &isa in &simd {
                    let got = run(isa);
                    let same = got.iter().zip(&scalar).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{ty:?} k={k} rows={rows} {isa:?}: {got:?} != {scalar:?}");
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn this_x86_machine_runs_simd() {
    // CI and development machines have AVX2; the SIMD path must not silently go missing.
    if std::is_x86_feature_detected!("avx2") {
        assert_ne!(Isa::best(), Isa::Scalar);
    }
}

#[test]
fn products_sharing_an_input_equal_separate_products() {
    use tessera_kernels::{Error, QuantizedWeight};
    for ty in [QuantType::Q5_0, QuantType::Q8_0, QuantType::Q6K] {
        let k = if ty == QuantType::Q6K { 512 } else { 896 };
        let (a, b) = (Weight::random(ty, 40, k, 1), Weight::random(ty, 23, k, 2));
        let (a, b) = (
            QuantizedWeight::from_ggml(ty, &a.bytes, 40, k).unwrap(),
            QuantizedWeight::from_ggml(ty, &b.bytes, 23, k).unwrap(),
        );
        for rows in [1, 4, 9] {
            let x = random_values(rows * k, rows as u64);
            let (mut ya, mut yb) = (vec![0f32; rows * 40], vec![0f32; rows * 23]);
            a.matmul(&x, rows, &mut ya).unwrap();
            b.matmul(&x, rows, &mut yb).unwrap();
            let (mut ga, mut gb) = (vec![f32::NAN; rows * 40], vec![f32::NAN; rows * 23]);
            QuantizedWeight::matmul_many(&[&a, &b], &x, rows, &mut [&mut ga, &mut gb]).unwrap();
            assert_eq!(ga, ya, "{ty:?} rows={rows}");
            assert_eq!(gb, yb, "{ty:?} rows={rows}");
        }
    }
    let q8 =
        QuantizedWeight::from_ggml(QuantType::Q8_0, &Weight::random(QuantType::Q8_0, 2, 64, 3).bytes, 2, 64).unwrap();
    let q5 =
        QuantizedWeight::from_ggml(QuantType::Q5_0, &Weight::random(QuantType::Q5_0, 2, 64, 4).bytes, 2, 64).unwrap();
    let x = random_values(64, 5);
    let (mut y1, mut y2) = (vec![0f32; 2], vec![0f32; 2]);
    let err = QuantizedWeight::matmul_many(&[&q8, &q5], &x, 1, &mut [&mut y1, &mut y2]).unwrap_err();
    assert!(matches!(err, Error::MixedWeights { .. }), "{err}");
}
