//! The key/value cache of a decoder: per layer, the keys and values of every
//! position seen so far, in the layout the precision's attention reads
//! ([`ValueLayout`]).

use plumb_kernels::attention::{ValueLayout, Values, VALUE_PAD};
use plumb_kernels::flash::KvRows;
use plumb_kernels::flash::{fwht, Rotation};
use plumb_kernels::ops::RopeSpan;
use plumb_quant::blocks::{f16_bits_slice, round_f16_slice};
use plumb_quant::GgmlType;

use crate::config::{KvType, ModelConfig};

/// The key/value cache: per layer, rows of [Hkv·hd] for each position.
/// Values are kept in the layout the precision reads: rows (`v`, exact) or
/// transposed (`vt`, fast: [Hkv·hd][positions], as llama.cpp keeps its V
/// cache, so a decoding step appends one column instead of transposing the
/// whole cache). A layer holds one layout at a time and is converted if the
/// other precision reads it.
///
/// A windowed cache ([`KvCache::windowed`]) keeps of each sliding-window
/// layer only what a query from `len` on can still see: as a step is
/// stored, positions before the window of its first token are dropped, in
/// whole multiples of 64 (so the fast attention's lanes and padding fall
/// where they would over the whole cache, and every sum is the same), once
/// at least [`FORGET_STEP`] of them can go. Its layers then hold positions
/// `first(l) ..`; it cannot be truncated back past a window.
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    vt: Vec<Vec<f32>>,
    /// Positions held in `vt[l]`.
    vt_len: Vec<usize>,
    /// Per layer: the first position held, and the window it keeps (None:
    /// every position).
    first: Vec<usize>,
    window: Vec<Option<usize>>,
    pub len: usize,
    pub capacity: usize,
    /// One past the last position of the step under way, and its rows
    /// ([`KvCache::begin_step`]).
    step_end: usize,
    step_rows: usize,
    /// What keys and what values go through as they are stored: f16
    /// rounding, or a block format (whose key blocks `kq` keeps).
    k_kind: KvType,
    v_kind: KvType,
    /// Per layer, a quantized cache's key blocks: one row of kv_dim
    /// elements per position held, as in `k`.
    kq: Vec<Vec<u8>>,
    /// The rows of the Walsh-Hadamard rotation quantized keys and
    /// quantized values go through before quantizing ([`Rotation`]).
    rot_k: Option<usize>,
    rot_v: Option<usize>,
    /// llama.cpp's cells of its sliding-window cache, where it keeps only
    /// a window and a ubatch of them ([`SwaRing`]).
    ring: Option<SwaRing>,
    kv_dim: usize,
    /// Under flash attention f16 keys and values are kept as f16 bits
    /// (`k16`, `v16`: rows of kv_dim per position held), two bytes an
    /// element as llama.cpp's; `k` (or `v`) then stays empty.
    k_half: bool,
    v_half: bool,
    k16: Vec<Vec<u16>>,
    v16: Vec<Vec<u16>>,
}

/// The cells of llama.cpp's sliding-window KV cache when it is not
/// full-size (`swa_full = false`, llama-completion's default): as many
/// cells as the window and a ubatch hold (padded to 256), taken by each
/// ubatch's positions as llama.cpp's slot search takes them — from the
/// head on, any cell empty or holding a position the window has left
/// behind, wrapping around — so that once a sequence outgrows it the
/// cells no longer follow the positions' order. Attention goes over the
/// cells in cell order, and its sums follow that order.
#[derive(Debug, Clone)]
pub struct SwaRing {
    /// The position each cell holds.
    cells: Vec<Option<usize>>,
    head: usize,
    window: usize,
}

impl SwaRing {
    pub fn new(size: usize, window: usize) -> SwaRing {
        SwaRing { cells: vec![None; size], head: 0, window }
    }

