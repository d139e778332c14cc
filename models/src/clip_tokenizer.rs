//! CLIP's byte-level BPE tokenizer (Radford et al. 2021; openai/CLIP
//! `clip/simple_tokenizer.py`, transformers `CLIPTokenizer`): NFC, runs of whitespace to
//! one space, lower case, CLIP's split regex, byte-level BPE with `</w>` marking word ends,
//! then `<|startoftext|>` … `<|endoftext|>` and truncation to the context (77 tokens,
//! the last one always `<|endoftext|>`, whose position the text encoder pools).
//!
//! Three sources, one pipeline: a checkpoint's `tokenizer.json`; its `vocab.json` +
//! `merges.txt` (older CLIP repositories and OpenCLIP exports); openai's own
//! `bpe_simple_vocab_16e6.txt.gz`. The last two are turned into the `tokenizer.json`
//! that transformers' `CLIPTokenizer` builds from them, so every source tokenizes alike.
//! openai's tokenizer additionally runs `ftfy.fix_text` and `html.unescape`; transformers'
//! fast tokenizer (and so every `tokenizer.json`) does not, and neither do we.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};

use crate::{Error, Result};

/// The context length of every released CLIP text encoder.
pub const CONTEXT_LENGTH: usize = 77;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// CLIP's pre-tokenizer split (openai's `self.pat`), as `tokenizer.json` writes it.
const CLIP_SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// The merges openai's CLIP uses from `bpe_simple_vocab_16e6.txt.gz` (49152 - 256 - 2).
const OPENAI_MERGES: usize = 48_894;

/// One tokenized text: ids framed by start and end of text, and whether it was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipTokens {
    pub ids: Vec<u32>,
    /// The text had more tokens than fit the context; the tail was dropped.
    pub truncated: bool,
}

/// The CLIP tokenizer with its special ids and context length.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    sot: u32,
    eot: u32,
    context_length: usize,
    vocab_size: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("sot", &self.sot)
            .field("eot", &self.eot)
            .field("context_length", &self.context_length)
            .finish()
    }
}

/// GPT-2's byte-to-character table, in openai's order (printable bytes first).
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("below 512")))
        .collect()
}

/// openai's vocabulary for a list of merges: bytes, bytes ending a word, merged pairs,
/// then the two special tokens.
fn vocab_for(merges: &[(String, String)]) -> Vec<String> {
    let bytes: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let mut vocab = bytes.clone();
    vocab.extend(bytes.iter().map(|b| format!("{b}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push(START_OF_TEXT.into());
    vocab.push(END_OF_TEXT.into());
    vocab
}

/// The `tokenizer.json` transformers' `CLIPTokenizer` builds from a vocabulary and merges.
fn tokenizer_json(vocab: &HashMap<String, u32>, merges: &[(String, String)]) -> Result<Value> {
    let special = |name: &str| -> Result<Value> {
        let id = vocab
            .get(name)
            .ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no {name}")))?;
        Ok(
            json!({"id": id, "content": name, "single_word": false, "lstrip": false, "rstrip": false,
                  "normalized": false, "special": true}),
        )
    };
    let sot = vocab.get(START_OF_TEXT).copied();
    let eot = vocab.get(END_OF_TEXT).copied();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(START_OF_TEXT)?, special(END_OF_TEXT)?],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_SPLIT}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": {"type": "RobertaProcessing", "sep": [END_OF_TEXT, eot], "cls": [START_OF_TEXT, sot],
                           "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": END_OF_TEXT, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges.iter().map(|(a, b)| [a, b]).collect::<Vec<_>>()}
    }))
}

/// Merges from `merges.txt` lines (a `#version` header and blank lines are skipped).
fn parse_merges(text: &str, path: &Path) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => merges.push((a.to_owned(), b.to_owned())),
            _ => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {}: a merge is two tokens separated by one space, got {line:?}",
                        n + 1
                    ),
                ));
            }
        }
    }
    Ok(merges)
}

