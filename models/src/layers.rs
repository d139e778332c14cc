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
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>) -> Result<Tensor> {
    let (heads, n, head_dim) = q.dims3()?;
    let (kv_heads, total, _) = k.dims3()?;
    // One new token under a sliding window sees only the window's last positions: narrow
    // to them rather than mask.
    if let Some(w) = window.filter(|&w| n == 1 && w < total) {
        return causal_attention(q, &k.narrow(1, total - w, w)?, &v.narrow(1, total - w, w)?, None);
    }
    let group = heads / kv_heads;
    let past = total - n;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // [kv_heads, group * n, head_dim]
    let q = q.reshape((kv_heads, group * n, head_dim))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = if n > 1 {
        // Query `i` is at position `past + i`; it sees `j <= past + i`, and under a window
        // only `j > past + i - window`.
        let first = |i: usize| window.map_or(0, |w| (past + i + 1).saturating_sub(w));
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j > past + i || j < first(i) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
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

/// New tokens up to this many attend through [`blockwise_attention`] (decode steps and
/// keystroke-sized prefills); longer prefills concatenate the cache once and use matrix
/// products, which suit many queries better.
pub const BLOCKWISE_MAX_TOKENS: usize = 16;

/// Attention of `inp`'s new tokens over its cache and themselves, causally, and within
/// `window` positions when the model slides.
pub fn attend(rotary: &Rotary, inp: AttentionInput<'_>, window: Option<usize>) -> Result<(Tensor, Tensor, Tensor)> {
    let start = inp.cache.len();
    let q = rotary.apply(&inp.q, start)?;
    let k = rotary.apply(&inp.k, start)?;
    let v = inp.v.contiguous()?;
    let (heads, n, head_dim) = q.dims3()?;
    if n <= BLOCKWISE_MAX_TOKENS {
        let queries = q.transpose(0, 1)?.contiguous()?;
        let shape = tessera_kernels::attention::Heads {
            query: heads,
            key_value: k.dim(0)?,
            dim: head_dim,
        };
        let input = BlockwiseInput {
            queries: &queries,
            cache: inp.cache,
            keys: &k,
            values: &v,
        };
        let scale = 1.0 / (head_dim as f32).sqrt();
        if let Some(out) = blockwise_attention(shape, scale, window, inp.layer, &[input])? {
            return Ok((out, k, v));
        }
    }
    let (k_all, v_all) = inp.cache.gather_with(inp.layer, &k, &v)?;
    let out = causal_attention(&q, &k_all, &v_all, window)?;
    Ok((out, k, v))
}

/// One sequence's part of [`blockwise_attention`].
pub struct BlockwiseInput<'a> {
    /// Position-encoded queries of the new tokens, `[n, heads, head_dim]`.
    pub queries: &'a Tensor,
    pub cache: &'a SeqCache,
    /// The new tokens' keys and values, `[kv_heads, n, head_dim]`.
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
}

/// New tokens attending over their sequence's cache and themselves (causally), with the
/// cache's blocks read where they lie (`tessera_kernels::attention`) instead of
/// concatenated first. CPU and f32 only: `None` elsewhere, where the caller uses the
/// tensor path. Returns `[Σ n, heads * head_dim]`, sequences in order.
pub fn blockwise_attention(
    heads: tessera_kernels::attention::Heads,
    scale: f32,
    window: Option<usize>,
    layer: usize,
    inputs: &[BlockwiseInput<'_>],
) -> Result<Option<Tensor>> {
    use candle_core::{CpuStorage, Storage};
    use tessera_kernels::attention::{KvSpan, SequenceAttention, attend};

    let Some(first) = inputs.first() else {
        return Ok(None);
    };
    if !crate::backend::cpu_kernels(first.queries.device()) || first.queries.dtype() != DType::F32 {
        return Ok(None);
    }
    // Every tensor read, made contiguous where it is not already (a no-op for the cache's
    // blocks), then its storage locked for reading while the kernel runs.
    let mut tensors: Vec<Tensor> = Vec::new();
    let mut span_lens: Vec<Vec<usize>> = Vec::with_capacity(inputs.len());
    for input in inputs {
        tensors.push(input.queries.contiguous()?);
        let mut lens = Vec::new();
        for (k, v, len) in input.cache.layer_blocks(layer) {
            tensors.push(k.contiguous()?);
            tensors.push(v.contiguous()?);
            lens.push(len);
        }
        tensors.push(input.keys.contiguous()?);
        tensors.push(input.values.contiguous()?);
        lens.push(input.keys.dim(1)?);
        span_lens.push(lens);
    }
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: Vec<&[f32]> = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        match (&**storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => slices.push(&v[a..b]),
            _ => return Ok(None),
        }
    }
    let token_width = heads.query * heads.dim;
    let total_tokens: usize = slices_per_query(&slices, &span_lens)
        .map(|q| q.len() / token_width.max(1))
        .sum();
    let mut out = vec![0f32; total_tokens * token_width];
    let mut rest_out = out.as_mut_slice();
    let mut next = slices.iter();
    let mut sequences = Vec::with_capacity(inputs.len());
    for lens in &span_lens {
        let queries = *next.next().expect("a query slice per input");
        let spans = lens
            .iter()
            .map(|&len| KvSpan {
                keys: next.next().expect("keys per span"),
                values: next.next().expect("values per span"),
                len,
            })
            .collect();
        let (mine, later) = rest_out.split_at_mut(queries.len().min(rest_out.len()));
        rest_out = later;
        sequences.push(SequenceAttention {
            queries,
            spans,
            out: mine,
        });
    }
    attend(heads, scale, window, &mut sequences)?;
    drop(sequences);
    drop(guards);
    Ok(Some(Tensor::from_vec(
        out,
        (total_tokens, token_width),
        first.queries.device(),
    )?))
}

/// The query slices among [`blockwise_attention`]'s flattened tensors.
fn slices_per_query<'s>(slices: &'s [&'s [f32]], span_lens: &'s [Vec<usize>]) -> impl Iterator<Item = &'s [f32]> {
    let mut at = 0;
    span_lens.iter().map(move |lens| {
        let q = slices[at];
        at += 1 + 2 * lens.len();
        q
    })
}

