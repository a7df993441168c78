#!/usr/bin/env python3
"""Reference outputs for Gemma 3 270M (Q4_K_M GGUF) from Hugging Face transformers.

Loads ``models/gemma-3-270m-q4_k_m.gguf`` (produced by ``scripts/fetch-model.sh``)
with transformers' GGUF loader -- ``AutoTokenizer`` / ``AutoModelForCausalLM``
``.from_pretrained(dir, gguf_file=name)``, which dequantizes every tensor to
float32 -- runs it on the CPU with eager attention, and writes a JSON file of
reference values that plumb's Rust tests compare against:

* ``tokenizer``: token ids for a set of test strings (``cases``, plus edge
  cases in ``extra_cases``), with and without special tokens (BOS), plus the
  decoded text and the token strings;
* ``greedy``: greedy decoding (32 new tokens) for several prompts, done as a
  manual loop of full forward passes (no KV cache), recording for every step
  the chosen id, the top-1 and top-2 logits and their margin, so a test can
  tell a near-tie from a bug;
* ``logits``: for "The capital of France is" (with BOS), the last position's
  top-20 (id, logit), logits at a fixed sample of ids, and per-position
  statistics (max, min, mean, std) of each logits row;
* ``metadata``: versions, the model file's sha256, the config transformers
  built from the GGUF, and a cross-check of transformers' tokenizer against a
  real SentencePiece model rebuilt from the GGUF vocabulary (the algorithm
  llama.cpp implements).

Note the reference model is the *dequantized* GGUF evaluated in float32, so an
engine that computes the same math from the quantized weights should match it
closely (differences come only from accumulation order / activation rounding).

Everything is deterministic (no sampling, fixed seed, deterministic torch
algorithms); exact float values may still move in the last bits between torch
builds / CPUs, so tests should compare logits with a tolerance.

Requires: torch, transformers (with accelerate), gguf, numpy, sentencepiece.
These are NOT part of CI; this script is run by hand to (re)generate
``testdata/gemma3-270m/reference.json``. It never touches the network
(HF_HUB_OFFLINE is forced on).

Usage:
    /path/to/venv/bin/python reference/gemma_reference.py \
        [--model models/gemma-3-270m-q4_k_m.gguf] \
        [--out testdata/gemma3-270m/reference.json]

Relative paths default to, and are resolved against, the repository root
(the parent of this script's directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "models/gemma-3-270m-q4_k_m.gguf"
DEFAULT_OUT = "testdata/gemma3-270m/reference.json"

TOKENIZER_STRINGS = [
    "Hello, world!",
    "The capital of France is",
    "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n",
    "a  b   c    d\t\te\n\n\nf",
    "1234567890 3.14159 1,000,000",
    "Привет, как дела?",
    "日本語のテキストです。中文也可以。",
    "emoji 🙂🚀👍🏽 done",
    "Crème brûlée à la française, naïve café",
    "  leading spaces and trailing  ",
    "",
]

# Further edge cases, kept apart so TOKENIZER_STRINGS stays the agreed list:
# chat-template control tokens (matched whole as special tokens), HTML
# user-defined tokens, byte fallback, CR/LF, NBSP, combining marks, tabs.
EXTRA_TOKENIZER_STRINGS = [
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<b>bold</b> text <td>x</td>",
    "rare \u0001 char \U0001F9FF\U000E0001 \ua66e",
    "x\r\ny",
    "   ",
    " ",
    "\n",
    "tab\there",
    "\ufb01 ligature \uff21 fullwidth",
    "a\u00a0b",
    "\u01c4 e\u0301",
]

GREEDY_PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def quicksort(arr):",
    "The three primary colors are",
    "Water boils at",
    "In 1492, Columbus",
    "The quick brown fox",
    "1, 2, 3, 4, 5,",
]
GREEDY_NEW_TOKENS = 32

LOGITS_PROMPT = "The capital of France is"
LOGITS_TOP_K = 20
# Logits at every LOGITS_SAMPLE_STRIDE-th vocabulary id of the last position:
# a spread-out check of the whole row (incl. the tied lm_head) beyond the top-k.
LOGITS_SAMPLE_STRIDE = 4096


def resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else REPO_ROOT / p


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_section(tok, strings) -> list[dict]:
    cases = []
    for text in strings:
        case = {"text": text}
        for key, special in (("with_special", True), ("without_special", False)):
            ids = tok(text, add_special_tokens=special)["input_ids"]
            case[key] = {
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        cases.append(case)
    return cases


def sentencepiece_crosscheck(model_path: Path, texts: list[str], expected: list[list[int]]) -> dict:
    """Re-tokenize with a real SentencePiece BPE model rebuilt from the GGUF vocab.

    transformers builds Gemma's tokenizer as a `tokenizers` BPE whose merges it
    derives from the vocabulary order; llama.cpp implements SentencePiece BPE
    over the scores. This checks the two agree on our strings (plain encode, so
    control-token text such as "<start_of_turn>" is *not* parsed as special by
    SentencePiece -- those strings are expected to differ and are listed apart).
    """
    try:
        import sentencepiece as spm
        from gguf import GGUFReader
        from sentencepiece import sentencepiece_model_pb2 as pb
    except Exception as e:  # pragma: no cover - optional
        return {"skipped": f"sentencepiece unavailable: {e}"}

    reader = GGUFReader(str(model_path))
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    unk = int(fields["tokenizer.ggml.unknown_token_id"].contents())

    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.unk_id = unk
    ts.bos_id = int(fields["tokenizer.ggml.bos_token_id"].contents())
    ts.eos_id = int(fields["tokenizer.ggml.eos_token_id"].contents())
    ts.pad_id = int(fields["tokenizer.ggml.padding_token_id"].contents())
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(fields["tokenizer.ggml.add_space_prefix"].contents())
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    piece = pb.ModelProto.SentencePiece
    # GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    kinds = {1: piece.NORMAL, 2: piece.UNKNOWN, 3: piece.CONTROL, 4: piece.USER_DEFINED, 5: piece.UNUSED, 6: piece.BYTE}
    for i, (t, sc, ty) in enumerate(zip(tokens, scores, types)):
        p = m.pieces.add()
        # runs of spaces are stored as real spaces; SentencePiece spells them with U+2581
        p.piece = "\u2581" * len(t) if (ty == 4 and " " in t and not t.strip()) else t
        p.score = float(sc)
        p.type = piece.UNKNOWN if i == unk else kinds[int(ty)]
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())

    control = {t for t, ty in zip(tokens, types) if ty == 3}
    mismatches, expected_mismatches = [], []
    for text, ids in zip(texts, expected):
        got = sp.encode(text)
        if got != ids:
            has_control = any(c in text for c in control)
            (expected_mismatches if has_control else mismatches).append(
                {"text": text, "transformers": ids, "sentencepiece": got}
            )
    return {
        "method": "sentencepiece BPE ModelProto rebuilt from GGUF tokens/scores/types "
        "(identity normalizer, no dummy prefix, byte_fallback, split_digits)",
        "sentencepiece_version": spm.__version__,
        "compared": len(texts),
        "agrees": not mismatches,
        "mismatches": mismatches,
        "expected_mismatches_control_tokens_in_text": [m["text"] for m in expected_mismatches],
    }


def top2(row):
    import torch

    vals, idx = torch.topk(row, 2)
    return int(idx[0]), float(vals[0]), int(idx[1]), float(vals[1])


def greedy_section(tok, model) -> list[dict]:
    import torch

    results = []
    for prompt in GREEDY_PROMPTS:
        prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        ids = list(prompt_ids)
        steps = []
        for step in range(GREEDY_NEW_TOKENS):
            with torch.no_grad():
                out = model(input_ids=torch.tensor([ids]), use_cache=False)
            row = out.logits[0, -1].float()
            id1, l1, id2, l2 = top2(row)
            steps.append(
                {
                    "step": step,
                    "position": len(ids) - 1,
                    "token_id": id1,
                    "token": tok.convert_ids_to_tokens(id1),
                    "top1_logit": l1,
                    "top2_id": id2,
                    "top2_logit": l2,
                    "margin": l1 - l2,
                }
            )
            ids.append(id1)
        generated = ids[len(prompt_ids):]
        results.append(
            {
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "generated_ids": generated,
                "generated_text": tok.decode(generated, skip_special_tokens=False),
                "min_margin": min(s["margin"] for s in steps),
                "steps": steps,
            }
        )
        print(f"  greedy {prompt!r} -> {results[-1]['generated_text']!r}", file=sys.stderr)
    return results


def logits_section(tok, model) -> dict:
    import torch

    ids = tok(LOGITS_PROMPT, add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
    last = logits[-1]
    vals, idx = torch.topk(last, LOGITS_TOP_K)
    sample_ids = list(range(0, last.shape[0], LOGITS_SAMPLE_STRIDE))
    per_position = []
    for pos in range(logits.shape[0]):
        row = logits[pos]
        per_position.append(
            {
                "position": pos,
                "input_id": ids[pos],
                "argmax": int(torch.argmax(row)),
                "max": float(row.max()),
                "min": float(row.min()),
                "mean": float(row.mean()),
                "std": float(row.std(unbiased=False)),
            }
        )
    return {
        "prompt": LOGITS_PROMPT,
        "prompt_ids": ids,
        "vocab_size": int(last.shape[0]),
        "std_kind": "population (divide by N)",
        "last_top_k": [
            {"id": int(i), "token": tok.convert_ids_to_tokens(int(i)), "logit": float(v)}
            for v, i in zip(vals, idx)
        ],
        "last_sampled": {
            "stride": LOGITS_SAMPLE_STRIDE,
            "ids": sample_ids,
            "logits": [float(last[i]) for i in sample_ids],
        },
        "per_position": per_position,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"GGUF file (default {DEFAULT_MODEL})")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"output JSON (default {DEFAULT_OUT})")
    args = ap.parse_args()

    import numpy
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = resolve(args.model)
    out_path = resolve(args.out)
    if not model_path.is_file():
        sys.exit(f"model not found: {model_path} (run scripts/fetch-model.sh)")

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    t0 = time.time()

    print(f"loading {model_path}", file=sys.stderr)
    kw = dict(gguf_file=model_path.name)
    tok = AutoTokenizer.from_pretrained(str(model_path.parent), **kw)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_path.parent), dtype=torch.float32, attn_implementation="eager", **kw
    )
    model.eval()

    print("tokenizer cases", file=sys.stderr)
    tokenizer_cases = tokenizer_section(tok, TOKENIZER_STRINGS)
    extra_cases = tokenizer_section(tok, EXTRA_TOKENIZER_STRINGS)
    print("logits", file=sys.stderr)
    logits = logits_section(tok, model)
    print("greedy decoding", file=sys.stderr)
    greedy = greedy_section(tok, model)
    print("sentencepiece cross-check", file=sys.stderr)
    all_cases = tokenizer_cases + extra_cases
    spm_check = sentencepiece_crosscheck(
        model_path,
        [c["text"] for c in all_cases] + [g["prompt"] for g in greedy],
        [c["without_special"]["ids"] for c in all_cases] + [g["prompt_ids"][1:] for g in greedy],
    )
    print(f"  {spm_check}", file=sys.stderr)

    try:
        import gguf

        gguf_version = getattr(gguf, "__version__", None)
        if gguf_version is None:
            from importlib.metadata import version

            gguf_version = version("gguf")
    except Exception:  # pragma: no cover - informational only
        gguf_version = None

    ids_first = tokenizer_cases[0]["with_special"]["ids"]
    result = {
        "metadata": {
            "description": "transformers reference for Gemma 3 270M Q4_K_M GGUF "
            "(dequantized to float32, CPU, eager attention); generated by reference/gemma_reference.py",
            "model_file": model_path.name,
            "model_sha256": sha256_file(model_path),
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "numpy_version": numpy.__version__,
            "gguf_version": gguf_version,
            "python_version": platform.python_version(),
            "dtype": "float32",
            "device": "cpu",
            "attn_implementation": "eager",
            "tokenizer_class": type(tok).__name__,
            "model_class": type(model).__name__,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "sentencepiece_crosscheck": spm_check,
            "greedy_note": "exactly N new tokens by argmax over full (uncached) forward passes; "
            "does not stop at EOS / <end_of_turn> (id 106)",
            "config": model.config.to_diff_dict() | {
                "layer_types": list(model.config.layer_types),
                "sliding_window": model.config.sliding_window,
                "query_pre_attn_scalar": model.config.query_pre_attn_scalar,
                "final_logit_softcapping": model.config.final_logit_softcapping,
                "attn_logit_softcapping": model.config.attn_logit_softcapping,
            },
        },
        "tokenizer": {
            "cases": tokenizer_cases,
            "extra_cases": extra_cases,
            "first_string_id_to_token": {
                str(i): t for i, t in zip(ids_first, tok.convert_ids_to_tokens(ids_first))
            },
        },
        "logits": logits,
        "greedy": greedy,
    }

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")
    tmp.replace(out_path)
    print(f"wrote {out_path} in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
