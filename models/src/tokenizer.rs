//! Text to token ids and back: one [`Tokenizer`] type over Hugging Face's `tokenizers`,
//! built either from a `tokenizer.json` or from the tokenizer metadata inside a GGUF file
//! (which ships no `tokenizer.json`), plus the special-token facts generation needs (BOS,
//! the ids that end generation) and a UTF-8-safe [`StreamDecoder`] for streaming output.
//!
//! GGUF construction replicates the original `tokenizer.json` of each model family, which
//! is also what llama.cpp (`src/llama-vocab.cpp`, `LLAMA_VOCAB_PRE_TYPE_*`) approximates:
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE. The `tokenizer.ggml.pre` name selects
//!   the split regex (Qwen2, Llama 3, GPT-2, StarCoder/SmolLM digits-then-GPT-2, ...),
//!   followed by a non-splitting `ByteLevel` pre-tokenizer, a `ByteLevel` decoder and a BPE
//!   model over the file's tokens and merges.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE, rebuilt as Llama 2's
//!   `tokenizer.json`: a `▁` prefix and spaces as `▁` (normalizer), BPE with byte fallback
//!   over `<0xNN>` tokens, merges derived from the token scores as transformers does.
//!
//! In both, control and unknown tokens become special added tokens (matched whole in the
//! input text, skippable on decode) and user-defined tokens become plain added tokens.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::normalizers::{NFC, Prepend, Replace};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::{Error, Result};

/// Token texts that end generation wherever they appear in a vocabulary. This is
/// llama.cpp's end-of-generation list (chat turn ends, end of text, and Qwen's repo-level
/// FIM separators, which a code model emits when it has finished the hole) plus Llama 3's
/// `<|end_of_text|>`.
const END_OF_GENERATION: &[&str] = &[
    "<|endoftext|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "<EOT>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
];

/// A `tokenizer.json` names no end-of-sequence token (that lives in `config.json`), so
/// these classic spellings also count there, when the file marks them special.
const END_OF_SEQUENCE: &[&str] = &["</s>", "<eos>"];

/// Beginning-of-sequence spellings, for a `tokenizer.json` whose post-processor adds none.
const BEGIN_OF_SEQUENCE: &[&str] = &["<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>"];

/// Llama 3's split, from its `tokenizer.json`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split, from its `tokenizer.json`: Llama 3's but with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral's Tekken split, from its `tokenizer.json`.
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// DeepSeek Coder's splits, applied one after another, from its `tokenizer.json`.
const DEEPSEEK_CODER_SPLITS: &[&str] = &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+"];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i32 = 2;
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Everything GGUF metadata says about the tokenizer, under llama.cpp's key names.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: "qwen2", "llama-bpe", "smollm", "default", "starcoder", ...
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.scores` (SentencePiece).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.merges`, each "left right", best first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece only; absent means true).
    pub add_space_prefix: Option<bool>,
}

/// A tokenizer with the special-token facts generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    /// Whether `encode(.., add_special = true)` prepends `bos_id` itself. GGUF tokenizers
    /// do; a `tokenizer.json` brings its own post-processor for that instead.
    prepend_bos: bool,
    eos_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos_id", &self.bos_id)
            .field("prepend_bos", &self.prepend_bos)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

/// Parses a `tokenizer.json`. The `tokenizers` crate panics on some malformed files (its
/// decoder and normalizer deserializers `expect` where they should return errors: a
/// `decoder` that is not an object, a bad `precompiled_charsmap`), so a panic there is
/// caught and becomes an error naming the file, like its ordinary parse errors.
pub(crate) fn parse_tokenizer_json(bytes: &[u8], path: &Path) -> Result<tokenizers::Tokenizer> {
    match crate::panics::catch(|| tokenizers::Tokenizer::from_bytes(bytes)) {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(Error::format(path, format!("not a tokenizer.json: {e}"))),
        Err(why) => Err(Error::format(
            path,
            format!("not a tokenizer.json the tokenizers library can read ({why})"),
        )),
    }
}

