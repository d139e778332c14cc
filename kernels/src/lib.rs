//! CPU matrix products against ggml-quantized weights, for the few activation rows of a
//! decode step (one row per beam or per sequence in the batch).
//!
//! candle's `QMatMul` on CPU takes each activation row separately and reads the whole weight
//! matrix once per row, so four beams cost about four greedy steps. Here the weight matrix
//! is read once per call: the activation rows are quantized to 8 bits once (Q8_0 blocks, or
//! Q8_K super-blocks for the K-quants, with candle's rounding), then each group of each
//! weight row is decoded once, into registers, and multiplied with every activation row
//! (in tiles of up to 8 rows, whose accumulators are registers too). The weights are
//! repacked once, at load time ([`QuantizedWeight`]), so that decoding a group is a few
//! masks and shifts rather than a transpose.
//!
//! Both sides are cut into *groups* of 8 *lanes* (`layout`): a lane is one quantization
//! block (or sub-block) and the bytes of a group are interleaved so that one 32-byte vector
//! holds 4 bytes of each lane. A SIMD dot product of two such vectors then leaves the sum of
//! lane `i` in 32-bit element `i`, and the per-block scales are applied to all 8 lanes with
//! one multiply, instead of one horizontal sum per block. Weights with an offset (Q4_0's
//! `q - 8`, Q8_0 stored as `w + 128`) are multiplied as unsigned bytes, and the offset times
//! the activation lane sum is subtracted from the integer result, which stays exact.
//!
//! Parallelism: rayon tasks over ranges of output columns, each with its own weight rows.
//!
//! Also `elementwise` (vectorisable softmax and GELUs on f32 rows), `dense` and `packed`
//! (f32 linear layers with the bias and activation fused into the product's output), and
//! `attention` (a few new tokens attending over a KV cache kept in blocks, read in place).
//!
//! Code map: `layout` (groups and lanes), `activation` (quantizing the activation rows),
//! `decode` (ggml blocks to the interleaved layout), `repack` (the weights' stored form),
//! `scalar` (the portable path, always compiled and tested), `x86` (AVX2, and AVX-512
//! VNNI where the CPU has it, picked at run time).

mod activation;
pub mod attention;
mod buffer;
mod decode;
pub mod dense;
pub mod elementwise;
mod layout;
pub mod packed;
mod repack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use crate::activation::Activations;
pub use crate::repack::QuantizedWeight;

/// Errors of this crate: only inconsistent sizes, which are caller bugs reported as values
/// so that a bad tensor shape never takes the process down.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{ty:?} weight: k = {k} is not a multiple of the block size {block_size}")]
    KNotBlockAligned { ty: QuantType, k: usize, block_size: usize },
    #[error("{ty:?} weight [{n}, {k}]: expected {expected} bytes, got {actual}")]
    WeightSize {
        ty: QuantType,
        n: usize,
        k: usize,
        expected: usize,
        actual: usize,
    },
    #[error("f32 weight [{n}, {k}]: expected {expected} values, got {actual}")]
    DenseWeightSize {
        n: usize,
        k: usize,
        expected: usize,
        actual: usize,
    },
    #[error("activations [{rows}, {k}]: expected {expected} values, got {actual}")]
    InputSize {
        rows: usize,
        k: usize,
        expected: usize,
        actual: usize,
    },
    #[error("output [{rows}, {n}]: expected {expected} values, got {actual}")]
    OutputSize {
        rows: usize,
        n: usize,
        expected: usize,
        actual: usize,
    },
    #[error("matmul sizes overflow usize: rows = {rows}, n = {n}, k = {k}")]
    Overflow { rows: usize, n: usize, k: usize },
    #[error("instruction set {0:?} is not available on this cpu")]
    IsaUnavailable(Isa),
    #[error("matrices multiplied together must share type and k: {first:?} and {other:?}")]
    MixedWeights {
        first: (QuantType, usize),
        other: (QuantType, usize),
    },
    #[error("row {row} of a matrix with {n} rows")]
    RowOutOfRange { row: usize, n: usize },
    #[error("attention: {0}")]
    AttentionShape(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The ggml block formats this crate multiplies, named as in ggml and candle's `GgmlDType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl QuantType {
    /// Every supported type, for tests and benchmarks.
    pub const ALL: [QuantType; 6] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q6K,
    ];

    /// Number of weights in one block.
    pub fn block_size(self) -> usize {
        match self {
            QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q8_0 => 32,
            QuantType::Q4K | QuantType::Q6K => 256,
        }
    }

    /// Bytes of one block in the GGUF / ggml layout.
    pub fn block_bytes(self) -> usize {
        match self {
            // f16 d + 16 bytes of nibbles
            QuantType::Q4_0 => 18,
            // f16 d + f16 m + 16 bytes of nibbles
            QuantType::Q4_1 => 20,
            // f16 d + 4 bytes of fifth bits + 16 bytes of nibbles
            QuantType::Q5_0 => 22,
            // f16 d + 32 i8
            QuantType::Q8_0 => 34,
            // f16 d + f16 dmin + 12 bytes of 6-bit scales and mins + 128 bytes of nibbles
            QuantType::Q4K => 144,
            // 128 bytes of low nibbles + 64 bytes of high bit pairs + 16 i8 scales + f16 d
            QuantType::Q6K => 210,
        }
    }

    /// Whether the format has a per-block minimum (an additive term) besides its scale.
    pub(crate) fn has_min(self) -> bool {
        matches!(self, QuantType::Q4_1 | QuantType::Q4K)
    }
}

