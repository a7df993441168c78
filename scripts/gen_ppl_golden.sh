#!/usr/bin/env bash
# llama-perplexity's figures on the long test prompt, for crates/cli/tests/
# ppl.rs: builds llama-perplexity from the llama.cpp source that ships in the
# PyPI source package `llama-cpp-python` (the build scripts/perf-compare.sh
# makes, in the ignored .cache/llamacpp), runs it at two contexts in the
# configuration plumb fast reproduces (F32 KV cache, no flash attention, no
# weight repacking, one chunk per batch) and in llama.cpp's defaults, and
# writes testdata/gemma3-270m/llamacpp_ppl.json; then the KL-divergence
# golden, testdata/gemma3-270m/llamacpp_kld.json (below).
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
# ctx 1024 in the default configuration only: two ubatches of 512 a chunk
# (and two chunks a batch).
for ctx in 512 256 1024; do
    for config in reference default; do
        [[ $ctx == 1024 && $config == reference ]] && continue
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

# KL divergence, both directions of the base-file format: llama-perplexity's
# base of the first two 256-token chunks (its sha256: plumb fast writes the
# same bytes), and llama-perplexity's statistics against a base that plumb
# exact writes (its sha256 too, so the test knows it judges the same file).
cargo build --release --quiet -p plumb-cli
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
REF=(-c 256 -b 256 -nr -ctk f32 -ctv f32 -fa off -t "$(nproc)" --chunks 2)
"$PPL" -m "$MODEL" -f "$CORPUS" "${REF[@]}" --kl-divergence-base "$TMP/llama.base" >/dev/null 2>&1
target/release/plumb kld "$MODEL" -f "$CORPUS" --ctx 256 --chunks 2 --precision exact --save-base "$TMP/exact.base" --quiet >/dev/null
stats=$("$PPL" -m "$MODEL" "${REF[@]}" --kl-divergence --kl-divergence-base "$TMP/exact.base" 2>&1)
# llama-perplexity's three blocks of statistics → "label": value.
KLD_PARSE='
import json, re, sys
llama_sha, exact_sha, flags = sys.argv[1:4]
stats = {}
for line in sys.stdin:
    m = re.match(r"^(.+?)\s*:\s*(-?[0-9.]+)\s*%?\s*(?:±\s*(-?[0-9.]+))?", line.strip())
    if m and re.search(r"[A-Za-z]", m.group(1)) and not re.match(r"\d+\.\d+\.\d+\.\d+ ", line.strip()):
        stats[m.group(1).strip()] = [float(m.group(2))] + ([float(m.group(3))] if m.group(3) else [])
assert "Mean    KLD" in stats and "Same top p" in stats, stats
doc = {"source": "llama-perplexity from llama-cpp-python 0.3.36 (scripts/gen_ppl_golden.sh)",
       "flags": flags, "llama_base_sha256": llama_sha, "plumb_exact_base_sha256": exact_sha,
       "against_plumb_exact_base": stats}
json.dump(doc, open("testdata/gemma3-270m/llamacpp_kld.json", "w"), indent=1)
print("wrote testdata/gemma3-270m/llamacpp_kld.json")
'
python3 -c "$KLD_PARSE" "$(sha256sum "$TMP/llama.base" | cut -d' ' -f1)" "$(sha256sum "$TMP/exact.base" | cut -d' ' -f1)" \
    "${REF[*]}" <<<"$stats"
