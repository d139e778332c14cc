//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision", arXiv:2103.00020): a causal text transformer pooled at the end-of-text
//! token and a vision transformer pooled at its class token, each followed by a linear
//! projection into one embedding space; similarity is the cosine of the two embeddings
//! times a learned temperature (`logit_scale`, stored as its logarithm).
//! Reference code: openai/CLIP `clip/model.py`; Hugging Face transformers
//! `models/clip/modeling_clip.py` (weight and config names, which OpenCLIP checkpoints
//! converted to the Hugging Face layout share).
//!
//! Everything comes from `config.json` (sizes, `hidden_act`: `quick_gelu` for OpenAI's
//! models, `gelu` for most OpenCLIP ones, layer-norm epsilon) and the safetensors weights
//! (f32, f16 or bf16; computed in f32). Batches run as single tensors: images are
//! `[n, 3, size, size]`; texts of different lengths are padded after their end-of-text
//! token, which the causal mask makes invisible to the positions that matter, so a text
//! embeds the same alone or in any batch.

use std::path::Path;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use serde::Deserialize;

use crate::layers::LayerNorm;
use crate::weights::{Linear, WeightStore};
use crate::{Error, Result};
use tessera_kernels::dense::Epilogue;

/// The activation between a transformer layer's two MLP matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI's CLIP.
    QuickGelu,
    /// The exact, erf-based GELU.
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    fn parse(name: &str, source: &Path) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            other => {
                return Err(Error::unsupported(
                    source.display().to_string(),
                    format!("hidden_act {other:?} (supported: quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)"),
                ));
            }
        })
    }

    fn epilogue(self) -> Epilogue {
        match self {
            Activation::QuickGelu => Epilogue::QuickGelu,
            Activation::Gelu => Epilogue::GeluErf,
            Activation::GeluTanh => Epilogue::GeluTanh,
        }
    }
}

/// `text_config` of `config.json` (transformers' `CLIPTextConfig`, its defaults).
#[derive(Debug, Clone, Deserialize)]
struct HfTextConfig {
    #[serde(default = "text_vocab")]
    vocab_size: usize,
    #[serde(default = "d512")]
    hidden_size: usize,
    #[serde(default = "d2048")]
    intermediate_size: usize,
    #[serde(default = "d12")]
    num_hidden_layers: usize,
    #[serde(default = "d8")]
    num_attention_heads: usize,
    #[serde(default = "d77")]
    max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

/// `vision_config` of `config.json` (transformers' `CLIPVisionConfig`, its defaults).
#[derive(Debug, Clone, Deserialize)]
struct HfVisionConfig {
    #[serde(default = "d768")]
    hidden_size: usize,
    #[serde(default = "d3072")]
    intermediate_size: usize,
    #[serde(default = "d12")]
    num_hidden_layers: usize,
    #[serde(default = "d12")]
    num_attention_heads: usize,
    #[serde(default = "d3")]
    num_channels: usize,
    #[serde(default = "d224")]
    image_size: usize,
    #[serde(default = "d32")]
    patch_size: usize,
    #[serde(default = "quick_gelu")]
    hidden_act: String,
    #[serde(default = "eps")]
    layer_norm_eps: f64,
}

#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    text_config: Option<HfTextConfig>,
    #[serde(default)]
    vision_config: Option<HfVisionConfig>,
    #[serde(default = "d512")]
    projection_dim: usize,
}

fn text_vocab() -> usize {
    49_408
}
fn d3() -> usize {
    3
}
fn d8() -> usize {
    8
}
fn d12() -> usize {
    12
}
fn d32() -> usize {
    32
}
fn d77() -> usize {
    77
}
fn d224() -> usize {
    224
}
fn d512() -> usize {
    512
}
fn d768() -> usize {
    768
}
fn d2048() -> usize {
    2048
}
fn d3072() -> usize {
    3072
}
fn eps() -> f64 {
    1e-5
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}

/// One tower's transformer sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

