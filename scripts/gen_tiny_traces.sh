#!/usr/bin/env bash
# Writes transformers' traces of the tiny test models (full tensors) with
# reference/hf_trace.py, on the golden token sequence, and a stats-only
# transformers trace of the real Gemma 3 270M for one prompt.
# Needs torch, transformers, safetensors, numpy, gguf: PYTHON=/path/to/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1
TOKENS=1,17,255,3,400,511,42,7,99,128,300,5
for arch in llama qwen2 qwen3 gemma3 gemma2 llama3 olmo2 phi3 phi3long mixtral qwen2moe qwen3moe qwen3yarn; do
    "$PY" reference/hf_trace.py "testdata/tiny/$arch/hf" --tokens "$TOKENS" -o "testdata/tiny/$arch/hf_trace.safetensors"
done
if [[ -f models/gemma-3-270m-q4_k_m.gguf ]]; then
    "$PY" reference/hf_trace.py models/gemma-3-270m-q4_k_m.gguf -p "The capital of France is" --stats-only \
        -o testdata/gemma3-270m/hf_trace_stats.safetensors
    # A long prompt (2151 tokens; the file has no final newline, so the text
    # is exactly what plumb reads with -f): statistics of every position,
    # tensors of the last. transformers' eager attention holds about 22 GiB
    # here.
    "$PY" reference/hf_trace.py models/gemma-3-270m-q4_k_m.gguf -p "$(cat testdata/gemma3-270m/long_prompt.txt)" \
        --positions last -o testdata/gemma3-270m/hf_trace_long.safetensors
fi
