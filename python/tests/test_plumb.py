"""The Python package against the command line and against transformers.

The command line is the `plumb` binary of this checkout (target/release,
or PLUMB_BIN); goldens are the repository's: traces made by transformers
(reference/hf_trace.py) for the real model and the tiny ones.
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import plumb

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("PLUMB_BIN", ROOT / "target" / "release" / "plumb"))
REAL = ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"
TINY = ROOT / "testdata" / "tiny" / "llama"
PROMPT = "The capital of France is"

needs_real = pytest.mark.skipif(not REAL.exists(), reason="needs the real model: scripts/fetch-model.sh")


def cli(*argv):
    p = subprocess.run([str(BIN), *map(str, argv)], capture_output=True, text=True)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, p.stdout


def stage_records(lines):
    return {r["key"]: r for r in lines if r["type"] == "stage"}


@needs_real
def test_trace_has_the_command_lines_statistics():
    trace = plumb.Model(REAL).trace(PROMPT)
    _, out = cli("trace", REAL, "-p", PROMPT, "--json")
    theirs = [json.loads(line) for line in out.splitlines()]
    ours = trace.report()
    assert stage_records(ours) == stage_records(theirs)
    assert len(stage_records(ours)) == 399
    assert [r for r in ours if r["type"] == "verdict"] == [r for r in theirs if r["type"] == "verdict"]
    assert trace.top == next(r["tokens"] for r in theirs if r["type"] == "top")
    assert trace.tokens == theirs[0]["tokens"]


@needs_real
def test_real_model_matches_transformers_and_diff_is_the_command_lines():
    reference = ROOT / "testdata" / "gemma3-270m" / "hf_trace_stats.safetensors"
    trace = plumb.trace(REAL, PROMPT)
    report = plumb.diff(trace, reference)
    assert report.exit_code == 0 and not report.diverged, str(report)
    assert "PARITY" in report.text
    # The same verdict, word for word, as `plumb diff` of the same files.
    with_cli = Path(os.environ.get("TMPDIR", "/tmp")) / f"plumb-pytest-{os.getpid()}.safetensors"
    try:
        trace.save(with_cli, force=True)
        code, out = cli("diff", with_cli, reference, "--json")
        assert code == report.exit_code
        assert json.loads(out) == report.json
    finally:
        with_cli.unlink(missing_ok=True)


def test_tensors_are_numpy_and_match_transformers():
    # The tiny llama in f32, traced by transformers in f32
    # (testdata/tiny/llama/hf_trace.safetensors): every stage that both
    # traces hold agrees element by element.
    hf = plumb.load_trace(TINY / "hf_trace.safetensors")
    model = plumb.Model(TINY / "llama-f32.gguf")
    trace = model.trace(tokens=hf.tokens, tensors=True, bos=False)
    shared = [k for k in hf.tensor_keys() if k in trace.tensor_keys()]
    assert len(shared) > 20, shared
    for key in shared:
        ours, theirs = trace[key], hf[key]
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float32
        assert ours.shape == theirs.shape, key
        nmse = float(((ours.astype(np.float64) - theirs) ** 2).sum() / max((theirs.astype(np.float64) ** 2).sum(), 1e-30))
        assert nmse <= 1e-10, (key, nmse)
    # Statistics are those of the array.
    x = trace["blk.1.ffn_down"].astype(np.float64)
    s = trace.stats("blk.1.ffn_down")
    assert s["shape"] == list(x.shape)
    assert s["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert s["std"] == pytest.approx(x.std(), rel=1e-12)
    assert s["last"]["abs_max"] == pytest.approx(np.abs(x[-1]).max(), rel=1e-12)


def test_trace_from_arrays_round_trips_through_a_file(tmp_path):
    rng = np.random.default_rng(7)
    arrays = {"embedding": rng.standard_normal((5, 16)).astype(np.float32),
              "blk.0.attn_norm": rng.standard_normal((5, 16)).astype(np.float32),
              "logits": rng.standard_normal((5, 32)).astype(np.float32)}
    t = plumb.Trace.from_arrays(arrays, tokens=[1, 2, 3, 4, 5], engine="my-engine", arch="llama")
    path = tmp_path / "mine.safetensors"
    t.save(path)
    with pytest.raises(plumb.PlumbError, match="exists"):
        t.save(path)
    back = plumb.load_trace(path)
    assert back.engine == "my-engine" and back.tokens == [1, 2, 3, 4, 5]
    assert back.keys() == ["embedding", "blk.0.attn_norm", "logits"]
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)
        assert back.stats(k)["std"] == pytest.approx(v.astype(np.float64).std(), rel=1e-12)
    # The command line reads it too.
    code, out = cli("trace", "--from", path, "--json")
    assert stage_records(json.loads(line) for line in out.splitlines()).keys() == set(arrays)
    # A trace against itself is at parity; against a changed copy it is not.
    assert plumb.diff(back, t).exit_code == 0
    changed = dict(arrays, **{"blk.0.attn_norm": arrays["blk.0.attn_norm"] * 1.5})
    r = plumb.diff(plumb.Trace.from_arrays(changed, [1, 2, 3, 4, 5]), t)
    assert r.exit_code == 1 and r.diverged and r.first == "blk.0.attn_norm"


def test_bisect_gives_the_command_lines_verdict():
    a, b = TINY / "llama-q8_0.gguf", TINY / "llama-f32.gguf"
    ids = [1, 5, 9, 14, 3]
    report = plumb.bisect(a, b, tokens=ids)
    code, out = cli("bisect", a, b, "--tokens", ",".join(map(str, ids)), "--json")
    assert report.exit_code == code
    assert report.json == json.loads(out)
    # A planted fault is named.
    broken = plumb.bisect(a, b, tokens=ids, inject="ffn_down@1:scale=1.5")
    assert broken.exit_code == 1 and broken.first is not None and "blk.1." in broken.first


def test_run_and_command():
    out = plumb.run(TINY / "llama-f32.gguf", tokens=[1, 5, 9], n=4, precision="exact")
    code, text = cli("run", TINY / "llama-f32.gguf", "--tokens", "1,5,9", "-n", "4", "--precision", "exact", "--json")
    assert out == json.loads(text)
    assert plumb.command("inspect", TINY / "llama-f32.gguf", "--json")[0] == 0


@needs_real
def test_f16_math_is_a_setting_of_the_model():
    # The two builds' f16 arithmetic under flash attention: named in the
    # engine, and a short prompt's context differs (the heads are 256 wide).
    native = plumb.Model(REAL, precision="fast", f16_math="native").trace(PROMPT, stages="attn_context", layers="0",
                                                                          tensors=True)
    widened = plumb.Model(REAL, precision="fast", f16_math="widened").trace(PROMPT, stages="attn_context", layers="0",
                                                                            tensors=True)
    assert native.engine.endswith("f16 arithmetic)") and not widened.engine.endswith("f16 arithmetic)")
    assert native.meta["plumb.f16_math"] == "native" and widened.meta["plumb.f16_math"] == "widened"
    assert not np.array_equal(native["blk.0.attn_context"], widened["blk.0.attn_context"])
    with pytest.raises(plumb.PlumbError, match="needs flash attention"):
        plumb.Model(REAL, precision="fast", flash_attn="off", f16_math="native")


def test_a_prompt_traced_in_ubatches_covers_every_position():
    model = plumb.Model(TINY / "llama-q8_0.gguf", precision="fast", flash_attn="off")
    ids = list(range(3, 43))
    whole = model.trace(tokens=ids, stages="ffn_down,attn_probs", layers="2", tensors=True)
    cut = model.trace(tokens=ids, stages="ffn_down,attn_probs", layers="2", tensors=True, ubatch=16)
    assert cut.meta["plumb.ubatch"] == "16" and cut.engine.endswith(", ubatch 16)")
    assert whole["blk.2.ffn_down"].shape == cut["blk.2.ffn_down"].shape == (40, 64)
    assert "blk.2.attn_probs" in whole.keys() and "blk.2.attn_probs" not in cut.keys()


def test_bad_input_raises_plumb_error(tmp_path):
    with pytest.raises(plumb.PlumbError, match="no such file"):
        plumb.Model(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(plumb.PlumbError):
        plumb.load_trace(junk)
    model = plumb.Model(TINY / "llama-f32.gguf")
    with pytest.raises(plumb.PlumbError, match="stage"):
        model.trace(tokens=[1, 2], stages="no_such_stage")
    with pytest.raises(plumb.PlumbError, match="statistics only"):
        model.trace(tokens=[1, 2])["blk.0.attn_norm"]
    with pytest.raises(plumb.PlumbError, match="not a stage key"):
        plumb.Trace.from_arrays({"blk.0.nonsense": np.zeros((1, 2), np.float32)}, [1])
    with pytest.raises(plumb.PlumbError, match="unexpected argument|unrecognized"):
        plumb.command("trace", "--no-such-flag")


@needs_real
def test_forward_passes_release_the_gil():
    # While a trace runs on another thread, this one keeps running Python
    # at a good share of its own speed. Were the GIL held, it would get no
    # more than the interpreter's switch interval (5 ms) of the trace's time.
    model = plumb.Model(REAL)

    def spin(until):
        n = 0
        while not until():
            n += 1
        return n

    t0 = time.perf_counter()
    rate = spin(lambda: time.perf_counter() - t0 > 0.2) / (time.perf_counter() - t0)
    worker = threading.Thread(target=lambda: model.trace(tokens=list(range(2, 200)), stages="layer_out"))
    t0 = time.perf_counter()
    worker.start()
    ticks = spin(lambda: not worker.is_alive())
    took = time.perf_counter() - t0
    worker.join()
    assert took > 0.2, took
    assert ticks > 0.1 * rate * took, (ticks, rate, took)


APR = ROOT / "testdata" / "apr"


def test_apr_model_traces_as_its_gguf(tmp_path):
    # aprender's conversion of the tiny qwen2 (scripts/gen_apr_fixtures.py)
    # holds the GGUF's bytes: every stage's statistics are the same.
    ids = [5, 17, 300, 42, 9]
    a = plumb.Model(APR / "qwen2-bpe.apr").trace(tokens=ids, bos=False)
    g = plumb.Model(APR / "qwen2-bpe.gguf").trace(tokens=ids, bos=False)
    assert a.keys() == g.keys()
    for k in a.keys():
        assert a.stats(k) == g.stats(k), k
    assert plumb.Model(APR / "qwen2-bpe.apr").tokenize("What is 2+2?", bos=False) == \
        plumb.Model(APR / "qwen2-bpe.gguf").tokenize("What is 2+2?", bos=False)


def test_aprt_dump_diff_is_the_command_lines(tmp_path):
    dump = APR / "qwen2-bpe-aprt"
    ours = plumb.Model(APR / "qwen2-bpe.gguf").trace("What is 2+2?", bos=False, tensors=True)
    path = tmp_path / "plumb.safetensors"
    ours.save(path)
    report = plumb.diff(dump, ours)
    code, out = cli("diff", dump, path, "--json")
    assert report.exit_code == code
    assert report.json == json.loads(out)
