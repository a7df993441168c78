#!/usr/bin/env python3
"""plumb against llama.cpp as people run it: `llama-completion --temp 0` with
nothing else (llama.cpp's own defaults: repacked weights, F16 KV cache, flash
attention auto, ubatch 512, its SWA cache cut to the window), 32 greedy tokens
from the six short prompts of docs/CONFORMANCE.md and the first ~600, ~1200
and all 2151 tokens of testdata/gemma3-270m/long_prompt.txt, against `plumb
run` with the flags given (by default none: plumb's defaults are llama.cpp's).

Both read the same text (the long prompts cut by plumb's tokenizer and
written back as text), two threads each; the continuations are compared as
text. `--llama-flags` adds flags to llama-completion (e.g. `--swa-full`).

    scripts/completion.py [--plumb-flags "..."] [--llama-flags "..."]

Needs llama-completion built from the llama-cpp-python 0.3.36 source
(scripts/perf-compare.sh builds it into .cache/llamacpp/build/bin) and the
real model (scripts/fetch-model.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUMB = ROOT / "target/release/plumb"
MODEL = ROOT / "models/gemma-3-270m-q4_k_m.gguf"
BIN = ROOT / ".cache/llamacpp/build/bin"
sys.path.insert(0, str(ROOT / "scripts"))
from conformance import PROMPTS  # noqa: E402

# plumb's defaults are llama.cpp's (f16 cache, flash attention, ubatch 512,
# repacked weights, the window-sized cache): no flag is needed.
MIRROR = ""


def plumb_json(args: list[str]) -> dict:
    r = subprocess.run([str(PLUMB), *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def n_tokens(text: str) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    n = len(plumb_json(["run", str(MODEL), "-f", f.name, "-n", "0"])["prompt_ids"])
    os.unlink(f.name)
    return n


def cut(text: str, n: int) -> str:
    """The longest prefix of text, ended at a space, of at most n tokens."""
    lo, hi = 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n_tokens(text[:mid]) <= n:
            lo = mid
        else:
            hi = mid
    return text[: text.rfind(" ", 0, lo) if " " in text[:lo] else lo]


def prompts() -> list[tuple[str, str]]:
    out = [(f"“{p[:28]}…”" if len(p) > 28 else f"“{p}”", p) for p in PROMPTS]
    text = (ROOT / "testdata/gemma3-270m/long_prompt.txt").read_text()
    for n in (600, 1200):
        part = cut(text, n)
        out.append((f"long_prompt.txt, first {n_tokens(part)} tokens", part))
    out.append((f"long_prompt.txt ({n_tokens(text)} tokens)", text))
    return out


def llama(prompt: str, flags: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
    env = dict(os.environ, LD_LIBRARY_PATH=str(BIN))
    cmd = [str(BIN / "llama-completion"), "-m", str(MODEL), "-f", f.name, "-n", "32", "--temp", "0", "-t", "2",
           "-no-cnv", "--no-display-prompt", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    os.unlink(f.name)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-800:])
    # llama-completion ends its output with an empty line of its own.
    return r.stdout[:-2] if r.stdout.endswith("\n\n") else r.stdout


def plumb(prompt: str, flags: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt)
    r = plumb_json(["run", str(MODEL), "-f", f.name, "-n", "32", "-t", "2", *flags])
    os.unlink(f.name)
    return r["text"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plumb-flags", default=MIRROR)
    ap.add_argument("--llama-flags", default="")
    args = ap.parse_args()
    same = 0
    cases = prompts()
    print(f"llama-completion --temp 0 {args.llama_flags}".rstrip() + "  vs  "
          + (f"plumb run {args.plumb_flags}" if args.plumb_flags else "plumb run (its defaults)"))
    for label, text in cases:
        a = llama(text, shlex.split(args.llama_flags))
        b = plumb(text, shlex.split(args.plumb_flags))
        ok = a == b
        same += ok
        print(f"{'same' if ok else 'DIFFER'}  {label}" + ("" if ok else f"\n  llama.cpp: {a!r}\n  plumb:     {b!r}"))
    print(f"{same}/{len(cases)} the same")
    return 0 if same == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())
