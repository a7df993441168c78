#!/usr/bin/env python3
"""Generate tiny byte-level BPE tokenizers (GPT-2 style) with reference token ids.

plumb builds a `tokenizers`-crate Tokenizer from GGUF metadata
(`tokenizer.ggml.model = "gpt2"`) and loads `tokenizer.json` from HF model
folders.  Real Qwen2 / Llama-3 vocabularies are megabytes; this script trains
two ~1000-token vocabularies with the same pipelines instead, so both paths
can be tested offline against transformers' ids.

Styles (pipelines as in the real tokenizer.json files):

  qwen2   normalizer NFC; pre-tokenizer Sequence[Split(Qwen2 regex, isolated),
          ByteLevel(add_prefix_space=False, use_regex=False)]; decoder
          ByteLevel; no post-processor (no BOS); BPE ignore_merges=False;
          specials <|endoftext|> <|im_start|> <|im_end|>.
  llama3  no normalizer; Split(Llama-3 regex, with \\p{N}{1,3}) + ByteLevel;
          decoder ByteLevel; post-processor Sequence[ByteLevel(trim_offsets=
          False), TemplateProcessing("<|begin_of_text|> $A")] exactly like
          Meta-Llama-3's tokenizer.json; BPE ignore_merges=True;
          specials <|begin_of_text|> <|end_of_text|> <|eot_id|>.

The BPE model is trained by `tokenizers`' BpeTrainer (vocab_size 1000,
initial alphabet = the 256 ByteLevel characters) on TRAINING_TEXT below.  The
special tokens are added afterwards, so -- as in the real Qwen2 / Llama-3
files -- they sit at the end of the id range and appear only in
`added_tokens`, not in `model.vocab`: qwen2 ids 1000..1002; llama3 ids
1001..1003, because llama3 also gets one hand-added vocabulary entry,
"\u0120inside" (id 1000), that no merge chain builds, so that ignore_merges
changes the ids of "<|eot_id|> inside text".

Besides the listed test strings, both styles encode "cafe\u0301 cre\u0300me
nai\u0308ve" (decomposed accents) to exercise qwen2's NFC normalizer; its
"decoded" is the NFC-composed text for qwen2.

For each style this writes, under <repo>/testdata/tokenizers/<style>/:

  tokenizer.json         Tokenizer.save()
  tokenizer_config.json  minimal; tokenizer_class PreTrainedTokenizerFast,
                         bos/eos tokens, clean_up_tokenization_spaces false
  vocab.gguf             no tensors; general.architecture ("qwen2"/"llama")
                         plus the tokenizer.ggml.* keys llama.cpp's converter
                         writes for a BPE ("gpt2") vocabulary
  expected.json          per test string: text, ids (add_special_tokens=True),
                         ids_no_special, decoded = decode(ids_no_special),
                         all produced by transformers (the oracle)

and then checks that vocab.gguf loaded through transformers' GGUF tokenizer
loader gives the same ids (printed; expected differences are explained in the
output -- that loader has no NFC normalizer and no ignore_merges).

Output is deterministic (the trainer is checked to be by training twice).

Run from anywhere, with a Python that has tokenizers, transformers (+torch for
the GGUF check through AutoTokenizer), gguf and numpy:

    HF_HUB_OFFLINE=1 /path/to/venv/bin/python scripts/gen_tiny_tokenizers.py
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gguf  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT_ROOT = REPO / "testdata" / "tokenizers"

VOCAB_SIZE = 1000

QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

STYLES = {
    "qwen2": {
        "pattern": QWEN2_PATTERN,
        "nfc": True,
        "trim_offsets": False,
        "ignore_merges": False,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|endoftext|>",
        "add_bos": False,
        "gguf_arch": "qwen2",
        "gguf_pre": "qwen2",
        "special_test": "<|im_end|> inside text",
        "unmergeable": [],
    },
    "llama3": {
        "pattern": LLAMA3_PATTERN,
        "nfc": False,
        "trim_offsets": True,
        "ignore_merges": True,
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "add_bos": True,
        "gguf_arch": "llama",
        "gguf_pre": "llama-bpe",
        "special_test": "<|eot_id|> inside text",
        # A vocabulary entry no merge chain builds (" inside" is split as
        # in|s|i|d|e by the merges): with ignore_merges=True a pre-token that
        # is a whole vocabulary entry is taken as is, so "<|eot_id|> inside
        # text" exercises the option.  Real Llama-3 vocabularies have such
        # entries too (tiktoken ranks, not a merge history).
        "unmergeable": [" inside"],
    },
}

TEST_STRINGS_COMMON = [
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
    "I'm sure they'll say it's OK",
]
# Decomposed accents (e + U+0301 ...): NFC (qwen2) composes them first.
NFC_TEST = "cafe\u0301 cre\u0300me nai\u0308ve"

# Training corpus: English prose, Python code, numbers, Russian, Chinese,
# Japanese, accented French, emoji.  Fixed text => deterministic vocabulary.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog does not seem to mind.
Hello, world! Hello again, world. Hello there, how are you today?
The capital of France is Paris. The capital of Germany is Berlin. The capital
of Italy is Rome, and the capital of Japan is Tokyo. What is the capital of Spain?
It is Madrid. I'm sure they'll say it's OK; you're right, we've seen it, I'd agree.
They're here and it's late, but we'll wait. Don't worry, it isn't far. She's
reading a book about the history of science, the theory of language and the
nature of numbers. In the beginning there was nothing, and then there was
everything: stars, planets, oceans, forests, cities and people. People write
stories, people tell stories, and stories shape the way that people think.
A language model predicts the next token given the previous tokens. The model
reads the prompt, computes attention over the context, and samples a token.
Tokenizers split text into pieces; byte-level BPE never needs an unknown token.
    leading spaces and trailing spaces are kept by the tokenizer    
a  b   c    d     e      f		tab	separated	values
one
two

three


four

def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


def main():
    for i in range(10):
        print(f"fib({i}) = {fib(i)}")
    values = [x * x for x in range(100) if x % 3 == 0]
    total = sum(values)
    return total if total > 0 else None


class Counter:
    def __init__(self, start=0):
        self.count = start

    def increment(self, step=1):
        self.count += step
        return self.count


if __name__ == "__main__":
    main()

Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 256 1024 2048 4096 65536
1234567890 9876543210 3.14159 2.71828 1.41421 0.5 0.25 1e-5 6.02e23
1,000,000 and 2,500,000 and 10,000 people; 99.9% of 100%; $19.99, 2024-05-17.
Привет, мир! Как дела? Всё хорошо, спасибо. Я читаю книгу о истории науки.
Москва — столица России. Сегодня хорошая погода, и мы идём гулять в парк.
Привет, как дела? Что нового? Давно не виделись, рад тебя видеть.
你好，世界！我们今天去公园散步。中文也可以用来写程序的注释。
北京是中国的首都。这是一个简单的例子，用于测试分词器。中文也可以。
日本語のテキストです。東京は日本の首都です。今日はいい天気ですね。
私は本を読むのが好きです。これはテストの文章です。ありがとうございます。
Crème brûlée à la française, naïve café, garçon, élève, où est la bibliothèque ?
Ça va très bien, merci. L'été dernier, nous sommes allés à la plage près de Nice.
Les élèves étudient le français et l'anglais à l'école. Noël, fête, forêt, hôtel.
emoji 🙂🚀👍🏽 done. I love pizza 🍕 and coffee ☕! Great job 👍 🎉🎉 ❤️ 😂😂😂
Rocket launch 🚀🚀 at 10:30. Smile 🙂 and wave 👋🏽. The end ✅.
"""


