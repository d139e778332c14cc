//! Tessera's language server. It keeps the client's documents (strictly in arrival order),
//! parses them with tree-sitter, builds the context around the cursor within a token budget,
//! asks a backend (the local engine's beam search, or an OpenAI-compatible server) for
//! completions, and post-processes them for the document. This is the only crate that
//! knows LSP types; `tessera-models` knows nothing of editors.

pub mod backend;
pub mod cache;
pub mod complete;
pub mod context;
pub mod document;
pub mod error;
pub mod index;
pub mod language;
pub mod oneshot;
pub mod postprocess;
pub mod server;
pub mod settings;
pub mod syntax;
pub mod template;

pub use error::{Error, Result};
