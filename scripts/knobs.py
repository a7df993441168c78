#!/usr/bin/env python3
"""Which llama.cpp setting changes which greedy tokens, and whether plumb's
fast precision follows each: the real Gemma 3 270M, six short prompts and
three long ones (the first ~600 and ~1200 tokens of
testdata/gemma3-270m/long_prompt.txt, and all 2151), 32 greedy tokens each.

Configurations (llama.cpp through reference/llamacpp_trace.py, both on all
cores; plumb's flags in brackets):

* reference: no repacking, F32 KV cache, the prompt as one batch [--precision fast]
* ubatch 512: the prompt in ubatches of 512 (llama.cpp's default) [--ubatch 512]
* f16 KV: an f16 KV cache (llama.cpp's default type) [--kv-type f16]
* f16 KV + ubatch 512 [--kv-type f16 --ubatch 512]
* f16 KV + flash attention, whole and in ubatches of 512 [--kv-type f16
  --flash-attn on (--ubatch 512)]
* a q8_0 KV cache, flash attention, ubatch 512 [--kv-type q8_0 --flash-attn on
  --ubatch 512], and q8_0 keys or values only [--kv-type q8_0,f16 or f16,q8_0]
* repacked weights [--repack on], alone and with f16 KV and ubatch 512, with
  and without flash attention (the last is llama.cpp's default configuration
  but for its SWA cache, which llamacpp_trace.py keeps full-size;
  scripts/completion.py compares against llama-completion itself)

Prints a Markdown table, and writes it into docs/CONFORMANCE.md between
its knobs markers (scripts/conformance.py keeps that section): per
configuration and prompt, whether llama.cpp's tokens differ from its
reference configuration's (and from which token), and whether plumb's equal
llama.cpp's.

    .venv-ref/bin/python scripts/knobs.py      # needs llama-cpp-python built from source (scripts/conformance.sh)
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUMB = ROOT / "target/release/plumb"
MODEL = ROOT / "models/gemma-3-270m-q4_k_m.gguf"
N_GEN = 32
sys.path.insert(0, str(ROOT / "scripts"))
from conformance import PROMPTS as SHORT  # noqa: E402  (the six prompts of docs/CONFORMANCE.md)

# (name, llama.cpp flags, plumb flags or None)
CONFIGS = [
    ("reference", ["--no-repack"], []),
    ("ubatch 512", ["--no-repack", "--ubatch", "512"], ["--ubatch", "512"]),
    ("f16 KV", ["--no-repack", "--kv-type", "f16"], ["--kv-type", "f16"]),
    ("f16 KV + ubatch 512", ["--no-repack", "--kv-type", "f16", "--ubatch", "512"],
     ["--kv-type", "f16", "--ubatch", "512"]),
    ("f16 KV + flash attention", ["--no-repack", "--kv-type", "f16", "--flash-attn", "on"],
     ["--kv-type", "f16", "--flash-attn", "on"]),
    ("f16 KV + flash attention + ubatch 512", ["--no-repack", "--kv-type", "f16", "--flash-attn", "on", "--ubatch",
                                               "512"], ["--kv-type", "f16", "--flash-attn", "on", "--ubatch", "512"]),
    ("q8_0 KV + flash attention + ubatch 512", ["--no-repack", "--kv-type", "q8_0", "--flash-attn", "on",
                                                "--ubatch", "512"],
     ["--kv-type", "q8_0", "--flash-attn", "on", "--ubatch", "512"]),
    ("q8_0 keys, f16 values + flash attention + ubatch 512", ["--no-repack", "--kv-type", "q8_0,f16", "--flash-attn",
                                                              "on", "--ubatch", "512"],
     ["--kv-type", "q8_0,f16", "--flash-attn", "on", "--ubatch", "512"]),
    ("f16 keys, q8_0 values + flash attention + ubatch 512", ["--no-repack", "--kv-type", "f16,q8_0", "--flash-attn",
                                                              "on", "--ubatch", "512"],
     ["--kv-type", "f16,q8_0", "--flash-attn", "on", "--ubatch", "512"]),
    ("repacked", ["--repack", "on"], ["--repack", "on"]),
    ("repacked, f16 KV, ubatch 512", ["--repack", "on", "--kv-type", "f16", "--ubatch", "512"],
     ["--repack", "on", "--kv-type", "f16", "--ubatch", "512"]),
    ("repacked, f16 KV, flash attention, ubatch 512 (llama.cpp's defaults)",
     ["--repack", "on", "--kv-type", "f16", "--flash-attn", "on", "--ubatch", "512"],
     ["--repack", "on", "--kv-type", "f16", "--flash-attn", "on", "--ubatch", "512"]),
]


# plumb's defaults are llama.cpp's default configuration; each row names
# every setting, starting from the reference configuration, whose window
# cache is full-size as llama-cpp-python keeps it.
REFERENCE = {"--kv-type": "f32", "--flash-attn": "off", "--repack": "off", "--ubatch": "all", "--swa-full": "on"}


def explicit(flags: list[str]) -> list[str]:
    """The reference configuration with `flags` (pairs of flag and value) over it."""
    settings = dict(REFERENCE)
    settings.update(zip(flags[::2], flags[1::2]))
    return [x for pair in settings.items() for x in pair]


def first_json(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in:\n{out[-2000:]}")


def run(cmd: list[str]) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … exited {r.returncode}: {r.stderr[-500:]}")
    return first_json(r.stdout)


def prompts() -> list[tuple[str, list[int]]]:
    out = []
    for text in SHORT:
        ids = run([str(PLUMB), "run", str(MODEL), "-p", text, "-n", "0", "--json"])["prompt_ids"]
        out.append((f"“{text[:28]}…”" if len(text) > 28 else f"“{text}”", ids))
    long_ids = run([str(PLUMB), "run", str(MODEL), "-f", str(ROOT / "testdata/gemma3-270m/long_prompt.txt"), "-n", "0",
                    "--json"])["prompt_ids"]
    for n in (600, 1200, len(long_ids)):
        out.append((f"long_prompt.txt, first {n} tokens" if n < len(long_ids) else f"long_prompt.txt ({n} tokens)",
                    long_ids[:n]))
    return out


START, END = "<!-- knobs:start -->", "<!-- knobs:end -->"


def cpu() -> str:
    """The CPU's model name and whether it has AVX-512 (llama.cpp is built natively)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    return f"{name}, AVX-512 {'yes' if ' avx512f' in info else 'no'}"


