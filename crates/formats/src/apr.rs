//! APR v2 model files, aprender's format (`apr import model.gguf`).
//!
//! A 64-byte header (magic `APR\0`, version 2.0, flags, the tensor count,
//! the metadata's offset and length, the index's and data's offsets, and a
//! CRC-32 of the header's other 60 bytes), then JSON metadata, then a tensor
//! index sorted by name (name, dtype, dims, offset from the data start,
//! length), then tensors each at a 64-byte boundary, then optionally a
//! CRC-32 of everything before it. Every integer is little-endian.
//!
//! Tensors arrive as [`TensorView`]s like GGUF's: ggml types (F32, F16,
//! BF16, Q4_K, Q6_K and, in files written with `--preserve-q4k`, other ggml
//! blocks) are the bytes of the file; APR's own Q4 and Q8 are dequantized
//! to f32 when the file is opened. Compressed, encrypted, signed, sharded
//! and column-major files are refused with the reason.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use plumb_quant::GgmlType;

use crate::{Bytes, FormatError, OwnedTensor, TensorView};

const MAGIC: &[u8; 4] = b"APR\0";
const HEADER_LEN: usize = 64;
/// Larger metadata is refused rather than parsed (aprender's own limit).
const MAX_METADATA: u64 = 16 << 20;
/// The smallest index entry: name length, dtype, ndim, offset, size.
const MIN_ENTRY: u64 = 2 + 1 + 1 + 8 + 8;
const MAX_DIMS: usize = 8;

/// Header flags (u16 at byte 6).
pub mod flags {
    pub const LZ4: u16 = 0x0001;
    pub const ZSTD: u16 = 0x0002;
    pub const ENCRYPTED: u16 = 0x0004;
    pub const SIGNED: u16 = 0x0008;
    pub const SHARDED: u16 = 0x0010;
    /// Written by `apr import --preserve-q4k`: ggml type ids, GGUF's
    /// dimension order.
    pub const QUANTIZED: u16 = 0x0020;
    pub const COLUMN_MAJOR: u16 = 0x0800;
}

/// APR's own dtype ids beside the ggml ones.
const APR_Q4: u8 = 128;
const APR_Q8: u8 = 129;
/// What older files call APR Q4 and Q8 (and `--preserve-q4k` files use 8
/// for ggml Q8_0).
const LEGACY_Q4: u8 = 8;
const LEGACY_Q8: u8 = 9;

/// How a tensor's bytes are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AprType {
    /// A ggml type: the bytes are ggml's.
    Ggml(GgmlType),
    /// APR's Q4: blocks of 32 values, an f16 scale and 16 bytes of nibbles
    /// (element i in byte i/2, low nibble when i is even), value (n−8)·scale.
    Q4,
    /// APR's Q8: one f32 scale for the tensor, then one i8 per value.
    Q8,
}

impl AprType {
    pub fn name(self) -> &'static str {
        match self {
            AprType::Ggml(t) => t.name(),
            AprType::Q4 => "APR_Q4",
            AprType::Q8 => "APR_Q8",
        }
    }

    fn bytes_for(self, n: u64) -> Option<u64> {
        match self {
            AprType::Ggml(t) => t.bytes_for(n),
            AprType::Q4 => n.div_ceil(32).checked_mul(18),
            AprType::Q8 => n.checked_add(4),
        }
    }
}

/// One entry of the tensor index.
#[derive(Debug, Clone)]
pub struct AprTensor {
    pub name: String,
    /// Row-major, the last dimension contiguous (as [`TensorView`]).
    pub shape: Vec<usize>,
    pub ty: AprType,
    /// Absolute byte range in the file.
    pub start: u64,
    pub len: u64,
}

impl AprTensor {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// The footer checksum, where the file has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Footer {
    /// The file ends with a CRC-32 of all before it, and it matches.
    Verified,
    /// No footer (`apr import --preserve-q4k` writes none).
    Absent,
}

/// Everything in an APR file but the tensor data, parsed and checked.
#[derive(Debug)]
pub struct AprHeader {
    pub version: (u8, u8),
    pub flags: u16,
    /// Whether dtypes are ggml's ids and blocks as GGUF had them (`apr
    /// import --preserve-q4k`: flag 0x20, or its model type).
    pub ggml_ids: bool,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Sorted by name, as the file has them.
    pub tensors: Vec<AprTensor>,
    pub footer: Footer,
}

