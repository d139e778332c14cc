#!/usr/bin/env bash
# Runs the Neovim plugin's tests: a headless Neovim 0.12 (unpacked by scripts/fetch-models)
# driving the plugin against the real `tessera lsp` and the fetched default model.
# Env: TESSERA_BIN (default target/release/tessera), TESSERA_HOME, NVIM (another nvim).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
tools="${TESSERA_HOME:-$HOME/.cache/tessera}/tools/neovim-0.11.4rc1"
nvim="${NVIM:-$tools/bin/nvim}"
if [ ! -x "$nvim" ]; then
  echo "editors/nvim/tests: $nvim is missing: run scripts/fetch-models --only neovim" >&2
  exit 1
fi
if [ -z "${NVIM:-}" ]; then
  export VIMRUNTIME="$tools/share/nvim/runtime"
fi
export TESSERA_BIN="${TESSERA_BIN:-$repo/target/release/tessera}"
exec "$nvim" --headless -u NONE -i NONE -n -l "$here/run.lua"
