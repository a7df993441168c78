//! GGUF writer: metadata and tensors in any block format, version 3.
//!
//! Used to build test models and by commands that write models. The file is
//! written to a temporary name beside the target and renamed into place, so
//! an interrupted write never leaves a partial file under the real name.

use std::path::Path;

use plumb_quant::GgmlType;

use crate::gguf::{Value, DEFAULT_ALIGNMENT, MAGIC};
use crate::FormatError;

struct PendingTensor {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes them in one go.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        self.metadata.retain(|(k, _)| *k != key);
        self.metadata.push((key, value));
        self
    }

    /// Adds a tensor of row-major `shape` whose bytes are already in `ty`.
    pub fn add_raw(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), String> {
        let name = name.into();
        let n: usize = shape.iter().product();
        let row = shape.last().copied().unwrap_or(1);
        if row % ty.block_elems() != 0 {
            return Err(format!("{name}: row length {row} is not a multiple of the {ty} block size"));
        }
        if ty.bytes_for(n as u64) != Some(data.len() as u64) {
            return Err(format!(
                "{name}: {n} {ty} elements need {:?} bytes, got {}",
                ty.bytes_for(n as u64),
                data.len()
            ));
        }
        if shape.is_empty() || shape.len() > 4 {
            return Err(format!("{name}: {} dimensions; 1 to 4 allowed", shape.len()));
        }
        self.tensors.push(PendingTensor { name, shape: shape.to_vec(), ty, data });
        Ok(())
    }

    /// Adds an f32 tensor, quantizing it to `ty`.
    pub fn add_f32(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        ty: GgmlType,
        values: &[f32],
    ) -> Result<(), String> {
        let name = name.into();
        let data = plumb_quant::quantize(ty, values).map_err(|e| format!("{name}: {e}"))?;
        self.add_raw(name, shape, ty, data)
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Serializes everything to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = self.alignment() as usize;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut out, k);
            out.extend_from_slice(&(v.type_id() as u32).to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put_string(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&(t.ty as u32).to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).div_ceil(align) * align;
        }
        out.resize(out.len().div_ceil(align) * align, 0);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            out.resize(out.len().div_ceil(align) * align, 0);
        }
        out
    }

    /// Writes the file atomically (temporary name, then rename).
    pub fn write(&self, path: &Path) -> Result<(), FormatError> {
        write_atomic(path, &self.to_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    crate::atomic::write_atomic(path, bytes).map_err(|e| FormatError::io(path, e))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array has no element to take the type from; U32 is as
            // good as any for zero elements.
            let elem = items.first().map(|i| i.type_id() as u32).unwrap_or(4);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, i);
            }
        }
    }
}