    /// The cells `n` new positions from `p0` on take (llama.cpp's
    /// `find_slot` then `apply_ubatch`). None when no cells are free.
    fn take(&mut self, p0: usize, n: usize) -> Option<Vec<usize>> {
        let size = self.cells.len();
        let used = self.cells.iter().flatten().count();
        let next = self.cells.iter().flatten().max().map_or(0, |m| m + 1);
        let free = |c: &Option<usize>| c.is_none_or(|p| next - p >= self.window);
        let mut head = if self.head > used + 2 * n { 0 } else { self.head };
        let (mut idxs, mut tested) = (Vec::with_capacity(n), 0);
        while idxs.len() < n {
            if head >= size {
                tested += size - head;
                head = 0;
                continue;
            }
            if free(&self.cells[head]) {
                idxs.push(head);
            }
            head += 1;
            tested += 1;
            if idxs.len() < n && tested >= size {
                return None;
            }
        }
        // Overwritten cells' positions, and every position before them,
        // leave (llama.cpp keeps each sequence's positions contiguous).
        let gone = idxs.iter().filter_map(|&i| self.cells[i]).max();
        for (k, &i) in idxs.iter().enumerate() {
            self.cells[i] = Some(p0 + k);
        }
        if let Some(g) = gone {
            self.cells.iter_mut().filter(|c| c.is_some_and(|p| p <= g && p < p0)).for_each(|c| *c = None);
        }
        self.head = idxs.last().map_or(self.head, |&i| i + 1);
        Some(idxs)
    }

    /// Drops every position from `len` on (llama.cpp's `seq_rm`).
    fn truncate(&mut self, len: usize) {
        let mut first_freed = None;
        for (i, c) in self.cells.iter_mut().enumerate() {
            if c.is_some_and(|p| p >= len) {
                *c = None;
                first_freed.get_or_insert(i);
            }
        }
        if let Some(i) = first_freed {
            self.head = self.head.min(i);
        }
    }

    /// The cells attention goes over (llama.cpp's n_kv: those up to the
    /// last used, padded to 256, at least 256) and the position each holds.
    pub fn view(&self) -> &[Option<usize>] {
        let used = self.cells.iter().rposition(|c| c.is_some()).map_or(0, |i| i + 1);
        let n = self.cells.len().min(used.div_ceil(256).max(1) * 256);
        &self.cells[..n]
    }
}

/// Positions a windowed layer lets go of at once, at least.
pub const FORGET_STEP: usize = 256;

/// Positions a layer is made for: the capacity, or for a layer keeping a
/// window, its window, what it may hold before letting go, and a batch of a
/// prompt (a longer step grows it).
fn room(window: Option<usize>, capacity: usize) -> usize {
    window.map_or(capacity, |w| capacity.min((w + FORGET_STEP + crate::model::BATCH).div_ceil(VALUE_PAD) * VALUE_PAD))
}

/// Bytes one layer takes holding `positions` (the transposed layout's
/// positions padded to a multiple of 64).
fn layer_bytes(cfg: &ModelConfig, positions: usize) -> u64 {
    let (n, kvd) = (positions as u64, cfg.kv_dim() as u64);
    let keys = if half(cfg, cfg.kv_type.k) {
        n * kvd * 2
    } else {
        n * kvd * 4 + key_row_bytes(cfg.kv_type.k, cfg.kv_dim()) as u64 * n
    };
    let values = if half(cfg, cfg.kv_type.v) {
        n * kvd * 2
    } else {
        (n + positions.div_ceil(VALUE_PAD) as u64 * VALUE_PAD as u64) * kvd * 4
    };
    keys + values
}

/// Whether the cache keeps keys (or values) of type `t` as f16 bits: f16
/// ones (or f32, which flash attention reads as f16) under flash attention.
fn half(cfg: &ModelConfig, t: KvType) -> bool {
    cfg.flash_attn && matches!(t, KvType::F16 | KvType::F32)
}

/// Bytes of one position's key blocks in a quantized cache (0 otherwise).
fn key_row_bytes(kind: KvType, kv_dim: usize) -> usize {
    kind.block_type().map_or(0, |ty| ty.bytes_for(kv_dim as u64).unwrap_or(0) as usize)
}

