//! `tessera generate`: output formats, stdin prompts, Hugging Face cache lookup, and one
//! clear error (exit code 2) for each kind of bad input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const FIM: &str = "<|fim_prefix|>def is_even(n):\n    return <|fim_suffix|>\n<|fim_middle|>";

fn tessera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env_remove("RUST_LOG").env("HF_HUB_OFFLINE", "1");
    c
}

fn run(args: &[&str]) -> Output {
    tessera().args(args).output().expect("tessera runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects failure with exit code 2 and a message containing every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "exit code for {args:?}; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn json_output_has_completions_usage_and_timings() {
    let o = run(&[
        "generate",
        "--prompt",
        FIM,
        "--max-tokens",
        "8",
        "--beams",
        "3",
        "--num-return",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    let completions = v["completions"].as_array().unwrap();
    assert_eq!(completions.len(), 2);
    assert!(
        completions[0]["text"].as_str().unwrap().starts_with("n % 2 == 0"),
        "{v}"
    );
    assert!(completions[0]["score"].as_f64().unwrap() >= completions[1]["score"].as_f64().unwrap());
    assert!(completions[0]["tokens"].as_u64().unwrap() >= 1);
    assert!(["eos", "stop", "length"].contains(&completions[0]["finish_reason"].as_str().unwrap()));
    assert_eq!(v["usage"]["prompt_tokens"], 12);
    for k in [
        "load_ms",
        "prefill_ms",
        "decode_ms",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    ] {
        assert!(v["timings"][k].as_f64().unwrap() > 0.0, "timings.{k}: {v}");
    }
}

#[test]
fn plain_output_is_the_best_completion_and_stdin_prompts_work() {
    let mut child = tessera()
        .args(["generate", "--prompt", "-", "--max-tokens", "16", "--stop", "\n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(FIM.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "n % 2 == 0\n");
}

/// The 256 printable characters GPT-2's byte-level BPE maps bytes to.
fn byte_level_alphabet() -> Vec<char> {
    let mut printable: Vec<u32> = ('!' as u32..='~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

/// Lays out the tiny Qwen2 fixture, with a byte-level tokenizer of its 256-token
/// vocabulary, as hf-hub's cache does (`models--org--name/{refs,snapshots}`).
fn tiny_hub_cache(root: &Path) -> PathBuf {
    let repo = root.join("hub").join("models--tessera-test--tiny-qwen2");
    let snap = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123456789abcdef").unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tests/fixtures/qwen2");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(f), snap.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> = byte_level_alphabet()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(snap.join("tokenizer.json"), tok.to_string()).unwrap();
    snap
}

#[test]
fn hub_ids_resolve_from_the_local_cache_offline() {
    let home = tempfile::tempdir().unwrap();
    tiny_hub_cache(home.path());
    let o = tessera()
        .env("HF_HOME", home.path())
        .args([
            "generate",
            "--model",
            "tessera-test/tiny-qwen2",
            "--prompt",
            "hello",
            "--max-tokens",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 5);

    // Not in the cache and offline: says so.
    let o = tessera()
        .env("HF_HOME", home.path())
        .args(["generate", "--model", "tessera-test/absent", "--prompt", "hello"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("tessera-test/absent") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_with_exit_code_2() {
    fails_with(
        &["generate", "--model", "/nonexistent/model.gguf", "--prompt", "x"],
        &["/nonexistent/model.gguf"],
    );
    fails_with(
        &["generate", "--model", "no-such-model", "--prompt", "x"],
        &["no-such-model", "not a fetched model"],
    );
    fails_with(&["generate", "--prompt", ""], &["prompt is empty"]);
    fails_with(&["generate", "--prompt", "x", "--device", "cuda:0"], &["cuda:0"]);
    fails_with(&["generate", "--bogus-flag"], &["--bogus-flag"]);

    let dir = tempfile::tempdir().unwrap();
    let not_gguf = dir.path().join("notes.gguf");
    std::fs::write(&not_gguf, "just some text, not a model").unwrap();
    fails_with(
        &["generate", "--model", not_gguf.to_str().unwrap(), "--prompt", "x"],
        &["notes.gguf", "not a GGUF file"],
    );

    // The real model cut short: a tensor declares more than is left.
    let home = std::env::var("TESSERA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tessera"));
    let real = std::fs::read(home.join("models/qwen2.5-coder-0.5b/model.gguf"))
        .expect("scripts/fetch-models must have fetched qwen2.5-coder-0.5b");
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &real[..real.len() / 3]).unwrap();
    fails_with(
        &["generate", "--model", truncated.to_str().unwrap(), "--prompt", "x"],
        &["truncated.gguf", "declares"],
    );
    let headless = dir.path().join("headless.gguf");
    std::fs::write(&headless, &real[..4096]).unwrap();
    fails_with(
        &["generate", "--model", headless.to_str().unwrap(), "--prompt", "x"],
        &["headless.gguf", "truncated"],
    );

    // Longer than the 32k context.
    let long = "x ".repeat(40_000);
    fails_with(&["generate", "--prompt", &long], &["context"]);
}
