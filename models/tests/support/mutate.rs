//! Deterministic corruption of input files for the "bad input never panics" tests of every
//! crate (included by `#[path]`, so there is one copy): a seeded generator of the damage
//! real files suffer (truncation, flipped bits, size fields overwritten with extreme
//! values, bytes dropped or inserted), aimed mostly at the regions that describe the rest
//! of the file, and a runner that calls the code under test on each variant and collects
//! every panic instead of stopping at the first.

#![allow(dead_code)]

use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// SplitMix64: small, seedable, the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Values a corrupted length, count or offset field tends to hold.
const EXTREMES: [u64; 9] = [0, 1, 7, 0xFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 1 << 40, 1 << 62, u64::MAX];

/// One corrupted copy of `bytes` and what was done to it. Three times in four the damage
/// lands in one of the `hot` ranges (headers, metadata, tensor descriptions), else anywhere.
pub fn mutate(rng: &mut Rng, bytes: &[u8], hot: &[Range<usize>]) -> (String, Vec<u8>) {
    let mut v = bytes.to_vec();
    let len = v.len().max(1);
    let pos = |rng: &mut Rng| -> usize {
        let hot: Vec<&Range<usize>> = hot.iter().filter(|r| r.start < r.end && r.end <= len).collect();
        if !hot.is_empty() && rng.below(4) < 3 {
            let r = hot[rng.below(hot.len())];
            r.start + rng.below(r.end - r.start)
        } else {
            rng.below(len)
        }
    };
    let what = match rng.below(6) {
        0 => {
            let at = pos(rng);
            v.truncate(at);
            format!("truncated to {at} bytes")
        }
        1 => {
            let at = pos(rng).min(v.len().saturating_sub(1));
            let bit = rng.below(8);
            if let Some(b) = v.get_mut(at) {
                *b ^= 1 << bit;
            }
            format!("bit {bit} of byte {at} flipped")
        }
        2 => {
            let at = pos(rng).min(v.len().saturating_sub(1));
            let byte = rng.below(256) as u8;
            if let Some(b) = v.get_mut(at) {
                *b = byte;
            }
            format!("byte {at} set to {byte:#04x}")
        }
        3 => {
            let at = pos(rng);
            let value = EXTREMES[rng.below(EXTREMES.len())];
            let width = if rng.below(2) == 0 { 4 } else { 8 };
            let le = value.to_le_bytes();
            for (i, b) in le[..width].iter().enumerate() {
                if let Some(slot) = v.get_mut(at + i) {
                    *slot = *b;
                }
            }
            format!("{width} bytes at {at} set to {value:#x}")
        }
        4 => {
            let at = pos(rng).min(v.len());
            let n = (1 + rng.below(16)).min(v.len() - at);
            v.drain(at..at + n);
            format!("{n} bytes removed at {at}")
        }
        _ => {
            let at = pos(rng).min(v.len());
            let n = 1 + rng.below(16);
            let junk: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
            v.splice(at..at, junk);
            format!("{n} bytes inserted at {at}")
        }
    };
    (what, v)
}

/// Every top-level value of a JSON object replaced, one at a time, by values a broken or
/// hostile config might hold.
pub fn json_variants(text: &str) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(text).expect("a JSON object");
    let replacements = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(3),
        serde_json::json!(4_294_967_297u64),
        serde_json::json!(1e300),
        serde_json::json!(null),
        serde_json::json!("x"),
        serde_json::json!([]),
        serde_json::json!(true),
    ];
    let mut out = Vec::new();
    for key in json.as_object().expect("a JSON object").keys() {
        for r in &replacements {
            let mut j = json.clone();
            j[key] = r.clone();
            out.push((format!("{key} = {r}"), serde_json::to_string_pretty(&j).unwrap()));
        }
        let mut j = json.clone();
        j.as_object_mut().unwrap().remove(key);
        out.push((format!("{key} removed"), serde_json::to_string_pretty(&j).unwrap()));
    }
    out
}

/// The prefix of a refusal by work after loading; see [`Outcomes::run`].
pub const RUN: &str = "run: ";

/// Tallies of a corruption run: how many variants were accepted, how many refused, and
/// each panic (what was done, and the panic's message).
#[derive(Default)]
pub struct Outcomes {
    pub accepted: usize,
    pub refused: usize,
    pub panics: Vec<String>,
    pub unnamed: Vec<String>,
}

impl Outcomes {
    /// Runs `check` on one variant. `Err` is a refusal, whose message must contain
    /// `must_name` (the input's file name) when that is not empty, unless it starts with
    /// [`RUN`]: an input the loader accepted and that later work refused for a reason of its
    /// own (a context of one token is a valid model that cannot take a three-token prompt).
    pub fn run(&mut self, what: &str, must_name: &str, check: impl FnOnce() -> Result<(), String>) {
        match catch_unwind(AssertUnwindSafe(check)) {
            Ok(Ok(())) => self.accepted += 1,
            Ok(Err(e)) => {
                self.refused += 1;
                if !must_name.is_empty() && !e.starts_with(RUN) && !e.contains(must_name) && self.unnamed.len() < 20 {
                    self.unnamed.push(format!("{what}: {e}"));
                }
            }
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                self.panics.push(format!("{what}: {msg}"));
            }
        }
    }

    /// Fails the test on any panic or on an error that does not name the input, and
    /// checks the run reached both outcomes (`min_refused`, `min_accepted`), so a
    /// mutator that never damages anything, or always breaks the first check, shows.
    pub fn assert_clean(&self, label: &str, min_refused: usize, min_accepted: usize) {
        assert!(
            self.panics.is_empty(),
            "{label}: {} of {} variants panicked:\n{}",
            self.panics.len(),
            self.accepted + self.refused + self.panics.len(),
            self.panics.join("\n")
        );
        assert!(
            self.unnamed.is_empty(),
            "{label}: errors that do not name the input:\n{}",
            self.unnamed.join("\n")
        );
        assert!(
            self.refused >= min_refused && self.accepted >= min_accepted,
            "{label}: {} refused, {} accepted; expected at least {min_refused} and {min_accepted}",
            self.refused,
            self.accepted
        );
        eprintln!(
            "{label}: {} refused, {} accepted, no panics",
            self.refused, self.accepted
        );
    }
}
