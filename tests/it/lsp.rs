//! `tessera lsp` as an editor runs it: a subprocess speaking JSON-RPC over a pipe, with the
//! fetched Qwen2.5-Coder-0.5B. Transcripts: initialize, didOpen, bursts of didChange,
//! inlineCompletion, completion, cancellation, bad input, shutdown and exit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A language client driving a real `tessera lsp` process.
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Value>,
    next_id: i64,
    /// Notifications received so far.
    pub notifications: Vec<Value>,
    /// Server-to-client requests received so far (answered automatically).
    pub server_requests: Vec<Value>,
    /// Responses that arrived while waiting for another id.
    stash: Vec<Value>,
}

const WAIT: Duration = Duration::from_secs(120);

fn read_message(reader: &mut impl BufRead) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Content-Length: ") {
            length = v.parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    reader.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).expect("the server writes only JSON-RPC on stdout"))
}

impl Client {
    /// Starts `tessera lsp` with extra arguments.
    pub fn start(args: &[&str]) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("lsp")
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("TESSERA_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tessera lsp starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Some(v) = read_message(&mut reader) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Client {
            child,
            stdin,
            incoming: rx,
            next_id: 1,
            notifications: Vec::new(),
            server_requests: Vec::new(),
            stash: Vec::new(),
        }
    }

    pub fn send_raw(&mut self, body: &[u8]) {
        write!(self.stdin, "Content-Length: {}\r\n\r\n", body.len()).unwrap();
        self.stdin.write_all(body).unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn send(&mut self, v: &Value) {
        self.send_raw(v.to_string().as_bytes());
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// Sends a request and returns its id without waiting.
    pub fn send_request(&mut self, method: &str, params: Value) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// Receives one message, answering server requests and recording notifications.
    fn pump(&mut self, timeout: Duration) -> Option<Value> {
        match self.incoming.recv_timeout(timeout) {
            Ok(msg) => {
                if msg.get("method").is_some() {
                    if let Some(id) = msg.get("id").cloned() {
                        self.server_requests.push(msg.clone());
                        self.send(&json!({"jsonrpc": "2.0", "id": id, "result": null}));
                    } else {
                        self.notifications.push(msg.clone());
                    }
                    return None;
                }
                Some(msg)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed stdout"),
        }
    }

    /// Waits for the response to `id`.
    pub fn response(&mut self, id: i64) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) = self.stash.iter().position(|r| r["id"] == json!(id)) {
                return self.stash.remove(i);
            }
            assert!(Instant::now() < deadline, "no response to request {id}");
            if let Some(msg) = self.pump(Duration::from_millis(50)) {
                self.stash.push(msg);
            }
        }
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.response(id)
    }

    /// Waits until a notification satisfies `pred`.
    pub fn wait_notification(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(n) = self.notifications.iter().find(|n| pred(n)) {
                return n.clone();
            }
            assert!(
                Instant::now() < deadline,
                "notification never came: {:?}",
                self.notifications
            );
            if let Some(msg) = self.pump(Duration::from_millis(50)) {
                self.stash.push(msg);
            }
        }
    }

    /// initialize + initialized, then waits for the model to be ready.
    pub fn initialize(&mut self, options: Value, utf8: bool) -> Value {
        let encodings = if utf8 {
            json!(["utf-8", "utf-16"])
        } else {
            json!(["utf-16"])
        };
        let r = self.request(
            "initialize",
            json!({
                "processId": null,
                "rootUri": null,
                "capabilities": {
                    "general": {"positionEncodings": encodings},
                    "window": {"workDoneProgress": true},
                },
                "initializationOptions": options,
            }),
        );
        self.notify("initialized", json!({}));
        r
    }

    pub fn wait_ready(&mut self) {
        self.wait_notification(|n| {
            n["method"] == "window/logMessage" && n["params"]["message"].as_str().unwrap_or("").starts_with("ready")
        });
    }

    pub fn open(&mut self, uri: &str, language: &str, text: &str) {
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}),
        );
    }

    pub fn shutdown_and_exit(mut self) {
        let r = self.request("shutdown", json!(null));
        assert_eq!(r["result"], Value::Null, "{r}");
        self.notify("exit", json!(null));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn position_of(text: &str, marker: &str) -> (String, Value) {
    let at = text.find(marker).unwrap();
    let clean = text.replace(marker, "");
    let line = text[..at].matches('\n').count();
    let col: usize = text[text[..at].rfind('\n').map_or(0, |i| i + 1)..at]
        .encode_utf16()
        .count();
    (clean, json!({"line": line, "character": col}))
}

/// The protocol's position of a byte offset: lines end at `\n`, `\r\n` or a lone `\r`.
fn lsp_position(text: &str, off: usize) -> Value {
    let b = text.as_bytes();
    let (mut line, mut start) = (0, 0);
    for i in 0..off {
        if b[i] == b'\n' || (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n')) {
            line += 1;
            start = i + 1;
        }
    }
    json!({"line": line, "character": text[start..off].encode_utf16().count()})
}

fn inline(client: &mut Client, uri: &str, pos: &Value) -> Value {
    client.request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": 2}}),
    )
}

