//! StarCoder2 (Lozhkov et al. 2024, "StarCoder 2 and The Stack v2", arXiv:2402.19173):
//! the shared decoder with biased LayerNorms, biased projections, a GELU (tanh) MLP and
//! NEOX-style rotary embeddings. Reference code: Hugging Face transformers
//! `models/starcoder2/modeling_starcoder2.py`; GGUF names from llama.cpp `src/llama-arch.cpp`.

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use crate::decoder::{Block, Decoder, Heads, Mlp, Norm};
use crate::gguf::GgufFile;
use crate::layers::{LayerNorm, Rotary};
use crate::model::ModelInfo;
use crate::weights::{Linear, Projections, WeightStore};
use crate::{Error, Result};

/// Hyper-parameters, with Hugging Face `config.json` field names.
#[derive(Debug, Clone, Deserialize)]
pub struct StarCoder2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_eps")]
    pub norm_epsilon: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "yes")]
    pub use_bias: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn yes() -> bool {
    true
}
fn default_act() -> String {
    "gelu_pytorch_tanh".into()
}

impl StarCoder2Config {
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    fn validate(&self, source: &Path) -> Result<()> {
        let h = self.num_attention_heads;
        if h == 0
            || self.num_key_value_heads == 0
            || !h.is_multiple_of(self.num_key_value_heads)
            || !self.hidden_size.is_multiple_of(h)
        {
            return Err(Error::format(
                source,
                format!(
                    "hidden size {} with {h} heads and {} key/value heads is inconsistent",
                    self.hidden_size, self.num_key_value_heads
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::format(
                source,
                format!("head dimension {} is odd", self.head_dim()),
            ));
        }
        if !self.hidden_act.starts_with("gelu") {
            return Err(Error::unsupported(
                source.display().to_string(),
                format!("activation {}", self.hidden_act),
            ));
        }
        Ok(())
    }

    /// Reads the `starcoder2.*` metadata of a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let key = |k: &str| format!("starcoder2.{k}");
        let vocab = match g.tensor_info("token_embd.weight") {
            Some(info) if info.dims.len() == 2 => info.dims[0],
            _ => {
                return Err(Error::format(
                    g.path(),
                    "tensor token_embd.weight is missing or not 2-D",
                ));
            }
        };
        let heads = g.get_usize(&key("attention.head_count"))?;
        Ok(StarCoder2Config {
            vocab_size: vocab,
            hidden_size: g.get_usize(&key("embedding_length"))?,
            intermediate_size: g.get_usize(&key("feed_forward_length"))?,
            num_hidden_layers: g.get_usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: match g.get(&key("attention.head_count_kv")) {
                Some(_) => g.get_usize(&key("attention.head_count_kv"))?,
                None => heads,
            },
            norm_epsilon: g.get_f64(&key("attention.layer_norm_epsilon"))?,
            rope_theta: g
                .get(&key("rope.freq_base"))
                .and_then(|v| v.as_f64())
                .unwrap_or(10_000.0),
            max_position_embeddings: g.get_usize(&key("context_length"))?,
            use_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            sliding_window: None,
            hidden_act: default_act(),
        })
    }
}

/// StarCoder2's loaders: the shared [`Decoder`] with LayerNorms and a GELU MLP.
pub struct StarCoder2;

impl StarCoder2 {
    pub fn load(cfg: StarCoder2Config, store: &WeightStore, device: &Device) -> Result<Decoder> {
        cfg.validate(store.path())?;
        let gguf = store.is_gguf();
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nq, nkv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let bias = cfg.use_bias;
        let norm = |name: &str| -> Result<Norm> {
            let (w, b) = (format!("{name}.weight"), format!("{name}.bias"));
            Ok(Norm::Layer(LayerNorm::new(
                store.tensor(&w, &[h], device)?,
                store.tensor(&b, &[h], device)?,
                cfg.norm_epsilon,
            )))
        };
        let lin = |name: &str, out, inp| Linear::load(store, name, out, inp, bias, device);
        let embed_name = if gguf {
            "token_embd.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let embed = store.embedding(embed_name, cfg.vocab_size, h, device)?;
        // Not sized by the config: a hostile layer count must fail at its first missing tensor,
        // not in the allocator.
        let mut blocks = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let n = |hf: &str, gg: &str| {
                if gguf {
                    format!("blk.{i}.{gg}")
                } else {
                    format!("model.layers.{i}.{hf}")
                }
            };
            blocks.push(Block {
                attn_norm: norm(&n("input_layernorm", "attn_norm"))?,
                qkv: Projections::new(vec![
                    (lin(&n("self_attn.q_proj", "attn_q"), nq, h)?, nq),
                    (lin(&n("self_attn.k_proj", "attn_k"), nkv, h)?, nkv),
                    (lin(&n("self_attn.v_proj", "attn_v"), nkv, h)?, nkv),
                ])?,
                o: lin(&n("self_attn.o_proj", "attn_output"), h, nq)?,
                mlp_norm: norm(&n("post_attention_layernorm", "ffn_norm"))?,
                mlp: Mlp::Gelu {
                    fc: lin(&n("mlp.c_fc", "ffn_up"), cfg.intermediate_size, h)?,
                    proj: lin(&n("mlp.c_proj", "ffn_down"), h, cfg.intermediate_size)?,
                },
            });
        }
        let final_norm = norm(if gguf { "output_norm" } else { "model.norm" })?;
        let head_name = if gguf { "output.weight" } else { "lm_head.weight" };
        let lm_head = if store.contains(head_name) {
            Linear::load_matrix(store, head_name, cfg.vocab_size, h, device)?
        } else {
            embed.as_linear()?
        };
        let rotary = Rotary::new(
            hd,
            cfg.rope_theta,
            cfg.max_position_embeddings,
            None,
            None,
            false,
            device,
        )?;
        // Every layer slides when the config has a window shorter than the context.
        let window = cfg.sliding_window.filter(|&w| w > 0 && w < cfg.max_position_embeddings);
        let sliding_windows = vec![window; blocks.len()];
        Ok(Decoder {
            info: ModelInfo {
                architecture: "starcoder2".into(),
                vocab_size: cfg.vocab_size,
                max_context: cfg.max_position_embeddings,
                num_layers: cfg.num_hidden_layers,
                weight_bytes: store.total_bytes(),
            },
            device: device.clone(),
            heads: Heads {
                query: cfg.num_attention_heads,
                key_value: cfg.num_key_value_heads,
                dim: hd,
            },
            embed,
            blocks,
            norm: final_norm,
            lm_head,
            rotary,
            sliding_windows,
        })
    }

    /// Loads a Hugging Face checkpoint directory (`config.json` + safetensors).
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Decoder> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: StarCoder2Config = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
        Self::load(cfg, &WeightStore::open_safetensors_dir(dir)?, device)
    }

    pub fn from_gguf(gguf: GgufFile, device: &Device) -> Result<Decoder> {
        let cfg = StarCoder2Config::from_gguf(&gguf)?;
        Self::load(cfg, &WeightStore::Gguf(gguf), device)
    }
}
