#!/usr/bin/env bash
# llama.cpp's answers on the tiny llama in Q4_0 and IQ4_NL, with its weight
# repacking on and off, for crates/cli/tests/repack.rs:
#   testdata/tiny/llama/llama-{q4_0,iq4_nl}.gguf   made from llama-f32.gguf
#       by scripts/gen_repack_models.py;
#   testdata/tiny/llama/llamacpp_trace_repack_{q4_0,iq4_nl}.safetensors
#       every stage (but attn_context, see below) of the golden 12 tokens,
#       repacked, and ..._80.safetensors every product with a weight (and
#       the layers' outputs) of an 80-token sequence;
#   testdata/tiny/llamacpp_greedy_repack.json   each file's greedy 32
#       tokens after the 12, repacked and not.
# The rest of the reference configuration: F32 KV cache, flash attention
# off, the prompt as one batch, two threads. attn_context is left out: the
# llama-cpp-python built on the AVX512-FP16 Xeon these were made on hands
# the trace a kqv_out that is not the context (the trace of even the Q8_0
# llama differs there from the golden of an earlier build, and from v_proj
# at token 0, which a one-position attention must equal).
# Needs llama-cpp-python built from its 0.3.36 source package in .venv-ref
# (scripts/conformance.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv-ref/bin/python}"
TOKENS=1,17,255,3,400,511,42,7,99,128,300,5
TOKENS_80=$(python3 -c 'import random; random.seed(3); print(",".join(str(random.randrange(1, 512)) for _ in range(80)))')
PRODUCTS=q_proj,k_proj,v_proj,attn_out,ffn_gate,ffn_up,ffn_down,layer_out,logits
STAGES=embedding,attn_norm,q_proj,k_proj,v_proj,q_rope,k_rope,attn_scores,attn_probs,attn_out,attn_residual,ffn_norm,ffn_gate,ffn_up,ffn_mul,ffn_down,layer_out,final_norm,logits
"$PY" scripts/gen_repack_models.py
D=testdata/tiny/llama
run() { "$PY" reference/llamacpp_trace.py "$D/llama-$1.gguf" -t 2 --kv-type f32 --flash-attn off "${@:2}" 2>/dev/null; }
{
    printf '{"llama_cpp_python": "%s", "tokens": [%s], "tokens_80": [%s], "configuration": "--kv-type f32 --flash-attn off, --repack on and off", "cases": {' \
        "$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" "$TOKENS" "$TOKENS_80"
    sep=""
    for q in q4_0 iq4_nl; do
        run "$q" --tokens "$TOKENS_80" --repack on --stages "$PRODUCTS" -o "$D/llamacpp_trace_repack_${q}_80.safetensors" >/dev/null
        on=$(run "$q" --tokens "$TOKENS" --repack on --generate 32 --stages "$STAGES" -o "$D/llamacpp_trace_repack_$q.safetensors" | grep '^{')
        off=$(run "$q" --tokens "$TOKENS" --repack off --generate 32 | grep '^{')
        printf '%s"%s": {"repack_on": %s, "repack_off": %s}' "$sep" "$q" "$on" "$off"
        sep=", "
    done
    printf '}}\n'
} > testdata/tiny/llamacpp_greedy_repack.json
"$PY" -c 'import json; d = json.load(open("testdata/tiny/llamacpp_greedy_repack.json")); print({k: (v["repack_on"]["generated"][:8], v["repack_off"]["generated"][:8]) for k, v in d["cases"].items()})'
