#!/usr/bin/env python3
"""One small llama per ggml block format, for the format conformance test.

Each file is a llama of width 256 (so that K-quant rows hold whole 256-element
superblocks): one layer, 4 heads of 64, 2 KV heads, FFN 256, the tiny llama's
512-token tokenizer. Its matrices are random blocks of the named format
(seeded: random quants and sub-block scales, the f16 scale fields small and
finite), the embedding table too; the norms F32. The weights mean nothing;
they exercise llama.cpp's and plumb's kernels for the format on every
matrix, output included. Writes testdata/tiny/formats/llama256-<fmt>.gguf.

Needs numpy and the gguf package (.venv-ref has both).
"""
import sys
from pathlib import Path

import numpy as np
import gguf

Q = gguf.GGMLQuantizationType
# format: (block elements, block bytes, byte offsets of its f16 scale fields)
FORMATS = {
    "q4_0": (Q.Q4_0, [0]), "q4_1": (Q.Q4_1, [0, 2]), "q5_0": (Q.Q5_0, [0]), "q5_1": (Q.Q5_1, [0, 2]),
    "q8_0": (Q.Q8_0, [0]), "q2_k": (Q.Q2_K, [80, 82]), "q3_k": (Q.Q3_K, [108]), "q4_k": (Q.Q4_K, [0, 2]),
    "q5_k": (Q.Q5_K, [0, 2]), "q6_k": (Q.Q6_K, [208]), "iq4_nl": (Q.IQ4_NL, [0]), "iq4_xs": (Q.IQ4_XS, [0]),
}


def blocks(rng, qtype, scales, rows, cols):
    be, bb = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // be
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    for o in scales:
        raw[:, o:o + 2] = rng.uniform(0.001, 0.004, size=nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, cols // be * bb)


def model(src, dst, name, qtype, scales):
    r = gguf.GGUFReader(src)
    rng = np.random.default_rng(sum(map(ord, name)))
    d, ff, heads, kv_heads, vocab = 256, 256, 4, 2, 512
    hd = d // heads
    w = gguf.GGUFWriter(dst, "llama")
    w.add_name(f"plumb tiny llama, width 256, {name}")
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    for key, f in r.fields.items():
        if key.startswith("tokenizer."):
            vtype = f.types[0]
            w.add_key_value(key, f.contents(), vtype, sub_type=f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    w.add_tensor("token_embd.weight", blocks(rng, qtype, scales, vocab, d), raw_dtype=qtype)
    w.add_tensor("blk.0.attn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    for t, rows, cols in [("attn_q", d, d), ("attn_k", kv_heads * hd, d), ("attn_v", kv_heads * hd, d),
                          ("attn_output", d, d), ("ffn_gate", ff, d), ("ffn_up", ff, d), ("ffn_down", d, ff)]:
        w.add_tensor(f"blk.0.{t}.weight", blocks(rng, qtype, scales, rows, cols), raw_dtype=qtype)
    w.add_tensor("blk.0.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(d)).astype(np.float32))
    w.add_tensor("output.weight", blocks(rng, qtype, scales, vocab, d), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    root = Path(__file__).resolve().parent.parent
    out = root / "testdata/tiny/formats"
    out.mkdir(parents=True, exist_ok=True)
    for name, (qtype, scales) in FORMATS.items():
        dst = out / f"llama256-{name}.gguf"
        model(str(root / "testdata/tiny/llama/llama-f32.gguf"), str(dst), name, qtype, scales)
        print(f"wrote {dst}", file=sys.stderr)


if __name__ == "__main__":
    main()
