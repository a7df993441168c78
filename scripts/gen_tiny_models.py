"""Builds the tiny random-weight test models and their HuggingFace goldens.

For each test model (see configs(): llama, qwen2, qwen3, gemma3, gemma2,
llama3, olmo2, phi3; phi3long, phi3 with LongRoPE over a trained context of 4
of 256, written as llama.cpp's converter writes it — rope_factors_long/short
tensors, rope.scaling.attn_factor, original_context_length — whose
golden.json adds "switch": transformers' greedy continuation of a 3-token
prompt with every step's logits, across its short-to-long switch; qwen3yarn,
qwen3 with YaRN rope scaling, GGUF rope.scaling.type yarn, factor and
original_context_length; and the mixtures of experts mixtral, qwen2moe,
qwen3moe) this
makes a model with transformers from a small config (hidden 64, 3 layers, 4
heads, 2 KV heads, vocab 512; gemma3 with head_dim 32, a sliding window of 4
on layers 0-1 and a global layer 2; gemma2 with head_dim 32, a window of 4 on
layers 0 and 2, attention and final softcaps 1.5 and 4.0; llama3 is llama with
Llama 3 rope scaling (factor 8, low/high frequency factors 1 and 4, original
context 64, so the 8 rotary pairs fall in all three bands); olmo2 with its
post-norms and whole-row q/k norms), perturbs every parameter so norms and
biases are not trivial, and writes under testdata/tiny/<name>/:

  hf/config.json, hf/model.safetensors   the HuggingFace folder (float32)
  <arch>-f32.gguf                        GGUF as llama.cpp's converter lays it out:
                                         llama Q/K rows permuted for interleaved
                                         rope, gemma norms stored as 1 + w
  <arch>-q8_0.gguf                       the same with 2-D weights in Q8_0
                                         (gguf package quantizer)
  golden.json                            transformers' logits for a fixed token
                                         sequence (float32, eager attention)

GGUF metadata (all archs): general.architecture, general.name,
<arch>.context_length, .embedding_length, .block_count, .feed_forward_length,
.attention.head_count, .attention.head_count_kv, .attention.key_length,
.attention.value_length, .attention.layer_norm_rms_epsilon, .rope.freq_base,
general.file_type (0 = F32, 7 = Q8_0) and a stub llama-style tokenizer
(tokenizer.ggml.model "llama", tokens "<unk>" "<s>" "</s>" "t3".."t511",
zero scores, types 2/3/3/1..., bos 1, eos 2). gemma3 adds
gemma3.attention.sliding_window (u32, 4), gemma3.attention.sliding_window_pattern
(bool per layer, true = sliding; the gguf package's SLIDING_WINDOW_PATTERN key --
llama.cpp's own gemma3 loader ignores it and assumes every 6th layer global,
which for 3 layers also makes them all sliding), gemma3.rope.local.freq_base
(f32, rope theta of the sliding layers; plumb's own key) and
gemma3.attention.query_pre_attn_scalar (f32; plumb's own key, llama.cpp derives
the scale from key_length). rope.freq_base is the global layers' theta.
The mixtures of experts add <arch>.expert_count, .expert_used_count and (qwen)
.expert_feed_forward_length, (qwen2moe) .expert_shared_feed_forward_length, as
llama.cpp's converter writes them; mixtral's architecture is llama. Experts are
stacked [E, rows, cols] (ffn_gate_exps, ffn_up_exps, ffn_down_exps), and the
routers (ffn_gate_inp, ffn_gate_inp_shexp) stay F32 in the Q8_0 file, as the
converter and llama-quantize keep them; transformers' GGUF loader reads none of
the three (mixtral's it reads as a dense llama), so their layout is checked by
the tensor comparison and by llama.cpp (crates/cli/tests/tiny_llamacpp.rs).
gemma2 adds gemma2.attention.sliding_window, gemma2.attn_logit_softcapping and
gemma2.final_logit_softcapping (llama.cpp's keys; its query scale is
key_length^-1/2, which the config matches). llama3 is written as
general.architecture "llama" with llama.cpp's converter's rope_freqs.weight
tensor: one f32 divisor per rotary pair (checked against transformers' own
llama3 frequencies). olmo2's GGUF cannot be loaded by transformers; its layout
is checked by the tensor comparison alone.

After writing, every model is checked (see self_check): the F32 GGUF's tensors
read back with gguf.GGUFReader and un-converted must equal the HF weights
exactly, our tensor names must agree with gguf.get_tensor_name_map, and
transformers' own GGUF loader (AutoModelForCausalLM.from_pretrained(dir,
gguf_file=...)) must reproduce the golden logits from the F32 GGUF -- the
independent proof of the layout conventions. The script exits non-zero if a
check fails.

Run: python scripts/gen_tiny_models.py [--out DIR] [--check-only] [--only NAME...]
     (needs torch, transformers, gguf, numpy; deterministic: a rerun gives
     byte-identical files with the same torch/transformers versions)
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import gguf  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
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
        # Softcaps small enough that tanh bends the scores and logits of a
        # random model; the query scale is 1/sqrt(head_dim), which is what
        # llama.cpp's gemma2 graph uses (it reads no key for it).
        "gemma2": (Gemma2ForCausalLM, Gemma2Config(
            **common, head_dim=32, rms_norm_eps=1e-6, sliding_window=4, query_pre_attn_scalar=32,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            attn_logit_softcapping=1.5, final_logit_softcapping=4.0, tie_word_embeddings=True)),
        # Llama 3's rope scaling at a scale where the tiny model's head_dim
        # of 16 gives pairs in all three bands: kept (wavelength < 16),
        # smoothed (16..64) and divided by the factor (> 64).
        "llama3": (LlamaForCausalLM, LlamaConfig(
            **common, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
        "olmo2": (Olmo2ForCausalLM, Olmo2Config(**common, rms_norm_eps=1e-6, attention_bias=False,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                 tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                                                 eos_token_id=2)),
        # q, k, v in one matrix and gate, up in another; no sliding window
        # (llama.cpp does not apply phi3's).
        "phi3": (Phi3ForCausalLM, Phi3Config(**common, rms_norm_eps=1e-5, sliding_window=None,
                                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                              tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                                              eos_token_id=2)),
        # phi3 with LongRoPE: a trained context of 4 positions stretched to 256,
        # so transformers takes the long factors for any step that reaches
        # past position 3 (the 12-token golden) and the short ones for a
        # prompt of 3 (the switch golden), and llama.cpp, whose contexts are
        # multiples of 256, always the long ones. Attention factor
        # sqrt(1 + ln 64 / ln 4) = 2.
        "phi3long": (Phi3ForCausalLM, Phi3Config(
            **common, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False, pad_token_id=0,
            bos_token_id=1, eos_token_id=2, original_max_position_embeddings=4,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                             "original_max_position_embeddings": 4,
                             "short_factor": [1.0, 1.02, 1.05, 1.1, 1.2, 1.4, 1.7, 2.0],
                             "long_factor": [1.0, 1.5, 2.5, 4.0, 8.0, 16.0, 32.0, 64.0]})),
        # qwen3 with YaRN rope scaling: factor 4 over a trained context of 64, so the
        # head's 8 rotary pairs fall on both sides of the ramp and on it.
        "qwen3yarn": (Qwen3ForCausalLM, Qwen3Config(
            **common, head_dim=16, rms_norm_eps=1e-6, tie_word_embeddings=True,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64})),
        # Mixtures of experts. mixtral: 4 experts of the FFN's width, 2 per
        # token, weights renormalized (always). qwen2moe: 4 experts 32 wide,
        # 2 per token, probabilities used as they are (llama.cpp's graph never
        # renormalizes them), a shared expert 96 wide. qwen3moe: 8 experts 32
        # wide, 3 per token, renormalized (llama.cpp's graph always does).
        "mixtral": (MixtralForCausalLM, MixtralConfig(**common, rms_norm_eps=1e-5, num_local_experts=4,
                                                       num_experts_per_tok=2, tie_word_embeddings=False,
                                                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                                                       sliding_window=None)),
        "qwen2moe": (Qwen2MoeForCausalLM, Qwen2MoeConfig(
            **common, rms_norm_eps=1e-6, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=96, norm_topk_prob=False, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
        "qwen3moe": (Qwen3MoeForCausalLM, Qwen3MoeConfig(
            **common, head_dim=16, rms_norm_eps=1e-6, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
            norm_topk_prob=True, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    }


# The GGUF architecture of each test model (its folder name otherwise).
GGUF_ARCH = {"llama3": "llama", "mixtral": "llama", "qwen3yarn": "qwen3", "phi3long": "phi3"}


# Architectures whose GGUF files transformers cannot load.
NO_TRANSFORMERS_GGUF = {"olmo2", "mixtral", "qwen2moe", "qwen3moe"}


def gguf_arch(arch):
    return GGUF_ARCH.get(arch, arch)


def llama3_rope_factors(cfg):
    """llama.cpp's converter writes Llama 3's rope scaling as a rope_freqs tensor: one
    divisor per rotary pair (1 for short wavelengths, the factor for long ones, a
    blend between)."""
    rp = cfg.rope_parameters
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    inv = 1.0 / (rp["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    old, lo, hi, factor = (rp["original_max_position_embeddings"], rp["low_freq_factor"], rp["high_freq_factor"],
                           rp["factor"])
    out = []
    for f in inv.tolist():
        wavelen = 2 * np.pi / f
        if wavelen < old / hi:
            out.append(1.0)
        elif wavelen > old / lo:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def gguf_name(arch, hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer, rest = parts[2], ".".join(parts[3:])
    # gemma and olmo2 name the norm after attention post_attention_layernorm;
    # llama's is the FFN's input norm.
    gemma = arch in ("gemma2", "gemma3", "olmo2")
    table = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
        "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
        "self_attn.v_proj.bias": "attn_v.bias",
        "self_attn.qkv_proj.weight": "attn_qkv.weight", "mlp.gate_up_proj.weight": "ffn_up.weight",
        "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight" if gemma else "ffn_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
        # Mixtures of experts, as transformers holds them in memory (experts
        # stacked, gate and up in one) and as llama.cpp's converter names them.
        "mlp.gate.weight": "ffn_gate_inp.weight", "mlp.experts.down_proj": "ffn_down_exps.weight",
        "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
        "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
        "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
        "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    }
    return f"blk.{layer}.{table[rest]}"


def expert_tensors(arch, hf, t):
    """A stack of experts' gate and up [E, 2ff, d] as the converter splits it: gate the
    first half of each expert's rows, up the second (transformers chunks them so)."""
    layer = hf.split(".")[2]
    ff = t.shape[1] // 2
    return [(f"blk.{layer}.ffn_gate_exps.weight", t[:, :ff, :]), (f"blk.{layer}.ffn_up_exps.weight", t[:, ff:, :])]


