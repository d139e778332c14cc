//! Where an architecture's weights come from: a GGUF file (tensors kept in their ggml
//! block formats) or safetensors checkpoints (single file or sharded through
//! `model.safetensors.index.json`; f32, f16 and bf16 converted to the compute dtype).
//! Every tensor's shape is checked against what the model's config implies, so a config
//! that disagrees with the weights is an error naming the tensor.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use tessera_kernels::dense::{Epilogue, WeightLayout};
use tessera_kernels::packed::PackedWeight;
use tessera_kernels::{QuantType, QuantizedWeight};

use crate::backend::cpu_kernels;
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// A source of named tensors.
pub enum WeightStore {
    Gguf(GgufFile),
    Safetensors {
        /// The checkpoint directory (for messages).
        dir: PathBuf,
        files: MmapedSafetensors,
        names: BTreeSet<String>,
    },
}

impl std::fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightStore({})", self.path().display())
    }
}

impl WeightStore {
    /// Opens the safetensors weights of a Hugging Face checkpoint directory.
    pub fn open_safetensors_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index, e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index, "weight_map is missing"))?;
            let mut shards = BTreeSet::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .filter(|f| !f.contains("..") && !f.starts_with('/'))
                    .ok_or_else(|| Error::format(&index, format!("tensor {name}: bad shard name")))?;
                shards.insert(file.to_owned());
            }
            shards.into_iter().map(|f| dir.join(f)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            return Err(Error::ModelNotFound(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            )));
        };
        for f in &files {
            if !f.exists() {
                return Err(Error::format(&index, format!("shard {} is missing", f.display())));
            }
        }
        // SAFETY: read-only maps of checkpoint files that are not modified while loaded.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| Error::format(dir, format!("invalid safetensors: {e}")))?;
        let names = st.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(WeightStore::Safetensors {
            dir: dir.to_path_buf(),
            files: st,
            names,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            WeightStore::Gguf(g) => g.path(),
            WeightStore::Safetensors { dir, .. } => dir,
        }
    }

    /// Bytes of all stored tensors (what one forward pass reads from memory).
    pub fn total_bytes(&self) -> usize {
        match self {
            WeightStore::Gguf(g) => g.tensor_infos().iter().map(|t| t.size).sum(),
            WeightStore::Safetensors { files, .. } => files.tensors().iter().map(|(_, v)| v.data().len()).sum(),
        }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self, WeightStore::Gguf(_))
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            WeightStore::Gguf(g) => g.tensor_info(name).is_some(),
            WeightStore::Safetensors { names, .. } => names.contains(name),
        }
    }

    fn check_shape(&self, name: &str, got: &[usize], want: &[usize]) -> Result<()> {
        if got != want {
            return Err(Error::format(
                self.path(),
                format!("tensor {name} has shape {got:?} but the config implies {want:?}"),
            ));
        }
        Ok(())
    }

    fn missing(&self, name: &str) -> Error {
        Error::format(self.path(), format!("tensor {name} is missing"))
    }

    /// A dense f32 tensor of the given shape.
    pub fn tensor(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        match self {
            WeightStore::Gguf(g) => {
                let info = g.tensor_info(name).ok_or_else(|| self.missing(name))?;
                self.check_shape(name, &info.dims, shape)?;
                g.dequantized(name, device)
            }
            WeightStore::Safetensors { files, names, .. } => {
                if !names.contains(name) {
                    return Err(self.missing(name));
                }
                let t = files
                    .load(name, device)
                    .map_err(|e| Error::format(self.path(), format!("tensor {name}: {e}")))?;
                self.check_shape(name, t.dims(), shape)?;
                Ok(t.to_dtype(DType::F32)?)
            }
        }
    }

    /// A weight matrix `[out, in]` for a [`Linear`], kept quantized when stored so: on the
    /// CPU, in a block format our kernels multiply, repacked for them straight from the file.
    fn weight(&self, name: &str, out: usize, inp: usize, device: &Device) -> Result<Weight> {
        if let WeightStore::Gguf(g) = self
            && cpu_kernels(device)
        {
            let info = g.tensor_info(name).ok_or_else(|| self.missing(name))?;
            self.check_shape(name, &info.dims, &[out, inp])?;
            if let Some(w) = g.quantized_weight(name)? {
                return Ok(Weight::Quantized(Arc::new(w)));
            }
        }
        Ok(Weight::new(self.matrix(name, out, inp, device)?))
    }

    /// A weight matrix `[out, in]` as candle's `QMatMul`, kept quantized when stored so.
    pub fn matrix(&self, name: &str, out: usize, inp: usize, device: &Device) -> Result<QMatMul> {
        match self {
            WeightStore::Gguf(g) => {
                let info = g.tensor_info(name).ok_or_else(|| self.missing(name))?;
                self.check_shape(name, &info.dims, &[out, inp])?;
                Ok(QMatMul::from_arc(Arc::new(g.qtensor(name, device)?))?)
            }
            WeightStore::Safetensors { .. } => Ok(QMatMul::Tensor(self.tensor(name, &[out, inp], device)?)),
        }
    }

    /// An embedding table `[vocab, dim]`.
    pub fn embedding(&self, name: &str, vocab: usize, dim: usize, device: &Device) -> Result<Embedding> {
        match self {
            WeightStore::Gguf(g) if cpu_kernels(device) => {
                let info = g.tensor_info(name).ok_or_else(|| self.missing(name))?;
                self.check_shape(name, &info.dims, &[vocab, dim])?;
                if let Some(table) = g.quantized_weight(name)? {
                    return Ok(Embedding::Repacked(Arc::new(table)));
                }
                Ok(Embedding::Quantized {
                    table: Arc::new(g.qtensor(name, device)?),
                    vocab,
                    dim,
                })
            }
            _ => Ok(Embedding::Dense(self.tensor(name, &[vocab, dim], device)?)),
        }
    }
}