/// x as a block format stores it and gives it back: the blocks appended to
/// `blocks` (where given), x overwritten by their values. llama.cpp
/// quantizes its cache with its CPU `from_float`: the SIMD Q8_0 of its
/// activations, the reference Q4_0.
fn quantize_rows(ty: GgmlType, x: &mut [f32], blocks: Option<&mut Vec<u8>>) {
    let mut bytes = Vec::with_capacity(ty.bytes_for(x.len() as u64).unwrap_or(0) as usize);
    for chunk in x.chunks_exact(32) {
        match ty {
            GgmlType::Q8_0 => {
                bytes.extend_from_slice(bytemuck::bytes_of(&plumb_quant::quantize::quantize_q8_0_act(chunk)))
            }
            GgmlType::Q4_0 => bytes.extend_from_slice(bytemuck::bytes_of(&plumb_quant::quantize::quantize_q4_0(chunk))),
            _ => unreachable!("a KV cache's block formats are Q8_0 and Q4_0"),
        }
    }
    plumb_quant::dequant::dequantize(ty, &bytes, x).expect("whole blocks");
    if let Some(b) = blocks {
        b.extend_from_slice(&bytes);
    }
}

/// Rows of f16 bits (flash attention reads them so) from element `at` on:
/// `src` rounded, dropping what followed, room for `want` elements made at
/// once.
fn put_half(dst: &mut Vec<u16>, at: usize, want: usize, src: &[f32]) {
    dst.truncate(at);
    dst.reserve_exact(want.saturating_sub(dst.len()));
    dst.extend(f16_bits_slice(src));
}

/// What keys or values of type `t` go through: f32 under flash attention
/// is read as f16 (llama.cpp casts it).
fn read_as(cfg: &ModelConfig, t: KvType) -> KvType {
    if cfg.flash_attn && t == KvType::F32 {
        KvType::F16
    } else {
        t
    }
}

/// Each layer's window, where a windowed cache keeps only that.
fn windows(cfg: &ModelConfig) -> Vec<Option<usize>> {
    cfg.layer_sliding.iter().map(|&s| if s { cfg.sliding_window } else { None }).collect()
}

impl KvCache {
    /// A cache that keeps every position of every layer.
    pub fn new(cfg: &ModelConfig, capacity: usize) -> KvCache {
        Self::with_windows(cfg, capacity, vec![None; cfg.n_layer])
    }

    /// A cache whose sliding-window layers keep only their window.
    pub fn windowed(cfg: &ModelConfig, capacity: usize) -> KvCache {
        Self::with_windows(cfg, capacity, windows(cfg))
    }

    fn with_windows(cfg: &ModelConfig, capacity: usize, window: Vec<Option<usize>>) -> KvCache {
        let kv_dim = cfg.kv_dim();
        KvCache {
            k: window.iter().map(|&w| Vec::with_capacity(room(w, capacity) * kv_dim)).collect(),
            v: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            vt: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            vt_len: vec![0; cfg.n_layer],
            first: vec![0; cfg.n_layer],
            window,
            len: 0,
            capacity,
            step_end: 0,
            step_rows: 0,
            // Flash attention reads an f32 cache as f16 (llama.cpp casts it).
            k_kind: read_as(cfg, cfg.kv_type.k),
            v_kind: read_as(cfg, cfg.kv_type.v),
            kq: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            // llama.cpp rotates quantized keys and quantized values, each
            // by its own type.
            rot_k: cfg.kv_type.k.block_type().and_then(|_| Rotation::for_head(cfg.head_dim)).map(|r| r.k),
            rot_v: cfg.kv_type.v.block_type().and_then(|_| Rotation::for_head(cfg.head_dim)).map(|r| r.v),
            // llama.cpp's cells: the window and a ubatch, padded to 256,
            // at most its context (here the capacity, padded as it pads).
            ring: match (cfg.swa_ring_ubatch, cfg.sliding_window) {
                (Some(ub), Some(w)) if cfg.layer_sliding.iter().any(|&s| s) => {
                    let ctx = capacity.div_ceil(256).max(1) * 256;
                    Some(SwaRing::new(ctx.min(w + ub).div_ceil(256) * 256, w))
                }
                _ => None,
            },
            kv_dim,
            k_half: half(cfg, cfg.kv_type.k),
            v_half: half(cfg, cfg.kv_type.v),
            k16: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            v16: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
        }
    }

