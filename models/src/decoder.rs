//! The pre-norm decoder-only transformer that the supported causal LMs share (Radford et
//! al. 2019 with the pre-norm placement; Llama's and StarCoder2's variants differ only in
//! their norm and MLP, chosen here by [`Norm`] and [`Mlp`]). Architecture files
//! (`llama.rs`, `starcoder2.rs`) read their configs and weight names and build a
//! [`Decoder`]; the forward pass over the engine's KV caches lives here once.

use candle_core::{Device, Tensor};

use crate::Result;
use crate::layers::{self, AttentionInput, BlockwiseInput, LayerNorm, RmsNorm, Rotary};
use crate::model::{BatchItem, CausalLm, ModelInfo, check_batch};
use crate::weights::{Embedding, Linear, Projections};

#[derive(Debug, Clone)]
pub enum Norm {
    Rms(RmsNorm),
    Layer(LayerNorm),
}

impl Norm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Norm::Rms(n) => n.forward(x),
            Norm::Layer(n) => n.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Mlp {
    /// `down(silu(gate(x)) * up(x))` (Shazeer 2020); `gate_up` yields gate then up.
    SwiGlu { gate_up: Projections, down: Linear },
    /// `proj(gelu_tanh(fc(x)))`.
    Gelu { fc: Linear, proj: Linear },
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::SwiGlu { gate_up, down } => {
                let [gate, up]: [Tensor; 2] = gate_up
                    .forward(x)?
                    .try_into()
                    .map_err(|_| crate::Error::InvalidInput("gate/up projections must be two".into()))?;
                let h = layers::silu_mul(&gate, &up)?;
                down.forward(&h)
            }
            Mlp::Gelu { fc, proj } => proj.forward(&fc.forward(x)?.gelu()?),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Norm,
    /// q, k and v, in that order.
    pub qkv: Projections,
    pub o: Linear,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
}

/// Attention geometry.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub query: usize,
    pub key_value: usize,
    pub dim: usize,
}

/// A loaded decoder-only transformer.
pub struct Decoder {
    pub info: ModelInfo,
    pub device: Device,
    pub heads: Heads,
    pub embed: Embedding,
    pub blocks: Vec<Block>,
    pub norm: Norm,
    pub lm_head: Linear,
    pub rotary: Rotary,
    /// Each layer's sliding window (Mistral, StarCoder2, some Qwen2 layers): a position
    /// attends to itself and the `w - 1` before it. The cache keeps every position
    /// (prefixes are reused and beams fork from it); the window only limits what is read.
    /// Empty or `None` where a layer attends over everything.
    pub sliding_windows: Vec<Option<usize>>,
}

impl Decoder {
    fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_windows.get(layer).copied().flatten()
    }
}