# Tensors llama.cpp's converter and quantizer keep in F32: the routers.
KEEP_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


def permute(w, n_head):
    """llama.cpp's converter: rotate-half rows → interleaved pairs."""
    out, d = w.shape
    return w.reshape(n_head, 2, out // n_head // 2, d).swapaxes(1, 2).reshape(out, d)


def longrope_attn_factor(cfg):
    """llama.cpp's converter: sqrt(1 + ln(stretch) / ln(trained context)), the
    stretch being max_position_embeddings over the trained context."""
    orig = cfg.rope_parameters["original_max_position_embeddings"]
    scale = cfg.max_position_embeddings / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0


def longrope_tensors(cfg):
    """The converter's rope_factors_long and rope_factors_short: the factors as f32."""
    rp = cfg.rope_parameters
    return [("rope_factors_long.weight", np.array(rp["long_factor"], dtype=np.float32)),
            ("rope_factors_short.weight", np.array(rp["short_factor"], dtype=np.float32))]


def switch_golden(model, prompt, n):
    """transformers' greedy continuation of `prompt` by n tokens through its KV
    cache, one token a step, with every step's logits: a longrope model's
    prompt within the trained context is rotated by the short factors, the
    steps past it by the long ones."""
    ids, steps, past = list(prompt), [], None
    with torch.no_grad():
        x = torch.tensor([prompt])
        for _ in range(n):
            out = model(x, past_key_values=past, use_cache=True)
            past = out.past_key_values
            row = out.logits[0, -1].float()
            steps.append(row.numpy().tolist())
            ids.append(int(row.argmax()))
            x = torch.tensor([[ids[-1]]])
    return {"prompt": list(prompt), "generated": ids[len(prompt):], "logits": steps}


def write_gguf(path, arch, cfg, tensors, quant):
    w = gguf.GGUFWriter(str(path), gguf_arch(arch))
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    # llama.cpp gives models whose name contains "phi3" or "phi-3" special token attributes
    # that need Phi-3's own vocabulary, which the stub tokenizer does not have.
    w.add_name("plumb tiny phi 3" if gguf_arch(arch) == "phi3" else f"plumb tiny {arch}")
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
    elif gguf_arch(arch) == "phi3":
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_rope_dimension_count(hd)
        if arch == "phi3long":
            # As llama.cpp's phi3 converter: the trained context, the attention
            # factor it derives from the stretch, and the factor tensors.
            orig = cfg.rope_parameters["original_max_position_embeddings"]
            w.add_rope_scaling_orig_ctx_len(orig)
            w.add_rope_scaling_attn_factors(longrope_attn_factor(cfg))
    elif arch == "qwen3yarn":
        rp = cfg.rope_parameters
        w.add_rope_freq_base(rp["rope_theta"])
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rp["factor"])
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    elif arch in ("mixtral", "qwen2moe", "qwen3moe"):
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_expert_count(cfg.num_local_experts if arch == "mixtral" else cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        if arch != "mixtral":
            w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if arch == "qwen2moe":
            w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    elif arch == "gemma2":
        w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
        w.add_sliding_window(cfg.sliding_window)
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
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
        if quant and arr.ndim >= 2 and not name.endswith(KEEP_F32):
            w.add_tensor(name, gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def generate(out_dir, archs):
    torch.manual_seed(0)
    for arch, (cls, cfg) in configs().items():
        if arch not in archs:
            continue
        cfg._attn_implementation = "eager"
        torch.manual_seed(1234)
        model = cls(cfg).float().eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.05))
        d = out_dir / arch
        (d / "hf").mkdir(parents=True, exist_ok=True)
        model.save_pretrained(d / "hf", safe_serialization=True)
        with torch.no_grad():
            out = model(torch.tensor([TOKENS]), use_cache=False)
        logits = out.logits[0].float().numpy()
        golden = {"arch": arch, "tokens": TOKENS, "vocab": VOCAB, "logits": logits.tolist(),
                  "argmax": logits.argmax(-1).tolist(), "transformers": transformers.__version__,
                  "torch": torch.__version__}
        if arch == "phi3long":
            golden["switch"] = switch_golden(model, TOKENS[:3], 12)
        (d / "golden.json").write_text(json.dumps(golden))

        tensors = []
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        for hf, t in model.state_dict().items():
            if hf == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            if hf.endswith("mlp.experts.gate_up_proj"):
                tensors += [(n, np.ascontiguousarray(a, dtype=np.float32))
                            for n, a in expert_tensors(arch, hf, t.float().numpy())]
                continue
            name = gguf_name(arch, hf)
            tensors.append((name, convert(arch, name, t.float().numpy().copy(), cfg)))
        if arch == "llama3":
            tensors.append(("rope_freqs.weight", llama3_rope_factors(cfg)))
        if arch == "phi3long":
            tensors += longrope_tensors(cfg)
        write_gguf(d / f"{arch}-f32.gguf", arch, cfg, tensors, quant=False)
        write_gguf(d / f"{arch}-q8_0.gguf", arch, cfg, tensors, quant=True)
        print(f"{arch}: head_dim {hd}, argmax {golden['argmax']}")


