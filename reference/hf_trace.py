#!/usr/bin/env python3
"""Trace a model's forward pass in Hugging Face transformers: plumb's oracle.

Runs a decoder model in transformers (eager attention, float32 by default, on
the CPU), captures every stage of one forward pass over a prompt or a list of
token ids, and writes a plumb trace file, format 1 (docs/TRACE_FORMAT.md): one
safetensors file whose tensors are named by stage key (``embedding``,
``blk.3.ffn_mul``, ``logits``) and whose ``__metadata__`` carries
``plumb.format``, ``plumb.engine``, ``plumb.model`` (+ ``plumb.model_sha256``
for a GGUF file), ``plumb.arch``, ``plumb.prompt``, ``plumb.tokens``,
``plumb.precision`` and ``plumb.stats`` (float64 statistics of every traced
stage, whole tensor and last token). ``plumb diff`` compares such a file with
a trace from plumb (or any other engine) stage by stage.

Usage::

    python reference/hf_trace.py MODEL (-p PROMPT | --tokens 1,2,3) -o OUT.safetensors
        [--no-bos] [--stages GLOBS] [--layers 0-3,7] [--stats-only]
        [--dtype float32|bfloat16|float16] [--device cpu|cuda]

MODEL is a Hugging Face model folder (config.json + safetensors) or a GGUF
file (loaded with ``from_pretrained(folder, gguf_file=name)``, which
dequantizes every tensor). With ``-p`` the prompt is tokenized with the
model's own tokenizer, special tokens (BOS) added unless ``--no-bos``; with
``--tokens`` the ids are fed as given. ``--stages`` takes comma-separated
globs matched against the stage name without its ``blk.L.`` prefix (e.g.
``attn_*,logits``; the aliases of docs/TRACE_FORMAT.md such as ``ffn_out`` are
accepted), ``--layers`` a comma list of layers and ranges; stages left out
are neither saved nor given stats. ``--stats-only`` writes the statistics
without the tensors. stdout stays quiet except for a final
``wrote OUT (N tensors, M stats)``; ``-v`` prints one line per stage to
stderr. The file is written to a temporary name and renamed.

Stages (f32, row-major, batch dimension dropped; T tokens, d hidden size,
H / Hkv query / key-value heads, hd head dim, ff FFN width)::

    embedding        [T,d]     model.model.embed_tokens output (gemma3's module
                               already multiplies by sqrt(d))
    blk.L.attn_norm  [T,d]     input_layernorm output (not olmo2)
    blk.L.q_proj     [T,H*hd]  self_attn.q_proj output (bias included; phi3: the
                               first H*hd columns of self_attn.qkv_proj's, then k, v)
    blk.L.k_proj     [T,Hkv*hd], blk.L.v_proj likewise
    blk.L.q_norm     [T,H*hd]  self_attn.q_norm output, heads flattened (qwen3, gemma3;
                               olmo2's norms the whole row)
    blk.L.k_norm     [T,Hkv*hd] self_attn.k_norm output            (qwen3, gemma3, olmo2)
    blk.L.q_rope     [T,H*hd]  outputs of the modeling file's apply_rotary_pos_emb,
    blk.L.k_rope     [T,Hkv*hd]  [B,H,T,hd] transposed to [T, H*hd]
    blk.L.attn_scores [H,T,Tkv] query·keyᵀ·scaling (+ tanh softcap when the
                               attention function is given one), before mask and
                               softmax, recomputed from the query/key arguments of
                               the modeling file's eager_attention_forward (kv heads
                               repeated for GQA); masked entries keep their raw values
    blk.L.attn_probs [H,T,Tkv] the attention weights eager_attention_forward returns
                               (mask + softmax; 0 at masked and out-of-window keys)
    blk.L.attn_context [T,H*hd] input of self_attn.o_proj
    blk.L.attn_out   [T,d]     self_attn.o_proj output
    blk.L.attn_post_norm [T,d] post_attention_layernorm output (gemma2, gemma3, olmo2)
    blk.L.attn_residual [T,d]  residual after attention = input of the FFN norm
                               (olmo2: of mlp.gate_proj)
    blk.L.ffn_norm   [T,d]     the FFN input norm's output (not olmo2)
    blk.L.ffn_gate   [T,ff]    mlp.gate_proj output (phi3: first half of gate_up_proj's)
    blk.L.ffn_up     [T,ff]    mlp.up_proj output (phi3: second half)
    blk.L.ffn_act    [T,ff]    mlp.act_fn output (computed as act_fn(gate) when
                               act_fn is a plain function, not a module)
    blk.L.ffn_mul    [T,ff]    input of mlp.down_proj
    blk.L.ffn_down   [T,d]     mlp.down_proj output
    blk.L.ffn_post_norm [T,d]  post_feedforward_layernorm output (gemma2, gemma3, olmo2)
    blk.L.layer_out  [T,d]     the decoder layer's output hidden states
    final_norm       [T,d]     model.model.norm output
    logits           [T,vocab] the model's output logits (after any final softcap)

Which module is which norm depends on the architecture:

    arch                 FFN input norm (ffn_norm)   post-attention norm (attn_post_norm)
    llama, qwen2, qwen3  post_attention_layernorm    -
    gemma2, gemma3       pre_feedforward_layernorm   post_attention_layernorm
    olmo2                -                           post_attention_layernorm
    phi3                 post_attention_layernorm    -

so attn_residual is the input of post_attention_layernorm for llama/qwen, of
pre_feedforward_layernorm for gemma and of the FFN itself for olmo2. ``plumb.arch`` maps
config.model_type (gemma3_text -> gemma3). A stage an architecture lacks is
absent from the trace.

How it is captured: forward hooks on the modules above, plus two wrapped
functions of the attention class's own modeling module (e.g.
``transformers.models.gemma3.modeling_gemma3``): ``apply_rotary_pos_emb``
(q_rope/k_rope) and ``eager_attention_forward`` (attn_scores/attn_probs).
The attention forward looks both up as module globals at call time, so
replacing the globals for the duration of the forward pass sees every call;
they are restored afterwards. The model is loaded with
``attn_implementation="eager"`` so the eager function is the one used.

GGUF files: transformers' GGUF loader leaves some config fields at their
Hugging Face defaults whatever the file says: head_dim for qwen3
(attention.key_length), and for gemma3 query_pre_attn_scalar, the
sliding/full layer pattern and the local RoPE base. The script reads those
keys from the GGUF metadata, as llama.cpp does, and notes each change on
stderr. (The released Gemma 3 270M GGUF carries values equal to the
defaults, so nothing changes for it.)

Statistics (``plumb.stats``): for every traced stage, ``shape``, then over
the whole tensor and again over the last token's slice (``last``: row T-1
along axis 0, or ``[:, T-1, :]`` for attn_scores/attn_probs): ``count`` (all
elements), ``mean``, ``std`` (population), ``min``, ``max``, ``abs_max``,
``l2``, ``nan``, ``inf``, computed in float64 over the finite elements (null
when there are none).

Requires torch, transformers, numpy, safetensors (and gguf for GGUF files).
Nothing is downloaded: HF_HUB_OFFLINE is forced on.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from trace_format import Selection, UsageError, save_trace, sha256_file  # noqa: E402  (same folder)
from trace_format import add_common_args, parse_common_args, parse_layers, parse_stages, parse_tokens  # noqa: E402


# Stages whose token axis is 1 ([H, T, Tkv]); all others have it at 0.

# Command-line aliases (docs/TRACE_FORMAT.md).

ARCH_MAP = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "gemma3_text": "gemma3",
    "mixtral": "llama",
    "qwen2_moe": "qwen2moe",
    "qwen3_moe": "qwen3moe",
    "olmo2": "olmo2",
    "phi3": "phi3",
}

# Layout of the q_norm/k_norm module outputs, used only when the shape
# cannot tell (H == T): qwen3 normalizes [B,T,H,hd] before the transpose,
# gemma3 [B,H,T,hd] after it.
NORM_LAYOUT_DEFAULT = {"qwen3": "BTHD", "gemma3": "BHTD"}


# --------------------------------------------------------------------------
# selection


# --------------------------------------------------------------------------
# statistics


# --------------------------------------------------------------------------
# loading


def gguf_config_fixes(path: Path, config) -> list[str]:
    """Sets config fields transformers' GGUF loader leaves at their defaults.

    transformers (checked with 5.24) does not map attention.key_length to
    head_dim for qwen3 (so only the default 128 loads), and maps only a few
    gemma3 GGUF keys onto the config: query_pre_attn_scalar, the per-layer sliding-window pattern
    and the local RoPE base keep the Hugging Face defaults (256, every 6th
    layer global, 10000), which is right for the released Gemma 3 files but
    not for a GGUF that says otherwise. Read them from the file, as llama.cpp
    does. Returns one note per changed field.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name):
        f = reader.fields.get(name)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    notes: list[str] = []
    cfg = text_config(config)

    def setattr_noted(obj, attr, value, label):
        old = getattr(obj, attr, None)
        if old != value:
            setattr(obj, attr, value)
            notes.append(f"{label}: {old!r} -> {value!r} (from the GGUF metadata)")

    # qwen3 (and others): attention.key_length is not mapped to head_dim, so
    # a head_dim other than the config class default breaks loading.
    key_len = field(f"{arch}.attention.key_length")
    if key_len is not None and hasattr(cfg, "head_dim"):
        setattr_noted(cfg, "head_dim", int(key_len), "head_dim")
    if arch != "gemma3":
        return notes

    qpas = field(f"{arch}.attention.query_pre_attn_scalar")
    if qpas is not None:
        qpas = float(qpas)
        setattr_noted(cfg, "query_pre_attn_scalar", int(qpas) if qpas.is_integer() else qpas,
                      "query_pre_attn_scalar")
    pattern = field(f"{arch}.attention.sliding_window_pattern")
    n = cfg.num_hidden_layers
    if isinstance(pattern, list) and len(pattern) == n:
        types = ["sliding_attention" if bool(x) else "full_attention" for x in pattern]
        setattr_noted(cfg, "layer_types", types, "layer_types")
    elif isinstance(pattern, (int, float)) and int(pattern) > 0:
        p = int(pattern)
        types = ["full_attention" if (i + 1) % p == 0 else "sliding_attention" for i in range(n)]
        setattr_noted(cfg, "layer_types", types, "layer_types")
    rope = getattr(cfg, "rope_parameters", None)
    local = field(f"{arch}.rope.local.freq_base")
    glob = field(f"{arch}.rope.freq_base")
    if isinstance(rope, dict):
        for kind, base in (("sliding_attention", local), ("full_attention", glob)):
            if base is not None and isinstance(rope.get(kind), dict):
                old = rope[kind].get("rope_theta")
                if old != float(base):
                    rope[kind]["rope_theta"] = float(base)
                    notes.append(f"rope_parameters[{kind}].rope_theta: {old!r} -> {float(base)!r} "
                                 "(from the GGUF metadata)")
    return notes


