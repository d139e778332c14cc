//! User settings, from the command line, `initializationOptions` and
//! `workspace/didChangeConfiguration` (camelCase keys, at the top level or under
//! `tessera`), and building the backend they name.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tessera_models::loader::{self, TextModel};

use crate::backend::{Backend, LocalBackend, OpenAiBackend};
use crate::complete::CompletionSettings;
use crate::language::Language;
use crate::template::Family;
use crate::{Error, Result};

/// Which generator serves completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Openai,
}

/// Everything a user can set. Unset fields keep their defaults.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Settings {
    /// Local model: a `.gguf` file, a checkpoint directory, a fetched name or a Hub id.
    pub model: String,
    pub device: String,
    pub backend: BackendKind,
    /// OpenAI-compatible server base URL (backend `openai`).
    pub endpoint: Option<String>,
    /// Environment variable holding the API key (backend `openai`).
    pub api_key_env: Option<String>,
    /// Model name sent to the remote server.
    pub remote_model: Option<String>,
    /// Prompt template family (`qwen`, `starcoder2`, `starcoder`, `codellama`, `deepseek`,
    /// `codestral`, `plain`); detected from the model when unset.
    pub template: Option<String>,
    pub max_tokens: usize,
    pub max_tokens_multi_line: usize,
    pub beams: usize,
    pub alternatives: usize,
    pub context_tokens: usize,
    pub deadline_ms: u64,
    /// Languages to complete (names as in `Language::name`, or LSP language ids); all when unset.
    pub enabled_languages: Option<Vec<String>>,
    /// Workspace files indexed, at most (0 turns indexing off).
    pub index_max_files: usize,
    /// Reuse the engine's KV cache of prompt prefixes across requests (off: every request
    /// prefills its whole prompt; for measurements).
    pub prefix_cache: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let c = CompletionSettings::default();
        Settings {
            model: loader::DEFAULT_CODE_MODEL.into(),
            device: "cpu".into(),
            backend: BackendKind::Local,
            endpoint: None,
            api_key_env: None,
            remote_model: None,
            template: None,
            max_tokens: c.max_tokens_single_line,
            max_tokens_multi_line: c.max_tokens_multi_line,
            beams: c.num_beams,
            alternatives: c.num_alternatives,
            context_tokens: c.context.budget_tokens,
            deadline_ms: c.deadline.as_millis() as u64,
            enabled_languages: None,
            index_max_files: 5000,
            prefix_cache: true,
        }
    }
}

impl Settings {
    /// Applies the keys present in `value` (or in `value.tessera`) over `self`.
    pub fn merged(&self, value: &serde_json::Value) -> Result<Settings> {
        let value = value.get("tessera").unwrap_or(value);
        let Some(obj) = value.as_object() else {
            return Ok(self.clone());
        };
        let mut base = serde_json::to_value(SettingsView(self)).unwrap_or_default();
        let defaults = serde_json::to_value(SettingsView(&Settings::default())).unwrap_or_default();
        if let Some(b) = base.as_object_mut() {
            for (k, v) in obj {
                // `null` resets a key to its default.
                let v = if v.is_null() {
                    defaults.get(k).cloned().unwrap_or(Value::Null)
                } else {
                    v.clone()
                };
                b.insert(k.clone(), v);
            }
        }
        let merged: Settings =
            serde_json::from_value(base).map_err(|e| Error::InvalidInput(format!("settings: {e}")))?;
        merged.validate()?;
        Ok(merged)
    }

    pub fn validate(&self) -> Result<()> {
        if self.beams == 0 || self.beams > 16 {
            return Err(Error::InvalidInput(format!(
                "settings: beams must be 1..=16, not {}",
                self.beams
            )));
        }
        if self.max_tokens == 0 || self.max_tokens_multi_line == 0 {
            return Err(Error::InvalidInput("settings: max tokens must be at least 1".into()));
        }
        if let Some(t) = &self.template
            && Family::from_name(t).is_none()
        {
            return Err(Error::InvalidInput(format!("settings: unknown template {t:?}")));
        }
        if self.backend == BackendKind::Openai && self.endpoint.is_none() {
            return Err(Error::InvalidInput("settings: backend openai needs an endpoint".into()));
        }
        Ok(())
    }

    pub fn completion(&self, repo_name: &str) -> CompletionSettings {
        let mut c = CompletionSettings {
            max_tokens_single_line: self.max_tokens,
            max_tokens_multi_line: self.max_tokens_multi_line,
            num_beams: self.beams,
            num_alternatives: self.alternatives.max(1),
            deadline: Duration::from_millis(self.deadline_ms.max(1)),
            repo_name: repo_name.to_owned(),
            ..CompletionSettings::default()
        };
        c.context.budget_tokens = self.context_tokens.max(64);
        c
    }

    pub fn family(&self) -> Option<Family> {
        self.template.as_deref().and_then(Family::from_name)
    }

    pub fn language_enabled(&self, language: Language, language_id: &str) -> bool {
        match &self.enabled_languages {
            None => true,
            Some(list) => list.iter().any(|l| l == language.name() || l == language_id),
        }
    }

