//! Tensors a trace keeps, written to a scratch file as they are recorded:
//! a long prompt's trace with `--tensors` holds one tensor in memory at a
//! time (while recording it, and again while saving), never all of them.
//! The scratch file sits beside the trace file being written (the same
//! disk) and is removed when dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The kept tensors, by key: shape, and where their f32s lie in the file.
#[derive(Debug)]
pub struct Spill {
    file: File,
    entries: BTreeMap<String, (Vec<usize>, u64)>,
    end: u64,
}

impl Spill {
    /// A scratch file, unnamed, in `dir`.
    pub fn new_in(dir: &Path) -> std::io::Result<Spill> {
        Ok(Spill { file: tempfile::tempfile_in(dir)?, entries: BTreeMap::new(), end: 0 })
    }

    /// Appends `data` as `key`'s tensor (a later one of the same key
    /// replaces it).
    pub fn put(&mut self, key: &str, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.file.write_all_at(bytes, self.end)?;
        self.entries.insert(key.to_string(), (shape.to_vec(), self.end));
        self.end += bytes.len() as u64;
        Ok(())
    }

    /// The keys and shapes kept, in key order.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.entries.iter().map(|(k, (s, _))| (k.as_str(), s.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `key`'s tensor, read back (None if it was never kept).
    pub fn bytes(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        let Some((shape, at)) = self.entries.get(key) else { return Ok(None) };
        let mut out = vec![0u8; shape.iter().product::<usize>() * 4];
        self.file.read_exact_at(&mut out, *at)?;
        Ok(Some(out))
    }
}