/// Our CPU kernel's name for a ggml block type, where it has one.
pub(crate) fn kernel_type(dtype: GgmlDType) -> Option<QuantType> {
    Some(match dtype {
        GgmlDType::Q4_0 => QuantType::Q4_0,
        GgmlDType::Q4_1 => QuantType::Q4_1,
        GgmlDType::Q5_0 => QuantType::Q5_0,
        GgmlDType::Q8_0 => QuantType::Q8_0,
        GgmlDType::Q4K => QuantType::Q4K,
        GgmlDType::Q6K => QuantType::Q6K,
        _ => return None,
    })
}

/// `x W^T` through `tessera-kernels`, which reads each weight block once for a tile of
/// rows (candle re-reads the whole matrix per row, so beams would cost one pass each, and
/// its Q5_0 path has no SIMD).
fn multi_row_matmul(q: &QTensor, x: &Tensor) -> Result<Tensor> {
    let ty = kernel_type(q.dtype()).expect("caller checked the type");
    let (n, k) = q.shape().dims2()?;
    let rows = x.dim(0)?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; rows * n];
    tessera_kernels::quantized_matmul(ty, &q.data()?, n, k, &xs, rows, &mut y)?;
    Ok(Tensor::from_vec(y, (rows, n), x.device())?)
}

/// `x W^T` through `tessera-kernels` with weights repacked at load time.
fn repacked_matmul(w: &QuantizedWeight, x: &Tensor) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let mut y = vec![0f32; rows * w.n()];
    w.matmul(&xs, rows, &mut y)?;
    Ok(Tensor::from_vec(y, (rows, w.n()), x.device())?)
}

/// Row counts above which a quantized matrix is dequantized for one dense GEMM.
const DEQUANTIZE_ABOVE_ROWS: usize = 16;

/// `y = x W^T (+ b)`, with `W` dense or in a ggml block format.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    Matrix(QMatMul),
    /// Dense f32 on a CPU with AVX-512: packed once for `tessera_kernels::packed`, whose
    /// product is faster than the `gemm` crate's at every row count Tessera runs (it
    /// repacks the whole matrix on every call; see `tessera-kernels`' `bench_dense`).
    Packed(Arc<PackedWeight>),
    /// A ggml block format on the CPU, repacked once for `tessera_kernels`' quantized
    /// product (whose decoding of the file's layout was half its time with several rows).
    Quantized(Arc<QuantizedWeight>),
}

