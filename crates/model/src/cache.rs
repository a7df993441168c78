//! The key/value cache of a decoder: per layer, the keys and values of every
//! position seen so far, in the layout the precision's attention reads
//! ([`ValueLayout`]).

use plumb_kernels::attention::{ValueLayout, Values, VALUE_PAD};

use crate::config::ModelConfig;

/// The key/value cache: per layer, rows of [Hkv·hd] for each position.
/// Values are kept in the layout the precision reads: rows (`v`, exact) or
/// transposed (`vt`, fast: [Hkv·hd][positions], as llama.cpp keeps its V
/// cache, so a decoding step appends one column instead of transposing the
/// whole cache). A layer holds one layout at a time and is converted if the
/// other precision reads it.
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    vt: Vec<Vec<f32>>,
    /// Positions held in `vt[l]`.
    vt_len: Vec<usize>,
    pub len: usize,
    pub capacity: usize,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, capacity: usize) -> KvCache {
        let kv_dim = cfg.kv_dim();
        KvCache {
            k: (0..cfg.n_layer).map(|_| Vec::with_capacity(capacity * kv_dim)).collect(),
            v: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            vt: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            vt_len: vec![0; cfg.n_layer],
            len: 0,
            capacity,
            kv_dim,
        }
    }

    /// Bytes the cache takes when full (the transposed layout's positions
    /// padded to a multiple of 64).
    pub fn bytes_for(cfg: &ModelConfig, capacity: usize) -> u64 {
        let positions = capacity as u64 + capacity.div_ceil(VALUE_PAD) as u64 * VALUE_PAD as u64;
        cfg.n_layer as u64 * positions * cfg.kv_dim() as u64 * 4
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.truncate(len * self.kv_dim);
        }
        for vl in self.vt_len.iter_mut() {
            *vl = (*vl).min(len);
        }
        self.len = self.len.min(len);
    }

    /// Positions between columns in `vt[l]`: the capacity padded to 64,
    /// unless the layer had to grow past it.
    fn vt_stride(&self, l: usize) -> usize {
        match self.vt[l].len() / self.kv_dim.max(1) {
            0 => self.capacity.max(1).div_ceil(VALUE_PAD) * VALUE_PAD,
            s => s,
        }
    }

    /// Layer `l`'s values as rows, positions 0..p kept and `rows` (t rows of
    /// kv_dim) appended at p.
    fn put_v_rows(&mut self, l: usize, p: usize, rows: &[f32]) {
        let kvd = self.kv_dim;
        if self.vt_len[l] > 0 {
            // Last written transposed: rows back from the columns.
            let (stride, n) = (self.vt_stride(l), self.vt_len[l].min(p));
            let vt = &self.vt[l];
            self.v[l] = (0..n * kvd).map(|i| vt[(i % kvd) * stride + i / kvd]).collect();
            self.vt[l] = Vec::new();
            self.vt_len[l] = 0;
        }
        self.v[l].truncate(p * kvd);
        // The whole capacity at once: growing by doubling would copy the
        // layer and hold both copies for a moment.
        let want = self.capacity.max(p + rows.len() / kvd.max(1)) * kvd;
        let have = self.v[l].len();
        self.v[l].reserve_exact(want.saturating_sub(have));
        self.v[l].extend_from_slice(rows);
    }

    /// Layer `l`'s values transposed ([kv_dim][stride], zeros past the
    /// last position), positions 0..p kept and `rows` appended at p.
    fn put_v_columns(&mut self, l: usize, p: usize, rows: &[f32]) {
        let kvd = self.kv_dim;
        let t = rows.len() / kvd;
        if self.vt[l].is_empty() {
            self.vt[l] = vec![0f32; kvd * self.vt_stride(l)];
            self.vt_len[l] = 0;
        }
        if p + t > self.vt_stride(l) {
            // More positions than the cache was made for: a wider layout.
            let old = self.vt_stride(l);
            let stride = (p + t).div_ceil(VALUE_PAD) * VALUE_PAD;
            let mut wide = vec![0f32; kvd * stride];
            for (e, col) in self.vt[l].chunks_exact(old).enumerate() {
                wide[e * stride..e * stride + self.vt_len[l]].copy_from_slice(&col[..self.vt_len[l]]);
            }
            self.vt[l] = wide;
        }
        let stride = self.vt_stride(l);
        if !self.v[l].is_empty() {
            // Last written as rows: columns from the rows.
            let n = (self.v[l].len() / kvd).min(p);
            for (j, row) in self.v[l].chunks_exact(kvd).take(n).enumerate() {
                for (e, v) in row.iter().enumerate() {
                    self.vt[l][e * stride + j] = *v;
                }
            }
            self.vt_len[l] = n;
            self.v[l].clear();
        }
        let vt = &mut self.vt[l];
        // Positions dropped since (p..old end) go back to zeros.
        let end = self.vt_len[l].max(p + t);
        for (e, col) in vt.chunks_exact_mut(stride).enumerate() {
            for (j, row) in rows.chunks_exact(kvd).enumerate() {
                col[p + j] = row[e];
            }
            col[p + t..end].fill(0.0);
        }
        self.vt_len[l] = p + t;
    }
}

