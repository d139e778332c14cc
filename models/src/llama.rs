//! The Llama family: Llama 2/3 (Touvron et al. 2023, arXiv:2302.13971 and
//! arXiv:2307.09288; Llama 3 rope scaling), Mistral (arXiv:2310.06825), Qwen2/Qwen2.5 and
//! Qwen2.5-Coder (arXiv:2407.10671, arXiv:2409.12186; q/k/v biases) and SmolLM2: pre-norm
//! decoder blocks with RMSNorm, rotary embeddings, grouped-query attention and a SwiGLU
//! MLP. Reference code: Hugging Face transformers `models/llama/modeling_llama.py` and
//! `models/qwen2/modeling_qwen2.py`; GGUF tensor names from llama.cpp `src/llama-arch.cpp`.
//!
//! One implementation serves GGUF files (quantized matrices) and safetensors checkpoints
//! (dense), reading every size from the model's own config.

use candle_core::Device;
use serde::Deserialize;

use crate::decoder::{Block, Decoder, Heads, Mlp, Norm};
use crate::gguf::GgufFile;
use crate::layers::{Llama3RopeScaling, RmsNorm, Rotary};
use crate::model::ModelInfo;
use crate::weights::{Linear, Projections, WeightStore};
use crate::{Error, Result};

/// Hyper-parameters, with Hugging Face `config.json` field names.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 writes `rope_theta` and the scaling here instead.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Qwen2 has q/k/v biases without saying so in its config.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Mistral's sliding-window attention span; Qwen2 declares one but only uses it when
    /// `use_sliding_window` is set, and then from layer `max_window_layers` on.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// transformers >= 4.53 names each layer's attention: `full_attention` or
    /// `sliding_attention`. Where present it decides which layers slide.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(skip)]
    pub rope_interleaved: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    4096
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10_000.0)
    }

    /// Positions the model may attend over.
    pub fn max_context(&self) -> usize {
        self.max_position_embeddings
    }

    /// Each layer's sliding window, as transformers decides it: `layer_types` when the
    /// config has them; else every layer of a Mistral, and the layers from
    /// `max_window_layers` on of a Qwen2 with `use_sliding_window`. A window as long as the
    /// context never masks anything and is left out.
    pub fn layer_windows(&self) -> Vec<Option<usize>> {
        let window = self
            .sliding_window
            .filter(|&w| w > 0 && w < self.max_position_embeddings);
        (0..self.num_hidden_layers)
            .map(|layer| {
                let slides = match &self.layer_types {
                    Some(types) => types.get(layer).is_some_and(|t| t == "sliding_attention"),
                    None if self.model_type == "mistral" => self.use_sliding_window.unwrap_or(true),
                    None => self.use_sliding_window.unwrap_or(false) && layer >= self.max_window_layers.unwrap_or(0),
                };
                window.filter(|_| slides)
            })
            .collect()
    }

    fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }

    fn llama3_scaling(&self) -> Result<Option<Llama3RopeScaling>> {
        let Some(s) = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()) else {
            return Ok(None);
        };
        if s.is_null() {
            return Ok(None);
        }
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let num = |k: &str| s.get(k).and_then(|v| v.as_f64());
        match kind {
            "llama3" => Ok(Some(Llama3RopeScaling {
                factor: num("factor").unwrap_or(8.0),
                low_freq_factor: num("low_freq_factor").unwrap_or(1.0),
                high_freq_factor: num("high_freq_factor").unwrap_or(4.0),
                original_max_position_embeddings: num("original_max_position_embeddings").unwrap_or(8192.0) as usize,
            })),
            "default" | "" => Ok(None),
            other => Err(Error::unsupported("config.json", format!("rope_scaling type {other}"))),
        }
    }

    fn validate(&self, source: &std::path::Path) -> Result<()> {
        let bad = |msg: String| Err(Error::format(source, msg));
        if self.num_attention_heads == 0
            || self.kv_heads() == 0
            || !self.num_attention_heads.is_multiple_of(self.kv_heads())
        {
            return bad(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) || self.head_dim() == 0 {
            return bad(format!("head dimension {} must be even and positive", self.head_dim()));
        }
        if self.num_hidden_layers == 0
            || self.vocab_size == 0
            || self.hidden_size == 0
            || self.max_position_embeddings == 0
        {
            return bad("config declares an empty model".into());
        }
        if self.max_position_embeddings > 1 << 20 {
            return bad(format!(
                "context of {} positions is implausible",
                self.max_position_embeddings
            ));
        }
        Ok(())
    }

    /// Reads the config of a GGUF file (`{arch}.*` metadata keys).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.architecture()?.to_owned();
        let key = |k: &str| format!("{arch}.{k}");
        let heads = g.get_usize(&key("attention.head_count"))?;
        let hidden = g.get_usize(&key("embedding_length"))?;
        let vocab = match g.tensor_info("token_embd.weight") {
            Some(info) if info.dims.len() == 2 => info.dims[0],
            _ => {
                return Err(Error::format(
                    g.path(),
                    "tensor token_embd.weight is missing or not 2-D",
                ));
            }
        };
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(v) => v.as_u64().map(|v| v as usize),
            None => g
                .get(&key("rope.dimension_count"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize),
        };
        Ok(LlamaConfig {
            model_type: arch.clone(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: g.get_usize(&key("feed_forward_length"))?,
            num_hidden_layers: g.get_usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: Some(match g.get(&key("attention.head_count_kv")) {
                Some(_) => g.get_usize(&key("attention.head_count_kv"))?,
                None => heads,
            }),
            head_dim,
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.get(&key("rope.freq_base")).and_then(|v| v.as_f64()),
            rope_scaling: None,
            rope_parameters: None,
            // llama.cpp's GGUF files do not record a window (llama.cpp attends over the
            // whole context), so neither do we.
            sliding_window: None,
            use_sliding_window: None,
            max_window_layers: None,
            layer_types: None,
            max_position_embeddings: g.get_usize(&key("context_length"))?,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            attention_bias: Some(g.tensor_info("blk.0.attn_q.bias").is_some()),
            // llama.cpp permutes q/k of `llama` models for its adjacent-pair rope; Qwen2
            // keeps the Hugging Face layout (NEOX rope).
            rope_interleaved: arch == "llama",
        })
    }
}

