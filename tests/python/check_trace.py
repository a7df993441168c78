"""Checks a plumb trace file (format 1) independently, with the Python
`safetensors` package and numpy: metadata keys, the stage set, shapes, and
every recorded statistic recomputed in float64.

    python tests/python/check_trace.py TRACE.safetensors --layers 18 --stages a,b,c

Exits 0 when everything holds, 1 with a list of problems otherwise. Used by
the Rust test `trace_file_is_readable_from_python`.
"""

import argparse
import json
import sys

import numpy as np
from safetensors import safe_open

STAT_FIELDS = ("mean", "std", "min", "max", "abs_max", "l2")


def stats(x):
    x = x.astype(np.float64).ravel()
    finite = x[np.isfinite(x)]
    out = {"count": int(x.size), "nan": int(np.isnan(x).sum()), "inf": int(np.isinf(x).sum())}
    if finite.size == 0:
        out.update({k: None for k in STAT_FIELDS})
    else:
        out.update(
            mean=finite.mean(), std=finite.std(), min=finite.min(), max=finite.max(),
            abs_max=np.abs(finite).max(), l2=np.sqrt((finite ** 2).sum()),
        )
    return out


def close(a, b, scale):
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= 1e-9 * max(abs(b), scale) + 1e-12


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--stages", required=True, help="per-layer stage names expected in every layer")
    args = ap.parse_args()
    problems = []
    with safe_open(args.trace, framework="numpy") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key in ("plumb.format", "plumb.engine", "plumb.model", "plumb.arch", "plumb.tokens", "plumb.stats"):
        if key not in meta:
            problems.append(f"metadata {key} missing")
    if meta.get("plumb.format") != "1":
        problems.append(f"plumb.format is {meta.get('plumb.format')!r}")
    tokens = json.loads(meta.get("plumb.tokens", "[]"))
    T = len(tokens)
    all_stats = json.loads(meta.get("plumb.stats", "{}"))
    expected = ["embedding", "final_norm", "logits"] + [
        f"blk.{l}.{s}" for l in range(args.layers) for s in args.stages.split(",")
    ]
    for name in expected:
        if name not in tensors:
            problems.append(f"tensor {name} missing")
        if name not in all_stats:
            problems.append(f"stats for {name} missing")
    for name, x in tensors.items():
        if x.dtype != np.float32:
            problems.append(f"{name}: dtype {x.dtype}")
        st = all_stats.get(name)
        if st is None:
            continue
        if list(x.shape) != st["shape"]:
            problems.append(f"{name}: shape {list(x.shape)} vs stats shape {st['shape']}")
        axis = 1 if name.endswith(("attn_scores", "attn_probs")) else 0
        if x.shape[axis] != T:
            problems.append(f"{name}: token axis {axis} has {x.shape[axis]} rows for {T} tokens")
        last = np.take(x, [x.shape[axis] - 1], axis=axis)
        for which, ref in (("all", stats(x)), ("last", stats(last))):
            got = st if which == "all" else st["last"]
            scale = (ref["abs_max"] or 0.0) * np.sqrt(max(ref["count"], 1))
            for k in ("count", "nan", "inf"):
                if got[k] != ref[k]:
                    problems.append(f"{name} {which}.{k}: plumb {got[k]} numpy {ref[k]}")
            for k in STAT_FIELDS:
                if not close(got[k], ref[k], scale if k in ("mean", "std", "l2") else 0.0):
                    problems.append(f"{name} {which}.{k}: plumb {got[k]!r} numpy {ref[k]!r}")
    if problems:
        print("\n".join(problems[:50]))
        print(f"{len(problems)} problems")
        return 1
    print(f"ok: {len(tensors)} tensors, {len(all_stats)} stats, {T} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
