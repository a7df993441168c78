//! Trace files, format 1 (docs/TRACE_FORMAT.md): one safetensors file whose
//! tensors are named by stage key and whose `__metadata__` carries the
//! engine, model, tokens and the statistics of every traced stage.
//!
//! Reading treats the file as hostile: the safetensors crate validates the
//! header and offsets, and every metadata field plumb relies on is checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors};

use crate::spill::Spill;
use crate::stage::order_key;
use crate::stats::TensorStats;

pub const FORMAT: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

fn invalid(path: &Path, what: impl Into<String>) -> TraceError {
    TraceError::Invalid { path: path.to_path_buf(), what: what.into() }
}

/// A trace in memory.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Every `__metadata__` entry except plumb.stats and plumb.tokens.
    pub meta: BTreeMap<String, String>,
    pub tokens: Vec<u32>,
    /// Stats by key, in execution order.
    pub stats: Vec<(String, TensorStats)>,
    /// Saved tensors by key: shape and data.
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Tensors recorded to a scratch file rather than held (a trace being
    /// written, `Recorder::spilling`); saved with the rest, one at a time.
    pub spilled: Option<std::sync::Arc<Spill>>,
}

impl Trace {
    pub fn engine(&self) -> &str {
        self.meta.get("plumb.engine").map(String::as_str).unwrap_or("?")
    }

    pub fn arch(&self) -> &str {
        self.meta.get("plumb.arch").map(String::as_str).unwrap_or("?")
    }

    pub fn stat(&self, key: &str) -> Option<&TensorStats> {
        self.stats.iter().find(|(k, _)| k == key).map(|(_, s)| s)
    }

    /// Puts stats and tensors in execution order.
    pub fn sort(&mut self) {
        self.stats.sort_by_key(|(k, _)| order_key(k));
    }

    /// The `__metadata__` of the file: the entries, the format, the tokens
    /// and the statistics.
    fn header_meta(&self) -> Result<std::collections::HashMap<String, String>, String> {
        let mut meta: std::collections::HashMap<String, String> = self.meta.clone().into_iter().collect();
        meta.insert("plumb.format".into(), FORMAT.into());
        meta.insert("plumb.tokens".into(), serde_json::to_string(&self.tokens).map_err(|e| e.to_string())?);
        let stats: serde_json::Map<String, serde_json::Value> = self
            .stats
            .iter()
            .map(|(k, s)| Ok((k.clone(), serde_json::to_value(s)?)))
            .collect::<Result<_, serde_json::Error>>()
            .map_err(|e| e.to_string())?;
        meta.insert("plumb.stats".into(), serde_json::Value::Object(stats).to_string());
        Ok(meta)
    }

    /// How many tensors the trace has, held or spilled.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
            + self.spilled.as_ref().map_or(0, |s| s.shapes().filter(|(k, _)| !self.tensors.contains_key(*k)).count())
    }

    /// The tensors in the order the file holds them (by name, as the
    /// safetensors writer orders tensors of one dtype): key, shape, data.
    fn layout(&self) -> Vec<(&str, &[usize], Source<'_>)> {
        let mut all: Vec<(&str, &[usize], Source)> =
            self.tensors.iter().map(|(k, (shape, data))| (k.as_str(), shape.as_slice(), Source::Held(data))).collect();
        if let Some(spill) = &self.spilled {
            all.extend(
                spill
                    .shapes()
                    .filter(|(k, _)| !self.tensors.contains_key(*k))
                    .map(|(k, s)| (k, s, Source::Spilled(spill))),
            );
        }
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// The file's first bytes: the header's length, then the header — JSON
    /// with its keys sorted (the same trace always gives the same bytes),
    /// padded with spaces to a multiple of 8 as safetensors pads it.
    fn header(&self) -> Result<Vec<u8>, String> {
        let meta: serde_json::Map<String, serde_json::Value> =
            self.header_meta()?.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
        let mut obj = serde_json::Map::new();
        obj.insert("__metadata__".into(), serde_json::Value::Object(meta));
        let mut offset = 0usize;
        for (key, shape, _) in self.layout() {
            let n = shape.iter().product::<usize>() * 4;
            let dtype = if holds_ids(key) { "I32" } else { "F32" };
            obj.insert(
                key.into(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let mut text =
            serde_json::to_string(&sorted(serde_json::Value::Object(obj))).map_err(|e| e.to_string())?.into_bytes();
        text.resize(text.len().next_multiple_of(8), b' ');
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        Ok(out)
    }

    /// Writes the file: the header, then each tensor straight from memory
    /// or from the spill, a block at a time.
    fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.header().map_err(std::io::Error::other)?)?;
        for (key, _, source) in self.layout() {
            match source {
                Source::Held(data) if holds_ids(key) => out.write_all(&ids_bytes(data))?,
                Source::Held(data) => out.write_all(le_bytes(data))?,
                Source::Spilled(spill) if holds_ids(key) => {
                    // [T, k]: small enough to convert whole.
                    let mut raw = Vec::new();
                    spill.copy_to(key, &mut raw)?;
                    let f32s: Vec<f32> =
                        raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                    out.write_all(&ids_bytes(f32s))?
                }
                Source::Spilled(spill) => spill.copy_to(key, out)?,
            }
        }
        Ok(())
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.write_to(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Writes the trace to `path` through a temporary file and a rename:
    /// saving holds no second copy of any tensor.
    pub fn save(&self, path: &Path) -> Result<(), TraceError> {
        let write = |tmp: &Path| -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            self.write_to(&mut f)?;
            f.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        plumb_formats::atomic::write_atomic_with(path, write)
            .map_err(|e| TraceError::Io { path: path.to_path_buf(), source: e })
    }

    /// Reads a trace file from any engine.
    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let io = |e| TraceError::Io { path: path.to_path_buf(), source: e };
        let file = std::fs::File::open(path).map_err(io)?;
        if !file.metadata().map_err(io)?.is_file() {
            return Err(invalid(path, "not a regular file"));
        }
        // SAFETY: read-only map of a file plumb does not modify.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Trace::from_bytes(path, &map[..])
    }

    /// Parses a trace held in memory (`path` only names it in errors).
    pub fn from_bytes(path: &Path, map: &[u8]) -> Result<Trace, TraceError> {
        let st = SafeTensors::deserialize(map).map_err(|e| invalid(path, format!("not a safetensors trace: {e}")))?;
        let (_, header) =
            SafeTensors::read_metadata(map).map_err(|e| invalid(path, format!("bad safetensors header: {e}")))?;
        let mut meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
        match meta.get("plumb.format").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(invalid(path, format!("trace format {other:?}; this plumb reads format {FORMAT}")))
            }
            None => return Err(invalid(path, "no plumb.format in the metadata: not a plumb trace file")),
        }
        let tokens: Vec<u32> = match meta.remove("plumb.tokens") {
            Some(t) => serde_json::from_str(&t)
                .map_err(|e| invalid(path, format!("plumb.tokens is not a JSON array of ids: {e}")))?,
            None => Vec::new(),
        };
        let mut stats: Vec<(String, TensorStats)> = match meta.remove("plumb.stats") {
            Some(s) => {
                let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&s)
                    .map_err(|e| invalid(path, format!("plumb.stats is not a JSON object: {e}")))?;
                obj.into_iter()
                    .map(|(k, v)| {
                        serde_json::from_value::<TensorStats>(v)
                            .map(|s| (k.clone(), s))
                            .map_err(|e| invalid(path, format!("plumb.stats[{k:?}]: {e}")))
                    })
                    .collect::<Result<_, _>>()?
            }
            None => Vec::new(),
        };
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            // Values are f32; expert ids are integers (i32 as plumb and
            // llama.cpp write them, i64 as torch keeps them), held as f32.
            let bytes = view.data();
            let data: Vec<f32> = match view.dtype() {
                Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                Dtype::I32 => {
                    bytes.chunks_exact(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32).collect()
                }
                Dtype::I64 => {
                    bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect()
                }
                other => {
                    return Err(invalid(
                        path,
                        format!("tensor {name}: dtype {other:?}, traces hold F32 (and integer ids)"),
                    ))
                }
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        // Tensors without stats (another engine's minimal trace) get them.
        for (name, (shape, data)) in &tensors {
            if !stats.iter().any(|(k, _)| k == name) {
                let axis = crate::stage::parse_key(name).map(|(s, _)| s.token_axis()).unwrap_or(0);
                stats.push((name.clone(), TensorStats::compute(data, shape, axis)));
            }
        }
        let mut t = Trace { meta, tokens, stats, tensors, spilled: None };
        t.sort();
        Ok(t)
    }
}

