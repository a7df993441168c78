#!/usr/bin/env python3
"""Generate golden dequantization vectors for plumb's GGML dequantizer tests.

The reference is the numpy implementation in the `gguf` Python package
(`gguf.quants`), which is independent of plumb's Rust code.  For each format
(F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
IQ4_NL, IQ4_XS) this writes, under <repo>/testdata/quant/:

  <TYPE>.blocks   raw GGML bytes of all rows, concatenated
  <TYPE>.f32      gguf.quants.dequantize() of each row, concatenated,
                  little-endian float32
  manifest.json   type, ggml type id, block elems/bytes, elements per row

Block formats have rows of 1, 3 and 7 blocks; F32/F16/BF16 have rows of
1, 3, 17 and 33 elements.  Formats gguf.quants can quantize are produced by
quantizing seeded random normal data; the others use seeded random bytes with
every f16 scale field overwritten by a finite value.  A few blocks of the
7-block row carry edge-case scales (0, -0, f16 subnormal, 60000, 65504).
Output is deterministic (fixed seeds).

Run from anywhere, with a Python that has numpy and gguf installed:

    /path/to/venv/bin/python scripts/gen_quant_goldens.py
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

OUT_DIR = Path(__file__).resolve().parent.parent / "testdata" / "quant"

BASE_SEED = 0x9E3779B9

FORMATS = [
    "F32", "F16", "BF16",
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
    "IQ4_NL", "IQ4_XS",
]

FLOAT_ROW_ELEMS = [1, 3, 17, 33]
BLOCK_ROW_BLOCKS = [1, 3, 7]

# Byte offsets of every f16 scale field inside one block, taken from the
# np.hsplit layouts of the dequantize_blocks methods in gguf/quants.py.
F16_FIELDS = {
    "Q4_0": {"d": 0},                 # d[2] qs[16]
    "Q4_1": {"d": 0, "m": 2},         # d[2] m[2] qs[16]
    "Q5_0": {"d": 0},                 # d[2] qh[4] qs[16]
    "Q5_1": {"d": 0, "m": 2},         # d[2] m[2] qh[4] qs[16]
    "Q8_0": {"d": 0},                 # d[2] qs[32] (int8)
    "Q2_K": {"d": 80, "dmin": 82},    # scales[16] qs[64] d[2] dmin[2]
    "Q3_K": {"d": 108},               # hmask[32] qs[64] scales[12] d[2]
    "Q4_K": {"d": 0, "dmin": 2},      # d[2] dmin[2] scales[12] qs[128]
    "Q5_K": {"d": 0, "dmin": 2},      # d[2] dmin[2] scales[12] qh[32] qs[128]
    "Q6_K": {"d": 208},               # ql[128] qh[64] scales[16] (int8) d[2]
    "IQ4_NL": {"d": 0},               # d[2] qs[16]
    "IQ4_XS": {"d": 0},               # d[2] scales_h[2] scales_l[4] qs[128]
}

# Edge-case f16 values for the first blocks of the 7-block row:
# (first f16 field, other f16 fields) as raw f16 bit patterns.
F16_ZERO, F16_NEG_ZERO, F16_MIN_SUBNORMAL = 0x0000, 0x8000, 0x0001
F16_60000 = int(np.array(60000.0, dtype=np.float16).view(np.uint16))
F16_MAX, F16_NEG_MAX = 0x7BFF, 0xFBFF   # +-65504
EDGE_BLOCKS = [
    (F16_ZERO, F16_NEG_ZERO),
    (F16_60000, F16_60000),
    (F16_MIN_SUBNORMAL, F16_ZERO),
    (F16_MAX, F16_NEG_MAX),
]


def f16_bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float16).view(np.uint16)


def random_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """Finite f16 scales, |x| log-uniform in [0.001, 0.1], ~25% negative."""
    mag = np.exp(rng.uniform(np.log(0.001), np.log(0.1), size=n))
    sign = np.where(rng.random(n) < 0.25, -1.0, 1.0)
    return f16_bits(sign * mag)


def can_quantize(qtype: T) -> bool:
    block_elems, _ = GGML_QUANT_SIZES[qtype]
    try:
        quants.quantize(np.zeros((1, block_elems), dtype=np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def put_f16(block: np.ndarray, offset: int, bits: int) -> None:
    block[offset:offset + 2] = np.array([bits], dtype="<u2").view(np.uint8)


def make_float_rows(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Raw little-endian bytes for each row of F32/F16/BF16."""
    qtype = T[name]
    rows = []
    for ri, n in enumerate(FLOAT_ROW_ELEMS):
        x = (rng.standard_normal(n) * np.exp(rng.uniform(-3, 3, size=n))).astype(np.float32)
        raw = np.ascontiguousarray(quants.quantize(x, qtype)).view(np.uint8).copy()
        if ri == len(FLOAT_ROW_ELEMS) - 1:
            # Edge cases at the start of the last row.
            if name == "F32":
                special = np.array([0.0, -0.0, 3.4028235e38, -3.4028235e38,
                                    1e-45, 1.1754944e-38, -1.0, 1.0], dtype="<f4").view(np.uint8)
            elif name == "F16":
                special = np.array([0x0000, 0x8000, F16_MAX, F16_NEG_MAX, 0x0001,
                                    0x0400, 0xBC00, 0x3C00], dtype="<u2").view(np.uint8)
            else:  # BF16: 0, -0, +-max finite, min subnormal, min normal, -1, 1
                special = np.array([0x0000, 0x8000, 0x7F7F, 0xFF7F, 0x0001,
                                    0x0080, 0xBF80, 0x3F80], dtype="<u2").view(np.uint8)
            raw[:special.size] = special
        rows.append(raw)
    return rows


