//! Integration tests of the language server crate.

mod context;
mod openai;
