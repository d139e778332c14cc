//! The OpenAI-compatible backend against a small local HTTP/1.1 server that speaks the
//! `/v1/completions` API and records what it is sent: the request (path, headers, JSON body),
//! choices turned into candidates, HTTP and protocol errors as `Error::Backend` naming the
//! endpoint, the deadline, cancellation, and the whole completion pipeline (Qwen FIM prompt,
//! post-processing, results cache) over it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_lsp::Error;
use tessera_lsp::backend::{Backend, GenerateRequest, OpenAiBackend};
use tessera_lsp::complete::{Completer, CompletionSettings, Request};
use tessera_lsp::document::Document;
use tessera_lsp::index::{IndexLimits, WorkspaceIndex};
use tessera_lsp::language::Language;
use tessera_lsp::syntax::Mode;
use tessera_lsp::template::Family;

/// A request as the server received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

/// What the server answers.
struct Reply {
    status: u16,
    body: String,
    /// Wait this long before answering.
    delay: Duration,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body: body.to_string(),
        delay: Duration::ZERO,
    }
}

/// A server on 127.0.0.1 that answers every request with `answer` (one request per
/// connection) and records the requests.
struct Server {
    base: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    fn start(answer: impl Fn(&Received) -> Reply + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(request) = read_request(&stream) else { continue };
                log.lock().unwrap().push(request.clone());
                let reply = answer(&request);
                std::thread::sleep(reply.delay);
                let _ = write_reply(stream, &reply);
            }
        });
        Server { base, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

fn write_reply(mut stream: TcpStream, reply: &Reply) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        reply.status,
        if reply.status == 200 { "OK" } else { "Error" },
        reply.body.len(),
        reply.body
    )?;
    stream.flush()
}

fn request(prompt: &str, num_return: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        max_tokens: 16,
        num_beams: num_return,
        num_return,
        stop_predicate: Some(Arc::new(|s: &str| s.find('\n'))),
        cancel: Arc::new(AtomicBool::new(false)),
        timeout: Duration::from_secs(10),
    }
}

fn backend(endpoint: &str, api_key: Option<&str>) -> OpenAiBackend {
    OpenAiBackend::new(endpoint, "qwen2.5-coder", api_key.map(str::to_owned), None, Vec::new())
}

#[test]
fn requests_carry_model_prompt_limits_and_key_and_choices_become_candidates() {
    let server = Server::start(|_| {
        ok(json!({
            "choices": [
                {"text": "n % 2 == 0\n\ndef other():", "finish_reason": "stop"},
                {"text": "n & 1 == 0", "finish_reason": "length"},
                {"text": "not n % 2", "finish_reason": "stop", "logprobs": {"token_logprobs": [-0.5, -1.5]}},
            ],
            "usage": {"prompt_tokens": 12},
        }))
    });
    let out = backend(&server.base, Some("sk-test"))
        .generate(&request("def is_even(n):\n    return ", 3))
        .unwrap();
    let got: Vec<(&str, f32, bool)> = out
        .candidates
        .iter()
        .map(|c| (c.text.as_str(), c.score, c.finished))
        .collect();
    assert_eq!(
        got,
        [
            // Cut by the stop predicate: finished.
            ("n % 2 == 0", 0.0, true),
            // Cut by the server's token limit, ranked second.
            ("n & 1 == 0", -1.0, false),
            // Scored by its mean log-probability.
            ("not n % 2", -1.0, true),
        ]
    );
    assert_eq!(out.prompt_tokens, 12);

    let received = server.received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/completions"));
    assert_eq!(r.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["model"], "qwen2.5-coder");
    assert_eq!(body["prompt"], "def is_even(n):\n    return ");
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(body["n"], 3);
    assert_eq!(body["stream"], false);
}

#[test]
fn the_endpoint_may_name_the_v1_prefix_and_the_key_is_optional() {
    let server = Server::start(|_| ok(json!({"choices": [{"text": "x"}]})));
    for endpoint in [
        server.base.clone(),
        format!("{}/", server.base),
        format!("{}/v1", server.base),
        format!("{}/v1/", server.base),
    ] {
        let b = backend(&endpoint, None);
        let out = b.generate(&request("p", 1)).unwrap();
        assert_eq!(out.candidates[0].text, "x", "{endpoint}");
        assert_eq!(
            b.describe(),
            format!("openai:{}/v1/completions (qwen2.5-coder)", server.base)
        );
    }
    let received = server.received();
    assert_eq!(received.len(), 4);
    for r in &received {
        assert_eq!(r.path, "/v1/completions");
        assert_eq!(r.header("authorization"), None, "no key, no header");
        assert_eq!(r.json()["n"], 1);
    }
}

