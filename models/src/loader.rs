//! From a model name to a running model: resolves `--model` (a `.gguf` file, a checkpoint
//! directory, a Hugging Face repo id through hf-hub's cache, or the short name of a model
//! fetched by `scripts/fetch-models`), picks the architecture from the checkpoint's own
//! metadata, and pairs the model with its tokenizer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;

use crate::engine::Engine;
use crate::generate::{GenerateParams, Generation, OnText};
use crate::gguf::GgufFile;
use crate::llama::Llama;
use crate::model::CausalLm;
use crate::starcoder2::StarCoder2;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The code model used when none is named.
pub const DEFAULT_CODE_MODEL: &str = "qwen2.5-coder-0.5b";

/// Short names of the models `scripts/fetch-models` provides, with their main file.
pub const FETCHED_MODELS: &[(&str, &str)] = &[
    ("qwen2.5-coder-0.5b", "model.gguf"),
    ("smollm2-135m", "model.gguf"),
    ("whisper-tiny.en", "model.bin"),
    ("whisper-base", "model.bin"),
];

/// `$TESSERA_HOME`, by default `~/.cache/tessera`: where fetched models live.
pub fn tessera_home() -> PathBuf {
    if let Some(h) = std::env::var_os("TESSERA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("tessera")
}

/// Where a model's files are.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelLocation {
    Gguf(PathBuf),
    /// A directory with `config.json`, safetensors weights and `tokenizer.json`.
    Checkpoint(PathBuf),
}

impl ModelLocation {
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::Gguf(p) | ModelLocation::Checkpoint(p) => p,
        }
    }
}

fn locate_path(path: &Path) -> Result<ModelLocation> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        return Ok(ModelLocation::Gguf(path.to_path_buf()));
    }
    if path.join("config.json").is_file() {
        return Ok(ModelLocation::Checkpoint(path.to_path_buf()));
    }
    if path.join("model.gguf").is_file() {
        return Ok(ModelLocation::Gguf(path.join("model.gguf")));
    }
    // A directory named like a model file is most likely a slip, not a checkpoint.
    let expected = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        "is a directory, not a GGUF file"
    } else {
        "is a directory"
    };
    Err(Error::ModelNotFound(format!(
        "{}: {expected}, and holds neither config.json (a checkpoint) nor model.gguf",
        path.display()
    )))
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
        })
}

fn hub_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
}

fn hub_cache() -> hf_hub::Cache {
    match std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        Some(p) => hf_hub::Cache::new(PathBuf::from(p)),
        None => hf_hub::Cache::from_env(),
    }
}

