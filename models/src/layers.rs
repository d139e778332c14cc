//! Building blocks shared by the architectures: normalisation, rotary position
//! embeddings, and causal attention over the engine's KV cache.

use candle_core::{D, DType, Device, Tensor};

use crate::Result;
use crate::kv_cache::SeqCache;

/// Root-mean-square layer norm (Zhang & Sennrich 2019), as Llama and Qwen use it.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32)?)
    }
}

/// Layer norm with bias (StarCoder2, Whisper, CLIP).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        LayerNorm { weight, bias, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            x,
            &self.weight,
            &self.bias,
            self.eps as f32,
        )?)
    }
}

/// Llama 3's rope frequency scaling ("llama3" rope_type in config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// Rotary position embeddings (Su et al. 2021, RoFormer), precomputed for every position.
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
    /// Rotate adjacent pairs (GGUF `llama`, whose q/k rows llama.cpp permuted) rather than
    /// the two halves of each head (Hugging Face layout, GGUF `qwen2`).
    interleaved: bool,
}

impl Rotary {
    /// `freq_factors`: per-frequency divisors (GGUF `rope_freqs.weight`), when present.
    pub fn new(
        head_dim: usize,
        theta: f64,
        max_positions: usize,
        scaling: Option<&Llama3RopeScaling>,
        freq_factors: Option<&[f32]>,
        interleaved: bool,
        device: &Device,
    ) -> Result<Self> {
        let mut inv_freq: Vec<f64> = (0..head_dim / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
            .collect();
        if let Some(s) = scaling {
            let low_wavelen = s.original_max_position_embeddings as f64 / s.low_freq_factor;
            let high_wavelen = s.original_max_position_embeddings as f64 / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                *f = if wavelen < high_wavelen {
                    *f
                } else if wavelen > low_wavelen {
                    *f / s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings as f64 / wavelen - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * *f / s.factor + smooth * *f
                };
            }
        }
        if let Some(ff) = freq_factors {
            for (f, d) in inv_freq.iter_mut().zip(ff) {
                *f /= *d as f64;
            }
        }
        let inv: Vec<f32> = inv_freq.iter().map(|&f| f as f32).collect();
        let inv = Tensor::from_vec(inv, (1, head_dim / 2), device)?;
        let pos = Tensor::arange(0u32, max_positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_positions, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Rotary {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
            interleaved,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// `x`: `[batch, heads, head_dim]`, every sequence at position `pos`.
    pub fn apply_same_position(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, h, d) = x.dims3()?;
        let cos = self.cos.narrow(0, pos, 1)?;
        let sin = self.sin.narrow(0, pos, 1)?;
        let x4 = x.reshape((b, h, 1, d))?.contiguous()?;
        let y = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&x4, &cos, &sin)?
        };
        Ok(y.reshape((b, h, d))?)
    }

    /// `x`: `[heads, n, head_dim]` at positions `start..start + n`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        let cos = self.cos.narrow(0, start, n)?;
        let sin = self.sin.narrow(0, start, n)?;
        let x4 = x.unsqueeze(0)?.contiguous()?;
        let y = if self.interleaved {
            candle_nn::rotary_emb::rope_i(&x4, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope(&x4, &cos, &sin)?
        };
        Ok(y.squeeze(0)?)
    }
}

/// Causal scaled-dot-product attention of one sequence's new queries over its cache.
///
/// `q`: `[heads, n, head_dim]`, `k`/`v`: `[kv_heads, past + n, head_dim]`. Grouped-query
/// attention is done by folding each group of query heads into the row dimension, so the
/// keys and values are never repeated in memory. Returns `[n, heads * head_dim]`.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (heads, n, head_dim) = q.dims3()?;
    let (kv_heads, total, _) = k.dims3()?;
    let group = heads / kv_heads;
    let past = total - n;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // [kv_heads, group * n, head_dim]
    let q = q.reshape((kv_heads, group * n, head_dim))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = if n > 1 {
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (1, n, total), q.device())?;
        scores
            .reshape((kv_heads * group, n, total))?
            .broadcast_add(&mask)?
            .reshape((kv_heads, group * n, total))?
    } else {
        scores
    };
    let probs = softmax_last_dim(&scores)?;
    let out = probs.matmul(v)?; // [kv_heads, group * n, head_dim]
    Ok(out
        .reshape((heads, n, head_dim))?
        .transpose(0, 1)?
        .reshape((n, heads * head_dim))?)
}

/// One attention layer's work for one sequence of a batch: rotate, extend the cache's
/// keys/values with the new ones, attend. Returns the attention output and the new
/// keys/values (to be appended to the cache once every layer has run).
pub struct AttentionInput<'a> {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub cache: &'a SeqCache,
    pub layer: usize,
}

pub fn attend(rotary: &Rotary, inp: AttentionInput<'_>) -> Result<(Tensor, Tensor, Tensor)> {
    let start = inp.cache.len();
    let q = rotary.apply(&inp.q, start)?;
    let k = rotary.apply(&inp.k, start)?;
    let v = inp.v.contiguous()?;
    let (k_all, v_all) = inp.cache.gather_with(inp.layer, &k, &v)?;
    let out = causal_attention(&q, &k_all, &v_all)?;
    Ok((out, k, v))
}

/// Splits `[n, heads * head_dim]` into `[heads, n, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(x.reshape((n, heads, head_dim))?.transpose(0, 1)?.contiguous()?)
}

/// Softmax over the last dimension. On CPU in f32 through the vectorised kernel of
/// `tessera_kernels::elementwise` (candle's runs libm's scalar `expf` per element).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&CpuElementwise::Softmax)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}

/// GELU, exact (erf) form; vectorised on CPU in f32 like [`softmax_last_dim`].
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&CpuElementwise::GeluErf)?);
    }
    Ok(x.gelu_erf()?)
}

/// `epilogue` of `tessera_kernels::dense` on any device (the CPU f32 path of
/// [`crate::weights::Linear`] runs it inside the product instead).
pub fn apply_epilogue(x: &Tensor, epilogue: tessera_kernels::dense::Epilogue) -> Result<Tensor> {
    use tessera_kernels::dense::Epilogue;
    Ok(match epilogue {
        Epilogue::None => x.clone(),
        Epilogue::GeluErf => gelu_erf(x)?,
        Epilogue::GeluTanh => x.gelu()?,
        Epilogue::QuickGelu => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
    })
}

enum CpuElementwise {
    Softmax,
    GeluErf,
}

impl candle_core::CustomOp1 for CpuElementwise {
    fn name(&self) -> &'static str {
        match self {
            CpuElementwise::Softmax => "tessera-softmax",
            CpuElementwise::GeluErf => "tessera-gelu-erf",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("{}: f32 input only", self.name())
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("{}: contiguous input only", self.name())
        };
        let mut out = data[start..end].to_vec();
        match self {
            CpuElementwise::Softmax => {
                let row = layout.dims().last().copied().unwrap_or(1);
                tessera_kernels::elementwise::softmax_rows(&mut out, row);
            }
            CpuElementwise::GeluErf => tessera_kernels::elementwise::gelu_erf(&mut out),
        }
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(x, D::Minus1)?)
}
