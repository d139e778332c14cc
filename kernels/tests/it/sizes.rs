//! Inconsistent sizes are errors naming what is wrong, never panics.

use tessera_kernels::{Error, Isa, QuantType, quantized_matmul, quantized_matmul_with};

#[test]
fn every_size_is_checked_before_use() {
    let ty = QuantType::Q6K;
    let (n, k, rows) = (3, 512, 2);
    let w = vec![0u8; n * 2 * 210];
    let (x, mut y) = (vec![0f32; rows * k], vec![0f32; rows * n]);
    assert!(quantized_matmul(ty, &w, n, k, &x, rows, &mut y).is_ok());

    let err = quantized_matmul(ty, &w, n, 500, &x, rows, &mut y).unwrap_err();
    assert_eq!(
        err,
        Error::KNotBlockAligned {
            ty,
            k: 500,
            block_size: 256
        }
    );
    let err = quantized_matmul(ty, &w[1..], n, k, &x, rows, &mut y).unwrap_err();
    assert_eq!(err.to_string(), "Q6K weight [3, 512]: expected 1260 bytes, got 1259");
    let err = quantized_matmul(ty, &w, n, k, &x[1..], rows, &mut y).unwrap_err();
    assert_eq!(err.to_string(), "activations [2, 512]: expected 1024 values, got 1023");
    let err = quantized_matmul(ty, &w, n, k, &x, rows, &mut y[1..]).unwrap_err();
    assert_eq!(err.to_string(), "output [2, 3]: expected 6 values, got 5");
    let err = quantized_matmul(ty, &w, n, k, &x, 3, &mut y).unwrap_err();
    assert!(matches!(err, Error::InputSize { .. }));
    let err = quantized_matmul(ty, &w, usize::MAX / 2, k, &x, rows, &mut y).unwrap_err();
    assert!(matches!(err, Error::Overflow { .. }));
}

#[test]
fn unavailable_instruction_sets_are_errors() {
    for isa in Isa::ALL.into_iter().filter(|isa| !isa.is_available()) {
        let err = quantized_matmul_with(isa, QuantType::Q8_0, &[0; 34], 1, 32, &[0.0; 32], 1, &mut [0.0]).unwrap_err();
        assert_eq!(err, Error::IsaUnavailable(isa));
    }
}