impl Weight {
    fn new(weight: QMatMul) -> Self {
        if let QMatMul::QTensor(q) = &weight
            && cpu_kernels(&q.device())
            && let Some(ty) = kernel_type(q.dtype())
            && let Ok((n, k)) = q.shape().dims2()
            && let Ok(data) = q.data()
            && let Ok(w) = QuantizedWeight::from_ggml(ty, &data, n, k)
        {
            return Weight::Quantized(Arc::new(w));
        }
        if let QMatMul::Tensor(w) = &weight
            && tessera_kernels::packed::is_accelerated()
            && let Ok((n, k)) = w.dims2()
            && let Ok(Some(packed)) = with_cpu_f32(w, |v| Ok(PackedWeight::pack(v, n, k, WeightLayout::OutIn)?))
        {
            return Weight::Packed(Arc::new(packed));
        }
        Weight::Matrix(weight)
    }
}

impl Linear {
    pub fn load(store: &WeightStore, name: &str, out: usize, inp: usize, bias: bool, device: &Device) -> Result<Self> {
        let weight = store.weight(&format!("{name}.weight"), out, inp, device)?;
        let bias = if bias {
            Some(store.tensor(&format!("{name}.bias"), &[out], device)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// The weight tensor `name` (full name) with no bias.
    pub fn load_matrix(store: &WeightStore, name: &str, out: usize, inp: usize, device: &Device) -> Result<Self> {
        Ok(Linear {
            weight: store.weight(name, out, inp, device)?,
            bias: None,
        })
    }

    pub fn from_qmatmul(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Linear {
            weight: Weight::new(weight),
            bias,
        }
    }

    /// A linear over f16 weights (an f16 checkpoint) for f32 activations on the CPU: with
    /// AVX-512 the weights stay f16, packed, and are widened inside the product (exact:
    /// the same results as f32 weights, half the bytes read per product and held in
    /// memory); otherwise they are widened to f32 here.
    pub fn from_f16_weights(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if weight.dtype() == DType::F16 && cpu_kernels(weight.device()) && tessera_kernels::packed::is_accelerated() {
            let (n, k) = weight.dims2()?;
            let weight = weight.contiguous()?;
            let (storage, layout) = weight.storage_and_layout();
            if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F16(v)), Some((a, b))) =
                (&*storage, layout.contiguous_offsets())
            {
                let packed = PackedWeight::pack_f16(&v[a..b], n, k, WeightLayout::OutIn)?;
                return Ok(Linear {
                    weight: Weight::Packed(Arc::new(packed)),
                    bias,
                });
            }
        }
        Ok(Self::from_qmatmul(QMatMul::Tensor(weight.to_dtype(DType::F32)?), bias))
    }

    /// One linear computing `[self(x), other(x)]`, when both store their weights the
    /// same way (same block type, both with or without bias). Stacking rows of ggml
    /// blocks is a byte concatenation, so nothing is requantized.
    pub fn stack(&self, other: &Linear) -> Result<Option<Linear>> {
        let bias = match (&self.bias, &other.bias) {
            (Some(a), Some(b)) => Some(Tensor::cat(&[a, b], 0)?),
            (None, None) => None,
            _ => return Ok(None),
        };
        let weight = match (&self.weight, &other.weight) {
            (Weight::Packed(a), Weight::Packed(b)) if a.k() == b.k() => {
                let mut values = a.unpack();
                values.extend_from_slice(&b.unpack());
                Weight::Packed(Arc::new(PackedWeight::pack(
                    &values,
                    a.n() + b.n(),
                    a.k(),
                    WeightLayout::OutIn,
                )?))
            }
            (Weight::Quantized(a), Weight::Quantized(b)) => match a.stack(b) {
                Some(w) => Weight::Quantized(Arc::new(w)),
                None => return Ok(None),
            },
            (Weight::Matrix(QMatMul::Tensor(a)), Weight::Matrix(QMatMul::Tensor(b))) => {
                Weight::Matrix(QMatMul::Tensor(Tensor::cat(&[a, b], 0)?))
            }
            (Weight::Matrix(QMatMul::QTensor(a)), Weight::Matrix(QMatMul::QTensor(b)))
                if a.dtype() == b.dtype() && cpu_kernels(&a.device()) =>
            {
                let ((n1, k1), (n2, k2)) = (a.shape().dims2()?, b.shape().dims2()?);
                if k1 != k2 {
                    return Ok(None);
                }
                let mut bytes = a.data()?.into_owned();
                bytes.extend_from_slice(&b.data()?);
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    a.dtype(),
                    &bytes,
                    vec![n1 + n2, k1],
                    &Device::Cpu,
                )?;
                Weight::Matrix(QMatMul::from_arc(Arc::new(q))?)
            }
            _ => return Ok(None),
        };
        Ok(Some(Linear { weight, bias }))
    }

