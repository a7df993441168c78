#!/usr/bin/env bash
# The test command: fetches the real model if missing, then runs every test.
# Tests that need the real model find it at models/gemma-3-270m-q4_k_m.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo test --workspace --release "$@"
