#!/usr/bin/env python3
"""Cross-engine noise check on the real Gemma 3 270M: are plumb fast and
llama.cpp WITHIN NOISE of transformers once the noise is calibrated, and is a
planted bug still named from traces alone?

For each conformance prompt (the same six as scripts/conformance.py):
  1. bands: ``plumb bisect MODEL --a-precision fast --save-noise`` (plumb's
     fast precision against its exact one, on the prompt's token ids);
  2. traces with tensors: transformers (reference/hf_trace.py, the GGUF
     dequantized to f32), llama.cpp in its reference configuration
     (reference/llamacpp_trace.py --no-repack, F32 KV cache) and plumb fast;
  3. ``plumb diff A hf --noise bands.json`` for A = plumb fast and llama.cpp.
Then llama.cpp on a copy of the model with layer 9's ffn_gate and ffn_up
swapped (``plumb plant``) against transformers on the original.

Needs the reference environment of scripts/conformance.sh (.venv-ref with
torch, transformers and llama-cpp-python). Prints a Markdown table; writes
nothing into the repository.

    .venv-ref/bin/python scripts/noise_crossengine.py
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUMB = ROOT / "target/release/plumb"
MODEL = ROOT / "models/gemma-3-270m-q4_k_m.gguf"
PY = sys.executable
# The conformance prompts (scripts/conformance.py).
sys.path.insert(0, str(ROOT / "scripts"))
from conformance import PROMPTS  # noqa: E402


def sh(argv: list, ok=(0,)) -> str:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if r.returncode not in ok:
        raise RuntimeError(f"{argv} exited {r.returncode}:\n{r.stderr[-2000:]}")
    return r.stdout


def ids_of(prompt: str) -> str:
    line = next(l for l in sh([PLUMB, "run", MODEL, "-p", prompt, "-n", "0", "--json"]).splitlines() if l.startswith("{"))
    return ",".join(map(str, json.loads(line)["prompt_ids"]))


def judged(a: Path, b: Path, bands: Path) -> dict:
    j = json.loads(sh([PLUMB, "diff", a, b, "--noise", bands, "--json"], ok=(0, 1)))
    worst = j["stages"][j["worst"]] if j["worst"] is not None else None
    flips = [p for p in j["logits"] if not p["top1_agree"]]
    return {
        "verdict": j["verdict"],
        "at": j["first_anomaly"],
        "worst": f"{worst['ratio']:.2f}× at {worst['key']}" if worst else "-",
        "flips": ", ".join(f"pos {p['position']} (margin {p['ref_margin']:.3f})" for p in flips) or "none",
    }


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broken = tmp / "broken.gguf"
        sh([PLUMB, "plant", MODEL, broken, "--bug", "swap:blk.9.ffn_gate,blk.9.ffn_up"])
        for i, prompt in enumerate(PROMPTS):
            toks = ids_of(prompt)
            bands, hf, lc, fast, lcb = (tmp / f"{n}{i}.{e}" for n, e in
                                        [("bands", "json"), ("hf", "safetensors"), ("lc", "safetensors"),
                                         ("fast", "safetensors"), ("lcb", "safetensors")])
            sh([PLUMB, "bisect", MODEL, "--tokens", toks, "--a-precision", "fast", "--save-noise", bands, "--brief"])
            sh([PY, ROOT / "reference/hf_trace.py", MODEL, "--tokens", toks, "-o", hf])
            sh([PY, ROOT / "reference/llamacpp_trace.py", MODEL, "--tokens", toks, "-o", lc, "--no-repack"])
            sh([PY, ROOT / "reference/llamacpp_trace.py", broken, "--tokens", toks, "-o", lcb, "--no-repack"])
            sh([PLUMB, "trace", MODEL, "--tokens", toks, "--precision", "fast", "--tensors", "--save", fast],
               ok=(0, 1))
            for name, a in [("plumb fast", fast), ("llama.cpp", lc), ("llama.cpp, swapped ffn_gate/up in layer 9", lcb)]:
                r = judged(a, hf, bands)
                rows.append((prompt, name, r))
                print(f"{prompt!r:60} {name:42} {r['verdict']:13} {r['at'] or '-':18} {r['worst']}", file=sys.stderr)
    print("| prompt | A (B = transformers) | verdict | first anomaly | worst ratio | top-1 flips (reference margin) |")
    print("|---|---|---|---|---|---|")
    for prompt, name, r in rows:
        print(f"| {prompt} | {name} | {r['verdict'].upper().replace('_', ' ')} | {r['at'] or '-'} | {r['worst']} | {r['flips']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
