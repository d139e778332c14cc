//! Whisper (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
//! Supervision", arXiv:2212.04356): a log-mel encoder (two convolutions, sinusoidal
//! positions, pre-norm transformer) and a text decoder (learned positions, causal
//! self-attention, cross-attention over the encoder output, tied output projection).
//! Reference code: openai/whisper `whisper/model.py`; Hugging Face transformers
//! `models/whisper/modeling_whisper.py` (weight names); CTranslate2
//! `python/ctranslate2/converters/transformers.py` and `specs/whisper_spec.py` (the
//! `model.bin` names faster-whisper uses).
//!
//! Loads every size, English-only and multilingual, 80 or 128 mel bins, from a Hugging
//! Face checkpoint (`config.json`, safetensors, `tokenizer.json`, optional
//! `generation_config.json`) or a CTranslate2 directory (`model.bin`, `config.json`,
//! `tokenizer.json`). Every size comes from the config or the tensor shapes.
//!
//! State stays outside the weights: [`Whisper::encode`] returns [`AudioFeatures`] (the
//! encoder output plus every decoder layer's cross-attention keys and values, computed
//! once per audio window), and a [`WhisperDecoder`] holds one engine [`SeqCache`] per
//! sequence: its self-attention keys and values, and as the cache's context its audio's
//! cross-attention ones, so beams fork copy-on-write and reorder by cloning `Arc`s.
//! Sequences of one step may read different audios; all sequences reading the same audio
//! share one context and run their cross-attention as one matmul.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::ct2::{Ct2DType, Ct2File};
use crate::kv_cache::{Context, SeqCache};
use crate::layers::LayerNorm;
use crate::tokenizer::Tokenizer;
use crate::weights::{Linear, WeightStore};
use crate::{Error, Result};

/// Vocabulary size from which openai/whisper (and CTranslate2) treat a model as
/// multilingual: English-only models have 51,864 tokens, multilingual ones 51,865 or
/// more (51,866 for large-v3).
pub const MULTILINGUAL_VOCAB: usize = 51_865;

/// Layer-norm epsilon of every Whisper implementation.
const LN_EPS: f64 = 1e-5;

/// The dimensions of a Whisper model (openai `ModelDimensions`, plus the MLP widths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperConfig {
    /// Mel bins of the input (80; 128 for large-v3).
    pub n_mels: usize,
    /// Encoder positions (1500); the mel input has twice as many frames (3000, 30 s).
    pub n_audio_ctx: usize,
    pub n_audio_layer: usize,
    pub n_audio_head: usize,
    /// Decoder positions (448): the longest token sequence.
    pub n_text_ctx: usize,
    pub n_text_layer: usize,
    pub n_text_head: usize,
    /// Width of the encoder and decoder (`n_audio_state` = `n_text_state`).
    pub d_model: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    /// Rows of the token embedding and logits (timestamps included).
    pub n_vocab: usize,
    /// Token embeddings multiplied by `sqrt(d_model)` (false for every released model).
    pub scale_embedding: bool,
}

impl WhisperConfig {
    /// Mel frames of one input window.
    pub fn n_frames(&self) -> usize {
        2 * self.n_audio_ctx
    }

    fn validate(&self, source: &Path) -> Result<()> {
        let zero = [
            ("num_mel_bins", self.n_mels),
            ("max_source_positions", self.n_audio_ctx),
            ("encoder_layers", self.n_audio_layer),
            ("encoder_attention_heads", self.n_audio_head),
            ("max_target_positions", self.n_text_ctx),
            ("decoder_layers", self.n_text_layer),
            ("decoder_attention_heads", self.n_text_head),
            ("d_model", self.d_model),
            ("vocab_size", self.n_vocab),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(Error::format(source, format!("{name} is 0")));
        }
        for (what, heads) in [("encoder", self.n_audio_head), ("decoder", self.n_text_head)] {
            if !self.d_model.is_multiple_of(heads) {
                return Err(Error::format(
                    source,
                    format!("d_model {} is not a multiple of the {heads} {what} heads", self.d_model),
                ));
            }
        }
        Ok(())
    }
}

/// Hugging Face `config.json` of a Whisper checkpoint (original field names).
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    num_mel_bins: usize,
    max_source_positions: usize,
    max_target_positions: usize,
    d_model: usize,
    encoder_layers: usize,
    encoder_attention_heads: usize,
    encoder_ffn_dim: usize,
    decoder_layers: usize,
    decoder_attention_heads: usize,
    decoder_ffn_dim: usize,
    vocab_size: usize,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default)]
    scale_embedding: bool,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
}

fn default_activation() -> String {
    "gelu".into()
}

fn yes() -> bool {
    true
}

/// The decoding task written after the language token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

/// Whisper's special tokens, read from `tokenizer.json` (their ids differ between
/// English-only and multilingual vocabularies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperSpecialTokens {
    /// `<|endoftext|>`.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    pub translate: u32,
    pub transcribe: u32,
    /// `<|startoflm|>`.
    pub sot_lm: u32,
    /// `<|startofprev|>`: precedes the previous window's text given as a prompt.
    pub sot_prev: u32,
    /// `<|nospeech|>` (`<|nocaptions|>` in older vocabularies).
    pub no_speech: u32,
    pub no_timestamps: u32,
    /// `<|0.00|>`; timestamp `k` (k × 0.02 s) is `timestamp_begin + k`, up to the end of the
    /// model's vocabulary. English-only `tokenizer.json` files do not list the timestamp
    /// tokens; they follow `<|notimestamps|>` there too.
    pub timestamp_begin: u32,
    /// Language codes and their tokens in vocabulary order (`("en", 50259)`, ...); empty for
    /// English-only models, whose vocabulary lists language tokens the model never saw.
    pub languages: Vec<(String, u32)>,
    pub is_multilingual: bool,
}