def make_block_rows(name: str, rng: np.random.Generator, quantizable: bool) -> list[np.ndarray]:
    """Raw bytes for each row (1, 3, 7 blocks) of a block format."""
    qtype = T[name]
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    fields = list(F16_FIELDS[name].values())
    rows = []
    for ri, nblocks in enumerate(BLOCK_ROW_BLOCKS):
        if quantizable:
            # Normal data, each block with its own magnitude.
            mag = np.exp(rng.uniform(np.log(0.01), np.log(10.0), size=(nblocks, 1)))
            x = (rng.standard_normal((nblocks, block_elems)) * mag).astype(np.float32)
            # Per-block offset so the min-based formats (Q4_1, Q5_1) get nonzero m.
            x += (rng.standard_normal((nblocks, 1)) * mag * 0.5).astype(np.float32)
            blocks = np.asarray(quants.quantize(x.reshape(-1), qtype), dtype=np.uint8)
            blocks = blocks.reshape(nblocks, block_bytes).copy()
        else:
            blocks = rng.integers(0, 256, size=(nblocks, block_bytes), dtype=np.uint8)
            for off in fields:
                for b, bits in enumerate(random_scales(rng, nblocks)):
                    put_f16(blocks[b], off, int(bits))
        if ri == len(BLOCK_ROW_BLOCKS) - 1:
            for b, (first, rest) in enumerate(EDGE_BLOCKS):
                put_f16(blocks[b], fields[0], first)
                for off in fields[1:]:
                    put_f16(blocks[b], off, rest)
        rows.append(blocks.reshape(-1))
    return rows


def dequant_row(raw: np.ndarray, qtype: T) -> np.ndarray:
    out = quants.dequantize(np.ascontiguousarray(raw, dtype=np.uint8), qtype)
    out = np.asarray(out)
    assert out.dtype == np.float32, out.dtype
    return out.reshape(-1)


def probe_fields(name: str) -> None:
    """Sanity-check F16_FIELDS: a NaN in each declared field must reach the output."""
    qtype = T[name]
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(1)
    for off in F16_FIELDS[name].values():
        blk = rng.integers(0, 256, size=block_bytes, dtype=np.uint8)
        for o in F16_FIELDS[name].values():
            put_f16(blk, o, 0x3C00)  # 1.0
        put_f16(blk, off, 0x7E00)    # NaN
        with np.errstate(invalid="ignore"):
            out = dequant_row(blk, qtype)
        assert np.isnan(out).any(), f"{name}: offset {off} is not an f16 scale field"


