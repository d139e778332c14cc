//! The LSP server over stdio. Text sync notifications are applied to the documents by
//! [`Router`] in the order they arrive (tower-lsp runs handlers concurrently, so applying
//! them in handlers could reorder edits); completion requests are also taken there, so a
//! newer request for a document, or `$/cancelRequest`, can stop the running decode at its
//! next step. Everything else goes to the `LanguageServer` implementation.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::Service;
use tower_lsp_server::jsonrpc::{self, Id, Request, Response};
use tower_lsp_server::ls_types::*;
use tower_lsp_server::{Client, ExitedError, LanguageServer, LspService, Server};

use crate::complete::{self, Completer};
use crate::context::OpenFile;
use crate::document::{Document, PositionEncoding};
use crate::index::{IndexLimits, WorkspaceIndex};
use crate::language::Language;
use crate::settings::Settings;
use crate::{Error, Result};

/// Other open documents given as context, at most, and their size bound.
const MAX_OTHER_FILES: usize = 8;
const MAX_OTHER_BYTES: usize = 256 << 10;

/// State shared by the router and the handlers.
pub struct State {
    client: Client,
    documents: Mutex<HashMap<String, Document>>,
    /// LSP language ids by uri (settings filter on them).
    language_ids: Mutex<HashMap<String, String>>,
    encoding: Mutex<PositionEncoding>,
    settings: RwLock<Settings>,
    completer: RwLock<Option<Arc<Completer>>>,
    /// Woken when a completer is installed (or loading failed).
    ready: Notify,
    loading: AtomicBool,
    root: Mutex<Option<PathBuf>>,
    index: Arc<WorkspaceIndex>,
    initialized: AtomicBool,
    shut_down: AtomicBool,
    /// The running completion of each document, and of each request id.
    inflight: Mutex<HashMap<String, Arc<AtomicBool>>>,
    requests: Mutex<HashMap<Id, Arc<AtomicBool>>>,
    /// Monotonic count of decoded-and-answered requests (for logs and tests).
    answered: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn encoding(&self) -> PositionEncoding {
        *lock(&self.encoding)
    }

    fn settings(&self) -> Settings {
        self.settings.read().map(|s| s.clone()).unwrap_or_default()
    }

    async fn log(&self, typ: MessageType, message: String) {
        match typ {
            MessageType::ERROR => tracing::error!("{message}"),
            MessageType::WARNING => tracing::warn!("{message}"),
            _ => tracing::info!("{message}"),
        }
        self.client.log_message(typ, message).await;
    }

