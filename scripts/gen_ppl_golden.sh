#!/usr/bin/env bash
# llama-perplexity's figures on the long test prompt, for crates/cli/tests/
# ppl.rs: builds llama-perplexity from the llama.cpp source that ships in the
# PyPI source package `llama-cpp-python` (the build scripts/perf-compare.sh
# makes, in the ignored .cache/llamacpp), runs it at two contexts in the
# configuration plumb fast reproduces (F32 KV cache, no flash attention, no
# weight repacking, one chunk per batch) and in llama.cpp's defaults, and
# writes testdata/gemma3-270m/llamacpp_ppl.json.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/gemma-3-270m-q4_k_m.gguf
CORPUS=testdata/gemma3-270m/long_prompt.txt
CACHE=.cache/llamacpp
scripts/fetch-model.sh >/dev/null
[[ -d "$CACHE/build" ]] || scripts/perf-compare.sh >/dev/null
cmake --build "$CACHE/build" -j "$(nproc)" --target llama-perplexity >/dev/null
PPL="$CACHE/build/bin/llama-perplexity"

# llama-perplexity's report → one JSON line: the running perplexity after
# each chunk and the final estimate.
PARSE='
import json, re, sys
ctx, config, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3]
text = sys.stdin.read()
running = [float(v) for v in re.findall(r"\[\d+\]([0-9.]+),", text)]
m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", text)
assert running and m, text[-2000:]
print(json.dumps({"ctx": ctx, "config": config, "flags": flags, "running_ppl": running,
                  "ppl": float(m.group(1)), "ppl_error": float(m.group(2))}))
'
runs=()
for ctx in 512 256; do
    for config in reference default; do
        flags=(-c "$ctx")
        [[ $config == reference ]] && flags+=(-b "$ctx" -nr -ctk f32 -ctv f32 -fa off)
        out=$("$PPL" -m "$MODEL" -f "$CORPUS" -t "$(nproc)" "${flags[@]}" 2>&1)
        runs+=("$(python3 -c "$PARSE" "$ctx" "$config" "${flags[*]}" <<<"$out")")
    done
done
printf '%s\n' "${runs[@]}" | python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
doc = {"source": "llama-perplexity from llama-cpp-python 0.3.36 (scripts/gen_ppl_golden.sh)",
       "model": "models/gemma-3-270m-q4_k_m.gguf", "corpus": "testdata/gemma3-270m/long_prompt.txt", "runs": runs}
json.dump(doc, open("testdata/gemma3-270m/llamacpp_ppl.json", "w"), indent=1)
print("wrote testdata/gemma3-270m/llamacpp_ppl.json")'
