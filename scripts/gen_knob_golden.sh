#!/usr/bin/env bash
# llama.cpp's answers in one configuration of its knobs (without weight
# repacking unless --repack on), for the tests that hold plumb fast to it:
#   scripts/gen_knob_golden.sh kv16 --kv-type f16       (crates/cli/tests/kv_type.rs)
#   scripts/gen_knob_golden.sh fa --flash-attn on       (crates/cli/tests/flash_attn.rs)
#   ONLY=gemma2 scripts/gen_knob_golden.sh q8kv --kv-type q8_0 --flash-attn on   (tests/kv_quant.rs)
#   ONLY=gemma2 scripts/gen_knob_golden.sh q4kv --kv-type q4_0 --flash-attn on
#   ONLY=none scripts/gen_knob_golden.sh repack --repack on   (tests/repack.rs)
#   keys and values of different types (tests/kv_mixed.rs):
#   ONLY=gemma2 LONG=1 scripts/gen_knob_golden.sh q8kf16v --kv-type q8_0,f16 --flash-attn on
#   ONLY=gemma2 LONG=1 scripts/gen_knob_golden.sh q8kf16vnofa --kv-type q8_0,f16 --flash-attn off
#   ONLY=gemma2 LONG=1 scripts/gen_knob_golden.sh f16kq4v --kv-type f16,q4_0 --flash-attn on
#   ONLY="llama gemma2" LONG=1 scripts/gen_knob_golden.sh f16kf32v --kv-type f16,f32
#       (then delete testdata/tiny/llama/llamacpp_trace_f16kf32v*: see tests/kv_mixed.rs)
#   ONLY=none scripts/gen_knob_golden.sh default --kv-type f16 --flash-attn on --repack on --swa-full off
#       (llama.cpp's defaults, llama-completion's window-sized SWA cache included:
#       tests/llama_cpp_defaults.rs; made on a CPU without AVX512-FP16), and on a
#       CPU with it (llama.cpp's f16 arithmetic then differs: --f16-math native):
#   ONLY=none scripts/gen_knob_golden.sh default_f16math --kv-type f16 --flash-attn on --repack on --swa-full off
# NAME names the files it writes:
#   testdata/tiny/llamacpp_greedy_NAME.json   every tiny model's greedy
#       continuation of 32 tokens from the golden token sequence;
#   testdata/tiny/<arch>/llamacpp_trace_NAME.safetensors   full traces of
#       that sequence for llama, gemma2, phi3long and qwen3moe, and with
#       LONG=1 also llamacpp_trace_NAME_80.safetensors, of an 80-token
#       sequence (llama.cpp's attention takes other paths from 64 rows);
#   testdata/gemma3-270m/llamacpp_NAME.json   the real model: a short
#       prompt and the 2151-token test prompt (whole, and in ubatches of
#       512), greedy 32 tokens and the prompt's last logits' 16 largest;
#   testdata/gemma3-270m/llamacpp_trace_NAME.safetensors   its first two
#       layers traced on the short prompt.
# Two threads, as the tests run plumb (llama.cpp's flash attention splits
# one token's work over 512 positions or more by thread).
# Needs llama-cpp-python built from its 0.3.36 source package in .venv-ref
# (scripts/conformance.sh installs it) and the real model
# (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
NAME=$1
shift
FLAGS=("$@")
PY="${PYTHON:-.venv-ref/bin/python}"
TOKENS=1,17,255,3,400,511,42,7,99,128,300,5
TOKENS_80=$(python3 -c 'import random; random.seed(3); print(",".join(str(random.randrange(1, 512)) for _ in range(80)))')
# ONLY="gemma2" limits the tiny models (a quantized cache needs heads of
# whole blocks of 32, and only gemma2's are).
# ONLY=none skips them (repacking touches none of their Q8_0 weights).
read -r -a ARCHS <<< "${ONLY:-llama qwen2 qwen3 gemma2 llama3 olmo2 phi3 phi3long mixtral qwen2moe qwen3moe qwen3yarn}"
if [[ "${ONLY:-}" == none ]]; then ARCHS=(); fi
TRACED=" llama gemma2 phi3long qwen3moe "
# Without repacking unless the flags ask for it (--repack on).
CONF="--no-repack ${FLAGS[*]}"
if [[ " ${FLAGS[*]} " == *" --repack on "* ]]; then CONF="${FLAGS[*]}"; fi
trace() {
    "$PY" reference/llamacpp_trace.py "$1" --tokens "$2" --no-repack -t 2 "${FLAGS[@]}" "${@:3}" 2>/dev/null
}
if (( ${#ARCHS[@]} )); then
{
    printf '{"llama_cpp_python": "%s", "tokens": [%s], "tokens_80": [%s], "configuration": "%s", "cases": {' \
        "$("$PY" -c 'import llama_cpp; print(llama_cpp.__version__)')" "$TOKENS" "$TOKENS_80" "$CONF"
    sep=""
    for arch in "${ARCHS[@]}"; do
        model="testdata/tiny/$arch/$arch-q8_0.gguf"
        save=()
        if [[ "$TRACED" == *" $arch "* ]]; then
            save=(-o "testdata/tiny/$arch/llamacpp_trace_$NAME.safetensors")
            if [[ "${LONG:-0}" == 1 ]]; then
                trace "$model" "$TOKENS_80" -o "testdata/tiny/$arch/llamacpp_trace_${NAME}_80.safetensors" >/dev/null
            fi
        fi
        out=$(trace "$model" "$TOKENS" --generate 32 "${save[@]}" | grep '^{')
        printf '%s"%s": %s' "$sep" "$arch" "$out"
        sep=", "
    done
    printf '}}\n'
} > "testdata/tiny/llamacpp_greedy_$NAME.json"
fi

MODEL=models/gemma-3-270m-q4_k_m.gguf
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
LONG_IDS=$(./target/release/plumb run "$MODEL" -f testdata/gemma3-270m/long_prompt.txt -n 0 --json 2>/dev/null |
    "$PY" -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["prompt_ids"])))')
SHORT_IDS=$(./target/release/plumb run "$MODEL" -p "The capital of France is" -n 0 --json 2>/dev/null |
    "$PY" -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["prompt_ids"])))')
