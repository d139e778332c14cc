//! `tessera complete FILE:LINE:COL` with the fetched Qwen2.5-Coder-0.5B: the JSON report
//! (items with 1-based ranges, mode, template, timings), the plain output, and one clear error
//! line with exit code 2 for each kind of bad input (a file that is not UTF-8, a missing file,
//! a position outside the file, a malformed location).

use std::path::Path;
use std::process::{Command, Output};

fn tessera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env_remove("RUST_LOG")
        .env_remove("TESSERA_LOG")
        .env("HF_HUB_OFFLINE", "1");
    c
}

fn run(args: &[&str]) -> Output {
    tessera().args(args).output().expect("tessera runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A workspace with one Python file whose line 2 is `    return ` (cursor at column 12).
fn is_even_file(dir: &Path) -> String {
    let file = dir.join("is_even.py");
    std::fs::write(&file, "def is_even(n):\n    return \n").unwrap();
    file.to_str().unwrap().to_owned()
}

#[test]
fn json_report_has_the_completion_its_range_mode_template_and_timings() {
    let dir = tempfile::tempdir().unwrap();
    let file = is_even_file(dir.path());
    let o = run(&["complete", &format!("{file}:2:12"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    let items = v["items"].as_array().unwrap();
    assert!(!items.is_empty(), "{v}");
    assert!(items[0]["text"].as_str().unwrap().starts_with("n % 2 == 0"), "{v}");
    let start = serde_json::json!({"line": 2, "col": 12});
    assert_eq!(items[0]["range"]["start"], start, "{v}");
    assert_eq!(
        items[0]["range"]["end"], start,
        "nothing after the cursor is replaced: {v}"
    );
    assert_eq!(items[0]["new_syntax_errors"], 0, "{v}");
    assert_eq!(v["mode"], "single-line");
    assert_eq!(v["template"], "qwen");
    assert!(v["backend"].as_str().unwrap().starts_with("local:"), "{v}");
    assert_eq!((v["line"].as_u64(), v["col"].as_u64()), (Some(2), Some(12)));
    assert!(v["prompt_tokens"].as_u64().unwrap() > 0, "{v}");
    for k in ["load_ms", "index_ms", "context_ms", "generate_ms", "total_ms"] {
        let ms = v["timings"][k]
            .as_f64()
            .unwrap_or_else(|| panic!("timings.{k} missing: {v}"));
        assert!(ms > 0.0, "timings.{k}: {v}");
    }
    assert_eq!(v["index"]["files"], 1, "the workspace is the file's directory: {v}");
}

#[test]
fn plain_output_is_the_best_completion() {
    let dir = tempfile::tempdir().unwrap();
    let file = is_even_file(dir.path());
    let o = run(&["complete", &format!("{file}:2:12")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), "n % 2 == 0\n");
}

/// Runs and expects exit code 2 and a single stderr line containing every `needle`; returns
/// that line.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "exit code for {args:?}; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.stdout.is_empty(), "{args:?}: {}", String::from_utf8_lossy(&o.stdout));
    err
}

#[test]
fn bad_input_is_one_clear_error_line_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = is_even_file(dir.path());

    let latin1 = dir.path().join("latin1.py");
    std::fs::write(&latin1, b"# caf\xe9\ndef f():\n    return \n").unwrap();
    let latin1 = latin1.to_str().unwrap();
    fails_with(&["complete", &format!("{latin1}:3:12")], &[latin1, "not valid UTF-8"]);

    let missing = dir.path().join("missing.py");
    let missing = missing.to_str().unwrap();
    let missing_err = fails_with(&["complete", &format!("{missing}:1:1")], &[missing, "No such file"]);

    fails_with(
        &["complete", &format!("{file}:99:1")],
        &["99:1", "outside", "is_even.py", "3 lines"],
    );
    fails_with(
        &["complete", &format!("{file}:2:40")],
        &["2:40", "outside", "is_even.py"],
    );
    fails_with(
        &["complete", &format!("{file}:1:0")],
        &[":1:0", "expected FILE:LINE:COL", "1-based"],
    );
    fails_with(
        &["complete", &format!("{file}:0:1")],
        &[":0:1", "expected FILE:LINE:COL"],
    );
    fails_with(&["complete", &file], &["is_even.py", "expected FILE:LINE:COL"]);
    fails_with(&["complete", &format!("{file}:2")], &["expected FILE:LINE:COL"]);

    // Said once, not once more as the error's source.
    assert_eq!(
        missing_err.matches("No such file").count(),
        1,
        "the reason is said once: {missing_err}"
    );
}
