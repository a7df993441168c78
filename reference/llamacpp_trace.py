#!/usr/bin/env python3
"""Trace a GGUF model's forward pass in llama.cpp: plumb's second oracle.

Runs a GGUF file in llama.cpp through llama-cpp-python's low-level API
(``llama_cpp.llama_cpp``), watches every node of the compute graph with the
scheduler's evaluation callback (``llama_context_params.cb_eval``), copies the
nodes that correspond to plumb's stages as they are computed, and writes a
plumb trace file, format 1 (docs/TRACE_FORMAT.md): one safetensors file whose
tensors are named by stage key (``embedding``, ``blk.3.ffn_mul``, ``logits``)
and whose ``__metadata__`` carries ``plumb.format``, ``plumb.engine``,
``plumb.model``, ``plumb.model_sha256``, ``plumb.arch``, ``plumb.prompt``,
``plumb.tokens``, ``plumb.precision`` and ``plumb.stats`` (float64 statistics
of every traced stage, whole tensor and last token). ``plumb diff`` compares
such a file with a trace from plumb or from ``reference/hf_trace.py``.

Usage::

    python reference/llamacpp_trace.py MODEL.gguf (-p PROMPT | --tokens 1,2,3) -o OUT.safetensors
        [--no-bos] [--special] [--stats-only] [--threads N] [--stages GLOBS] [--layers 0-3,7]
        [--kv-type f32|f16|q8_0|q4_0] [--no-repack | --repack on|off] [--no-unpermute] [--list-nodes] [-v]

With ``-p`` the prompt is tokenized by llama.cpp's own tokenizer, BOS added
(when the model asks for it) unless ``--no-bos``; control tokens written in
the text are recognized only with ``--special`` (as in ``plumb trace``); with
``--tokens`` the ids are fed as given. ``--stages``/``--layers`` select what
is kept, as in hf_trace.py. ``--stats-only`` writes the statistics without the
tensors. ``--list-nodes`` prints every graph node the callback sees (index,
name, op, type, ne) to stderr: the way to discover node names for a new
architecture. stdout stays quiet except for a final
``wrote OUT (N tensors, M stats)``.

How it runs
-----------
* CPU backend only (``n_gpu_layers = 0``), flash attention OFF (so the
  ``kq`` and ``kq_soft_max`` nodes exist), one sequence, ``n_ctx``,
  ``n_batch`` and ``n_ubatch`` >= the number of tokens so the whole prompt is
  one ubatch and one graph, and the batch asks for logits at every position
  (``batch.logits[i] = 1``). The KV cache is F32 by default (``--kv-type
  f16`` gives llama.cpp's default F16 cache, which rounds K and V).
* The callback is asked about every node (``ask == true``) and answers true
  for the nodes it keeps; the scheduler then computes the graph up to that
  node, synchronizes and calls again with ``ask == false``: the tensor is
  read at once (``ggml_backend_tensor_get`` over ``ggml_nbytes``, strides
  honoured) because the graph allocator reuses its memory later. Kept nodes
  end a compute chunk, so ggml's CPU op fusions never straddle them; the
  arithmetic is otherwise llama.cpp's own.
* The ``struct ggml_tensor`` layout is mirrored with ctypes (ggml.h:
  GGML_MAX_DIMS 4, GGML_MAX_SRC 10, GGML_MAX_OP_PARAMS 64, GGML_MAX_NAME 64)
  and checked against ``ggml_tensor_overhead()``; names and op names come
  from ``ggml_get_name`` / ``ggml_op_name`` in libggml-base.

Node name -> stage (llama.cpp names nodes ``<name>-<layer>``)
-------------------------------------------------------------
::

    embedding       inp_scaled (gemma: embeddings * sqrt(d)), else embd (GET_ROWS)
    attn_norm       attn_norm-L
    q_proj          last Qcur-L computed before rope/q-norm (MUL_MAT, or the ADD of the bias)
    k_proj, v_proj  likewise Kcur-L, last Vcur-L (reshape/view nodes are skipped)
    q_norm, k_norm  Qcur_normed-L, Kcur_normed-L                       (qwen3, gemma3)
    q_rope, k_rope  the Qcur-L / Kcur-L node whose op is ROPE
    attn_scores     kq-L (or kq_scaled_2-L when there is an attention softcap),
                    times the scale of kq_soft_max-L (see below)
    attn_probs      kq_soft_max-L
    attn_context    kqv_out-L; under --flash-attn on the FLASH_ATTN_EXT node it views
                    (kqv_out-L is then a reshape, not computed apart)
    attn_out        attn_out-L (llama); else the unnamed MUL_MAT whose src[1] is
                    kqv_out-L (qwen2, qwen3, gemma3 name no node there; an output
                    bias, which none of them has, would be left out)
    attn_post_norm  attn_post_norm-L                                    (gemma3)
    attn_residual   ffn_inp-L (llama, qwen2, qwen3), sa_out-L (gemma3)
    ffn_norm        ffn_norm-L
    ffn_gate        ffn_gate-L (ffn_gate_b-L with a bias); ffn_up likewise
    ffn_act         ffn_silu-L / ffn_gelu-L, only where the activation is its own node;
                    llama.cpp fuses act(gate)*up into one op (swiglu/geglu) for
                    these architectures, so ffn_act is absent
    ffn_mul         ffn_swiglu-L / ffn_geglu-L (fused), or ffn_gate_par-L
    ffn_down        the first ffn_out-L (build_ffn's output)
    ffn_post_norm   ffn_post_norm-L                                     (gemma3)
    layer_out       l_out-L
    final_norm      result_norm
    logits          result_output

Layout conversions
------------------
* ggml's ``ne`` is innermost-first: a node with ``ne = [d, T]`` is the
  row-major ``[T, d]``; ``[hd, H, T]`` becomes ``[T, H*hd]``; ``kq`` /
  ``kq_soft_max`` with ``ne = [n_kv, T, H]`` become ``[H, T, n_kv]`` and are
  cut to the first T key columns: a fresh cache holds positions 0..T-1 in
  cells 0..T-1 (checked: the probabilities beyond column T-1 and above the
  diagonal must be 0, else the script fails).
* Q/K permutation: for models whose llama.cpp RoPE type is NORM (llama
  architecture) the GGUF stores the Q/K weight rows permuted for interleaved
  RoPE. q_proj, k_proj, q_norm, k_norm, q_rope and k_rope are permuted back
  into the HuggingFace layout: within each head, element 2i and 2i+1 of the
  llama.cpp layout go to i and i+hd/2 (``--no-unpermute`` keeps llama.cpp's
  layout).
* Scale: llama.cpp applies 1/sqrt(hd) inside the softmax
  (``ggml_soft_max_ext(kq, mask, scale)``) for llama/qwen, so the raw ``kq``
  node lacks it; gemma3 multiplies Q by its attention scale after RoPE and
  passes scale 1. The script reads the scale from the softmax node's
  op_params[0] and records ``attn_scores = kq * scale``, so it is
  Q·Kᵀ·scale before the mask, as docs/TRACE_FORMAT.md asks, whichever way the model
  folds it (q_rope is recorded before gemma3's Q scaling).
* Last layer: llama.cpp gathers the rows that need outputs (``inp_out_ids``)
  after the last layer's attention. Every position asks for logits here, so
  the gather keeps all T rows in order and nothing is cut; the script fails
  if a node has fewer rows than tokens.

Requires llama-cpp-python (its bundled llama.cpp, or the libraries named by
LLAMA_CPP_LIB_PATH), numpy and safetensors.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from trace_format import Selection, UsageError, save_trace, sha256_file  # noqa: E402  (same folder)
from trace_format import add_common_args, parse_common_args, parse_layers, parse_stages, parse_tokens  # noqa: E402


# Stages whose token axis is 1 ([H, T, Tkv]); all others have it at 0.
# Stages in the Q/K head layout (undone from the GGUF permutation for NORM rope).
QK_STAGES = {"q_proj", "k_proj", "q_norm", "k_norm", "q_rope", "k_rope"}

# Command-line aliases (docs/TRACE_FORMAT.md).

# general.architecture -> plumb.arch
ARCH_MAP = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3", "gemma2": "gemma2",
            "olmo2": "olmo2", "phi3": "phi3", "qwen2moe": "qwen2moe", "qwen3moe": "qwen3moe"}


# Node base names (the part before "-<layer>") whose data is read.
KEEP_LAYER_NAMES = {
    "attn_norm", "Qcur", "Kcur", "Vcur", "Qcur_normed", "Kcur_normed",
    "kq", "kq_scaled_2", "kq_soft_max", "kqv_out", "attn_out", "attn_post_norm",
    "ffn_inp", "sa_out", "ffn_norm", "ffn_gate", "ffn_gate_b", "ffn_up", "ffn_up_b",
    "ffn_silu", "ffn_gelu", "ffn_swiglu", "ffn_geglu", "ffn_gate_par", "ffn_out",
    "ffn_post_norm", "l_out",
    # mixtures of experts (build_moe_ffn; qwen2moe's shared expert)
    "ffn_moe_logits", "ffn_moe_probs", "ffn_moe_argsort", "ffn_moe_weights", "ffn_moe_weights_norm",
    "ffn_moe_out", "ffn_shexp_out",
}
KEEP_GLOBAL_NAMES = {"embd", "inp_embd", "inp_scaled", "result_norm", "result_output"}
# ggml ops that only reinterpret their source: same data, never kept.
VIEW_OPS = {"RESHAPE", "VIEW", "PERMUTE", "TRANSPOSE", "NONE"}
LAYER_NAME = re.compile(r"^(.+)-(\d+)$")

GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16, GGML_TYPE_I32 = 0, 1, 30, 26
LLAMA_ROPE_TYPE_NORM = 0


# ctypes callbacks handed to llama.cpp must outlive every call into it.
_KEEP_ALIVE: list = []


# --------------------------------------------------------------------------
# selection (as in hf_trace.py)


# --------------------------------------------------------------------------
# statistics (as in hf_trace.py)


# --------------------------------------------------------------------------
# ggml through ctypes

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


# struct ggml_object { size_t offs; size_t size; struct ggml_object * next; enum ggml_object_type type; char padding[4]; }
GGML_OBJECT_SIZE = 32


class Ggml:
    """The few libggml-base functions the callback needs."""

    def __init__(self, llama_lib_path: str):
        lib_dir = Path(llama_lib_path).parent
        cands = [lib_dir / n for n in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll",
                                       "libggml.so", "libggml.dylib", "ggml.dll")]
        lib = None
        for c in cands:
            if c.exists():
                try:
                    lib = ctypes.CDLL(str(c))
                    lib.ggml_get_name  # noqa: B018 - probe the symbol
                    break
                except (OSError, AttributeError):
                    lib = None
        if lib is None:
            # The symbols may already be global in the process (static builds).
            lib = ctypes.CDLL(None)
        self.lib = lib
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_op_name.argtypes = [ctypes.c_int]
        lib.ggml_op_name.restype = ctypes.c_char_p
        lib.ggml_type_name.argtypes = [ctypes.c_int]
        lib.ggml_type_name.restype = ctypes.c_char_p
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                                ctypes.c_size_t]
        lib.ggml_backend_tensor_get.restype = None
        lib.ggml_tensor_overhead.argtypes = []
        lib.ggml_tensor_overhead.restype = ctypes.c_size_t
        want = lib.ggml_tensor_overhead() - GGML_OBJECT_SIZE
        if want != ctypes.sizeof(GgmlTensor):
            raise RuntimeError(
                f"struct ggml_tensor is {want} bytes in this libggml but the ctypes mirror has "
                f"{ctypes.sizeof(GgmlTensor)}: ggml.h changed; update GgmlTensor")

    def name(self, ptr: int) -> str:
        return (self.lib.ggml_get_name(ptr) or b"").decode("utf-8", "replace")

    def op_name(self, op: int) -> str:
        return (self.lib.ggml_op_name(op) or b"?").decode()

    def type_name(self, t: int) -> str:
        return (self.lib.ggml_type_name(t) or b"?").decode()

    def read(self, ptr: int, t: GgmlTensor) -> np.ndarray:
        """The tensor as a float32 numpy array of shape ne[::-1] (strides honoured)."""
        if t.type == GGML_TYPE_F32:
            dtype = np.float32
        elif t.type == GGML_TYPE_I32:
            dtype = np.int32
        elif t.type in (GGML_TYPE_F16, GGML_TYPE_BF16):
            dtype = np.uint16 if t.type == GGML_TYPE_BF16 else np.float16
        else:
            raise RuntimeError(f"node {self.name(ptr)!r}: type {self.type_name(t.type)} is not a float type")
        if not t.buffer or not t.data:
            raise RuntimeError(f"node {self.name(ptr)!r} has no data")
        nbytes = self.lib.ggml_nbytes(ptr)
        raw = np.empty(nbytes, dtype=np.uint8)
        self.lib.ggml_backend_tensor_get(ptr, raw.ctypes.data, 0, nbytes)
        shape = tuple(int(x) for x in t.ne)[::-1]
        strides = tuple(int(x) for x in t.nb)[::-1]
        a = np.ndarray(shape=shape, dtype=dtype, buffer=raw, offset=0, strides=strides)
        if t.type == GGML_TYPE_BF16:
            return (a.astype(np.uint32) << 16).view(np.float32)
        return np.ascontiguousarray(a, dtype=np.float32)


class Node:
    __slots__ = ("idx", "ptr", "name", "base", "layer", "op", "type", "ne", "src", "op_params", "data")

    def __init__(self, idx, ptr, name, op, typ, ne, src, op_params):
        self.idx, self.ptr, self.name, self.op, self.type = idx, ptr, name, op, typ
        self.ne, self.src, self.op_params = ne, src, op_params
        m = LAYER_NAME.match(name)
        self.base, self.layer = (m.group(1), int(m.group(2))) if m else (name, None)
        self.data = None


class Capture:
    """The cb_eval callback: records every node, reads the kept ones."""

    def __init__(self, ggml: Ggml, layers: set[int], list_nodes: bool):
        self.ggml = ggml
        self.layers = layers
        self.list_nodes = list_nodes
        self.nodes: list[Node] = []
        self.by_ptr: dict[int, Node] = {}
        self.error: BaseException | None = None
        self.graphs = 0

    def keep(self, n: Node) -> bool:
        if n.op in VIEW_OPS:
            return False
        if n.layer is not None:
            return n.layer in self.layers and n.base in KEEP_LAYER_NAMES
        if n.name in KEEP_GLOBAL_NAMES:
            return True
        # flash attention's output (unnamed; kqv_out-L is a view of it)
        if n.op == "FLASH_ATTN_EXT":
            return True
        # a quantized cache's context turned back by the values' rotation
        if is_unrotation(n, self.by_ptr):
            return True
        # an unnamed output projection: MUL_MAT over kqv_out-L
        if n.op == "MUL_MAT" and len(n.src) > 1:
            s = self.by_ptr.get(n.src[1])
            return s is not None and s.base == "kqv_out" and s.layer in self.layers
        return False

    def __call__(self, ptr, ask, _user_data):
        try:
            t = GgmlTensor.from_address(ptr)
            if ask:
                name = self.ggml.name(ptr)
                n = Node(len(self.nodes), ptr, name, self.ggml.op_name(t.op), t.type,
                         [int(x) for x in t.ne], [int(s or 0) for s in t.src],
                         list(t.op_params))
                if name == "result_output" and any(x.name == "result_output" for x in self.nodes):
                    # a second graph (should not happen: one ubatch)
                    self.graphs += 1
                self.nodes.append(n)
                self.by_ptr[ptr] = n
                if self.list_nodes:
                    print(f"node {n.idx:5d} {name:28s} {n.op:14s} {self.ggml.type_name(t.type):5s} "
                          f"ne={n.ne}", file=sys.stderr)
                return self.keep(n)
            n = self.by_ptr.get(ptr)
            if n is not None and n.data is None and self.keep(n):
                n.data = self.ggml.read(ptr, t)
            return True
        except BaseException as e:  # never let an exception cross the C boundary
            if self.error is None:
                self.error = e
            return False


# --------------------------------------------------------------------------
# node -> stage mapping


def unpermute_qk(x: np.ndarray, head_dim: int) -> np.ndarray:
    """[T, H*hd] in llama.cpp's interleaved (permuted-weights) layout -> HF layout.

    Within each head, element 2i+j goes to j*hd/2 + i (j in {0,1})."""
    T = x.shape[0]
    return x.reshape(T, -1, head_dim // 2, 2).transpose(0, 1, 3, 2).reshape(T, -1)


def is_unrotation(n: Node, by_ptr: dict) -> bool:
    """The Walsh-Hadamard product that turns a quantized cache's attention
    context back (llama.cpp rotates what such a cache stores): a MUL_MAT
    that keeps the shape of its input, a view of kqv_out (its matrix,
    attn_inp_v_rot, is an input, not a node)."""
    if n.op != "MUL_MAT" or len(n.src) < 2:
        return False
    x = by_ptr.get(n.src[1])
    return x is not None and x.ne == n.ne and context_layer(n.src[1], by_ptr, None) is not None


def context_layer(ptr: int, by_ptr: dict, nodes: list) -> int | None:
    """The layer of the kqv_out-L that ptr is (a view of), or None."""
    n = by_ptr.get(ptr)
    while n is not None:
        if n.base == "kqv_out":
            return n.layer
        if n.op == "FLASH_ATTN_EXT":
            views = [v for v in (nodes or by_ptr.values()) if v.base == "kqv_out" and v.src and v.src[0] == n.ptr]
            return views[0].layer if views else None
        if n.op not in VIEW_OPS or not n.src:
            return None
        n = by_ptr.get(n.src[0])
    return None


class Mapper:
    def __init__(self, nodes: list[Node], n_tokens: int, n_layers: int, sel: Selection,
                 unpermute: bool, head_dim: int):
        self.nodes = nodes
        self.T = n_tokens
        self.n_layers = n_layers
        self.sel = sel
        self.unpermute = unpermute
        self.head_dim = head_dim
        self.by_ptr = {n.ptr: n for n in nodes}
        self.out: dict[str, np.ndarray] = {}
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []

    def rows(self, n: Node) -> np.ndarray:
        a = n.data
        T = self.T
        if is_unrotation(n, self.by_ptr):
            # rows of 64 of the whole context, in its order: T rows of H·hd
            return a.reshape(T, -1)
        # token axis = outermost dimension with more than one element (ne reversed)
        outer = [d for d in a.shape if d != 1]
        if a.size % T or (outer and outer[0] != T and T != 1):
            raise RuntimeError(
                f"node {n.name} (op {n.op}) has ne={n.ne}: expected {T} token rows "
                "(were the outputs of the last layer cut?)")
        return a.reshape(T, -1)

    def heads(self, n: Node) -> np.ndarray:
        # ne = [n_kv, T, H, 1] -> [H, T, n_kv] -> cut to the T cells of this prompt
        a = n.data
        n_kv, T, H = n.ne[0], n.ne[1], n.ne[2]
        if T != self.T or n.ne[3] != 1:
            raise RuntimeError(f"node {n.name} has ne={n.ne}; expected [n_kv, {self.T}, H, 1]")
        if n_kv < T:
            raise RuntimeError(f"node {n.name} has only {n_kv} KV cells for {T} tokens")
        return np.ascontiguousarray(a.reshape(H, T, n_kv)[:, :, :T])

    def put(self, key: str, arr: np.ndarray, node: Node | None = None, src: str | None = None):
        self.out[key] = np.ascontiguousarray(arr, dtype=np.float32)
        self.sources[key] = src if src is not None else (f"{node.name} ({node.op})" if node else "?")

    def run(self) -> dict[str, np.ndarray]:
        kept = [n for n in self.nodes if n.data is not None]
        glob = {n.name: n for n in kept if n.layer is None and n.name in KEEP_GLOBAL_NAMES}
        if self.sel.want("embedding"):
            n = glob.get("inp_scaled") or glob.get("embd") or glob.get("inp_embd")
            if n is not None:
                self.put("embedding", self.rows(n), n)
        per_layer: dict[int, list[Node]] = {}
        for n in kept:
            if n.layer is not None:
                per_layer.setdefault(n.layer, []).append(n)
            elif is_unrotation(n, self.by_ptr):
                L = context_layer(n.src[1], self.by_ptr, self.nodes)
                if L is not None:
                    per_layer.setdefault(L, []).append(n)
            elif n.op == "MUL_MAT" and len(n.src) > 1:
                s = self.by_ptr.get(n.src[1])
                if s is not None and s.base == "kqv_out":
                    per_layer.setdefault(s.layer, []).append(n)
            elif n.op == "FLASH_ATTN_EXT":
                # its layer is that of the kqv_out-L view over it
                views = [v for v in self.nodes if v.base == "kqv_out" and v.src and v.src[0] == n.ptr]
                if views and views[0].layer is not None:
                    per_layer.setdefault(views[0].layer, []).append(n)
        for L in range(self.n_layers):
            if L in self.sel.layers:
                self.layer(L, per_layer.get(L, []))
        if self.sel.want("final_norm") and "result_norm" in glob:
            self.put("final_norm", self.rows(glob["result_norm"]), glob["result_norm"])
        if self.sel.want("logits") and "result_output" in glob:
            self.put("logits", self.rows(glob["result_output"]), glob["result_output"])
        return self.out

    def layer(self, L: int, nodes: list[Node]):
        def named(*bases):
            return [n for n in nodes if n.base in bases]

        def last(*bases):
            xs = named(*bases)
            return xs[-1] if xs else None

        def first(*bases):
            xs = named(*bases)
            return xs[0] if xs else None

        picks: dict[str, Node] = {}
        for s in ("attn_norm", "attn_post_norm", "ffn_norm", "ffn_post_norm"):
            n = last(s)
            if n is not None:
                picks[s] = n
        # Q/K: projection (incl. bias) before norm/rope, then norm, then rope
        for qk in ("Q", "K"):
            lo = qk.lower()
            cur = named(f"{qk}cur")
            normed = last(f"{qk}cur_normed")
            rope = [n for n in cur if n.op == "ROPE"]
            stop = min([n.idx for n in rope] + ([normed.idx] if normed else []) + [1 << 62])
            proj = [n for n in cur if n.op != "ROPE" and n.idx < stop]
            if proj:
                picks[f"{lo}_proj"] = proj[-1]
            if normed is not None:
                picks[f"{lo}_norm"] = normed
            if rope:
                picks[f"{lo}_rope"] = rope[-1]
        v = last("Vcur")
        if v is not None:
            picks["v_proj"] = v
        ctx = last("kqv_out")
        if ctx is not None:
            picks["attn_context"] = ctx
        fa = [n for n in nodes if n.op == "FLASH_ATTN_EXT"]
        if fa:
            # under flash attention kqv_out is a view: the op's own output
            # [DV, H, T] is the context, T rows of H·DV
            picks["attn_context"] = fa[-1]
        unrot = [n for n in nodes if is_unrotation(n, self.by_ptr)]
        if unrot:
            # a quantized cache's values were rotated: the context is the
            # op's output turned back
            picks["attn_context"] = unrot[-1]
        ao = last("attn_out")
        if ao is None and ctx is not None:
            ao = next((n for n in nodes if n.layer is None and n.op == "MUL_MAT"
                       and len(n.src) > 1 and n.src[1] == ctx.ptr), None)
        if ao is not None:
            picks["attn_out"] = ao
        res = last("ffn_inp", "sa_out")
        if res is not None:
            picks["attn_residual"] = res
        for s in ("ffn_gate", "ffn_up"):
            n = last(f"{s}_b") or last(s)
            if n is not None:
                picks[s] = n
        act = last("ffn_silu", "ffn_gelu")
        if act is not None:
            picks["ffn_act"] = act
        mul = last("ffn_swiglu", "ffn_geglu", "ffn_gate_par")
        if mul is not None:
            picks["ffn_mul"] = mul
        moe = last("ffn_moe_logits") is not None
        if moe:
            # A mixture of experts: qwen2moe's shared expert is a build_ffn of its
            # own, whose ffn_gate … ffn_out nodes are not the layer's FFN stages.
            for s in ("ffn_gate", "ffn_up", "ffn_act", "ffn_mul"):
                picks.pop(s, None)
            for stage, base in (("ffn_router", "ffn_moe_logits"), ("ffn_router_probs", "ffn_moe_probs"),
                                ("ffn_moe_out", "ffn_moe_out"), ("ffn_shared_out", "ffn_shexp_out")):
                n = first(base)
                if n is not None:
                    picks[stage] = n
            w = last("ffn_moe_weights_norm") or last("ffn_moe_weights")
            if w is not None:
                picks["ffn_expert_weights"] = w
            order = last("ffn_moe_argsort")
            if order is not None and w is not None and self.sel.want("ffn_experts", L):
                # ffn_moe_topk is a view of the first k of each token's experts sorted by probability.
                k = self.rows(w).shape[1]
                self.put(f"blk.{L}.ffn_experts", self.rows(order)[:, :k], order)
        down = first("ffn_out")
        if down is not None and not moe:
            picks["ffn_down"] = down
        lo_ = last("l_out")
        if lo_ is not None:
            picks["layer_out"] = lo_

        for stage, n in picks.items():
            if not self.sel.want(stage, L):
                continue
            x = self.rows(n)
            if stage in QK_STAGES and self.unpermute:
                x = unpermute_qk(x, self.head_dim)
            self.put(f"blk.{L}.{stage}", x, n)

        # attention scores / probabilities
        kq = last("kq_scaled_2") or last("kq")
        sm = last("kq_soft_max")
        if sm is not None:
            probs = self.heads(sm)
            full = sm.data.reshape(sm.ne[2], sm.ne[1], sm.ne[0])
            beyond = float(np.abs(full[:, :, self.T:]).max()) if full.shape[2] > self.T else 0.0
            upper = float(np.abs(np.triu(probs, k=1)).max()) if self.T > 1 else 0.0
            if beyond != 0.0 or upper != 0.0:
                raise RuntimeError(
                    f"layer {L}: kq_soft_max has mass outside the causal [T, T] block "
                    f"(beyond T: {beyond}, above the diagonal: {upper}): the KV cells are not "
                    "positions 0..T-1, the cut would be wrong")
            if self.sel.want("attn_probs", L):
                self.put(f"blk.{L}.attn_probs", probs, sm)
        if kq is not None and self.sel.want("attn_scores", L):
            scale = 1.0
            src = f"{kq.name} ({kq.op})"
            if sm is not None:
                scale = float(np.array(sm.op_params[0], dtype=np.int32).view(np.float32))
                if scale != 1.0:
                    src += f" x {scale:.9g} (softmax scale)"
            self.put(f"blk.{L}.attn_scores", self.heads(kq) * np.float32(scale), src=src)


# --------------------------------------------------------------------------
# output (as in hf_trace.py)


# --------------------------------------------------------------------------
# llama.cpp


def meta_str(L, model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(4096)
    n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
    return None if n < 0 else buf.value.decode("utf-8", "replace")


def tokenize(L, vocab, text: str, add_bos: bool, special: bool) -> list[int]:
    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_bos, special)
    if n < 0:
        cap = -n
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(vocab, data, len(data), buf, cap, add_bos, special)
    if n < 0:
        raise RuntimeError("llama_tokenize failed")
    return [int(buf[i]) for i in range(n)]


def kv_types(s: str) -> str:
    """--kv-type: one cache type for keys and values, or KEYS,VALUES."""
    types = s.split(",")
    if not 1 <= len(types) <= 2 or any(t not in ("f32", "f16", "q8_0", "q4_0") for t in types):
        raise argparse.ArgumentTypeError(f"{s!r}: f32, f16, q8_0 or q4_0, or two of them as KEYS,VALUES")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Trace a forward pass in llama.cpp (llama-cpp-python) into a plumb trace file (format 1).",
    )
    add_common_args(
        ap,
        ".gguf file",
        "prompt text (tokenized by llama.cpp)",
        "greedy-decode N tokens as llama.cpp runs a model (the prompt as one batch with logits for its "
        "last token only, then one token at a time) and print {\"tokens\": prompt ids, \"generated\": ids} "
        "as JSON on stdout; with -o, trace too",
    )
    ap.add_argument("--no-bos", action="store_true", help="with -p: do not add BOS")
    ap.add_argument("--special", action="store_true",
                    help="with -p: recognize control tokens written in the prompt")
    ap.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--ubatch", type=int, metavar="N", default=None,
                    help="with --generate: llama.cpp's physical batch (n_ubatch): the prompt is computed N "
                         "tokens at a time (default: the whole prompt at once)")
    ap.add_argument("--kv-type", type=kv_types, default="f32", metavar="T|K,V",
                    help="KV cache type: f32, f16, q8_0 or q4_0 for keys and values, or KEYS,VALUES "
                         "(llama.cpp's -ctk and -ctv; default f32; llama.cpp's own default is f16)")
    ap.add_argument("--flash-attn", choices=["on", "off"], default="off",
                    help="flash attention (default off, so the kq and kq_soft_max nodes exist; llama.cpp's own "
                         "default, auto, is on for the CPU); under it only kqv_out of the attention is traced")
    ap.add_argument("--no-repack", action="store_true",
                    help="no CPU weight repacking (llama.cpp's --no-repack): the plain ggml dot products")
    ap.add_argument("--swa-full", choices=["on", "off"], default="on",
                    help="full-size sliding-window cache (llama-cpp-python's default, on; llama-completion's, off)")
    ap.add_argument("--repack", choices=["on", "off"], default=None,
                    help="CPU weight repacking, as plumb spells it (overrides --no-repack; llama.cpp's default: on)")
    ap.add_argument("--no-unpermute", action="store_true",
                    help="keep llama.cpp's interleaved Q/K layout for NORM-rope (llama) models")
    ap.add_argument("--list-nodes", action="store_true", help="print every graph node seen on stderr")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="llama.cpp's log and one line per stage (with its source node) on stderr")
    args = parse_common_args(ap, argv)
    if args.repack is not None:
        args.no_repack = args.repack == "off"
    try:
        return run(args)
    except UsageError as e:
        print(f"llamacpp_trace: {e}", file=sys.stderr)
        return 2


def context_params(L, args, n_ctx: int, n_batch: int, n_ubatch: int | None = None):
    """One sequence of n_ctx positions, the whole prompt as one batch (in
    ubatches of n_ubatch where given), flash attention as asked (off by
    default), the KV cache type and thread count asked for."""
    cparams = L.llama_context_default_params()
    cparams.n_ctx = max(n_ctx, 32)
    cparams.n_batch = max(n_batch, 32)
    cparams.n_ubatch = min(n_ubatch, cparams.n_batch) if n_ubatch else max(n_batch, 32)
    cparams.n_seq_max = 1
    threads = args.threads or os.cpu_count() or 1
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if getattr(args, "flash_attn", "off") == "on"
                               else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    kv = {"f32": L.GGML_TYPE_F32, "f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0, "q4_0": L.GGML_TYPE_Q4_0}
    k, _, v = args.kv_type.partition(",")
    cparams.type_k = kv[k]
    cparams.type_v = kv[v or k]
    # llama-cpp-python keeps the sliding-window cache full-size;
    # llama-completion's default cuts it to the window and a ubatch
    cparams.swa_full = getattr(args, "swa_full", "on") == "on"
    cparams.no_perf = True
    return cparams


def fill_batch(batch, tokens: list[int], pos0: int, all_logits: bool) -> None:
    """One sequence's tokens at positions pos0…, asking for the logits of
    every position or of the last one only."""
    batch.n_tokens = len(tokens)
    for i, tok in enumerate(tokens):
        batch.token[i] = tok
        batch.pos[i] = pos0 + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if all_logits or i == len(tokens) - 1 else 0


def greedy(L, model, ids: list[int], args, top: list | None = None) -> list[int]:
    """N greedy tokens after `ids`, computed the way llama.cpp runs a model:
    the prompt as one batch asking for the last position's logits only (so
    the last layer finishes with that row alone), then one token at a time.
    `top`, where given, receives the prompt's last logits' 16 largest as
    [id, value] (the values exact: float32 widened to float)."""
    n = args.generate
    if n < 0:
        raise UsageError("--generate: must be at least 0")
    T = len(ids)
    ctx = L.llama_init_from_model(model, context_params(L, args, T + n, T, args.ubatch))
    if not ctx:
        raise RuntimeError("llama_init_from_model failed (run with -v for llama.cpp's log)")
    batch = L.llama_batch_init(max(T, 1), 0, 1)
    out: list[int] = []
    try:
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        step, pos = list(ids), 0
        while len(out) < n:
            fill_batch(batch, step, pos, all_logits=False)
            rc = L.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            if top is not None and not out:
                best = np.argsort(-logits, kind="stable")[:16]
                top.extend([int(i), float(logits[i])] for i in best)
            nxt = int(np.argmax(logits))
            out.append(nxt)
            pos += len(step)
            step = [nxt]
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
    return out


def run(args) -> int:
    model_path = Path(args.model)
    if not model_path.is_file():
        raise UsageError(f"{model_path}: no such file")
    if model_path.suffix.lower() != ".gguf":
        raise UsageError(f"{model_path}: not a .gguf file")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads: must be at least 1")
    if args.ubatch is not None and (args.ubatch < 1 or args.generate is None or args.out is not None):
        raise UsageError("--ubatch: a positive count, with --generate and without -o (a trace is one ubatch)")
    patterns = parse_stages(args.stages)
    ids = parse_tokens(args.tokens) if args.tokens is not None else None

    import llama_cpp
    import llama_cpp.llama_cpp as L

    # keep llama.cpp quiet unless -v
    @L.llama_log_callback
    def log_cb(_level, text, _ud):
        if args.verbose and text:
            sys.stderr.write(text.decode("utf-8", "replace"))

    L.llama_log_set(log_cb, None)
    _KEEP_ALIVE.append(log_cb)  # llama.cpp may still log after run() returns
    L.llama_backend_init()
    ggml = Ggml(L._lib._name)

    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    if args.no_repack:
        mparams.use_extra_bufts = False
    model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model:
        raise UsageError(f"{model_path}: llama.cpp could not load the model (run with -v for its log)")
    ctx = None
    batch = None
    try:
        vocab = L.llama_model_get_vocab(model)
        n_vocab = L.llama_vocab_n_tokens(vocab)
        gguf_arch = meta_str(L, model, "general.architecture") or "?"
        arch = ARCH_MAP.get(gguf_arch, gguf_arch)
        if gguf_arch not in ARCH_MAP:
            print(f"llamacpp_trace: warning: architecture {gguf_arch!r} is not one plumb knows; "
                  "tracing anyway (check the mapping with --list-nodes)", file=sys.stderr)
        n_layers = L.llama_model_n_layer(model)
        n_head = L.llama_model_n_head(model)
        key_len = meta_str(L, model, f"{gguf_arch}.attention.key_length")
        head_dim = int(key_len) if key_len else L.llama_model_n_embd(model) // n_head
        rope_type = L.llama_model_rope_type(model)
        qpas = meta_str(L, model, f"{gguf_arch}.attention.query_pre_attn_scalar")
        if gguf_arch in ("gemma2", "gemma3") and qpas and float(qpas) != float(head_dim):
            # llama.cpp's gemma3 graph scales Q by 1/sqrt(head_dim) (27B: 1/sqrt(n_embd/n_head))
            # and never reads this key; transformers and plumb use query_pre_attn_scalar**-0.5.
            print(f"llamacpp_trace: warning: {gguf_arch}.attention.query_pre_attn_scalar = {qpas} but "
                  f"head_dim = {head_dim}: llama.cpp ignores the key and scales attention by "
                  f"1/sqrt({head_dim}), so attn_scores and everything after them differ from "
                  "engines that honour it", file=sys.stderr)
        unpermute = rope_type == LLAMA_ROPE_TYPE_NORM and not args.no_unpermute

        if ids is None:
            ids = tokenize(L, vocab, args.prompt, not args.no_bos, args.special)
            if not ids:
                raise UsageError("the prompt tokenizes to no tokens")
        bad = [i for i in ids if i >= n_vocab]
        if bad:
            raise UsageError(f"token id {bad[0]} out of range (vocabulary {n_vocab})")
        T = len(ids)
        if args.generate is not None:
            top: list = []
            generated = greedy(L, model, ids, args, top)
            print(json.dumps({"tokens": ids, "generated": generated, "top_logits": top}))
            if args.out is None:
                return 0
        sel = Selection(patterns, parse_layers(args.layers, n_layers))

        capture = Capture(ggml, sel.layers, args.list_nodes)
        cb = L.ggml_backend_sched_eval_callback(capture)

        cparams = context_params(L, args, T, T)
        cparams.embeddings = False
        cparams.offload_kqv = False
        cparams.op_offload = False
        cparams.no_perf = True
        cparams.cb_eval = cb
        cparams.cb_eval_user_data = None
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed (run with -v for llama.cpp's log)")
        # Creating the context may run a warm-up/reserve graph through the
        # scheduler; only the decode below counts.
        capture.nodes.clear()
        capture.by_ptr.clear()
        capture.graphs = 0

        batch = L.llama_batch_init(T, 0, 1)
        fill_batch(batch, ids, 0, all_logits=True)
        rc = L.llama_decode(ctx, batch)
        if capture.error is not None:
            raise capture.error
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        if capture.graphs:
            raise RuntimeError("llama.cpp split the prompt into several graphs; cannot map the nodes")
        if not capture.nodes:
            raise RuntimeError("the evaluation callback saw no nodes")

        mapper = Mapper(capture.nodes, T, n_layers, sel, unpermute, head_dim)
        tensors = mapper.run()
    finally:
        if batch is not None:
            L.llama_batch_free(batch)
        if ctx:
            L.llama_free(ctx)
        L.llama_model_free(model)

    if unpermute and args.verbose:
        print("llamacpp_trace: note: NORM rope: Q/K stages permuted back to the HuggingFace layout",
              file=sys.stderr)
    meta = {
        "plumb.engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, CPU)",
        "plumb.model": model_path.resolve().name,
        "plumb.model_sha256": sha256_file(model_path),
        "plumb.arch": arch,
        "plumb.precision": f"llama.cpp CPU, KV cache {args.kv_type}",
    }
    return save_trace(args, tensors, ids, meta, lambda k, _s: f"<- {mapper.sources[k]}")


if __name__ == "__main__":
    sys.exit(main())