impl Tokenizer {
    /// Load a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut inner = parse_tokenizer_json(&bytes, path)?;
        // Some files ship with truncation or padding switched on (sentence-embedding
        // tokenizers pad to 128): prompts must never be cut or padded behind our back.
        inner
            .with_truncation(None)
            .map_err(|e| Error::format(path, format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);

        let added = inner.get_added_tokens_decoder();
        let special_ids: HashSet<u32> = added
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| *id)
            .collect();
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |max| *max as usize + 1);

        // The post-processor decides what `add_special` adds; what it puts in front of an
        // empty text is the BOS token, if any.
        let bos_id = inner
            .encode_fast("", true)
            .ok()
            .and_then(|encoding| encoding.get_ids().first().copied())
            .filter(|id| special_ids.contains(id))
            .or_else(|| {
                BEGIN_OF_SEQUENCE
                    .iter()
                    .filter_map(|name| inner.token_to_id(name))
                    .find(|id| special_ids.contains(id))
            });

        let mut eos_ids: Vec<u32> = END_OF_SEQUENCE
            .iter()
            .chain(END_OF_GENERATION)
            .filter_map(|name| inner.token_to_id(name))
            .filter(|id| special_ids.contains(id))
            .collect();
        dedup_in_order(&mut eos_ids);

        Ok(Self {
            inner,
            bos_id,
            prepend_bos: false,
            eos_ids,
            special_ids,
            vocab_size,
        })
    }

    /// Build the tokenizer a GGUF file describes. `source` is the GGUF path, for errors.
    pub fn from_gguf(mut vocab: GgufVocab, source: &Path) -> Result<Self> {
        validate(&vocab, source)?;
        let kind = match vocab.model.as_str() {
            "gpt2" => GgufKind::ByteLevel,
            "llama" => GgufKind::SentencePiece,
            other => {
                return Err(Error::unsupported(
                    format!("{}: tokenizer model {other:?}", source.display()),
                    "only byte-level BPE (\"gpt2\") and SentencePiece BPE (\"llama\") \
                     vocabularies are implemented",
                ));
            }
        };

        let mut tokens = std::mem::take(&mut vocab.tokens);
        spell_tokens(&mut tokens);
        let types = vocab.token_types.as_deref();
        let type_of = |id: usize| types.map_or(1, |types| types[id]);

        let mut ids = Vocab::with_capacity(tokens.len());
        let mut duplicates = 0usize;
        for (id, token) in tokens.iter().enumerate() {
            // Later duplicates win, as in llama.cpp's and transformers' GGUF loaders.
            if ids.insert(token.clone(), id as u32).is_some() {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            tracing::warn!(
                "{}: {duplicates} duplicate token texts; the earlier ids cannot be decoded",
                source.display()
            );
        }

        let (model, normalizer, pre_tokenizer, decoder, add_bos_default) = match kind {
            GgufKind::ByteLevel => {
                let pre = vocab.pre.as_deref().unwrap_or_else(|| {
                    tracing::warn!(
                        "{}: no tokenizer.ggml.pre, splitting text like GPT-2; token ids may \
                         differ from the model's own tokenizer",
                        source.display()
                    );
                    "default"
                });
                let split = ByteLevelSplit::for_pre(pre, source);
                let merges = parse_merges(&vocab.merges, &ids, source)?;
                let bpe = BPE::builder()
                    .vocab_and_merges(ids, merges)
                    .ignore_merges(split.ignore_merges)
                    .build()
                    .map_err(|e| Error::format(source, format!("byte-level bpe: {e}")))?;
                let normalizer = split.nfc.then(|| NormalizerWrapper::from(NFC));
                let pre_tokenizer = split.pre_tokenizer(source)?;
                let decoder = DecoderWrapper::from(ByteLevel::default());
                (bpe, normalizer, Some(pre_tokenizer), decoder, split.add_bos)
            }
            GgufKind::SentencePiece => {
                let Some(scores) = vocab.scores.as_deref() else {
                    return Err(Error::format(
                        source,
                        "tokenizer.ggml.scores is missing: a sentencepiece vocabulary needs \
                         them to order its merges",
                    ));
                };
                let merges = if vocab.merges.is_empty() {
                    merges_from_scores(&tokens, scores, &ids)
                } else {
                    parse_merges(&vocab.merges, &ids, source)?
                };
                let mut builder = BPE::builder()
                    .vocab_and_merges(ids, merges)
                    .byte_fallback(true)
                    .fuse_unk(true);
                let unk = vocab
                    .unk_id
                    .map(|id| tokens[id as usize].clone())
                    .or_else(|| tokens.iter().find(|t| *t == "<unk>").cloned());
                if let Some(unk) = unk {
                    builder = builder.unk_token(unk);
                }
                let bpe = builder
                    .build()
                    .map_err(|e| Error::format(source, format!("sentencepiece bpe: {e}")))?;
                // Llama 2's own tokenizer.json: spaces become `▁` and every stretch of text
                // between special tokens gets a leading `▁`, which is what SentencePiece's
                // dummy prefix and llama.cpp (a space after each special token) do too.
                // Metaspace's "first" scheme would instead drop the extra `▁` of text that
                // starts with a space.
                let add_prefix = vocab.add_space_prefix.unwrap_or(true);
                let replace = |from: &str, to: &str| {
                    Replace::new(from, to).map_err(|e| Error::Tokenizer(format!("sentencepiece {from:?}: {e}")))
                };
                let mut normalizers = Vec::new();
                if add_prefix {
                    normalizers.push(NormalizerWrapper::from(Prepend::new("▁".into())));
                }
                normalizers.push(replace(" ", "▁")?.into());
                let normalizer = NormalizerWrapper::from(NormalizerSequence::new(normalizers));
                let mut steps = vec![
                    DecoderWrapper::from(replace("▁", " ")?),
                    DecoderWrapper::from(ByteFallback::new()),
                    DecoderWrapper::from(Fuse::new()),
                ];
                if add_prefix {
                    // The space put in front of the first word is not text.
                    steps.push(DecoderWrapper::from(Strip::new(' ', 1, 0)));
                }
                let decoder = DecoderWrapper::from(DecoderSequence::new(steps));
                (bpe, Some(normalizer), None, decoder, true)
            }
        };

        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_normalizer(normalizer);
        inner.with_pre_tokenizer(pre_tokenizer);
        inner.with_decoder(Some(decoder));

        // Generation stops on the declared ids and on the well-known end tokens present.
        let mut eos_ids: Vec<u32> = vocab.eos_id.into_iter().chain(vocab.eot_id).collect();
        let named_eog: Vec<u32> = tokens
            .iter()
            .enumerate()
            .filter(|(_, token)| END_OF_GENERATION.contains(&token.as_str()))
            .map(|(id, _)| id as u32)
            .collect();
        eos_ids.extend(&named_eog);
        dedup_in_order(&mut eos_ids);

        // Control and unknown tokens are special; so are the named end tokens even when a
        // converter typed them normal (llama.cpp overrides their type the same way).
        let mut special_ids = HashSet::new();
        let mut special = Vec::new();
        let mut user_defined = Vec::new();
        for (id, token) in tokens.iter().enumerate() {
            let kind = type_of(id);
            let is_special =
                kind == TOKEN_TYPE_CONTROL || kind == TOKEN_TYPE_UNKNOWN || named_eog.contains(&(id as u32));
            // Only the id that owns the text can be an added token: a shadowed duplicate
            // would make the added vocabulary point at the wrong id.
            if inner.token_to_id(token) != Some(id as u32) {
                continue;
            }
            if is_special {
                special_ids.insert(id as u32);
                special.push(AddedToken::from(token.clone(), true).normalized(false));
            } else if kind == TOKEN_TYPE_USER_DEFINED {
                user_defined.push(AddedToken::from(token.clone(), false).normalized(false));
            }
        }
        inner.add_special_tokens(&special);
        inner.add_tokens(&user_defined);

        Ok(Self {
            inner,
            bos_id: vocab.bos_id,
            prepend_bos: vocab.add_bos.unwrap_or(add_bos_default) && vocab.bos_id.is_some(),
            eos_ids,
            special_ids,
            vocab_size: tokens.len(),
        })
    }

    /// Encode text. Special tokens written in the text (e.g. `<|fim_prefix|>`) are parsed
    /// as special tokens. With `add_special`, adds what the model asks for: BOS when the
    /// GGUF says `add_bos_token`, or whatever a `tokenizer.json` post-processor adds.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| Error::Tokenizer(format!("encoding {} bytes of text: {e}", text.len())))?;
        let bos = self.bos_id.filter(|_| add_special && self.prepend_bos);
        let mut ids = Vec::with_capacity(encoding.len() + usize::from(bos.is_some()));
        ids.extend(bos);
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Decode ids to text. Ids the vocabulary does not know decode to nothing (a model's
    /// output layer is often wider than its vocabulary).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("decoding {} tokens: {e}", ids.len())))
    }

    /// The id of exactly this token text (vocabulary or added token), if any.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token as the vocabulary spells it (byte-level `Ġ`, SentencePiece `▁`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// One past the largest id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The beginning-of-sequence id, whether or not `encode` adds it.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Every id that ends generation: the declared end-of-sequence (and end-of-turn) ids
    /// first, then the well-known end tokens present in the vocabulary.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` is a special (control) token: parsed whole from text, skipped by
    /// `decode(.., skip_special = true)`.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// A streaming detokenizer over this tokenizer; special tokens are not shown.
    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
        }
    }
}

