//! Where a model's tensors come from: a GGUF file, a HuggingFace folder or
//! an APR v2 file (aprender's), behind one lookup by canonical (GGUF-style)
//! tensor name.

use std::path::{Path, PathBuf};

use plumb_formats::apr::AprFile;
use plumb_formats::gguf::GgufFile;
use plumb_formats::hf::HfModel;
use plumb_formats::{Bytes, OwnedTensor, TensorView};

use crate::weights::hf_name;
use crate::{Arch, ModelError};

pub enum ModelSource {
    Gguf(GgufFile),
    Hf(HfModel),
    Apr(AprFile),
}

impl ModelSource {
    /// Opens a GGUF file, an APR file, or a folder holding `config.json`
    /// and safetensors.
    pub fn open(path: &Path) -> Result<ModelSource, ModelError> {
        if path.is_dir() {
            Ok(ModelSource::Hf(HfModel::open(path)?))
        } else if AprFile::sniff(path) || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("apr")) {
            Ok(ModelSource::Apr(AprFile::open(path)?))
        } else if path.exists() {
            Ok(ModelSource::Gguf(GgufFile::open(path)?))
        } else {
            Err(ModelError::invalid(path, "no such file or folder"))
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            ModelSource::Gguf(g) => g.path().to_path_buf(),
            ModelSource::Hf(h) => h.dir.clone(),
            ModelSource::Apr(a) => a.path().to_path_buf(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ModelSource::Gguf(_) => "gguf",
            ModelSource::Hf(_) => "safetensors",
            ModelSource::Apr(_) => "apr",
        }
    }

    /// Looks a tensor up by its GGUF name (`blk.3.attn_q.weight`); for a
    /// HuggingFace folder the name is mapped to the folder's naming, and an
    /// APR file may use either (aprender keeps GGUF names for llama-like
    /// models and writes HF ones for qwen).
    pub fn tensor(&self, arch: Arch, gguf_name: &str) -> Option<TensorView<'_>> {
        match self {
            ModelSource::Gguf(g) => g.tensor(gguf_name),
            ModelSource::Hf(h) => hf_name(arch, gguf_name).and_then(|n| h.tensor(&n)),
            ModelSource::Apr(a) => a.tensor(gguf_name).or_else(|| hf_name(arch, gguf_name).and_then(|n| a.tensor(&n))),
        }
    }

    /// Every tensor's name, as the file or folder has it.
    pub fn tensor_names(&self) -> Vec<String> {
        match self {
            ModelSource::Gguf(g) => g.tensors.iter().map(|t| t.name.clone()).collect(),
            ModelSource::Hf(h) => h.tensors.keys().cloned().collect(),
            ModelSource::Apr(a) => a.header.tensors.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// A stack of `experts` matrices stored under one GGUF name
    /// ([E, rows, cols]), one tensor per expert: GGUF keeps the stack whole
    /// and each expert is a share of its bytes; HF folders keep one tensor
    /// per expert. None when any is missing or the stack is not E deep.
    pub fn stack_owned(&self, arch: Arch, gguf_name: &str, experts: usize) -> Option<Vec<OwnedTensor>> {
        match self {
            ModelSource::Gguf(_) | ModelSource::Apr(_) => {
                let t = self.tensor_owned(arch, gguf_name)?;
                let [e, rows, cols] = t.shape[..] else { return None };
                if e != experts || e == 0 {
                    return None;
                }
                let per = t.bytes.len() / e;
                let part = |i: usize| match &t.bytes {
                    Bytes::Mapped { map, start, .. } => {
                        Bytes::Mapped { map: map.clone(), start: start + i * per, len: per }
                    }
                    Bytes::Owned(v) => Bytes::Owned(std::sync::Arc::new(v[i * per..(i + 1) * per].to_vec())),
                };
                Some(
                    (0..e)
                        .map(|i| OwnedTensor {
                            name: format!("{gguf_name} expert {i}"),
                            shape: vec![rows, cols],
                            ty: t.ty,
                            bytes: part(i),
                        })
                        .collect(),
                )
            }
            ModelSource::Hf(h) => {
                let names = arch.spec().hf_names(gguf_name, experts);
                (names.len() == experts).then_some(())?;
                names.iter().map(|n| h.tensor_owned(n)).collect()
            }
        }
    }

    /// As [`ModelSource::tensor`], holding a share of the file's memory map.
    pub fn tensor_owned(&self, arch: Arch, gguf_name: &str) -> Option<OwnedTensor> {
        match self {
            ModelSource::Gguf(g) => g.tensor_owned(gguf_name),
            ModelSource::Hf(h) => hf_name(arch, gguf_name).and_then(|n| h.tensor_owned(&n)),
            ModelSource::Apr(a) => {
                a.tensor_owned(gguf_name).or_else(|| hf_name(arch, gguf_name).and_then(|n| a.tensor_owned(&n)))
            }
        }
    }
}
