//! `tessera match`, `tessera index` and `tessera search` as a user runs them, with the tiny
//! random CLIP checkpoint of `models/tests/fixtures/clip` (no real CLIP weights are
//! reachable offline), and one clear error (exit code 2) for each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures/clip/tiny")
        .display()
        .to_string()
}

fn image(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("vision/tests/fixtures/images")
        .join(name)
        .display()
        .to_string()
}

fn run_in(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.env_remove("RUST_LOG")
        .env_remove("TESSERA_CLIP_MODEL")
        .env("HF_HUB_OFFLINE", "1")
        .args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.output().expect("tessera runs")
}

fn run(args: &[&str]) -> Output {
    run_in(None, args)
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    err
}

#[test]
fn match_prints_a_table_and_json() {
    let model = tiny();
    let (a, b) = (image("rgb.png"), image("baseline.jpg"));
    let text = ok(&run(&[
        "match",
        "--model",
        &model,
        "--image",
        &a,
        &b,
        "--text",
        "a red square",
        "a cat",
    ]));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    assert_eq!(lines[0], a);
    assert!(lines[1].ends_with("a red square") && lines[1].contains('%'), "{text}");

    let json = ok(&run(&[
        "match",
        "--model",
        &model,
        "--image",
        &a,
        &b,
        "--text",
        "a red square",
        "a cat",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    assert_eq!(v["texts"], serde_json::json!(["a red square", "a cat"]));
    for row in v["probs"].as_array().unwrap() {
        let sum: f64 = row.as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    for row in v["similarity"].as_array().unwrap() {
        assert!(
            row.as_array()
                .unwrap()
                .iter()
                .all(|s| s.as_f64().unwrap().abs() <= 1.0 + 1e-6)
        );
    }
    assert!(v.get("image_embeds").is_none());
    // The two JPEG-identical images (baseline and progressive) match alike.
    let json = ok(&run(&[
        "match",
        "--model",
        &model,
        "--image",
        &b,
        &image("progressive.jpg"),
        "--text",
        "x",
        "--embeddings",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let emb = v["image_embeds"].as_array().unwrap();
    assert_eq!(emb.len(), 2);
    assert_eq!(emb[0], emb[1]);
    assert_eq!(v["text_embeds"][0].as_array().unwrap().len(), 24);
    let norm: f64 = emb[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!((norm - 1.0).abs() < 1e-4);
}

#[test]
fn match_bad_input() {
    let model = tiny();
    // No model: says plainly that none ships or can be fetched.
    let err = fails(&run(&["match", "--image", &image("rgb.png"), "--text", "a cat"]));
    assert!(
        err.contains("no CLIP model given") && err.contains("no CLIP weights ship with Tessera"),
        "{err}"
    );
    let err = fails(&run(&[
        "match",
        "--model",
        "openai/clip-vit-base-patch32",
        "--image",
        &image("rgb.png"),
        "--text",
        "a",
    ]));
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("no CLIP weights ship"),
        "{err}"
    );
    // An empty text, an unreadable image, a bomb.
    let err = fails(&run(&[
        "match",
        "--model",
        &model,
        "--image",
        &image("rgb.png"),
        "--text",
        "a cat",
        "",
    ]));
    assert!(err.contains("text 2 is empty"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = fails(&run(&[
        "match",
        "--model",
        &model,
        "--image",
        bad.to_str().unwrap(),
        "--text",
        "a",
    ]));
    assert!(err.contains("bad.png"), "{err}");
    // Over-long texts are cut with one warning.
    let long = "a very long caption ".repeat(30);
    let out = run(&[
        "match",
        "--model",
        &model,
        "--image",
        &image("rgb.png"),
        "--text",
        &long,
        &long,
        "short",
    ]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(err.contains("77 tokens") && err.contains("#1, #2"), "{err}");
}

#[test]
fn index_then_search() {
    let model = tiny();
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(photos.join("sub")).unwrap();
    for (name, to) in [
        ("rgb.png", "a.png"),
        ("gray.jpg", "b.jpg"),
        ("cmyk.jpg", "sub/c.jpg"),
        ("anim.gif", "d.gif"),
    ] {
        std::fs::copy(image(name), photos.join(to)).unwrap();
    }
    std::fs::write(photos.join("broken.jpg"), b"nope").unwrap();
    let dir = photos.to_str().unwrap();

    let out = run(&["index", dir, "--model", &model]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("skipping") && err.contains("broken.jpg"), "{err}");
    assert!(
        err.contains("indexed 4 images") && err.contains("4 new") && err.contains("1 skipped"),
        "{err}"
    );
    // Again: nothing to embed, and the model comes from the index.
    let out = run(&["index", dir]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ok(&out);
    assert!(err.contains("0 new, 0 changed, 4 unchanged"), "{err}");

    // An image as the query ranks itself first.
    let hits = ok(&run_in(
        Some(&photos),
        &["search", "./sub/c.jpg", "--dir", dir, "--top", "2"],
    ));
    let lines: Vec<&str> = hits.lines().collect();
    assert_eq!(lines.len(), 2, "{hits}");
    let (score, path) = lines[0].split_once('\t').unwrap();
    assert!((score.parse::<f32>().unwrap() - 1.0).abs() < 1e-3, "{hits}");
    assert!(path.ends_with("sub/c.jpg"), "{hits}");
    // Text arithmetic and paths only.
    let paths = ok(&run(&[
        "search",
        "--dir",
        dir,
        "--paths-only",
        "red",
        "square",
        "+",
        "2:night",
        "-",
        "cat",
    ]));
    assert_eq!(paths.lines().count(), 4);
    assert!(paths.lines().all(|l| Path::new(l).is_file()), "{paths}");

    // No index, an empty term, a missing query image.
    let err = fails(&run(&["search", "--dir", tmp.path().to_str().unwrap(), "cat"]));
    assert!(err.contains("no image index") && err.contains("tessera index"), "{err}");
    let err = fails(&run(&["search", "--dir", dir, "cat", "+"]));
    assert!(err.contains("empty term"), "{err}");
    let err = fails(&run(&["search", "--dir", dir, "./missing.png"]));
    assert!(err.contains("missing.png"), "{err}");
    // Indexing a file or without any model.
    let err = fails(&run(&["index", &image("rgb.png"), "--model", &model]));
    assert!(err.contains("not a directory"), "{err}");
    let err = fails(&run(&["index", tmp.path().to_str().unwrap()]));
    assert!(err.contains("no CLIP weights ship"), "{err}");
}