/// The dimensions of a CLIP model.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub text: EncoderConfig,
    pub vocab_size: usize,
    /// Text positions (77): the context length of the tokenizer.
    pub max_position_embeddings: usize,
    pub vision: EncoderConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    /// Width of the shared embedding space.
    pub projection_dim: usize,
}

impl ClipConfig {
    /// Reads a Hugging Face `config.json` (`model_type` `clip`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))?;
        if let Some(t) = hf.model_type.as_deref()
            && t != "clip"
        {
            return Err(Error::unsupported(
                path.display().to_string(),
                format!("model_type {t:?}: not a CLIP checkpoint (expected \"clip\")"),
            ));
        }
        let (Some(t), Some(v)) = (hf.text_config, hf.vision_config) else {
            return Err(Error::format(path, "text_config or vision_config is missing"));
        };
        let cfg = ClipConfig {
            text: EncoderConfig {
                hidden_size: t.hidden_size,
                intermediate_size: t.intermediate_size,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                hidden_act: Activation::parse(&t.hidden_act, path)?,
                layer_norm_eps: t.layer_norm_eps,
            },
            vocab_size: t.vocab_size,
            max_position_embeddings: t.max_position_embeddings,
            vision: EncoderConfig {
                hidden_size: v.hidden_size,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                num_attention_heads: v.num_attention_heads,
                hidden_act: Activation::parse(&v.hidden_act, path)?,
                layer_norm_eps: v.layer_norm_eps,
            },
            image_size: v.image_size,
            patch_size: v.patch_size,
            num_channels: v.num_channels,
            projection_dim: hf.projection_dim,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, source: &Path) -> Result<()> {
        let sizes = [
            ("text_config.hidden_size", self.text.hidden_size),
            ("text_config.num_attention_heads", self.text.num_attention_heads),
            ("text_config.vocab_size", self.vocab_size),
            ("text_config.max_position_embeddings", self.max_position_embeddings),
            ("vision_config.hidden_size", self.vision.hidden_size),
            ("vision_config.num_attention_heads", self.vision.num_attention_heads),
            ("vision_config.patch_size", self.patch_size),
            ("vision_config.image_size", self.image_size),
            ("projection_dim", self.projection_dim),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::format(source, format!("{name} is 0")));
        }
        for (what, c) in [("text", &self.text), ("vision", &self.vision)] {
            if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
                return Err(Error::format(
                    source,
                    format!(
                        "{what}_config: hidden_size {} is not a multiple of the {} heads",
                        c.hidden_size, c.num_attention_heads
                    ),
                ));
            }
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return Err(Error::format(
                source,
                format!(
                    "vision_config: image_size {} is not a multiple of patch_size {}",
                    self.image_size, self.patch_size
                ),
            ));
        }
        Ok(())
    }

    /// Patches per image plus the class token.
    pub fn num_positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

/// Multi-head self-attention with its four projections.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

/// One pre-norm transformer layer.
#[derive(Debug, Clone)]
struct Layer {
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

fn layer_norm(store: &WeightStore, name: &str, dim: usize, eps: f64, device: &Device) -> Result<LayerNorm> {
    Ok(LayerNorm::new(
        store.tensor(&format!("{name}.weight"), &[dim], device)?,
        store.tensor(&format!("{name}.bias"), &[dim], device)?,
        eps,
    ))
}

impl Layer {
    fn load(store: &WeightStore, prefix: &str, cfg: &EncoderConfig, device: &Device) -> Result<Self> {
        let d = cfg.hidden_size;
        let lin = |name: &str, out: usize, inp: usize| {
            Linear::load(store, &format!("{prefix}.{name}"), out, inp, true, device)
        };
        let q = lin("self_attn.q_proj", d, d)?;
        let k = lin("self_attn.k_proj", d, d)?;
        let v = lin("self_attn.v_proj", d, d)?;
        // One matrix for q, k and v: one GEMM instead of three over the same input.
        let qkv = match q.stack(&k)? {
            Some(qk) => qk.stack(&v)?,
            None => None,
        }
        .ok_or_else(|| Error::format(store.path(), format!("{prefix}: q/k/v projections stored differently")))?;
        Ok(Layer {
            ln1: layer_norm(store, &format!("{prefix}.layer_norm1"), d, cfg.layer_norm_eps, device)?,
            attn: Attention {
                qkv,
                out: lin("self_attn.out_proj", d, d)?,
                heads: cfg.num_attention_heads,
                head_dim: d / cfg.num_attention_heads,
            },
            ln2: layer_norm(store, &format!("{prefix}.layer_norm2"), d, cfg.layer_norm_eps, device)?,
            fc1: lin("mlp.fc1", cfg.intermediate_size, d)?,
            fc2: lin("mlp.fc2", d, cfg.intermediate_size)?,
            act: cfg.hidden_act,
        })
    }