def write_section(table: str) -> None:
    """docs/CONFORMANCE.md's knobs section: replaced between its markers, or appended."""
    doc = ROOT / "docs/CONFORMANCE.md"
    body = "\n".join([
        START,
        "## Which llama.cpp setting changes which tokens (real model)",
        "",
        "Made by `scripts/knobs.py`: llama.cpp (`reference/llamacpp_trace.py`, on all cores) in each",
        "configuration, and plumb's fast precision with the matching flags, 32 greedy tokens from six short",
        "prompts and three long ones. The third column is the knob's own effect on llama.cpp; the fourth,",
        "whether plumb reproduces it. Machine: " + cpu() + ".",
        "",
        table.rstrip(),
        END,
    ])
    s = doc.read_text()
    if START in s and END in s:
        s = s[: s.index(START)] + body + s[s.index(END) + len(END):]
    else:
        s = s.rstrip("\n") + "\n\n" + body + "\n"
    doc.write_text(s)


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> int:
    cases = prompts()
    results = {}
    for name, lc_flags, plumb_flags in CONFIGS:
        for label, ids in cases:
            toks = ",".join(map(str, ids))
            try:
                lc = run([sys.executable, str(ROOT / "reference/llamacpp_trace.py"), str(MODEL), "--tokens", toks,
                          "--generate", str(N_GEN)] + lc_flags)["generated"]
            except RuntimeError as e:
                print(f"{name} / {label}: llama.cpp failed: {e}", file=sys.stderr)
                lc = None
            pl = None
            if plumb_flags is not None:
                pl = run([str(PLUMB), "run", str(MODEL), "--precision", "fast", "--tokens", toks, "-n", str(N_GEN),
                          "--json"] + explicit(plumb_flags))["generated"]
            results[(name, label)] = (lc, pl)
            print(f"{name} / {label}: done", file=sys.stderr)
    rows = ["| configuration | prompt | llama.cpp's tokens vs its reference configuration | plumb fast = llama.cpp |",
            "|---|---|---|---|"]
    for name, _, plumb_flags in CONFIGS:
        equal = 0
        for label, _ in cases:
            lc, pl = results[(name, label)]
            ref = results[("reference", label)][0]
            if lc is None:
                knob = "llama.cpp failed"
            elif name == "reference":
                knob = "—"
            else:
                d = first_difference(lc, ref) if ref is not None else None
                knob = "same 32" if d is None else f"differ from token {d}"
            if plumb_flags is None:
                same = "not mirrored"
            elif lc is None:
                same = "—"
            else:
                d = first_difference(pl, lc[:len(pl)]) if pl else 0
                # plumb stops at an end-of-generation token; llama.cpp's loop goes on.
                same = "yes (32/32)" if d is None and len(pl) == len(lc) else (
                    f"yes ({len(pl)}, then end of generation)" if d is None else f"no, from token {d}")
                equal += d is None
            rows.append(f"| {name} | {label} | {knob} | {same} |")
        if plumb_flags is not None:
            rows.append(f"| **{name}** | **all {len(cases)}** | | **{equal}/{len(cases)}** |")
    table = "\n".join(rows)
    print(table)
    write_section(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
