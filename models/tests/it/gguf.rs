//! GGUF loading: tiny checkpoints converted to GGUF (by candle's independent writer, with
//! llama.cpp's q/k permutation for the `llama` architecture) give the same logits as the
//! safetensors originals; hostile and truncated files are clear errors, never panics.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};
use tessera_models::engine::Engine;
use tessera_models::gguf::GgufFile;
use tessera_models::llama::Llama;
use tessera_models::loader::TextModel;

use crate::common::{engine, expected, fixture, max_abs_diff};

/// llama.cpp's `convert_hf_to_gguf.py` `LlamaModel.permute`: from Hugging Face's
/// rotate-half layout to ggml's adjacent-pair rope layout.
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((heads, 2, out / heads / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// Converts a fixture checkpoint to GGUF the way llama.cpp names and lays out tensors.
pub(crate) fn convert(name: &str, arch: &str, out: &Path) {
    convert_with(name, arch, out, |_| {});
}

/// [`convert`], with the metadata edited before it is written.
pub(crate) fn convert_with(
    name: &str,
    arch: &str,
    out: &Path,
    edit_metadata: impl FnOnce(&mut Vec<(String, gguf_file::Value)>),
) {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("config.json")).unwrap()).unwrap();
    let n = |k: &str| cfg[k].as_u64().unwrap() as u32;
    let heads = n("num_attention_heads") as usize;
    let kv_heads = n("num_key_value_heads") as usize;
    let dir = fixture(name);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && !p.ends_with("expected.safetensors"))
        .collect();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for f in files {
        for (hf, t) in candle_core::safetensors::load(&f, &Device::Cpu).unwrap() {
            let mut t = t.to_dtype(DType::F32).unwrap();
            let gg = if hf == "model.embed_tokens.weight" {
                "token_embd.weight".to_owned()
            } else if let Some(suffix) = hf.strip_prefix("model.norm.") {
                format!("output_norm.{suffix}")
            } else if hf == "lm_head.weight" {
                "output.weight".to_owned()
            } else {
                let rest = hf.strip_prefix("model.layers.").unwrap();
                let (layer, part) = rest.split_once('.').unwrap();
                let (part, suffix) = part.rsplit_once('.').unwrap();
                let gpart = match part {
                    "input_layernorm" => "attn_norm",
                    "post_attention_layernorm" => "ffn_norm",
                    "self_attn.q_proj" => "attn_q",
                    "self_attn.k_proj" => "attn_k",
                    "self_attn.v_proj" => "attn_v",
                    "self_attn.o_proj" => "attn_output",
                    "mlp.gate_proj" => "ffn_gate",
                    "mlp.up_proj" => "ffn_up",
                    "mlp.down_proj" => "ffn_down",
                    "mlp.c_fc" => "ffn_up",
                    "mlp.c_proj" => "ffn_down",
                    other => panic!("unmapped {other}"),
                };
                if arch == "llama" && suffix == "weight" && gpart == "attn_q" {
                    t = permute(&t, heads);
                }
                if arch == "llama" && suffix == "weight" && gpart == "attn_k" {
                    t = permute(&t, kv_heads);
                }
                format!("blk.{layer}.{gpart}.{suffix}")
            };
            tensors.push((gg, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        }
    }
    let theta = cfg["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
    let hidden = n("hidden_size");
    let mut md: Vec<(String, gguf_file::Value)> = vec![
        ("general.architecture".into(), gguf_file::Value::String(arch.into())),
        (format!("{arch}.embedding_length"), gguf_file::Value::U32(hidden)),
        (
            format!("{arch}.feed_forward_length"),
            gguf_file::Value::U32(n("intermediate_size")),
        ),
        (
            format!("{arch}.block_count"),
            gguf_file::Value::U32(n("num_hidden_layers")),
        ),
        (
            format!("{arch}.attention.head_count"),
            gguf_file::Value::U32(heads as u32),
        ),
        (
            format!("{arch}.attention.head_count_kv"),
            gguf_file::Value::U32(kv_heads as u32),
        ),
        (
            format!("{arch}.context_length"),
            gguf_file::Value::U32(n("max_position_embeddings")),
        ),
        (format!("{arch}.rope.freq_base"), gguf_file::Value::F32(theta)),
    ];
    md.push(match cfg.get("norm_epsilon") {
        Some(eps) => (
            format!("{arch}.attention.layer_norm_epsilon"),
            gguf_file::Value::F32(eps.as_f64().unwrap() as f32),
        ),
        None => (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            gguf_file::Value::F32(cfg["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
    });
    edit_metadata(&mut md);
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn gguf_logits_match(name: &str, arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    convert(name, arch, &path);
    let gguf = GgufFile::open(&path).unwrap();
    let model: std::sync::Arc<dyn tessera_models::model::CausalLm> = if arch == "starcoder2" {
        std::sync::Arc::new(tessera_models::starcoder2::StarCoder2::from_gguf(gguf, &Device::Cpu).unwrap())
    } else {
        std::sync::Arc::new(Llama::from_gguf(gguf, &Device::Cpu).unwrap())
    };
    let from_gguf = Engine::new(model);
    let from_st = engine(name);
    for ids in expected(name).input_ids {
        let diff = max_abs_diff(&from_gguf.logits(&ids).unwrap(), &from_st.logits(&ids).unwrap());
        assert!(diff <= 1e-4, "{name} as {arch} GGUF: logits differ by {diff}");
    }
}

#[test]
fn qwen2_gguf_matches_safetensors() {
    gguf_logits_match("qwen2", "qwen2");
}

#[test]
fn starcoder2_gguf_matches_safetensors() {
    gguf_logits_match("starcoder2", "starcoder2");
}

#[test]
fn llama_gguf_with_permuted_qk_matches_safetensors() {
    // Untied output (llama-plain) and ggml's adjacent-pair rope.
    gguf_logits_match("llama-plain", "llama");
}

/// GGUF v2 has v3's layout (64-bit counts and lengths; v3 only added big-endian
/// support), so for a little-endian file only the version field differs. candle's writer emits v2,
/// llama.cpp's converter (and so every fetched model) v3: the same tiny model with
/// either version must load and give exactly the same logits.
#[test]
fn gguf_v2_and_v3_load_alike() {
    let dir = tempfile::tempdir().unwrap();
    let v2_path = dir.path().join("v2.gguf");
    convert("qwen2", "qwen2", &v2_path);
    let mut bytes = std::fs::read(&v2_path).unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(
        u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
        2,
        "candle writes v2"
    );
    bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
    let v3_path = dir.path().join("v3.gguf");
    std::fs::write(&v3_path, &bytes).unwrap();

    let load = |p: &Path| {
        let gguf = GgufFile::open(p).unwrap_or_else(|e| panic!("{e}"));
        let version = gguf.version();
        let tensors = gguf.tensor_infos().len();
        let model = Llama::from_gguf(gguf, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        (version, tensors, Engine::new(std::sync::Arc::new(model)))
    };
    let (v2, v2_tensors, from_v2) = load(&v2_path);
    let (v3, v3_tensors, from_v3) = load(&v3_path);
    assert_eq!((v2, v3), (2, 3));
    assert_eq!(v2_tensors, v3_tensors);
    assert!(v2_tensors > 0);
    let from_st = engine("qwen2");
    for ids in expected("qwen2").input_ids {
        let v2_logits = from_v2.logits(&ids).unwrap();
        let diff = max_abs_diff(&v2_logits, &from_v3.logits(&ids).unwrap());
        assert_eq!(diff, 0.0, "v2 and v3 logits differ by {diff}");
        let diff = max_abs_diff(&v2_logits, &from_st.logits(&ids).unwrap());
        assert!(diff <= 1e-4, "v2 GGUF and safetensors logits differ by {diff}");
    }
}

/// A hand-built GGUF for hostile-input tests.
#[derive(Default)]
struct Builder {
    bytes: Vec<u8>,
}

impl Builder {
    fn header(version: u32, tensors: u64, kvs: u64) -> Self {
        let mut b = Builder::default();
        b.bytes.extend_from_slice(b"GGUF");
        b.u32(version).u64(tensors).u64(kvs);
        b
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    /// A 2-D tensor info.
    fn tensor(&mut self, name: &str, dims: [u64; 2], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(2).u64(dims[0]).u64(dims[1]).u32(ty).u64(offset)
    }
    fn pad_and_data(&mut self, data: usize) -> &mut Self {
        while !self.bytes.len().is_multiple_of(32) {
            self.bytes.push(0);
        }
        self.bytes.extend(std::iter::repeat_n(0u8, data));
        self
    }
    fn write(&self, dir: &Path) -> std::path::PathBuf {
        let p = dir.join("hostile.gguf");
        std::fs::File::create(&p).unwrap().write_all(&self.bytes).unwrap();
        p
    }
}

fn open_err(b: &Builder) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = b.write(dir.path());
    let err = GgufFile::open(&p)
        .expect_err("hostile file must be rejected")
        .to_string();
    assert!(err.contains("hostile.gguf"), "error must name the file: {err}");
    err
}

#[test]
fn hostile_gguf_headers_are_rejected_before_allocating() {
    let mut b = Builder::default();
    b.bytes.extend_from_slice(b"GGML\0\0\0\0");
    assert!(open_err(&b).contains("not a GGUF file"));

    assert!(open_err(&Builder::header(1, 0, 0)).contains("version 1"));

    // 2^60 tensors in a 24-byte file.
    let err = open_err(&Builder::header(3, 1 << 60, 0));
    assert!(err.contains("tensor count declares"), "{err}");

    // A metadata key claiming 1 TiB.
    let mut b = Builder::header(3, 0, 1);
    b.u64(1 << 40).u64(0).u64(0);
    let err = open_err(&b);
    assert!(err.contains("metadata key declares"), "{err}");

    // An array of 2^40 u32 values.
    let mut b = Builder::header(3, 0, 1);
    b.str("tokenizer.ggml.tokens").u32(9).u32(4).u64(1 << 40);
    let err = open_err(&b);
    assert!(err.contains("tokenizer.ggml.tokens declares"), "{err}");

    // Unknown metadata value type.
    let mut b = Builder::header(3, 0, 1);
    b.str("x").u32(99);
    assert!(open_err(&b).contains("unknown value type 99"));

    // Five dimensions.
    let mut b = Builder::header(3, 1, 0);
    b.str("t").u32(5).pad_and_data(64);
    let err = open_err(&b);
    assert!(err.contains("5 dimensions"), "{err}");
}

#[test]
fn tensors_that_overrun_the_file_are_rejected() {
    // Declares 64 x 64 f32 (16 KiB) but holds 1 KiB of data.
    let mut b = Builder::header(3, 1, 1);
    b.kv_str("general.architecture", "llama")
        .tensor("token_embd.weight", [64, 64], 0, 0)
        .pad_and_data(1024);
    let err = open_err(&b);
    assert!(err.contains("tensor token_embd.weight declares 16.0 KiB"), "{err}");
    assert!(err.contains("1.0 KiB left"), "{err}");

    // An offset far past the end.
    let mut b = Builder::header(3, 1, 0);
    b.tensor("w", [32, 1], 0, 1 << 50).pad_and_data(128);
    assert!(open_err(&b).contains("tensor w declares"));

    // Element count that overflows.
    let mut b = Builder::header(3, 1, 0);
    b.tensor("w", [u64::MAX / 2, 4], 0, 0).pad_and_data(0);
    assert!(open_err(&b).contains("overflows"));
}

#[test]
fn unknown_quantization_types_are_named() {
    let mut b = Builder::header(3, 1, 0);
    b.tensor("blk.0.attn_q.weight", [256, 1], 16, 0).pad_and_data(1024);
    let err = open_err(&b);
    assert!(err.contains("quantization type 16 (IQ2_XXS) is not supported"), "{err}");
    assert!(err.contains("blk.0.attn_q.weight"), "{err}");

    // An id no ggml version has used.
    let mut b = Builder::header(3, 1, 0);
    b.tensor("output.weight", [32, 1], 99, 0).pad_and_data(1024);
    let err = open_err(&b);
    assert!(err.contains("unknown quantization type 99"), "{err}");
    assert!(err.contains("output.weight"), "{err}");
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Builder::header(3, 0, 4);
    b.kv_str("general.architecture", "mamba")
        .kv_str("tokenizer.ggml.model", "gpt2");
    b.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(3)
        .str("a")
        .str("b")
        .str("ab");
    b.str("tokenizer.ggml.merges").u32(9).u32(8).u64(1).str("a b");
    let p = b.write(dir.path());
    let err = TextModel::load(p.to_str().unwrap(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("hostile.gguf"), "error must name the file: {err}");
    assert!(err.contains("unsupported architecture \"mamba\""), "{err}");
}

#[test]
fn a_config_that_disagrees_with_the_weights_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "config.json"] {
        std::fs::copy(fixture("qwen2").join(f), dir.path().join(f)).unwrap();
    }
    let cfg_path = dir.path().join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"intermediate_size\": 96", "\"intermediate_size\": 100");
    std::fs::write(&cfg_path, cfg).unwrap();
    let err = Llama::from_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("model.layers.0.mlp.gate_proj.weight has shape [96, 48]"),
        "{err}"
    );
    assert!(err.contains("[100, 48]"), "{err}");
}

#[test]
fn truncated_safetensors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("qwen2").join("config.json"), dir.path().join("config.json")).unwrap();
    let full = std::fs::read(fixture("qwen2").join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let err = Llama::from_dir(dir.path(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("invalid safetensors"), "{err}");
}
