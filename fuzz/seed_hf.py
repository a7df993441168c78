"""Seeds for the `hf` fuzz target: each tiny model of testdata/tiny/ shrunk
to one layer of width 8, packed as one input (u16 little-endian length of
config.json, config.json, model.safetensors).

    python fuzz/seed_hf.py    # needs numpy and safetensors
"""
import json
import pathlib
import struct

import numpy as np
from safetensors.numpy import load_file, save

ROOT = pathlib.Path(__file__).resolve().parent.parent
D, H, HKV, HD, FF, V = 8, 2, 1, 4, 8, 8


def shape(name, cfg):
    tail = name.split(".")[-2]
    if name.endswith("bias"):
        return {"q_proj": (H * HD,), "k_proj": (HKV * HD,), "v_proj": (HKV * HD,)}[tail]
    return {
        "embed_tokens": (V, D), "lm_head": (V, D),
        "q_proj": (H * HD, D), "k_proj": (HKV * HD, D), "v_proj": (HKV * HD, D), "o_proj": (D, H * HD),
        "gate_proj": (FF, D), "up_proj": (FF, D), "down_proj": (D, FF),
        "q_norm": (HD,), "k_norm": (HD,),
    }.get(tail, (D,))


for arch in ["llama", "qwen2", "qwen3", "gemma3"]:
    folder = ROOT / "testdata/tiny" / arch / "hf"
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_size=D, num_attention_heads=H, num_key_value_heads=HKV, head_dim=HD,
               intermediate_size=FF, vocab_size=V, num_hidden_layers=1, max_position_embeddings=16)
    if "layer_types" in cfg:
        cfg["layer_types"] = cfg["layer_types"][:1]
    names = [n for n in load_file(folder / "model.safetensors") if ".layers." not in n or ".layers.0." in n]
    rng = np.random.default_rng(0)
    tensors = {n: rng.standard_normal(shape(n, cfg)).astype(np.float32) for n in names}
    config = json.dumps(cfg, separators=(",", ":")).encode()
    blob = struct.pack("<H", len(config)) + config + save(tensors)
    (ROOT / "fuzz/corpus/hf" / f"{arch}.bin").write_bytes(blob)
    print(arch, len(blob), "bytes")
