//! `plumb._plumb`: the engine behind the Python package (python/plumb).
//!
//! Every entry point takes the command line's own flags and runs the
//! command line's own functions, so a trace, a diff or a bisect from Python
//! gives the numbers and the verdicts `plumb` prints. The typed, documented
//! API is the Python layer's; this module only moves data across: traces
//! as objects whose tensors come out as numpy arrays, reports as the JSON
//! the command line writes with `--json`.

use std::path::PathBuf;

use clap::Parser;
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods, ToPyArray};
use plumb_cli::cmd::common::{load, Loaded, ModelArgs};
use plumb_cli::cmd::{diff, trace};
use plumb_cli::{execute, out, Cli, Outcome};
use plumb_trace::judge::{judge, Thresholds};
use plumb_trace::stage::parse_key;
use plumb_trace::{TensorStats, Trace};
use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

create_exception!(_plumb, PlumbError, PyValueError, "Bad input: what the command line reports with exit code 2.");

fn failed(e: anyhow::Error) -> PyErr {
    PlumbError::new_err(format!("{e:#}"))
}

fn usage(e: clap::Error) -> PyErr {
    PlumbError::new_err(e.render().to_string().trim_end().to_string())
}

/// The exit code of a command that did not fail outright.
fn code(outcome: Outcome) -> i32 {
    match outcome {
        Outcome::Ok => 0,
        Outcome::GateFailed => 1,
    }
}

/// Runs a command line (without the leading `plumb`) as the binary would,
/// with what it prints to stdout returned: `(exit code, stdout)`. Bad
/// input raises PlumbError (the binary's exit code 2).
#[pyfunction]
fn command(py: Python<'_>, argv: Vec<String>) -> PyResult<(i32, String)> {
    let cli = Cli::try_parse_from(std::iter::once("plumb".to_string()).chain(argv)).map_err(usage)?;
    plumb_kernels::set_path(cli.kernels);
    plumb_cli::progress::set_quiet(cli.quiet);
    let (result, text) = py.detach(|| out::captured(|| execute(cli.command)));
    result.map(|o| (code(o), text)).map_err(failed)
}

/// `plumb trace`'s flags, parsed as the command line parses them.
#[derive(Parser)]
struct TraceFlags {
    #[command(flatten)]
    args: trace::Args,
}

fn trace_flags(argv: Vec<String>) -> PyResult<trace::Args> {
    TraceFlags::try_parse_from(std::iter::once("trace".to_string()).chain(argv)).map(|f| f.args).map_err(usage)
}

/// A model loaded once, at one precision and setting, to be traced many
/// times.
#[pyclass(frozen, module = "plumb._plumb")]
struct Model {
    loaded: Loaded,
    /// The loading flags (model, precision, settings), put before each
    /// trace's own.
    flags: Vec<String>,
}

#[pymethods]
impl Model {
    /// `flags` are `plumb trace`'s: the model path first, then
    /// `--precision`, `--kv-type`, `--flash-attn`, `--repack`, `--f16-math`, `-t`.
    #[new]
    fn new(py: Python<'_>, flags: Vec<String>) -> PyResult<Model> {
        let args = trace_flags(flags.clone())?;
        let margs = ModelArgs {
            model: args.model.clone().ok_or_else(|| PlumbError::new_err("no model given"))?,
            precision: Some(args.precision),
            threads: args.threads,
            settings: args.settings,
        };
        let loaded = py.detach(|| load(&margs)).map_err(failed)?;
        Ok(Model { loaded, flags })
    }

    /// Traces with the loading flags and then `flags` (the prompt, stages,
    /// layers, positions, `--tensors`, `--generate`...).
    fn trace(&self, py: Python<'_>, flags: Vec<String>) -> PyResult<PyTrace> {
        let args = trace_flags(self.flags.iter().cloned().chain(flags).collect())?;
        let traced = py.detach(|| trace::trace_loaded(&self.loaded, &args)).map_err(failed)?;
        let report = report_json(&traced.trace, &args, traced.generated.as_ref(), Some(&traced.memory))?;
        Ok(PyTrace { trace: traced.trace, report })
    }

    /// The model's architecture, as trace files name it.
    #[getter]
    fn arch(&self) -> String {
        self.loaded.model.cfg.arch.name().to_string()
    }

    #[getter]
    fn n_layer(&self) -> usize {
        self.loaded.model.cfg.n_layer
    }

    #[getter]
    fn vocab(&self) -> usize {
        self.loaded.model.cfg.vocab
    }

