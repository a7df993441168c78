#!/usr/bin/env bash
# The test command: fetches the real model if missing, then runs every test:
# the workspace's, then the Python package's (pytest).
# Tests that need the real model find it at models/gemma-3-270m-q4_k_m.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo test --workspace --release "$@"
# The Python package (python/), built from this workspace, and its tests;
# with cargo test arguments (a filter) only those run.
if [[ $# -eq 0 ]]; then
    if [[ ! -x .venv-py/bin/python ]]; then python3 -m venv .venv-py; fi
    .venv-py/bin/pip install --disable-pip-version-check --quiet pytest ./python
    .venv-py/bin/python -m pytest -q python/tests
fi