    /// Whether switching from `self` to `other` needs a new backend.
    pub fn backend_changed(&self, other: &Settings) -> bool {
        self.model != other.model
            || self.device != other.device
            || self.backend != other.backend
            || self.endpoint != other.endpoint
            || self.api_key_env != other.api_key_env
            || self.remote_model != other.remote_model
            || self.template != other.template
            || self.prefix_cache != other.prefix_cache
    }

    /// Loads the model or connects the remote backend (blocking: loading takes seconds).
    pub fn build_backend(&self) -> Result<Arc<dyn Backend>> {
        let family = self.family();
        match self.backend {
            BackendKind::Local => {
                let device = loader::parse_device(&self.device)?;
                let model = TextModel::load(&self.model, &device)?;
                let family = family.unwrap_or_else(|| Family::detect(|t| model.tokenizer.token_id(t).is_some()));
                let mut backend = LocalBackend::new(model, family.stop_tokens());
                backend.set_prefix_cache(self.prefix_cache);
                Ok(Arc::new(backend))
            }
            BackendKind::Openai => {
                let endpoint = self
                    .endpoint
                    .as_deref()
                    .ok_or_else(|| Error::InvalidInput("backend openai needs an endpoint".into()))?;
                let api_key = match &self.api_key_env {
                    Some(var) => Some(
                        std::env::var(var)
                            .map_err(|_| Error::InvalidInput(format!("the API key variable {var} is not set")))?,
                    ),
                    None => None,
                };
                let special = family
                    .unwrap_or(Family::QwenCoder)
                    .stop_tokens()
                    .iter()
                    .map(|s| s.to_string())
                    .chain(fim_tokens(family.unwrap_or(Family::QwenCoder)))
                    .collect();
                let remote_model = self.remote_model.clone().unwrap_or_else(|| self.model.clone());
                Ok(Arc::new(OpenAiBackend::new(
                    endpoint,
                    &remote_model,
                    api_key,
                    None,
                    special,
                )))
            }
        }
    }
}

/// The tokens that make `Family::detect` pick `family` (remote models have no local vocab).
fn fim_tokens(family: Family) -> Vec<String> {
    let t: &[&str] = match family {
        Family::QwenCoder | Family::QwenCoderRepo => &["<|fim_prefix|>", "<|fim_middle|>"],
        Family::StarCoder2 => &["<fim_prefix>", "<file_sep>"],
        Family::StarCoder => &["<fim_prefix>"],
        Family::CodeLlama => &["<PRE>"],
        Family::DeepSeekCoder => &["<｜fim▁begin｜>"],
        Family::Codestral => &["[SUFFIX]", "[PREFIX]"],
        Family::Plain => &[],
    };
    t.iter().map(|s| s.to_string()).collect()
}

/// Serialises settings with the same keys they are read with.
struct SettingsView<'a>(&'a Settings);

impl serde::Serialize for SettingsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let x = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", &x.model)?;
        m.serialize_entry("device", &x.device)?;
        m.serialize_entry(
            "backend",
            match x.backend {
                BackendKind::Local => "local",
                BackendKind::Openai => "openai",
            },
        )?;
        m.serialize_entry("endpoint", &x.endpoint)?;
        m.serialize_entry("apiKeyEnv", &x.api_key_env)?;
        m.serialize_entry("remoteModel", &x.remote_model)?;
        m.serialize_entry("template", &x.template)?;
        m.serialize_entry("maxTokens", &x.max_tokens)?;
        m.serialize_entry("maxTokensMultiLine", &x.max_tokens_multi_line)?;
        m.serialize_entry("beams", &x.beams)?;
        m.serialize_entry("alternatives", &x.alternatives)?;
        m.serialize_entry("contextTokens", &x.context_tokens)?;
        m.serialize_entry("deadlineMs", &x.deadline_ms)?;
        m.serialize_entry("enabledLanguages", &x.enabled_languages)?;
        m.serialize_entry("indexMaxFiles", &x.index_max_files)?;
        m.serialize_entry("prefixCache", &x.prefix_cache)?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_merge_from_both_shapes_and_reject_bad_values() {
        let base = Settings::default();
        let s = base
            .merged(&serde_json::json!({"tessera": {"beams": 2, "enabledLanguages": ["rust"]}}))
            .unwrap();
        assert_eq!(s.beams, 2);
        assert!(s.language_enabled(Language::Rust, "rust"));
        assert!(!s.language_enabled(Language::Python, "python"));
        let s2 = s.merged(&serde_json::json!({"maxTokens": 7})).unwrap();
        assert_eq!((s2.beams, s2.max_tokens), (2, 7));
        assert!(base.merged(&serde_json::json!({"beams": 0})).is_err());
        assert!(base.merged(&serde_json::json!({"beams": "many"})).is_err());
        assert!(base.merged(&serde_json::json!({"template": "nope"})).is_err());
        assert!(base.merged(&serde_json::json!({"backend": "openai"})).is_err());
        assert_eq!(base.merged(&serde_json::json!(null)).unwrap(), base);
        let reset = s2
            .merged(&serde_json::json!({"enabledLanguages": null, "beams": null}))
            .unwrap();
        assert_eq!(
            (reset.enabled_languages, reset.beams, reset.max_tokens),
            (None, base.beams, 7)
        );
        assert!(!base.backend_changed(&s2));
        assert!(base.backend_changed(&base.merged(&serde_json::json!({"model": "x.gguf"})).unwrap()));
    }
}
