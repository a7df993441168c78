//! The input layout of the `hf` fuzz target, shared with the test that
//! replays its corpus: a u16 little-endian length, that many bytes of
//! config.json, then the bytes of model.safetensors.

use std::path::Path;

/// Writes `data` as a model folder at `dir` (created if missing). An input
/// too short to hold its config length is an `InvalidData` error.
pub fn write_hf_folder(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let short = || std::io::Error::new(std::io::ErrorKind::InvalidData, "input shorter than its config length");
    let len = u16::from_le_bytes([*data.first().ok_or_else(short)?, *data.get(1).ok_or_else(short)?]) as usize;
    let config = data.get(2..2 + len).ok_or_else(short)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), config)?;
    std::fs::write(dir.join("model.safetensors"), &data[2 + len..])
}