impl ClipTokenizer {
    /// From a `tokenizer.json`.
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = crate::tokenizer::parse_tokenizer_json(&bytes, path)?;
        Self::new(inner, context_length, path)
    }

    /// From `vocab.json` + `merges.txt`.
    pub fn from_vocab_merges(vocab_path: &Path, merges_path: &Path, context_length: usize) -> Result<Self> {
        let text = std::fs::read_to_string(vocab_path).map_err(|e| Error::io(vocab_path, e))?;
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&text).map_err(|e| Error::format(vocab_path, format!("not a vocab.json: {e}")))?;
        let text = std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
        let merges = parse_merges(&text, merges_path)?;
        Self::from_parts(&vocab, &merges, context_length, vocab_path)
    }

    /// From openai's `bpe_simple_vocab_16e6.txt.gz` (what `clip.tokenize` uses).
    pub fn from_openai_bpe(path: &Path, context_length: usize) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|e| Error::format(path, format!("not a gzipped BPE merges file: {e}")))?;
        // openai skips the header line and keeps the first 48,894 merges.
        let lines: Vec<&str> = text.split('\n').skip(1).take(OPENAI_MERGES).collect();
        if lines.len() < OPENAI_MERGES {
            return Err(Error::format(
                path,
                format!("{} merges, CLIP's vocabulary needs {OPENAI_MERGES}", lines.len()),
            ));
        }
        let merges = parse_merges(&lines.join("\n"), path)?;
        let vocab: HashMap<String, u32> = vocab_for(&merges)
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        Self::from_parts(&vocab, &merges, context_length, path)
    }

    /// The tokenizer of a checkpoint directory: `tokenizer.json`, else `vocab.json` +
    /// `merges.txt`.
    pub fn from_dir(dir: &Path, context_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(&json, context_length);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges, context_length);
        }
        Err(Error::ModelNotFound(format!(
            "{}: no tokenizer.json, nor vocab.json and merges.txt",
            dir.display()
        )))
    }

    fn from_parts(
        vocab: &HashMap<String, u32>,
        merges: &[(String, String)],
        context_length: usize,
        source: &Path,
    ) -> Result<Self> {
        let json = tokenizer_json(vocab, merges).map_err(|e| Error::format(source, e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| Error::format(source, format!("cannot build the CLIP tokenizer: {e}")))?;
        Self::new(inner, context_length, source)
    }

    fn new(mut inner: tokenizers::Tokenizer, context_length: usize, source: &Path) -> Result<Self> {
        if context_length < 2 {
            return Err(Error::InvalidInput(format!(
                "context length {context_length}: must hold at least the start and end tokens"
            )));
        }
        inner
            .with_truncation(None)
            .map_err(|e| Error::format(source, format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);
        let id = |name: &str| {
            inner
                .token_to_id(name)
                .ok_or_else(|| Error::format(source, format!("{name} is not in the vocabulary: not a CLIP tokenizer")))
        };
        let (sot, eot) = (id(START_OF_TEXT)?, id(END_OF_TEXT)?);
        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |m| *m as usize + 1);
        Ok(ClipTokenizer {
            inner,
            sot,
            eot,
            context_length,
            vocab_size,
        })
    }

    /// `<|startoftext|>` + the text's tokens + `<|endoftext|>`, cut to the context length
    /// as `clip.tokenize(truncate=True)` and transformers' `truncation=True` cut it.
    pub fn encode(&self, text: &str) -> Result<ClipTokens> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer(format!("{text:?}: {e}")))?;
        let body = enc.get_ids();
        let room = self.context_length - 2;
        let truncated = body.len() > room;
        let mut ids = Vec::with_capacity(body.len().min(room) + 2);
        ids.push(self.sot);
        ids.extend_from_slice(&body[..body.len().min(room)]);
        ids.push(self.eot);
        Ok(ClipTokens { ids, truncated })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(format!("decoding {ids:?}: {e}")))?;
        Ok(text.replace("</w>", " ").trim().to_owned())
    }

    pub fn sot_id(&self) -> u32 {
        self.sot
    }

    /// `<|endoftext|>`: ends every encoding; the text encoder pools its position.
    pub fn eot_id(&self) -> u32 {
        self.eot
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTokenizer {
        // Bytes plus a handful of merges spelling "cat</w>" and "a</w>".
        let merges: Vec<(String, String)> = [("c", "a"), ("ca", "t</w>")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let vocab: HashMap<String, u32> = vocab_for(&merges)
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        ClipTokenizer::from_parts(&vocab, &merges, 8, Path::new("test")).unwrap()
    }

    #[test]
    fn byte_table_matches_openai_order() {
        let table = bytes_to_unicode();
        assert_eq!(table.len(), 256);
        assert_eq!(table[0], (b'!', '!'));
        assert_eq!(table[93], (b'~', '~'));
        // The first non-printable byte (0) maps to U+0100.
        assert_eq!(table[188], (0, '\u{100}'));
        assert_eq!(table.iter().find(|(b, _)| *b == b' ').unwrap().1, 'Ġ');
    }

    #[test]
    fn frames_lowercases_and_truncates() {
        let tok = tiny();
        let cat = tok.inner.token_to_id("cat</w>").unwrap();
        let a = tok.inner.token_to_id("a</w>").unwrap();
        let enc = tok.encode("  A   CAT ").unwrap();
        assert_eq!(enc.ids, vec![tok.sot_id(), a, cat, tok.eot_id()]);
        assert!(!enc.truncated);
        let long = tok.encode("cat cat cat cat cat cat cat").unwrap();
        assert_eq!(long.ids.len(), 8);
        assert_eq!(*long.ids.last().unwrap(), tok.eot_id());
        assert!(long.truncated);
        let empty = tok.encode("").unwrap();
        assert_eq!(empty.ids, vec![tok.sot_id(), tok.eot_id()]);
        assert_eq!(tok.decode(&enc.ids).unwrap(), "a cat");
    }

    #[test]
    fn bad_merges_are_errors() {
        assert!(parse_merges("#version: 0.2\na b\n", Path::new("m")).is_ok());
        assert!(parse_merges("a b c\n", Path::new("m")).is_err());
        assert!(parse_merges("ab\n", Path::new("m")).is_err());
    }
}
