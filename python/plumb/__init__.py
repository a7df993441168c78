"""plumb from Python: trace a model's forward pass into numpy arrays, and
compare traces and models with the verdicts the ``plumb`` command prints.

    import plumb
    model = plumb.Model("models/gemma-3-270m-q4_k_m.gguf")
    trace = model.trace("The capital of France is", tensors=True)
    trace.stats("blk.0.attn_out")["all"]["std"]
    trace["blk.0.attn_out"]            # numpy float32, [tokens, width]

Everything runs in plumb's own engine (the Rust library under the command
line): the same flags, the same numbers, the same JSON. Traces are files of
format 1 (docs/TRACE_FORMAT.md in the repository), so a trace written here
opens in ``plumb diff`` and the other way round. Bad input raises
:class:`PlumbError`, where the command line exits with code 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _plumb
from ._plumb import PlumbError

__version__: str = _plumb.__version__
__all__ = ["Model", "Trace", "Report", "PlumbError", "trace", "load_trace", "diff", "bisect", "run", "command"]

PathLike = Union[str, "os.PathLike[str]"]


def _flag(name: str, value: Any) -> List[str]:
    """A ``--name value`` pair, or nothing when value is None/False;
    ``True`` gives the bare flag."""
    if value is None or value is False:
        return []
    if value is True:
        return [name]
    return [name, str(value)]


def _prompt_flags(prompt: Optional[str], tokens: Optional[Sequence[int]], file: Optional[PathLike],
                  bos: bool, special: bool) -> List[str]:
    flags: List[str] = []
    if prompt is not None:
        # `--prompt=` keeps a prompt that starts with '-' a value.
        flags.append(f"--prompt={prompt}")
    if tokens is not None:
        flags += ["--tokens", ",".join(str(int(t)) for t in tokens)]
    flags += _flag("--file", os.fspath(file) if file is not None else None)
    flags += _flag("--no-bos", not bos)
    flags += _flag("--special", special)
    return flags


def _settings_flags(prefix: str, kv_type: str, flash_attn: str, repack: str,
                    f16_math: str = "auto") -> List[str]:
    return [f"--{prefix}kv-type", kv_type, f"--{prefix}flash-attn", flash_attn, f"--{prefix}repack", repack,
            f"--{prefix}f16-math", f16_math]


class Trace:
    """One forward pass, stage by stage: statistics for every stage traced,
    and the tensors of those kept (``tensors=True``).

    Keys name a stage and its layer as trace files do: ``embedding``,
    ``blk.3.attn_out``, ``logits``. ``trace[key]`` is that stage's tensor as a
    float32 array, tokens on the first axis (attention scores and
    probabilities are ``[heads, tokens, keys]``).
    """

    def __init__(self, inner: "_plumb.Trace") -> None:
        self._t = inner

    @staticmethod
    def load(path: PathLike) -> "Trace":
        """Reads a trace file (format 1) written by any engine."""
        return Trace(_plumb.Trace.load(os.fspath(path)))

    @staticmethod
    def from_arrays(tensors: Mapping[str, np.ndarray], tokens: Sequence[int], engine: str = "python",
                    arch: str = "?", meta: Optional[Mapping[str, str]] = None) -> "Trace":
        """A trace from your own engine's arrays, to save and diff against
        plumb's. ``tensors`` maps stage keys to arrays laid out as plumb's
        (``[tokens, width]``; float32). Statistics are computed as plumb
        computes its own."""
        m = {"plumb.engine": engine, "plumb.arch": arch}
        m.update(meta or {})
        arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
        return Trace(_plumb.Trace.from_arrays(arrays, [int(t) for t in tokens], m))

    def save(self, path: PathLike, force: bool = False) -> None:
        """Writes the trace file; an existing file is replaced only with
        ``force=True``."""
        self._t.save(os.fspath(path), force)

    def keys(self) -> List[str]:
        """Every stage with statistics, in the order the forward pass ran."""
        return self._t.keys()

    def tensor_keys(self) -> List[str]:
        """The stages whose tensors the trace holds."""
        return self._t.tensor_keys()

    def stats(self, key: str) -> Dict[str, Any]:
        """A stage's statistics over every token, as trace files hold them:
        ``shape``, count, mean, std, min, max, abs_max, l2, nan and inf,
        and under ``last`` the same over the last token alone."""
        return json.loads(self._t.stats_json(key))

    def tensor(self, key: str) -> np.ndarray:
        """A stage's tensor (a float32 copy)."""
        return self._t.tensor(key)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.tensor(key)

    def __contains__(self, key: object) -> bool:
        return key in self._t.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._t.keys())

    @property
    def tokens(self) -> List[int]:
        return self._t.tokens

    @property
    def meta(self) -> Dict[str, str]:
        """The file's metadata (``plumb.engine``, ``plumb.arch``, ...)."""
        return self._t.meta

    @property
    def engine(self) -> str:
        return self._t.engine

    @property
    def arch(self) -> str:
        return self._t.arch

    def report(self) -> List[Dict[str, Any]]:
        """The records ``plumb trace --json`` prints for this trace: a
        header, one per stage, the layer verdicts, the next-token list and
        any continuation."""
        return [json.loads(line) for line in self._t.report().splitlines() if line]

    @property
    def verdicts(self) -> List[Dict[str, Any]]:
        """Per-layer verdicts (OK, HIGH-VAR, ANOMALY) with their reasons."""
        return [r for r in self.report() if r["type"] == "verdict"]

    @property
    def top(self) -> List[Dict[str, Any]]:
        """The most likely next tokens at the last position."""
        return next((r["tokens"] for r in self.report() if r["type"] == "top"), [])

    def __repr__(self) -> str:
        return (f"<plumb.Trace {self.engine} {self.arch}: {len(self.tokens)} tokens, "
                f"{len(self)} stages, {len(self.tensor_keys())} tensors>")


