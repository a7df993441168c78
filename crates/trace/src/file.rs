//! Trace files, format 1 (docs/TRACE_FORMAT.md): one safetensors file whose
//! tensors are named by stage key and whose `__metadata__` carries the
//! engine, model, tokens and the statistics of every traced stage.
//!
//! Reading treats the file as hostile: the safetensors crate validates the
//! header and offsets, and every metadata field plumb relies on is checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

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
        self.tensors.len() + self.spilled.as_ref().map_or(0, |s| s.len())
    }

    /// The tensors as views: held ones borrowed (little-endian f32, as
    /// held), spilled ones read back when the writer reaches them. A failed
    /// read lands in `failed` (and zeros in the file, which is then
    /// discarded).
    fn views<'a>(
        &'a self,
        failed: &'a std::cell::RefCell<Option<std::io::Error>>,
    ) -> Result<Vec<(String, Data<'a>)>, String> {
        let mut views = self
            .tensors
            .iter()
            .map(|(k, (shape, data))| {
                Ok((k.clone(), Data::Held(TensorView::new(Dtype::F32, shape.clone(), le_bytes(data))?)))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
            .map_err(|e| e.to_string())?;
        if let Some(spill) = &self.spilled {
            for (key, shape) in spill.shapes() {
                if !self.tensors.contains_key(key) {
                    views.push((
                        key.to_string(),
                        Data::Spilled { spill, key: key.to_string(), shape: shape.to_vec(), failed },
                    ));
                }
            }
        }
        Ok(views)
    }

    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let meta = self.header_meta()?;
        let failed = std::cell::RefCell::new(None);
        let bytes = safetensors::tensor::serialize(self.views(&failed)?, Some(meta)).map_err(|e| e.to_string())?;
        if let Some(e) = failed.take() {
            return Err(format!("reading a spilled tensor back: {e}"));
        }
        Ok(canonical_header(bytes))
    }

    /// Writes the trace to `path` through a temporary file and a rename,
    /// the tensors straight from memory or from the spill, one at a time:
    /// saving holds no second copy.
    pub fn save(&self, path: &Path) -> Result<(), TraceError> {
        let meta = self.header_meta().map_err(|e| invalid(path, e))?;
        let failed = std::cell::RefCell::new(None);
        let views = self.views(&failed).map_err(|e| invalid(path, e))?;
        let write = |tmp: &Path| -> std::io::Result<()> {
            safetensors::tensor::serialize_to_file(views, Some(meta), tmp).map_err(std::io::Error::other)?;
            if let Some(e) = failed.take() {
                return Err(e);
            }
            canonical_header_in_file(tmp)
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
            if view.dtype() != Dtype::F32 {
                return Err(invalid(path, format!("tensor {name}: dtype {:?}, traces hold F32", view.dtype())));
            }
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
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

/// A tensor as the writer sees it: held in memory, or in a spill.
enum Data<'a> {
    Held(TensorView<'a>),
    Spilled { spill: &'a Spill, key: String, shape: Vec<usize>, failed: &'a std::cell::RefCell<Option<std::io::Error>> },
}

impl safetensors::tensor::View for Data<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        match self {
            Data::Held(v) => v.shape(),
            Data::Spilled { shape, .. } => shape,
        }
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Data::Held(v) => v.data().into(),
            Data::Spilled { spill, key, failed, .. } => match spill.bytes(key) {
                Ok(Some(b)) => b.into(),
                Ok(None) => vec![0u8; self.data_len()].into(),
                Err(e) => {
                    failed.borrow_mut().get_or_insert(e);
                    vec![0u8; self.data_len()].into()
                }
            },
        }
    }

    fn data_len(&self) -> usize {
        self.shape().iter().product::<usize>() * 4
    }
}

/// Rewrites the JSON header of a safetensors file with its keys sorted, so
/// the same trace always gives the same bytes (the writer emits the
/// metadata in hash-map order). The header keeps its length, padded with
/// spaces as the format allows, so the data offsets do not move.
/// f32 values as the little-endian bytes a trace file holds, borrowed.
fn le_bytes(data: &[f32]) -> &[u8] {
    bytemuck::cast_slice(data)
}

// Trace files hold little-endian f32, which the machine's own are.
#[cfg(target_endian = "big")]
compile_error!("plumb writes trace tensors from memory as they are, which needs a little-endian machine");

/// [`canonical_header`] of a file written in place: the header's bytes are
/// rewritten at the same length, the data left alone.
fn canonical_header_in_file(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut n = [0u8; 8];
    f.read_exact(&mut n)?;
    let mut head = n.to_vec();
    head.resize(8 + u64::from_le_bytes(n) as usize, 0);
    f.read_exact(&mut head[8..])?;
    let head = canonical_header(head);
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&head)
}

fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut entries: Vec<(String, serde_json::Value)> =
                    m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().collect())
            }
            other => other,
        }
    }
    if bytes.len() < 8 {
        return bytes;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    let Some(header) = bytes.get(8..8 + n) else { return bytes };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    let Ok(text) = serde_json::to_string(&sorted(v)) else { return bytes };
    if text.len() > n {
        return bytes;
    }
    let mut padded = text.into_bytes();
    padded.resize(n, b' ');
    bytes[8..8 + n].copy_from_slice(&padded);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let back = Trace::from_bytes(&path, &bytes).unwrap();
        assert_eq!(back.tensors, trace.tensors);
        assert_eq!(back.tokens, trace.tokens);
    }
}