/// Runs one generation against a server giving `reply` and returns the error.
fn backend_error(reply: impl Fn() -> Reply + Send + 'static) -> (String, Error) {
    let server = Server::start(move |_| reply());
    let err = backend(&server.base, None)
        .generate(&request("p", 1))
        .expect_err("the generation fails");
    (format!("{}/v1/completions", server.base), err)
}

fn backend_message(url: &str, err: &Error) -> String {
    match err {
        Error::Backend { endpoint, message } => {
            assert_eq!(endpoint, url);
            assert!(err.to_string().contains(url), "{err}");
            message.clone()
        }
        other => panic!("expected Error::Backend, got {other:?}"),
    }
}

#[test]
fn http_errors_and_malformed_answers_are_backend_errors_naming_the_endpoint() {
    let (url, err) = backend_error(|| Reply {
        status: 500,
        body: "model not loaded".into(),
        delay: Duration::ZERO,
    });
    let message = backend_message(&url, &err);
    assert!(
        message.contains("HTTP 500") && message.contains("model not loaded"),
        "{message}"
    );

    let (url, err) = backend_error(|| Reply {
        status: 200,
        body: "<html>bad gateway</html>".into(),
        delay: Duration::ZERO,
    });
    assert!(backend_message(&url, &err).contains("not JSON"), "{err}");

    let (url, err) = backend_error(|| ok(json!({"error": "overloaded"})));
    assert!(backend_message(&url, &err).contains("no `choices`"), "{err}");

    let (url, err) = backend_error(|| ok(json!({"choices": [{"index": 0}]})));
    assert!(backend_message(&url, &err).contains("choice 0 has no `text`"), "{err}");

    // Nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let err = backend(&base, None).generate(&request("p", 1)).unwrap_err();
    backend_message(&format!("{base}/v1/completions"), &err);
}

#[test]
fn a_server_slower_than_the_request_timeout_is_an_error_in_time() {
    let server = Server::start(|_| Reply {
        delay: Duration::from_secs(3),
        ..ok(json!({"choices": [{"text": "late"}]}))
    });
    let mut req = request("p", 1);
    req.timeout = Duration::from_millis(300);
    let t = Instant::now();
    let err = backend(&server.base, None).generate(&req).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
    backend_message(&format!("{}/v1/completions", server.base), &err);
}

#[test]
fn a_cancelled_request_is_not_sent() {
    let server = Server::start(|_| ok(json!({"choices": [{"text": "x"}]})));
    let b = backend(&server.base, None);
    let req = request("p", 1);
    req.cancel.store(true, Ordering::Relaxed);
    assert!(matches!(b.generate(&req), Err(Error::Cancelled)));

    // Through the pipeline too.
    let completer = Completer::new(
        Arc::new(b),
        Some(Family::QwenCoder),
        Arc::new(WorkspaceIndex::new(IndexLimits::default())),
    );
    let text = "def is_even(n):\n    return \n";
    let snapshot = Document::new("file:///w/is_even.py", Language::Python, 1, text.into()).snapshot();
    let cancel = Arc::new(AtomicBool::new(true));
    let result = completer.complete(
        &CompletionSettings::default(),
        &Request {
            snapshot: &snapshot,
            offset: text.find("return ").unwrap() + "return ".len(),
            path: "is_even.py",
            others: &[],
            cancel,
        },
    );
    assert!(matches!(result, Err(Error::Cancelled)), "{:?}", result.err());
    assert!(server.received().is_empty(), "nothing was sent");
}