def training_lines() -> list[str]:
    # Several passes so frequent pairs clearly dominate; keeps the line
    # structure (newlines inside lines matter for the \s*[\r\n]+ branch).
    lines = TRAINING_TEXT.splitlines(keepends=True)
    return lines * 3


def build_tokenizer(style: str) -> Tokenizer:
    cfg = STYLES[style]
    tok = Tokenizer(models.BPE(ignore_merges=cfg["ignore_merges"]))
    if cfg["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(cfg["pattern"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=cfg["trim_offsets"], use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(training_lines(), trainer=trainer)
    # The trainer rebuilds the model; make sure the option survived.
    if tok.model.ignore_merges != cfg["ignore_merges"]:
        tok.model.ignore_merges = cfg["ignore_merges"]
    if cfg["unmergeable"]:
        doc = json.loads(tok.to_str())
        vocab = doc["model"]["vocab"]
        for text in cfg["unmergeable"]:
            ((piece, _),) = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
            assert piece not in vocab, piece
            vocab[piece] = len(vocab)
        tok = Tokenizer.from_str(json.dumps(doc))
        # The entry must really be unreachable through the merges.
        alt = Tokenizer.from_str(tok.to_str())
        alt.model.ignore_merges = False
        for text in cfg["unmergeable"]:
            assert len(alt.encode(text).ids) > 1 and len(tok.encode(text).ids) == 1, text
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in cfg["specials"]])
    if cfg["bos"] is not None:
        bos_id = tok.token_to_id(cfg["bos"])
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
                processors.TemplateProcessing(
                    single=f"{cfg['bos']} $A",
                    pair=f"{cfg['bos']} $A {cfg['bos']}:1 $B:1",
                    special_tokens=[(cfg["bos"], bos_id)],
                ),
            ]
        )
    return tok