def main() -> int:
    version = importlib.metadata.version("gguf")
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    quantizable = {n: can_quantize(T[n]) for n in FORMATS}
    entries = []
    for name in FORMATS:
        qtype = T[name]
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        rng = np.random.default_rng([BASE_SEED, int(qtype)])
        if block_elems == 1:
            rows = make_float_rows(name, rng)
        else:
            probe_fields(name)
            rows = make_block_rows(name, rng, quantizable[name])
        outs = [dequant_row(r, qtype) for r in rows]
        rows_elems = [int(o.size) for o in outs]
        for r, n in zip(rows, rows_elems):
            assert r.size == n // block_elems * block_bytes
        (OUT_DIR / f"{name}.blocks").write_bytes(b"".join(r.tobytes() for r in rows))
        (OUT_DIR / f"{name}.f32").write_bytes(
            b"".join(o.astype("<f4", copy=False).tobytes() for o in outs))
        entries.append({
            "type": name,
            "ggml_type": int(qtype),
            "block_elems": block_elems,
            "block_bytes": block_bytes,
            "rows_elems": rows_elems,
            "blocks_file": f"{name}.blocks",
            "f32_file": f"{name}.f32",
        })

    manifest = {"generator": f"gguf {version} numpy reference", "formats": entries}
    (OUT_DIR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

    return verify(quantizable)


def verify(quantizable: dict[str, bool]) -> int:
    """Re-read everything, check sizes against the manifest, print a summary."""
    manifest = json.loads((OUT_DIR / "manifest.json").read_text())
    ok = True
    total = (OUT_DIR / "manifest.json").stat().st_size
    print(f"{manifest['generator']}  ->  {OUT_DIR}")
    print(f"{'type':7} {'id':>3} {'src':5} {'rows_elems':18} {'blocks':>6} {'bytes':>6} "
          f"{'f32s':>5} {'min':>14} {'max':>14} {'zeros':>5}")
    for e in manifest["formats"]:
        qtype = T[e["type"]]
        raw = np.frombuffer((OUT_DIR / e["blocks_file"]).read_bytes(), dtype=np.uint8)
        vals = np.frombuffer((OUT_DIR / e["f32_file"]).read_bytes(), dtype="<f4")
        total += raw.size + vals.nbytes
        n_elems = sum(e["rows_elems"])
        n_blocks = n_elems // e["block_elems"]
        good = (
            (e["block_elems"], e["block_bytes"]) == tuple(GGML_QUANT_SIZES[qtype])
            and all(n % e["block_elems"] == 0 for n in e["rows_elems"])
            and raw.size == n_blocks * e["block_bytes"]
            and vals.size == n_elems
            and bool(np.isfinite(vals).all())
        )
        # Re-dequantize from the re-read bytes, row by row; must match bit-exactly.
        pos = 0
        redo = []
        for n in e["rows_elems"]:
            nb = n // e["block_elems"] * e["block_bytes"]
            redo.append(dequant_row(raw[pos:pos + nb], qtype))
            pos += nb
        good = good and np.array_equal(np.concatenate(redo).view(np.uint32), vals.view(np.uint32))
        ok = ok and good
        src = "quant" if quantizable[e["type"]] else "rand"
        print(f"{e['type']:7} {e['ggml_type']:>3} {src:5} {str(e['rows_elems']):18} {n_blocks:>6} "
              f"{raw.size:>6} {vals.size:>5} {vals.min():>14.7g} {vals.max():>14.7g} "
              f"{int((vals == 0).sum()):>5}  {'OK' if good else 'FAIL'}")
    print(f"total size: {total} bytes")
    print("gguf.quants can quantize:", ", ".join(n for n, q in quantizable.items() if q))
    if total >= 1 << 20:
        print("FAIL: output is not under 1 MiB")
        ok = False
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
