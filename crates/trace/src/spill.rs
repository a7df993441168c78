//! Tensors a trace keeps, written to a scratch file as they are recorded
//! (whole, or a long prompt's in parts) and copied from it into the trace
//! file a block at a time: a trace with `--tensors` never holds them.
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

    /// Room for `key`'s tensor of `shape` (a later one of the same key
    /// replaces it); returns where it starts.
    fn reserve(&mut self, key: &str, shape: &[usize]) -> u64 {
        let at = self.end;
        self.entries.insert(key.to_string(), (shape.to_vec(), at));
        self.end += shape.iter().product::<usize>() as u64 * 4;
        at
    }

    /// Appends `data` as `key`'s tensor (a later one of the same key
    /// replaces it).
    pub fn put(&mut self, key: &str, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
        let at = self.reserve(key, shape);
        self.file.write_all_at(bytemuck::cast_slice(data), at)
    }

    /// Writes a part of `key`'s tensor whose whole has `total` rows on
    /// `axis`: the part's rows `from ..` (`shape` is the part's). The first
    /// part (`from` = 0) makes room for the whole; every part lands where
    /// the whole tensor has it, so the parts need not be contiguous
    /// (scores [H, T, Tkv] come in blocks of T).
    pub fn put_part(
        &mut self,
        key: &str,
        shape: &[usize],
        axis: usize,
        from: usize,
        total: usize,
        data: &[f32],
    ) -> std::io::Result<()> {
        let base = match self.entries.get(key) {
            Some((_, at)) if from > 0 => *at,
            _ => {
                let mut whole = shape.to_vec();
                whole[axis] = total;
                self.reserve(key, &whole)
            }
        };
        let (n, inner): (usize, usize) = (shape[axis], shape[axis + 1..].iter().product());
        for (o, slab) in data.chunks_exact(n * inner).enumerate() {
            let at = base + ((o * total + from) * inner) as u64 * 4;
            self.file.write_all_at(bytemuck::cast_slice(slab), at)?;
        }
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

    /// Copies `key`'s tensor (little-endian f32) to `out`, a block at a time.
    pub fn copy_to(&self, key: &str, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let Some((shape, at)) = self.entries.get(key) else {
            return Err(std::io::Error::other(format!("{key}: not in the spill")));
        };
        let mut left = shape.iter().product::<usize>() as u64 * 4;
        let mut buf = vec![0u8; (1 << 20).min(left as usize)];
        let mut pos = *at;
        while left > 0 {
            let n = buf.len().min(left as usize);
            self.file.read_exact_at(&mut buf[..n], pos)?;
            out.write_all(&buf[..n])?;
            (pos, left) = (pos + n as u64, left - n as u64);
        }
        Ok(())
    }
}