    /// The prompt's token ids, as a trace of it would have them.
    #[pyo3(signature = (text, bos = true, special = false))]
    fn tokenize(&self, text: &str, bos: bool, special: bool) -> PyResult<Vec<u32>> {
        let tok = self.loaded.tokenizer.as_ref().ok_or_else(|| PlumbError::new_err("this model has no tokenizer"))?;
        Ok(tok.encode(text, bos, special))
    }

    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        let tok = self.loaded.tokenizer.as_ref().ok_or_else(|| PlumbError::new_err("this model has no tokenizer"))?;
        Ok(tok.decode(&ids))
    }
}

/// `plumb trace --json`'s lines for a trace: header, stages, layer verdicts,
/// next tokens, continuation.
fn report_json(
    t: &Trace,
    args: &trace::Args,
    generated: Option<&trace::Generated>,
    memory: Option<&plumb_model::memory::Estimate>,
) -> PyResult<String> {
    let verdicts = judge(t, Thresholds { std_jump: args.std_jump, outlier: args.outlier });
    trace::render_json(t, &verdicts, generated, memory).map_err(failed)
}

/// A trace: from a model, from a file, or made from arrays.
#[pyclass(frozen, name = "Trace", module = "plumb._plumb")]
struct PyTrace {
    trace: Trace,
    report: String,
}

#[pymethods]
impl PyTrace {
    /// Reads a trace file (format 1, from any engine).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyTrace> {
        let trace = py.detach(|| Trace::load(&path)).map_err(|e| failed(e.into()))?;
        let args = trace_flags(vec!["--from".into(), path.display().to_string()])?;
        let report = report_json(&trace, &args, None, None)?;
        Ok(PyTrace { trace, report })
    }

    /// A folder of aprender's APRT stage dumps read as a trace, shaped
    /// after `like` (the trace it will be compared with).
    #[staticmethod]
    fn load_aprt(py: Python<'_>, dir: PathBuf, like: &PyTrace) -> PyResult<PyTrace> {
        let trace = py.detach(|| plumb_trace::aprt::load_dump(&dir, &like.trace)).map_err(|e| failed(e.into()))?;
        let args = trace_flags(vec!["--from".into(), dir.display().to_string()])?;
        let report = report_json(&trace, &args, None, None)?;
        Ok(PyTrace { trace, report })
    }

    /// A trace from arrays: `tensors` maps stage keys (`blk.0.attn_norm`)
    /// to float32 arrays laid out as docs/TRACE_FORMAT.md says; statistics
    /// are computed here, as plumb computes its own.
    #[staticmethod]
    fn from_arrays(
        tensors: &Bound<'_, PyDict>,
        tokens: Vec<u32>,
        meta: std::collections::BTreeMap<String, String>,
    ) -> PyResult<PyTrace> {
        let mut t = Trace { meta, tokens, ..Trace::default() };
        for (k, v) in tensors.iter() {
            let key: String = k.extract()?;
            let Some((stage, _)) = parse_key(&key) else {
                return Err(PlumbError::new_err(format!("{key:?} is not a stage key (docs/TRACE_FORMAT.md)")));
            };
            let arr: PyReadonlyArrayDyn<'_, f32> = v.extract().map_err(|_| {
                PlumbError::new_err(format!("{key}: expected a float32 numpy array (use .astype(numpy.float32))"))
            })?;
            let shape = arr.shape().to_vec();
            let data: Vec<f32> = arr.as_array().iter().copied().collect();
            t.stats.push((key.clone(), TensorStats::compute(&data, &shape, stage.token_axis())));
            t.tensors.insert(key, (shape, data));
        }
        t.sort();
        let args = trace_flags(vec!["--from".into(), "-".into()])?;
        let report = report_json(&t, &args, None, None)?;
        Ok(PyTrace { trace: t, report })
    }

    /// Writes the trace file; an existing file is replaced only with
    /// `force`.
    #[pyo3(signature = (path, force = false))]
    fn save(&self, py: Python<'_>, path: PathBuf, force: bool) -> PyResult<()> {
        if path.exists() && !force {
            return Err(PlumbError::new_err(format!("{} exists; pass force=True to overwrite it", path.display())));
        }
        py.detach(|| self.trace.save(&path)).map_err(|e| failed(e.into()))
    }

    /// The lines `plumb trace --json` prints for this trace.
    fn report(&self) -> String {
        self.report.clone()
    }

    /// Stage keys with statistics, in execution order.
    fn keys(&self) -> Vec<String> {
        self.trace.stats.iter().map(|(k, _)| k.clone()).collect()
    }

    /// Stage keys with saved tensors.
    fn tensor_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.trace.tensors.keys().cloned().collect();
        if let Some(s) = &self.trace.spilled {
            keys.extend(s.shapes().map(|(k, _)| k.to_string()).filter(|k| !self.trace.tensors.contains_key(k)));
        }
        keys.sort_by_key(|k| self.trace.stats.iter().position(|(s, _)| s == k));
        keys
    }

    /// One stage's statistics as JSON (`shape`, `all`, `last`).
    fn stats_json(&self, key: &str) -> PyResult<String> {
        let s = self.trace.stat(key).ok_or_else(|| PlumbError::new_err(format!("no stage {key:?} in this trace")))?;
        serde_json::to_string(s).map_err(|e| failed(e.into()))
    }

    /// One stage's tensor as a float32 array (a copy).
    fn tensor<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        if let Some((shape, data)) = self.trace.tensors.get(key) {
            return data.to_pyarray(py).reshape(shape.clone());
        }
        let spilled =
            self.trace.spilled.as_ref().and_then(|s| s.shapes().find(|(k, _)| *k == key).map(|(_, sh)| (s, sh)));
        let Some((spill, shape)) = spilled else {
            let why = if self.trace.stat(key).is_some() { " (statistics only: trace with tensors=True)" } else { "" };
            return Err(PlumbError::new_err(format!("no tensor {key:?} in this trace{why}")));
        };
        let data = read_spilled(spill, key, shape).map_err(|e| failed(e.into()))?;
        data.to_pyarray(py).reshape(shape.to_vec())
    }

    #[getter]
    fn tokens(&self) -> Vec<u32> {
        self.trace.tokens.clone()
    }

    #[getter]
    fn meta(&self) -> std::collections::BTreeMap<String, String> {
        self.trace.meta.clone()
    }

    #[getter]
    fn engine(&self) -> String {
        self.trace.engine().to_string()
    }

    #[getter]
    fn arch(&self) -> String {
        self.trace.arch().to_string()
    }
}

