#!/usr/bin/env bash
# llama.cpp's answers on one small llama per ggml block format
# (scripts/gen_format_models.py → testdata/tiny/formats/llama256-<fmt>.gguf),
# for crates/cli/tests/formats.rs:
#   testdata/tiny/formats/llamacpp_trace_<fmt>.safetensors   every stage but
#       attn_context of the golden 12 tokens, no repacking (the
#       llama-cpp-python built natively on an AVX512-FP16 Xeon hands the
#       trace a kqv_out that is not the context: docs/CONFORMANCE.md);
#   testdata/tiny/formats/llamacpp_formats.json   each file's greedy 32
#       tokens and the prompt's last logits' 16 largest, with repacking off
#       and, for the formats llama.cpp repacks on x86, on (Q2_K only where
#       the CPU making them has AVX-512, as llama.cpp repacks it there).
# The rest of the reference configuration: F32 KV cache, flash attention
# off, the prompt as one batch, two threads.
# Needs llama-cpp-python built from its 0.3.36 source package in .venv-ref
# (scripts/conformance.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv-ref/bin/python}"
TOKENS=1,17,255,3,400,511,42,7,99,128,300,5
STAGES=embedding,attn_norm,q_proj,k_proj,v_proj,q_rope,k_rope,attn_scores,attn_probs,attn_out,attn_residual,ffn_norm,ffn_gate,ffn_up,ffn_mul,ffn_down,layer_out,final_norm,logits
FORMATS=(q4_0 q4_1 q5_0 q5_1 q8_0 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs)
D=testdata/tiny/formats
"$PY" scripts/gen_format_models.py
run() { "$PY" reference/llamacpp_trace.py "$D/llama256-$1.gguf" --tokens "$TOKENS" -t 2 --kv-type f32 --flash-attn off "${@:2}" 2>/dev/null | grep '^{'; }
{
    printf '{"llama_cpp_python": "%s", "tokens": [%s], "configuration": "--kv-type f32 --flash-attn off", "cases": {' \
        "$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" "$TOKENS"
    sep=""
    for f in "${FORMATS[@]}"; do
        off=$(run "$f" --repack off --generate 32 --stages "$STAGES" -o "$D/llamacpp_trace_$f.safetensors")
        printf '%s"%s": {"repack_off": %s' "$sep" "$f" "$off"
        # Q2_K is repacked on CPUs with AVX-512 only.
        case $f in
            q4_0 | q4_k | iq4_nl) printf ', "repack_on": %s' "$(run "$f" --repack on --generate 32)" ;;
            q2_k) if grep -qw avx512f /proc/cpuinfo; then printf ', "repack_on": %s' "$(run "$f" --repack on --generate 32)"; fi ;;
        esac
        printf '}'
        sep=", "
    done
    printf '}}\n'
} > "$D/llamacpp_formats.json"
"$PY" -c 'import json; d = json.load(open("testdata/tiny/formats/llamacpp_formats.json")); print({k: v["repack_off"]["generated"][:6] for k, v in d["cases"].items()})'