def convert(arch, name, a, cfg):
    """The converter's layout changes (HF tensor → GGUF tensor), as generate() applies them."""
    if gguf_arch(arch) == "llama" and name.endswith("attn_q.weight"):
        a = permute(a, cfg.num_attention_heads)
    if gguf_arch(arch) == "llama" and name.endswith("attn_k.weight"):
        a = permute(a, cfg.num_key_value_heads)
    if arch in ("gemma2", "gemma3") and "norm" in name:
        a = a + 1.0
    return np.ascontiguousarray(a, dtype=np.float32)


def logits_of(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens]), use_cache=False).logits[0].float().numpy()


def self_check(d, arch):
    """Checks d's files against each other; returns a list of failures (printing a report)."""
    fails = []
    golden = json.loads((d / "golden.json").read_text())
    gl = np.array(golden["logits"], dtype=np.float64)
    scale = float(np.abs(gl).max())
    hf_cfg = AutoConfig.from_pretrained(d / "hf")
    hf_model = AutoModelForCausalLM.from_pretrained(d / "hf", dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    diff = float(np.abs(logits_of(hf_model, golden["tokens"]) - gl).max())
    print(f"  [{arch}] HF folder reloaded vs golden: max|d| {diff:.3g}")
    if diff > 1e-5 * scale:
        fails.append(f"{arch}: HF folder does not reproduce golden ({diff})")

    # 1. Tensors read back with the gguf package equal the HF weights put through convert() bit
    #    for bit, and convert() is what llama.cpp does (checked by 2. below); names agree
    #    with the gguf package's own HF→GGUF name map.
    sd = {k: v.float().numpy() for k, v in hf_model.state_dict().items()}
    nmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, gguf_arch(arch).upper()), hf_cfg.num_hidden_layers)
    expected = {}
    for hf in sd:
        if hf == "lm_head.weight" and hf_cfg.tie_word_embeddings:
            continue
        if hf.endswith("mlp.experts.gate_up_proj"):
            # transformers' in-memory stack; the name map knows the per-expert names it saves.
            expected.update(expert_tensors(arch, hf, sd[hf]))
            continue
        ours = gguf_name(arch, hf)
        if not hf.endswith("mlp.experts.down_proj"):
            theirs = nmap.get_name(hf, try_suffixes=(".weight", ".bias"))
            if ours != theirs:
                fails.append(f"{arch}: {hf} → {ours}, gguf name map says {theirs}")
        expected[ours] = convert(arch, ours, sd[hf], hf_cfg)
    reader = gguf.GGUFReader(str(d / f"{arch}-f32.gguf"))
    rope_extra = {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}
    names = [t.name for t in reader.tensors if t.name not in rope_extra]
    if sorted(names) != sorted(expected):
        fails.append(f"{arch}: GGUF tensors {sorted(set(names) ^ set(expected))} differ from HF's")
    worst = 0.0
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            # The divisors against transformers' own llama3 frequencies: HF's
            # inv_freq is the plain one divided by them.
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
            plain = 1.0 / (hf_cfg.rope_parameters["rope_theta"]
                           ** (np.arange(0, len(t.data) * 2, 2, dtype=np.float32) / (len(t.data) * 2)))
            hf_inv = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")[0].numpy()
            rel = float(np.abs(plain / np.array(t.data) - hf_inv).max() / hf_inv.max())
            print(f"  [{arch}] rope_freqs vs transformers' llama3 inv_freq: max rel |d| {rel:.3g}")
            if rel > 1e-6:
                fails.append(f"{arch}: rope_freqs disagrees with transformers' llama3 frequencies ({rel})")
            continue
        if t.name.startswith("rope_factors_"):
            key = "long_factor" if "long" in t.name else "short_factor"
            if list(np.array(t.data, dtype=np.float32)) != list(np.array(hf_cfg.rope_parameters[key], dtype=np.float32)):
                fails.append(f"{arch}: {t.name} differs from the config's {key}")
            continue
        if t.name not in expected:
            continue
        a = np.array(t.data, dtype=np.float32)
        ref = expected[t.name]
        if a.shape != ref.shape:
            fails.append(f"{arch}: {t.name} shape {a.shape} vs HF {ref.shape}")
            continue
        worst = max(worst, float(np.abs(a - ref).max()))
    print(f"  [{arch}] F32 GGUF tensors (gguf reader) vs converted HF weights: max|d| {worst:.3g}")
    if worst != 0.0:
        fails.append(f"{arch}: F32 GGUF tensors differ from HF weights by {worst}")
    fields = reader.fields
    meta = {k: fields[k].contents() for k in fields if not k.startswith("tokenizer.")}
    print(f"  [{arch}] metadata: " + ", ".join(f"{k}={v}" for k, v in meta.items() if not k.startswith("GGUF.")))

    # 2. transformers' own GGUF loader: (a) config from the GGUF as transformers maps it,
    #    (b) that config plus the keys transformers does not map but our GGUF carries,
    #    (c) the HF config (isolates the weight conventions).
    for q in ("f32", "q8_0"):
        fn = f"{arch}-{q}.gguf"
        tol = 1e-5 * scale if q == "f32" else 0.1 * scale
        results = {}
        try:
            m = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, dtype=torch.float32,
                                                     attn_implementation="eager").eval()
            results["gguf config as transformers maps it"] = float(np.abs(logits_of(m, golden["tokens"]) - gl).max())
        except Exception as e:  # transformers may not map every key (qwen3: key_length → head_dim)
            results["gguf config as transformers maps it"] = f"not loadable: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        try:
            cfg = AutoConfig.from_pretrained(d, gguf_file=fn)
        except Exception:
            if arch not in NO_TRANSFORMERS_GGUF:
                raise
            cfg = hf_cfg
        ignored = {k: getattr(cfg, k, None) for k in ("head_dim", "layer_types", "query_pre_attn_scalar")
                   if getattr(cfg, k, None) != getattr(hf_cfg, k, None)}
        if ignored:
            print(f"  [{arch}] transformers' config from {fn} differs from the HF config in {ignored}")
        f = gguf.GGUFReader(str(d / fn)).fields
        cfg.head_dim = int(f[f"{gguf_arch(arch)}.attention.key_length"].contents())
        if arch == "gemma2":
            # llama.cpp scales gemma2's queries by key_length^-1/2; transformers' GGUF config
            # takes its own default (256).
            cfg.query_pre_attn_scalar = cfg.head_dim
            # ... and does not map the softcap keys.
            cfg.attn_logit_softcapping = float(f["gemma2.attn_logit_softcapping"].contents())
            cfg.final_logit_softcapping = float(f["gemma2.final_logit_softcapping"].contents())
        if gguf_arch(arch) == "phi3":
            # The stub tokenizer names no padding token; transformers' default (32000) is past
            # the tiny vocabulary. The padding index changes no logit.
            cfg.pad_token_id = hf_cfg.pad_token_id
        if arch in ("llama3", "qwen3yarn", "phi3long"):
            # transformers' GGUF loader reads neither rope_freqs, the yarn keys nor
            # the longrope factors.
            cfg.rope_parameters = hf_cfg.rope_parameters
            cfg.original_max_position_embeddings = getattr(hf_cfg, "original_max_position_embeddings", None)
        if arch == "gemma3":
            cfg.layer_types = ["sliding_attention" if s else "full_attention"
                               for s in f["gemma3.attention.sliding_window_pattern"].contents()]
            scalar = float(f["gemma3.attention.query_pre_attn_scalar"].contents())
            cfg.query_pre_attn_scalar = int(scalar) if scalar.is_integer() else scalar
            cfg.rope_parameters["sliding_attention"]["rope_theta"] = float(f["gemma3.rope.local.freq_base"].contents())
            cfg.rope_parameters["full_attention"]["rope_theta"] = float(f["gemma3.rope.freq_base"].contents())
        must = []
        for what, c in (("gguf config + keys transformers ignores", cfg), ("gguf weights + HF config", hf_cfg)):
            try:
                m = AutoModelForCausalLM.from_pretrained(d, gguf_file=fn, config=c, dtype=torch.float32,
                                                         attn_implementation="eager").eval()
            except Exception as e:
                # transformers reads GGUF files of some architectures only (olmo2: none); the
                # layout is then checked by 1. alone (names and tensors against HF's).
                if arch not in NO_TRANSFORMERS_GGUF:
                    raise
                results[what] = f"not loadable: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                continue
            results[what] = float(np.abs(logits_of(m, golden["tokens"]) - gl).max())
            # transformers reads a mixtral GGUF (architecture llama) as a dense llama, without
            # its experts: reported, not required.
            if not (arch == "mixtral" and c is cfg):
                must.append(what)
        for k, v in results.items():
            shown = f"max|d| {v:.3g}" if isinstance(v, float) else v
            print(f"  [{arch}] transformers loads {fn} ({k}): {shown}   (max|logit| {scale:.3g})")
        for k in must:
            if results[k] > tol:
                fails.append(f"{arch}: transformers from {fn} ({k}) differs by {results[k]} > {tol}")
    return fails


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="output folder (default: testdata/tiny)")
    ap.add_argument("--check-only", action="store_true", help="only check the files already there")
    ap.add_argument("--only", nargs="+", metavar="ARCH", help="only these test models (default: all)")
    args = ap.parse_args()
    archs = args.only or list(configs())
    if not args.check_only:
        generate(args.out, archs)
    fails = []
    for arch in archs:
        fails += self_check(args.out / arch, arch)
    if fails:
        print("SELF-CHECK FAILED:\n  " + "\n  ".join(fails))
        sys.exit(1)
    print("self-check passed")


if __name__ == "__main__":
    main()
