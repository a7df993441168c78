#!/usr/bin/env bash
# llama.cpp's own answers on every tiny test model's Q8_0 GGUF, for
# crates/cli/tests/tiny_llamacpp.rs: a full trace of the golden token
# sequence (testdata/tiny/<arch>/llamacpp_trace.safetensors) and its greedy
# continuation of 32 tokens (testdata/tiny/llamacpp_greedy.json), both in the
# reference configuration plumb's fast precision mirrors (no weight
# repacking, F32 KV cache, flash attention off, the prompt as one batch).
# Needs llama-cpp-python built from its 0.3.36 source package in .venv-ref
# (scripts/conformance.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv-ref/bin/python}"
TOKENS=1,17,255,3,400,511,42,7,99,128,300,5
ARCHS=(llama qwen2 qwen3 gemma3 gemma2 llama3 olmo2 phi3 phi3long mixtral qwen2moe qwen3moe qwen3yarn)
{
    printf '{"llama_cpp_python": "%s", "tokens": [%s], "configuration": "--no-repack (F32 KV, no flash attention)", "cases": {' \
        "$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" "$TOKENS"
    sep=""
    for arch in "${ARCHS[@]}"; do
        out=$("$PY" reference/llamacpp_trace.py "testdata/tiny/$arch/$arch-q8_0.gguf" --tokens "$TOKENS" --no-repack \
            --generate 32 -o "testdata/tiny/$arch/llamacpp_trace.safetensors" 2>/dev/null | grep '^{')
        printf '%s"%s": %s' "$sep" "$arch" "$out"
        sep=", "
    done
    printf '}}\n'
} > testdata/tiny/llamacpp_greedy.json
"$PY" -c 'import json; d = json.load(open("testdata/tiny/llamacpp_greedy.json")); print({k: v["generated"][:8] for k, v in d["cases"].items()})'