    /// Applies a text sync notification. Runs in arrival order, before any handler.
    fn apply_text_sync(&self, method: &str, params: Option<&Value>) {
        let Some(params) = params else { return };
        let enc = self.encoding();
        match method {
            "textDocument/didOpen" => {
                let Ok(p) = serde_json::from_value::<DidOpenTextDocumentParams>(params.clone()) else {
                    tracing::warn!("didOpen with malformed params ignored");
                    return;
                };
                let uri = p.text_document.uri.to_string();
                let language = Language::detect(&p.text_document.language_id, &uri);
                lock(&self.language_ids).insert(uri.clone(), p.text_document.language_id.clone());
                let doc = Document::new(uri.clone(), language, p.text_document.version, p.text_document.text);
                lock(&self.documents).insert(uri, doc);
            }
            "textDocument/didChange" => {
                let Ok(p) = serde_json::from_value::<DidChangeTextDocumentParams>(params.clone()) else {
                    tracing::warn!("didChange with malformed params ignored");
                    return;
                };
                let uri = p.text_document.uri.to_string();
                let mut docs = lock(&self.documents);
                let Some(doc) = docs.get_mut(&uri) else {
                    tracing::warn!("didChange for {uri}, which is not open: ignored");
                    return;
                };
                for change in &p.content_changes {
                    doc.apply_change(change.range, &change.text, enc);
                }
                doc.version = p.text_document.version;
            }
            "textDocument/didClose" => {
                let Ok(p) = serde_json::from_value::<DidCloseTextDocumentParams>(params.clone()) else {
                    return;
                };
                let uri = p.text_document.uri.to_string();
                lock(&self.documents).remove(&uri);
                lock(&self.language_ids).remove(&uri);
                if let Some(flag) = lock(&self.inflight).remove(&uri) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// The document text of `uri` (for tests and `workspace/executeCommand`-like probes).
    pub fn document_text(&self, uri: &str) -> Option<String> {
        lock(&self.documents).get(uri).map(|d| d.text().to_owned())
    }

    /// Path shown to the model: relative to the workspace root when inside it.
    fn display_path(&self, uri: &str) -> String {
        let path = uri_to_path(uri);
        if let (Some(path), Some(root)) = (&path, lock(&self.root).as_ref())
            && let Ok(rel) = path.strip_prefix(root)
        {
            return rel.to_string_lossy().into_owned();
        }
        path.map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| uri.rsplit('/').next().unwrap_or(uri).to_owned())
    }

    fn repo_name(&self) -> String {
        lock(&self.root)
            .as_ref()
            .and_then(|r| r.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "workspace".into())
    }

    /// Loads the backend named by the settings in the background, reporting `$/progress`.
    async fn load_backend(self: &Arc<Self>, settings: Settings, progress: bool) {
        if self.loading.swap(true, Ordering::SeqCst) {
            return;
        }
        let what = match settings.backend {
            crate::settings::BackendKind::Local => format!("model {}", settings.model),
            crate::settings::BackendKind::Openai => {
                format!("server {}", settings.endpoint.clone().unwrap_or_default())
            }
        };
        let ongoing = if progress {
            // Unique per load: a client may still hold the token of an earlier load.
            static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let token = NumberOrString::String(format!("tessera/load/{n}"));
            match self.client.create_work_done_progress(token.clone()).await {
                Ok(()) => Some(
                    self.client
                        .progress(token, "Tessera")
                        .with_message(format!("loading {what}"))
                        .begin()
                        .await,
                ),
                Err(_) => None,
            }
        } else {
            None
        };
        let s = settings.clone();
        let built = tokio::task::spawn_blocking(move || s.build_backend()).await;
        let result = match built {
            Ok(r) => r,
            Err(e) => Err(Error::InvalidInput(format!("loading panicked: {e}"))),
        };
        match result {
            Ok(backend) => {
                let completer = Completer::new(backend, settings.family(), self.index.clone());
                let msg = format!(
                    "ready: {} (template {})",
                    completer.backend().describe(),
                    completer.family().name()
                );
                if let Ok(mut c) = self.completer.write() {
                    *c = Some(Arc::new(completer));
                }
                if let Some(p) = ongoing {
                    p.finish_with_message(msg.clone()).await;
                }
                self.log(MessageType::INFO, msg).await;
            }
            Err(e) => {
                let msg = format!("cannot load {what}: {e}");
                self.log(MessageType::ERROR, msg.clone()).await;
                self.client
                    .show_message(MessageType::ERROR, format!("Tessera: {msg}"))
                    .await;
                if let Some(p) = ongoing {
                    p.finish_with_message(msg).await;
                }
            }
        }
        self.loading.store(false, Ordering::SeqCst);
        self.ready.notify_waiters();
    }

    fn completer(&self) -> Option<Arc<Completer>> {
        self.completer.read().ok().and_then(|c| c.clone())
    }

    /// The completer, waiting up to `wait` for one that is loading.
    async fn wait_for_completer(&self, wait: Duration) -> Option<Arc<Completer>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(c) = self.completer() {
                return Some(c);
            }
            if !self.loading.load(Ordering::SeqCst) && !self.initialized.load(Ordering::SeqCst) {
                return None;
            }
            let notified = self.ready.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.completer();
            }
            if !self.loading.load(Ordering::SeqCst) {
                return self.completer();
            }
        }
    }

    fn index_workspace(self: &Arc<Self>) {
        let Some(root) = lock(&self.root).clone() else { return };
        let max_files = self.settings().index_max_files;
        if max_files == 0 {
            return;
        }
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || {
            let stats = index.index_root(&root);
            tracing::info!(
                "indexed {}: {} files, {} symbols, {} skipped",
                root.display(),
                stats.files,
                stats.symbols,
                stats.skipped
            );
        });
    }
}