/// The pieces (in the byte-level alphabet) that a byte-level vocabulary whose
/// `tokenizer.ggml.pre` is `pre` splits `text` into before BPE: the split on its own, so
/// that it can be compared with a reference implementation's.
pub fn byte_level_pre_tokenize(pre: &str, text: &str) -> Result<Vec<String>> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let source = Path::new(pre);
    let pre_tokenizer = ByteLevelSplit::for_pre(pre, source).pre_tokenizer(source)?;
    let mut pieces = PreTokenizedString::from(text);
    pre_tokenizer
        .pre_tokenize(&mut pieces)
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizing with {pre:?}: {e}")))?;
    Ok(pieces
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_owned())
        .collect())
}

/// Incremental, UTF-8-safe detokenizer: push ids as they are generated and get back only
/// text that is complete. A character whose bytes span several byte-level tokens comes
/// out once its last byte arrives, never as a replacement character in between.
///
/// Each step decodes a short window of recent ids twice, with and without the new id, and
/// returns the difference; decoding a window rather than single ids keeps what depends on
/// neighbours (SentencePiece's leading space) right.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window: ids before it are fully emitted and no longer needed.
    prefix_offset: usize,
    /// Ids before this were emitted; those after it are pending.
    read_offset: usize,
    text: String,
}

