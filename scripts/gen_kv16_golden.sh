#!/usr/bin/env bash
# llama.cpp's answers with an f16 KV cache (-ctk f16 -ctv f16, flash
# attention off, no repacking), for crates/cli/tests/kv_type.rs:
#   testdata/tiny/llamacpp_greedy_kv16.json   every tiny model's greedy
#       continuation of 32 tokens from the golden token sequence;
#   testdata/tiny/<arch>/llamacpp_trace_kv16.safetensors   full traces of
#       that sequence for llama, gemma2, phi3long and qwen3moe;
#   testdata/gemma3-270m/llamacpp_kv16.json   the real model: a short
#       prompt and the 2151-token test prompt (whole, and in ubatches of
#       512), greedy 32 tokens and the prompt's last logits' 16 largest.
# Needs llama-cpp-python built from its 0.3.36 source package in .venv-ref
# (scripts/conformance.sh installs it) and the real model
# (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv-ref/bin/python}"
TOKENS=1,17,255,3,400,511,42,7,99,128,300,5
ARCHS=(llama qwen2 qwen3 gemma2 llama3 olmo2 phi3 phi3long mixtral qwen2moe qwen3moe qwen3yarn)
TRACED=" llama gemma2 phi3long qwen3moe "
{
    printf '{"llama_cpp_python": "%s", "tokens": [%s], "configuration": "--no-repack --kv-type f16 (flash attention off)", "cases": {' \
        "$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" "$TOKENS"
    sep=""
    for arch in "${ARCHS[@]}"; do
        save=()
        [[ "$TRACED" == *" $arch "* ]] && save=(-o "testdata/tiny/$arch/llamacpp_trace_kv16.safetensors")
        out=$("$PY" reference/llamacpp_trace.py "testdata/tiny/$arch/$arch-q8_0.gguf" --tokens "$TOKENS" --no-repack \
            --kv-type f16 --generate 32 "${save[@]}" 2>/dev/null | grep '^{')
        printf '%s"%s": %s' "$sep" "$arch" "$out"
        sep=", "
    done
    printf '}}\n'
} > testdata/tiny/llamacpp_greedy_kv16.json

MODEL=models/gemma-3-270m-q4_k_m.gguf
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
LONG=$(./target/release/plumb run "$MODEL" -f testdata/gemma3-270m/long_prompt.txt -n 0 --json 2>/dev/null |
    "$PY" -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["prompt_ids"])))')
SHORT=$(./target/release/plumb run "$MODEL" -p "The capital of France is" -n 0 --json 2>/dev/null |
    "$PY" -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["prompt_ids"])))')
"$PY" - "$MODEL" "$SHORT" "$LONG" <<'PYEOF'
import json, subprocess, sys
model, short, long_ = sys.argv[1:4]
cases = {}
for name, ids, ub in [("short", short, None), ("long", long_, None), ("long_ubatch_512", long_, 512)]:
    cmd = [sys.executable, "reference/llamacpp_trace.py", model, "--tokens", ids, "--no-repack", "--kv-type", "f16",
           "--generate", "32"] + (["--ubatch", str(ub)] if ub else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    d = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    cases[name] = {"tokens": d["tokens"], "ubatch": ub, "generated": d["generated"], "top_logits": d["top_logits"]}
doc = {"about": "llama.cpp with an f16 KV cache (--no-repack --kv-type f16, flash attention off) on the real model: "
                "greedy 32 tokens and the prompt's last logits' 16 largest [id, value], for 'The capital of France is' "
                "and testdata/gemma3-270m/long_prompt.txt (plumb's tokenization), whole and in ubatches of 512; "
                "made by scripts/gen_kv16_golden.sh",
       "cases": cases}
with open("testdata/gemma3-270m/llamacpp_kv16.json", "w") as f:
    json.dump(doc, f)
    f.write("\n")
print({k: v["generated"][:8] for k, v in cases.items()})
PYEOF