/// Resolves a Hugging Face repo id to a local checkpoint directory: from hf-hub's cache,
/// downloading what is missing unless `HF_HUB_OFFLINE` is set. The weights are safetensors
/// (one file or shards) or a CTranslate2 `model.bin` (faster-whisper's repos, such as
/// `Systran/faster-whisper-tiny.en`).
fn locate_hub(id: &str) -> Result<ModelLocation> {
    let cache = hub_cache();
    let repo = cache.model(id.to_owned());
    let cached = |f: &str| repo.get(f);
    let wanted_from_cache = || -> Option<PathBuf> {
        let config = cached("config.json")?;
        cached("tokenizer.json")?;
        if cached("model.bin").is_some() {
            // CTranslate2: config.json and model.bin are the whole checkpoint.
        } else if let Some(index) = cached("model.safetensors.index.json") {
            let text = std::fs::read_to_string(&index).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            for shard in json.get("weight_map")?.as_object()?.values() {
                cached(shard.as_str()?)?;
            }
        } else {
            cached("model.safetensors")?;
        }
        config.parent().map(Path::to_path_buf)
    };
    if let Some(dir) = wanted_from_cache() {
        return Ok(ModelLocation::Checkpoint(dir));
    }
    if hub_offline() {
        return Err(Error::ModelNotFound(format!(
            "{id}: not in the local Hugging Face cache ({}) and HF_HUB_OFFLINE is set, so it cannot be downloaded",
            cache.path().display()
        )));
    }
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| Error::ModelNotFound(format!("{id}: {e}")))?;
    let remote = api.model(id.to_owned());
    let get = |f: &str| {
        remote
            .get(f)
            .map_err(|e| Error::ModelNotFound(format!("{id}: cannot fetch {f} from the Hugging Face hub: {e}")))
    };
    let config = get("config.json")?;
    get("tokenizer.json")?;
    // Optional: eos ids of text models; alignment heads and the multilingual flag of
    // Whisper checkpoints; the image preprocessing of CLIP checkpoints.
    let _ = remote.get("generation_config.json");
    let _ = remote.get("preprocessor_config.json");
    match get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index, e.to_string()))?;
            let shards: std::collections::BTreeSet<String> = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .map(|m| m.values().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            for s in shards {
                get(&s)?;
            }
        }
        Err(_) => {
            if let Err(e) = remote.get("model.safetensors") {
                remote.get("model.bin").map_err(|_| {
                    Error::ModelNotFound(format!(
                        "{id}: cannot fetch model.safetensors (nor a CTranslate2 model.bin) from the Hugging Face hub: {e}"
                    ))
                })?;
            }
        }
    }
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(ModelLocation::Checkpoint(dir))
}

/// Resolves `--model`: a path, a fetched model's short name, or a Hugging Face repo id.
pub fn locate(spec: &str) -> Result<ModelLocation> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(Error::ModelNotFound("empty model name".into()));
    }
    let path = Path::new(spec);
    if path.exists() {
        return locate_path(path);
    }
    if let Some((name, file)) = FETCHED_MODELS.iter().find(|(n, _)| *n == spec) {
        let dir = tessera_home().join("models").join(name);
        if dir.join(file).is_file() {
            return locate_path(&dir);
        }
        return Err(Error::ModelNotFound(format!(
            "{name}: not fetched yet ({} is missing); run scripts/fetch-models",
            dir.join(file).display()
        )));
    }
    if looks_like_hub_id(spec) {
        return locate_hub(spec);
    }
    let names: Vec<&str> = FETCHED_MODELS.iter().map(|(n, _)| *n).collect();
    Err(Error::ModelNotFound(format!(
        "{spec}: no such file or directory, not a fetched model ({}) and not a Hugging Face repo id (owner/name)",
        names.join(", ")
    )))
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                None => 0,
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| Error::InvalidInput(format!("device {s}: bad CUDA ordinal")))?,
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::InvalidInput(format!(
                    "device {s}: this build has no CUDA support (rebuild with --features cuda)"
                )));
            }
            Ok(Device::new_cuda(ordinal)?)
        }
        other => Err(Error::InvalidInput(format!(
            "device {other}: expected cpu, cuda or cuda:N"
        ))),
    }
}

/// A causal language model with its tokenizer, served by an [`Engine`].
pub struct TextModel {
    pub name: String,
    pub location: ModelLocation,
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    /// Ids that end generation: the tokenizer's, plus `eos_token_id` from a checkpoint's
    /// `generation_config.json` or `config.json` (where `tokenizer.json` does not say).
    pub eos_ids: Vec<u32>,
    pub load_ms: f64,
}