/// The Llama family's loaders: the shared [`Decoder`] with RMSNorm and a SwiGLU MLP.
pub struct Llama;

/// Tensor names in the two layouts.
fn names(gguf: bool, layer: usize) -> [String; 9] {
    if gguf {
        let p = format!("blk.{layer}");
        [
            format!("{p}.attn_norm.weight"),
            format!("{p}.attn_q"),
            format!("{p}.attn_k"),
            format!("{p}.attn_v"),
            format!("{p}.attn_output"),
            format!("{p}.ffn_norm.weight"),
            format!("{p}.ffn_gate"),
            format!("{p}.ffn_up"),
            format!("{p}.ffn_down"),
        ]
    } else {
        let p = format!("model.layers.{layer}");
        [
            format!("{p}.input_layernorm.weight"),
            format!("{p}.self_attn.q_proj"),
            format!("{p}.self_attn.k_proj"),
            format!("{p}.self_attn.v_proj"),
            format!("{p}.self_attn.o_proj"),
            format!("{p}.post_attention_layernorm.weight"),
            format!("{p}.mlp.gate_proj"),
            format!("{p}.mlp.up_proj"),
            format!("{p}.mlp.down_proj"),
        ]
    }
}

impl Llama {
    pub fn load(cfg: LlamaConfig, store: &WeightStore, device: &Device) -> Result<Decoder> {
        cfg.validate(store.path())?;
        let gguf = store.is_gguf();
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
        let bias = cfg.qkv_bias();
        let (embed_name, norm_name, head_name) = if gguf {
            ("token_embd.weight", "output_norm.weight", "output.weight")
        } else {
            ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
        };
        let embed = store.embedding(embed_name, cfg.vocab_size, h, device)?;
        // Not sized by the config: a hostile layer count must fail at its first missing tensor,
        // not in the allocator.
        let mut blocks = Vec::new();
        for layer in 0..cfg.num_hidden_layers {
            let [an, q, k, v, o, mn, gate, up, down] = names(gguf, layer);
            let lin = |name: &str, out, inp, b| Linear::load(store, name, out, inp, b, device);
            let norm = |name: &str| -> Result<Norm> {
                Ok(Norm::Rms(RmsNorm::new(
                    store.tensor(name, &[h], device)?,
                    cfg.rms_norm_eps,
                )))
            };
            blocks.push(Block {
                attn_norm: norm(&an)?,
                qkv: Projections::new(vec![
                    (lin(&q, nq, h, bias)?, nq),
                    (lin(&k, nkv, h, bias)?, nkv),
                    (lin(&v, nkv, h, bias)?, nkv),
                ])?,
                o: lin(&o, h, nq, false)?,
                mlp_norm: norm(&mn)?,
                mlp: Mlp::SwiGlu {
                    // Stacking gate and up measured slower for long prefills (the wide
                    // output's halves feed strided element-wise ops) and no faster to decode.
                    gate_up: Projections::separate(vec![
                        (lin(&gate, cfg.intermediate_size, h, false)?, cfg.intermediate_size),
                        (lin(&up, cfg.intermediate_size, h, false)?, cfg.intermediate_size),
                    ]),
                    down: lin(&down, h, cfg.intermediate_size, false)?,
                },
            });
        }
        let norm = Norm::Rms(RmsNorm::new(store.tensor(norm_name, &[h], device)?, cfg.rms_norm_eps));
        let lm_head = if store.contains(head_name) {
            Linear::load_matrix(store, head_name, cfg.vocab_size, h, device)?
        } else {
            embed.as_linear()?
        };
        let freq_factors = if gguf && store.contains("rope_freqs.weight") {
            let t = store.tensor("rope_freqs.weight", &[hd / 2], &Device::Cpu)?;
            Some(t.to_vec1::<f32>()?)
        } else {
            None
        };
        let rotary = Rotary::new(
            hd,
            cfg.rope_theta(),
            cfg.max_position_embeddings,
            cfg.llama3_scaling()?.as_ref(),
            freq_factors.as_deref(),
            cfg.rope_interleaved,
            device,
        )?;
        let weight_bytes = store.total_bytes();
        let info = ModelInfo {
            architecture: cfg.model_type.clone(),
            vocab_size: cfg.vocab_size,
            max_context: cfg.max_context(),
            num_layers: cfg.num_hidden_layers,
            weight_bytes,
        };
        let heads = Heads {
            query: cfg.num_attention_heads,
            key_value: cfg.kv_heads(),
            dim: hd,
        };
        Ok(Decoder {
            info,
            device: device.clone(),
            heads,
            embed,
            blocks,
            norm,
            lm_head,
            rotary,
            sliding_windows: cfg.layer_windows(),
        })
    }
}

