//! Integration tests of the kernels crate: agreement with candle's `QMatMul` (which uses
//! the same activation quantization) and with dequantize-then-f32-matmul, agreement of the
//! portable and SIMD implementations, and bad sizes reported as errors.

mod common;
mod parity;
mod paths;
mod sizes;