fn apply(text: &str, item: &Value) -> String {
    // Ranges here are single-line; characters are UTF-16 units on ASCII text.
    let line_offset = |line: usize| -> usize { text.split_inclusive('\n').take(line).map(str::len).sum() };
    let r = &item["range"];
    let s =
        line_offset(r["start"]["line"].as_u64().unwrap() as usize) + r["start"]["character"].as_u64().unwrap() as usize;
    let e = line_offset(r["end"]["line"].as_u64().unwrap() as usize) + r["end"]["character"].as_u64().unwrap() as usize;
    format!("{}{}{}", &text[..s], item["insertText"].as_str().unwrap(), &text[e..])
}

#[test]
fn python_is_even_completes_to_the_modulo_test() {
    let mut c = Client::start(&[]);
    let init = c.initialize(json!({}), false);
    let caps = &init["result"]["capabilities"];
    expect_test::expect![[r#"
        {
          "completionProvider": {
            "resolveProvider": false,
            "triggerCharacters": [
              ".",
              "("
            ]
          },
          "inlineCompletionProvider": true,
          "positionEncoding": "utf-16",
          "textDocumentSync": {
            "change": 2,
            "openClose": true,
            "save": true
          }
        }"#]]
    .assert_eq(&serde_json::to_string_pretty(caps).unwrap());
    assert_eq!(init["result"]["serverInfo"]["name"], "tessera");
    c.wait_ready();
    // Loading was reported with $/progress begin and end.
    let progress: Vec<&str> = c
        .notifications
        .iter()
        .filter(|n| n["method"] == "$/progress")
        .filter_map(|n| n["params"]["value"]["kind"].as_str())
        .collect();
    assert_eq!(progress, ["begin", "end"], "{:?}", c.notifications);
    assert!(
        c.server_requests
            .iter()
            .any(|r| r["method"] == "window/workDoneProgress/create")
    );

    let (text, pos) = position_of("def is_even(n):\n    return $0", "$0");
    c.open("file:///tmp/even.py", "python", &text);
    let r = inline(&mut c, "file:///tmp/even.py", &pos);
    let items = r["result"]["items"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(!items.is_empty(), "{r}");
    assert_eq!(items[0]["insertText"].as_str().unwrap().trim_end(), "n % 2 == 0", "{r}");
    assert_eq!(items[0]["range"]["start"], pos);
    assert_eq!(items[0]["filterText"], items[0]["insertText"]);

    // The popup flavour carries a textEdit over the same place.
    let r = c.request(
        "textDocument/completion",
        json!({"textDocument": {"uri": "file:///tmp/even.py"}, "position": pos}),
    );
    let items = r["result"]["items"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(
        items[0]["textEdit"]["newText"]
            .as_str()
            .unwrap()
            .starts_with("n % 2 == 0"),
        "{r}"
    );
    assert_eq!(r["result"]["isIncomplete"], true);
    c.shutdown_and_exit();
}

#[test]
fn rust_and_multi_line_completions_parse() {
    let mut c = Client::start(&[]);
    // A generous deadline: on a loaded machine a 5 s cut would leave only fragments.
    let init = c.initialize(json!({"beams": 3, "deadlineMs": 60000}), true);
    assert_eq!(init["result"]["capabilities"]["positionEncoding"], "utf-8");
    c.wait_ready();
    // Single-line Rust inside an expression.
    let src = "fn area(width: f64, height: f64) -> f64 {\n    width * $0\n}\n";
    let (text, pos) = position_of(src, "$0");
    c.open("file:///tmp/area.rs", "rust", &text);
    let r = inline(&mut c, "file:///tmp/area.rs", &pos);
    let items = r["result"]["items"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(!items.is_empty(), "{r}");
    let done = apply(&text, &items[0]);
    assert!(done.contains("height"), "{done}");
    assert_parses("rust", &done);

    // Multi-line: an empty function body. Among the alternatives is a body of several
    // lines, and every alternative leaves the file parsing.
    let src = "use std::collections::HashMap;\n\n/// Counts how often each word occurs in `text`.\n\
               fn word_counts(text: &str) -> HashMap<String, usize> {\n    $0\n}\n\n\
               fn main() {\n    let counts = word_counts(\"a b a\");\n    println!(\"{:?}\", counts);\n}\n";
    let (text, pos) = position_of(src, "$0");
    c.open("file:///tmp/wc.rs", "rust", &text);
    let r = inline(&mut c, "file:///tmp/wc.rs", &pos);
    let items = r["result"]["items"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(!items.is_empty(), "{r}");
    assert!(
        items
            .iter()
            .any(|i| i["insertText"].as_str().unwrap().lines().count() >= 3),
        "a multi-line body among {r}"
    );
    for item in items {
        assert_parses("rust", &apply(&text, item));
    }
    c.shutdown_and_exit();
}

/// The completed file parses without errors (checked by the server's own grammar through
/// `tessera complete`-independent means: tree-sitter via the lsp crate).
fn assert_parses(language: &str, text: &str) {
    let lang = tessera_lsp::language::Language::detect(language, "");
    let errors = tessera_lsp::syntax::parse_errors(lang, text).unwrap();
    assert_eq!(errors, 0, "does not parse:\n{text}");
}

#[test]
fn a_burst_of_edits_leaves_the_document_identical_to_the_clients() {
    let mut c = Client::start(&[]);
    c.initialize(json!({}), false);
    let uri = "file:///tmp/burst.txt";
    let mut text = String::from("start\n");
    c.open(uri, "plaintext", &text);
    // 1,000 edits: inserts, deletions and replacements over non-ASCII text, in UTF-16.
    let mut seed = 7u64;
    let mut rnd = |n: usize| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n.max(1)
    };
    let pieces = ["a", "é", "😀", "\n", "fn x() {}\n", "ü\r\n", "  "];
    for version in 2..1002 {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        // Positions inside a `\r\n` do not exist in the protocol: editors never send them.
        let inside_crlf = |i: usize| i > 0 && i < chars.len() && chars[i - 1].1 == '\r' && chars[i].1 == '\n';
        let mut a = rnd(chars.len() + 1);
        if inside_crlf(a) {
            a += 1;
        }
        let mut b = (a + rnd(3)).min(chars.len());
        if inside_crlf(b) {
            b += 1;
        }
        let byte = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
        let (sa, sb) = (byte(a), byte(b));
        let pos = |off: usize| lsp_position(&text, off);
        let insert = pieces[rnd(pieces.len())];
        let change = json!({"range": {"start": pos(sa), "end": pos(sb)}, "text": insert});
        text.replace_range(sa..sb, insert);
        c.notify(
            "textDocument/didChange",
            json!({"textDocument": {"uri": uri, "version": version}, "contentChanges": [change]}),
        );
    }
    let r = c.request("tessera/documentText", json!({"uri": uri}));
    assert_eq!(r["result"]["text"].as_str(), Some(text.as_str()), "{r}");
    assert_eq!(r["result"]["version"], 1001);
    c.shutdown_and_exit();
}

#[test]
fn cancellation_and_newer_requests_stop_the_decode() {
    let mut c = Client::start(&[]);
    // A long multi-line decode so that cancellation lands mid-way.
    c.initialize(json!({"maxTokensMultiLine": 400, "deadlineMs": 60000}), false);
    c.wait_ready();
    let src = "class Matrix:\n    def __init__(self, rows):\n        $0\n";
    let (text, pos) = position_of(src, "$0");
    let uri = "file:///tmp/m.py";
    c.open(uri, "python", &text);
    let params = json!({"textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": 1}});
    let id = c.send_request("textDocument/inlineCompletion", params.clone());
    std::thread::sleep(Duration::from_millis(300));
    c.notify("$/cancelRequest", json!({"id": id}));
    let t = Instant::now();
    let r = c.response(id);
    assert_eq!(r["error"]["code"], -32800, "{r}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "cancellation took {:?}",
        t.elapsed()
    );
    // A newer request for the document supersedes the running one.
    let first = c.send_request("textDocument/inlineCompletion", params.clone());
    std::thread::sleep(Duration::from_millis(300));
    let (text2, pos2) = position_of("def is_even(n):\n    return $0", "$0");
    c.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": text2}]}),
    );
    let second = c.send_request(
        "textDocument/inlineCompletion",
        json!({"textDocument": {"uri": uri}, "position": pos2, "context": {"triggerKind": 2}}),
    );
    let r1 = c.response(first);
    assert_eq!(r1["error"]["code"], -32800, "{r1}");
    let r2 = c.response(second);
    let items = r2["result"]["items"].as_array().unwrap_or_else(|| panic!("{r2}"));
    assert!(items[0]["insertText"].as_str().unwrap().starts_with("n % 2"), "{r2}");
    c.shutdown_and_exit();
}

#[test]
fn bad_input_gets_errors_or_empty_results_and_the_server_keeps_serving() {
    let mut c = Client::start(&[]);
    c.initialize(json!({}), false);
    c.wait_ready();
    // Malformed JSON: a parse error response, then business as usual.
    c.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 99, \"method\": ");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = c.stash.iter().position(|r| r["error"]["code"] == -32700) {
            c.stash.remove(i);
            break;
        }
        assert!(Instant::now() < deadline, "no parse error response");
        if let Some(m) = c.pump(Duration::from_millis(50)) {
            c.stash.push(m);
        }
    }
    // Unknown method.
    let r = c.request("tessera/noSuchMethod", json!({}));
    assert_eq!(r["error"]["code"], -32601, "{r}");
    // Completion for a document that is not open.
    let r = inline(&mut c, "file:///tmp/nope.py", &json!({"line": 0, "character": 0}));
    assert_eq!(r["result"]["items"], json!([]), "{r}");
    // Position past the end.
    c.open("file:///tmp/short.py", "python", "x = 1\n");
    let r = inline(&mut c, "file:///tmp/short.py", &json!({"line": 40, "character": 3}));
    assert_eq!(r["result"]["items"], json!([]), "{r}");
    // Wrong params shape.
    let r = c.request("textDocument/inlineCompletion", json!({"textDocument": 5}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    // A 20 MB document: opened, edited, completed (plain-text context, no tree).
    let big = "x = 1\n".repeat(3_500_000);
    c.open("file:///tmp/big.py", "python", &big);
    c.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": "file:///tmp/big.py", "version": 2},
               "contentChanges": [{"range": {"start": {"line": 3, "character": 0}, "end": {"line": 3, "character": 0}}, "text": "y = "}]}),
    );
    let lines = big.matches('\n').count();
    let r = inline(&mut c, "file:///tmp/big.py", &json!({"line": lines, "character": 0}));
    assert!(r["result"]["items"].is_array(), "{r}");
    // Still serving.
    let (text, pos) = position_of("def is_even(n):\n    return $0", "$0");
    c.open("file:///tmp/even.py", "python", &text);
    let r = inline(&mut c, "file:///tmp/even.py", &pos);
    assert!(!r["result"]["items"].as_array().unwrap().is_empty(), "{r}");
    c.shutdown_and_exit();
}