/// Local file path of a `file://` uri.
pub fn uri_to_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let raw = rest.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 2 < raw.len()
            && let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2]))
        {
            bytes.push(h * 16 + l);
            i += 3;
            continue;
        }
        bytes.push(raw[i]);
        i += 1;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The `LanguageServer` half: lifecycle, settings, capabilities.
pub struct Backend {
    state: Arc<State>,
}

impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> jsonrpc::Result<InitializeResult> {
        let st = &self.state;
        let offered = params
            .capabilities
            .general
            .as_ref()
            .and_then(|g| g.position_encodings.clone())
            .unwrap_or_default();
        let encoding = if offered.contains(&PositionEncodingKind::UTF8) {
            PositionEncoding::Utf8
        } else {
            PositionEncoding::Utf16
        };
        *lock(&st.encoding) = encoding;
        let root = params
            .workspace_folders
            .as_ref()
            .and_then(|f| f.first())
            .and_then(|f| uri_to_path(f.uri.as_str()));
        #[allow(deprecated)]
        let root = root.or_else(|| params.root_uri.as_ref().and_then(|u| uri_to_path(u.as_str())));
        *lock(&st.root) = root;
        if let Some(opts) = &params.initialization_options {
            let current = st.settings();
            match current.merged(opts) {
                Ok(s) => {
                    if let Ok(mut w) = st.settings.write() {
                        *w = s;
                    }
                }
                Err(e) => {
                    return Err(jsonrpc::Error::invalid_params(format!("initializationOptions: {e}")));
                }
            }
        }
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                position_encoding: Some(match encoding {
                    PositionEncoding::Utf8 => PositionEncodingKind::UTF8,
                    PositionEncoding::Utf16 => PositionEncodingKind::UTF16,
                }),
                text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
                    open_close: Some(true),
                    change: Some(TextDocumentSyncKind::INCREMENTAL),
                    save: Some(TextDocumentSyncSaveOptions::Supported(true)),
                    ..TextDocumentSyncOptions::default()
                })),
                completion_provider: Some(CompletionOptions {
                    resolve_provider: Some(false),
                    trigger_characters: Some(vec![".".into(), "(".into()]),
                    ..CompletionOptions::default()
                }),
                inline_completion_provider: Some(OneOf::Left(true)),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "tessera".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
            offset_encoding: None,
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        let st = self.state.clone();
        st.initialized.store(true, Ordering::SeqCst);
        let settings = st.settings();
        st.index_workspace();
        let st2 = st.clone();
        tokio::spawn(async move { st2.load_backend(settings, true).await });
    }

    async fn shutdown(&self) -> jsonrpc::Result<()> {
        let st = &self.state;
        st.shut_down.store(true, Ordering::SeqCst);
        for flag in lock(&st.inflight).values() {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn did_change_configuration(&self, params: DidChangeConfigurationParams) {
        let st = self.state.clone();
        let current = st.settings();
        match current.merged(&params.settings) {
            Ok(new) => {
                let reload = current.backend_changed(&new);
                if let Ok(mut w) = st.settings.write() {
                    *w = new.clone();
                }
                if let Some(c) = st.completer() {
                    c.clear_cache();
                }
                if reload {
                    if let Ok(mut c) = st.completer.write() {
                        *c = None;
                    }
                    tokio::spawn(async move { st.load_backend(new, true).await });
                }
            }
            Err(e) => {
                st.log(MessageType::ERROR, format!("ignored configuration: {e}")).await;
            }
        }
    }

    // Text sync is applied by the router, in order; these only feed the index.
    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        self.reindex(params.text_document.uri.as_str());
    }

    async fn did_change(&self, _: DidChangeTextDocumentParams) {}

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        self.reindex(params.text_document.uri.as_str());
    }

    async fn did_close(&self, _: DidCloseTextDocumentParams) {}
}