    /// `x`: `[batch, len, hidden]`; `mask`: `[len, len]` added to the scores (causal).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let h = self.ln1.forward(x)?.reshape((b * n, d))?;
        let a = &self.attn;
        let qkv = a.qkv.forward(&h)?.reshape((b, n, 3, a.heads, a.head_dim))?;
        // [3, batch, heads, len, head_dim]
        let qkv = qkv.permute((2, 0, 3, 1, 4))?.contiguous()?;
        let scale = 1.0 / (a.head_dim as f64).sqrt();
        let (q, k, v) = ((qkv.i(0)? * scale)?, qkv.i(1)?, qkv.i(2)?);
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = crate::layers::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * n, d))?;
        let x = (x + a.out.forward(&ctx)?.reshape((b, n, d))?)?;
        let h = self.ln2.forward(&x)?.reshape((b * n, d))?;
        let h = self.fc2.forward(&self.fc1.forward_with(&h, self.act.epilogue())?)?;
        Ok((x + h.reshape((b, n, d))?)?)
    }
}

/// The text tower: token and position embeddings, causal layers, final norm.
#[derive(Debug, Clone)]
struct TextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
}

/// The vision tower: patch embedding (a stride-`patch` convolution, done as a matrix),
/// class token, positions, pre-norm, layers, post-norm of the class token.
#[derive(Debug, Clone)]
struct VisionTransformer {
    /// `[hidden, channels * patch * patch]`.
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<Layer>,
    post_norm: LayerNorm,
}

/// A loaded CLIP model. Stateless: any number of threads may encode with it.
#[derive(Debug, Clone)]
pub struct Clip {
    config: ClipConfig,
    text: TextTransformer,
    vision: VisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    /// `exp(logit_scale)` as stored in the checkpoint.
    logit_scale: f32,
    device: Device,
}

