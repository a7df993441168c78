#!/usr/bin/env bash
# llama-bench and `plumb bench` (fast) in interleaved rounds, on the real
# model: each round runs every test on both engines one after the other, so
# a slow minute on the VM touches both. Needs llama-bench in .cache/llamacpp
# (scripts/perf-compare.sh builds it). docs/PERFORMANCE.md quotes it.
#
#   scripts/perf-interleaved.sh [ROUNDS] [REPS]
#   TESTS="-p 4096 -n 0;-p 0 -n 128 -d 4096" (the default), tests split by ';'
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
REPS="${2:-2}"
MODEL=models/gemma-3-270m-q4_k_m.gguf
LLAMA=.cache/llamacpp/llama-bench
[[ -x "$LLAMA" ]] || { echo "no $LLAMA: run scripts/perf-compare.sh first" >&2; exit 2; }
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet -p plumb-cli
IFS=';' read -r -a tests <<<"${TESTS:--p 4096 -n 0;-p 0 -n 128 -d 4096}"
rate() { grep -E '\| *(pp|tg)[0-9]' | awk -F'|' '{print $(NF-1)}'; }
for round in $(seq "$ROUNDS"); do
    for test in "${tests[@]}"; do
        # shellcheck disable=SC2086
        echo "round $round llama.cpp $test: $("$LLAMA" -m "$MODEL" -t 2 $test -r "$REPS" -o md 2>/dev/null | rate)"
        # shellcheck disable=SC2086
        echo "round $round plumb-fast $test: $(target/release/plumb bench "$MODEL" -t 2 $test -r "$REPS" --precision fast --quiet | rate)"
    done
done