impl Backend {
    fn reindex(&self, uri: &str) {
        let st = &self.state;
        let path = st.display_path(uri);
        let mut docs = lock(&st.documents);
        if let Some(doc) = docs.get_mut(uri) {
            let language = doc.language;
            let text = doc.text().to_owned();
            if let Some(tree) = doc.tree().cloned() {
                drop(docs);
                st.index.update_file(&path, language, &text, &tree);
            }
        }
    }
}

/// Wraps the tower-lsp service: applies text sync in arrival order and runs completion
/// requests itself (with their ids, for cancellation and supersession).
pub struct Router {
    inner: LspService<Backend>,
    state: Arc<State>,
}

type RouterFuture = Pin<Box<dyn Future<Output = std::result::Result<Option<Response>, ExitedError>> + Send>>;

impl Service<Request> for Router {
    type Response = Option<Response>;
    type Error = ExitedError;
    type Future = RouterFuture;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let st = self.state.clone();
        let method = req.method().to_owned();
        if method == "initialized" {
            // Set here, in arrival order: the notifications right behind it must see it.
            st.initialized.store(true, Ordering::SeqCst);
        }
        let live = st.initialized.load(Ordering::SeqCst) && !st.shut_down.load(Ordering::SeqCst);
        match method.as_str() {
            "textDocument/didOpen" | "textDocument/didChange" | "textDocument/didClose" if live => {
                st.apply_text_sync(&method, req.params());
            }
            "$/cancelRequest" => {
                if let Some(id) = req.params().and_then(|p| p.get("id")).cloned()
                    && let Ok(id) = serde_json::from_value::<Id>(id)
                    && let Some(flag) = lock(&st.requests).get(&id)
                {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            MALFORMED => {
                let params = req.params().cloned().unwrap_or(Value::Null);
                let code = params.get("code").and_then(|c| c.as_i64()).unwrap_or(-32700);
                let message = params.get("message").and_then(|m| m.as_str()).unwrap_or("Parse error");
                tracing::warn!("malformed message: {message}");
                let error = jsonrpc::Error {
                    code: jsonrpc::ErrorCode::from(code),
                    message: message.to_owned().into(),
                    data: None,
                };
                let id = req.id().cloned().unwrap_or(Id::Null);
                return Box::pin(std::future::ready(Ok(Some(Response::from_error(id, error)))));
            }
            "tessera/documentText" if live => {
                // The server's copy of a document, for clients and tests to check sync.
                if let Some(id) = req.id().cloned() {
                    let uri = req
                        .params()
                        .and_then(|p| p.get("uri"))
                        .and_then(|u| u.as_str())
                        .unwrap_or("");
                    let body = match lock(&st.documents).get(uri) {
                        Some(d) => Ok(json!({ "text": d.text(), "version": d.version })),
                        None => Err(jsonrpc::Error::invalid_params(
                            Error::DocumentNotOpen(uri.into()).to_string(),
                        )),
                    };
                    return Box::pin(std::future::ready(Ok(Some(Response::from_parts(id, body)))));
                }
            }
            "textDocument/inlineCompletion" | "textDocument/completion" if !live => {
                // tower-lsp does not know inlineCompletion: refuse it as it refuses the others.
                if let Some(id) = req.id().cloned() {
                    let error = if st.shut_down.load(Ordering::SeqCst) {
                        jsonrpc::Error::invalid_request()
                    } else {
                        jsonrpc::Error {
                            code: jsonrpc::ErrorCode::ServerError(-32002),
                            message: "Server not initialized".into(),
                            data: None,
                        }
                    };
                    return Box::pin(std::future::ready(Ok(Some(Response::from_error(id, error)))));
                }
            }
            "textDocument/inlineCompletion" | "textDocument/completion" => {
                if let Some(id) = req.id().cloned() {
                    return Box::pin(completion_request(st, method, id, req.params().cloned()));
                }
            }
            _ => {}
        }
        Box::pin(self.inner.call(req))
    }
}

/// Marks a request's flag on drop, so an abandoned future stops its decode.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn completion_request(
    st: Arc<State>,
    method: String,
    id: Id,
    params: Option<Value>,
) -> impl Future<Output = std::result::Result<Option<Response>, ExitedError>> + Send {
    let flag = Arc::new(AtomicBool::new(false));
    let uri = params
        .as_ref()
        .and_then(|p| p.pointer("/textDocument/uri"))
        .and_then(|u| u.as_str())
        .map(str::to_owned);
    lock(&st.requests).insert(id.clone(), flag.clone());
    if let Some(uri) = &uri {
        // A newer request for the same document supersedes the running one.
        if let Some(previous) = lock(&st.inflight).insert(uri.clone(), flag.clone()) {
            previous.store(true, Ordering::Relaxed);
        }
    }
    async move {
        let guard = CancelOnDrop(flag.clone());
        let result = answer_completion(&st, &method, params, flag.clone()).await;
        lock(&st.requests).remove(&id);
        if let Some(uri) = &uri {
            let mut inflight = lock(&st.inflight);
            if inflight.get(uri).is_some_and(|f| Arc::ptr_eq(f, &flag)) {
                inflight.remove(uri);
            }
        }
        std::mem::forget(guard);
        Ok(Some(Response::from_parts(id, result)))
    }
}