/// Which implementation runs the kernel. [`Isa::best`] is what [`quantized_matmul`] uses;
/// the others are exposed so that tests and benchmarks can compare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, compiled on every target.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 plus the 256-bit AVX-512 VNNI dot product (`vpdpbusd`).
    Avx512Vnni,
}

impl Isa {
    /// Every implementation, available here or not.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    /// Whether this CPU can run it (checked at run time, not from compile flags).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::has_avx2(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => x86::has_avx2() && x86::has_vnni(),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512Vnni => false,
        }
    }

    /// The fastest implementation this CPU can run.
    pub fn best() -> Isa {
        [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Scalar)
    }
}

/// `y[r][j] = sum_i x[r][i] * W[j][i]` for `x: [rows, k]` f32 (row-major) and a quantized
/// `W: [n, k]` given as its raw GGUF bytes (each row is `k / block_size` consecutive blocks,
/// as returned by candle's `QTensor::data()`), writing `y: [rows, n]` f32 (row-major).
///
/// This repacks `W` on every call (see [`QuantizedWeight`]); a model repacks its weights
/// once and calls [`QuantizedWeight::matmul`].
///
/// The activations are quantized to 8 bits exactly as candle's `QMatMul` does, so results
/// match candle's up to float summation order. Meant for small `rows` (1 to 16); any count
/// works. Runs on rayon's global pool, split over the output columns.
pub fn quantized_matmul(
    ty: QuantType,
    weight: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<()> {
    quantized_matmul_with(Isa::best(), ty, weight, n, k, x, rows, y)
}

/// [`quantized_matmul`] on a chosen implementation; errors if this CPU lacks it.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul_with(
    isa: Isa,
    ty: QuantType,
    weight: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    rows: usize,
    y: &mut [f32],
) -> Result<()> {
    check_weight(ty, weight.len(), n, k)?;
    check_activations(n, k, x.len(), rows, y.len())?;
    QuantizedWeight::from_ggml(ty, weight, n, k)?.matmul_with(isa, x, rows, y)
}

impl QuantizedWeight {
    /// `y[r][j] = sum_i x[r][i] * W[j][i]` for `x: [rows, k]` and `y: [rows, n]` (f32,
    /// row-major), as [`quantized_matmul`] without the repacking.
    pub fn matmul(&self, x: &[f32], rows: usize, y: &mut [f32]) -> Result<()> {
        self.matmul_with(Isa::best(), x, rows, y)
    }