impl StreamDecoder<'_> {
    /// Push one id; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let (emitted, window) = self.decode_window()?;
        // A trailing U+FFFD is the lossy decoding of an incomplete character: wait.
        if window.len() <= emitted.len() || window.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        Ok(self.emit(&emitted, &window))
    }

    /// Everything still pending, with any dangling partial character as U+FFFD.
    pub fn flush(&mut self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let (emitted, window) = self.decode_window()?;
        let delta = self.emit(&emitted, &window);
        // Even if nothing printable was pending (skipped specials), it is all consumed.
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(delta)
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The window's already-emitted part and the whole window, decoded.
    fn decode_window(&self) -> Result<(String, String)> {
        let emitted = &self.ids[self.prefix_offset..self.read_offset];
        let window = &self.ids[self.prefix_offset..];
        Ok((
            self.tokenizer.decode(emitted, true)?,
            self.tokenizer.decode(window, true)?,
        ))
    }

    fn emit(&mut self, emitted: &str, window: &str) -> Option<String> {
        // Decoders we know only ever append; if one rewrote earlier text, hold back until
        // `flush` rather than emit text that contradicts what was already sent.
        let delta = window.strip_prefix(emitted).filter(|delta| !delta.is_empty())?;
        self.text.push_str(delta);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Some(delta.to_owned())
    }
}

enum GgufKind {
    ByteLevel,
    SentencePiece,
}

/// How a byte-level vocabulary splits text before BPE, from `tokenizer.ggml.pre`.
struct ByteLevelSplit {
    splits: Splits,
    /// Whether the original `tokenizer.json` looks a whole pre-token up before merging.
    ignore_merges: bool,
    /// Whether the original `tokenizer.json` NFC-normalises the text.
    nfc: bool,
    /// `add_bos_token` when the file does not say (llama.cpp's defaults).
    add_bos: bool,
}