fn internal(message: String) -> jsonrpc::Error {
    jsonrpc::Error {
        message: message.into(),
        ..jsonrpc::Error::internal_error()
    }
}

fn empty_result(method: &str) -> Value {
    if method == "textDocument/inlineCompletion" {
        json!({ "items": [] })
    } else {
        json!({ "isIncomplete": true, "items": [] })
    }
}

async fn answer_completion(
    st: &Arc<State>,
    method: &str,
    params: Option<Value>,
    flag: Arc<AtomicBool>,
) -> jsonrpc::Result<Value> {
    let params = params.ok_or_else(|| jsonrpc::Error::invalid_params("missing params"))?;
    let position: TextDocumentPositionParams =
        serde_json::from_value(params.clone()).map_err(|e| jsonrpc::Error::invalid_params(format!("{method}: {e}")))?;
    let uri = position.text_document.uri.to_string();
    let settings = st.settings();
    let Some(completer) = st.wait_for_completer(Duration::from_millis(settings.deadline_ms)).await else {
        return Ok(empty_result(method));
    };
    if flag.load(Ordering::Relaxed) {
        return Err(jsonrpc::Error::request_cancelled());
    }
    let enc = st.encoding();
    let taken = take_snapshot(st, &uri, position.position, &settings);
    let (snapshot, offset, others) = match taken {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(empty_result(method)),
        Err(e) => {
            st.log(MessageType::WARNING, format!("{method}: {e}")).await;
            return Ok(empty_result(method));
        }
    };
    let path = st.display_path(&uri);
    let completion_settings = settings.completion(&st.repo_name());
    let task_flag = flag.clone();
    let snap = snapshot.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        completer.complete(
            &completion_settings,
            &complete::Request {
                snapshot: &snap,
                offset,
                path: &path,
                others: &others,
                cancel: task_flag,
            },
        )
    })
    .await
    .map_err(|e| internal(format!("completion panicked: {e}")))?;
    let outcome = match outcome {
        Ok(o) => o,
        Err(Error::Cancelled) => return Err(jsonrpc::Error::request_cancelled()),
        Err(e) => {
            st.log(MessageType::ERROR, format!("{method} {uri}: {e}")).await;
            return Ok(empty_result(method));
        }
    };
    if flag.load(Ordering::Relaxed) {
        return Err(jsonrpc::Error::request_cancelled());
    }
    st.answered.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        "{method} {uri}: {} items ({:?}, cache {}, {:.0} ms)",
        outcome.items.len(),
        outcome.mode,
        outcome.from_cache,
        outcome.timings.total_ms
    );
    let pos = |off: usize| crate::document::position_in(&snapshot.text, off, enc);
    if method == "textDocument/inlineCompletion" {
        let items: Vec<Value> = outcome
            .items
            .iter()
            .map(|it| {
                json!({
                    "insertText": it.text,
                    "filterText": it.text,
                    "range": Range::new(pos(it.start), pos(it.end)),
                })
            })
            .collect();
        Ok(json!({ "items": items }))
    } else {
        // Popup items replace the word before the cursor, so clients filter on it.
        let text = &snapshot.text;
        let word_start = text[..offset]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_')
            .last()
            .map_or(offset, |(i, _)| i);
        let word = &text[word_start..offset];
        let items: Vec<CompletionItem> = outcome
            .items
            .iter()
            .enumerate()
            .map(|(rank, it)| {
                let new_text = format!("{word}{}", it.text);
                let label: String = new_text.lines().next().unwrap_or("").chars().take(80).collect();
                CompletionItem {
                    label,
                    kind: Some(CompletionItemKind::TEXT),
                    detail: Some("tessera".into()),
                    documentation: Some(Documentation::String(new_text.clone())),
                    sort_text: Some(format!("{rank:02}")),
                    filter_text: Some(new_text.clone()),
                    insert_text_format: Some(InsertTextFormat::PLAIN_TEXT),
                    text_edit: Some(CompletionTextEdit::Edit(TextEdit::new(
                        Range::new(pos(word_start), pos(it.end)),
                        new_text,
                    ))),
                    ..CompletionItem::default()
                }
            })
            .collect();
        serde_json::to_value(CompletionList {
            is_incomplete: true,
            items,
        })
        .map_err(|e| internal(e.to_string()))
    }
}

