//! Where completions are generated: the local engine (beam search over the model's
//! tokens, prefix cache reused across keystrokes), or any OpenAI-compatible
//! `/v1/completions` server (llama.cpp server, vLLM, TGI) for users who outgrow one machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tessera_models::generate::{BeamParams, GenerateParams, StopPredicate};
use tessera_models::loader::TextModel;
use tessera_models::tokenizer::Tokenizer;

use crate::{Error, Result};

/// One generation the completion pipeline asks for.
#[derive(Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_tokens: usize,
    pub num_beams: usize,
    pub num_return: usize,
    pub stop_predicate: Option<StopPredicate>,
    pub cancel: Arc<AtomicBool>,
    /// How long a remote backend may take.
    pub timeout: Duration,
}

/// A candidate continuation and its score (higher is better; comparable within a request).
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub text: String,
    pub score: f32,
    /// Ended by the model or a stop rule, not by cancellation or the token limit.
    pub finished: bool,
}

#[derive(Debug, Clone, Default)]
pub struct GenerateOutput {
    pub candidates: Vec<Candidate>,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub decode_steps: usize,
}

/// A completion generator.
pub trait Backend: Send + Sync {
    /// Shown in logs and `--json` output.
    fn describe(&self) -> String;
    /// Tokens of `text` (exact with a tokenizer, estimated without).
    fn count_tokens(&self, text: &str) -> usize;
    /// Whether the model's vocabulary has this special token (picks the prompt template).
    fn has_token(&self, token: &str) -> bool;
    fn generate(&self, request: &GenerateRequest) -> Result<GenerateOutput>;
}

/// The in-process engine.
pub struct LocalBackend {
    model: TextModel,
    stop_ids: Vec<u32>,
    prefix_cache: bool,
}

impl LocalBackend {
    /// `stop_tokens`: the template's special tokens that end a fill.
    pub fn new(model: TextModel, stop_tokens: &[&str]) -> Self {
        let mut stop_ids = model.eos_ids.clone();
        for t in stop_tokens {
            if let Some(id) = model.tokenizer.token_id(t)
                && !stop_ids.contains(&id)
            {
                stop_ids.push(id);
            }
        }
        LocalBackend {
            model,
            stop_ids,
            prefix_cache: true,
        }
    }

    /// Off: the engine forgets cached prompt prefixes before each request.
    pub fn set_prefix_cache(&mut self, on: bool) {
        self.prefix_cache = on;
    }

    pub fn model(&self) -> &TextModel {
        &self.model
    }
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        format!("local:{}", self.model.name)
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.model
            .tokenizer
            .encode(text, false)
            .map_or(text.len() / 3, |ids| ids.len())
    }

    fn has_token(&self, token: &str) -> bool {
        self.model.tokenizer.token_id(token).is_some()
    }

    fn generate(&self, request: &GenerateRequest) -> Result<GenerateOutput> {
        let beams = (request.num_beams > 1).then(|| BeamParams {
            num_beams: request.num_beams,
            length_penalty: 1.0,
            early_stopping: true,
            num_return_sequences: request.num_return.clamp(1, request.num_beams),
        });
        let params = GenerateParams {
            max_new_tokens: request.max_tokens.max(1),
            beams,
            eos_ids: self.stop_ids.clone(),
            stop_predicate: request.stop_predicate.clone(),
            cancel: Some(request.cancel.clone()),
            ..GenerateParams::default()
        };
        if !self.prefix_cache {
            self.model.engine.clear_prefix_cache();
        }
        let generation = self.model.generate(&request.prompt, &params, None)?;
        tracing::debug!(
            "generated: {} prompt tokens ({} reused), prefill {:.0} ms, {} steps in {:.0} ms",
            generation.prompt_tokens,
            generation.reused_tokens,
            generation.prefill_ms,
            generation.decode_steps,
            generation.decode_ms
        );
        let candidates = generation
            .completions
            .into_iter()
            .map(|c| Candidate {
                finished: !matches!(
                    c.finish_reason,
                    tessera_models::generate::FinishReason::Cancelled | tessera_models::generate::FinishReason::Length
                ),
                text: c.text,
                score: c.score,
            })
            .collect();
        Ok(GenerateOutput {
            candidates,
            prompt_tokens: generation.prompt_tokens,
            reused_tokens: generation.reused_tokens,
            decode_steps: generation.decode_steps,
        })
    }
}

