//! `tessera lsp` under a storm of hostile traffic, as a broken or malicious client would
//! send it: thousands of seeded messages mixing valid edits and requests with positions
//! far past the end, reversed and negative ranges, wrong types in every parameter, unknown
//! methods, duplicate and cancelled ids, frames that are not JSON, not UTF-8, or not
//! JSON-RPC. The server must answer every request it can identify (with a result or a
//! protocol error, never an internal error), write only JSON-RPC on stdout, keep the
//! documents of well-behaved clients exact, and still complete and shut down cleanly. The
//! model is the fetched SmolLM2-135M: small enough that the storm's completions are cheap,
//! real enough that a calm document's completions pass the syntax checks.

use serde_json::{Value, json};

use crate::lsp::Client;

#[path = "../../models/tests/support/mutate.rs"]
mod mutate;
use mutate::Rng;

/// Values a broken client puts where a number, string or object belongs.
fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(12) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(1e300),
        4 => json!(2_147_483_648u64),
        5 => json!("x"),
        6 => json!(""),
        7 => json!([]),
        8 => json!({}),
        9 => json!(true),
        10 => json!("\u{0}\u{FEFF}😀".repeat(1 + rng.below(1000))),
        _ => json!([1, 2, 3]),
    }
}

/// A line or character number: mostly small, sometimes huge, occasionally negative.
fn coordinate(rng: &mut Rng) -> Value {
    match rng.below(10) {
        0 => json!(u32::MAX),
        1 => json!(1u64 << 31),
        2 => json!(-1),
        3 => json!(40 + rng.below(10_000)),
        _ => json!(rng.below(12)),
    }
}

fn position(rng: &mut Rng) -> Value {
    json!({"line": coordinate(rng), "character": coordinate(rng)})
}