    /// Bytes the cache takes when full.
    pub fn bytes_for(cfg: &ModelConfig, capacity: usize) -> u64 {
        cfg.n_layer as u64 * layer_bytes(cfg, capacity)
    }

    /// Bytes a windowed cache takes when full, its steps no longer than a
    /// batch of a prompt.
    pub fn bytes_for_windowed(cfg: &ModelConfig, capacity: usize) -> u64 {
        windows(cfg).into_iter().map(|w| layer_bytes(cfg, room(w, capacity))).sum()
    }

    /// The first position layer `l` holds: its keys and values start there.
    pub fn first(&self, l: usize) -> usize {
        self.first[l]
    }

    /// Marks the start of a forward step of `t` positions from `len`: the
    /// step a rotary embedding sees as a whole, even when its rows go
    /// through the layers a batch at a time.
    pub fn begin_step(&mut self, t: usize) {
        self.step_end = self.len + t;
        self.step_rows = t;
        if let Some(r) = &mut self.ring {
            r.truncate(self.len);
            assert!(r.take(self.len, t).is_some(), "a step of {t} positions does not fit the sliding-window cells");
        }
    }

    /// The sliding-window cells, where the cache mirrors llama.cpp's
    /// window-sized one ([`SwaRing`]).
    pub fn swa_ring(&self) -> Option<&SwaRing> {
        self.ring.as_ref()
    }

    /// Rows of the step under way (llama.cpp's ubatch), however many of
    /// them a call computes.
    pub fn step_rows(&self) -> usize {
        self.step_rows
    }

    /// One past the last position of the step under way.
    pub fn step_end(&self) -> usize {
        self.step_end
    }

    /// The sequence as the rotary embedding of rows at positions
    /// `p0 .. p0 + t` sees it: the step's end (at least theirs) and the
    /// cache's size ([`RopeSpan`]).
    pub fn rope_span(&self, p0: usize, t: usize) -> RopeSpan {
        RopeSpan { end: self.step_end.max(p0 + t), ctx: self.capacity }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.step_end = self.step_end.min(len);
        for l in 0..self.k.len() {
            if len == 0 {
                self.first[l] = 0;
            }
            assert!(
                self.window[l].is_none_or(|w| (len + 1).saturating_sub(w) >= self.first[l]),
                "layer {l} keeps positions {} on only: it cannot go back to {len}",
                self.first[l]
            );
            let held = len - self.first[l];
            self.k[l].truncate(held * self.kv_dim);
            self.kq[l].truncate(held * key_row_bytes(self.k_kind, self.kv_dim));
            self.v[l].truncate(held * self.kv_dim);
            self.k16[l].truncate(held * self.kv_dim);
            self.v16[l].truncate(held * self.kv_dim);
            self.vt_len[l] = self.vt_len[l].min(held);
        }
        self.len = self.len.min(len);
    }