enum Splits {
    /// Split on each regex in turn (behaviour `Isolated`).
    Regexes(&'static [&'static str]),
    /// Split off every digit, then GPT-2's regex (StarCoder's `Digits` + `ByteLevel`).
    DigitsThenGpt2,
    /// DeepSeek Coder: its regexes, then every digit.
    RegexesThenDigits(&'static [&'static str]),
    /// GPT-2's regex, inside `ByteLevel`.
    Gpt2,
}

impl ByteLevelSplit {
    fn for_pre(pre: &str, source: &Path) -> Self {
        let split = |splits, ignore_merges, nfc, add_bos| Self {
            splits,
            ignore_merges,
            nfc,
            add_bos,
        };
        match pre {
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => {
                split(Splits::Regexes(&[LLAMA3_SPLIT]), true, false, true)
            }
            "dbrx" | "smaug-bpe" | "chatglm-bpe" => split(Splits::Regexes(&[LLAMA3_SPLIT]), false, false, false),
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "megrez" => {
                split(Splits::Regexes(&[QWEN2_SPLIT]), false, true, false)
            }
            "tekken" => split(Splits::Regexes(&[TEKKEN_SPLIT]), true, false, true),
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                split(Splits::DigitsThenGpt2, false, false, false)
            }
            "deepseek-coder" => split(Splits::RegexesThenDigits(DEEPSEEK_CODER_SPLITS), false, false, false),
            "default" | "gpt-2" | "gpt2" | "phi-2" | "roberta-bpe" | "olmo" | "mpt" | "jais" => {
                split(Splits::Gpt2, false, false, false)
            }
            other => {
                tracing::warn!(
                    "{}: unknown tokenizer.ggml.pre {other:?}, splitting text like GPT-2; \
                     token ids may differ from the model's own tokenizer",
                    source.display()
                );
                split(Splits::Gpt2, false, false, false)
            }
        }
    }

    fn pre_tokenizer(&self, source: &Path) -> Result<PreTokenizerWrapper> {
        let regex = |pattern: &str| -> Result<PreTokenizerWrapper> {
            Split::new(
                SplitPattern::Regex(pattern.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map(PreTokenizerWrapper::from)
            .map_err(|e| Error::format(source, format!("split regex {pattern:?}: {e}")))
        };
        // The regexes do all the splitting; ByteLevel only maps bytes to its alphabet.
        let bytes_only = PreTokenizerWrapper::from(ByteLevel::new(false, false, false));
        let steps = match &self.splits {
            Splits::Regexes(patterns) => {
                let mut steps = patterns.iter().map(|p| regex(p)).collect::<Result<Vec<_>>>()?;
                steps.push(bytes_only);
                steps
            }
            Splits::RegexesThenDigits(patterns) => {
                let mut steps = patterns.iter().map(|p| regex(p)).collect::<Result<Vec<_>>>()?;
                steps.push(Digits::new(true).into());
                steps.push(bytes_only);
                steps
            }
            Splits::DigitsThenGpt2 => vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()],
            Splits::Gpt2 => return Ok(ByteLevel::new(false, true, true).into()),
        };
        Ok(PreTokenizerSequence::new(steps).into())
    }
}

/// Check that the metadata is self-consistent before building anything from it.
fn validate(vocab: &GgufVocab, source: &Path) -> Result<()> {
    let n = vocab.tokens.len();
    if n == 0 {
        return Err(Error::format(source, "tokenizer.ggml.tokens is empty"));
    }
    if u32::try_from(n).is_err() {
        return Err(Error::format(
            source,
            format!("tokenizer.ggml.tokens has {n} entries, more than u32 ids can address"),
        ));
    }
    if let Some(types) = &vocab.token_types
        && types.len() != n
    {
        return Err(Error::format(
            source,
            format!(
                "tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {n}",
                types.len()
            ),
        ));
    }
    if let Some(scores) = &vocab.scores
        && scores.len() != n
    {
        return Err(Error::format(
            source,
            format!(
                "tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {n}",
                scores.len()
            ),
        ));
    }
    let ids = [
        ("bos_token_id", vocab.bos_id),
        ("eos_token_id", vocab.eos_id),
        ("eot_token_id", vocab.eot_id),
        ("padding_token_id", vocab.pad_id),
        ("unknown_token_id", vocab.unk_id),
    ];
    for (key, id) in ids {
        if let Some(id) = id
            && id as usize >= n
        {
            return Err(Error::format(
                source,
                format!("tokenizer.ggml.{key} is {id} but the vocabulary has {n} tokens"),
            ));
        }
    }
    Ok(())
}