class Model:
    """A model loaded once (GGUF file, HuggingFace folder or APR file), traced as many
    times as asked.

    ``precision`` is ``"exact"`` (transformers' arithmetic, the default, as
    for ``plumb trace``) or ``"fast"`` (llama.cpp's). ``kv_type``,
    ``flash_attn``, ``repack`` and ``f16_math`` are the command line's
    settings; ``"auto"`` resolves them by precision (and ``f16_math`` by this
    CPU).
    """

    def __init__(self, path: PathLike, precision: str = "exact", threads: Optional[int] = None,
                 kv_type: str = "auto", flash_attn: str = "auto", repack: str = "auto",
                 f16_math: str = "auto") -> None:
        self.path = os.fspath(path)
        self.precision = precision
        flags = [self.path, "--precision", precision] + _settings_flags("", kv_type, flash_attn, repack, f16_math)
        flags += _flag("--threads", threads)
        self._m = _plumb.Model(flags)

    def trace(self, prompt: Optional[str] = None, *, tokens: Optional[Sequence[int]] = None,
              file: Optional[PathLike] = None, stages: str = "*", layers: Optional[str] = None,
              positions: str = "all", tensors: bool = False, generate: int = 0, top: int = 10,
              max_memory: Optional[str] = None, bos: bool = True, special: bool = False,
              ubatch: Optional[int] = None) -> Trace:
        """Runs the prompt (text, token ids, or a file) with the stages asked
        traced, as ``plumb trace`` does. ``stages`` takes names, globs and
        aliases (``"attn_norm,ffn_*"``); ``layers`` a list like ``"0-3,17"``;
        ``positions`` ``"all"`` or ``"last"``; ``tensors=True`` keeps the
        tensors (held on disk until read, not in memory). ``ubatch=N``
        computes the prompt N tokens at a time, as llama.cpp's ubatches
        (the trace then has no attn_scores or attn_probs). A trace estimated
        over ``max_memory`` (e.g. ``"8G"``) is refused before it runs."""
        flags = _prompt_flags(prompt, tokens, file, bos, special)
        flags += ["--stages", stages, "--positions", positions, "--generate", str(generate), "--top", str(top)]
        flags += _flag("--ubatch", None if ubatch is None else str(ubatch))
        flags += _flag("--layers", layers) + _flag("--tensors", tensors) + _flag("--max-memory", max_memory)
        return Trace(self._m.trace(flags))

    def tokenize(self, text: str, bos: bool = True, special: bool = False) -> List[int]:
        return self._m.tokenize(text, bos, special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._m.detokenize([int(i) for i in ids])

    @property
    def arch(self) -> str:
        return self._m.arch

    @property
    def n_layer(self) -> int:
        return self._m.n_layer

    @property
    def vocab(self) -> int:
        return self._m.vocab

    def __repr__(self) -> str:
        return f"<plumb.Model {self.path} ({self.arch}, {self.n_layer} layers, {self.precision})>"


def trace(model: PathLike, prompt: Optional[str] = None, *, precision: str = "exact", **kwargs: Any) -> Trace:
    """Loads ``model`` and traces one prompt: ``Model(model, precision).trace(prompt, ...)``."""
    return Model(model, precision).trace(prompt, **kwargs)


def load_trace(path: PathLike) -> Trace:
    """Reads a trace file: ``Trace.load(path)``."""
    return Trace.load(path)


@dataclass
class Report:
    """A verdict, as ``plumb diff`` or ``plumb bisect`` gives it.

    ``json`` is the document the command prints with ``--json``;
    ``exit_code`` the command's (0 parity or within noise, 1 diverged or an
    anomaly); ``text`` the printed report where one was made."""

    exit_code: int
    json: Dict[str, Any]
    text: Optional[str] = None
    _first_key: str = field(default="first_divergence", repr=False)

    @property
    def diverged(self) -> bool:
        return bool(self.json.get("diverged"))

    @property
    def first(self) -> Optional[str]:
        """The first stage at fault (``first_divergence`` of a fixed-bound
        verdict, ``first_anomaly`` of a noise-aware one), or None."""
        return self.json.get("first_divergence", self.json.get("first_anomaly"))

    def __str__(self) -> str:
        if self.text is not None:
            return self.text
        what = "diverged" if self.diverged else "no divergence"
        return f"{what}; first stage at fault: {self.first}" if self.first else what


def _as_trace(t: Union[Trace, PathLike]) -> Trace:
    return t if isinstance(t, Trace) else Trace.load(t)


def _pair(a: Union[Trace, PathLike], b: Union[Trace, PathLike]) -> Tuple[Trace, Trace]:
    """Two traces, either of which may be a folder of aprender's APRT stage
    dumps: such a folder is read after the other side, whose shapes and
    token ids it takes."""
    a_dump = not isinstance(a, Trace) and os.path.isdir(a)
    b_dump = not isinstance(b, Trace) and os.path.isdir(b)
    if a_dump and b_dump:
        raise PlumbError("both sides are APRT folders: give a trace for one of them")
    if a_dump:
        tb = _as_trace(b)
        return Trace(_plumb.Trace.load_aprt(os.fspath(a), tb._t)), tb
    ta = _as_trace(a)
    if b_dump:
        return ta, Trace(_plumb.Trace.load_aprt(os.fspath(b), ta._t))
    return ta, _as_trace(b)


def diff(a: Union[Trace, PathLike], b: Union[Trace, PathLike], *, tol: Optional[float] = None,
         gate: Optional[PathLike] = None, noise: Optional[PathLike] = None,
         tie_margin: float = 0.01) -> Report:
    """Compares trace ``a`` (under test) with ``b`` (the reference) stage by
    stage, as ``plumb diff A B``; either may be a folder of aprender's APRT
    stage dumps (``apr trace --save-tensor``). The verdict comes from a
    fixed NMSE bound (``tol``, or a ``gate`` file), or a band table from
    ``bisect(save_noise=...)`` (``noise``)."""
    ta, tb = _pair(a, b)
    flags = _flag("--tol", tol) + _flag("--gate", os.fspath(gate) if gate is not None else None)
    flags += _flag("--noise", os.fspath(noise) if noise is not None else None)
    flags += ["--tie-margin", str(tie_margin)]
    code, doc = _plumb.diff_traces(ta._t, tb._t, flags + ["--json"])
    _, text = _plumb.diff_traces(ta._t, tb._t, flags + ["--color", "never"])
    return Report(code, json.loads(doc), text)


def bisect(a: PathLike, b: Optional[PathLike] = None, prompt: Optional[str] = None, *,
           tokens: Optional[Sequence[int]] = None, file: Optional[PathLike] = None,
           a_precision: str = "exact", b_precision: str = "exact",
           a_settings: Sequence[str] = ("auto", "auto", "auto", "auto"),
           b_settings: Sequence[str] = ("auto", "auto", "auto", "auto"),
           tol: Optional[float] = None, gate: Optional[PathLike] = None, isolate: bool = False,
           inject: Optional[str] = None, reference: Optional[PathLike] = None,
           noise: Optional[PathLike] = None, save_noise: Optional[PathLike] = None,
           threads: Optional[int] = None, bos: bool = True, special: bool = False) -> Report:
    """Runs model ``a`` against ``b`` (or against ``a`` itself at
    ``b_precision``) on the same tokens and names the first stage where they
    part, as ``plumb bisect``: noise-aware by default, a fixed bound with
    ``tol``/``gate``. ``a_settings``/``b_settings`` are (kv_type, flash_attn,
    repack[, f16_math])."""
    argv = ["bisect", os.fspath(a)] + ([os.fspath(b)] if b is not None else [])
    argv += _prompt_flags(prompt, tokens, file, bos, special)
    argv += ["--a-precision", a_precision, "--b-precision", b_precision]
    argv += _settings_flags("a-", *a_settings) + _settings_flags("b-", *b_settings)
    argv += _flag("--tol", tol) + _flag("--gate", os.fspath(gate) if gate is not None else None)
    argv += _flag("--isolate", isolate) + _flag("--inject", inject) + _flag("--threads", threads)
    for name, p in (("--reference", reference), ("--noise", noise), ("--save-noise", save_noise)):
        argv += _flag(name, os.fspath(p) if p is not None else None)
    code, doc = _plumb.command(argv + ["--json", "--force"] if save_noise else argv + ["--json"])
    return Report(code, json.loads(doc))


def run(model: PathLike, prompt: Optional[str] = None, *, n: int = 64, precision: str = "fast",
        tokens: Optional[Sequence[int]] = None, temp: float = 0.0, seed: int = 0,
        threads: Optional[int] = None) -> Dict[str, Any]:
    """Generates up to ``n`` tokens, as ``plumb run --json``: the prompt's
    ids, the generated ids and the text."""
    argv = ["run", os.fspath(model), "--precision", precision, "-n", str(n), "--temp", str(temp),
            "--seed", str(seed), "--json"]
    argv += _prompt_flags(prompt, tokens, None, True, False) + _flag("--threads", threads)
    _, doc = _plumb.command(argv)
    return json.loads(doc)


def command(*argv: str) -> Tuple[int, str]:
    """Runs any ``plumb`` command line (without the leading ``plumb``) in
    this process: its exit code and what it printed to stdout."""
    return _plumb.command([str(a) for a in argv])
