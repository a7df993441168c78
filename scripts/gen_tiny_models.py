"""Builds the tiny random-weight test models and their HuggingFace goldens.

For each architecture (llama, qwen2, qwen3, gemma3) this makes a model with
transformers from a small config (hidden 64, 3 layers, 4 heads, 2 KV heads,
vocab 512; gemma3 with head_dim 32, a sliding window of 4 on layers 0-1 and
a global layer 2), perturbs every parameter so norms and biases are not
trivial, and writes under testdata/tiny/<arch>/:

  hf/config.json, hf/model.safetensors   the HuggingFace folder (float32)
  <arch>-f32.gguf                        GGUF as llama.cpp's converter lays it out:
                                         llama Q/K rows permuted for interleaved
                                         rope, gemma norms stored as 1 + w
  <arch>-q8_0.gguf                       the same with 2-D weights in Q8_0
                                         (gguf package quantizer)
  golden.json                            transformers' logits for a fixed token
                                         sequence (float32, eager attention)

Run: python scripts/gen_tiny_models.py   (needs torch, transformers, gguf, numpy)
"""

import json
import os
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import gguf  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

OUT = Path(__file__).resolve().parent.parent / "testdata" / "tiny"
TOKENS = [1, 17, 255, 3, 400, 511, 42, 7, 99, 128, 300, 5]
VOCAB = 512


def configs():
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256)
    return {
        "llama": (LlamaForCausalLM, LlamaConfig(**common, rms_norm_eps=1e-5, rope_theta=10000.0,
                                                 tie_word_embeddings=False, attention_bias=False)),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common, rms_norm_eps=1e-6, rope_theta=10000.0,
                                                 tie_word_embeddings=True)),
        "qwen3": (Qwen3ForCausalLM, Qwen3Config(**common, head_dim=16, rms_norm_eps=1e-6, rope_theta=10000.0,
                                                 tie_word_embeddings=True)),
        "gemma3": (Gemma3ForCausalLM, Gemma3TextConfig(
            **common, head_dim=32, rms_norm_eps=1e-6, sliding_window=4, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
            final_logit_softcapping=None, attn_logit_softcapping=None, tie_word_embeddings=True)),
    }


def gguf_name(arch, hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer, rest = parts[2], ".".join(parts[3:])
    gemma = arch == "gemma3"
    table = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight" if gemma else "ffn_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    return f"blk.{layer}.{table[rest]}"


def permute(w, n_head):
    """llama.cpp's converter: rotate-half rows → interleaved pairs."""
    out, d = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, d).swapaxes(1, 2).reshape(out, d)


def write_gguf(path, arch, cfg, tensors, quant):
    w = gguf.GGUFWriter(str(path), arch)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_name(f"plumb tiny {arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if arch == "gemma3":
        rp = cfg.rope_parameters
        w.add_rope_freq_base(rp["full_attention"]["rope_theta"])
        w.add_float32("gemma3.rope.local.freq_base", rp["sliding_attention"]["rope_theta"])
        w.add_sliding_window(cfg.sliding_window)
        w.add_array("gemma3.attention.sliding_window_pattern", [t == "sliding_attention" for t in cfg.layer_types])
        w.add_float32("gemma3.attention.query_pre_attn_scalar", float(cfg.query_pre_attn_scalar))
    else:
        rp = getattr(cfg, "rope_parameters", None) or {}
        w.add_rope_freq_base(rp.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    w.add_file_type(7 if quant else 0)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, VOCAB)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [1] * (VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, arr in tensors:
        if quant and arr.ndim == 2:
            w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    torch.manual_seed(0)
    for arch, (cls, cfg) in configs().items():
        cfg._attn_implementation = "eager"
        torch.manual_seed(1234)
        model = cls(cfg).float().eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.05))
        d = OUT / arch
        (d / "hf").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d / "hf", safe_serialization=True)
        with torch.no_grad():
            out = model(torch.tensor([TOKENS]), use_cache=False)
        logits = out.logits[0].float().numpy()
        golden = {"arch": arch, "tokens": TOKENS, "vocab": VOCAB, "logits": logits.tolist(),
                  "argmax": logits.argmax(-1).tolist(), "transformers": transformers.__version__,
                  "torch": torch.__version__}
        (d / "golden.json").write_text(json.dumps(golden))

        tensors = []
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for hf, t in model.state_dict().items():
            if hf == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            a = t.float().numpy().copy()
            name = gguf_name(arch, hf)
            if arch == "llama" and name.endswith("attn_q.weight"):
                a = permute(a, cfg.num_attention_heads)
            if arch == "llama" and name.endswith("attn_k.weight"):
                a = permute(a, cfg.num_key_value_heads)
            if arch == "gemma3" and "norm" in name:
                a = a + 1.0
            tensors.append((name, np.ascontiguousarray(a, dtype=np.float32)))
        write_gguf(d / f"{arch}-f32.gguf", arch, cfg, tensors, quant=False)
        write_gguf(d / f"{arch}-q8_0.gguf", arch, cfg, tensors, quant=True)
        print(f"{arch}: head_dim {hd}, argmax {golden['argmax']}")


if __name__ == "__main__":
    main()
