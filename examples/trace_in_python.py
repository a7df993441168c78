"""Trace the real model from Python, look inside with numpy, and check it
against transformers' trace of the same prompt (pip install ./python first).

    python examples/trace_in_python.py
"""
import numpy as np
import plumb

model = plumb.Model("models/gemma-3-270m-q4_k_m.gguf")  # exact precision
trace = model.trace("The capital of France is", tensors=True, layers="0,17")
print(trace)
for key in ["blk.0.attn_out", "blk.17.layer_out"]:
    x = trace[key]  # float32, [tokens, width]
    print(f"{key:18} shape {x.shape}  std {x.std():.4f}  |max| {np.abs(x).max():.2f}")
print("next token:", trace.top[0]["token"], f"p={trace.top[0]['prob']:.3f}")

full = model.trace("The capital of France is")  # statistics of every stage
verdict = plumb.diff(full, "testdata/gemma3-270m/hf_trace_stats.safetensors")
print(verdict.text.splitlines()[2], "— exit code", verdict.exit_code)
