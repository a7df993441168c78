"""Trace file format 1 (docs/TRACE_FORMAT.md) on the Python side: stage names
and aliases, the --stages/--layers selection, statistics exactly as plumb
computes them, and the atomic safetensors writer. Shared by hf_trace.py and
llamacpp_trace.py (import it from the same folder)."""

from __future__ import annotations
import contextlib
import fnmatch
import hashlib
import json
import math
import os
import sys
from pathlib import Path
import numpy as np


FORMAT = "1"


GLOBAL_BEFORE = ["embedding"]


LAYER_STAGES = [
    "attn_norm", "q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "q_rope", "k_rope",
    "attn_scores", "attn_probs", "attn_context", "attn_out", "attn_post_norm", "attn_residual",
    "ffn_norm", "ffn_gate", "ffn_up", "ffn_act", "ffn_mul", "ffn_down",
    "ffn_router", "ffn_router_probs", "ffn_experts", "ffn_expert_weights", "ffn_moe_out", "ffn_shared_out",
    "ffn_post_norm", "layer_out",
]


GLOBAL_AFTER = ["final_norm", "logits"]


ALL_STAGES = GLOBAL_BEFORE + LAYER_STAGES + GLOBAL_AFTER


HEAD_MAJOR = {"attn_scores", "attn_probs"}


ALIASES = {
    "qkv_matmul": ["q_proj", "k_proj", "v_proj"],
    "q_post_rope": ["q_rope"],
    "k_post_rope": ["k_rope"],
    "attn_softmax": ["attn_probs"],
    "attention": ["attn_context"],
    "ffn_silu": ["ffn_act"],
    "ffn_swigl": ["ffn_mul"],
    "ffn_swiglu": ["ffn_mul"],
    "ffn_out": ["ffn_down"],
    "post_ffn_residual": ["layer_out"],
    "layer_output": ["layer_out"],
    "post_attn_residual": ["attn_residual"],
    "lm_head": ["logits"],
}


STAT_FIELDS = ("mean", "std", "min", "max", "abs_max", "l2")


class UsageError(Exception):
    pass


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    if spec is None:
        return list(range(n_layers))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise UsageError(f"--layers: bad item {part!r} (want N or A-B)") from None
    bad = sorted(x for x in out if x < 0 or x >= n_layers)
    if bad:
        raise UsageError(f"--layers: layer {bad[0]} out of range (the model has {n_layers} layers)")
    return sorted(out)


def parse_stages(spec: str | None) -> list[str] | None:
    """Returns a list of glob patterns (aliases expanded), or None for all."""
    if spec is None:
        return None
    pats: list[str] = []
    for p in spec.split(","):
        p = p.strip()
        if not p:
            continue
        pats.extend(ALIASES.get(p, [p]))
    for p in pats:
        if not any(fnmatch.fnmatchcase(s, p) for s in ALL_STAGES):
            raise UsageError(f"--stages: {p!r} matches no stage (stages: {', '.join(ALL_STAGES)})")
    return pats


def parse_tokens(spec: str) -> list[int]:
    """--tokens: comma-separated non-negative token ids."""
    try:
        ids = [int(t) for t in spec.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError(f"--tokens: not a comma list of integers: {spec!r}") from None
    if not ids:
        raise UsageError("--tokens: no token ids")
    if any(i < 0 for i in ids):
        raise UsageError("--tokens: negative token id")
    return ids


def add_common_args(ap, model_help: str, prompt_help: str, generate_help: str) -> None:
    """The arguments both tracers take: the model, -p or --tokens, -o,
    --generate, --stages, --layers, --stats-only and --positions."""
    ap.add_argument("model", help=model_help)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("-p", "--prompt", help=prompt_help)
    src.add_argument("--tokens", help="comma-separated token ids, fed as given")
    ap.add_argument("-o", "--out", help="output trace file (.safetensors); required unless --generate")
    ap.add_argument("--generate", type=int, metavar="N", help=generate_help)
    ap.add_argument("--stages", help="comma-separated stage globs, e.g. attn_*,logits (default: all)")
    ap.add_argument("--layers", help="layers to trace, e.g. 0-3,7 (default: all)")
    ap.add_argument("--stats-only", action="store_true", help="write statistics only, no tensors")
    ap.add_argument("--positions", choices=["all", "last"], default="all",
                    help="token positions kept in saved tensors (statistics cover all): all or last")


def parse_common_args(ap, argv):
    """Parses, and refuses a run that would neither trace nor generate."""
    args = ap.parse_args(argv)
    if args.out is None and args.generate is None:
        ap.error("-o/--out is required (or --generate N)")
    return args


def stage_of(key: str) -> str:
    return key.split(".", 2)[2] if key.startswith("blk.") else key


def order_key(key: str):
    if key.startswith("blk."):
        _, l, name = key.split(".", 2)
        return (1, int(l), LAYER_STAGES.index(name) if name in LAYER_STAGES else 99, key)
    if key in GLOBAL_BEFORE:
        return (0, 0, GLOBAL_BEFORE.index(key), key)
    return (2, 0, GLOBAL_AFTER.index(key) if key in GLOBAL_AFTER else 99, key)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64).ravel()
    nan = int(np.isnan(x).sum())
    inf = int(np.isinf(x).sum())
    f = x[np.isfinite(x)]
    out: dict = {"count": int(x.size)}
    if f.size == 0:
        out.update({k: None for k in STAT_FIELDS})
    else:
        out.update(
            mean=float(f.mean()),
            std=float(f.std()),
            min=float(f.min()),
            max=float(f.max()),
            abs_max=float(np.abs(f).max()),
            l2=float(np.sqrt(np.dot(f, f))),
        )
    out["nan"] = nan
    out["inf"] = inf
    return out


