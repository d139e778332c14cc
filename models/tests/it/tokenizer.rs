//! The tokenizer on real vocabularies: GGUF-built tokenizers for Qwen2.5-Coder-0.5B and
//! SmolLM2-135M against reference ids from transformers, special-token facts, streaming
//! decoding and round trips.

use std::path::{Path, PathBuf};

use tessera_models::tokenizer::{GgufVocab, Tokenizer, byte_level_pre_tokenize};

const QWEN: &str = "qwen2.5-coder-0.5b";
const SMOLLM: &str = "smollm2-135m";

/// A file in the model cache that `scripts/fetch-models` fills.
pub(crate) fn cached(relative: &str) -> PathBuf {
    let home = std::env::var_os("TESSERA_HOME").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/tessera")
        },
        PathBuf::from,
    );
    let path = home.join(relative);
    assert!(path.exists(), "{} is missing: run scripts/fetch-models", path.display());
    path
}

pub(crate) fn model_path(name: &str) -> PathBuf {
    cached(&format!("models/{name}/model.gguf"))
}

fn load(name: &str) -> Tokenizer {
    let path = model_path(name);
    Tokenizer::from_gguf(gguf_vocab(&path), &path).unwrap()
}

#[test]
fn reference_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_table.json");
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("tokenizer_table.json")).unwrap();
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "{} cases", cases.len());
    for name in [QWEN, SMOLLM] {
        let tok = load(name);
        let mut failures = Vec::new();
        for case in cases {
            let text = case["text"].as_str().expect("text");
            // Qwen's own tokenizer.json NFC-normalises (the GGUF conversion does not), and
            // so do we; the table lists those ids separately where NFC changes them.
            let ids = match &case["ids_qwen_with_nfc_normalizer"] {
                nfc if name == QWEN && !nfc.is_null() => nfc,
                _ => &case["ids"][name],
            };
            let expected: Vec<u32> =
                serde_json::from_value(ids.clone()).unwrap_or_else(|e| panic!("{name}: ids for {text:?}: {e}"));
            let got = tok.encode(text, false).unwrap();
            if got != expected {
                failures.push(format!("{text:?}\n  expected {expected:?}\n  got      {got:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{name}: {} of {} cases differ:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
}

/// Llama 3's split (`tokenizer.ggml.pre = "llama-bpe"`) against the pieces the Python
/// `tokenizers` library and llama.cpp's spelling of the regex give
/// (`fixtures/gen_llama_bpe_pieces.py`).
#[test]
fn llama_bpe_pre_tokenizer_matches_the_reference() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_bpe_pieces.json");
    let table: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("llama_bpe_pieces.json")).unwrap();
    assert_eq!(table["pre"], "llama-bpe");
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 50, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let expected: Vec<String> = serde_json::from_value(case["pieces"].clone()).unwrap();
        let got = byte_level_pre_tokenize("llama-bpe", text).unwrap();
        if got != expected {
            failures.push(format!("{text:?}\n  expected {expected:?}\n  got      {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // The table tells the splits apart: Qwen2's (single digits) must not match it.
    let qwen2_differs = cases.iter().any(|case| {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<String> = serde_json::from_value(case["pieces"].clone()).unwrap();
        byte_level_pre_tokenize("qwen2", text).unwrap() != expected
    });
    assert!(qwen2_differs, "no case separates llama-bpe from qwen2");
}

#[test]
fn qwen_special_tokens() {
    let tok = load(QWEN);
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.bos_id(), Some(151_643));
    // eos (<|im_end|>) first, then <|endoftext|> and the repo-level FIM separators.
    assert_eq!(tok.eos_ids()[0], 151_645);
    for id in [151_643, 151_645, 151_662, 151_663, 151_664] {
        assert!(tok.eos_ids().contains(&id), "{id} in {:?}", tok.eos_ids());
    }
    assert!(!tok.eos_ids().contains(&151_659));
    assert_eq!(tok.token_id("<|fim_prefix|>"), Some(151_659));
    assert_eq!(tok.id_to_token(151_660).as_deref(), Some("<|fim_middle|>"));
    assert!(tok.is_special(151_659));
    assert!(!tok.is_special(151_657), "<tool_call> is user-defined");
    assert!(!tok.is_special(785));

    let prompt = "<|fim_prefix|>def is_even(n):\n    return <|fim_suffix|>\n<|fim_middle|>";
    let ids = tok.encode(prompt, true).unwrap();
    // add_bos_token is false for Qwen: nothing is prepended.
    assert_eq!(ids[0], 151_659);
    assert_eq!(ids.iter().filter(|id| tok.is_special(**id)).count(), 3);
    assert_eq!(*ids.last().unwrap(), 151_660);
    assert_eq!(tok.decode(&ids, false).unwrap(), prompt);
    assert_eq!(tok.decode(&ids, true).unwrap(), "def is_even(n):\n    return \n");
    // User-defined tokens are matched whole, like specials, but are not skipped.
    let ids = tok.encode("<tool_call>x</tool_call>", false).unwrap();
    assert_eq!(ids.first(), Some(&151_657));
    assert_eq!(ids.last(), Some(&151_658));
    assert_eq!(tok.decode(&ids, true).unwrap(), "<tool_call>x</tool_call>");
}

#[test]
fn smollm_special_tokens() {
    let tok = load(SMOLLM);
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2, 0]);
    assert_eq!(
        tok.encode("<|im_start|>user\nhi<|im_end|>", true).unwrap(),
        tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap(),
        "add_bos_token is false"
    );
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!((ids[0], *ids.last().unwrap()), (1, 2));
}

#[test]
fn round_trip() {
    let texts = [
        "fn main() {\n    println!(\"Hello, world!\");\n}\n",
        "def f(x):\r\n\treturn x ** 2  # square\n\n\n",
        "    indented\n        more\n",
        "naïve café, Ünïcödé, 日本語のテキスト, 한국어, العربية, Ελληνικά",
        "emoji 🦀🚀👩‍💻 and flags 🇯🇵",
        "numbers 1234567890 3.14159 -42 1e-9 0xDEADBEEF",
        "",
        " ",
        "trailing spaces   ",
        "I'm sure they'll say it's John's, WE'VE seen THEY'LL",
        "<|endoftext|> in the middle <|im_start|>",
    ];
    for name in [QWEN, SMOLLM] {
        let tok = load(name);
        for text in texts {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(tok.decode(&ids, false).unwrap(), text, "{name}: {ids:?}");
        }
    }
}

#[test]
fn whisper_tokenizer_json() {
    let path = cached("models/whisper-tiny.en/tokenizer.json");
    let tok = Tokenizer::from_file(&path).unwrap();
    assert_eq!(tok.vocab_size(), 50_363);
    // Its post-processor wraps text in <|startoftranscript|><|notimestamps|> .. <|endoftext|>.
    assert_eq!(tok.bos_id(), Some(50_257));
    assert_eq!(tok.eos_ids(), &[50_256]);
    assert_eq!(
        tok.encode(" Hello world", true).unwrap(),
        vec![50_257, 50_362, 18_435, 995, 50_256]
    );
    assert_eq!(tok.encode(" Hello world", false).unwrap(), vec![18_435, 995]);
    assert_eq!(tok.decode(&[50_257, 18_435, 995], true).unwrap(), " Hello world");
}

/// Stream `ids` one at a time and check every delta is whole text that adds up to the
/// full decode; returns the deltas.
fn stream_all(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut stream = tok.stream();
    let mut deltas = Vec::new();
    for id in ids {
        if let Some(delta) = stream.push(*id).unwrap() {
            assert!(!delta.contains('\u{FFFD}'), "partial character in {delta:?}");
            deltas.push(delta);
        }
    }
    if let Some(rest) = stream.flush().unwrap() {
        deltas.push(rest);
    }
    assert_eq!(deltas.concat(), stream.text());
    assert_eq!(stream.text(), tok.decode(ids, true).unwrap());
    deltas
}

#[test]
fn stream_emoji_split_across_tokens() {
    for name in [QWEN, SMOLLM] {
        let tok = load(name);
        let text = "ok 🦀 done";
        let ids = tok.encode(text, false).unwrap();
        // Byte-level BPE spells the crab's four bytes with more than one token.
        let pieces: Vec<String> = ids.iter().map(|id| tok.decode(&[*id], false).unwrap()).collect();
        assert!(
            pieces.iter().filter(|p| p.contains('\u{FFFD}')).count() >= 2,
            "{name}: {pieces:?}"
        );
        let deltas = stream_all(&tok, &ids);
        assert_eq!(deltas.concat(), text);
        assert!(deltas.iter().any(|d| d.contains('🦀')), "{deltas:?}");
    }
}

#[test]
fn stream_cjk_and_code() {
    for name in [QWEN, SMOLLM] {
        let tok = load(name);
        for text in [
            "日本語のテキストと中文文本，还有한국어",
            "fn main() {\n    let s = \"héllo wörld\";\n}\n",
            "👩‍💻🇯🇵é\u{301}",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_eq!(stream_all(&tok, &ids).concat(), text, "{name}");
        }
    }
}

#[test]
fn stream_skips_special_tokens() {
    let tok = load(QWEN);
    let mut ids = tok.encode("a = 1", false).unwrap();
    ids.push(151_643);
    ids.extend(tok.encode("\nb", false).unwrap());
    assert_eq!(stream_all(&tok, &ids).concat(), "a = 1\nb");
}

#[test]
fn stream_dangling_partial_character_flushes_lossy() {
    let tok = load(QWEN);
    // " 🦀" is three tokens (`ĠðŁ`, `¦`, `Ģ`); drop the last.
    let ids = tok.encode("x 🦀", false).unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let mut stream = tok.stream();
    let mut out = String::new();
    for id in &ids[..ids.len() - 1] {
        out.extend(stream.push(*id).unwrap());
    }
    assert_eq!(out, "x");
    let rest = stream.flush().unwrap().expect("the partial crab");
    assert!(rest.contains('\u{FFFD}'), "{rest:?}");
    assert_eq!(stream.flush().unwrap(), None);
}

#[test]
fn qwen_vocabulary_is_complete() {
    let path = model_path(QWEN);
    let tok = Tokenizer::from_gguf(gguf_vocab(&path), &path).unwrap();
    assert_eq!(tok.vocab_size(), 151_936);
    assert_eq!(tok.token_id("<|fim_middle|>"), Some(151_660));
}

/// The tiny SentencePiece BPE vocabulary of `fixtures/spm_tiny.json`, as GGUF metadata.
pub(crate) fn spm_tiny() -> (GgufVocab, serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spm_tiny.json");
    let table: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("spm_tiny.json")).unwrap();
    let field = |key: &str| table[key].clone();
    let id = |key: &str| Some(serde_json::from_value::<u32>(field(key)).unwrap());
    let vocab = GgufVocab {
        model: "llama".into(),
        tokens: serde_json::from_value(field("tokens")).unwrap(),
        token_types: Some(serde_json::from_value(field("token_types")).unwrap()),
        scores: Some(serde_json::from_value(field("scores")).unwrap()),
        bos_id: id("bos_id"),
        eos_id: id("eos_id"),
        unk_id: id("unk_id"),
        ..GgufVocab::default()
    };
    (vocab, table)
}

#[test]
fn sentencepiece_matches_sentencepiece() {
    let (vocab, table) = spm_tiny();
    let tok = Tokenizer::from_gguf(vocab, Path::new("spm_tiny.json")).unwrap();
    let cases = table["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text, false).unwrap(), expected, "{text:?}");
        // SentencePiece vocabularies ask for BOS unless the file says otherwise.
        let mut with_bos = vec![1];
        with_bos.extend(&expected);
        assert_eq!(tok.encode(text, true).unwrap(), with_bos, "{text:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), text);
        assert_eq!(stream_all(&tok, &with_bos).concat(), text);
    }
}

#[test]
fn sentencepiece_special_tokens() {
    let (vocab, _) = spm_tiny();
    let tok = Tokenizer::from_gguf(vocab, Path::new("spm_tiny.json")).unwrap();
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    assert!(tok.is_special(0) && tok.is_special(1) && tok.is_special(2));
    assert!(!tok.is_special(3), "<tool> is user-defined");
    let hello = tok.encode("hello", false).unwrap();
    // Text after a special token gets its own `▁` prefix, as in llama.cpp.
    let ids = tok.encode("<s>hello</s>", false).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(&ids[1..ids.len() - 1], hello.as_slice());
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello");
    assert_eq!(tok.encode("<tool>", false).unwrap(), vec![3]);
    // 🦀 is not in the vocabulary: four byte-fallback tokens.
    let ids = tok.encode("🦀", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|id| tok.id_to_token(*id).unwrap()).collect();
    assert_eq!(pieces[pieces.len() - 4..], ["<0xF0>", "<0x9F>", "<0xA6>", "<0x80>"]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "🦀");
}

/// The tokenizer metadata of a real GGUF file, through the crate's reader.
fn gguf_vocab(path: &Path) -> GgufVocab {
    tessera_models::gguf::GgufFile::open(path).unwrap().vocab().unwrap()
}
