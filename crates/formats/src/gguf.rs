//! GGUF reader (versions 2 and 3, little-endian).
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/value pairs, the tensor infos, padding to
//! `general.alignment` (default 32), then the tensor data. Every read is
//! bounds-checked against the mapped file; counts are checked against the
//! bytes left before any vector is sized by them; nesting of arrays is capped.
//! Tensor dims (`ne`, innermost first) become row-major shapes here, and only
//! here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use plumb_quant::GgmlType;

use crate::{Bytes, FormatError, OwnedTensor, TensorView};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (real files use depth 1).
pub const MAX_NESTING: usize = 8;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

/// The GGUF value type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type can take in a file.
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl Value {
    pub fn type_id(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// Any integer value that fits in a u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short rendering for reports: scalars in full, arrays as
    /// `[type; n]` with the first few items.
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) => {
                let mut t: String = s.chars().take(80).collect();
                if t.len() < s.len() {
                    t.push('…');
                }
                format!("{t:?}")
            }
            Value::Array(a) => {
                let ty = a.first().map(|v| format!("{:?}", v.type_id())).unwrap_or_else(|| "?".into());
                let head: Vec<String> = a.iter().take(3).map(|v| v.summary()).collect();
                let more = if a.len() > 3 { ", …" } else { "" };
                format!("[{ty}; {}] [{}{more}]", a.len(), head.join(", "))
            }
            Value::F32(v) => format!("{v}"),
            Value::F64(v) => format!("{v}"),
            Value::Bool(v) => format!("{v}"),
            other => other.as_i64().map(|v| v.to_string()).unwrap_or_default(),
        }
    }

    /// The value as JSON (arrays in full).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::String(s) => J::String(s.clone()),
            Value::Array(a) => J::Array(a.iter().map(Value::to_json).collect()),
            // Through the shortest decimal form, so 1e-6f32 prints as 1e-6.
            Value::F32(v) => format!("{v}")
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::F64(v) => serde_json::Number::from_f64(*v).map(J::Number).unwrap_or(J::Null),
            Value::Bool(b) => J::Bool(*b),
            Value::U64(v) => J::from(*v),
            other => other.as_i64().map(J::from).unwrap_or(J::Null),
        }
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Row-major shape (GGUF `ne` reversed).
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section, as stored.
    pub offset: u64,
    /// Absolute position of the first byte in the file.
    pub start: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: std::sync::Arc<Mmap>,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: u64,
}

impl<'a> Cursor<'a> {
    fn err(&self, field: &str, offset: u64, what: impl Into<String>) -> FormatError {
        FormatError::At { path: self.path.to_path_buf(), field: field.to_string(), offset, what: what.into() }
    }

    fn remaining(&self) -> u64 {
        self.buf.len() as u64 - self.pos
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(self.err(
                field,
                self.pos,
                format!("needs {n} bytes but the file ends after {} (truncated?)", self.remaining()),
            ));
        }
        let start = self.pos as usize;
        self.pos += n;
        Ok(&self.buf[start..start + n as usize])
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], FormatError> {
        let b = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    fn string(&mut self, field: &str) -> Result<String, FormatError> {
        let at = self.pos;
        let len = self.u64(field)?;
        if len > self.remaining() {
            return Err(self.err(
                field,
                at,
                format!("string length {len} exceeds the {} bytes left in the file", self.remaining()),
            ));
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.err(field, at + 8 + e.utf8_error().valid_up_to() as u64, "string is not valid UTF-8"))
    }

    fn value(&mut self, ty: ValueType, field: &str, depth: usize) -> Result<Value, FormatError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(field)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(field)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(field)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return Err(self.err(field, at, format!("bool byte is {b}, not 0 or 1"))),
                }
            }
            ValueType::String => Value::String(self.string(field)?),
            ValueType::Array => {
                if depth >= MAX_NESTING {
                    return Err(self.err(field, self.pos, format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let at = self.pos;
                let elem_id = self.u32(field)?;
                let elem = ValueType::from_id(elem_id)
                    .ok_or_else(|| self.err(field, at, format!("unknown array element type {elem_id}")))?;
                let count_at = self.pos;
                let n = self.u64(field)?;
                // Each element takes at least min_size bytes: refuse counts the
                // file cannot possibly hold before sizing any vector by them.
                if n.checked_mul(elem.min_size()).is_none_or(|need| need > self.remaining()) {
                    return Err(self.err(
                        field,
                        count_at,
                        format!(
                            "array claims {n} {elem:?} elements but only {} bytes are left (truncated?)",
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, field, depth + 1)?);
                }
                Value::Array(items)
            }
        })
    }
}

