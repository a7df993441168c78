#!/usr/bin/env bash
# plumb against llama.cpp at depth, on the real model, same machine, same
# run, same thread count: for each test (pp512, pp4096, pp16384; tg128 at
# depth 0, 4096 and 16384) llama-bench, plumb fast and plumb exact run one
# after another, each in its own process under /usr/bin/time, so that every
# figure has its peak resident memory beside it and the three engines of a
# row were measured within minutes of each other. Needs llama-bench in
# .cache/llamacpp (scripts/perf-compare.sh builds it). Output goes to
# stdout; docs/PERFORMANCE.md quotes it.
#
#   scripts/perf-depth.sh [THREADS] [REPS] [LONG_REPS]
#
# Nothing else may run meanwhile: with two cores, another job halves a
# decode figure (llama-bench's spinning threads suffer most).
#
# LONG_REPS (default 1) is the repetitions of the 16384-token tests: the
# exact precision takes minutes for each.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
REPS="${2:-2}"
LONG_REPS="${3:-1}"
MODEL=models/gemma-3-270m-q4_k_m.gguf
LLAMA=.cache/llamacpp/llama-bench
PLUMB=target/release/plumb
[[ -x "$LLAMA" ]] || { echo "no $LLAMA: run scripts/perf-compare.sh first" >&2; exit 2; }
scripts/fetch-model.sh >/dev/null
cargo build --release --quiet -p plumb-cli
RSS=$(mktemp)
trap 'rm -f "$RSS"' EXIT

# measure LABEL COMMAND…: the command's result rows, then its peak RSS.
measure() {
    local label="$1"
    shift
    /usr/bin/time -f "%M" -o "$RSS" "$@" </dev/null 2>/dev/null | grep -E '\| *(pp|tg)[0-9]' | sed "s/^/$label /"
    echo "$label peak RSS $(($(tail -1 "$RSS") / 1024)) MiB"
}

echo "== machine"
lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed -E 's/^(Flags:).*/\1 '"$(grep -o -w -E 'avx2|avx512f|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"'/'
echo
# TESTS (one test's flags per line) runs a subset, e.g. to redo a row that
# another job on the machine disturbed.
TESTS="${TESTS:-"-p 512 -n 0
-p 4096 -n 0
-p 16384 -n 0
-p 0 -n 128 -d 0
-p 0 -n 128 -d 4096
-p 0 -n 128 -d 16384"}"
PRECISIONS="${PRECISIONS:-fast exact}"
while IFS= read -r test; do
    reps="$REPS"
    [[ "$test" == *16384* ]] && reps="$LONG_REPS"
    echo "== $test -r $reps"
    # shellcheck disable=SC2086
    measure llama.cpp "$LLAMA" -m "$MODEL" -t "$THREADS" $test -r "$reps" -o md
    for prec in $PRECISIONS; do
        # shellcheck disable=SC2086
        measure "plumb-$prec" "$PLUMB" bench "$MODEL" -t "$THREADS" $test -r "$reps" --precision "$prec" --quiet
    done
    echo
done <<<"$TESTS"