    /// A windowed layer lets go of the positions no query from `len` on
    /// can see, in multiples of 64, once there are [`FORGET_STEP`] of them.
    fn forget(&mut self, l: usize) {
        let Some(w) = self.window[l] else { return };
        let keep_from = (self.len + 1).saturating_sub(w) / VALUE_PAD * VALUE_PAD;
        if keep_from < self.first[l] + FORGET_STEP {
            return;
        }
        let kvd = self.kv_dim;
        let held = if self.k_half { self.k16[l].len() } else { self.k[l].len() };
        let n = (keep_from - self.first[l]).min(held / kvd.max(1));
        let cut = |len: usize| (n * kvd).min(len);
        let (k, k16, v16) = (cut(self.k[l].len()), cut(self.k16[l].len()), cut(self.v16[l].len()));
        self.k[l].drain(..k);
        self.k16[l].drain(..k16);
        self.v16[l].drain(..v16);
        let kq = (n * key_row_bytes(self.k_kind, kvd)).min(self.kq[l].len());
        self.kq[l].drain(..kq);
        let rows = (n * kvd).min(self.v[l].len());
        self.v[l].drain(..rows);
        if self.vt_len[l] > 0 {
            let (stride, held) = (self.vt_stride(l), self.vt_len[l]);
            let gone = n.min(held);
            for col in self.vt[l].chunks_exact_mut(stride) {
                col.copy_within(gone..held, 0);
                col[held - gone..held].fill(0.0);
            }
            self.vt_len[l] = held - gone;
        }
        self.first[l] += n;
    }

    /// Positions between columns in `vt[l]`: the capacity padded to 64,
    /// unless the layer had to grow past it.
    fn vt_stride(&self, l: usize) -> usize {
        match self.vt[l].len() / self.kv_dim.max(1) {
            0 => room(self.window[l], self.capacity).max(1).div_ceil(VALUE_PAD) * VALUE_PAD,
            s => s,
        }
    }

