#!/usr/bin/env python3
"""Makes the APR test files under testdata/apr/ with aprender's own `apr`.

    python scripts/gen_apr_fixtures.py [--apr PATH]     # .venv-ref's python (needs gguf)

`apr` comes from `cargo install aprender` (the version is written to
testdata/apr/VERSION); by default .cache/aprender/bin/apr, where
`cargo install aprender --root .cache/aprender` puts it.

Writes:
  qwen2-bpe.gguf     the tiny qwen2 (testdata/tiny/qwen2) with the tiny
                     byte-level BPE vocabulary of testdata/tokenizers/qwen2
                     (1003 tokens) instead of its SentencePiece one: `apr
                     trace` encodes its prompt with the file's BPE merges and
                     stops without them. The embedding's first 512 rows are
                     the tiny model's, the other 491 are drawn (seed 0) at
                     the same scale.
  qwen2-bpe.apr      `apr import qwen2-bpe.gguf` (HF tensor names, as
                     aprender writes for qwen)
  llama-f32.apr      `apr import testdata/tiny/llama/llama-f32.gguf`
                     (GGUF tensor names, q/k rows as llama.cpp permutes them)
  qwen3-f32.apr      `apr import testdata/tiny/qwen3/qwen3-f32.gguf` (HF
                     names, q/k norms)
  llama-q8_0-preserve.apr, qwen2-q8_0-preserve.apr
                     `apr import --preserve-q4k` of the tiny Q8_0 GGUFs:
                     aprender's other writer (ggml type ids and blocks as
                     the GGUF has them, GGUF names, no footer)
  llama-int8.apr     `apr convert llama-f32.apr --quantize int8` (APR Q8)
  llama-int4.apr     `apr convert llama-f32.apr --quantize int4` (APR Q4)
  qwen2-bpe-aprt/    `apr trace qwen2-bpe.apr --save-tensor all
                     --save-tensor-layers 0..3`: every stage of every layer,
                     for the prompt apr traces ("What is 2+2?", no BOS)
  apr-*.txt          what `apr` printed for each step
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGUFValueType

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "testdata" / "apr"


def field_value(f):
    """A GGUFReader field as a Python value (scalars, strings, arrays)."""
    types = f.types
    if types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if types[0] == GGUFValueType.ARRAY:
        if types[1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def bpe_qwen2(path):
    model = GGUFReader(ROOT / "testdata/tiny/qwen2/qwen2-f32.gguf")
    vocab = GGUFReader(ROOT / "testdata/tokenizers/qwen2/vocab.gguf")
    tokens = field_value(vocab.fields["tokenizer.ggml.tokens"])
    w = GGUFWriter(str(path), "qwen2")
    for k, f in model.fields.items():
        if k.startswith("GGUF.") or k.startswith("tokenizer.") or k == "general.architecture":
            continue
        vt = f.types[0]
        if vt == GGUFValueType.STRING:
            w.add_string(k, field_value(f))
        elif vt == GGUFValueType.UINT32:
            w.add_uint32(k, field_value(f))
        elif vt == GGUFValueType.FLOAT32:
            w.add_float32(k, field_value(f))
        else:
            sys.exit(f"unexpected metadata type {vt} for {k}")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(field_value(vocab.fields["tokenizer.ggml.pre"]))
    w.add_token_list(tokens)
    w.add_token_types(field_value(vocab.fields["tokenizer.ggml.token_type"]))
    w.add_token_merges(field_value(vocab.fields["tokenizer.ggml.merges"]))
    w.add_bos_token_id(field_value(vocab.fields["tokenizer.ggml.bos_token_id"]))
    w.add_eos_token_id(field_value(vocab.fields["tokenizer.ggml.eos_token_id"]))
    w.add_add_bos_token(False)
    rng = np.random.default_rng(0)
    for t in model.tensors:
        data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name == "token_embd.weight":
            extra = rng.standard_normal((len(tokens) - data.shape[0], data.shape[1])) * data.std()
            data = np.concatenate([data, extra.astype(np.float32)])
        w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def rel(a):
    """Paths as the repository names them, so the logs say the same anywhere."""
    return str(a.relative_to(ROOT)) if isinstance(a, Path) and a.is_absolute() else str(a)


def apr(binary, *args, log):
    args = [rel(a) for a in args]
    p = subprocess.run([binary, *args], capture_output=True, text=True, cwd=ROOT)
    (OUT / log).write_text(f"$ apr {' '.join(args)}\n{p.stdout}{p.stderr}")
    if p.returncode != 0:
        sys.exit(f"apr {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}{p.stderr}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apr", default=str(ROOT / ".cache/aprender/bin/apr"))
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    version = subprocess.run([a.apr, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    (OUT / "VERSION").write_text(version + "\n")
    bpe_qwen2(OUT / "qwen2-bpe.gguf")
    apr(a.apr, "import", OUT / "qwen2-bpe.gguf", "-o", OUT / "qwen2-bpe.apr", log="apr-import-qwen2.txt")
    for arch in ["llama", "qwen3"]:
        apr(a.apr, "import", ROOT / f"testdata/tiny/{arch}/{arch}-f32.gguf", "-o", OUT / f"{arch}-f32.apr",
            log=f"apr-import-{arch}.txt")
    for arch in ["llama", "qwen2"]:
        apr(a.apr, "import", ROOT / f"testdata/tiny/{arch}/{arch}-q8_0.gguf", "-o", OUT / f"{arch}-q8_0-preserve.apr",
            "--preserve-q4k", log=f"apr-import-{arch}-preserve.txt")
    for q in ["int8", "int4"]:
        apr(a.apr, "convert", OUT / "llama-f32.apr", "--quantize", q, "-o", OUT / f"llama-{q}.apr", "-f",
            log=f"apr-convert-{q}.txt")
    dump = OUT / "qwen2-bpe-aprt"
    shutil.rmtree(dump, ignore_errors=True)
    apr(a.apr, "trace", OUT / "qwen2-bpe.apr", "--save-tensor", "all", "--save-tensor-dir", dump,
        "--save-tensor-layers", "0..3", log="apr-trace-qwen2.txt")
    print(f"wrote {OUT} with {version}")


if __name__ == "__main__":
    main()