#[test]
fn the_pipeline_over_openai_renders_a_fim_prompt_and_post_processes_the_choices() {
    let server = Server::start(|_| {
        ok(json!({
            "choices": [
                {"text": "n % 2 == 0\n\ndef other():", "finish_reason": "stop"},
                {"text": "n % 2 == 0\n", "finish_reason": "stop"},
                {"text": "   ", "finish_reason": "stop"},
            ],
        }))
    });
    let completer = Completer::new(
        Arc::new(backend(&server.base, Some("sk-test"))),
        Some(Family::QwenCoder),
        Arc::new(WorkspaceIndex::new(IndexLimits::default())),
    );
    assert_eq!(completer.family(), Family::QwenCoder);
    let text = "def is_even(n):\n    return \n";
    let offset = text.find("return ").unwrap() + "return ".len();
    let snapshot = Document::new("file:///w/is_even.py", Language::Python, 1, text.into()).snapshot();
    let settings = CompletionSettings {
        repo_name: "w".into(),
        ..CompletionSettings::default()
    };
    let complete = || {
        completer
            .complete(
                &settings,
                &Request {
                    snapshot: &snapshot,
                    offset,
                    path: "is_even.py",
                    others: &[],
                    cancel: Arc::new(AtomicBool::new(false)),
                },
            )
            .unwrap()
    };
    let outcome = complete();
    assert_eq!(outcome.mode, Mode::SingleLine);
    assert!(!outcome.from_cache);
    // The rest of the first line only, once; whitespace alone is no completion.
    let items: Vec<(&str, usize, usize)> = outcome
        .items
        .iter()
        .map(|i| (i.text.as_str(), i.start, i.end))
        .collect();
    assert_eq!(items, [("n % 2 == 0", offset, offset)]);
    assert_eq!(outcome.items[0].new_syntax_errors, Some(0));

    let received = server.received();
    assert_eq!(received.len(), 1);
    let body = received[0].json();
    // The space after `return` is healed: the prompt stops before it, the model writes it.
    assert_eq!(
        body["prompt"],
        "<|fim_prefix|>def is_even(n):\n    return<|fim_suffix|>\n<|fim_middle|>"
    );
    assert_eq!(body["max_tokens"], settings.max_tokens_single_line);
    assert_eq!(body["n"], settings.num_alternatives);
    assert_eq!(received[0].header("authorization"), Some("Bearer sk-test"));

    // The same request again comes from the cache, without asking the server.
    let again = complete();
    assert!(again.from_cache);
    assert_eq!(again.items[0].text, "n % 2 == 0");
    assert_eq!(server.received().len(), 1);
}

#[test]
fn a_single_line_cut_short_is_no_completion_and_a_multi_line_one_keeps_whole_lines() {
    let server = Server::start(|r| {
        let multi = r.json()["prompt"].as_str().is_some_and(|p| p.contains("def count"));
        ok(if multi {
            json!({"choices": [
                {"text": "    total = 0\n    for x in xs:\n        total +", "finish_reason": "length"},
            ]})
        } else {
            json!({"choices": [
                {"text": " n % 2 ==", "finish_reason": "length"},
                {"text": " n & 1 == 0\n", "finish_reason": "stop"},
            ]})
        })
    });
    let completer = Completer::new(
        Arc::new(backend(&server.base, None)),
        Some(Family::QwenCoder),
        Arc::new(WorkspaceIndex::new(IndexLimits::default())),
    );
    let run = |text: &str, offset: usize| {
        let snapshot = Document::new("file:///w/a.py", Language::Python, 1, text.into()).snapshot();
        completer
            .complete(
                &CompletionSettings::default(),
                &Request {
                    snapshot: &snapshot,
                    offset,
                    path: "a.py",
                    others: &[],
                    cancel: Arc::new(AtomicBool::new(false)),
                },
            )
            .unwrap()
    };
    let text = "def is_even(n):\n    return \n";
    let single = run(text, text.find("return ").unwrap() + "return ".len());
    assert_eq!(single.mode, Mode::SingleLine);
    let texts: Vec<&str> = single.items.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(texts, ["n & 1 == 0"], "the fragment `n % 2 ==` is dropped");

    let text = "def count(xs):\n";
    let multi = run(text, text.len());
    assert_eq!(multi.mode, Mode::MultiLine);
    let texts: Vec<&str> = multi.items.iter().map(|i| i.text.as_str()).collect();
    assert_eq!(
        texts,
        ["    total = 0\n    for x in xs:"],
        "the unfinished last line is dropped"
    );
}