impl CausalLm for Decoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn forward(&self, batch: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>> {
        check_batch(&self.info, batch)?;
        let Heads {
            query: nh,
            key_value: nkv,
            dim: hd,
        } = self.heads;
        let ids: Vec<u32> = batch.iter().flat_map(|b| b.tokens.iter().copied()).collect();
        // All sequences' new tokens are packed into one `[tokens, hidden]` matrix, so the
        // projections read each weight once per step whatever the batch size.
        let mut x = self.embed.forward(&ids, &self.device)?;
        let lockstep = batch.len() > 1
            && batch
                .iter()
                .all(|item| item.tokens.len() == 1 && item.cache.len() == batch[0].cache.len());
        let mut new_kv: Vec<(Vec<Tensor>, Vec<Tensor>)> = batch
            .iter()
            .map(|_| {
                (
                    Vec::with_capacity(self.blocks.len()),
                    Vec::with_capacity(self.blocks.len()),
                )
            })
            .collect();
        for (layer, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            let [q, k, v]: [Tensor; 3] = block
                .qkv
                .forward(&h)?
                .try_into()
                .map_err(|_| crate::Error::InvalidInput("q/k/v projections must be three".into()))?;
            if lockstep {
                // Beams: one new token each at the same position. Rotate and attend for
                // all sequences at once instead of once per sequence.
                let b = batch.len();
                let pos = batch[0].cache.len();
                let q = self.rotary.apply_same_position(&q.reshape((b, nh, hd))?, pos)?;
                let k = self.rotary.apply_same_position(&k.reshape((b, nkv, hd))?, pos)?;
                let v = v.reshape((b, nkv, hd))?;
                let mut new_k = Vec::with_capacity(b);
                let mut new_v = Vec::with_capacity(b);
                let mut queries = Vec::with_capacity(b);
                for i in 0..b {
                    new_k.push(k.narrow(0, i, 1)?.transpose(0, 1)?.contiguous()?);
                    new_v.push(v.narrow(0, i, 1)?.transpose(0, 1)?.contiguous()?);
                    queries.push(q.narrow(0, i, 1)?);
                }
                let inputs: Vec<BlockwiseInput<'_>> = (0..b)
                    .map(|i| BlockwiseInput {
                        queries: &queries[i],
                        cache: batch[i].cache,
                        keys: &new_k[i],
                        values: &new_v[i],
                    })
                    .collect();
                let shape = tessera_kernels::attention::Heads {
                    query: nh,
                    key_value: nkv,
                    dim: hd,
                };
                let scale = 1.0 / (hd as f32).sqrt();
                let attn = match layers::blockwise_attention(shape, scale, self.window(layer), layer, &inputs)? {
                    Some(attn) => attn,
                    None => {
                        let mut ks = Vec::with_capacity(b);
                        let mut vs = Vec::with_capacity(b);
                        for (item, (ki, vi)) in batch.iter().zip(new_k.iter().zip(&new_v)) {
                            let (ka, va) = item.cache.gather_with(layer, ki, vi)?;
                            ks.push(ka);
                            vs.push(va);
                        }
                        // q: [b, kv_heads, group, hd]; keys/values: [b, kv_heads, total, hd].
                        let q = q.reshape((b, nkv, nh / nkv, hd))?;
                        let mut keys = Tensor::stack(&ks, 0)?;
                        let mut values = Tensor::stack(&vs, 0)?;
                        let total = keys.dim(2)?;
                        if let Some(w) = self.window(layer).filter(|&w| w < total) {
                            keys = keys.narrow(2, total - w, w)?.contiguous()?;
                            values = values.narrow(2, total - w, w)?.contiguous()?;
                        }
                        let scores = (q.matmul(&keys.transpose(2, 3)?)? / (hd as f64).sqrt())?;
                        let probs = crate::layers::softmax_last_dim(&scores)?;
                        probs.matmul(&values)?.reshape((b, nh * hd))?
                    }
                };
                drop(inputs);
                for (kv, (ki, vi)) in new_kv.iter_mut().zip(new_k.into_iter().zip(new_v)) {
                    kv.0.push(ki);
                    kv.1.push(vi);
                }
                x = (x + block.o.forward(&attn)?)?;
                let h = block.mlp_norm.forward(&x)?;
                x = (x + block.mlp.forward(&h)?)?;
                continue;
            }
            let mut outs = Vec::with_capacity(batch.len());
            let mut start = 0;
            for (item, kv) in batch.iter().zip(new_kv.iter_mut()) {
                let n = item.tokens.len();
                let (out, k, v) = layers::attend(
                    &self.rotary,
                    AttentionInput {
                        q: layers::split_heads(&q.narrow(0, start, n)?, nh, hd)?,
                        k: layers::split_heads(&k.narrow(0, start, n)?, nkv, hd)?,
                        v: layers::split_heads(&v.narrow(0, start, n)?, nkv, hd)?,
                        cache: item.cache,
                        layer,
                    },
                    self.window(layer),
                )?;
                kv.0.push(k);
                kv.1.push(v);
                outs.push(out);
                start += n;
            }
            let attn = if outs.len() == 1 {
                outs.pop().expect("one output")
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + block.o.forward(&attn)?)?;
            let h = block.mlp_norm.forward(&x)?;
            x = (x + block.mlp.forward(&h)?)?;
        }
        let x = self.norm.forward(&x)?;
        // Project only the rows whose logits are wanted: the vocabulary projection is the
        // largest matrix of small models.
        let mut rows = Vec::with_capacity(batch.len());
        let mut start = 0;
        for item in batch.iter() {
            let n = item.tokens.len();
            rows.push(if item.all_logits {
                x.narrow(0, start, n)?
            } else {
                x.narrow(0, start + n - 1, 1)?
            });
            start += n;
        }
        let logits = self.lm_head.forward(&Tensor::cat(&rows, 0)?)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        for (item, (ks, vs)) in batch.iter_mut().zip(new_kv) {
            let n = if item.all_logits { item.tokens.len() } else { 1 };
            out.push(logits.narrow(0, start, n)?);
            start += n;
            item.cache.append(item.tokens, ks, vs)?;
        }
        Ok(out)
    }
}