/// The document at the request, the cursor offset and the other open files as context;
/// `None` when the language is not enabled.
fn take_snapshot(
    st: &State,
    uri: &str,
    position: Position,
    settings: &Settings,
) -> Result<Option<(crate::document::Snapshot, usize, Vec<OpenFile>)>> {
    let enc = st.encoding();
    let mut docs = lock(&st.documents);
    let doc = docs
        .get_mut(uri)
        .ok_or_else(|| Error::DocumentNotOpen(uri.to_owned()))?;
    let language_id = lock(&st.language_ids).get(uri).cloned().unwrap_or_default();
    if !settings.language_enabled(doc.language, &language_id) {
        return Ok(None);
    }
    let offset = doc.offset_at(position, enc).ok_or_else(|| Error::PositionOutOfRange {
        uri: uri.to_owned(),
        line: position.line,
        character: position.character,
        lines: doc.line_count(),
    })?;
    let snapshot = doc.snapshot();
    let others: Vec<OpenFile> = docs
        .values()
        .filter(|d| d.uri != uri && d.text().len() <= MAX_OTHER_BYTES)
        .take(MAX_OTHER_FILES)
        .map(|d| OpenFile {
            path: st.display_path(&d.uri),
            language: d.language,
            text: d.text().to_owned(),
        })
        .collect();
    Ok(Some((snapshot, offset, others)))
}