impl Clip {
    /// Loads a Hugging Face CLIP checkpoint directory (`config.json`, safetensors).
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let store = WeightStore::open_safetensors_dir(dir)?;
        let model = Self::load(&store, config, device);
        drop(store);
        crate::allocator::release_free_memory();
        model
    }

    pub fn load(store: &WeightStore, config: ClipConfig, device: &Device) -> Result<Self> {
        let c = &config;
        let layers = |prefix: &str, enc: &EncoderConfig| -> Result<Vec<Layer>> {
            (0..enc.num_hidden_layers)
                .map(|i| Layer::load(store, &format!("{prefix}.encoder.layers.{i}"), enc, device))
                .collect()
        };
        let (td, vd) = (c.text.hidden_size, c.vision.hidden_size);
        let text = TextTransformer {
            token_embedding: store.tensor(
                "text_model.embeddings.token_embedding.weight",
                &[c.vocab_size, td],
                device,
            )?,
            position_embedding: store.tensor(
                "text_model.embeddings.position_embedding.weight",
                &[c.max_position_embeddings, td],
                device,
            )?,
            layers: layers("text_model", &c.text)?,
            final_norm: layer_norm(store, "text_model.final_layer_norm", td, c.text.layer_norm_eps, device)?,
        };
        let p = c.patch_size;
        let patch = store
            .tensor(
                "vision_model.embeddings.patch_embedding.weight",
                &[vd, c.num_channels, p, p],
                device,
            )?
            .reshape((vd, c.num_channels * p * p))?;
        let vision = VisionTransformer {
            patch_embedding: Linear::from_qmatmul(candle_core::quantized::QMatMul::Tensor(patch), None),
            class_embedding: store.tensor("vision_model.embeddings.class_embedding", &[vd], device)?,
            position_embedding: store.tensor(
                "vision_model.embeddings.position_embedding.weight",
                &[c.num_positions(), vd],
                device,
            )?,
            // "pre_layrnorm" is the checkpoint's own spelling.
            pre_norm: layer_norm(store, "vision_model.pre_layrnorm", vd, c.vision.layer_norm_eps, device)?,
            layers: layers("vision_model", &c.vision)?,
            post_norm: layer_norm(
                store,
                "vision_model.post_layernorm",
                vd,
                c.vision.layer_norm_eps,
                device,
            )?,
        };
        let text_projection = Linear::load(store, "text_projection", c.projection_dim, td, false, device)?;
        let visual_projection = Linear::load(store, "visual_projection", c.projection_dim, vd, false, device)?;
        // A 0-dimensional tensor in Hugging Face checkpoints, `[1]` in some conversions.
        let logit_scale = match store.tensor("logit_scale", &[], device) {
            Ok(t) => t,
            Err(_) => store.tensor("logit_scale", &[1], device)?.squeeze(0)?,
        }
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?
        .exp();
        Ok(Clip {
            config,
            text,
            vision,
            text_projection,
            visual_projection,
            logit_scale,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The multiplier of cosine similarities into logits (100 for OpenAI's models).
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// Projected text features `[n, projection_dim]`, not normalised. Each sequence is
    /// token ids as the tokenizer frames them; the features are taken at the first
    /// `eot_id` (at the last position if there is none).
    pub fn encode_text(&self, sequences: &[Vec<u32>], eot_id: u32) -> Result<Tensor> {
        let c = &self.config;
        if sequences.is_empty() {
            return Err(Error::InvalidInput("no texts to encode".into()));
        }
        let len = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if let Some(i) = sequences.iter().position(Vec::is_empty) {
            return Err(Error::InvalidInput(format!("text {i} has no tokens")));
        }
        if len > c.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "a text of {len} tokens is longer than the model's {} positions",
                c.max_position_embeddings
            )));
        }
        if let Some(bad) = sequences.iter().flatten().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                c.vocab_size
            )));
        }
        let n = sequences.len();
        let mut ids = Vec::with_capacity(n * len);
        let mut pooled = Vec::with_capacity(n);
        for (b, seq) in sequences.iter().enumerate() {
            ids.extend_from_slice(seq);
            // Padding after the pooled token: the causal mask hides it from that token.
            ids.extend(std::iter::repeat_n(eot_id, len - seq.len()));
            let at = seq.iter().position(|&t| t == eot_id).unwrap_or(seq.len() - 1);
            pooled.push((b * len + at) as u32);
        }
        let d = c.text.hidden_size;
        let ids = Tensor::from_vec(ids, n * len, &self.device)?;
        let tokens = self.text.token_embedding.index_select(&ids, 0)?.reshape((n, len, d))?;
        let positions = self.text.position_embedding.narrow(0, 0, len)?;
        let mut x = tokens.broadcast_add(&positions)?;
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (len, len), &self.device)?;
        for layer in &self.text.layers {
            x = layer.forward(&x, Some(&mask))?;
        }
        let idx = Tensor::from_vec(pooled, n, &self.device)?;
        let eot = x.reshape((n * len, d))?.index_select(&idx, 0)?;
        let eot = self.text.final_norm.forward(&eot)?;
        self.text_projection.forward(&eot)
    }

    /// Projected image features `[n, projection_dim]`, not normalised, from preprocessed
    /// pixels `[n, channels, image_size, image_size]`.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (n, ch, h, w) = pixel_values.dims4()?;
        if (ch, h, w) != (c.num_channels, c.image_size, c.image_size) {
            return Err(Error::InvalidInput(format!(
                "pixel values of shape [{n}, {ch}, {h}, {w}]; the model takes [n, {}, {}, {}]",
                c.num_channels, c.image_size, c.image_size
            )));
        }
        let (p, g, d) = (c.patch_size, c.image_size / c.patch_size, c.vision.hidden_size);
        // [n, ch, g, p, g, p] -> [n, g, g, ch, p, p]: one row per patch, in the
        // convolution weight's (channel, y, x) order.
        let patches = pixel_values
            .to_dtype(DType::F32)?
            .reshape((n, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, ch * p * p))?;
        let patches = self.vision.patch_embedding.forward(&patches)?.reshape((n, g * g, d))?;
        let cls = self.vision.class_embedding.reshape((1, 1, d))?.repeat((n, 1, 1))?;
        let x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.vision.position_embedding)?;
        let mut x = self.vision.pre_norm.forward(&x)?;
        for layer in &self.vision.layers {
            x = layer.forward(&x, None)?;
        }
        let cls = x.i((.., 0, ..))?.contiguous()?;
        let cls = self.vision.post_norm.forward(&cls)?;
        self.visual_projection.forward(&cls)
    }

    /// L2-normalised text embeddings `[n, projection_dim]`.
    pub fn text_embeddings(&self, sequences: &[Vec<u32>], eot_id: u32) -> Result<Tensor> {
        l2_normalize(&self.encode_text(sequences, eot_id)?)
    }

    /// L2-normalised image embeddings `[n, projection_dim]`.
    pub fn image_embeddings(&self, pixel_values: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.encode_images(pixel_values)?)
    }

    /// `logits_per_image` `[images, texts]`: scaled cosine similarities of normalised
    /// embeddings.
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        Ok((image_embeds.matmul(&text_embeds.t()?)? * f64::from(self.logit_scale))?)
    }
}