impl WhisperSpecialTokens {
    fn from_tokenizer(tok: &Tokenizer, n_vocab: usize, multilingual: Option<bool>, path: &Path) -> Result<Self> {
        let id = |names: &[&str]| -> Result<u32> {
            names.iter().find_map(|n| tok.token_id(n)).ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "special token {} is missing: not a Whisper tokenizer",
                        names.join(" or ")
                    ),
                )
            })
        };
        let eot = id(&["<|endoftext|>"])?;
        let sot = id(&["<|startoftranscript|>"])?;
        let translate = id(&["<|translate|>"])?;
        let transcribe = id(&["<|transcribe|>"])?;
        let sot_lm = id(&["<|startoflm|>"])?;
        let sot_prev = id(&["<|startofprev|>"])?;
        let no_speech = id(&["<|nospeech|>", "<|nocaptions|>"])?;
        let no_timestamps = id(&["<|notimestamps|>"])?;
        let timestamp_begin = tok.token_id("<|0.00|>").unwrap_or(no_timestamps + 1);
        let ids = [
            eot,
            sot,
            translate,
            transcribe,
            sot_lm,
            sot_prev,
            no_speech,
            no_timestamps,
        ];
        if let Some(bad) = ids.iter().chain([&timestamp_begin]).find(|&&i| i as usize >= n_vocab) {
            return Err(Error::format(
                path,
                format!("special token id {bad} is outside the model's vocabulary of {n_vocab}"),
            ));
        }
        let is_multilingual = multilingual.unwrap_or(n_vocab >= MULTILINGUAL_VOCAB);
        let mut languages = Vec::new();
        if is_multilingual {
            for id in sot + 1..translate {
                let Some(code) = tok
                    .id_to_token(id)
                    .and_then(|t| Some(t.strip_prefix("<|")?.strip_suffix("|>")?.to_owned()))
                else {
                    break;
                };
                languages.push((code, id));
            }
        }
        Ok(WhisperSpecialTokens {
            eot,
            sot,
            translate,
            transcribe,
            sot_lm,
            sot_prev,
            no_speech,
            no_timestamps,
            timestamp_begin,
            languages,
            is_multilingual,
        })
    }

    /// The token of a language code (`"en"`, `"de"`, ...), for multilingual models.
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages.iter().find(|(c, _)| c == code).map(|(_, id)| *id)
    }

    /// The code of a language token.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages.iter().find(|(_, t)| *t == id).map(|(c, _)| c.as_str())
    }

    pub fn is_timestamp(&self, id: u32) -> bool {
        id >= self.timestamp_begin
    }

    /// openai's `sot_sequence`: `[sot]` for English-only models, `[sot, language, task]`
    /// for multilingual ones (`language` None: `[sot]`, to detect the language from the
    /// next token's logits). Asking an English-only model for another language or for
    /// translation is an error.
    pub fn sot_sequence(&self, language: Option<&str>, task: Task) -> Result<Vec<u32>> {
        if !self.is_multilingual {
            if language.is_some_and(|l| l != "en") || task == Task::Translate {
                return Err(Error::InvalidInput(format!(
                    "an English-only Whisper model can only transcribe English (asked for {} {:?})",
                    language.unwrap_or("any language"),
                    task
                )));
            }
            return Ok(vec![self.sot]);
        }
        let Some(code) = language else {
            return Ok(vec![self.sot]);
        };
        let lang = self.language_token(code).ok_or_else(|| {
            Error::InvalidInput(format!("language {code:?} is not in this Whisper model's vocabulary"))
        })?;
        let task = match task {
            Task::Transcribe => self.transcribe,
            Task::Translate => self.translate,
        };
        Ok(vec![self.sot, lang, task])
    }
}

/// Self-attention projections: q|k|v fused into one matrix (k has no bias; its part of the
/// fused bias is zero), then the output projection.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    out: Linear,
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2
            .forward(&self.fc1.forward_with(x, tessera_kernels::dense::Epilogue::GeluErf)?)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attn_ln: LayerNorm,
    attn: SelfAttention,
    mlp_ln: LayerNorm,
    mlp: Mlp,
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    attn_ln: LayerNorm,
    attn: SelfAttention,
    cross_ln: LayerNorm,
    cross_q: Linear,
    /// k|v of the encoder output, fused (k without bias).
    cross_kv: Linear,
    cross_out: Linear,
    mlp_ln: LayerNorm,
    mlp: Mlp,
}

struct Weights {
    conv1: (Tensor, Tensor),
    conv2: (Tensor, Tensor),
    /// `[n_audio_ctx, d]`, sinusoids as stored.
    audio_pos: Tensor,
    encoder: Vec<EncoderLayer>,
    encoder_ln: LayerNorm,
    /// `[n_vocab, d]`; `None` when it is tied to `logits` and looked up there (packed
    /// weights: see [`Linear::packed_rows`]).
    token_embedding: Option<Tensor>,
    /// `[n_text_ctx, d]`.
    text_pos: Tensor,
    decoder: Vec<DecoderLayer>,
    decoder_ln: LayerNorm,
    /// The output projection (the token embedding unless the checkpoint unties it).
    logits: Linear,
}

struct Inner {
    path: PathBuf,
    config: WhisperConfig,
    device: Device,
    dtype: DType,
    weights: Weights,
    tokenizer: Tokenizer,
    special: WhisperSpecialTokens,
    alignment_heads: Vec<(usize, usize)>,
}

/// A loaded Whisper model. Cheap to clone (the weights are shared) and `Send + Sync`:
/// one model serves any number of audios, decoders and threads.
#[derive(Clone)]
pub struct Whisper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("path", &self.inner.path)
            .field("config", &self.inner.config)
            .field("dtype", &self.inner.dtype)
            .finish_non_exhaustive()
    }
}

/// What a model directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Ct2,
    HuggingFace,
}

fn model_dir(path: &Path) -> Result<(PathBuf, Format)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        return if name == "model.bin" {
            Ok((dir, Format::Ct2))
        } else if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            Ok((dir, Format::HuggingFace))
        } else {
            Err(Error::ModelNotFound(format!(
                "{}: not a Whisper model file (model.bin or *.safetensors)",
                path.display()
            )))
        };
    }
    if path.join("model.bin").is_file() {
        Ok((path.to_path_buf(), Format::Ct2))
    } else if path.join("model.safetensors").is_file() || path.join("model.safetensors.index.json").is_file() {
        Ok((path.to_path_buf(), Format::HuggingFace))
    } else {
        Err(Error::ModelNotFound(format!(
            "{}: no model.bin (CTranslate2) or model.safetensors (Hugging Face) in this directory",
            path.display()
        )))
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn require_file(dir: &Path, name: &str, what: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        return Err(Error::ModelNotFound(format!(
            "{}: missing ({what}); a Whisper model directory needs config.json and tokenizer.json next to the weights",
            path.display()
        )));
    }
    Ok(path)
}

/// `alignment_heads` as `[[layer, head], ...]`, when the file has them.
fn read_alignment_heads(json: &serde_json::Value, path: &Path) -> Result<Option<Vec<(usize, usize)>>> {
    let Some(value) = json.get("alignment_heads").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = || Error::format(path, "alignment_heads must be a list of [layer, head] pairs");
    let list = value.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([l, h]) => Ok((
                l.as_u64().ok_or_else(bad)? as usize,
                h.as_u64().ok_or_else(bad)? as usize,
            )),
            _ => Err(bad()),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Drops the token embedding `table` when `logits`, built from the same tensor, can serve
/// its rows (packed weights hold their own copy; keeping both would double the largest
/// matrix of a small Whisper).
fn untie(table: Tensor, logits: &Linear) -> Result<Option<Tensor>> {
    Ok(if logits.packed_rows(&[])?.is_some() {
        None
    } else {
        Some(table)
    })
}

fn linear(weight: Tensor, bias: Option<Tensor>) -> Linear {
    Linear::from_qmatmul(QMatMul::Tensor(weight), bias)
}

/// The compute type: f32 on CPU (candle's CPU kernels are fastest and exact there), f16 on
/// accelerators (Whisper checkpoints are f16; openai and faster-whisper run them so).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() { DType::F32 } else { DType::F16 }
}