impl Llama {
    /// Loads a Hugging Face checkpoint directory (`config.json` + safetensors).
    pub fn from_dir(dir: &std::path::Path, device: &Device) -> Result<Decoder> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        let store = WeightStore::open_safetensors_dir(dir)?;
        Self::load(cfg, &store, device)
    }

    /// Loads a GGUF file of the `llama` or `qwen2` architecture.
    pub fn from_gguf(gguf: GgufFile, device: &Device) -> Result<Decoder> {
        let cfg = LlamaConfig::from_gguf(&gguf)?;
        Self::load(cfg, &WeightStore::Gguf(gguf), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> LlamaConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn which_layers_slide() {
        let base = r#""vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 3,
            "num_attention_heads": 2, "max_position_embeddings": 32768"#;
        let windows = |json: &str| cfg(&format!("{{{json}, {base}}}")).layer_windows();
        let w = Some(4096);
        assert_eq!(windows(r#""model_type": "mistral", "sliding_window": 4096"#), [w, w, w]);
        assert_eq!(
            windows(r#""model_type": "mistral", "sliding_window": null"#),
            [None, None, None]
        );
        // A window as long as the context masks nothing.
        assert_eq!(
            windows(r#""model_type": "mistral", "sliding_window": 32768"#),
            [None, None, None]
        );
        assert_eq!(
            windows(r#""model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": false"#),
            [None, None, None]
        );
        assert_eq!(
            windows(
                r#""model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": true, "max_window_layers": 1"#
            ),
            [None, w, w]
        );
        assert_eq!(
            windows(
                r#""model_type": "qwen2", "sliding_window": 4096,
                   "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]"#
            ),
            [w, None, w]
        );
        assert_eq!(windows(r#""model_type": "llama""#), [None, None, None]);
        assert_eq!(
            cfg(&format!(
                r#"{{"model_type": "mistral", "sliding_window": 4096, {base}}}"#
            ))
            .max_context(),
            32768
        );
    }
}