def tokenizer_config(style: str) -> dict:
    cfg = STYLES[style]
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": cfg["bos"],
        "eos_token": cfg["eos"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }


def merges_as_strings(doc: dict) -> list[str]:
    out = []
    for m in doc["model"]["merges"]:
        if isinstance(m, str):
            out.append(m)
        else:
            a, b = m
            assert " " not in a and " " not in b, (a, b)
            out.append(f"{a} {b}")
    return out


def write_gguf(path: Path, style: str, tok_json: dict, tok: Tokenizer) -> list[str]:
    """Writes a tensor-less GGUF holding the vocabulary; returns the keys written."""
    cfg = STYLES[style]
    n = tok.get_vocab_size(with_added_tokens=True)
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    assert sorted(by_id) == list(range(n)), "vocabulary ids are not dense"
    tokens = [by_id[i] for i in range(n)]
    special_ids = {tok.token_to_id(t) for t in cfg["specials"]}
    types = [int(gguf.TokenType.CONTROL) if i in special_ids else int(gguf.TokenType.NORMAL) for i in range(n)]
    merges = merges_as_strings(tok_json)

    w = gguf.GGUFWriter(str(path), cfg["gguf_arch"])  # adds general.architecture
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(cfg["gguf_pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if cfg["bos"] is not None:
        w.add_bos_token_id(tok.token_to_id(cfg["bos"]))
    else:
        # llama.cpp's converter writes bos = <|endoftext|> for Qwen2 (from
        # config.json's bos_token_id) while add_bos_token stays false.
        w.add_bos_token_id(tok.token_to_id(cfg["eos"]))
    w.add_eos_token_id(tok.token_to_id(cfg["eos"]))
    w.add_add_bos_token(cfg["add_bos"])
    keys = list(w.kv_data[0].keys())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Read back and compare.
    r = gguf.GGUFReader(str(path))
    assert len(r.tensors) == 0
    f = r.fields
    got_tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.tokens"].data]
    got_merges = [bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.merges"].data]
    got_types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    assert got_tokens == tokens and got_merges == merges and got_types == types
    assert f["tokenizer.ggml.token_type"].types[-1] == gguf.GGUFValueType.INT32
    return keys


def test_strings(style: str) -> list[str]:
    return TEST_STRINGS_COMMON + [STYLES[style]["special_test"], NFC_TEST, ""]


def expected_entries(folder: Path, style: str, tok: Tokenizer) -> list[dict]:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    auto = AutoTokenizer.from_pretrained(str(folder))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **tokenizer_config(style))
    entries = []
    for text in test_strings(style):
        ids = auto(text, add_special_tokens=True)["input_ids"]
        ids_ns = auto(text, add_special_tokens=False)["input_ids"]
        decoded = auto.decode(ids_ns)
        # Cross-checks: the other transformers entry point and the raw library.
        assert fast(text, add_special_tokens=True)["input_ids"] == ids, (style, text)
        assert fast(text, add_special_tokens=False)["input_ids"] == ids_ns, (style, text)
        assert tok.encode(text, add_special_tokens=True).ids == ids, (style, text)
        assert tok.encode(text, add_special_tokens=False).ids == ids_ns, (style, text)
        assert tok.decode(ids_ns, skip_special_tokens=False) == decoded, (style, text)
        entries.append({"text": text, "ids": ids, "ids_no_special": ids_ns, "decoded": decoded})
    return entries


def gguf_through_transformers(folder: Path, style: str, entries: list[dict]) -> None:
    """Loads vocab.gguf with transformers' GGUF tokenizer loader and compares ids.

    The GGUF is copied alone into a scratch folder: next to tokenizer.json,
    from_pretrained would quietly load that file instead.
    """
    import shutil

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    def compare(label: str, t) -> None:
        bad = []
        for e in entries:
            a = t(e["text"], add_special_tokens=True)["input_ids"]
            b = t(e["text"], add_special_tokens=False)["input_ids"]
            if a != e["ids"] or b != e["ids_no_special"]:
                bad.append((e["text"], b, e["ids_no_special"], a[:1], e["ids"][:1]))
        print(f"  [{style}] {label}: {len(entries) - len(bad)}/{len(entries)} strings match")
        for text, got, want, g0, w0 in bad:
            print(f"      MISMATCH {text!r}\n        gguf: {got} (first with specials: {g0})\n        json: {want} (first with specials: {w0})")

    with tempfile.TemporaryDirectory() as d:
        shutil.copy(folder / "vocab.gguf", Path(d) / "vocab.gguf")
        for label, load in (
            ("PreTrainedTokenizerFast", lambda: PreTrainedTokenizerFast.from_pretrained(d, gguf_file="vocab.gguf")),
            ("AutoTokenizer", lambda: AutoTokenizer.from_pretrained(d, gguf_file="vocab.gguf")),
        ):
            try:
                t = load()
            except Exception as exc:  # noqa: BLE001
                print(f"  [{style}] {label}(gguf_file=vocab.gguf) failed: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            compare(f"{label}.from_pretrained(gguf_file=vocab.gguf) -> {type(t).__name__}", t)
            # transformers' GGUF loader builds a plain GPT2-style BPE: no NFC
            # normalizer (qwen2) and no ignore_merges (llama3).  With those
            # two put back, the ids must all match -- i.e. vocab.gguf holds
            # exactly tokenizer.json's vocabulary and merges.
            backend = t.backend_tokenizer
            if STYLES[style]["nfc"]:
                backend.normalizer = normalizers.NFC()
            if STYLES[style]["ignore_merges"]:
                backend.model.ignore_merges = True
            compare(f"  same, with NFC/ignore_merges set on its backend", t)


def dump_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    import transformers

    print(f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, gguf {importlib.metadata.version('gguf')}")
    for style in STYLES:
        folder = OUT_ROOT / style
        folder.mkdir(parents=True, exist_ok=True)
        tok = build_tokenizer(style)
        # Determinism: a second training run must give the identical file.
        again = build_tokenizer(style)
        assert tok.to_str() == again.to_str(), f"{style}: BpeTrainer output is not deterministic"

        tok.save(str(folder / "tokenizer.json"), pretty=True)
        doc = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        dump_json(folder / "tokenizer_config.json", tokenizer_config(style))
        keys = write_gguf(folder / "vocab.gguf", style, doc, tok)

        entries = expected_entries(folder, style, tok)
        # One entry per line: small, and diffs stay readable.
        (folder / "expected.json").write_text(
            "[\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]\n", encoding="utf-8"
        )

        merges = doc["model"]["merges"]
        print(
            f"{style}: vocab {tok.get_vocab_size(True)} (model {len(doc['model']['vocab'])}), "
            f"merges {len(merges)} stored as {type(merges[0]).__name__}, "
            f"ignore_merges={doc['model'].get('ignore_merges')}"
        )
        print(f"  gguf keys: {keys}")
        # Does ignore_merges change anything on the test strings?
        if STYLES[style]["ignore_merges"]:
            alt = Tokenizer.from_str(tok.to_str())
            alt.model.ignore_merges = False
            diff = [e["text"] for e in entries if alt.encode(e["text"], add_special_tokens=False).ids != e["ids_no_special"]]
            print(f"  ignore_merges=False would change: {diff if diff else 'nothing'}")
        gguf_through_transformers(folder, style, entries)
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.gguf", "expected.json"):
            size = (folder / name).stat().st_size
            assert size < 200_000, (name, size)
            print(f"  {folder.relative_to(REPO) / name}: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