/// `plumb diff`'s flags, parsed as the command line parses them.
#[derive(Parser)]
struct DiffFlags {
    #[command(flatten)]
    args: diff::Args,
}

/// Compares trace `a` (under test) with `b` (the reference) with `plumb
/// diff`'s flags: `(exit code, report)`.
#[pyfunction]
fn diff_traces(py: Python<'_>, a: &PyTrace, b: &PyTrace, flags: Vec<String>) -> PyResult<(i32, String)> {
    // The two paths are placeholders: the traces are already read.
    let argv = ["diff", "a", "b"].into_iter().map(String::from).chain(flags);
    let args = DiffFlags::try_parse_from(argv).map_err(usage)?.args;
    let (result, text) = py
        .detach(|| {
            let (a, b) = (held(&a.trace)?, held(&b.trace)?);
            anyhow::Ok(out::captured(|| diff::compare(&a, &b, &args)))
        })
        .map_err(failed)?;
    result.map(|o| (code(o), text)).map_err(failed)
}

/// The trace with every tensor in memory, as a trace read from its file
/// has them: tensors a model trace keeps on disk are read back, since a
/// comparison reads them all.
fn held(t: &Trace) -> anyhow::Result<std::borrow::Cow<'_, Trace>> {
    let Some(spill) = t.spilled.as_ref().filter(|s| s.shapes().any(|(k, _)| !t.tensors.contains_key(k))) else {
        return Ok(std::borrow::Cow::Borrowed(t));
    };
    let mut all = Trace { spilled: None, ..t.clone() };
    for (key, shape) in spill.shapes().filter(|(k, _)| !t.tensors.contains_key(*k)) {
        all.tensors.insert(key.to_string(), (shape.to_vec(), read_spilled(spill, key, shape)?));
    }
    Ok(std::borrow::Cow::Owned(all))
}

/// One tensor a trace keeps on disk, read back.
fn read_spilled(spill: &plumb_trace::spill::Spill, key: &str, shape: &[usize]) -> std::io::Result<Vec<f32>> {
    let mut bytes = Vec::with_capacity(shape.iter().product::<usize>() * 4);
    spill.copy_to(key, &mut bytes)?;
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

#[pymodule]
fn _plumb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PlumbError", m.py().get_type::<PlumbError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<Model>()?;
    m.add_class::<PyTrace>()?;
    m.add_function(wrap_pyfunction!(command, m)?)?;
    m.add_function(wrap_pyfunction!(diff_traces, m)?)?;
    Ok(())
}
