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
    tiny_checkpoint(&snap);
    snap
}

/// A complete checkpoint directory: the tiny Qwen2 fixture's config and weights (random,
/// so its sampled text varies with the seed) with a byte-level `tokenizer.json` of its
/// 256-token vocabulary.
fn tiny_checkpoint(snap: &Path) {
    std::fs::create_dir_all(snap).unwrap();
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

/// A hand-written GGUF v3 file: string metadata and 2-D tensor infos (`[cols, rows]`,
/// ggml type id) over zeroed data.
fn write_gguf(path: &Path, kvs: &[(&str, &str)], tensors: &[(&str, [u64; 2], u32)]) {
    let mut b: Vec<u8> = b"GGUF".to_vec();
    let u32_ = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
    let u64_ = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
    let str_ = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    u32_(&mut b, 3);
    u64_(&mut b, tensors.len() as u64);
    u64_(&mut b, kvs.len() as u64);
    for (k, v) in kvs {
        str_(&mut b, k);
        u32_(&mut b, 8);
        str_(&mut b, v);
    }
    for (name, dims, ty) in tensors {
        str_(&mut b, name);
        u32_(&mut b, 2);
        u64_(&mut b, dims[0]);
        u64_(&mut b, dims[1]);
        u32_(&mut b, *ty);
        u64_(&mut b, 0);
    }
    b.resize(b.len().next_multiple_of(32) + 4096, 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn unusable_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let generate = |model: &str, needles: &[&str]| {
        let mut all = vec![model];
        all.extend_from_slice(needles);
        fails_with(&["generate", "--model", model, "--prompt", "x"], &all);
    };

    let mamba = path("mamba.gguf");
    write_gguf(Path::new(&mamba), &[("general.architecture", "mamba")], &[]);
    generate(
        &mamba,
        &["unsupported architecture \"mamba\"", "supported: llama, qwen2"],
    );

    let iq2 = path("iq2.gguf");
    write_gguf(
        Path::new(&iq2),
        &[("general.architecture", "llama")],
        &[("blk.0.attn_q.weight", [256, 1], 16)],
    );
    generate(
        &iq2,
        &["blk.0.attn_q.weight", "quantization type 16 (IQ2_XXS) is not supported"],
    );
    let unknown = path("unknown-type.gguf");
    write_gguf(
        Path::new(&unknown),
        &[("general.architecture", "llama")],
        &[("output.weight", [32, 1], 99)],
    );
    generate(&unknown, &["output.weight", "unknown quantization type 99"]);

    // A directory where a file was meant.
    let not_a_file = path("x.gguf");
    std::fs::create_dir(&not_a_file).unwrap();
    generate(&not_a_file, &["is a directory, not a GGUF file"]);

    // A complete checkpoint (the tokenizer loads) whose config disagrees with its weights.
    let wrong_size = dir.path().join("wrong-size");
    tiny_checkpoint_edited(&wrong_size, "\"intermediate_size\": 96", "\"intermediate_size\": 100");
    generate(
        wrong_size.to_str().unwrap(),
        &[
            "tensor model.layers.0.mlp.gate_proj.weight has shape [96, 48]",
            "[100, 48]",
        ],
    );

    let mamba_dir = dir.path().join("mamba-checkpoint");
    tiny_checkpoint_edited(&mamba_dir, "\"model_type\": \"qwen2\"", "\"model_type\": \"mamba\"");
    generate(
        mamba_dir.to_str().unwrap(),
        &["config.json", "unsupported model_type \"mamba\"", "supported: llama"],
    );
    let no_type = dir.path().join("no-model-type");
    tiny_checkpoint_edited(&no_type, "\"model_type\": \"qwen2\",", "");
    generate(no_type.to_str().unwrap(), &["config.json", "model_type is missing"]);

    // A syntax error inside the decoder section, which the `tokenizers` crate panics on
    // (it `expect`s its own parse there): an error naming the file, and no panic message
    // on stderr (`fails_with` checks).
    let bad_decoder = dir.path().join("bad-decoder");
    tiny_checkpoint(&bad_decoder);
    let tokenizer = bad_decoder.join("tokenizer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tokenizer).unwrap()).unwrap();
    json["decoder"] = serde_json::json!({"type": "ByteLevel", "trim_offsets": "MARK"});
    let text = json.to_string().replace("\"MARK\"", "tru");
    std::fs::write(&tokenizer, text).unwrap();
    generate(
        bad_decoder.to_str().unwrap(),
        &["tokenizer.json", "not a tokenizer.json the tokenizers library can read"],
    );
}

/// [`tiny_checkpoint`] in `dir` with `from` (which must be there) replaced by `to` in its
/// config.json.
fn tiny_checkpoint_edited(dir: &Path, from: &str, to: &str) {
    tiny_checkpoint(dir);
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&config, text.replace(from, to)).unwrap();
}

#[test]
fn num_return_needs_beams_or_sampling() {
    fails_with(
        &["generate", "--prompt", "x", "--num-return", "3"],
        &["--num-return 3", "--beams", "--temperature", "greedy"],
    );
    fails_with(
        &["generate", "--prompt", "x", "--num-return", "5", "--beams", "4"],
        &["--num-return 5", "--beams 4"],
    );
    fails_with(&["generate", "--prompt", "x", "--num-return", "0"], &["--num-return"]);

    // With sampling, the same flag gives that many independent completions.
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let model = dir.path().to_str().unwrap();
    let v = json_of(&[
        "generate",
        "--model",
        model,
        "--prompt",
        "hello",
        "--max-tokens",
        "4",
        "--temperature",
        "1",
        "--num-return",
        "3",
        "--json",
    ]);
    assert_eq!(v["completions"].as_array().unwrap().len(), 3, "{v}");
}

/// Runs, expects success and parses stdout as JSON.
fn json_of(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON: {e}"))
}

#[test]
fn sampling_is_reproducible_per_seed() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let model = dir.path().to_str().unwrap();
    let sample = |seed: u64| -> String {
        let seed = seed.to_string();
        let v = json_of(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "hello",
            "--max-tokens",
            "16",
            "--temperature",
            "0.9",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            &seed,
            "--json",
        ]);
        assert_eq!(v["completions"][0]["tokens"], 16, "{v}");
        v["completions"][0]["text"].as_str().unwrap().to_owned()
    };
    let first = sample(7);
    assert_eq!(sample(7), first, "the same seed must give the same text");
    let others: Vec<String> = [1, 2, 3, 4].into_iter().map(sample).collect();
    assert!(
        others.iter().any(|t| *t != first),
        "seeds 1-4 all gave seed 7's text {first:?}"
    );
}