    /// Rows `ids` of `W` (`[ids.len(), in]`) when the weights are packed, so that a tied
    /// token embedding can be looked up here instead of being held a second time; `None`
    /// for other storage.
    pub fn packed_rows(&self, ids: &[u32]) -> Result<Option<Tensor>> {
        let Weight::Packed(p) = &self.weight else {
            return Ok(None);
        };
        let mut values = Vec::with_capacity(ids.len() * p.k());
        for &id in ids {
            let row = p
                .row(id as usize)
                .ok_or_else(|| Error::InvalidInput(format!("row {id} of a linear layer with {} outputs", p.n())))?;
            values.extend_from_slice(&row);
        }
        Ok(Some(Tensor::from_vec(values, (ids.len(), p.k()), &Device::Cpu)?))
    }

    /// `epilogue(y + b)` for a product `y = x Wᵀ` computed elsewhere.
    fn finish(&self, y: Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        crate::layers::apply_epilogue(&y, epilogue)
    }

    /// `x`: `[n, in]` -> `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Epilogue::None)
    }

    /// `epilogue(x Wᵀ + b)`. Dense f32 weights on the CPU go through `tessera_kernels`
    /// (`packed`, or `dense` without AVX-512), which write bias, product and activation
    /// into one buffer.
    pub fn forward_with(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let weight = match &self.weight {
            Weight::Packed(p) => return packed_cpu(x, p, self.bias.as_ref(), epilogue),
            Weight::Quantized(q) => return self.finish(repacked_matmul(q, x)?, epilogue),
            Weight::Matrix(w) => w,
        };
        if let QMatMul::Tensor(w) = weight
            && let Some(y) = dense_cpu(x, w, self.bias.as_ref(), epilogue)?
        {
            return Ok(y);
        }
        let y = match weight {
            QMatMul::Tensor(w) => x.matmul(&w.t()?)?,
            QMatMul::QTensor(q) if cpu_kernels(x.device()) && kernel_type(q.dtype()).is_some() => {
                multi_row_matmul(q, x)?
            }
            // For block types our kernel lacks, a long prefill is faster through one
            // dequantization and a dense GEMM than through candle's per-row dot products.
            QMatMul::QTensor(q) if cpu_kernels(x.device()) && x.dim(0)? > DEQUANTIZE_ABOVE_ROWS => {
                x.matmul(&q.dequantize(x.device())?.t()?)?
            }
            q => x.apply(q)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        crate::layers::apply_epilogue(&y, epilogue)
    }
}

impl Projections {
    /// When every group is a repacked matrix of one block type (gate and up): their
    /// products with one quantization of `x` and in one parallel pass, without bias.
    fn shared_input_products(&self, x: &Tensor) -> Result<Option<Vec<Tensor>>> {
        if self.groups.len() < 2 || !cpu_kernels(x.device()) {
            return Ok(None);
        }
        let Some(weights) = self
            .groups
            .iter()
            .map(|(lin, _)| match &lin.weight {
                Weight::Quantized(w) => Some(w.as_ref()),
                _ => None,
            })
            .collect::<Option<Vec<&QuantizedWeight>>>()
        else {
            return Ok(None);
        };
        if weights
            .windows(2)
            .any(|w| w[0].ty() != w[1].ty() || w[0].k() != w[1].k())
        {
            return Ok(None);
        }
        let rows = x.dim(0)?;
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut ys: Vec<Vec<f32>> = weights.iter().map(|w| vec![0f32; rows * w.n()]).collect();
        let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
        QuantizedWeight::matmul_many(&weights, &xs, rows, &mut outs)?;
        let ys = ys
            .into_iter()
            .zip(&weights)
            .map(|(y, w)| Ok(Tensor::from_vec(y, (rows, w.n()), x.device())?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(ys))
    }
}

/// Several projections of the same input (q/k/v, gate/up): adjacent ones whose weights
/// are stored alike run as one matrix, so the input is quantized once and the kernel is
/// dispatched once per group.
#[derive(Debug, Clone)]
pub struct Projections {
    /// Each group and the output widths it produces, in order.
    groups: Vec<(Linear, Vec<usize>)>,
}

impl Projections {
    /// Projections kept as separate matrices.
    pub fn separate(parts: Vec<(Linear, usize)>) -> Self {
        Projections {
            groups: parts.into_iter().map(|(lin, w)| (lin, vec![w])).collect(),
        }
    }