impl KvCache {
    /// Keeps this step's keys and values (rows of kv_dim, positions p ..)
    /// for layer `l`, values in `layout`, dropping whatever followed p.
    pub fn store(&mut self, l: usize, p: usize, keys: &[f32], values: &[f32], layout: ValueLayout) {
        self.k[l].truncate(p * self.kv_dim);
        self.k[l].extend_from_slice(keys);
        match layout {
            ValueLayout::Rows => self.put_v_rows(l, p, values),
            ValueLayout::Columns => self.put_v_columns(l, p, values),
        }
    }

    /// Layer `l`'s keys, [positions, kv_dim].
    pub fn keys(&self, l: usize) -> &[f32] {
        &self.k[l]
    }

    /// Layer `l`'s values in the layout they were last stored in.
    pub fn values(&self, l: usize) -> Values<'_> {
        if self.vt_len[l] > 0 {
            Values::Columns { data: &self.vt[l], stride: self.vt_stride(l) }
        } else {
            Values::Rows(&self.v[l])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    #[test]
    fn the_v_cache_holds_the_same_values_in_either_layout() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/llama/llama-q8_0.gguf");
        let m = Model::load(&path).unwrap();
        let kvd = m.cfg.kv_dim();
        let rows = |n: usize, seed: f32| -> Vec<f32> { (0..n * kvd).map(|i| (i as f32 * 0.37 + seed).sin()).collect() };
        let (a, b, d) = (rows(3, 0.0), rows(2, 1.0), rows(70, 2.0));
        let columns = |c: &KvCache, n: usize| -> Vec<f32> {
            let stride = c.vt_stride(0);
            (0..n * kvd).map(|i| c.vt[0][(i % kvd) * stride + i / kvd]).collect()
        };
        let zeros_past =
            |c: &KvCache, n: usize| c.vt[0].chunks(c.vt_stride(0)).all(|col| col[n..].iter().all(|v| *v == 0.0));
        let mut c = KvCache::new(&m.cfg, 5);
        // Rows (exact), then columns (fast): converted, then appended.
        c.put_v_rows(0, 0, &a);
        c.put_v_columns(0, 3, &b);
        let ab: Vec<f32> = a.iter().chain(&b).copied().collect();
        assert_eq!(columns(&c, 5), ab);
        assert!(zeros_past(&c, 5) && c.v[0].is_empty());
        // Rewriting from position 2 drops what followed: zeros again.
        c.put_v_columns(0, 2, &b[..kvd]);
        assert_eq!(columns(&c, 3), [&ab[..2 * kvd], &b[..kvd]].concat());
        assert!(zeros_past(&c, 3));
        // Back to rows, and to columns again: nothing of the first columns
        // is left past the new end.
        c.put_v_rows(0, 3, &a[..kvd]);
        assert_eq!(c.v[0], [&ab[..2 * kvd], &b[..kvd], &a[..kvd]].concat());
        c.put_v_columns(0, 1, &b[kvd..]);
        assert_eq!(columns(&c, 2), [&ab[..kvd], &b[kvd..]].concat());
        assert!(zeros_past(&c, 2));
        // More positions than the capacity: a wider layout.
        c.put_v_columns(0, 0, &d);
        assert!(c.vt_stride(0) >= 70);
        assert_eq!(columns(&c, 70), d);
        assert!(zeros_past(&c, 70));
    }
}
