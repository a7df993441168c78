"""Seeds for the `apr` fuzz target: small APR v2 files laid out as aprender
writes them (docs/APR.md), one per kind of tensor plumb reads: F32, F16,
Q4_K, APR Q4 and APR Q8, with and without the footer checksum.

    python fuzz/seed_apr.py
"""
import json
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "fuzz" / "corpus" / "apr"


def pad(b):
    return b + b"\0" * (-len(b) % 64)


def apr(tensors, meta, flags=0x0400, footer=True):
    index, data = b"", b""
    for name, dtype, dims, payload in sorted(tensors):
        n = name.encode()
        index += struct.pack("<H", len(n)) + n + bytes([dtype, len(dims)])
        index += b"".join(struct.pack("<Q", d) for d in dims)
        index += struct.pack("<QQ", len(data), len(payload))
        data = pad(data + payload)
    m = json.dumps(meta).encode()
    index_off = 64 + len(pad(m))
    data_off = index_off + len(pad(index))
    head = b"APR\0" + bytes([2, 0]) + struct.pack("<HIQIQQ", flags, len(tensors), 64, len(m), index_off, data_off)
    crc = zlib.crc32(head[:40] + b"\0" * 20)
    head = head + struct.pack("<I", crc) + b"\0" * 20
    body = head + pad(m) + pad(index) + data
    return body + struct.pack("<I", zlib.crc32(body)) if footer else body


META = {"model_type": "llama", "hidden_size": 8, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
        "vocab_size": 8, "intermediate_size": 8, "tokenizer.vocabulary": [f"t{i}" for i in range(8)]}
f32 = struct.pack("<8f", *[0.5 * i for i in range(8)])
seeds = {
    "f32.apr": apr([("blk.0.attn_norm.weight", 0, [8], f32), ("token_embd.weight", 0, [8, 1], f32)], META),
    "f16-nofooter.apr": apr([("a", 1, [2, 4], struct.pack("<8e", *[1.0] * 8))], META, footer=False),
    "q4k.apr": apr([("a", 12, [1, 256], b"\1" * 144)], {"model_type": "qwen2"}),
    "aprq4.apr": apr([("a", 128, [40], b"\0\x3c" + b"\x12" * 16 + b"\0\x38" + b"\x34" * 16)], {}),
    "aprq8.apr": apr([("a", 129, [3], struct.pack("<f", 0.25) + b"\2\xfe\x7f")], {}),
    "preserve-q4k.apr": apr([("a", 8, [1, 32], b"\0\x3c" + b"\1" * 32)], {"model_type": "transformer_lm_q4k"},
                            flags=0x0020, footer=False),
}
OUT.mkdir(parents=True, exist_ok=True)
for name, data in seeds.items():
    (OUT / name).write_bytes(data)
print(f"wrote {len(seeds)} seeds to {OUT}")