#[test]
fn requests_before_initialize_and_after_shutdown_are_refused() {
    let mut c = Client::start(&[]);
    let r = inline(&mut c, "file:///tmp/a.py", &json!({"line": 0, "character": 0}));
    assert_eq!(r["error"]["code"], -32002, "{r}");
    c.initialize(json!({}), false);
    let r = c.request("shutdown", json!(null));
    assert_eq!(r["result"], Value::Null);
    let r = inline(&mut c, "file:///tmp/a.py", &json!({"line": 0, "character": 0}));
    assert_eq!(r["error"]["code"], -32600, "{r}");
    c.notify("exit", json!(null));
}

#[test]
fn configuration_changes_apply_and_non_ascii_positions_round_trip() {
    let mut c = Client::start(&[]);
    c.initialize(json!({"tessera": {"alternatives": 1}}), false);
    c.wait_ready();
    // UTF-16 positions after astral and accented characters on the cursor's line.
    let src = "def greet(name):\n    banner = \"héllo 😀 \" + $0\n";
    let (text, pos) = position_of(src, "$0");
    assert_eq!(pos["character"], 27, "the 😀 counts two UTF-16 units");
    c.open("file:///tmp/greet.py", "python", &text);
    let r = inline(&mut c, "file:///tmp/greet.py", &pos);
    let items = r["result"]["items"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(items.len(), 1, "alternatives: 1 from initializationOptions: {r}");
    assert_eq!(items[0]["range"]["start"], pos);

    // Python switched off: empty answers; switched back on: completions again.
    c.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"tessera": {"enabledLanguages": ["rust"]}}}),
    );
    let (text, pos) = position_of("def is_even(n):\n    return $0", "$0");
    c.open("file:///tmp/even.py", "python", &text);
    let r = inline(&mut c, "file:///tmp/even.py", &pos);
    assert_eq!(r["result"]["items"], json!([]), "{r}");
    c.notify(
        "workspace/didChangeConfiguration",
        json!({"settings": {"enabledLanguages": null, "alternatives": 2}}),
    );
    // A bad value is reported and ignored, the previous settings stay.
    c.notify("workspace/didChangeConfiguration", json!({"settings": {"beams": 0}}));
    c.wait_notification(|n| {
        n["method"] == "window/logMessage"
            && n["params"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("ignored configuration")
    });
    let r = inline(&mut c, "file:///tmp/even.py", &pos);
    let items = r["result"]["items"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(
        items[0]["insertText"].as_str().unwrap().starts_with("n % 2 == 0"),
        "{r}"
    );
    c.shutdown_and_exit();
}
