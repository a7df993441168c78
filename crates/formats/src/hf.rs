//! HuggingFace model folders: `config.json` plus `model.safetensors` or the
//! shards listed in `model.safetensors.index.json`.
//!
//! Headers are parsed and validated by the `safetensors` crate (offsets,
//! sizes and overlap are checked against the file there); the folder-level
//! checks — the index names real files, no tensor is defined twice — are ours.
//! F32, F16 and BF16 tensors are supported; other dtypes are refused.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use plumb_quant::GgmlType;
use safetensors::{Dtype, SafeTensors};

use crate::{Bytes, FormatError, OwnedTensor, TensorView};

/// Larger config.json files are refused rather than read.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct HfTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub shard: usize,
    /// Absolute byte range in the shard file.
    pub start: usize,
    pub end: usize,
}

/// A HuggingFace model folder with its shards memory-mapped.
pub struct HfModel {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub shard_paths: Vec<PathBuf>,
    shards: Vec<std::sync::Arc<Mmap>>,
    /// Tensors in name order.
    pub tensors: BTreeMap<String, HfTensor>,
}

impl std::fmt::Debug for HfModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfModel").field("dir", &self.dir).field("tensors", &self.tensors.len()).finish()
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, FormatError> {
    let len = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(FormatError::invalid(path, format!("{len} bytes is too large for a JSON config")));
    }
    let text = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| FormatError::invalid(path, format!("not valid JSON: {e}")))
}

impl HfModel {
    /// Opens a model folder.
    pub fn open(dir: impl AsRef<Path>) -> Result<HfModel, FormatError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(FormatError::invalid(&dir, "not a directory"));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(FormatError::invalid(&dir, "no config.json in this folder"));
        }
        let config = read_json(&config_path)?;
        if !config.is_object() {
            return Err(FormatError::invalid(&config_path, "config.json is not a JSON object"));
        }

        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if single.is_file() {
            vec!["model.safetensors".into()]
        } else if index_path.is_file() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| FormatError::invalid(&index_path, "no \"weight_map\" object"))?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    FormatError::invalid(&index_path, format!("weight_map[{tensor:?}] is not a file name"))
                })?;
                if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    return Err(FormatError::invalid(
                        &index_path,
                        format!("shard name {file:?} is not a plain file name"),
                    ));
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
            }
            names.sort();
            names
        } else {
            return Err(FormatError::invalid(&dir, "no model.safetensors or model.safetensors.index.json"));
        };

        let mut shards = Vec::new();
        let mut shard_paths = Vec::new();
        let mut tensors = BTreeMap::new();
        for (si, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|e| FormatError::io(&path, e))?;
            // SAFETY: read-only map of a model file plumb never writes.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(&path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap[..])
                .map_err(|e| FormatError::invalid(&path, format!("bad safetensors header: {e}")))?;
            // Validate offsets against the data section (the crate's full
            // deserialize does this too; calling it costs nothing more).
            SafeTensors::deserialize(&mmap[..])
                .map_err(|e| FormatError::invalid(&path, format!("bad safetensors file: {e}")))?;
            let base = 8 + header_len;
            let infos: HashMap<String, &safetensors::tensor::TensorInfo> = meta.tensors().into_iter().collect();
            for (tname, info) in infos {
                let ty = match info.dtype {
                    Dtype::F32 => GgmlType::F32,
                    Dtype::F16 => GgmlType::F16,
                    Dtype::BF16 => GgmlType::BF16,
                    other => {
                        return Err(FormatError::invalid(
                            &path,
                            format!("tensor {tname}: dtype {other:?} is not supported (F32, F16, BF16)"),
                        ))
                    }
                };
                let (s, e) = info.data_offsets;
                let t = HfTensor {
                    name: tname.clone(),
                    shape: info.shape.clone(),
                    ty,
                    shard: si,
                    start: base + s,
                    end: base + e,
                };
                if tensors.insert(tname.clone(), t).is_some() {
                    return Err(FormatError::invalid(
                        &path,
                        format!("tensor {tname} is defined in more than one shard"),
                    ));
                }
            }
            shards.push(std::sync::Arc::new(mmap));
            shard_paths.push(path);
        }
        Ok(HfModel { dir, config, shard_paths, shards, tensors })
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let t = self.tensors.get(name)?;
        Some(TensorView { name: &t.name, shape: &t.shape, ty: t.ty, data: &self.shards[t.shard][t.start..t.end] })
    }

    /// A tensor holding a share of its shard's memory map.
    pub fn tensor_owned(&self, name: &str) -> Option<OwnedTensor> {
        let t = self.tensors.get(name)?;
        Some(OwnedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ty: t.ty,
            bytes: Bytes::Mapped { map: self.shards[t.shard].clone(), start: t.start, len: t.end - t.start },
        })
    }

    /// Total bytes of all shard files.
    pub fn total_file_size(&self) -> u64 {
        self.shards.iter().map(|m| m.len() as u64).sum()
    }

    /// True when `dir` looks like a HuggingFace model folder.
    pub fn is_model_dir(dir: &Path) -> bool {
        dir.is_dir() && dir.join("config.json").is_file()
    }
}