#[test]
fn every_stop_string_cuts() {
    // Unstopped, the completion starts `n % 2 == 0`.
    let text = |stops: &[&str]| -> (String, String) {
        let mut args = vec!["generate", "--prompt", FIM, "--max-tokens", "8", "--json"];
        for s in stops {
            args.extend(["--stop", *s]);
        }
        let v = json_of(&args);
        let c = &v["completions"][0];
        (
            c["text"].as_str().unwrap().to_owned(),
            c["finish_reason"].as_str().unwrap().to_owned(),
        )
    };
    let (full, _) = text(&[]);
    assert!(full.starts_with("n % 2 == 0"), "{full:?}");
    assert_eq!(text(&["==", "not-in-the-output"]), ("n % 2 ".into(), "stop".into()));
    assert_eq!(text(&["not-in-the-output", "%"]), ("n ".into(), "stop".into()));
    // Both present: the earlier one cuts, whatever the order on the command line.
    assert_eq!(text(&["==", "%"]), ("n ".into(), "stop".into()));
}

#[test]
fn plain_beam_output_is_the_best_beam() {
    let args = ["generate", "--prompt", FIM, "--max-tokens", "8", "--beams", "4"];
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = String::from_utf8(o.stdout).unwrap();
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let v = json_of(&json_args);
    let best = v["completions"][0]["text"].as_str().unwrap();
    assert!(best.starts_with("n % 2 == 0"), "{v}");
    assert_eq!(plain, format!("{best}\n"));
}