/// The tokens as the BPE model will know them. An empty token can never be produced or
/// looked up, so it gets a placeholder name (llama.cpp's) that keeps its id decodable.
fn spell_tokens(tokens: &mut [String]) {
    for (id, token) in tokens.iter_mut().enumerate() {
        if token.is_empty() {
            *token = format!("[EMPTY_{id}]");
        }
    }
}

/// Parse "left right" merges (split at the first space after the first character, as
/// llama.cpp does) and check that both halves and their concatenation are tokens.
fn parse_merges(merges: &[String], vocab: &Vocab, source: &Path) -> Result<Vec<(String, String)>> {
    let mut merged = String::new();
    merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| {
            let split = merge
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == ' ')
                .map(|(at, _)| (&merge[..at], &merge[at + 1..]));
            let Some((left, right)) = split.filter(|(_, right)| !right.is_empty()) else {
                return Err(Error::format(
                    source,
                    format!("tokenizer.ggml.merges[{rank}] is {merge:?}, not \"left right\""),
                ));
            };
            for part in [left, right] {
                if !vocab.contains_key(part) {
                    return Err(Error::format(
                        source,
                        format!(
                            "tokenizer.ggml.merges[{rank}] ({merge:?}) uses {part:?}, \
                             which is not a token"
                        ),
                    ));
                }
            }
            // One buffer for all concatenations: this runs for every merge (150k for Qwen).
            merged.clear();
            merged.push_str(left);
            merged.push_str(right);
            if !vocab.contains_key(merged.as_str()) {
                return Err(Error::format(
                    source,
                    format!(
                        "tokenizer.ggml.merges[{rank}] ({merge:?}) makes {merged:?}, \
                         which is not a token"
                    ),
                ));
            }
            Ok((left.to_owned(), right.to_owned()))
        })
        .collect()
}

/// SentencePiece BPE merges recovered from the vocabulary, as transformers'
/// `generate_merges` does for GGUF files: every split of a token into two tokens is a
/// merge, ranked by the merged token's score (best first), ties broken by the longer left
/// then the longer right part, then by the ids of the parts.
fn merges_from_scores(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    struct Candidate<'t> {
        left: &'t str,
        right: &'t str,
        score: f32,
        left_chars: usize,
        right_chars: usize,
        left_id: u32,
        right_id: u32,
        order: usize,
    }
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for (order, token) in tokens.iter().enumerate() {
        // transformers walks a token -> score dict: a duplicate text is visited once, in
        // its first position, with the score (and id) of its last occurrence.
        let Some(&id) = vocab.get(token) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let id = id as usize;
        let chars = token.chars().count();
        for (index, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if let (Some(&left_id), Some(&right_id)) = (vocab.get(left), vocab.get(right)) {
                candidates.push(Candidate {
                    left,
                    right,
                    score: scores[id],
                    left_chars: index,
                    right_chars: chars - index,
                    left_id,
                    right_id,
                    order,
                });
            }
        }
    }
    // Python's stable sort with reverse=True keeps equal keys in their original order
    // (token order, then part ids), so ties fall back to that order here too.
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.left_chars.cmp(&a.left_chars))
            .then(b.right_chars.cmp(&a.right_chars))
            .then(a.order.cmp(&b.order))
            .then(a.left_id.cmp(&b.left_id))
            .then(a.right_id.cmp(&b.right_id))
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_owned(), c.right.to_owned()))
        .collect()
}