"$PY" - "$MODEL" "$SHORT_IDS" "$LONG_IDS" "$NAME" "$CONF" "${FLAGS[@]}" <<'PYEOF'
import json, subprocess, sys
model, short, long_, name, conf = sys.argv[1:6]
flags = sys.argv[6:]
cases = {}
for case, ids, ub in [("short", short, None), ("long", long_, None), ("long_ubatch_512", long_, 512)]:
    cmd = [sys.executable, "reference/llamacpp_trace.py", model, "--tokens", ids, "--no-repack", "-t", "2",
           "--generate", "32"] + flags + (["--ubatch", str(ub)] if ub else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    d = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    cases[case] = {"tokens": d["tokens"], "ubatch": ub, "generated": d["generated"], "top_logits": d["top_logits"]}
# llama.cpp built natively on a CPU with AVX512-FP16 updates flash
# attention's f16 context in f16 arithmetic (plumb's --f16-math native).
cpu_flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
f16_math = "native" if "avx512_fp16" in cpu_flags else "widened"
doc = {"about": f"llama.cpp ({conf}, 2 threads, built natively on a CPU whose f16 math is {f16_math}) on the real model: greedy 32 tokens and the prompt's last "
                "logits' 16 largest [id, value], for 'The capital of France is' and "
                "testdata/gemma3-270m/long_prompt.txt (plumb's tokenization), whole and in ubatches of 512; "
                f"made by scripts/gen_knob_golden.sh {name} {' '.join(flags)}",
       "configuration": conf,
       "f16_math": f16_math,
       "cases": cases}
with open(f"testdata/gemma3-270m/llamacpp_{name}.json", "w") as f:
    json.dump(doc, f)
    f.write("\n")
print({k: v["generated"][:8] for k, v in cases.items()})
PYEOF
# The real model's first two layers on the short prompt, traced
# (testdata/gemma3-270m/llamacpp_trace_NAME.safetensors): a quantized
# cache's rotation shows in attn_context.
"$PY" reference/llamacpp_trace.py "$MODEL" --tokens "$SHORT_IDS" --no-repack -t 2 "${FLAGS[@]}" --layers 0-1 \
    --stages "v_proj,attn_context,layer_out" -o "testdata/gemma3-270m/llamacpp_trace_$NAME.safetensors" >/dev/null 2>&1
