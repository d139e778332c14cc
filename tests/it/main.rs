//! End-to-end tests of the `tessera` binary: real processes, real files, real weights
//! (fetched by `scripts/fetch-models`), exit codes and messages as a user sees them.

mod complete;
mod generate;
mod lsp;
mod lsp_hostile;
mod transcribe;
mod transcribe_long;
mod vision;