/// CRC-32 (IEEE, as zlib) of `parts` in turn.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn align64(x: u64) -> Option<u64> {
    x.checked_add(63).map(|v| v & !63)
}

/// Parses and checks an APR file held in `bytes` (`path` only names it in
/// errors). The fuzz target calls this directly.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<AprHeader, FormatError> {
    let at = |field: &str, offset: u64, what: String| FormatError::At {
        path: path.to_path_buf(),
        field: field.into(),
        offset,
        what,
    };
    let file_len = bytes.len() as u64;
    if bytes.len() < HEADER_LEN {
        return Err(at("header", 0, format!("the file is {file_len} bytes, shorter than the 64-byte APR header")));
    }
    let magic: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if &magic == b"APRT" {
        return Err(at("magic", 0, "an APRT stage dump, not a model (plumb diff reads a folder of them)".into()));
    }
    if &magic == b"APRN" {
        return Err(at("magic", 0, "an APR v1 file (APRN); plumb reads APR v2".into()));
    }
    if &magic != MAGIC && &magic != b"APR2" {
        return Err(at("magic", 0, format!("expected \"APR\\0\", found {magic:02x?} (not an APR file)")));
    }
    let version = (bytes[4], bytes[5]);
    if version.0 != 2 {
        return Err(at("version", 4, format!("APR version {}.{}; plumb reads version 2", version.0, version.1)));
    }
    let stored_crc = u32_at(bytes, 40);
    let crc = crc32(&[&bytes[..40], &bytes[44..HEADER_LEN]]);
    if crc != stored_crc {
        return Err(at(
            "header checksum",
            40,
            format!("stored {stored_crc:#010x}, the header's bytes give {crc:#010x} (a damaged or edited header)"),
        ));
    }
    let fl = u16_at(bytes, 6);
    let refused = [
        (flags::LZ4, "LZ4-compressed"),
        (flags::ZSTD, "Zstd-compressed"),
        (flags::ENCRYPTED, "encrypted"),
        (flags::SIGNED, "signed"),
        (flags::SHARDED, "sharded"),
        (flags::COLUMN_MAJOR, "marked column-major"),
    ];
    if let Some((_, what)) = refused.iter().find(|(bit, _)| fl & bit != 0) {
        return Err(at(
            "flags",
            6,
            format!(
                "the file is {what} (flags {fl:#06x}); plumb reads plain APR v2 files: convert it without that option"
            ),
        ));
    }
    let n_tensors = u32_at(bytes, 8) as u64;
    let meta_off = u64_at(bytes, 12);
    let meta_len = u32_at(bytes, 20) as u64;
    let index_off = u64_at(bytes, 24);
    let data_off = u64_at(bytes, 32);
    if meta_off < HEADER_LEN as u64 || meta_off > file_len {
        return Err(at("metadata_offset", 12, format!("{meta_off} is outside the file ({file_len} bytes)")));
    }
    if meta_len > MAX_METADATA || meta_off + meta_len > file_len {
        return Err(at(
            "metadata_size",
            20,
            format!(
                "{meta_len} bytes from offset {meta_off} do not fit the file ({file_len} bytes) or the 16 MiB limit"
            ),
        ));
    }
    if index_off < meta_off + meta_len || index_off > file_len {
        return Err(at(
            "tensor_index_offset",
            24,
            format!("{index_off} is before the metadata's end ({}) or past the file", meta_off + meta_len),
        ));
    }
    if data_off < index_off || data_off > file_len {
        return Err(at("data_offset", 32, format!("{data_off} is before the index ({index_off}) or past the file")));
    }
    if n_tensors.checked_mul(MIN_ENTRY).is_none_or(|n| n > data_off - index_off) {
        return Err(at(
            "tensor_count",
            8,
            format!("{n_tensors} tensors cannot fit in the {}-byte index", data_off - index_off),
        ));
    }
    let meta_bytes = &bytes[meta_off as usize..(meta_off + meta_len) as usize];
    let metadata = match serde_json::from_slice::<serde_json::Value>(meta_bytes) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => return Err(at("metadata", meta_off, "the JSON metadata is not an object".into())),
        Err(e) => return Err(at("metadata", meta_off, format!("not valid JSON: {e}"))),
    };
    let ggml_ids =
        fl & flags::QUANTIZED != 0 || metadata.get("model_type").and_then(|v| v.as_str()) == Some("transformer_lm_q4k");

    // The index, entry by entry, within [index_off, data_off).
    let index = &bytes[..data_off as usize];
    let mut pos = index_off as usize;
    let mut tensors: Vec<AprTensor> = Vec::with_capacity(n_tensors as usize);
    let need = |pos: usize, n: usize, what: &str, i: u64| -> Result<(), FormatError> {
        if pos.checked_add(n).is_none_or(|end| end > index.len()) {
            return Err(at(&format!("tensor #{i}"), pos as u64, format!("{what} runs past the tensor index")));
        }
        Ok(())
    };
    for i in 0..n_tensors {
        let entry_at = pos as u64;
        need(pos, 2, "the name length", i)?;
        let name_len = u16_at(index, pos) as usize;
        pos += 2;
        need(pos, name_len, "the name", i)?;
        let name = std::str::from_utf8(&index[pos..pos + name_len])
            .map_err(|_| at(&format!("tensor #{i}"), pos as u64, "the name is not UTF-8".into()))?
            .to_string();
        pos += name_len;
        let field = |f: &str| format!("tensor {name:?} {f}");
        need(pos, 2, "the dtype and ndim", i)?;
        let (dtype, ndim) = (index[pos], index[pos + 1] as usize);
        pos += 2;
        if ndim == 0 || ndim > MAX_DIMS {
            return Err(at(&field("ndim"), pos as u64 - 1, format!("{ndim} dimensions; APR tensors have 1 to 8")));
        }
        need(pos, 8 * ndim + 16, "the dims, offset and size", i)?;
        let dims: Vec<u64> = (0..ndim).map(|k| u64_at(index, pos + 8 * k)).collect();
        pos += 8 * ndim;
        let (offset, size) = (u64_at(index, pos), u64_at(index, pos + 8));
        pos += 16;
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d).filter(|&p| p <= file_len.saturating_mul(8)));
        let Some(n) = n.filter(|&n| n > 0) else {
            return Err(at(&field("dims"), entry_at, format!("{dims:?} is empty or too large for the file")));
        };
        let ty = apr_type(dtype, ggml_ids, n, size)
            .ok_or_else(|| at(&field("dtype"), entry_at, format!("unknown or unsupported dtype {dtype}")))?;
        if let AprType::Ggml(g) = ty {
            let row = if ndim >= 3 { dims[0] } else { dims[ndim - 1] };
            if !row.is_multiple_of(g.block_elems() as u64) {
                return Err(at(
                    &field("dims"),
                    entry_at,
                    format!("rows of {row} values are not whole {} blocks of {}", g.name(), g.block_elems()),
                ));
            }
        }
        let expected = ty.bytes_for(n);
        if expected != Some(size) {
            return Err(at(
                &field("size"),
                pos as u64 - 8,
                format!("{size} bytes, but {n} values of {} take {}", ty.name(), expected.unwrap_or(0)),
            ));
        }
        let start = data_off.checked_add(offset);
        if start.and_then(|s| s.checked_add(size)).is_none_or(|end| end > file_len) {
            return Err(at(
                &field("offset"),
                pos as u64 - 16,
                format!("{size} bytes at data offset {offset} run past the end of the file ({file_len} bytes)"),
            ));
        }
        if let Some(prev) = tensors.last() {
            if prev.name.as_str() >= name.as_str() {
                return Err(at(
                    &field("name"),
                    entry_at,
                    format!("the index is not sorted by name with no repeats (after {:?})", prev.name),
                ));
            }
        }
        // Matrices are [out, in], row-major (so are those of
        // `--preserve-q4k` files, whatever aprender's own notes say);
        // tensors of three or more dims keep ggml's order, contiguous first.
        let shape: Vec<usize> = if ndim >= 3 {
            dims.iter().rev().map(|&d| d as usize).collect()
        } else {
            dims.iter().map(|&d| d as usize).collect()
        };
        tensors.push(AprTensor { name, shape, ty, start: start.unwrap_or(0), len: size });
    }

    // A footer follows the padded data when the file has room for exactly one.
    let mut data_end = data_off;
    for t in &tensors {
        let end = align64(t.start - data_off + t.len).and_then(|e| e.checked_add(data_off));
        data_end = data_end.max(end.unwrap_or(u64::MAX));
    }
    let footer = if data_end.checked_add(4) == Some(file_len) {
        let stored = u32_at(bytes, bytes.len() - 4);
        let crc = crc32(&[&bytes[..bytes.len() - 4]]);
        if crc != stored {
            return Err(at(
                "footer checksum",
                file_len - 4,
                format!("stored {stored:#010x}, the file's bytes give {crc:#010x} (a damaged or truncated file)"),
            ));
        }
        Footer::Verified
    } else {
        Footer::Absent
    };
    Ok(AprHeader { version, flags: fl, ggml_ids, metadata, tensors, footer })
}