pub use plumb_formats::atomic::write_atomic;

/// Where a tensor's data is while a trace is written.
enum Source<'a> {
    Held(&'a [f32]),
    Spilled(&'a Spill),
}

/// Whether trace key `key` names a stage of integer ids.
fn holds_ids(key: &str) -> bool {
    crate::stage::parse_key(key).is_some_and(|(s, _)| s.holds_ids())
}

/// Ids carried as exact f32 values, as the little-endian i32 a trace file
/// holds.
fn ids_bytes(data: impl AsRef<[f32]>) -> Vec<u8> {
    data.as_ref().iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()
}

/// f32 values as the little-endian bytes a trace file holds, borrowed.
fn le_bytes(data: &[f32]) -> &[u8] {
    bytemuck::cast_slice(data)
}

// Trace files hold little-endian f32, which the machine's own are.
#[cfg(target_endian = "big")]
compile_error!("plumb writes trace tensors from memory as they are, which needs a little-endian machine");

/// `v` with every object's keys sorted.
fn sorted(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<(String, serde_json::Value)> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().collect())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn a_saved_file_is_the_serialized_bytes_and_reads_back() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut trace = Trace { tokens: vec![1, 2, 3], ..Trace::default() };
        trace.meta.insert("plumb.engine".into(), "test".into());
        for key in ["blk.0.attn_norm", "blk.0.q_proj", "logits"] {
            trace.stats.push((key.into(), TensorStats::compute(&data, &[3, 8], 0)));
            trace.tensors.insert(key.into(), (vec![3, 8], data.clone()));
        }
        let path = std::env::temp_dir().join(format!("plumb-save-{}.safetensors", std::process::id()));
        trace.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes, trace.to_bytes().unwrap());
        // The safetensors writer's own bytes, once its header's keys are
        // sorted: the same file.
        let views: Vec<(String, TensorView)> = trace
            .tensors
            .iter()
            .map(|(k, (s, d))| (k.clone(), TensorView::new(Dtype::F32, s.clone(), le_bytes(d)).unwrap()))
            .collect();
        let mut theirs = safetensors::tensor::serialize(views, Some(trace.header_meta().unwrap())).unwrap();
        let n = u64::from_le_bytes(theirs[..8].try_into().unwrap()) as usize;
        let head: serde_json::Value = serde_json::from_slice(&theirs[8..8 + n]).unwrap();
        let mut text = serde_json::to_string(&sorted(head)).unwrap().into_bytes();
        text.resize(n, b' ');
        theirs[8..8 + n].copy_from_slice(&text);
        assert!(bytes == theirs, "plumb's writer and safetensors' differ");
        let back = Trace::from_bytes(&path, &bytes).unwrap();
        assert_eq!(back.tensors, trace.tensors);
        assert_eq!(back.tokens, trace.tokens);
    }
}