    pub fn new(parts: Vec<(Linear, usize)>) -> Result<Self> {
        let mut groups: Vec<(Linear, Vec<usize>)> = Vec::new();
        for (lin, width) in parts {
            if let Some((last, widths)) = groups.last_mut()
                && let Some(stacked) = last.stack(&lin)?
            {
                *last = stacked;
                widths.push(width);
                continue;
            }
            groups.push((lin, vec![width]));
        }
        Ok(Projections { groups })
    }

    /// The projections of `x`, one tensor per part, in the order given to `new`.
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let mut out = Vec::new();
        let shared = self.shared_input_products(x)?;
        for (g, (lin, widths)) in self.groups.iter().enumerate() {
            let y = match &shared {
                Some(ys) => lin.finish(ys[g].clone(), Epilogue::None)?,
                None => lin.forward(x)?,
            };
            if widths.len() == 1 {
                out.push(y);
                continue;
            }
            // Column slices of a many-row output are strided; the element-wise ops that
            // follow are much slower on strided views than one copy into place.
            let rows = y.dim(0)?;
            let mut start = 0;
            for &w in widths {
                let part = y.narrow(1, start, w)?;
                out.push(if rows > 1 { part.contiguous()? } else { part });
                start += w;
            }
        }
        Ok(out)
    }
}

/// A token embedding table. GGUF tables stay quantized and only the looked-up rows are
/// dequantized, so a tied 150k-token vocabulary is not held twice in memory.
#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    /// On the CPU in a block format our kernels multiply: shared with a tied output
    /// projection.
    Repacked(Arc<QuantizedWeight>),
    Quantized {
        table: Arc<QTensor>,
        vocab: usize,
        dim: usize,
    },
}

impl Embedding {
    pub fn vocab_size(&self) -> usize {
        match self {
            Embedding::Dense(t) => t.dim(0).unwrap_or(0),
            Embedding::Repacked(table) => table.n(),
            Embedding::Quantized { vocab, .. } => *vocab,
        }
    }

    /// `ids` -> `[ids.len(), dim]`.
    pub fn forward(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        match self {
            Embedding::Dense(t) => {
                let idx = Tensor::new(ids, device)?;
                Ok(t.index_select(&idx, 0)?)
            }
            Embedding::Repacked(table) => {
                let ids: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
                let values = table.dequantize_rows(&ids)?;
                Ok(Tensor::from_vec(values, (ids.len(), table.k()), &Device::Cpu)?.to_device(device)?)
            }
            Embedding::Quantized { table, dim, .. } => {
                let dtype = table.dtype();
                let row_bytes = dim / dtype.block_size() * dtype.type_size();
                let data = table.data()?;
                let rows = ids
                    .iter()
                    .map(|&id| {
                        let start = id as usize * row_bytes;
                        let raw = &data[start..start + row_bytes];
                        let q =
                            candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, raw, vec![*dim], &Device::Cpu)?;
                        q.dequantize(&Device::Cpu)
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Ok(Tensor::stack(&rows, 0)?.to_device(device)?)
            }
        }
    }

    /// The table as an output projection (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        Ok(match self {
            Embedding::Dense(t) => Linear::from_qmatmul(QMatMul::Tensor(t.clone()), None),
            Embedding::Repacked(table) => Linear {
                weight: Weight::Quantized(table.clone()),
                bias: None,
            },
            Embedding::Quantized { table, .. } => Linear::from_qmatmul(QMatMul::from_arc(table.clone())?, None),
        })
    }
}