def load(model_path: Path, dtype, device: str, need_tokenizer: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if model_path.is_file():
        folder, kw = str(model_path.parent), {"gguf_file": model_path.name}
    elif model_path.is_dir():
        folder, kw = str(model_path), {}
    else:
        raise UsageError(f"{model_path}: no such file or folder")
    tok = AutoTokenizer.from_pretrained(folder, **kw) if need_tokenizer else None
    if kw:
        config = AutoConfig.from_pretrained(folder, **kw)
        for note in gguf_config_fixes(model_path, config):
            print(f"hf_trace: note: {note}", file=sys.stderr)
        kw["config"] = config
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager", **kw)
    model.to(device)
    model.eval()
    return tok, model


def text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def base_model(model):
    """The decoder stack (with .embed_tokens, .layers, .norm)."""
    m = model
    for _ in range(3):
        if hasattr(m, "layers") and hasattr(m, "embed_tokens"):
            return m
        if hasattr(m, "language_model"):
            m = m.language_model
        elif hasattr(m, "model"):
            m = m.model
        else:
            break
    if hasattr(m, "layers") and hasattr(m, "embed_tokens"):
        return m
    raise UsageError(f"{type(model).__name__}: cannot find the decoder layers (model.model.layers)")


# --------------------------------------------------------------------------
# capture


class Tracer:
    """Hooks a loaded model and records the selected stages of one forward."""

    def __init__(self, model, arch: str, sel: Selection):
        self.model = model
        self.arch = arch
        self.sel = sel
        self.base = base_model(model)
        self.layers = list(self.base.layers)
        self.n_tokens = 0
        self.cur_layer: int | None = None
        self.out: dict[str, np.ndarray] = {}
        self.handles = []
        self.restore = []
        self.wrapped_calls = {"apply_rotary_pos_emb": 0, "eager_attention_forward": 0}
        self.wrapped_names: list[str] = []
        self.softcap_note: str | None = None

    # -- helpers ------------------------------------------------------------

    def put(self, key: str, t) -> None:
        a = t.detach().to("cpu").float().contiguous().numpy()
        if key in self.out:
            raise RuntimeError(f"stage {key} recorded twice: the hooks do not match this model's forward")
        self.out[key] = np.ascontiguousarray(a, dtype=np.float32)

    def rows(self, t):
        """[B, T, ...] (B == 1) -> [T, prod(...)]."""
        return t[0].reshape(t.shape[1], -1)

    def heads_to_rows(self, t):
        """[B, H, T, hd] -> [T, H*hd]."""
        return t[0].transpose(0, 1).reshape(t.shape[2], -1)

    def hook_out(self, module, key_fn, conv):
        def h(_m, _inp, out):
            key = key_fn()
            if key is not None:
                o = out[0] if isinstance(out, tuple) else out
                self.put(key, conv(o))

        self.handles.append(module.register_forward_hook(h))

    def hook_split(self, module, key_fns, widths):
        """A fused projection's output cut along its last axis into stages."""
        def h(_m, _inp, out):
            o = self.rows(out)
            at = 0
            for key_fn, w in zip(key_fns, widths):
                key = key_fn()
                if key is not None:
                    self.put(key, o[:, at:at + w])
                at += w

        self.handles.append(module.register_forward_hook(h))

    def hook_in(self, module, key_fn, conv):
        def h(_m, inp):
            key = key_fn()
            if key is not None:
                self.put(key, conv(inp[0]))

        self.handles.append(module.register_forward_pre_hook(h))

    def key(self, name: str, layer: int | None = None):
        if not self.sel.want(name, layer):
            return lambda: None
        k = name if layer is None else f"blk.{layer}.{name}"
        return lambda: k

    # -- installation -------------------------------------------------------

    def install(self):
        import torch.nn as nn

        base = self.base
        self.hook_out(base.embed_tokens, self.key("embedding"), self.rows)
        self.hook_out(base.norm, self.key("final_norm"), self.rows)

        gemma_style = hasattr(self.layers[0], "pre_feedforward_layernorm")
        act_modules: dict[int, nn.Module] = {}
        patched_modules = {}
        for L, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp

            def enter(_m, _inp, L=L):
                self.cur_layer = L

            def leave(_m, _inp, _out):
                self.cur_layer = None

            self.handles.append(layer.register_forward_pre_hook(enter))
            self.handles.append(layer.register_forward_hook(leave))

            # olmo2 has no norms before attention and the FFN, only after.
            pre_norms = hasattr(layer, "input_layernorm")
            if pre_norms:
                self.hook_out(layer.input_layernorm, self.key("attn_norm", L), self.rows)
            if hasattr(attn, "qkv_proj"):
                # phi3: one projection, rows [q | k | v].
                cfg = text_config(self.model.config)
                hd = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
                widths = [cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd, cfg.num_key_value_heads * hd]
                self.hook_split(attn.qkv_proj, [self.key(n, L) for n in ("q_proj", "k_proj", "v_proj")], widths)
            else:
                for name in ("q_proj", "k_proj", "v_proj"):
                    self.hook_out(getattr(attn, name), self.key(name, L), self.rows)
            for name in ("q_norm", "k_norm"):
                if hasattr(attn, name):
                    self.hook_out(getattr(attn, name), self.key(name, L), self.norm_rows_fn(attn, name))
            self.hook_in(attn.o_proj, self.key("attn_context", L), self.rows)
            self.hook_out(attn.o_proj, self.key("attn_out", L), self.rows)
            if gemma_style or not pre_norms:
                self.hook_out(layer.post_attention_layernorm, self.key("attn_post_norm", L), self.rows)
            ffn_norm = layer.pre_feedforward_layernorm if gemma_style else (
                layer.post_attention_layernorm if pre_norms else None)
            if ffn_norm is not None:
                self.hook_in(ffn_norm, self.key("attn_residual", L), self.rows)
                self.hook_out(ffn_norm, self.key("ffn_norm", L), self.rows)
            else:
                self.hook_in(mlp.gate_proj, self.key("attn_residual", L), self.rows)
            if hasattr(layer, "post_feedforward_layernorm"):
                self.hook_out(layer.post_feedforward_layernorm, self.key("ffn_post_norm", L), self.rows)
            if hasattr(mlp, "experts"):
                self.hook_moe(mlp, L)
                self.hook_out(layer, self.key("layer_out", L), self.rows)
                patched_modules[type(attn).__module__] = sys.modules[type(attn).__module__]
                continue
            if hasattr(mlp, "gate_up_proj"):
                # phi3: one projection, columns [gate | up].
                half = mlp.gate_up_proj.out_features // 2
                self.hook_split(mlp.gate_up_proj, [self.key("ffn_gate", L), self.key("ffn_up", L)], [half, half])
            else:
                self.hook_out(mlp.gate_proj, self.key("ffn_gate", L), self.rows)
                self.hook_out(mlp.up_proj, self.key("ffn_up", L), self.rows)
            act = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
            if isinstance(act, nn.Module):
                # The same activation module may be shared between layers:
                # hook each object once and key it by the running layer.
                act_modules[id(act)] = act
            elif act is not None:
                # A plain function: compute act(gate) from the gate output.
                k = self.key("ffn_act", L)

                def gate_act(_m, _inp, out, k=k, act=act):
                    key = k()
                    if key is not None:
                        self.put(key, self.rows(act(out)))

                self.handles.append(mlp.gate_proj.register_forward_hook(gate_act))
            self.hook_in(mlp.down_proj, self.key("ffn_mul", L), self.rows)
            self.hook_out(mlp.down_proj, self.key("ffn_down", L), self.rows)
            self.hook_out(layer, self.key("layer_out", L), self.rows)
            patched_modules[type(attn).__module__] = sys.modules[type(attn).__module__]

        for act in act_modules.values():
            def act_hook(_m, _inp, out):
                L = self.cur_layer
                if L is not None and self.sel.want("ffn_act", L):
                    self.put(f"blk.{L}.ffn_act", self.rows(out))

            self.handles.append(act.register_forward_hook(act_hook))

        for mod in patched_modules.values():
            self.patch(mod)

    def hook_moe(self, mlp, L):
        """A mixture of experts: the router module returns (logits, chosen weights,
        chosen ids), [T, E], [T, k], [T, k]; its probabilities are the softmax
        of the logits in float32 (as the router computes them before choosing);
        the experts module returns their weighted sum. qwen2moe's shared expert
        is recorded times its sigmoid gate, as it is added."""
        import torch

        def router(_m, _inp, out):
            logits, weights, ids = out
            for name, t in (("ffn_router", logits),
                            ("ffn_router_probs", torch.softmax(logits.float(), dim=-1)),
                            ("ffn_experts", ids), ("ffn_expert_weights", weights)):
                key = self.key(name, L)()
                if key is not None:
                    self.put(key, t.reshape(t.shape[-2] if t.dim() > 1 else 1, -1))

        self.handles.append(mlp.gate.register_forward_hook(router))
        moe_key = self.key("ffn_moe_out", L)

        def experts(_m, _inp, out):
            key = moe_key()
            if key is not None:
                self.put(key, out.reshape(-1, out.shape[-1]))

        self.handles.append(mlp.experts.register_forward_hook(experts))
        if hasattr(mlp, "shared_expert"):
            shared_key, held = self.key("ffn_shared_out", L), {}

            def shared(_m, _inp, out):
                held["out"] = out

            def gate(_m, _inp, out):
                key = shared_key()
                if key is not None:
                    s = torch.sigmoid(out) * held.pop("out")
                    self.put(key, s.reshape(-1, s.shape[-1]))

            self.handles.append(mlp.shared_expert.register_forward_hook(shared))
            self.handles.append(mlp.shared_expert_gate.register_forward_hook(gate))

    def norm_rows_fn(self, attn, name):
        proj = attn.q_proj if name == "q_norm" else attn.k_proj
        head_dim = getattr(attn, "head_dim", None)

        def conv(t):
            # [B,T,H,hd] (qwen3: normed before the transpose) or [B,H,T,hd]
            # (gemma3: after it).
            T = self.n_tokens
            if t.dim() != 4:
                return self.rows(t)
            heads = proj.out_features // (head_dim or t.shape[-1])
            if t.shape[1] == T and t.shape[2] == heads and (T != heads):
                layout = "BTHD"
            elif t.shape[2] == T and t.shape[1] == heads and (T != heads):
                layout = "BHTD"
            else:
                layout = NORM_LAYOUT_DEFAULT.get(self.arch, "BHTD")
            return self.rows(t) if layout == "BTHD" else self.heads_to_rows(t)

        return conv

    def patch(self, mod):
        """Wraps apply_rotary_pos_emb and eager_attention_forward in `mod`."""
        tracer = self

        rope = getattr(mod, "apply_rotary_pos_emb", None)
        if rope is not None:
            def rope_wrapper(q, k, *args, **kwargs):
                q_out, k_out = rope(q, k, *args, **kwargs)
                tracer.wrapped_calls["apply_rotary_pos_emb"] += 1
                L = tracer.cur_layer
                if L is not None:
                    if tracer.sel.want("q_rope", L):
                        tracer.put(f"blk.{L}.q_rope", tracer.heads_to_rows(q_out))
                    if tracer.sel.want("k_rope", L):
                        tracer.put(f"blk.{L}.k_rope", tracer.heads_to_rows(k_out))
                return q_out, k_out

            rope_wrapper.__wrapped__ = rope
            self._set(mod, "apply_rotary_pos_emb", rope_wrapper)

        eager = getattr(mod, "eager_attention_forward", None)
        if eager is not None:
            sig = inspect.signature(eager)
            repeat_kv = getattr(mod, "repeat_kv", None)

            def eager_wrapper(*args, **kwargs):
                import torch

                out = eager(*args, **kwargs)
                tracer.wrapped_calls["eager_attention_forward"] += 1
                ba = sig.bind(*args, **kwargs)
                ba.apply_defaults()
                a = ba.arguments
                module = a["module"]
                L = getattr(module, "layer_idx", tracer.cur_layer)
                if L is None:
                    return out
                if tracer.sel.want("attn_scores", L):
                    query, key = a["query"], a["key"]
                    scaling = a.get("scaling")
                    if scaling is None:
                        scaling = module.head_dim ** -0.5
                    groups = getattr(module, "num_key_value_groups", query.shape[1] // key.shape[1])
                    if repeat_kv is not None:
                        key = repeat_kv(key, groups)
                    elif groups != 1:
                        key = torch.repeat_interleave(key, groups, dim=1)
                    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
                    softcap = a.get("softcap")
                    if softcap is None:
                        softcap = a.get("kwargs", {}).get("softcap")
                    if softcap is not None:
                        scores = torch.tanh(scores / softcap) * softcap
                    cfg_cap = getattr(getattr(module, "config", None), "attn_logit_softcapping", None)
                    if cfg_cap is not None and softcap is None and tracer.softcap_note is None:
                        tracer.softcap_note = (
                            f"config.attn_logit_softcapping={cfg_cap} but the attention function was not "
                            "given a softcap: attn_scores are recorded without it, as transformers computes them"
                        )
                    tracer.put(f"blk.{L}.attn_scores", scores[0])
                if tracer.sel.want("attn_probs", L):
                    weights = out[1]
                    if weights is None:
                        raise RuntimeError("eager attention returned no weights")
                    tracer.put(f"blk.{L}.attn_probs", weights[0])
                return out

            eager_wrapper.__wrapped__ = eager
            self._set(mod, "eager_attention_forward", eager_wrapper)

    def _set(self, mod, name, fn):
        self.restore.append((mod, name, getattr(mod, name)))
        setattr(mod, name, fn)
        self.wrapped_names.append(f"{mod.__name__}.{name}")

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for mod, name, orig in reversed(self.restore):
            setattr(mod, name, orig)
        self.restore.clear()

    @contextlib.contextmanager
    def active(self):
        self.install()
        try:
            yield self
        finally:
            self.remove()

    # -- run ----------------------------------------------------------------

    def run(self, ids: list[int], device: str) -> dict[str, np.ndarray]:
        import torch

        self.n_tokens = len(ids)
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        with torch.no_grad(), self.active():
            out = self.model(input_ids=input_ids, use_cache=False)
        if self.sel.want("logits"):
            self.put("logits", out.logits[0])
        self.check_complete()
        return self.out

    def check_complete(self):
        want_rope = any(self.sel.want(s, L) for s in ("q_rope", "k_rope") for L in range(len(self.layers)))
        want_attn = any(
            self.sel.want(s, L) for s in ("attn_scores", "attn_probs") for L in range(len(self.layers))
        )
        if want_rope and self.wrapped_calls["apply_rotary_pos_emb"] == 0:
            raise RuntimeError(
                "apply_rotary_pos_emb was never called through its module global: this transformers "
                "version applies RoPE differently; q_rope/k_rope cannot be captured"
            )
        if want_attn and self.wrapped_calls["eager_attention_forward"] == 0:
            raise RuntimeError(
                "eager_attention_forward was never called: attention did not run eagerly in this "
                "transformers version; attn_scores/attn_probs cannot be captured"
            )
        if self.softcap_note:
            print(f"note: {self.softcap_note}", file=sys.stderr)


# --------------------------------------------------------------------------
# output


def greedy(model, ids: list[int], n: int, device: str) -> list[int]:
    """N tokens, each the argmax of the logits after the previous ones (the
    prompt in one forward pass, then one token at a time with the cache)."""
    import torch

    out: list[int] = []
    past = None
    step = torch.tensor([ids], device=device)
    with torch.no_grad():
        while len(out) < n:
            res = model(input_ids=step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(torch.argmax(res.logits[0, -1]).item())
            out.append(nxt)
            step = torch.tensor([[nxt]], device=device)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Trace a forward pass in Hugging Face transformers into a plumb trace file (format 1).",
    )
    add_common_args(
        ap,
        "HF model folder or .gguf file",
        "prompt text (tokenized with the model's tokenizer)",
        "greedy-decode N tokens (argmax of each step's logits, KV cache on) and print "
        "{\"tokens\": prompt ids, \"generated\": ids} as JSON on stdout; with -o, trace too",
    )
    ap.add_argument("--no-bos", action="store_true", help="with -p: do not add special tokens (BOS)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cpu", help="torch device (default cpu)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one summary line per stage on stderr")
    args = parse_common_args(ap, argv)

    try:
        return run(args)
    except UsageError as e:
        print(f"hf_trace: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    model_path = Path(args.model)
    if not model_path.exists():
        raise UsageError(f"{model_path}: no such file or folder")
    if model_path.is_file() and model_path.suffix.lower() != ".gguf":
        raise UsageError(f"{model_path}: a model file must be .gguf (or pass an HF folder)")
    patterns = parse_stages(args.stages)

    ids = parse_tokens(args.tokens) if args.tokens is not None else None

    dtype = getattr(torch, args.dtype)
    tok, model = load(model_path, dtype, args.device, need_tokenizer=args.prompt is not None)
    cfg = text_config(model.config)
    model_type = getattr(cfg, "model_type", None) or model.config.model_type
    arch = ARCH_MAP.get(model_type, model_type)
    if model_type not in ARCH_MAP:
        print(f"hf_trace: warning: model_type {model_type!r} is not one plumb knows; tracing anyway",
              file=sys.stderr)

    if ids is None:
        ids = tok(args.prompt, add_special_tokens=not args.no_bos)["input_ids"]
        if not ids:
            raise UsageError("the prompt tokenizes to no tokens")
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
        else cfg.vocab_size
    bad = [i for i in ids if i >= vocab]
    if bad:
        raise UsageError(f"token id {bad[0]} out of range (vocabulary {vocab})")

    if args.generate is not None:
        if args.generate < 0:
            raise UsageError("--generate: must be at least 0")
        print(json.dumps({"tokens": ids, "generated": greedy(model, ids, args.generate, args.device)}))
        if args.out is None:
            return 0

    n_layers = len(base_model(model).layers)
    sel = Selection(patterns, parse_layers(args.layers, n_layers))
    tracer = Tracer(model, arch, sel)
    tensors = tracer.run(ids, args.device)

    meta = {
        "plumb.engine": f"transformers {transformers.__version__}",
        "plumb.model": model_path.resolve().name,
        "plumb.arch": arch,
        "plumb.precision": args.dtype,
    }
    if model_path.is_file():
        meta["plumb.model_sha256"] = sha256_file(model_path)
    return save_trace(args, tensors, ids, meta, lambda _k, s: f"nan {s['nan']} inf {s['inf']}")


if __name__ == "__main__":
    sys.exit(main())
