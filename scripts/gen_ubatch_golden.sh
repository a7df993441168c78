#!/usr/bin/env bash
# llama.cpp's answers on the long test prompt computed whole and in ubatches
# (llama.cpp's physical batch, -ub), for crates/cli/tests/ubatch.rs: the
# greedy continuation of 32 tokens and the prompt's last logits' 16 largest,
# in the reference configuration plumb's fast precision mirrors (no
# repacking, F32 KV cache, flash attention off). Writes
# testdata/gemma3-270m/llamacpp_ubatch.json. Needs llama-cpp-python built
# from its 0.3.36 source package in .venv-ref (scripts/conformance.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv-ref/bin/python}"
MODEL=models/gemma-3-270m-q4_k_m.gguf
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet
IDS=$(./target/release/plumb run "$MODEL" -f testdata/gemma3-270m/long_prompt.txt -n 0 --json 2>/dev/null |
    "$PY" -c 'import json, sys; print(",".join(map(str, json.load(sys.stdin)["prompt_ids"])))')
"$PY" - "$MODEL" "$IDS" <<'PYEOF'
import json, subprocess, sys
import llama_cpp
model, ids = sys.argv[1], sys.argv[2]
cases = {}
for ub in [None, 512, 100, 7]:
    cmd = [sys.executable, "reference/llamacpp_trace.py", model, "--tokens", ids, "--no-repack", "--generate", "32"]
    out = subprocess.run(cmd + (["--ubatch", str(ub)] if ub else []), capture_output=True, text=True, check=True).stdout
    d = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    cases["whole" if ub is None else str(ub)] = {"generated": d["generated"], "top_logits": d["top_logits"]}
doc = {"about": "llama.cpp's greedy continuation of testdata/gemma3-270m/long_prompt.txt (plumb's tokenization) "
                "and the prompt's last logits' 16 largest [id, value], the prompt computed whole and in ubatches "
                "of 512, 100 and 7 (reference configuration: --no-repack, F32 KV cache, flash attention off); "
                "made by scripts/gen_ubatch_golden.sh",
       "llama_cpp_python": llama_cpp.__version__, "tokens": [int(x) for x in ids.split(",")], "cases": cases}
with open("testdata/gemma3-270m/llamacpp_ubatch.json", "w") as f:
    json.dump(doc, f)
print({k: v["top_logits"][0] for k, v in cases.items()})
PYEOF