/// The values of a CPU f32 tensor, made contiguous.
pub(crate) fn with_cpu_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<Option<T>> {
    use candle_core::{CpuStorage, Storage};
    if !cpu_kernels(t.device()) || t.dtype() != DType::F32 {
        return Ok(None);
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(Some(f(&v[a..b])?)),
        _ => Ok(None),
    }
}

/// The f32 CPU path of [`Linear::forward_with`] for unpacked weights; `None` when `x`, `w`
/// or the bias is elsewhere or of another dtype.
fn dense_cpu(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, epilogue: Epilogue) -> Result<Option<Tensor>> {
    let (rows, k) = x.dims2()?;
    let (n, _) = w.dims2()?;
    let product = with_cpu_f32(x, |xv| {
        with_cpu_f32(w, |wv| {
            let run = |bv: Option<&[f32]>| {
                Ok(tessera_kernels::dense::linear_f32(
                    xv,
                    rows,
                    k,
                    wv,
                    n,
                    WeightLayout::OutIn,
                    bv,
                    epilogue,
                )?)
            };
            match bias {
                Some(b) => with_cpu_f32(b, |bv| run(Some(bv))),
                None => run(None).map(Some),
            }
        })
    })?;
    match product.flatten().flatten() {
        Some(out) => Ok(Some(Tensor::from_vec(out, (rows, n), &Device::Cpu)?)),
        None => Ok(None),
    }
}

