//! Which implementation runs an operation: Tessera's CPU kernels (`tessera_kernels`:
//! repacked quantized products, packed f32/f16 products, blockwise attention, vectorised
//! element-wise functions) or candle's own ops, which are what every accelerator runs.
//!
//! Setting `TESSERA_REFERENCE_OPS=1` makes the CPU take candle's path too, the one CUDA
//! takes: weights load as candle `QMatMul`s, attention concatenates the cache, activations
//! and products run candle's kernels (the compute type stays f32). It exists to check that path where there is no GPU (the tests run
//! real weights through it) and to tell a kernel's numerical differences from a model's.
//! It is read once per process.

use std::sync::OnceLock;

use candle_core::Device;

/// The environment variable that selects candle's ops on the CPU.
pub const REFERENCE_OPS_VAR: &str = "TESSERA_REFERENCE_OPS";

/// True when `TESSERA_REFERENCE_OPS` is set to anything but empty, `0` or `false`.
pub fn reference_ops() -> bool {
    static REFERENCE: OnceLock<bool> = OnceLock::new();
    *REFERENCE.get_or_init(|| {
        let on = std::env::var(REFERENCE_OPS_VAR).is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"));
        if on {
            tracing::info!("{REFERENCE_OPS_VAR} is set: candle's ops run instead of Tessera's CPU kernels");
        }
        on
    })
}

/// Whether tensors on `device` go through Tessera's CPU kernels.
pub fn cpu_kernels(device: &Device) -> bool {
    device.is_cpu() && !reference_ops()
}