/// An OpenAI-compatible completions server.
pub struct OpenAiBackend {
    endpoint: String,
    model: String,
    api_key: Option<String>,
    tokenizer: Option<Arc<Tokenizer>>,
    /// Template tokens the remote model is known to have (from `template` setting).
    special_tokens: Vec<String>,
    agent: ureq::Agent,
}

impl OpenAiBackend {
    /// `endpoint`: the server's base URL (`http://host:port` or `.../v1`); `tokenizer`:
    /// the model's tokenizer when known locally, for exact token budgets.
    pub fn new(
        endpoint: &str,
        model: &str,
        api_key: Option<String>,
        tokenizer: Option<Arc<Tokenizer>>,
        special_tokens: Vec<String>,
    ) -> Self {
        OpenAiBackend {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            api_key,
            tokenizer,
            special_tokens,
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5))
                .build(),
        }
    }

    fn url(&self) -> String {
        if self.endpoint.ends_with("/v1") {
            format!("{}/completions", self.endpoint)
        } else {
            format!("{}/v1/completions", self.endpoint)
        }
    }

    fn error(&self, message: impl Into<String>) -> Error {
        Error::Backend {
            endpoint: self.url(),
            message: message.into(),
        }
    }
}

impl Backend for OpenAiBackend {
    fn describe(&self) -> String {
        format!("openai:{} ({})", self.url(), self.model)
    }

    fn count_tokens(&self, text: &str) -> usize {
        match &self.tokenizer {
            Some(t) => t.encode(text, false).map_or(text.len() / 3, |ids| ids.len()),
            // Code averages a little over 3 bytes a token in BPE vocabularies.
            None => text.len().div_ceil(3),
        }
    }

    fn has_token(&self, token: &str) -> bool {
        match &self.tokenizer {
            Some(t) => t.token_id(token).is_some(),
            None => self.special_tokens.iter().any(|t| t == token),
        }
    }

    fn generate(&self, request: &GenerateRequest) -> Result<GenerateOutput> {
        if request.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let n = request.num_return.max(1);
        let body = serde_json::json!({
            "model": self.model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens.max(1),
            "n": n,
            "temperature": if n > 1 { 0.2 } else { 0.0 },
            "stream": false,
        });
        let mut req = self
            .agent
            .post(&self.url())
            .timeout(request.timeout)
            .set("Content-Type", "application/json");
        if let Some(key) = &self.api_key {
            req = req.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match req.send_json(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let text: String = text.chars().take(300).collect();
                return Err(self.error(format!("HTTP {code}: {text}")));
            }
            Err(e) => return Err(self.error(e.to_string())),
        };
        if request.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let json: serde_json::Value = response
            .into_json()
            .map_err(|e| self.error(format!("the response is not JSON: {e}")))?;
        let choices = json
            .get("choices")
            .and_then(|c| c.as_array())
            .ok_or_else(|| self.error("the response has no `choices` array"))?;
        let mut candidates = Vec::new();
        for (rank, choice) in choices.iter().enumerate() {
            let Some(raw) = choice.get("text").and_then(|t| t.as_str()) else {
                return Err(self.error(format!("choice {rank} has no `text`")));
            };
            let finish = choice.get("finish_reason").and_then(|f| f.as_str()).unwrap_or("stop");
            let mut text = raw.to_owned();
            let mut finished = finish != "length";
            if let Some(pred) = &request.stop_predicate
                && let Some(n) = pred(&text)
            {
                let mut n = n.min(text.len());
                while !text.is_char_boundary(n) {
                    n -= 1;
                }
                text.truncate(n);
                finished = true;
            }
            // Servers without logprobs keep their order: score by rank.
            let score = choice
                .pointer("/logprobs/token_logprobs")
                .and_then(|l| l.as_array())
                .map(|l| {
                    let v: Vec<f64> = l.iter().filter_map(|x| x.as_f64()).collect();
                    (v.iter().sum::<f64>() / v.len().max(1) as f64) as f32
                })
                .unwrap_or(-(rank as f32));
            candidates.push(Candidate { text, score, finished });
        }
        let prompt_tokens = json
            .pointer("/usage/prompt_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        Ok(GenerateOutput {
            candidates,
            prompt_tokens,
            reused_tokens: 0,
            decode_steps: 0,
        })
    }
}
