#!/usr/bin/env bash
# Three-way conformance (plumb exact and fast, transformers, llama.cpp) on the
# real Gemma 3 270M and every tiny model; writes docs/CONFORMANCE.md, the
# README's worked example and testdata/gemma3-270m/llamacpp_greedy.json.
#
# Installs its references into .venv-ref/ (git-ignored) first: torch and
# transformers (the oracle), gguf, and llama-cpp-python built from its
# source package for this CPU (needs cmake and a C++ compiler). Not part of
# .ci/run: the installs are long. Rerun it whenever plumb's numerics change.
#
#   scripts/conformance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-ref
PIP=(--disable-pip-version-check --quiet)
if [[ ! -x "$VENV/bin/python" ]]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install "${PIP[@]}" torch==2.15.0 transformers==5.24.0 gguf==0.19.0 safetensors numpy \
    sentencepiece protobuf accelerate
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    if ! command -v cmake >/dev/null; then
        if [[ $(id -u) = 0 ]]; then apt-get install -y cmake build-essential; else sudo apt-get install -y cmake build-essential; fi
    fi
    "$VENV/bin/pip" install "${PIP[@]}" --no-binary llama-cpp-python llama-cpp-python==0.3.36
fi
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
"$VENV/bin/python" scripts/conformance.py
