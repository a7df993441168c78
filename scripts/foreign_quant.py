#!/usr/bin/env python3
"""Bands against a quantizer that is not plumb's: llama.cpp's own
(``llama_model_quantize`` through llama-cpp-python) quantizes a float model;
``plumb bisect QUANT FLOAT`` must find the clean quant WITHIN NOISE, although
its calibration re-quantizes the float model with plumb's simpler
quantizers, and must still name a bug planted into the llama.cpp quant.

Float models: the real Gemma 3 270M dequantized to F32 (``plumb plant --bug
none --requant f32``) and the tiny random llama and gemma3 F32 models in
testdata/. Types: Q8_0, Q4_0, Q4_K_M (llama.cpp's mix of Q4_K, Q6_K, Q5_0…).
Prints one Markdown row per pair; writes nothing into the repository.

Needs .venv-ref (scripts/conformance.sh).

    .venv-ref/bin/python scripts/foreign_quant.py
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parent.parent
PLUMB = ROOT / "target/release/plumb"
PROMPT = "The capital of France is Paris, and the capital of Germany is"
FTYPES = {
    "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
}
BUG = {"gemma-f32": "swap:blk.9.ffn_gate,blk.9.ffn_up", "tiny llama": "swap:blk.1.ffn_gate,blk.1.ffn_up",
       "tiny gemma3": "swap:blk.1.ffn_gate,blk.1.ffn_up"}


def quantize(src: Path, dst: Path, ftype: int) -> None:
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = ftype
    p.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), p)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, {dst}) returned {rc}")


def bisect(a: Path, b: Path, prompt_args: list) -> dict:
    r = subprocess.run([str(PLUMB), "bisect", str(a), str(b), *prompt_args, "--json"], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise RuntimeError(r.stderr)
    j = json.loads(r.stdout)
    worst = j["stages"][j["worst"]] if j["worst"] is not None else None
    locals_ = [s for s in j["stages"] if s["local"] and s["calibration"]]
    rel = max((s["local"] / s["calibration"] for s in locals_), default=0.0)
    return {"exit": r.returncode, "verdict": j["verdict"], "at": j["first_anomaly"],
            "worst": f"{worst['ratio']:.2f}× at {worst['key']}" if worst else "-",
            "max_local_over_cal": rel,
            "finding": j["findings"][0]["subject"] + ": " + j["findings"][0]["what"][:60] if j["findings"] else "-"}


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        gemma_f32 = tmp / "gemma-f32.gguf"
        subprocess.run([str(PLUMB), "plant", str(ROOT / "models/gemma-3-270m-q4_k_m.gguf"), str(gemma_f32),
                        "--bug", "none", "--requant", "f32"], check=True, capture_output=True)
        floats = [("gemma-f32", gemma_f32, ["-p", PROMPT]),
                  ("tiny llama", ROOT / "testdata/tiny/llama/llama-f32.gguf", ["--tokens", "1,17,255,3,400,511,42"]),
                  ("tiny gemma3", ROOT / "testdata/tiny/gemma3/gemma3-f32.gguf", ["--tokens", "1,17,255,3,400,511,42"])]
        for name, f32, prompt in floats:
            for tname, ftype in FTYPES.items():
                q = tmp / f"q-{tname}.gguf"
                quantize(f32, q, ftype)
                clean = bisect(q, f32, prompt)
                broken_path = tmp / "broken.gguf"
                subprocess.run([str(PLUMB), "plant", str(q), str(broken_path), "--bug", BUG[name], "--force"],
                               check=True, capture_output=True)
                broken = bisect(broken_path, f32, prompt)
                rows.append((name, tname, clean, broken))
                print(name, tname, clean, broken, file=sys.stderr)
    print("| float model | llama.cpp quant | clean: verdict | worst ratio | max local ÷ calibration | "
          "with a planted swap: verdict | first anomaly | first finding |")
    print("|---|---|---|---|---|---|---|---|")
    for name, t, c, b in rows:
        print(f"| {name} | {t} | {c['verdict']} (exit {c['exit']}) | {c['worst']} | {c['max_local_over_cal']:.2f} "
              f"| {b['verdict']} (exit {b['exit']}) | {b['at'] or '-'} | {b['finding']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