impl GgufFile {
    /// Frees the metadata values under `keys` once their contents live
    /// elsewhere (the tokenizer's vocabulary: three arrays of 262144 values
    /// in Gemma 3 hold about 40 MB as parsed values). They read as empty
    /// arrays afterwards.
    pub fn release(&mut self, keys: &[&str]) {
        for k in keys {
            if let Some(&i) = self.index.get(*k) {
                self.metadata[i].1 = Value::Array(Vec::new());
            }
        }
    }

    /// Opens and validates `path`. Nothing is read past the header except
    /// through the returned views.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, FormatError> {
        let path = path.as_ref();
        Self::parse(path.to_path_buf(), crate::map_file(path)?)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<GgufFile, FormatError> {
        let h = parse_header(&path, &mmap[..])?;
        Ok(GgufFile {
            path,
            mmap: std::sync::Arc::new(mmap),
            version: h.version,
            alignment: h.alignment,
            data_offset: h.data_offset,
            metadata: h.metadata,
            index: h.index,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
        })
    }
}

/// Everything in a GGUF file but the tensor data, parsed and checked.
pub struct Header {
    pub version: u32,
    pub alignment: u64,
    pub data_offset: u64,
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Parses and validates a GGUF file held in `bytes` (`path` only names it in
/// errors). The fuzz target calls this directly.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header, FormatError> {
    let path = path.to_path_buf();
    let mut c = Cursor { path: &path, buf: bytes, pos: 0 };
    let magic = c.array::<4>("magic")?;
    if &magic != MAGIC {
        return Err(c.err("magic", 0, format!("expected \"GGUF\", found {magic:02x?} (not a GGUF file)")));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        let hint = if version.swap_bytes() <= 3 { " (a big-endian file?)" } else { "" };
        return Err(c.err("version", 4, format!("unsupported GGUF version {version}{hint}; plumb reads 2 and 3")));
    }
    let n_tensors = c.u64("tensor_count")?;
    let n_kv = c.u64("metadata_kv_count")?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes,
    // a tensor info at least 8 + 4 + 4 + 8 bytes.
    if n_kv.checked_mul(13).is_none_or(|n| n > c.remaining()) {
        return Err(c.err("metadata_kv_count", 16, format!("{n_kv} entries cannot fit in the file")));
    }
    if n_tensors.checked_mul(24).is_none_or(|n| n > c.remaining()) {
        return Err(c.err("tensor_count", 8, format!("{n_tensors} tensors cannot fit in the file")));
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut index = HashMap::new();
    for i in 0..n_kv {
        let key_at = c.pos;
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty_at = c.pos;
        let ty_id = c.u32(&key)?;
        let ty = ValueType::from_id(ty_id)
            .ok_or_else(|| c.err(&key, ty_at, format!("unknown metadata value type {ty_id}")))?;
        let value = c.value(ty, &key, 0)?;
        if index.insert(key.clone(), metadata.len()).is_some() {
            return Err(c.err(&key, key_at, "duplicate metadata key"));
        }
        metadata.push((key, value));
    }

    let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(FormatError::invalid(
                    &path,
                    format!("general.alignment is {}, not a power of two up to 1 MiB", v.summary()),
                ))
            }
        },
    };

    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::new();
    for i in 0..n_tensors {
        let at = c.pos;
        let name = c.string(&format!("tensor #{i} name"))?;
        let dims_at = c.pos;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(c.err(&name, dims_at, format!("tensor has {n_dims} dimensions; 1 to {MAX_DIMS} allowed")));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(c.u64(&name)?);
        }
        let ty_at = c.pos;
        let ty_id = c.u32(&name)?;
        let ty =
            GgmlType::from_id(ty_id).ok_or_else(|| c.err(&name, ty_at, format!("unknown ggml type id {ty_id}")))?;
        let off_at = c.pos;
        let offset = c.u64(&name)?;
        let n_elem = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let n_elem = n_elem
            .filter(|&n| n <= c.buf.len() as u64 * 8)
            .ok_or_else(|| c.err(&name, dims_at, format!("dimensions {ne:?} are larger than the file could hold")))?;
        if ne[0] % ty.block_elems() as u64 != 0 {
            return Err(c.err(
                &name,
                dims_at,
                format!("row length {} is not a multiple of the {ty} block size {}", ne[0], ty.block_elems()),
            ));
        }
        let n_bytes = ty.bytes_for(n_elem).unwrap_or(u64::MAX);
        if offset % alignment != 0 {
            return Err(c.err(
                &name,
                off_at,
                format!("data offset {offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        let shape: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
        if tensor_index.insert(name.clone(), infos.len()).is_some() {
            return Err(c.err(&name, at, "duplicate tensor name"));
        }
        infos.push(TensorInfo { name, shape, ty, offset, start: 0, n_bytes });
    }

    let data_offset = c.pos.div_ceil(alignment) * alignment;
    let file_len = bytes.len() as u64;
    for t in &mut infos {
        t.start = data_offset.saturating_add(t.offset);
        let end = t.start.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > file_len) {
            return Err(FormatError::invalid(
                &path,
                format!(
                    "tensor {}: data [{}, +{}) runs past the end of the file ({} bytes; truncated?)",
                    t.name, t.start, t.n_bytes, file_len
                ),
            ));
        }
    }
    let mut by_start: Vec<&TensorInfo> = infos.iter().collect();
    by_start.sort_by_key(|t| t.start);
    for pair in by_start.windows(2) {
        if pair[0].start + pair[0].n_bytes > pair[1].start {
            return Err(FormatError::invalid(
                &path,
                format!("tensors {} and {} overlap in the data section", pair[0].name, pair[1].name),
            ));
        }
    }

    Ok(Header { version, alignment, data_offset, metadata, index, tensors: infos, tensor_index })
}

impl GgufFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// The metadata pairs in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// `general.architecture`.
    pub fn arch(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }

    /// A key under the architecture's prefix: `arch_key("block_count")` reads
    /// `<arch>.block_count`.
    pub fn arch_get(&self, key: &str) -> Option<&Value> {
        self.get(&format!("{}.{key}", self.arch()?))
    }

    fn wrong(&self, key: &str, want: &str, v: &Value) -> FormatError {
        FormatError::invalid(&self.path, format!("metadata {key} should be {want}, found {}", v.summary()))
    }

    /// A required unsigned integer.
    pub fn u64(&self, key: &str) -> Result<u64, FormatError> {
        let v = self.get(key).ok_or_else(|| FormatError::invalid(&self.path, format!("metadata {key} is missing")))?;
        v.as_u64().ok_or_else(|| self.wrong(key, "an unsigned integer", v))
    }

    /// An optional unsigned integer (present but mistyped is an error).
    pub fn u64_opt(&self, key: &str) -> Result<Option<u64>, FormatError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| self.wrong(key, "an unsigned integer", v)),
        }
    }

    /// An optional number.
    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>, FormatError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong(key, "a number", v)),
        }
    }

    /// An optional string.
    pub fn str_opt(&self, key: &str) -> Result<Option<&str>, FormatError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong(key, "a string", v)),
        }
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A view of a tensor's bytes (bounds were checked at open).
    pub fn view<'a>(&'a self, t: &'a TensorInfo) -> TensorView<'a> {
        let start = t.start as usize;
        TensorView { name: &t.name, shape: &t.shape, ty: t.ty, data: &self.mmap[start..start + t.n_bytes as usize] }
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensor_info(name).map(|t| self.view(t))
    }

    /// A tensor holding a share of the memory map.
    pub fn tensor_owned(&self, name: &str) -> Option<OwnedTensor> {
        let t = self.tensor_info(name)?;
        Some(OwnedTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            ty: t.ty,
            bytes: Bytes::Mapped { map: self.mmap.clone(), start: t.start as usize, len: t.n_bytes as usize },
        })
    }
}