/// The type of a tensor from its dtype byte. 8 and 9 are APR's Q4 and Q8
/// in older files, but ggml's Q8_0 in GGUF-ordered ones: the size tells.
fn apr_type(dtype: u8, ggml_ids: bool, n: u64, size: u64) -> Option<AprType> {
    match dtype {
        APR_Q4 => Some(AprType::Q4),
        APR_Q8 => Some(AprType::Q8),
        LEGACY_Q4 if AprType::Q4.bytes_for(n) == Some(size) && !ggml_ids => Some(AprType::Q4),
        LEGACY_Q8 if !ggml_ids => Some(AprType::Q8),
        // F32, F16, BF16, Q4_K, Q6_K in every file; other ggml blocks only
        // where ggml's ids are the file's (--preserve-q4k).
        0 | 1 | 12 | 14 | 30 => GgmlType::from_id(dtype as u32).map(AprType::Ggml),
        d if ggml_ids => GgmlType::from_id(d as u32).map(AprType::Ggml),
        _ => None,
    }
}

/// Dequantizes APR's Q4 (see [`AprType::Q4`]); a scale that is not a
/// normal number counts as 0.
pub fn dequantize_q4(data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    for block in data.chunks_exact(18) {
        let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        let scale = if scale.is_normal() { scale } else { 0.0 };
        for i in 0..32 {
            if out.len() == n {
                break;
            }
            let byte = block[2 + i / 2];
            let nib = if i % 2 == 0 { byte & 15 } else { byte >> 4 };
            out.push((nib as f32 - 8.0) * scale);
        }
    }
    out
}