/// `eos_token_id` (a number or a list) from a checkpoint's generation or model config.
fn checkpoint_eos_ids(dir: &Path) -> Vec<u32> {
    let mut ids = Vec::new();
    for name in ["generation_config.json", "config.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(name)) else {
            continue;
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match json.get("eos_token_id") {
            Some(serde_json::Value::Number(n)) => ids.extend(n.as_u64().map(|v| v as u32)),
            Some(serde_json::Value::Array(a)) => ids.extend(a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            _ => {}
        }
    }
    ids
}

/// Loads the causal LM of a Hugging Face checkpoint directory, by its `model_type`.
pub fn load_checkpoint_model(dir: &Path, device: &Device) -> Result<Arc<dyn CausalLm>> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&cfg_path, e.to_string()))?;
    const SUPPORTED: &str = "supported: llama, mistral, qwen2, starcoder2";
    let Some(model_type) = json.get("model_type").and_then(|v| v.as_str()) else {
        return Err(Error::format(
            &cfg_path,
            format!("model_type is missing or not a string ({SUPPORTED})"),
        ));
    };
    Ok(match model_type {
        "llama" | "mistral" | "qwen2" => Arc::new(Llama::from_dir(dir, device)?),
        "starcoder2" => Arc::new(StarCoder2::from_dir(dir, device)?),
        other => {
            return Err(Error::unsupported(
                cfg_path.display().to_string(),
                format!("unsupported model_type {other:?} ({SUPPORTED})"),
            ));
        }
    })
}

impl TextModel {
    /// Loads the model named by `spec` (see [`locate`]) onto `device`.
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let t0 = Instant::now();
        let location = locate(spec)?;
        let (model, tokenizer): (Arc<dyn CausalLm>, Tokenizer) = match &location {
            ModelLocation::Gguf(path) => {
                let gguf = GgufFile::open(path)?;
                let arch = gguf.architecture()?.to_owned();
                if !matches!(arch.as_str(), "llama" | "qwen2" | "starcoder2") {
                    return Err(Error::unsupported(
                        path.display().to_string(),
                        format!("unsupported architecture {arch:?} (supported: llama, qwen2, starcoder2)"),
                    ));
                }
                let tokenizer = Tokenizer::from_gguf(gguf.vocab()?, path)?;
                let model: Arc<dyn CausalLm> = match arch.as_str() {
                    "llama" | "qwen2" => Arc::new(Llama::from_gguf(gguf, device)?),
                    "starcoder2" => Arc::new(StarCoder2::from_gguf(gguf, device)?),
                    other => {
                        return Err(Error::unsupported(
                            path.display().to_string(),
                            format!("unsupported architecture {other:?} (supported: llama, qwen2, starcoder2)"),
                        ));
                    }
                };
                (model, tokenizer)
            }
            ModelLocation::Checkpoint(dir) => {
                let tok_path = dir.join("tokenizer.json");
                let tokenizer = Tokenizer::from_file(&tok_path)?;
                (load_checkpoint_model(dir, device)?, tokenizer)
            }
        };
        crate::allocator::release_free_memory();
        if tokenizer.vocab_size() > model.info().vocab_size + 1024 {
            return Err(Error::format(
                location.path(),
                format!(
                    "the tokenizer has {} tokens but the model only {}",
                    tokenizer.vocab_size(),
                    model.info().vocab_size
                ),
            ));
        }
        let mut eos_ids = tokenizer.eos_ids().to_vec();
        if let ModelLocation::Checkpoint(dir) = &location {
            for id in checkpoint_eos_ids(dir) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        Ok(TextModel {
            name: spec.to_owned(),
            location,
            engine: Engine::new(model),
            tokenizer: Arc::new(tokenizer),
            eos_ids,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Tokenizes a prompt: special tokens written in it are parsed, BOS added when the
    /// model wants one.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        self.tokenizer.encode(prompt, true)
    }

    /// Generates from text. With no eos ids in `params`, the tokenizer's are used.
    pub fn generate(&self, prompt: &str, params: &GenerateParams, on_text: Option<OnText<'_>>) -> Result<Generation> {
        let ids = self.encode(prompt)?;
        let mut params = params.clone();
        if params.eos_ids.is_empty() {
            params.eos_ids = self.eos_ids.clone();
        }
        let tok = self.tokenizer.clone();
        let detok = move |ids: &[u32]| tok.decode(ids, true);
        self.engine.generate_tokens(&ids, &params, Some(&detok), on_text)
    }
}