fn dedup_in_order(ids: &mut Vec<u32>) {
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(*id));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> &'static Path {
        Path::new("test.gguf")
    }

    /// A byte-level vocabulary small enough to reason about: "hello", " world" and the
    /// pieces that build them, plus two control tokens.
    fn tiny_vocab() -> GgufVocab {
        let tokens: Vec<String> = [
            "h",
            "e",
            "l",
            "o",
            "Ġ",
            "w",
            "r",
            "d",
            "he",
            "ll",
            "hell",
            "hello",
            "Ġw",
            "or",
            "Ġwor",
            "ld",
            "Ġworld",
            "<|endoftext|>",
            "<|im_end|>",
            "<tool_call>",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut types = vec![1; tokens.len()];
        types[17] = TOKEN_TYPE_CONTROL;
        types[18] = TOKEN_TYPE_CONTROL;
        types[19] = TOKEN_TYPE_USER_DEFINED;
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("qwen2".into()),
            tokens,
            token_types: Some(types),
            merges: ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            bos_id: Some(17),
            eos_id: Some(18),
            ..GgufVocab::default()
        }
    }

    fn error_text(vocab: GgufVocab) -> String {
        Tokenizer::from_gguf(vocab, source())
            .expect_err("the vocabulary is invalid")
            .to_string()
    }

    #[test]
    fn tiny_byte_level_round_trip() {
        let tok = Tokenizer::from_gguf(tiny_vocab(), source()).unwrap();
        assert_eq!(tok.encode("hello world", false).unwrap(), vec![11, 16]);
        assert_eq!(
            tok.encode("hello<|im_end|><tool_call>", false).unwrap(),
            vec![11, 18, 19]
        );
        // add_bos is absent and qwen2 does not add one by default.
        assert_eq!(tok.encode("hello", true).unwrap(), vec![11]);
        assert_eq!(tok.decode(&[11, 16, 18], false).unwrap(), "hello world<|im_end|>");
        assert_eq!(tok.decode(&[11, 16, 18], true).unwrap(), "hello world");
        // <tool_call> is user-defined, not special: it survives skip_special.
        assert_eq!(tok.decode(&[19], true).unwrap(), "<tool_call>");
        assert_eq!(tok.eos_ids(), &[18, 17]);
        assert!(tok.is_special(17) && tok.is_special(18) && !tok.is_special(19));
        assert_eq!(tok.token_id("Ġworld"), Some(16));
        assert_eq!(tok.id_to_token(16).as_deref(), Some("Ġworld"));
        assert_eq!(tok.vocab_size(), 20);
    }

    #[test]
    fn add_bos_prepends_only_with_add_special() {
        let vocab = GgufVocab {
            add_bos: Some(true),
            ..tiny_vocab()
        };
        let tok = Tokenizer::from_gguf(vocab, source()).unwrap();
        assert_eq!(tok.encode("hello", true).unwrap(), vec![17, 11]);
        assert_eq!(tok.encode("hello", false).unwrap(), vec![11]);
    }

    #[test]
    fn unknown_ids_decode_to_nothing() {
        let tok = Tokenizer::from_gguf(tiny_vocab(), source()).unwrap();
        assert_eq!(tok.decode(&[11, 1000], false).unwrap(), "hello");
        assert_eq!(tok.id_to_token(1000), None);
    }

    #[test]
    fn mismatched_token_types_are_an_error() {
        let mut vocab = tiny_vocab();
        vocab.token_types = Some(vec![1; 3]);
        let msg = error_text(vocab);
        assert!(msg.starts_with("test.gguf: "), "{msg}");
        assert!(msg.contains("token_type has 3 entries"), "{msg}");
    }

    #[test]
    fn mismatched_scores_are_an_error() {
        let mut vocab = tiny_vocab();
        vocab.scores = Some(vec![0.0; 4]);
        assert!(error_text(vocab).contains("scores has 4 entries"));
    }

    #[test]
    fn out_of_range_special_ids_are_an_error() {
        let mut vocab = tiny_vocab();
        vocab.eos_id = Some(20);
        let msg = error_text(vocab);
        assert!(msg.contains("eos_token_id is 20"), "{msg}");
    }

    #[test]
    fn empty_vocabulary_is_an_error() {
        let vocab = GgufVocab {
            model: "gpt2".into(),
            ..GgufVocab::default()
        };
        assert!(error_text(vocab).contains("tokens is empty"));
    }

    #[test]
    fn malformed_merges_are_errors() {
        for (merge, expected) in [
            ("hello", "not \"left right\""),
            ("h ", "not \"left right\""),
            ("", "not \"left right\""),
            ("x y", "uses \"x\""),
            ("h x", "uses \"x\""),
            ("h o", "makes \"ho\""),
        ] {
            let mut vocab = tiny_vocab();
            vocab.merges.push(merge.to_string());
            let msg = error_text(vocab);
            assert!(msg.contains("merges[9]"), "{merge:?}: {msg}");
            assert!(msg.contains(expected), "{merge:?}: {msg}");
        }
    }

    #[test]
    fn unknown_tokenizer_model_is_unsupported() {
        let vocab = GgufVocab {
            model: "bert".into(),
            ..tiny_vocab()
        };
        let err = Tokenizer::from_gguf(vocab, source()).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    }

    #[test]
    fn sentencepiece_without_scores_is_an_error() {
        let vocab = GgufVocab {
            model: "llama".into(),
            merges: Vec::new(),
            ..tiny_vocab()
        };
        assert!(error_text(vocab).contains("scores is missing"));
    }

    #[test]
    fn unknown_pre_falls_back_to_gpt2() {
        let vocab = GgufVocab {
            pre: Some("no-such-pre".into()),
            ..tiny_vocab()
        };
        let tok = Tokenizer::from_gguf(vocab, source()).unwrap();
        assert_eq!(tok.encode("hello world", false).unwrap(), vec![11, 16]);
    }

    #[test]
    fn tokenizer_json_missing_or_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let err = Tokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");

        let bad = dir.path().join("tokenizer.json");
        std::fs::write(&bad, "{\"model\": 3}").unwrap();
        let err = Tokenizer::from_file(&bad).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{err}");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn tokenizer_json_facts() {
        let json = r#"{
          "version": "1.0",
          "truncation": {"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0},
          "padding": null,
          "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
          "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]}}
          },
          "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
          "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": {"<s>": 0, "</s>": 1, "h": 2, "i": 3, "hi": 4, "Ġ": 5, "Ġhi": 6},
            "merges": ["h i", "Ġ hi"]
          }
        }"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        let tok = Tokenizer::from_file(&path).unwrap();
        assert_eq!(tok.bos_id(), Some(0));
        assert_eq!(tok.eos_ids(), &[1]);
        assert!(tok.is_special(0) && tok.is_special(1) && !tok.is_special(4));
        assert_eq!(tok.vocab_size(), 7);
        // The file's truncation to 2 tokens is switched off.
        assert_eq!(tok.encode("hi hi hi", true).unwrap(), vec![0, 4, 6, 6]);
        assert_eq!(tok.encode("hi hi hi</s>", false).unwrap(), vec![4, 6, 6, 1]);
        assert_eq!(tok.decode(&[0, 4, 6, 1], true).unwrap(), "hi hi");
    }

    #[test]
    fn stream_holds_back_split_characters() {
        // "é" is C3 A9: byte-level spells the bytes Ã and ©, one token each.
        let mut vocab = tiny_vocab();
        vocab.tokens.extend(["Ã".to_string(), "©".to_string()]);
        vocab.token_types.as_mut().unwrap().extend([1, 1]);
        let tok = Tokenizer::from_gguf(vocab, source()).unwrap();
        let mut stream = tok.stream();
        assert_eq!(stream.push(11).unwrap().as_deref(), Some("hello"));
        assert_eq!(stream.push(20).unwrap(), None);
        assert_eq!(stream.push(21).unwrap().as_deref(), Some("é"));
        assert_eq!(stream.push(18).unwrap(), None);
        assert_eq!(stream.push(16).unwrap().as_deref(), Some(" world"));
        assert_eq!(stream.push(20).unwrap(), None);
        assert_eq!(stream.flush().unwrap().as_deref(), Some("\u{FFFD}"));
        assert_eq!(stream.flush().unwrap(), None);
        assert_eq!(stream.text(), "helloé world\u{FFFD}");
    }

    #[test]
    fn merges_from_scores_order() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = merges_from_scores(&tokens, &scores, &vocab);
        let merges: Vec<(&str, &str)> = merges.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        // bc (-1) before ab (-2) before abc (-3), whose longer left part goes first.
        assert_eq!(merges, vec![("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]);
    }
}