def tensor_stats(name: str, x: np.ndarray) -> dict:
    axis = 1 if name in HEAD_MAJOR else 0
    axis = min(axis, max(x.ndim - 1, 0))
    last = np.take(x, x.shape[axis] - 1, axis=axis) if x.ndim and x.shape[axis] else x[:0]
    s = {"shape": [int(d) for d in x.shape]}
    s.update(_stats(x))
    s["last"] = _stats(last)
    return s


def kept_positions(name: str, x: np.ndarray, positions: str) -> np.ndarray:
    """The tensor as saved: whole, or (`last`) cut to its last token along
    the token axis, which stays, of length 1 — as plumb saves it."""
    if positions == "all" or x.ndim == 0:
        return x
    axis = min(1 if name in HEAD_MAJOR else 0, x.ndim - 1)
    return np.ascontiguousarray(np.take(x, [x.shape[axis] - 1], axis=axis))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Stages of integer ids, stored as int32.
ID_STAGES = ("ffn_experts",)


def write_trace(out_path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    tensors = {k: (np.ascontiguousarray(v, dtype=np.int32) if stage_of(k) in ID_STAGES else v)
               for k, v in tensors.items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.parent / f".{out_path.name}.tmp.{os.getpid()}"
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        # safetensors creates the file 0600; give it the usual umask mode.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_trace(args, tensors: dict[str, np.ndarray], ids: list[int], meta: dict[str, str], source) -> int:
    """Both tracers' last step: statistics of every stage (one line each on
    stderr with -v, ending in `source(key, stats)`), the format-1 metadata
    common to every engine added to `meta`, the file written (tensors too
    unless --stats-only), and the `wrote …` line on stdout."""
    keys = sorted(tensors, key=order_key)
    stats = {k: tensor_stats(stage_of(k), tensors[k]) for k in keys}
    if args.verbose:
        for k in keys:
            s = stats[k]
            fig = {f: ("-" if s[f] is None else f"{s[f]:.6g}") for f in ("mean", "std", "abs_max")}
            print(f"{k:28s} {str(s['shape']):18s} mean {fig['mean']:>12} std {fig['std']:>12} "
                  f"abs_max {fig['abs_max']:>12} {source(k, s)}", file=sys.stderr)
    meta = {
        "plumb.format": FORMAT,
        **meta,
        "plumb.tokens": json.dumps([int(i) for i in ids]),
        "plumb.stats": json.dumps(_json_safe(stats), allow_nan=False),
    }
    if args.prompt is not None:
        meta["plumb.prompt"] = args.prompt
    saved = {} if args.stats_only else {k: kept_positions(stage_of(k), tensors[k], args.positions) for k in keys}
    out = Path(args.out)
    write_trace(out, saved, meta)
    print(f"wrote {out} ({len(saved)} tensors, {len(stats)} stats)")
    return 0


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


class Selection:
    def __init__(self, patterns: list[str] | None, layers: list[int]):
        self.patterns = patterns
        self.layers = set(layers)

    def stage(self, name: str) -> bool:
        return self.patterns is None or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def want(self, name: str, layer: int | None = None) -> bool:
        if layer is not None and layer not in self.layers:
            return False
        return self.stage(name)
