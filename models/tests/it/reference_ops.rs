//! The path accelerators take, checked where there is no GPU. With `TESSERA_REFERENCE_OPS=1`
//! the CPU runs candle's ops, as CUDA does, instead of Tessera's kernels: weights load as
//! candle `QMatMul`s, attention concatenates the cache, logits are copied out. One test runs
//! every other test of this binary again in a child process with the variable set, so the
//! parity fixtures, the engine's cache and batching, Whisper and CLIP, and the real weights
//! hold on that path too.

use std::process::Command;

use candle_core::Device;
use tessera_models::backend::{REFERENCE_OPS_VAR, cpu_kernels, reference_ops};

const THIS_TEST: &str = "reference_ops::every_other_test_passes_on_candles_ops";

#[test]
fn the_backend_follows_the_environment() {
    let set = std::env::var(REFERENCE_OPS_VAR).is_ok_and(|v| v == "1");
    assert_eq!(reference_ops(), set);
    assert_eq!(cpu_kernels(&Device::Cpu), !set);
}

/// `N passed` from libtest's closing line.
fn passed(output: &str) -> Option<usize> {
    let line = output.lines().rev().find(|l| l.starts_with("test result:"))?;
    let (_, rest) = line.split_once(". ")?;
    rest.split(" passed").next()?.trim().parse().ok()
}

#[test]
fn every_other_test_passes_on_candles_ops() {
    if reference_ops() {
        // Already the child: the parent checks this process's results.
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let listed = Command::new(&exe)
        .args(["--list", "--format", "terse"])
        .output()
        .expect("lists tests");
    let listed = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count();
    let child = Command::new(&exe)
        .args(["--skip", THIS_TEST, "--exact"])
        .env(REFERENCE_OPS_VAR, "1")
        .output()
        .expect("the test binary runs again");
    let out = String::from_utf8_lossy(&child.stdout);
    let err = String::from_utf8_lossy(&child.stderr);
    assert!(child.status.success(), "tests failed on candle's ops:\n{out}\n{err}");
    assert!(listed > 50, "only {listed} tests listed");
    assert_eq!(passed(&out), Some(listed - 1), "{out}");
}