/// Reads tensors in the compute type and device, under Hugging Face names (with or
/// without the `model.` prefix of `WhisperForConditionalGeneration`).
struct HfSource<'a> {
    store: &'a WeightStore,
    prefix: &'static str,
    dtype: DType,
    device: &'a Device,
}

impl HfSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        Ok(self.store.tensor(&full, shape, self.device)?.to_dtype(self.dtype)?)
    }

    fn linear(&self, name: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.get(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(self.get(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(linear(w, b))
    }

    fn norm(&self, name: &str, d: usize) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{name}.weight"), &[d])?,
            self.get(&format!("{name}.bias"), &[d])?,
            LN_EPS,
        ))
    }

    /// The `parts` (`q`, `k`, `v`) of an attention module stacked into one linear; `k`
    /// has no bias in Whisper, so its part of the bias is zero.
    fn fused(&self, attn: &str, parts: &[&str], d: usize) -> Result<Linear> {
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for p in parts {
            ws.push(self.get(&format!("{attn}.{p}_proj.weight"), &[d, d])?);
            bs.push(if *p == "k" {
                Tensor::zeros(d, self.dtype, self.device)?
            } else {
                self.get(&format!("{attn}.{p}_proj.bias"), &[d])?
            });
        }
        Ok(linear(Tensor::cat(&ws, 0)?, Some(Tensor::cat(&bs, 0)?)))
    }

    fn self_attention(&self, attn: &str, d: usize) -> Result<SelfAttention> {
        Ok(SelfAttention {
            qkv: self.fused(attn, &["q", "k", "v"], d)?,
            out: self.linear(&format!("{attn}.out_proj"), d, d, true)?,
        })
    }

    fn mlp(&self, layer: &str, d: usize, ffn: usize) -> Result<Mlp> {
        Ok(Mlp {
            fc1: self.linear(&format!("{layer}.fc1"), ffn, d, true)?,
            fc2: self.linear(&format!("{layer}.fc2"), d, ffn, true)?,
        })
    }
}

fn load_hf(dir: &Path, device: &Device, dtype: DType) -> Result<(WhisperConfig, Weights, Option<serde_json::Value>)> {
    let cfg_path = require_file(dir, "config.json", "the model configuration")?;
    let json = read_json(&cfg_path)?;
    if let Some(t) = json.get("model_type").and_then(|v| v.as_str())
        && t != "whisper"
    {
        return Err(Error::unsupported(
            cfg_path.display().to_string(),
            format!("model_type {t:?} is not whisper"),
        ));
    }
    let hf: HfConfig =
        serde_json::from_value(json).map_err(|e| Error::format(&cfg_path, format!("not a Whisper config: {e}")))?;
    if hf.activation_function != "gelu" {
        return Err(Error::unsupported(
            cfg_path.display().to_string(),
            format!("activation {:?} (Whisper uses gelu)", hf.activation_function),
        ));
    }
    let config = WhisperConfig {
        n_mels: hf.num_mel_bins,
        n_audio_ctx: hf.max_source_positions,
        n_audio_layer: hf.encoder_layers,
        n_audio_head: hf.encoder_attention_heads,
        n_text_ctx: hf.max_target_positions,
        n_text_layer: hf.decoder_layers,
        n_text_head: hf.decoder_attention_heads,
        d_model: hf.d_model,
        encoder_ffn_dim: hf.encoder_ffn_dim,
        decoder_ffn_dim: hf.decoder_ffn_dim,
        n_vocab: hf.vocab_size,
        scale_embedding: hf.scale_embedding,
    };
    config.validate(&cfg_path)?;
    let store = WeightStore::open_safetensors_dir(dir)?;
    let prefix = if store.contains("model.encoder.conv1.weight") {
        "model."
    } else if store.contains("encoder.conv1.weight") {
        ""
    } else {
        return Err(Error::format(
            dir,
            "tensor model.encoder.conv1.weight is missing: not a Whisper checkpoint",
        ));
    };
    let s = HfSource {
        store: &store,
        prefix,
        dtype,
        device,
    };
    let d = config.d_model;
    let conv = |name: &str, inp: usize| -> Result<(Tensor, Tensor)> {
        Ok((
            s.get(&format!("encoder.{name}.weight"), &[d, inp, 3])?,
            s.get(&format!("encoder.{name}.bias"), &[d])?,
        ))
    };
    let encoder = (0..config.n_audio_layer)
        .map(|i| {
            let p = format!("encoder.layers.{i}");
            Ok(EncoderLayer {
                attn_ln: s.norm(&format!("{p}.self_attn_layer_norm"), d)?,
                attn: s.self_attention(&format!("{p}.self_attn"), d)?,
                mlp_ln: s.norm(&format!("{p}.final_layer_norm"), d)?,
                mlp: s.mlp(&p, d, config.encoder_ffn_dim)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let decoder = (0..config.n_text_layer)
        .map(|i| {
            let p = format!("decoder.layers.{i}");
            Ok(DecoderLayer {
                attn_ln: s.norm(&format!("{p}.self_attn_layer_norm"), d)?,
                attn: s.self_attention(&format!("{p}.self_attn"), d)?,
                cross_ln: s.norm(&format!("{p}.encoder_attn_layer_norm"), d)?,
                cross_q: s.linear(&format!("{p}.encoder_attn.q_proj"), d, d, true)?,
                cross_kv: s.fused(&format!("{p}.encoder_attn"), &["k", "v"], d)?,
                cross_out: s.linear(&format!("{p}.encoder_attn.out_proj"), d, d, true)?,
                mlp_ln: s.norm(&format!("{p}.final_layer_norm"), d)?,
                mlp: s.mlp(&p, d, config.decoder_ffn_dim)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let token_embedding = s.get("decoder.embed_tokens.weight", &[config.n_vocab, d])?;
    let (logits, token_embedding) = if !hf.tie_word_embeddings && store.contains("proj_out.weight") {
        let w = store
            .tensor("proj_out.weight", &[config.n_vocab, d], device)?
            .to_dtype(dtype)?;
        (linear(w, None), Some(token_embedding))
    } else {
        let logits = linear(token_embedding.clone(), None);
        let table = untie(token_embedding, &logits)?;
        (logits, table)
    };
    let weights = Weights {
        conv1: conv("conv1", config.n_mels)?,
        conv2: conv("conv2", d)?,
        audio_pos: s.get("encoder.embed_positions.weight", &[config.n_audio_ctx, d])?,
        encoder,
        encoder_ln: s.norm("encoder.layer_norm", d)?,
        token_embedding,
        text_pos: s.get("decoder.embed_positions.weight", &[config.n_text_ctx, d])?,
        decoder,
        decoder_ln: s.norm("decoder.layer_norm", d)?,
        logits,
    };
    let generation = dir.join("generation_config.json");
    let generation = if generation.is_file() {
        Some(read_json(&generation)?)
    } else {
        None
    };
    Ok((config, weights, generation))
}

/// Reads tensors of a CTranslate2 `WhisperSpec` in the compute type and device.
struct Ct2Source<'a> {
    file: &'a Ct2File,
    dtype: DType,
    device: &'a Device,
}

impl Ct2Source<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.file.tensor(name, shape, self.dtype, self.device)
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let bias = self.get(&format!("{name}/bias"), &[out])?;
        self.weight_linear(&format!("{name}/weight"), &[out, inp], Some(bias))
    }

    /// A linear layer over the matrix `name`. Stored in f16 (as converted checkpoints
    /// usually are) and computed in f32 on the CPU, the matrix stays f16 in memory:
    /// [`Linear::from_f16_weights`] widens it exactly inside the product.
    fn weight_linear(&self, name: &str, shape: &[usize], bias: Option<Tensor>) -> Result<Linear> {
        let stored_f16 = self.file.variable(name).is_some_and(|v| v.dtype == Ct2DType::F16);
        if stored_f16 && self.dtype == DType::F32 && crate::backend::cpu_kernels(self.device) {
            let w = self.file.tensor(name, shape, DType::F16, self.device)?;
            return Linear::from_f16_weights(w, bias);
        }
        Ok(linear(self.get(name, shape)?, bias))
    }

    fn norm(&self, name: &str, d: usize) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{name}/gamma"), &[d])?,
            self.get(&format!("{name}/beta"), &[d])?,
            LN_EPS,
        ))
    }

    fn mlp(&self, layer: &str, d: usize, ffn: usize) -> Result<Mlp> {
        Ok(Mlp {
            fc1: self.linear(&format!("{layer}/ffn/linear_0"), ffn, d)?,
            fc2: self.linear(&format!("{layer}/ffn/linear_1"), d, ffn)?,
        })
    }

    fn dims2(&self, name: &str) -> Result<(usize, usize)> {
        match self.file.dims(name)? {
            &[a, b] => Ok((a, b)),
            other => Err(Error::format(
                self.file.path(),
                format!("variable {name} should be 2-D but has shape {other:?}"),
            )),
        }
    }

    fn count_layers(&self, stack: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.file
                    .contains(&format!("{stack}/layer_{i}/self_attention/linear_0/weight"))
            })
            .count()
    }

    fn scalar(&self, name: &str) -> Result<i64> {
        self.file
            .scalar_i64(name)?
            .ok_or_else(|| Error::format(self.file.path(), format!("variable {name} is missing")))
    }
}