    /// Layer `l`'s values as rows, positions 0..p kept and `rows` (t rows of
    /// kv_dim) appended at p (positions counted from `first(l)`).
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
        let want = room(self.window[l], self.capacity).max(p + rows.len() / kvd.max(1)) * kvd;
        let have = self.v[l].len();
        self.v[l].reserve_exact(want.saturating_sub(have));
        self.v[l].extend_from_slice(rows);
    }

    /// Layer `l`'s values transposed ([kv_dim][stride], zeros past the
    /// last position), positions 0..p kept and `rows` appended at p
    /// (counted from `first(l)`).
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
    /// for layer `l`, values in `layout`, dropping whatever followed p (and,
    /// in a windowed layer, what no query from `len` on can see).
    pub fn store(&mut self, l: usize, p: usize, keys: &[f32], values: &[f32], layout: ValueLayout) {
        self.forget(l);
        assert!(p >= self.first[l], "layer {l} keeps positions {} on only: cannot store at {p}", self.first[l]);
        let at = p - self.first[l];
        let kvd = self.kv_dim;
        // The whole capacity at once for f16 bits, as for the f32 rows.
        let want = room(self.window[l], self.capacity).max(at + keys.len() / kvd.max(1)) * kvd;
        if self.k_half {
            put_half(&mut self.k16[l], at * kvd, want, keys);
        } else {
            self.k[l].truncate(at * kvd);
            match self.k_kind {
                KvType::F32 => self.k[l].extend_from_slice(keys),
                KvType::F16 => self.k[l].extend(round_f16_slice(keys)),
                KvType::Q8_0 | KvType::Q4_0 => {
                    let ty = self.k_kind.block_type().expect("a block format");
                    let mut k = keys.to_vec();
                    if let Some(n) = self.rot_k {
                        fwht(&mut k, n);
                    }
                    self.kq[l].truncate(at * key_row_bytes(self.k_kind, kvd));
                    quantize_rows(ty, &mut k, Some(&mut self.kq[l]));
                    self.k[l].extend_from_slice(&k);
                }
            }
        }
        if self.v_half {
            put_half(&mut self.v16[l], at * kvd, want, values);
            return;
        }
        let rounded: Vec<f32>;
        let values = match self.v_kind {
            KvType::F32 => values,
            KvType::F16 => {
                rounded = round_f16_slice(values);
                rounded.as_slice()
            }
            KvType::Q8_0 | KvType::Q4_0 => {
                let ty = self.v_kind.block_type().expect("a block format");
                let mut v = values.to_vec();
                if let Some(n) = self.rot_v {
                    fwht(&mut v, n);
                }
                quantize_rows(ty, &mut v, None);
                rounded = v;
                rounded.as_slice()
            }
        };
        match layout {
            ValueLayout::Rows => self.put_v_rows(l, at, values),
            ValueLayout::Columns => self.put_v_columns(l, at, values),
        }
    }

    /// Layer `l`'s keys, [positions, kv_dim], from position `first(l)`.
    /// Not for a cache of f16 bits ([`KvCache::flash_rows`]).
    pub fn keys(&self, l: usize) -> &[f32] {
        assert!(!self.k_half, "a flash attention cache holds f16 bits: read it with flash_rows");
        &self.k[l]
    }

    /// Layer `l`'s keys and values as flash attention reads them, rows of
    /// [positions, kv_dim] from position `first(l)`: f16 bits, or f32 (a
    /// block format's values, with its key blocks in [`KvCache::key_blocks`]).
    pub fn flash_rows(&self, l: usize) -> (KvRows<'_>, KvRows<'_>) {
        let keys = if self.k_half { KvRows::F16(&self.k16[l]) } else { KvRows::F32(&self.k[l]) };
        if self.v_half {
            return (keys, KvRows::F16(&self.v16[l]));
        }
        let Values::Rows(values) = self.values(l) else { panic!("flash attention reads values as rows") };
        (keys, KvRows::F32(values))
    }

    /// The rows of the Walsh-Hadamard rotation quantized keys and quantized
    /// values are stored under (heads of a multiple of 64), as llama.cpp's
    /// are ([`Rotation`]): (keys', values').
    pub fn rotations(&self) -> (Option<usize>, Option<usize>) {
        (self.rot_k, self.rot_v)
    }

    /// Whether the values are kept in a block format (as their blocks give
    /// them back).
    pub fn values_in_blocks(&self) -> bool {
        self.v_kind.block_type().is_some()
    }

    /// A quantized cache's key blocks for layer `l` (one row of kv_dim per
    /// position, from `first(l)`) and their format.
    pub fn key_blocks(&self, l: usize) -> Option<(GgmlType, &[u8])> {
        self.k_kind.block_type().map(|ty| (ty, self.kq[l].as_slice()))
    }

    /// Layer `l`'s values in the layout they were last stored in, from
    /// position `first(l)`.
    pub fn values(&self, l: usize) -> Values<'_> {
        assert!(!self.v_half, "a flash attention cache holds f16 bits: read it with flash_rows");
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

    /// llama.cpp's window-sized cells: 1024 for a window of 512 and
    /// ubatches of 512. The third ubatch wraps into the cells the window
    /// has left (the first 512), the fourth takes the rest, and a token
    /// after them goes to cell 0 again: attention then meets positions out
    /// of order.
    #[test]
    fn the_window_sized_cells_are_taken_as_llama_cpp_takes_them() {
        let mut r = SwaRing::new(1024, 512);
        for step in 0..4 {
            assert_eq!(r.take(512 * step, 512), Some((0..512).map(|i| (512 * step + i) % 1024).collect()));
        }
        let pos = |r: &SwaRing, c: usize| r.view()[c];
        assert_eq!(
            (pos(&r, 0), pos(&r, 511), pos(&r, 512), pos(&r, 1023)),
            (Some(1024), Some(1535), Some(1536), Some(2047))
        );
        assert_eq!(r.take(2048, 1), Some(vec![0]));
        assert_eq!(r.take(2049, 1), Some(vec![1]));
        assert_eq!(r.view().len(), 1024);
        // Short of the ring, cells follow positions, and the view is 256 at least.
        let mut r = SwaRing::new(1024, 512);
        assert_eq!(r.take(0, 300), Some((0..300).collect()));
        assert_eq!(r.view().len(), 512);
        r.truncate(100);
        assert_eq!(r.take(100, 1), Some(vec![100]));
        assert_eq!(r.view().len(), 256);
    }

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

    /// An f16 cache keeps each key and value rounded to the nearest f16
    /// (ties to even), in either value layout; an f32 one keeps them as
    /// given.
    #[test]
    fn an_f16_cache_keeps_keys_and_values_rounded_to_f16() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/llama/llama-q8_0.gguf");
        let mut m = Model::load(&path).unwrap();
        let kvd = m.cfg.kv_dim();
        // 1 + 2^-11 is halfway between two f16 values: it rounds to even, 1.
        let x: Vec<f32> =
            (0..2 * kvd).map(|i| if i == 0 { 1.0 + 2f32.powi(-11) } else { (i as f32 * 0.37).sin() }).collect();
        let rounded: Vec<f32> = x.iter().map(|&v| plumb_quant::blocks::round_f16(v)).collect();
        assert_eq!(rounded[0], 1.0);
        for (kv, want) in [(KvType::F32, &x), (KvType::F16, &rounded)] {
            m.cfg.kv_type = kv.into();
            for layout in [ValueLayout::Rows, ValueLayout::Columns] {
                let mut c = KvCache::new(&m.cfg, 4);
                c.store(0, 0, &x, &x, layout);
                assert_eq!(c.keys(0), &want[..], "{kv:?} keys");
                let values: Vec<f32> = match c.values(0) {
                    Values::Rows(v) => v.to_vec(),
                    Values::Columns { data, stride } => {
                        (0..2 * kvd).map(|i| data[(i % kvd) * stride + i / kvd]).collect()
                    }
                };
                assert_eq!(values, *want, "{kv:?} values, {layout:?}");
            }
        }
    }

    /// A windowed cache gives every logit of a whole one, bit for bit, in
    /// both precisions — a prompt in several batches, then tokens one at a
    /// time — while its window layers let go of old positions and the
    /// global layer keeps them all.
    #[test]
    fn a_windowed_cache_gives_the_whole_caches_logits() {
        use crate::kernels::kernels_for;
        use crate::{NoTrace, Precision};
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/gemma3/gemma3-q8_0.gguf");
        let m = Model::load(&path).unwrap();
        assert_eq!(m.cfg.layer_sliding, [true, true, false]);
        let (prompt, steps) = (1100, 300);
        let toks: Vec<u32> = (0..prompt + steps).map(|i| ((i * 7919 + 13) % m.cfg.vocab) as u32).collect();
        for precision in [Precision::Fast, Precision::Exact] {
            let k = kernels_for(precision);
            let mut whole = KvCache::new(&m.cfg, prompt + steps);
            let mut windowed = KvCache::windowed(&m.cfg, prompt + steps);
            let a = m.forward(k.as_ref(), &toks[..prompt], &mut whole, false, &mut NoTrace);
            let b = m.forward(k.as_ref(), &toks[..prompt], &mut windowed, false, &mut NoTrace);
            assert!(a == b, "{precision:?}: the prompt's logits");
            assert!(windowed.first(0) > 0, "{precision:?}: nothing let go");
            for (i, &t) in toks[prompt..].iter().enumerate() {
                let a = m.forward(k.as_ref(), &[t], &mut whole, false, &mut NoTrace);
                let b = m.forward(k.as_ref(), &[t], &mut windowed, false, &mut NoTrace);
                assert!(a == b, "{precision:?}: step {i}");
            }
            let held = |c: &KvCache, l: usize| c.k[l].len() / c.kv_dim;
            let window = m.cfg.sliding_window.unwrap();
            for l in 0..2 {
                assert_eq!(windowed.first(l) % VALUE_PAD, 0);
                assert!(windowed.first(l) + window <= windowed.len, "{precision:?}: layer {l} lost its window");
                assert!(
                    held(&windowed, l) < FORGET_STEP + VALUE_PAD + window,
                    "layer {l} holds {}",
                    held(&windowed, l)
                );
            }
            assert_eq!((windowed.first(2), held(&windowed, 2)), (0, prompt + steps), "the global layer keeps all");
            // Back to the start is always possible; back past a window is not.
            let back = windowed.first(0);
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| windowed.truncate(back)));
            assert!(caught.is_err(), "truncated past the window");
        }
        let mut c = KvCache::windowed(&m.cfg, 10);
        c.clear();
        assert_eq!(c.first(0), 0);
    }
}