/// Replaces one randomly chosen value anywhere inside `v` by a hostile one.
fn damage(rng: &mut Rng, v: &mut Value) {
    let mut slot = v;
    loop {
        let children = match slot {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || rng.below(3) == 0 {
            *slot = hostile_value(rng);
            return;
        }
        let i = rng.below(children);
        slot = match slot {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
}

const PIECES: [&str; 10] = [
    "x",
    "é",
    "😀",
    "\n",
    "\r\n",
    "\r",
    "def f(n):\n    return ",
    "fn g() {",
    "\u{0}",
    "\u{301}",
];
const LANGUAGES: [&str; 7] = ["python", "rust", "javascript", "go", "cobol", "", "plaintext"];

/// One message of the storm: `(body, expects_response)`. Requests carry ids from `next_id`.
fn hostile_message(rng: &mut Rng, next_id: &mut i64) -> (Vec<u8>, Option<i64>) {
    let uri = format!("file:///tmp/storm{}.py", rng.below(3));
    let mut request = |method: &str, params: Value, rng: &mut Rng| -> (Value, Option<i64>) {
        let id = *next_id;
        *next_id += 1;
        let mut msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if rng.below(4) == 0 {
            damage(rng, &mut msg["params"]);
        }
        (msg, Some(id))
    };
    let (msg, id) = match rng.below(14) {
        0 => {
            let text: String = (0..rng.below(40)).map(|_| PIECES[rng.below(PIECES.len())]).collect();
            let language = LANGUAGES[rng.below(LANGUAGES.len())];
            let msg = json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument":
                {"uri": uri, "languageId": language, "version": rng.below(5), "text": text}}});
            (msg, None)
        }
        1..=3 => {
            let mut change = json!({"range": {"start": position(rng), "end": position(rng)},
                                    "text": PIECES[rng.below(PIECES.len())]});
            if rng.below(6) == 0 {
                change = json!({"text": "whole\ndocument\n"});
            }
            let mut msg = json!({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": uri, "version": coordinate(rng)}, "contentChanges": [change]}});
            if rng.below(4) == 0 {
                damage(rng, &mut msg["params"]);
            }
            (msg, None)
        }
        4..=6 => request(
            "textDocument/inlineCompletion",
            json!({"textDocument": {"uri": uri}, "position": position(rng), "context": {"triggerKind": 1 + rng.below(2)}}),
            rng,
        ),
        7 => request(
            "textDocument/completion",
            json!({"textDocument": {"uri": uri}, "position": position(rng)}),
            rng,
        ),
        8 => {
            let target = *next_id - rng.below(5) as i64;
            (
                json!({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": target}}),
                None,
            )
        }
        9 => (
            json!({"jsonrpc": "2.0", "method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}}),
            None,
        ),
        10 => request(
            "workspace/didChangeConfiguration-as-request",
            json!({"settings": hostile_value(rng)}),
            rng,
        ),
        11 => (
            json!({"jsonrpc": "2.0", "method": "workspace/didChangeConfiguration",
                   "params": {"settings": {"tessera": {"maxTokens": hostile_value(rng), "debounceMs": hostile_value(rng)}}}}),
            None,
        ),
        12 => request("tessera/documentText", json!({"uri": uri}), rng),
        _ => {
            // Frames that are not JSON-RPC requests at all.
            let raw: &[&[u8]] = &[
                b"{\"jsonrpc\": \"2.0\", \"id\": ",
                b"\xff\xfe not utf-8 \xc3\x28",
                b"[]",
                b"[{\"jsonrpc\": \"2.0\", \"method\": \"initialized\"}]",
                b"42",
                b"null",
                b"{\"jsonrpc\": \"1.0\", \"id\": 1, \"method\": \"shutdown\"}",
                b"{\"jsonrpc\": \"2.0\", \"id\": {\"a\": 1}, \"method\": \"textDocument/completion\"}",
                b"{\"jsonrpc\": \"2.0\", \"method\": 7}",
                b"{\"jsonrpc\": \"2.0\", \"id\": 1e400, \"method\": \"x\"}",
                b"{\"jsonrpc\": \"2.0\", \"method\": \"textDocument/didOpen\", \"params\": {\"textDocument\": {\"uri\": \"file:///tmp/s.py\", \"languageId\": \"python\", \"version\": 1, \"text\": \"\\ud800\"}}}",
            ];
            return (raw[rng.below(raw.len())].to_vec(), None);
        }
    };
    (msg.to_string().into_bytes(), id)
}

#[test]
fn a_storm_of_hostile_messages_leaves_the_server_serving() {
    let mut c = Client::start(&["--model", "smollm2-135m"]);
    c.initialize(json!({}), false);
    c.wait_ready();

    // A well-behaved document edited and completed alongside the storm.
    let calm = "file:///tmp/calm.py";
    let mut calm_text = String::from("def is_even(n):\n    return ");
    c.open(calm, "python", &calm_text);

    let mut rng = Rng::new(0x15b);
    let mut next_id = 1_000_000i64;
    let mut requests = Vec::new();
    let mut calm_completions = 0;
    for round in 0..2000 {
        let (body, id) = hostile_message(&mut rng, &mut next_id);
        c.send_raw(&body);
        requests.extend(id);
        if round % 100 == 99 {
            // The calm document takes an edit, reads back exactly, and completes.
            let insert = format!("    # round {round} é😀\n");
            c.notify(
                "textDocument/didChange",
                json!({"textDocument": {"uri": calm, "version": 2 + round},
                       "contentChanges": [{"range": {"start": {"line": 1, "character": 0},
                                                     "end": {"line": 1, "character": 0}}, "text": insert}]}),
            );
            calm_text.insert_str(calm_text.find('\n').unwrap() + 1, &insert);
            let r = c.request("tessera/documentText", json!({"uri": calm}));
            assert_eq!(
                r["result"]["text"].as_str(),
                Some(calm_text.as_str()),
                "round {round}: {r}"
            );
            let last_line = calm_text.matches('\n').count();
            let r = c.request(
                "textDocument/inlineCompletion",
                json!({"textDocument": {"uri": calm}, "position": {"line": last_line, "character": 11},
                       "context": {"triggerKind": 1}}),
            );
            let items = r["result"]["items"]
                .as_array()
                .unwrap_or_else(|| panic!("round {round}: {r}"));
            calm_completions += usize::from(!items.is_empty());
        }
    }
    assert!(
        calm_completions >= 15,
        "the calm document completed {calm_completions} times of 20"
    );
    // Every identifiable request was answered, none with an internal error.
    let mut errors = std::collections::BTreeMap::<i64, usize>::new();
    for id in &requests {
        let r = c.response(*id);
        if let Some(code) = r["error"]["code"].as_i64() {
            assert_ne!(code, -32603, "an internal error: {r}");
            *errors.entry(code).or_default() += 1;
        } else {
            assert!(r.get("result").is_some(), "neither result nor error: {r}");
        }
    }
    eprintln!("{} requests answered; error codes: {errors:?}", requests.len());
    assert!(errors.contains_key(&-32602), "no invalid-params errors: {errors:?}");
    assert!(requests.len() > 500);

    // Still completing, then a clean shutdown (exit status 0).
    let doc = "file:///tmp/after.py";
    c.open(doc, "python", "def is_even(n):\n    return ");
    let r = c.request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": doc}, "position": {"line": 1, "character": 11}, "context": {"triggerKind": 1}}),
    );
    assert!(!r["result"]["items"].as_array().unwrap().is_empty(), "{r}");
    c.shutdown_and_exit();
}