/// Dequantizes APR's Q8 (see [`AprType::Q8`]).
pub fn dequantize_q8(data: &[u8], n: usize) -> Vec<f32> {
    let scale = f32::from_le_bytes(data[..4].try_into().expect("4 bytes"));
    data[4..4 + n].iter().map(|&q| q as i8 as f32 * scale).collect()
}

/// An APR v2 file, memory-mapped.
pub struct AprFile {
    path: PathBuf,
    map: Arc<Mmap>,
    pub header: AprHeader,
    by_name: HashMap<String, usize>,
    /// APR Q4/Q8 tensors as f32, by index.
    dequantized: HashMap<usize, Arc<Vec<u8>>>,
}

impl std::fmt::Debug for AprFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AprFile").field("path", &self.path).field("tensors", &self.header.tensors.len()).finish()
    }
}

impl AprFile {
    /// Opens and checks `path`, dequantizing any APR Q4/Q8 tensor.
    pub fn open(path: impl AsRef<Path>) -> Result<AprFile, FormatError> {
        let path = path.as_ref();
        let map = crate::map_file(path)?;
        let header = parse_header(path, &map[..])?;
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let mut dequantized = HashMap::new();
        for (i, t) in header.tensors.iter().enumerate() {
            let data = &map[t.start as usize..(t.start + t.len) as usize];
            let n = t.n_elements() as usize;
            let values = match t.ty {
                AprType::Q4 => dequantize_q4(data, n),
                AprType::Q8 => dequantize_q8(data, n),
                AprType::Ggml(_) => continue,
            };
            dequantized.insert(i, Arc::new(values.iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
        Ok(AprFile { path: path.to_path_buf(), map: Arc::new(map), header, by_name, dequantized })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// A metadata entry.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.header.metadata.get(key)
    }

    fn ty_of(t: &AprTensor) -> GgmlType {
        match t.ty {
            AprType::Ggml(g) => g,
            AprType::Q4 | AprType::Q8 => GgmlType::F32,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<TensorView<'_>> {
        let &i = self.by_name.get(name)?;
        let t = &self.header.tensors[i];
        let data: &[u8] = match self.dequantized.get(&i) {
            Some(v) => v,
            None => &self.map[t.start as usize..(t.start + t.len) as usize],
        };
        Some(TensorView { name: &t.name, shape: &t.shape, ty: Self::ty_of(t), data })
    }

    pub fn tensor_owned(&self, name: &str) -> Option<OwnedTensor> {
        let &i = self.by_name.get(name)?;
        let t = &self.header.tensors[i];
        let bytes = match self.dequantized.get(&i) {
            Some(v) => Bytes::Owned(v.clone()),
            None => Bytes::Mapped { map: self.map.clone(), start: t.start as usize, len: t.len as usize },
        };
        Some(OwnedTensor { name: t.name.clone(), shape: t.shape.clone(), ty: Self::ty_of(t), bytes })
    }

    /// Whether `path` starts with APR's magic (or another APR generation's).
    pub fn sniff(path: &Path) -> bool {
        use std::io::Read;
        let mut magic = [0u8; 4];
        File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic[..3] == *b"APR"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An APR v2 file laid out as aprender's writer lays it out:
    /// `tensors` are (name, dtype, dims as stored, bytes), in the order given.
    fn build(tensors: &[(&str, u8, Vec<u64>, Vec<u8>)], meta: &str, flags: u16, footer: bool) -> Vec<u8> {
        let pad = |v: &mut Vec<u8>| v.resize(v.len().div_ceil(64) * 64, 0);
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (name, dtype, dims, bytes) in tensors {
            index.extend((name.len() as u16).to_le_bytes());
            index.extend(name.as_bytes());
            index.push(*dtype);
            index.push(dims.len() as u8);
            for d in dims {
                index.extend(d.to_le_bytes());
            }
            index.extend((data.len() as u64).to_le_bytes());
            index.extend((bytes.len() as u64).to_le_bytes());
            data.extend(bytes);
            pad(&mut data);
        }
        let mut meta_sec = meta.as_bytes().to_vec();
        pad(&mut meta_sec);
        pad(&mut index);
        let index_off = 64 + meta_sec.len() as u64;
        let data_off = index_off + index.len() as u64;
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(MAGIC);
        h[4] = 2;
        h[6..8].copy_from_slice(&flags.to_le_bytes());
        h[8..12].copy_from_slice(&(tensors.len() as u32).to_le_bytes());
        h[12..20].copy_from_slice(&64u64.to_le_bytes());
        h[20..24].copy_from_slice(&(meta.len() as u32).to_le_bytes());
        h[24..32].copy_from_slice(&index_off.to_le_bytes());
        h[32..40].copy_from_slice(&data_off.to_le_bytes());
        reseal(&mut h);
        let mut file = [h, meta_sec, index, data].concat();
        if footer {
            let crc = crc32(&[&file]);
            file.extend(crc.to_le_bytes());
        }
        file
    }

    /// Recomputes the header checksum after an edit.
    fn reseal(h: &mut [u8]) {
        let crc = crc32(&[&h[..40], &h[44..64]]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn sample(footer: bool) -> Vec<u8> {
        build(
            &[
                ("a.weight", 0, vec![2, 3], f32s(&[1., 2., 3., 4., 5., 6.])),
                ("b.norm", 0, vec![3], f32s(&[7., 8., 9.])),
                ("c.stack", 0, vec![2, 1, 2], f32s(&[1., 2., 3., 4.])),
            ],
            r#"{"model_type":"llama","hidden_size":3}"#,
            0x0400,
            footer,
        )
    }

    fn err(bytes: &[u8]) -> String {
        parse_header(Path::new("t.apr"), bytes).unwrap_err().to_string()
    }

    #[test]
    fn the_checksum_crc32_is_zlibs() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
    }

    #[test]
    fn a_well_formed_file_reads_back() {
        for footer in [true, false] {
            let h = parse_header(Path::new("t.apr"), &sample(footer)).unwrap();
            assert_eq!(h.footer, if footer { Footer::Verified } else { Footer::Absent });
            assert_eq!(h.metadata["hidden_size"], 3);
            let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["a.weight", "b.norm", "c.stack"]);
            // Matrices are [out, in] as stored; three dims are ggml order, reversed.
            assert_eq!(h.tensors[0].shape, [2, 3]);
            assert_eq!(h.tensors[2].shape, [2, 1, 2]);
            assert!(h.tensors.iter().all(|t| t.ty == AprType::Ggml(GgmlType::F32)));
        }
    }

    #[test]
    fn a_damaged_header_or_body_is_named() {
        let mut f = sample(true);
        f[9] ^= 1; // the tensor count, checksum not resealed
        assert!(err(&f).contains("header checksum"), "{}", err(&f));
        let mut f = sample(true);
        let last = f.len() - 10;
        f[last] ^= 0x40; // padding near the end: only the footer sees it
        assert!(err(&f).contains("footer checksum"), "{}", err(&f));
        assert!(err(b"GGUF").contains("shorter than the 64-byte"));
        let mut f = sample(false);
        f[..4].copy_from_slice(b"APRN");
        assert!(err(&f).contains("APR v1"));
    }

    #[test]
    fn compressed_encrypted_and_sharded_files_are_refused_by_name() {
        for (bit, what) in
            [(flags::LZ4, "LZ4"), (flags::ZSTD, "Zstd"), (flags::ENCRYPTED, "encrypted"), (flags::SHARDED, "sharded")]
        {
            let mut f = sample(false);
            f[6..8].copy_from_slice(&(0x0400 | bit).to_le_bytes());
            reseal(&mut f[..64]);
            assert!(err(&f).contains(what), "{}", err(&f));
        }
    }

    #[test]
    fn counts_sizes_and_order_are_checked() {
        let mut f = sample(false);
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        reseal(&mut f[..64]);
        assert!(err(&f).contains("cannot fit"), "{}", err(&f));

        let unsorted = build(&[("b", 0, vec![1], f32s(&[1.])), ("a", 0, vec![1], f32s(&[1.]))], "{}", 0, false);
        assert!(err(&unsorted).contains("not sorted"), "{}", err(&unsorted));
        let short = build(&[("a", 0, vec![4], f32s(&[1., 2.]))], "{}", 0, false);
        assert!(err(&short).contains("take 16"), "{}", err(&short));
        let q4k_rows = build(&[("a", 12, vec![2, 100], vec![0; 144])], "{}", 0, false);
        assert!(err(&q4k_rows).contains("blocks"), "{}", err(&q4k_rows));
        let unknown = build(&[("a", 77, vec![1], vec![0; 4])], "{}", 0, false);
        assert!(err(&unknown).contains("dtype 77"), "{}", err(&unknown));
        let not_json = build(&[], "{nope", 0, false);
        assert!(err(&not_json).contains("not valid JSON"), "{}", err(&not_json));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let f = sample(true);
        for cut in 0..f.len() - 1 {
            let _ = parse_header(Path::new("t.apr"), &f[..cut]);
        }
    }

    #[test]
    fn apr_q4_and_q8_dequantize_as_aprender_defines_them() {
        // Scale 0.5; element i in byte i/2, low nibble when even; value (n − 8)·scale.
        let mut block = half::f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..16u8).map(|i| (i % 16) | (15 - i % 16) << 4));
        let v = dequantize_q4(&block, 32);
        assert_eq!(v[0], (0.0 - 8.0) * 0.5);
        assert_eq!(v[1], (15.0 - 8.0) * 0.5);
        assert_eq!(v[2], (1.0 - 8.0) * 0.5);
        assert_eq!(v[31], (0.0 - 8.0) * 0.5);
        // A partial block stops at n.
        assert_eq!(dequantize_q4(&block, 5).len(), 5);
        let mut q8 = 0.25f32.to_le_bytes().to_vec();
        q8.extend([2u8, 0xFE, 127]);
        assert_eq!(dequantize_q8(&q8, 3), [0.5, -0.5, 31.75]);
    }
}