fn load_ct2(dir: &Path, device: &Device, dtype: DType) -> Result<(WhisperConfig, Weights, serde_json::Value)> {
    let bin = dir.join("model.bin");
    let cfg_path = require_file(dir, "config.json", "the CTranslate2 model configuration")?;
    let ct2_config = read_json(&cfg_path)?;
    let file = Ct2File::open(&bin)?;
    if file.spec() != "WhisperSpec" {
        return Err(Error::unsupported(
            bin.display().to_string(),
            format!("CTranslate2 spec {:?} is not WhisperSpec", file.spec()),
        ));
    }
    let s = Ct2Source {
        file: &file,
        dtype,
        device,
    };
    // Flags a real converter writes; anything else would be a different architecture.
    for (name, want) in [("decoder/activation", 3), ("decoder/pre_norm", 1), ("decoder/alibi", 0)] {
        if let Some(v) = file.scalar_i64(name)?
            && v != want
        {
            return Err(Error::unsupported(
                bin.display().to_string(),
                format!("{name} = {v} (Whisper has {want})"),
            ));
        }
    }
    let (d, n_mels, k) = match file.dims("encoder/conv1/weight")? {
        &[d, m, k] => (d, m, k),
        other => {
            return Err(Error::format(
                &bin,
                format!("variable encoder/conv1/weight should be 3-D but has shape {other:?}"),
            ));
        }
    };
    if k != 3 {
        return Err(Error::format(&bin, format!("encoder/conv1 has kernel size {k}, not 3")));
    }
    let heads = |name: &str| -> Result<usize> {
        let v = s.scalar(name)?;
        usize::try_from(v).map_err(|_| Error::format(&bin, format!("{name} is {v}")))
    };
    let config = WhisperConfig {
        n_mels,
        n_audio_ctx: s.dims2("encoder/position_encodings/encodings")?.0,
        n_audio_layer: s.count_layers("encoder"),
        n_audio_head: heads("encoder/num_heads")?,
        n_text_ctx: s.dims2("decoder/position_encodings/encodings")?.0,
        n_text_layer: s.count_layers("decoder"),
        n_text_head: heads("decoder/num_heads")?,
        d_model: d,
        encoder_ffn_dim: s.dims2("encoder/layer_0/ffn/linear_0/weight")?.0,
        decoder_ffn_dim: s.dims2("decoder/layer_0/ffn/linear_0/weight")?.0,
        n_vocab: s.dims2("decoder/embeddings/weight")?.0,
        scale_embedding: file.scalar_i64("decoder/scale_embeddings")?.unwrap_or(0) != 0,
    };
    config.validate(&bin)?;
    let encoder = (0..config.n_audio_layer)
        .map(|i| {
            let p = format!("encoder/layer_{i}");
            Ok(EncoderLayer {
                attn_ln: s.norm(&format!("{p}/self_attention/layer_norm"), d)?,
                attn: SelfAttention {
                    qkv: s.linear(&format!("{p}/self_attention/linear_0"), 3 * d, d)?,
                    out: s.linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                },
                mlp_ln: s.norm(&format!("{p}/ffn/layer_norm"), d)?,
                mlp: s.mlp(&p, d, config.encoder_ffn_dim)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let decoder = (0..config.n_text_layer)
        .map(|i| {
            let p = format!("decoder/layer_{i}");
            Ok(DecoderLayer {
                attn_ln: s.norm(&format!("{p}/self_attention/layer_norm"), d)?,
                attn: SelfAttention {
                    qkv: s.linear(&format!("{p}/self_attention/linear_0"), 3 * d, d)?,
                    out: s.linear(&format!("{p}/self_attention/linear_1"), d, d)?,
                },
                cross_ln: s.norm(&format!("{p}/attention/layer_norm"), d)?,
                cross_q: s.linear(&format!("{p}/attention/linear_0"), d, d)?,
                cross_kv: s.linear(&format!("{p}/attention/linear_1"), 2 * d, d)?,
                cross_out: s.linear(&format!("{p}/attention/linear_2"), d, d)?,
                mlp_ln: s.norm(&format!("{p}/ffn/layer_norm"), d)?,
                mlp: s.mlp(&p, d, config.decoder_ffn_dim)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let table_shape = [config.n_vocab, d];
    // `decoder/projection/weight` is normally an alias of the embedding (shared storage).
    let same = file.variable("decoder/projection/weight").map(|v| v.name.as_str()) == Some("decoder/embeddings/weight");
    let (logits, token_embedding) = if same || !file.contains("decoder/projection/weight") {
        let logits = s.weight_linear("decoder/embeddings/weight", &table_shape, None)?;
        // Packed logits serve the table's rows (see `untie`).
        let table = match logits.packed_rows(&[])? {
            Some(_) => None,
            None => Some(s.get("decoder/embeddings/weight", &table_shape)?),
        };
        (logits, table)
    } else {
        let bias = if file.contains("decoder/projection/bias") {
            Some(s.get("decoder/projection/bias", &[config.n_vocab])?)
        } else {
            None
        };
        (
            s.weight_linear("decoder/projection/weight", &table_shape, bias)?,
            Some(s.get("decoder/embeddings/weight", &table_shape)?),
        )
    };
    let conv = |name: &str, inp: usize| -> Result<(Tensor, Tensor)> {
        Ok((
            s.get(&format!("encoder/{name}/weight"), &[d, inp, 3])?,
            s.get(&format!("encoder/{name}/bias"), &[d])?,
        ))
    };
    let weights = Weights {
        conv1: conv("conv1", n_mels)?,
        conv2: conv("conv2", d)?,
        audio_pos: s.get("encoder/position_encodings/encodings", &[config.n_audio_ctx, d])?,
        encoder,
        encoder_ln: s.norm("encoder/layer_norm", d)?,
        token_embedding,
        text_pos: s.get("decoder/position_encodings/encodings", &[config.n_text_ctx, d])?,
        decoder,
        decoder_ln: s.norm("decoder/layer_norm", d)?,
        logits,
    };
    Ok((config, weights, ct2_config))
}

/// The encoder's view of a batch of audio windows: its output and, per decoder layer, the
/// cross-attention keys (transposed, `[audios, heads, head_dim, n_audio_ctx]`) and values
/// (`[audios, heads, n_audio_ctx, head_dim]`). Cloning shares the storage.
#[derive(Debug, Clone)]
pub struct AudioFeatures {
    encoder_output: Tensor,
    cross: Vec<(Tensor, Tensor)>,
}

impl AudioFeatures {
    /// Number of audio windows.
    pub fn len(&self) -> usize {
        self.encoder_output.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoder output `[audios, n_audio_ctx, d_model]` (compute dtype).
    pub fn encoder_output(&self) -> &Tensor {
        &self.encoder_output
    }

    /// The features of some of the audios, in the given order (copies those audios).
    pub fn select(&self, audios: &[usize]) -> Result<AudioFeatures> {
        check_audio_indices(audios, self.len())?;
        let idx = Tensor::new(
            audios.iter().map(|&a| a as u32).collect::<Vec<_>>().as_slice(),
            self.encoder_output.device(),
        )?;
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 0)?) };
        Ok(AudioFeatures {
            encoder_output: pick(&self.encoder_output)?,
            cross: self
                .cross
                .iter()
                .map(|(k, v)| Ok((pick(k)?, pick(v)?)))
                .collect::<Result<_>>()?,
        })
    }
}

fn check_audio_indices(audios: &[usize], n: usize) -> Result<()> {
    if let Some(bad) = audios.iter().find(|&&a| a >= n) {
        return Err(Error::InvalidInput(format!(
            "audio index {bad} is out of range: the features hold {n} audio windows"
        )));
    }
    Ok(())
}

impl Whisper {
    /// Loads a Whisper model from a directory (or a file inside it): CTranslate2 when it
    /// holds `model.bin`, Hugging Face when it holds safetensors. Weights are kept in
    /// [`default_dtype`] for the device.
    pub fn load(dir_or_file: &Path, device: &Device) -> Result<Whisper> {
        Self::load_with_dtype(dir_or_file, device, default_dtype(device))
    }

    /// [`Whisper::load`] with an explicit compute type (f32, f16 or bf16).
    pub fn load_with_dtype(dir_or_file: &Path, device: &Device, dtype: DType) -> Result<Whisper> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::InvalidInput(format!(
                "whisper compute type {dtype:?}: expected f32, f16 or bf16"
            )));
        }
        let (dir, format) = model_dir(dir_or_file)?;
        // Tokenizer first: it is small, and a missing one should not cost a weight load.
        let tok_path = require_file(&dir, "tokenizer.json", "the tokenizer")?;
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let (config, weights, extra, extra_path) = match format {
            Format::HuggingFace => {
                let (c, w, g) = load_hf(&dir, device, dtype)?;
                (c, w, g, dir.join("generation_config.json"))
            }
            Format::Ct2 => {
                let (c, w, j) = load_ct2(&dir, device, dtype)?;
                (c, w, Some(j), dir.join("config.json"))
            }
        };
        crate::allocator::release_free_memory();
        if tokenizer.vocab_size() > config.n_vocab {
            return Err(Error::format(
                &tok_path,
                format!(
                    "the tokenizer has {} tokens but the model's vocabulary only {}",
                    tokenizer.vocab_size(),
                    config.n_vocab
                ),
            ));
        }
        let multilingual = extra
            .as_ref()
            .and_then(|j| j.get("is_multilingual"))
            .and_then(|v| v.as_bool());
        let special = WhisperSpecialTokens::from_tokenizer(&tokenizer, config.n_vocab, multilingual, &tok_path)?;
        let alignment_heads = match extra.as_ref() {
            Some(j) => read_alignment_heads(j, &extra_path)?,
            None => None,
        };
        let alignment_heads = match alignment_heads {
            Some(heads) => {
                if let Some((l, h)) = heads
                    .iter()
                    .find(|(l, h)| *l >= config.n_text_layer || *h >= config.n_text_head)
                {
                    return Err(Error::format(
                        &extra_path,
                        format!(
                            "alignment head ({l}, {h}) is outside the decoder's {} layers of {} heads",
                            config.n_text_layer, config.n_text_head
                        ),
                    ));
                }
                heads
            }
            // openai/whisper: all heads of the second half of the decoder layers.
            None => (config.n_text_layer / 2..config.n_text_layer)
                .flat_map(|l| (0..config.n_text_head).map(move |h| (l, h)))
                .collect(),
        };
        tracing::debug!(path = %dir.display(), ?format, ?config, ?dtype, "loaded whisper");
        Ok(Whisper {
            inner: Arc::new(Inner {
                path: dir,
                config,
                device: device.clone(),
                dtype,
                weights,
                tokenizer,
                special,
                alignment_heads,
            }),
        })
    }

    pub fn config(&self) -> &WhisperConfig {
        &self.inner.config
    }

    /// The model's `tokenizer.json` (decode with or without special tokens).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn special(&self) -> &WhisperSpecialTokens {
        &self.inner.special
    }

    /// `(decoder layer, head)` pairs whose cross-attention follows the words' timing:
    /// from CTranslate2 `config.json` or Hugging Face `generation_config.json`
    /// `alignment_heads`, else every head of the second half of the decoder layers.
    pub fn alignment_heads(&self) -> &[(usize, usize)] {
        &self.inner.alignment_heads
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The compute type of the weights and activations.
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }

    /// The model directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs the encoder over `mel` (`[audios, n_mels, n_frames]`, log-mel as openai's
    /// `log_mel_spectrogram`, padded to exactly `2 * n_audio_ctx` frames) and computes
    /// every decoder layer's cross-attention keys and values once.
    pub fn encode(&self, mel: &Tensor) -> Result<AudioFeatures> {
        crate::model::on_pool(&self.inner.device, || self.encode_here(mel))
    }

    fn encode_here(&self, mel: &Tensor) -> Result<AudioFeatures> {
        let cfg = &self.inner.config;
        let w = &self.inner.weights;
        let dims = mel.dims();
        if dims.len() != 3 || dims[1] != cfg.n_mels || dims[2] != cfg.n_frames() || dims[0] == 0 {
            return Err(Error::InvalidInput(format!(
                "whisper mel input has shape {dims:?}, expected [audios, {}, {}]",
                cfg.n_mels,
                cfg.n_frames()
            )));
        }
        let (b, ctx, d) = (dims[0], cfg.n_audio_ctx, cfg.d_model);
        let x = mel.to_device(&self.inner.device)?.to_dtype(self.inner.dtype)?;
        let conv = |x: &Tensor, (k, bias): &(Tensor, Tensor), stride: usize| -> Result<Tensor> {
            crate::layers::gelu_erf(&x.conv1d(k, 1, stride, 1, 1)?.broadcast_add(&bias.reshape((1, d, 1))?)?)
        };
        let x = conv(&x, &w.conv1, 1)?;
        let x = conv(&x, &w.conv2, 2)?; // [b, d, ctx]
        let mut x = x.transpose(1, 2)?.broadcast_add(&w.audio_pos)?.reshape((b * ctx, d))?;
        let heads = cfg.n_audio_head;
        for layer in &w.encoder {
            let h = layer.attn_ln.forward(&x)?;
            let qkv = layer.attn.qkv.forward(&h)?;
            let a = encoder_attention(&qkv, b, ctx, heads, d / heads)?;
            x = (x + layer.attn.out.forward(&a)?)?;
            let h = layer.mlp_ln.forward(&x)?;
            x = (x + layer.mlp.forward(&h)?)?;
        }
        let x = w.encoder_ln.forward(&x)?;
        let (th, thd) = (cfg.n_text_head, d / cfg.n_text_head);
        let cross = w
            .decoder
            .iter()
            .map(|layer| {
                // [b * ctx, 2d] -> [2, b, heads, ctx, head_dim]
                let kv = layer
                    .cross_kv
                    .forward(&x)?
                    .reshape((b, ctx, 2, th, thd))?
                    .permute((2, 0, 3, 1, 4))?;
                let k_t = kv.get(0)?.transpose(2, 3)?.contiguous()?;
                let v = kv.get(1)?.contiguous()?;
                Ok((k_t, v))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AudioFeatures {
            encoder_output: x.reshape((b, ctx, d))?,
            cross,
        })
    }

    /// A decoder over `features`: sequence `i` reads audio `audio_index_per_sequence[i]`.
    /// Sequences start empty; feed the prompt with the first [`WhisperDecoder::step`].
    pub fn decoder(&self, features: &AudioFeatures, audio_index_per_sequence: &[usize]) -> Result<WhisperDecoder> {
        if audio_index_per_sequence.is_empty() {
            return Err(Error::InvalidInput(
                "a whisper decoder needs at least one sequence".into(),
            ));
        }
        if features.cross.len() != self.inner.config.n_text_layer
            || features.encoder_output.dim(2)? != self.inner.config.d_model
        {
            return Err(Error::InvalidInput(
                "these audio features were computed by another Whisper model".into(),
            ));
        }
        check_audio_indices(audio_index_per_sequence, features.len())?;
        // Each audio's cross-attention keys and values become the context of the caches
        // of the sequences that read it (views of the features' tensors: no copy).
        let mut contexts: Vec<Option<Arc<Context>>> = vec![None; features.len()];
        let mut caches = Vec::with_capacity(audio_index_per_sequence.len());
        for &audio in audio_index_per_sequence {
            let context = match &contexts[audio] {
                Some(c) => c.clone(),
                None => {
                    let layers = features
                        .cross
                        .iter()
                        .map(|(k_t, v)| Ok((k_t.get(audio)?, v.get(audio)?)))
                        .collect::<Result<Vec<_>>>()?;
                    let c = Arc::new(Context { layers });
                    contexts[audio] = Some(c.clone());
                    c
                }
            };
            caches.push(SeqCache::with_context(context));
        }
        let mut dec = WhisperDecoder {
            model: self.inner.clone(),
            audio: audio_index_per_sequence.to_vec(),
            caches,
            groups: Vec::new(),
            restore: None,
        };
        dec.regroup()?;
        Ok(dec)
    }

    /// For word timestamps: runs the decoder over `tokens` (whole sequence, typically the
    /// sot sequence, `<|notimestamps|>`, the text tokens and `<|endoftext|>`) on audio
    /// `audio_index` and returns the softmaxed cross-attention of the
    /// [`alignment heads`](Self::alignment_heads): `[heads, tokens, n_audio_ctx]` f32.
    pub fn cross_attention_weights(
        &self,
        features: &AudioFeatures,
        audio_index: usize,
        tokens: &[u32],
    ) -> Result<Tensor> {
        let scores = self.cross_attention_logits(features, audio_index, tokens)?;
        crate::layers::softmax_last_dim(&scores)
    }

    /// The scaled scores `q·k/√d` behind [`cross_attention_weights`](Self::cross_attention_weights),
    /// before the softmax: openai's `find_alignment` keeps only the frames of the actual
    /// audio (`num_frames / 2`) and softmaxes over those.
    pub fn cross_attention_logits(
        &self,
        features: &AudioFeatures,
        audio_index: usize,
        tokens: &[u32],
    ) -> Result<Tensor> {
        let mut dec = self.decoder(features, &[audio_index])?;
        let mut scores = Vec::with_capacity(self.inner.config.n_text_layer);
        dec.forward(&[tokens], Some(&mut scores))?;
        let heads = self
            .inner
            .alignment_heads
            .iter()
            .map(|&(l, h)| Ok(scores[l].get(h)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&heads, 0)?.to_dtype(DType::F32)?)
    }
}

/// Bidirectional self-attention of the encoder, one audio at a time (the score matrix of
/// a whole batch of 30-s windows would be large). `qkv`: `[b * ctx, 3 * d]`.
fn encoder_attention(qkv: &Tensor, b: usize, ctx: usize, heads: usize, hd: usize) -> Result<Tensor> {
    let d = heads * hd;
    // [3, b, heads, ctx, hd]
    let qkv = qkv
        .reshape((b, ctx, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let scale = (hd as f64).powf(-0.5);
    let (q, k, v) = ((qkv.get(0)? * scale)?, qkv.get(1)?, qkv.get(2)?);
    let mut outs = Vec::with_capacity(b);
    for i in 0..b {
        let scores = q.get(i)?.matmul(&k.get(i)?.t()?)?;
        let probs = crate::layers::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v.get(i)?)?); // [heads, ctx, hd]
    }
    let out = if b == 1 {
        outs.pop().expect("one audio").unsqueeze(0)?
    } else {
        Tensor::stack(&outs, 0)?
    };
    Ok(out.transpose(1, 2)?.reshape((b * ctx, d))?)
}

/// A group of sequences reading the same audio: their cross-attention is one matmul.
#[derive(Debug, Clone)]
struct Group {
    /// A sequence of the group: all of them read the same audio, whose cross-attention
    /// keys and values are this one's cache context.
    first: usize,
    /// The group's sequence indices (u32), for gathering their rows.
    rows: Tensor,
    len: usize,
}

/// The decoder state of a batch of sequences (beams of one audio, or sequences of several
/// audios) over one [`AudioFeatures`]: an engine [`SeqCache`] per sequence, holding its
/// self-attention keys and values and, as its context, its audio's cross-attention ones. All
/// sequences have the same length; the batch may shrink or grow through
/// [`reorder`](Self::reorder).
#[derive(Clone)]
pub struct WhisperDecoder {
    model: Arc<Inner>,
    audio: Vec<usize>,
    caches: Vec<SeqCache>,
    groups: Vec<Group>,
    /// Puts rows computed group by group back into sequence order (None: already in order).
    restore: Option<Tensor>,
}

impl std::fmt::Debug for WhisperDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperDecoder")
            .field("sequences", &self.caches.len())
            .field("len", &self.len())
            .field("audio", &self.audio)
            .finish_non_exhaustive()
    }
}

impl WhisperDecoder {
    /// Tokens so far in every sequence.
    pub fn len(&self) -> usize {
        self.caches.first().map_or(0, SeqCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn n_sequences(&self) -> usize {
        self.caches.len()
    }

    /// The tokens fed to sequence `i` so far. Panics if `i >= n_sequences()`.
    pub fn tokens(&self, i: usize) -> &[u32] {
        self.caches[i].tokens()
    }

    /// Sequence `i`'s engine cache: its self-attention blocks and, as context, its audio's
    /// cross-attention keys and values. Panics if `i >= n_sequences()`.
    pub fn cache(&self, i: usize) -> &SeqCache {
        &self.caches[i]
    }

    /// The audio each sequence reads.
    pub fn audio_indices(&self) -> &[usize] {
        &self.audio
    }

    /// Tokens that can still be appended before the text context (448) is full.
    pub fn remaining(&self) -> usize {
        self.model.config.n_text_ctx - self.len()
    }

    /// Appends `tokens[i]` to sequence `i` (all the same length: the first call feeds the
    /// prompt, later calls one token each) and returns f32 logits of each sequence's last
    /// position: `[n_sequences, n_vocab]`.
    ///
    /// Logits at an inner position (openai's no-speech probability and language detection
    /// read the position of `<|startoftranscript|>`) come from splitting the prompt there
    /// into two steps; the result is the same as one step.
    pub fn step(&mut self, tokens: &[&[u32]]) -> Result<Tensor> {
        self.forward(tokens, None)
    }

    /// Beam reorder: new sequence `i` continues old sequence `sources[i]`. Sources may
    /// repeat (forks share every cached block; appends copy at most the last partial
    /// block) or be left out; the number of sequences becomes `sources.len()`.
    pub fn reorder(&mut self, sources: &[usize]) -> Result<()> {
        if sources.is_empty() {
            return Err(Error::InvalidInput(
                "a whisper decoder needs at least one sequence".into(),
            ));
        }
        if let Some(bad) = sources.iter().find(|&&s| s >= self.caches.len()) {
            return Err(Error::InvalidInput(format!(
                "reorder source {bad} is out of range: the decoder has {} sequences",
                self.caches.len()
            )));
        }
        self.caches = sources.iter().map(|&s| self.caches[s].fork()).collect();
        let audio: Vec<usize> = sources.iter().map(|&s| self.audio[s]).collect();
        if audio != self.audio {
            self.audio = audio;
            self.regroup()?;
        }
        Ok(())
    }

    fn regroup(&mut self) -> Result<()> {
        let device = &self.model.device;
        let mut audios: Vec<usize> = self.audio.clone();
        audios.sort_unstable();
        audios.dedup();
        let mut order = Vec::with_capacity(self.audio.len());
        self.groups = audios
            .into_iter()
            .map(|audio| {
                let rows: Vec<u32> = (0..self.audio.len())
                    .filter(|&i| self.audio[i] == audio)
                    .map(|i| i as u32)
                    .collect();
                order.extend_from_slice(&rows);
                Ok(Group {
                    first: rows[0] as usize,
                    len: rows.len(),
                    rows: Tensor::new(rows.as_slice(), device)?,
                })
            })
            .collect::<Result<_>>()?;
        // Row r of the grouped output holds sequence order[r]; invert that.
        self.restore = if order.iter().enumerate().all(|(r, &s)| r == s as usize) {
            None
        } else {
            let mut inverse = vec![0u32; order.len()];
            for (r, &s) in order.iter().enumerate() {
                inverse[s as usize] = r as u32;
            }
            Some(Tensor::new(inverse.as_slice(), device)?)
        };
        Ok(())
    }

    /// The decoder forward over new tokens; with `capture`, the cross-attention scores of
    /// every layer (`[heads, n, n_audio_ctx]`, one sequence only) are pushed to it.
    fn forward(&mut self, tokens: &[&[u32]], capture: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let device = self.model.device.clone();
        crate::model::on_pool(&device, || self.forward_here(tokens, capture))
    }

    fn forward_here(&mut self, tokens: &[&[u32]], mut capture: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let m = self.model.clone();
        let cfg = &m.config;
        let w = &m.weights;
        let b = self.caches.len();
        if tokens.len() != b {
            return Err(Error::InvalidInput(format!(
                "whisper decoder step got tokens for {} sequences but has {b}",
                tokens.len()
            )));
        }
        let n = tokens[0].len();
        if n == 0 || tokens.iter().any(|t| t.len() != n) {
            return Err(Error::InvalidInput(
                "whisper decoder step needs the same number (at least one) of new tokens for every sequence".into(),
            ));
        }
        let past = self.len();
        if past + n > cfg.n_text_ctx {
            return Err(Error::InvalidInput(format!(
                "whisper decoder: {past} tokens plus {n} new exceed the text context of {} tokens",
                cfg.n_text_ctx
            )));
        }
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.iter().copied()).collect();
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= cfg.n_vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {bad} is outside Whisper's vocabulary of {} tokens",
                cfg.n_vocab
            )));
        }
        let device = &m.device;
        let (d, heads) = (cfg.d_model, cfg.n_text_head);
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5);
        let x = match &w.token_embedding {
            Some(table) => table.index_select(&Tensor::new(ids.as_slice(), device)?, 0)?,
            None => w.logits.packed_rows(&ids)?.ok_or_else(|| {
                Error::InvalidInput("Whisper: no token embedding table and no packed output projection".into())
            })?,
        };
        let x = if cfg.scale_embedding {
            (x * (d as f64).sqrt())?
        } else {
            x
        };
        let pos = w.text_pos.narrow(0, past, n)?;
        let mut x = x.reshape((b, n, d))?.broadcast_add(&pos)?.reshape((b * n, d))?;
        let mask = if n > 1 {
            let total = past + n;
            let mask: Vec<f32> = (0..n)
                .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            Some(Tensor::from_vec(mask, (n, total), device)?.to_dtype(m.dtype)?)
        } else {
            None
        };
        let mut new_k: Vec<Vec<Tensor>> = vec![Vec::with_capacity(w.decoder.len()); b];
        let mut new_v: Vec<Vec<Tensor>> = vec![Vec::with_capacity(w.decoder.len()); b];
        for (l, layer) in w.decoder.iter().enumerate() {
            // Causal self-attention over each sequence's cache.
            let h = layer.attn_ln.forward(&x)?;
            let qkv = layer
                .attn
                .qkv
                .forward(&h)?
                .reshape((b, n, 3, heads, hd))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?; // [3, b, heads, n, hd]
            let q = (qkv.get(0)? * scale)?;
            let (k, v) = (qkv.get(1)?, qkv.get(2)?);
            let new: Vec<(Tensor, Tensor)> = (0..b)
                .map(|i| Ok((k.get(i)?, v.get(i)?))) // [heads, n, hd]
                .collect::<Result<_>>()?;
            // Decode steps read each cache's blocks in place (no concatenation per layer
            // per step, which for 5 sampled sequences of 200 tokens copied 27 MB a step).
            let blockwise = if n <= crate::layers::BLOCKWISE_MAX_TOKENS {
                let queries: Vec<Tensor> = (0..b)
                    .map(|i| Ok(q.get(i)?.transpose(0, 1)?)) // [n, heads, hd]
                    .collect::<Result<_>>()?;
                let inputs: Vec<crate::layers::BlockwiseInput<'_>> = (0..b)
                    .map(|i| crate::layers::BlockwiseInput {
                        queries: &queries[i],
                        cache: &self.caches[i],
                        keys: &new[i].0,
                        values: &new[i].1,
                    })
                    .collect();
                let shape = tessera_kernels::attention::Heads {
                    query: heads,
                    key_value: heads,
                    dim: hd,
                };
                // The queries are scaled already.
                crate::layers::blockwise_attention(shape, 1.0, None, l, &inputs)?
            } else {
                None
            };
            let a = match blockwise {
                Some(a) => a,
                None => {
                    let mut ks = Vec::with_capacity(b);
                    let mut vs = Vec::with_capacity(b);
                    for (cache, (ki, vi)) in self.caches.iter().zip(&new) {
                        let (ka, va) = cache.gather_with(l, ki, vi)?;
                        ks.push(ka);
                        vs.push(va);
                    }
                    let (keys, values) = if b == 1 {
                        (ks[0].unsqueeze(0)?, vs[0].unsqueeze(0)?)
                    } else {
                        (Tensor::stack(&ks, 0)?, Tensor::stack(&vs, 0)?)
                    };
                    let scores = q.matmul(&keys.t()?)?; // [b, heads, n, total]
                    let scores = match &mask {
                        Some(mask) => scores.broadcast_add(mask)?,
                        None => scores,
                    };
                    let probs = crate::layers::softmax_last_dim(&scores)?;
                    probs.matmul(&values)?.transpose(1, 2)?.reshape((b * n, d))?
                }
            };
            for (i, (ki, vi)) in new.into_iter().enumerate() {
                new_k[i].push(ki);
                new_v[i].push(vi);
            }
            x = (x + layer.attn.out.forward(&a)?)?;

            // Cross-attention over the audio's precomputed keys and values.
            let h = layer.cross_ln.forward(&x)?;
            let q = (layer.cross_q.forward(&h)? * scale)?.reshape((b, n * d))?;
            let a = self.cross_attention(l, &q, n, capture.as_deref_mut())?;
            x = (x + layer.cross_out.forward(&a)?)?;

            let h = layer.mlp_ln.forward(&x)?;
            x = (x + layer.mlp.forward(&h)?)?;
        }
        for (i, cache) in self.caches.iter_mut().enumerate() {
            cache.append(tokens[i], std::mem::take(&mut new_k[i]), std::mem::take(&mut new_v[i]))?;
        }
        let last = x.reshape((b, n, d))?.narrow(1, n - 1, 1)?.reshape((b, d))?;
        let last = w.decoder_ln.forward(&last)?;
        Ok(w.logits.forward(&last)?.to_dtype(DType::F32)?)
    }

    /// `q`: `[b, n * d]` (scaled queries, rows in sequence order) -> `[b * n, d]`.
    fn cross_attention(
        &self,
        layer: usize,
        q: &Tensor,
        n: usize,
        mut capture: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let cfg = &self.model.config;
        let (d, heads) = (cfg.d_model, cfg.n_text_head);
        let hd = d / heads;
        let mut outs = Vec::with_capacity(self.groups.len());
        for g in &self.groups {
            let context = self.caches[g.first]
                .context()
                .ok_or_else(|| Error::InvalidInput("a whisper sequence's cache has no audio context".into()))?;
            let (k_t, v) = &context.layers[layer];
            let qg = if self.groups.len() == 1 {
                q.clone()
            } else {
                q.index_select(&g.rows, 0)?
            };
            // Every sequence's rows stacked under each head: [heads, g * n, hd].
            let qg = qg.reshape((g.len * n, heads, hd))?.transpose(0, 1)?.contiguous()?;
            let scores = qg.matmul(k_t)?; // [heads, g * n, ctx]
            let probs = crate::layers::softmax_last_dim(&scores)?;
            let o = probs.matmul(v)?; // [heads, g * n, hd]
            outs.push(o.transpose(0, 1)?.reshape((g.len, n * d))?);
            if let Some(c) = capture.as_deref_mut().filter(|_| self.caches.len() == 1) {
                c.push(scores);
            }
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one group")
        } else {
            Tensor::cat(&outs, 0)?
        };
        let out = match &self.restore {
            Some(r) => out.index_select(r, 0)?,
            None => out,
        };
        Ok(out.reshape((self.caches.len() * n, d))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn model_and_decoder_are_send_and_sync() {
        assert_send_sync::<Whisper>();
        assert_send_sync::<WhisperDecoder>();
        assert_send_sync::<AudioFeatures>();
    }

    #[test]
    fn alignment_heads_parse_and_reject_garbage() {
        let p = Path::new("config.json");
        let j = serde_json::json!({"alignment_heads": [[1, 0], [2, 5]]});
        assert_eq!(read_alignment_heads(&j, p).unwrap(), Some(vec![(1, 0), (2, 5)]));
        assert_eq!(read_alignment_heads(&serde_json::json!({}), p).unwrap(), None);
        for bad in [
            serde_json::json!({"alignment_heads": [[1]]}),
            serde_json::json!({"alignment_heads": [[1, -2]]}),
            serde_json::json!({"alignment_heads": 3}),
        ] {
            let e = read_alignment_heads(&bad, p).unwrap_err().to_string();
            assert!(e.starts_with("config.json: alignment_heads"), "{e}");
        }
    }
}