/// Runs the server on stdin/stdout until `exit`.
pub async fn serve_stdio(settings: Settings) -> Result<()> {
    settings.validate()?;
    let (service, socket) = LspService::new(|client| Backend {
        state: Arc::new(State {
            client,
            documents: Mutex::new(HashMap::new()),
            language_ids: Mutex::new(HashMap::new()),
            encoding: Mutex::new(PositionEncoding::Utf16),
            settings: RwLock::new(settings.clone()),
            completer: RwLock::new(None),
            ready: Notify::new(),
            loading: AtomicBool::new(false),
            root: Mutex::new(None),
            index: Arc::new(WorkspaceIndex::new(IndexLimits {
                max_files: settings.index_max_files,
                ..IndexLimits::default()
            })),
            initialized: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            requests: Mutex::new(HashMap::new()),
            answered: std::sync::atomic::AtomicU64::new(0),
        }),
    });
    let state = service.inner().state.clone();
    let router = Router { inner: service, state };
    let (input, feed) = tokio::io::duplex(1 << 20);
    tokio::spawn(sanitize_frames(tokio::io::stdin(), feed));
    Server::new(input, tokio::io::stdout(), socket).serve(router).await;
    Ok(())
}

/// The method a malformed message is turned into; answered with a JSON-RPC error.
const MALFORMED: &str = "tessera/malformed";

/// Copies JSON-RPC frames from `input` to `output`, replacing each body that is not a
/// JSON-RPC message with a [`MALFORMED`] request carrying the error. tower-lsp stops
/// reading at the first body it cannot decode; this way a bad message costs one error
/// response, not the session.
pub async fn sanitize_frames(input: impl tokio::io::AsyncRead + Unpin, mut output: impl tokio::io::AsyncWrite + Unpin) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    /// Larger frames are refused without being read into memory.
    const MAX_FRAME: usize = 256 << 20;
    let mut reader = BufReader::new(input);
    loop {
        let mut length: Option<usize> = None;
        let mut saw_header = false;
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end();
            if line.is_empty() {
                if saw_header {
                    break;
                }
                continue;
            }
            saw_header = true;
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok();
            }
        }
        let replacement = |code: i64, message: String, id: Value| {
            json!({"jsonrpc": "2.0", "id": id, "method": MALFORMED, "params": {"code": code, "message": message}})
                .to_string()
                .into_bytes()
        };
        let body = match length {
            None => replacement(
                -32700,
                "a message without a valid Content-Length header".into(),
                Value::Null,
            ),
            Some(n) if n > MAX_FRAME => {
                // Skip it unread, chunk by chunk.
                let mut left = n as u64;
                let mut sink = tokio::io::sink();
                let mut limited = (&mut reader).take(left);
                match tokio::io::copy(&mut limited, &mut sink).await {
                    Ok(copied) => left -= copied,
                    Err(_) => return,
                }
                if left > 0 {
                    return;
                }
                replacement(
                    -32700,
                    format!("a message of {n} bytes is over the {MAX_FRAME}-byte limit"),
                    Value::Null,
                )
            }
            Some(n) => {
                let mut body = vec![0; n];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                match serde_json::from_slice::<Value>(&body) {
                    Err(e) => replacement(-32700, format!("Parse error: {e}"), Value::Null),
                    Ok(v) => {
                        let id = v.get("id").filter(|i| i.is_number() || i.is_string()).cloned();
                        let is_request = serde_json::from_value::<Request>(v.clone()).is_ok();
                        let is_response = serde_json::from_value::<Response>(v.clone()).is_ok();
                        if is_request || is_response {
                            body
                        } else {
                            replacement(
                                -32600,
                                "Invalid Request: not a JSON-RPC 2.0 request, notification or response".into(),
                                id.unwrap_or(Value::Null),
                            )
                        }
                    }
                }
            }
        };
        let header = format!("Content-Length: {}\r\n\r\n", body.len());
        if output.write_all(header.as_bytes()).await.is_err() || output.write_all(&body).await.is_err() {
            return;
        }
    }
}