    /// [`QuantizedWeight::matmul`] on a chosen implementation; errors if this CPU lacks it.
    pub fn matmul_with(&self, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) -> Result<()> {
        Self::matmul_many_with(isa, &[self], x, rows, &mut [y])
    }

    /// The products of one input with several matrices of the same type and `k` (a
    /// layer's gate and up projections): the input is quantized once and every product's
    /// tasks run in one parallel pass. `ys[i]` is `[rows, weights[i].n()]`.
    pub fn matmul_many(weights: &[&QuantizedWeight], x: &[f32], rows: usize, ys: &mut [&mut [f32]]) -> Result<()> {
        Self::matmul_many_with(Isa::best(), weights, x, rows, ys)
    }

    /// [`QuantizedWeight::matmul_many`] on a chosen implementation.
    pub fn matmul_many_with(
        isa: Isa,
        weights: &[&QuantizedWeight],
        x: &[f32],
        rows: usize,
        ys: &mut [&mut [f32]],
    ) -> Result<()> {
        let Some(first) = weights.first() else {
            return Ok(());
        };
        let (ty, k) = (first.ty(), first.k());
        if ys.len() != weights.len() {
            return Err(Error::OutputSize {
                rows,
                n: first.n(),
                expected: weights.len(),
                actual: ys.len(),
            });
        }
        for (w, y) in weights.iter().zip(ys.iter()) {
            if w.ty() != ty || w.k() != k {
                return Err(Error::MixedWeights {
                    first: (ty, k),
                    other: (w.ty(), w.k()),
                });
            }
            check_activations(w.n(), k, x.len(), rows, y.len())?;
        }
        if !isa.is_available() {
            return Err(Error::IsaUnavailable(isa));
        }
        if rows == 0 {
            return Ok(());
        }
        let layout = *first.layout();
        let mode = Mode::new(ty, isa);
        let act = Activations::quantize(ty, &layout, mode.offset, x, rows, k);

        // Tasks own a range of output columns of one product in every row; disjoint `&mut`
        // pieces of the outputs keep that safe without transposing them afterwards.
        let mut tasks: Vec<(&QuantizedWeight, usize, Vec<&mut [f32]>)> = Vec::new();
        for (w, y) in weights.iter().zip(ys.iter_mut()) {
            let n = w.n();
            if n == 0 {
                continue;
            }
            let chunk = column_chunk(n);
            let start = tasks.len();
            for t in 0..n.div_ceil(chunk) {
                tasks.push((w, t * chunk, Vec::with_capacity(rows)));
            }
            for y_row in y.chunks_mut(n) {
                for (task, piece) in tasks[start..].iter_mut().zip(y_row.chunks_mut(chunk)) {
                    task.2.push(piece);
                }
            }
        }
        tasks.into_par_iter().for_each(|(w, first, mut outs)| {
            let cols = outs[0].len();
            let row_bytes = w.row_bytes();
            let weight = &w.bytes()[first * row_bytes..(first + cols) * row_bytes];
            match isa {
                Isa::Scalar => scalar::run(ty, &layout, weight, row_bytes, &act, &mut outs),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 | Isa::Avx512Vnni => x86::run(isa, ty, &layout, mode, weight, row_bytes, &act, &mut outs),
                #[cfg(not(target_arch = "x86_64"))]
                Isa::Avx2 | Isa::Avx512Vnni => unreachable!("checked by Isa::is_available"),
            }
        });
        Ok(())
    }
}

/// Checks that `len` bytes are a ggml matrix `[n, k]` of type `ty`.
pub(crate) fn check_weight(ty: QuantType, len: usize, n: usize, k: usize) -> Result<()> {
    let block_size = ty.block_size();
    if !k.is_multiple_of(block_size) {
        return Err(Error::KNotBlockAligned { ty, k, block_size });
    }
    let expected = (k / block_size)
        .checked_mul(ty.block_bytes())
        .and_then(|row| row.checked_mul(n))
        .ok_or(Error::Overflow { rows: 0, n, k })?;
    if len != expected {
        return Err(Error::WeightSize {
            ty,
            n,
            k,
            expected,
            actual: len,
        });
    }
    Ok(())
}