/// Rows divided by their L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations() {
        let x = Tensor::new(&[-1f32, 0.0, 2.0], &Device::Cpu).unwrap();
        let epilogue = Activation::QuickGelu.epilogue();
        // The candle path (other devices) and the fused CPU kernel.
        let candle: Vec<f32> = crate::layers::apply_epilogue(&x, epilogue).unwrap().to_vec1().unwrap();
        let mut fused = vec![-1f32, 0.0, 2.0];
        tessera_kernels::dense::apply(&mut fused, epilogue);
        let want: Vec<f32> = [-1f32, 0.0, 2.0]
            .iter()
            .map(|&v| v / (1.0 + (-1.702 * v).exp()))
            .collect();
        for ((a, f), b) in candle.iter().zip(&fused).zip(&want) {
            assert!((a - b).abs() < 1e-6 && (f - b).abs() < 1e-6, "{a} / {f} vs {b}");
        }
        assert!(Activation::parse("relu", Path::new("c")).is_err());
    }

    #[test]
    fn config_defaults_are_vit_b_32() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"model_type": "clip", "text_config": {}, "vision_config": {}}"#,
        )
        .unwrap();
        let c = ClipConfig::from_file(&path).unwrap();
        assert_eq!((c.vision.hidden_size, c.patch_size, c.num_positions()), (768, 32, 50));
        assert_eq!((c.text.hidden_size, c.vocab_size, c.projection_dim), (512, 49_408, 512));
        assert_eq!(c.text.hidden_act, Activation::QuickGelu);
        std::fs::write(&path, r#"{"model_type": "llama"}"#).unwrap();
        assert!(ClipConfig::from_file(&path).is_err());
        std::fs::write(
            &path,
            r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 4}, "vision_config": {}}"#,
        )
        .unwrap();
        assert!(ClipConfig::from_file(&path).is_err());
    }
}