/// Splits `[n, heads * head_dim]` into `[heads, n, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(x.reshape((n, heads, head_dim))?.transpose(0, 1)?.contiguous()?)
}

/// Softmax over the last dimension. On CPU in f32 through the vectorised kernel of
/// `tessera_kernels::elementwise` (candle's runs libm's scalar `expf` per element).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if crate::backend::cpu_kernels(x.device()) && x.dtype() == DType::F32 {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&CpuElementwise::Softmax)?);
    }
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}

/// `silu(gate) * up` (SwiGLU). On CPU in f32 in one vectorised pass
/// (`tessera_kernels::elementwise::silu_mul`); candle's `silu` calls libm's `expf` per value
/// and the product is a second pass.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    use candle_core::{CpuStorage, Storage};
    if crate::backend::cpu_kernels(gate.device())
        && gate.dtype() == DType::F32
        && up.dtype() == DType::F32
        && gate.dims() == up.dims()
    {
        let up = up.contiguous()?;
        let (storage, layout) = up.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(u)), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            let mut out = gate.flatten_all()?.to_vec1::<f32>()?;
            tessera_kernels::elementwise::silu_mul(&mut out, &u[a..b]);
            return Ok(Tensor::from_vec(out, gate.shape(), gate.device())?);
        }
    }
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

/// GELU, exact (erf) form; vectorised on CPU in f32 like [`softmax_last_dim`].
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if crate::backend::cpu_kernels(x.device()) && x.dtype() == DType::F32 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(shape: &[usize], rng: &mut StdRng) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.5f32..1.5)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The block-reading kernel against concatenated keys and values through matrix
    /// products, over a cache of several blocks (the last one partly filled), for one new
    /// token and for a few.
    #[test]
    fn blockwise_attention_equals_the_tensor_path() {
        let mut rng = StdRng::seed_from_u64(7);
        let (heads, kv_heads, dim, layers) = (6, 2, 16, 2);
        let mut cache = SeqCache::new();
        for chunk in [100usize, 37] {
            let keys = (0..layers).map(|_| random(&[kv_heads, chunk, dim], &mut rng)).collect();
            let values = (0..layers).map(|_| random(&[kv_heads, chunk, dim], &mut rng)).collect();
            let tokens: Vec<u32> = (0..chunk as u32).collect();
            cache.append(&tokens, keys, values).unwrap();
        }
        // Windows inside the last block, across blocks, and wider than everything.
        for window in [None, Some(1), Some(3), Some(40), Some(120), Some(1000)] {
            for n in [1usize, 5] {
                let q = random(&[heads, n, dim], &mut rng);
                let k = random(&[kv_heads, n, dim], &mut rng);
                let v = random(&[kv_heads, n, dim], &mut rng);
                let layer = 1;
                let (k_all, v_all) = cache.gather_with(layer, &k, &v).unwrap();
                let want = causal_attention(&q, &k_all, &v_all, window).unwrap();
                let queries = q.transpose(0, 1).unwrap().contiguous().unwrap();
                let shape = tessera_kernels::attention::Heads {
                    query: heads,
                    key_value: kv_heads,
                    dim,
                };
                let input = BlockwiseInput {
                    queries: &queries,
                    cache: &cache,
                    keys: &k,
                    values: &v,
                };
                let got = blockwise_attention(shape, 1.0 / (dim as f32).sqrt(), window, layer, &[input])
                    .unwrap()
                    .expect("CPU f32 takes the kernel");
                assert_eq!(got.dims(), want.dims());
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "n = {n}, window {window:?}: max difference {diff}");
                if window == Some(3) {
                    let full = causal_attention(&q, &k_all, &v_all, None).unwrap();
                    assert!(max_diff(&full, &want) > 1e-3, "the window changed nothing");
                }
            }
        }
    }

    #[test]
    fn silu_mul_equals_candles_silu_times_up() {
        let mut rng = StdRng::seed_from_u64(3);
        let gate = random(&[3, 40], &mut rng);
        let up = random(&[3, 40], &mut rng);
        let want = (candle_nn::ops::silu(&gate).unwrap() * &up).unwrap();
        let got = silu_mul(&gate, &up).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        // Non-contiguous inputs (halves of a wider projection) take the same path.
        let wide = random(&[3, 80], &mut rng);
        let (g, u) = (wide.narrow(1, 0, 40).unwrap(), wide.narrow(1, 40, 40).unwrap());
        let want = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        assert!(max_diff(&silu_mul(&g, &u).unwrap(), &want) < 1e-5);
    }
}
