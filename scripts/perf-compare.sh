#!/usr/bin/env bash
# plumb against llama.cpp on the real model, same machine, same run, same
# thread count: builds llama-bench from the llama.cpp source that ships in the
# PyPI source package `llama-cpp-python` (into .cache/llamacpp, ignored), then
# runs llama-bench and `plumb bench` back to back, and the memory-bandwidth
# probe. Output goes to stdout; docs/PERFORMANCE.md quotes it.
#
#   scripts/perf-compare.sh [THREADS] [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-2}"
REPS="${2:-5}"
MODEL=models/gemma-3-270m-q4_k_m.gguf
CACHE=.cache/llamacpp
scripts/fetch-model.sh >/dev/null

if [[ ! -x "$CACHE/llama-bench" || ! -x "$CACHE/build/bin/llama-completion" ]]; then
    mkdir -p "$CACHE/sdist"
    python3 -m pip download --disable-pip-version-check --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$CACHE/sdist"
    tar xzf "$CACHE"/sdist/llama_cpp_python-*.tar.gz -C "$CACHE"
    SRC=$(ls -d "$CACHE"/llama_cpp_python-*/vendor/llama.cpp)
    # cmake from PyPI where the machine has none.
    command -v cmake >/dev/null || python3 -m pip install --disable-pip-version-check --quiet cmake
    # Native, but without AMX: a VM whose CPU lists AMX may not let a process
    # use it (llama-bench then dies of an illegal instruction).
    cmake -S "$SRC" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
        -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
        -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
    # llama-completion too, for scripts/completion.py.
    cmake --build "$CACHE/build" -j "$(nproc)" --target llama-bench llama-completion >/dev/null
    cp "$CACHE/build/bin/llama-bench" "$CACHE/llama-bench"
fi
cargo build --release --quiet
cc -O3 -march=native -fopenmp scripts/membw.c -o "$CACHE/membw"

echo "== machine"; lscpu | grep -E "Model name|^CPU\(s\)" ; echo
echo "== memory bandwidth"; for t in 1 "$THREADS"; do "$CACHE/membw" "$t"; done; echo
echo "== llama.cpp (llama-bench, $(ls -d "$CACHE"/llama_cpp_python-* | xargs basename))"
"$CACHE/llama-bench" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r "$REPS" -o md
echo
for prec in fast exact; do
    echo "== plumb ($prec)"
    target/release/plumb bench "$MODEL" -t "$THREADS" -p 512 -n 128 -r "$REPS" --precision "$prec"
    echo
done
echo "== plumb (fast, stats-only tracing of every stage)"
target/release/plumb bench "$MODEL" -t "$THREADS" -p 512 -n 128 -r "$REPS" --precision fast --trace stats
echo "== plumb (exact, stats-only tracing of every stage)"
target/release/plumb bench "$MODEL" -t "$THREADS" -p 512 -n 128 -r "$REPS" --precision exact --trace stats
echo
echo "== stats-only tracing against none, interleaved (scripts/trace_overhead.py)"
for prec in fast exact; do
    scripts/trace_overhead.py "$MODEL" --threads "$THREADS" --precision "$prec"
done
