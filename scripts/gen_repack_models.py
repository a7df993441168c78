#!/usr/bin/env python3
"""Q4_0 and IQ4_NL copies of the tiny llama, for the repacking tests.

llama.cpp repacks Q4_0 and IQ4_NL weights (rows in whole eights) into its
8x8 interleaved layout on CPUs with AVX2, and sums their products in
another order than its plain kernels; crates/cli/tests/repack.rs holds
plumb to both on these two files. Reads testdata/tiny/llama/llama-f32.gguf
and writes llama-q4_0.gguf and llama-iq4_nl.gguf beside it: the same
metadata, every matrix in the named format (Q4_0 by the gguf package's
quantizer; IQ4_NL by the nearest table value to x/d with d = the block's
largest-magnitude value / -127), vectors kept in F32.

Needs numpy and the gguf package (.venv-ref has both).
"""
import sys
from pathlib import Path

import numpy as np
import gguf

IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def iq4_nl(arr):
    """IQ4_NL blocks of 32 (f16 d, then 16 bytes: element j in the low
    nibble of byte j, element j+16 in the high one), as raw bytes."""
    rows, cols = arr.shape
    x = arr.reshape(-1, 32).astype(np.float32)
    big = x[np.arange(len(x)), np.abs(x).argmax(axis=1)]
    d = (big / -127.0).astype(np.float16)
    df = d.astype(np.float32)
    scaled = np.divide(x, df[:, None], out=np.zeros_like(x), where=df[:, None] != 0)
    idx = np.abs(scaled[:, :, None] - IQ4NL[None, None, :]).argmin(axis=2).astype(np.uint8)
    qs = idx[:, :16] | (idx[:, 16:] << 4)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), qs], axis=1)
    return out.reshape(rows, cols // 32 * 18)


def copy(src, dst, qtype):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            w.add_file_type(int(qtype))
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        arr = np.array(t.data, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)])
        if arr.ndim >= 2:
            q = gguf.quants.quantize(arr, qtype) if qtype == gguf.GGMLQuantizationType.Q4_0 else iq4_nl(arr)
            w.add_tensor(t.name, q, raw_dtype=qtype)
        else:
            w.add_tensor(t.name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    d = Path(__file__).resolve().parent.parent / "testdata/tiny/llama"
    src = d / "llama-f32.gguf"
    for qtype, suffix in [(gguf.GGMLQuantizationType.Q4_0, "q4_0"), (gguf.GGMLQuantizationType.IQ4_NL, "iq4_nl")]:
        copy(str(src), str(d / f"llama-{suffix}.gguf"), qtype)
        print(f"wrote {d / f'llama-{suffix}.gguf'}", file=sys.stderr)


if __name__ == "__main__":
    main()