/// [`Linear::forward_with`] for packed weights: `x` must be an f32 CPU tensor.
fn packed_cpu(x: &Tensor, w: &PackedWeight, bias: Option<&Tensor>, epilogue: Epilogue) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let product = with_cpu_f32(x, |xv| {
        let run = |bv: Option<&[f32]>| Ok(tessera_kernels::packed::linear_packed(xv, rows, w, bv, epilogue)?);
        match bias {
            Some(b) => with_cpu_f32(b, |bv| run(Some(bv))),
            None => run(None).map(Some),
        }
    })?;
    match product.flatten() {
        Some(out) => Ok(Tensor::from_vec(out, (rows, w.n()), &Device::Cpu)?),
        None => Err(Error::Tensor(candle_core::Error::Msg(format!(
            "linear layer with CPU f32 weights got a {:?} input on {:?}",
            x.dtype(),
            x.device().location()
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;

    fn tensor(rows: usize, cols: usize, seed: u64) -> Tensor {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as u64 + 1) * (seed * 2 + 1) * 2_654_435_761) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    }

    /// Whatever storage `Linear` picks for dense f32 weights on this CPU (packed with
    /// AVX-512, the `gemm` crate otherwise), it computes candle's `act(x Wᵀ + b)`.
    #[test]
    fn dense_linear_layers_equal_candles_arithmetic() {
        let (w, b) = (tensor(70, 33, 1), tensor(1, 70, 2).squeeze(0).unwrap());
        let linear = Linear::from_qmatmul(QMatMul::Tensor(w.clone()), Some(b.clone()));
        for rows in [1, 5, 50] {
            let x = tensor(rows, 33, 3 + rows as u64);
            let plain = x.matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
            for epilogue in [
                Epilogue::None,
                Epilogue::GeluErf,
                Epilogue::GeluTanh,
                Epilogue::QuickGelu,
            ] {
                let want = crate::layers::apply_epilogue(&plain, epilogue).unwrap();
                let got = linear.forward_with(&x, epilogue).unwrap();
                assert!(max_diff(&got, &want) < 1e-5, "{rows} rows, {epilogue:?}");
            }
        }
    }

    /// f16 weights for f32 activations compute exactly what the widened f32 weights do,
    /// whether kept f16 (packed) or widened at load; stacking keeps that.
    #[test]
    fn f16_weights_equal_their_f32_widening() {
        let w16 = tensor(40, 24, 7).to_dtype(DType::F16).unwrap();
        let w32 = w16.to_dtype(DType::F32).unwrap();
        let b = tensor(1, 40, 8).squeeze(0).unwrap();
        let half = Linear::from_f16_weights(w16.clone(), Some(b.clone())).unwrap();
        let full = Linear::from_qmatmul(QMatMul::Tensor(w32), Some(b));
        let x = tensor(5, 24, 9);
        let (h, f) = (half.forward(&x).unwrap(), full.forward(&x).unwrap());
        assert_eq!(max_diff(&h, &f), 0.0);
        let a = Linear::from_f16_weights(w16, None).unwrap();
        let c = Linear::from_f16_weights(tensor(3, 24, 10).to_dtype(DType::F16).unwrap(), None).unwrap();
        let stacked = a.stack(&c).unwrap().unwrap();
        let want = Tensor::cat(&[a.forward(&x).unwrap(), c.forward(&x).unwrap()], 1).unwrap();
        assert_eq!(max_diff(&stacked.forward(&x).unwrap(), &want), 0.0);
    }

    #[test]
    fn stacked_and_packed_rows_are_the_parts() {
        let (w1, w2) = (tensor(20, 16, 4), tensor(9, 16, 5));
        let a = Linear::from_qmatmul(QMatMul::Tensor(w1.clone()), None);
        let b = Linear::from_qmatmul(QMatMul::Tensor(w2.clone()), None);
        let stacked = a.stack(&b).unwrap().unwrap();
        let x = tensor(3, 16, 6);
        let want = Tensor::cat(&[a.forward(&x).unwrap(), b.forward(&x).unwrap()], 1).unwrap();
        assert!(max_diff(&stacked.forward(&x).unwrap(), &want) < 1e-6);
        match a.packed_rows(&[0, 19, 7]).unwrap() {
            Some(rows) => {
                let want = w1
                    .index_select(&Tensor::new(&[0u32, 19, 7], &Device::Cpu).unwrap(), 0)
                    .unwrap();
                assert_eq!(max_diff(&rows, &want), 0.0);
                assert!(a.packed_rows(&[20]).is_err(), "a row past the end is an error");
            }
            None => assert!(
                !tessera_kernels::packed::is_accelerated(),
                "f32 CPU weights are packed with AVX-512"
            ),
        }
    }

    /// GGUF-style quantized weights become repacked kernel matrices; projections of one
    /// input (gate and up) computed together equal the projections one by one, and a
    /// repacked embedding table looks rows up as candle dequantizes them.
    #[test]
    fn quantized_linears_and_embeddings_agree_with_their_parts_and_candle() {
        let quantize = |w: &Tensor, dtype| Arc::new(QTensor::quantize(w, dtype).unwrap());
        let (w1, w2) = (tensor(40, 64, 1), tensor(24, 64, 2));
        let (q1, q2) = (quantize(&w1, GgmlDType::Q5_0), quantize(&w2, GgmlDType::Q5_0));
        let a = Linear::from_qmatmul(QMatMul::from_arc(q1.clone()).unwrap(), None);
        let b = Linear::from_qmatmul(
            QMatMul::from_arc(q2).unwrap(),
            Some(tensor(1, 24, 3).squeeze(0).unwrap()),
        );
        assert!(matches!(a.weight, Weight::Quantized(_)), "kernel formats are repacked");
        let x = tensor(3, 64, 4);
        let (ya, yb) = (a.forward(&x).unwrap(), b.forward(&x).unwrap());
        let both = Projections::separate(vec![(a.clone(), 40), (b.clone(), 24)])
            .forward(&x)
            .unwrap();
        assert_eq!(max_diff(&both[0], &ya), 0.0);
        assert_eq!(max_diff(&both[1], &yb), 0.0);
        // candle's own quantized product, within its activation rounding.
        let want = x.apply(&QMatMul::from_arc(q1.clone()).unwrap()).unwrap();
        assert!(max_diff(&ya, &want) < 1e-4, "{}", max_diff(&ya, &want));

        let table = QuantizedWeight::from_ggml(QuantType::Q5_0, &q1.data().unwrap(), 40, 64).unwrap();
        let embedding = Embedding::Repacked(Arc::new(table));
        let rows = embedding.forward(&[3, 39, 0], &Device::Cpu).unwrap();
        let want = q1
            .dequantize(&Device::Cpu)
            .unwrap()
            .index_select(&Tensor::new(&[3u32, 39, 0], &Device::Cpu).unwrap(), 0)
            .unwrap();
        assert_eq!(max_diff(&rows, &want), 0.0);
        assert!(embedding.forward(&[40], &Device::Cpu).is_err());
        let head = embedding.as_linear().unwrap();
        assert_eq!(max_diff(&head.forward(&x).unwrap(), &ya), 0.0);
    }
}
