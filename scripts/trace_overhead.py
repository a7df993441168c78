#!/usr/bin/env python3
"""Stats-only tracing against no tracing, measured interleaved.

On a VM whose neighbours move throughput by several percent from one minute
to the next, two `plumb bench` runs made one after the other compare the
minute as much as the tracing. This alternates the two (off, stats, off,
stats, ...) and compares the medians of all their samples.

    scripts/trace_overhead.py MODEL [--threads N] [--rounds R] [--reps K] [--precision P]
"""
import argparse
import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(model: str, args: argparse.Namespace, trace: str) -> dict:
    cmd = [str(ROOT / "target/release/plumb"), "bench", model, "-t", str(args.threads), "-p", "512", "-n", "128",
           "-r", str(args.reps), "--precision", args.precision, "--trace", trace, "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {t["test"]: t["samples"] for t in json.loads(out)["tests"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precision", default="fast")
    args = ap.parse_args()
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for trace in ("off", "stats"):
            for test, s in bench(args.model, args, trace).items():
                samples.setdefault((test, trace), []).extend(s)
    for test in sorted({t for t, _ in samples}):
        off, on = statistics.median(samples[(test, "off")]), statistics.median(samples[(test, "stats")])
        n = len(samples[(test, "off")])
        print(f"{args.precision} {test}: off {off:.2f} t/s, stats {on:.2f} t/s, "
              f"change {100 * (on / off - 1):+.1f}% (medians of {n} samples each, {args.rounds} alternations)")


if __name__ == "__main__":
    main()