fn check_activations(n: usize, k: usize, x_len: usize, rows: usize, y_len: usize) -> Result<()> {
    let overflow = Error::Overflow { rows, n, k };
    let expected = rows.checked_mul(k).ok_or_else(|| overflow.clone())?;
    if x_len != expected {
        return Err(Error::InputSize {
            rows,
            k,
            expected,
            actual: x_len,
        });
    }
    let expected = rows.checked_mul(n).ok_or(overflow)?;
    if y_len != expected {
        return Err(Error::OutputSize {
            rows,
            n,
            expected,
            actual: y_len,
        });
    }
    Ok(())
}

/// Output columns per rayon task: enough tasks for work stealing to even out the two
/// threads (VM neighbours steal cycles), few enough that each task amortises its scratch.
fn column_chunk(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n.div_ceil(threads * 8).clamp(16, 512)
}

/// How the decoded weights are represented for one (type, implementation) pair.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mode {
    /// Decoded weights are unsigned bytes `q` standing for `q - offset`; the activation side
    /// subtracts `offset * sum(activation bytes)` per lane, which keeps integer sums exact.
    pub offset: i32,
    /// AVX2 Q8_0 only: `vpmaddubsw` needs an unsigned operand and `w + 128` would saturate
    /// its 16-bit sums, so the weights keep their sign and the kernel uses `|w|` and
    /// `sign(x, w)` instead.
    pub signed: bool,
}

impl Mode {
    fn new(ty: QuantType, isa: Isa) -> Mode {
        match ty {
            QuantType::Q4_0 => Mode {
                offset: 8,
                signed: false,
            },
            QuantType::Q5_0 => Mode {
                offset: 16,
                signed: false,
            },
            QuantType::Q4_1 | QuantType::Q4K => Mode {
                offset: 0,
                signed: false,
            },
            QuantType::Q6K => Mode {
                offset: 32,
                signed: false,
            },
            QuantType::Q8_0 if isa == Isa::Avx2 => Mode {
                offset: 0,
                signed: true,
            },
            QuantType::Q8_0 => Mode {
                offset: 128,
                signed: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_geometry_matches_ggml() {
        let sizes: Vec<_> = QuantType::ALL
            .iter()
            .map(|t| (t.block_size(), t.block_bytes()))
            .collect();
        assert_eq!(sizes, [(32, 18), (32, 20), (32, 22), (32, 34), (256, 144), (256, 210)]);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut y = [0f32; 2];
        let err = |ty, w: usize, n, k, x: usize, rows, y: &mut [f32]| {
            quantized_matmul(ty, &vec![0; w], n, k, &vec![0.; x], rows, y).unwrap_err()
        };
        assert!(matches!(
            err(QuantType::Q8_0, 0, 1, 33, 33, 1, &mut y[..1]),
            Error::KNotBlockAligned { k: 33, .. }
        ));
        assert!(matches!(
            err(QuantType::Q8_0, 33, 1, 32, 32, 1, &mut y[..1]),
            Error::WeightSize {
                expected: 34,
                actual: 33,
                ..
            }
        ));
        assert!(matches!(
            err(QuantType::Q8_0, 34, 1, 32, 31, 1, &mut y[..1]),
            Error::InputSize { expected: 32, .. }
        ));
        assert!(matches!(
            err(QuantType::Q8_0, 34, 1, 32, 32, 1, &mut y),
            Error::OutputSize {
                expected: 1,
                actual: 2,
                ..
            }
        ));
        assert!(matches!(
            err(QuantType::Q4K, 144, usize::MAX, 256, 256, 1, &mut y[..1]),
            Error::Overflow { .. }
        ));
    }

    #[test]
    fn empty_products_are_fine() {
        let mut y = [1f32; 3];
        quantized_matmul(QuantType::Q4_0, &[0; 54], 3, 32, &[], 0, &mut []).unwrap();
        // k = 0: every output is an empty sum.
        quantized_matmul(QuantType::Q4_0, &[], 3, 0, &[], 1, &mut y).unwrap();
        assert_eq!(y, [0.0; 3]);
    }
}
