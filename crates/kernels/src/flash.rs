//! Flash attention as llama.cpp's CPU backend computes it (`-fa on`, and
//! what its default `-fa auto` picks on a CPU): softmax(q·kᵀ)·v one query
//! row at a time, with a running maximum and sum, never holding a row of
//! scores. Its three paths give three roundings, and llama.cpp picks one
//! by the step's shape ([`FlashPlan::path`]):
//!
//! - **one row** ([`FlashPath::OneRow`], steps of fewer than 64 query rows):
//!   position by position, the query rounded to f16, each score an f16 dot
//!   product, e^x from the C library, and the running context kept in f16
//!   (rounded after every update);
//! - **tiled** ([`FlashPath::Tiled`], steps of 64 rows or more): tiles of 64
//!   positions, the query in f32, each score one chain of fused
//!   multiply-adds, the tile's exps by the vector approximation
//!   ([`crate::mirror::exp_approx`]) summed in f64, the context in f32;
//! - **split** ([`FlashPath::Split`], one token over 512 cache cells or
//!   more): the cells cut into one chunk per thread, each chunk as the one
//!   row path, and the chunks' partial results merged in order, so the sums
//!   depend on the thread count, as llama.cpp's do.
//!
//! Keys and values are read as f16: llama.cpp casts an f32 cache to f16
//! before its flash attention, so the caller's cache holds them as f16 bits
//! ([`KvRows::F16`]; a quantized cache gives f32 values back). Values are
//! rows ([positions, Hkv·hd]), as llama.cpp keeps its V cache untransposed
//! under flash attention. How the one-row path's f16 context is updated
//! depends on the CPU llama.cpp was built for ([`F16Math`]).

use plumb_quant::blocks::round_f16;
use plumb_quant::GgmlType;
use rayon::prelude::*;

use crate::attention::AttnShape;
use crate::mirror;

/// Query rows from which llama.cpp takes the tiled path, and positions per
/// tile (its `GGML_FA_TILE_Q` and `GGML_FA_TILE_KV`).
pub const TILE_Q: usize = 64;
pub const TILE_KV: usize = 64;
/// Cache cells from which one token takes the split path.
pub const SPLIT_FROM: usize = 512;
/// llama.cpp pads its view of the cache (its `n_kv`) to this many cells.
pub const KV_PAD: usize = 256;

/// What decides the path and the chunks: llama.cpp's view of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashPlan {
    /// Query rows of the whole step (llama.cpp's ubatch), whatever part of
    /// it this call computes.
    pub step_rows: usize,
    /// Cells of llama.cpp's view of the cache at this step ([`FlashPlan::n_kv`]).
    pub n_kv: usize,
    /// Threads: the split path cuts the cells into this many chunks.
    pub threads: usize,
    /// The absolute position of the first one the caller's keys hold (a
    /// windowed cache drops older ones, in multiples of 64): tiles and
    /// chunks lie on absolute positions, as llama.cpp's cells do.
    pub first: usize,
    /// The keys are in a block format (the scores read their blocks).
    pub quantized: bool,
    /// The values are in a block format: the one-row path keeps its
    /// context in f32, adding each value as its blocks give it back. With
    /// either in a block format llama.cpp takes the one-row path at every
    /// step.
    pub values_in_blocks: bool,
    /// The rows of the Walsh-Hadamard rotation ([`Rotation`]) quantized
    /// keys went through, which the queries take too, and quantized values,
    /// by which the context is turned back.
    pub rotate_k: Option<usize>,
    pub rotate_v: Option<usize>,
    /// The one-row path's f16 context updated in f16 arithmetic, as
    /// llama.cpp built for a CPU with AVX512-FP16 updates it ([`F16Math`]).
    pub f16_math: F16Math,
}

/// How the llama.cpp build being mirrored updates the one-row path's f16
/// running context (`ggml_vec_scale_f16`, `ggml_vec_mad_f16`).
///
/// - [`F16Math::Widened`] (every build without AVX512-FP16): each element
///   widened to f32, multiplied (and added, fused) by the f32 factor, and
///   rounded back to f16.
/// - [`F16Math::Native`] (built with AVX512-FP16: `-march=native` on CPUs
///   that have it): in whole runs of 128 elements the factor is first
///   rounded to f16, and each element is one f16 operation, rounded once
///   (`_mm512_mul_ph`, `_mm512_fmadd_ph`); the elements past the last whole
///   128 as [`F16Math::Widened`]. Heads narrower than 128 are therefore
///   unchanged.
///
/// plumb computes [`F16Math::Native`] with the CPU's own f16 instructions
/// where it has them, and otherwise by an exact emulation, so any machine
/// can mirror either build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum F16Math {
    #[default]
    Widened,
    Native,
}

/// Elements llama.cpp's AVX512-FP16 build updates per step
/// (`GGML_F16_STEP`); the rest go one by one.
pub const F16_STEP: usize = 128;

impl F16Math {
    /// Whether this CPU has AVX512-FP16, so that llama.cpp built natively
    /// on it computes in f16 ([`F16Math::Native`]).
    pub fn cpu_has_native() -> bool {
        #[cfg(target_arch = "x86_64")]
        return is_x86_feature_detected!("avx512fp16");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// `widened` or `native`, as `--f16-math` and traces name it.
    pub fn name(self) -> &'static str {
        match self {
            F16Math::Widened => "widened",
            F16Math::Native => "native",
        }
    }

    /// What llama.cpp built natively on this CPU uses.
    pub fn of_this_cpu() -> F16Math {
        if F16Math::cpu_has_native() {
            F16Math::Native
        } else {
            F16Math::Widened
        }
    }
}

/// llama.cpp rotates what it stores in a quantized cache by an orthonormal
/// Walsh-Hadamard transform, so that no element of a block stands out and
/// the blocks quantize it better: keys (and so queries) in rows of the
/// largest power of two that divides the head width, values in rows of 64,
/// and the attention's context back again (H·H = I). Heads of a multiple of
/// 64 only; others are stored as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub k: usize,
    pub v: usize,
}

impl Rotation {
    pub fn for_head(hd: usize) -> Option<Rotation> {
        if hd == 0 || !hd.is_multiple_of(64) {
            return None;
        }
        Some(Rotation { k: 1 << hd.trailing_zeros(), v: 64 })
    }
}

/// Each row of n (a power of two) of x through the orthonormal fast
/// Walsh-Hadamard transform, as llama.cpp computes it: scaled by 1/√n
/// first, then butterflies of span 1, 2, 4, … (u + v, u − v).
pub fn fwht(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n), "rows of a power of two");
    let scale = 1.0 / (n as f32).sqrt();
    for row in x.chunks_exact_mut(n) {
        row.iter_mut().for_each(|v| *v *= scale);
        let mut len = 1;
        while len < n {
            for pair in row.chunks_exact_mut(2 * len) {
                let (a, b) = pair.split_at_mut(len);
                for (u, v) in a.iter_mut().zip(b) {
                    (*u, *v) = (*u + *v, *u - *v);
                }
            }
            len *= 2;
        }
    }
}

/// llama.cpp's three ways through flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashPath {
    OneRow,
    Tiled,
    Split,
}

impl FlashPlan {
    /// llama.cpp's view of a cache of `capacity` positions (its context,
    /// padded to 256) once positions up to `end` are stored: the used
    /// cells padded to 256, at least 256, at most the context.
    pub fn n_kv(capacity: usize, end: usize) -> usize {
        let ctx = capacity.div_ceil(KV_PAD) * KV_PAD;
        ctx.min(end.div_ceil(KV_PAD).max(1) * KV_PAD)
    }

    pub fn path(&self) -> FlashPath {
        if self.quantized || self.values_in_blocks {
            FlashPath::OneRow
        } else if self.step_rows >= TILE_Q {
            FlashPath::Tiled
        } else if self.step_rows == 1 && self.n_kv >= SPLIT_FROM {
            FlashPath::Split
        } else {
            FlashPath::OneRow
        }
    }
}

/// The cache as flash attention is given it.
#[derive(Clone, Copy)]
pub struct FlashCache<'a> {
    /// Keys and values, [positions, Hkv·hd] from the first position held:
    /// an f16 cache's own bits, or f32 holding what the cache's type gives
    /// back (a block format's values).
    pub keys: KvRows<'a>,
    pub values: KvRows<'a>,
    /// A quantized cache's keys as its blocks, one row of Hkv·hd per
    /// position (the scores read them; `plan.quantized` says so).
    pub key_blocks: Option<(GgmlType, &'a [u8])>,
    /// llama.cpp's cells where they do not follow the positions (its
    /// window-sized sliding-window cache, [`FlashPlan::n_kv`] of them):
    /// the position each holds.
    pub cells: Option<&'a [Option<usize>]>,
}

/// Keys or values as a cache holds them: f32, or f16 bits (an f16 cache
/// under flash attention keeps its elements in two bytes, as llama.cpp's
/// does; they are widened to f32 a row or a tile at a time, as llama.cpp
/// widens them, so the sums are the same).
#[derive(Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl<'a> KvRows<'a> {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(d) => d.len(),
            KvRows::F16(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements at..at + n as f32: borrowed, or widened into `buf`.
    fn at<'b>(&self, at: usize, n: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        match *self {
            KvRows::F32(d) => &d[at..at + n],
            KvRows::F16(d) => {
                widen(&d[at..at + n], &mut buf[..n]);
                &buf[..n]
            }
        }
    }

    /// Rows `js` (None: a row of zeros), elements off..off + n of each row
    /// of `stride`, as f32: borrowed, or widened into `buf`.
    fn rows<'b>(
        &self,
        js: &[Option<usize>],
        stride: usize,
        off: usize,
        n: usize,
        buf: &'b mut Vec<f32>,
        zeros: &'b [f32],
    ) -> Vec<&'b [f32]>
    where
        'a: 'b,
    {
        match *self {
            KvRows::F32(d) => {
                js.iter().map(|j| j.map_or(zeros, |j| &d[j * stride + off..j * stride + off + n])).collect()
            }
            KvRows::F16(d) => {
                buf.resize(js.len() * n, 0.0);
                for (j, out) in js.iter().zip(buf.chunks_exact_mut(n)) {
                    match j {
                        Some(j) => widen(&d[j * stride + off..j * stride + off + n], out),
                        None => out.fill(0.0),
                    }
                }
                buf.chunks_exact(n).collect()
            }
        }
    }
}

/// f16 bits to f32 (exact; F16C eight at a time where the path has it).
pub(crate) fn widen(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: the active path has AVX2 and F16C (checked when it was
        // set or detected); the lengths are equal (asserted).
        return unsafe { f16c::widen(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(s).to_f32();
    }
}

/// ctx[i, h] = softmax(q[i, h]·kᵀ + mask)·v over the positions row i sees,
/// by the path `plan` picks. q [T, H·hd] (its rows in the cache's element
/// order), ctx [T, H·hd].
pub fn flash_attention(s: &AttnShape, plan: &FlashPlan, q: &[f32], cache: &FlashCache, ctx: &mut [f32]) {
    let FlashCache { keys, values, key_blocks, cells } = *cache;
    let (t, hd, heads) = (s.t, s.hd, s.heads);
    let (qd, kvd, group) = (heads * hd, s.kv_heads * hd, heads / s.kv_heads);
    assert!(s.kv_heads > 0 && heads.is_multiple_of(s.kv_heads), "{heads} heads over {} kv heads", s.kv_heads);
    assert!(q.len() == t * qd && ctx.len() == t * qd);
    assert!(keys.len() >= (s.p + t) * kvd && values.len() >= (s.p + t) * kvd);
    assert!(plan.first.is_multiple_of(TILE_KV), "a cache's first position lies on a tile");
    assert_eq!(plan.quantized, key_blocks.is_some(), "a quantized plan reads key blocks");
    // The graph scales the queries (gemma) or passes the scale to the op;
    // a softcap divides the op's scale.
    let (mut q, kq_scale) = if s.scale_queries {
        (std::borrow::Cow::Owned(q.iter().map(|v| v * s.scale).collect::<Vec<f32>>()), 1.0)
    } else {
        (std::borrow::Cow::Borrowed(q), s.scale)
    };
    if let Some(n) = plan.rotate_k {
        fwht(q.to_mut(), n);
    }
    let scale = s.softcap.map_or(kq_scale, |cap| kq_scale / cap);
    let score = Score { scale, cap: s.softcap };
    let kv = Kv { keys, values, kvd };
    let visible = |i: usize| s.first_visible(i)..s.p + i + 1;
    // Cells in llama.cpp's order, where it is not the positions' (its
    // window-sized sliding-window cache): each the index, among the keys
    // held, of the position it holds.
    let order: Option<Vec<Option<usize>>> =
        cells.map(|c| c.iter().map(|p| p.and_then(|p| p.checked_sub(plan.first))).collect());
    // Row i's keys in the order attention takes them, among cells a..b.
    let seen_in = |o: &[Option<usize>], cells: std::ops::Range<usize>, i: usize| -> Vec<usize> {
        let v = visible(i);
        o[cells.start.min(o.len())..cells.end.min(o.len())]
            .iter()
            .flatten()
            .copied()
            .filter(|j| v.contains(j))
            .collect()
    };
    match plan.path() {
        FlashPath::Tiled => {
            // Tasks of up to 64 tokens of the query heads that share a key
            // head, a token's heads side by side: each tile of keys is
            // transposed, and each of values read, once for all of them.
            // Each row's sums are its own, so the grouping moves no bit.
            let mut rows: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(t * heads);
            for (i, row) in ctx.chunks_exact_mut(hd).enumerate() {
                rows.push((i / heads, i % heads, row));
            }
            rows.sort_by_key(|&(i, h, _)| (h / group, i, h));
            let mut tasks: Vec<Vec<(usize, usize, &mut [f32])>> = Vec::new();
            for r in rows {
                match tasks.last_mut() {
                    Some(task) if task.len() < TILE_Q * group && task[0].1 / group == r.1 / group => task.push(r),
                    _ => tasks.push(vec![r]),
                }
            }
            tasks.into_par_iter().for_each(|mut task| {
                let h = task[0].1;
                let off = h / group * hd;
                let qs: Vec<&[f32]> =
                    task.iter().map(|&(i, h, _)| &q[i * qd + h * hd..i * qd + (h + 1) * hd]).collect();
                let spans: Vec<_> = task.iter().map(|&(i, _, _)| visible(i)).collect();
                let mut outs: Vec<&mut [f32]> = task.iter_mut().map(|(_, _, o)| &mut **o).collect();
                match &order {
                    Some(o) => tiled_cells(&qs, &spans, o, &kv, off, score, &mut outs),
                    None => tiled(&qs, &spans, &kv, off, score, &mut outs),
                }
            });
        }
        FlashPath::OneRow => {
            // The scores by the keys' type (the query as llama.cpp converts
            // it for their dot product: Q8_0 blocks, or f16), the context by
            // the values' (f32 for values in blocks, else f16).
            let blocks = key_blocks.map(|(ty, data)| Blocks::new(ty, data, kvd, hd));
            let sum = if plan.values_in_blocks { Context::F32 } else { Context::F16(plan.f16_math) };
            ctx.par_chunks_exact_mut(hd).enumerate().for_each(|(r, out)| {
                let (i, h) = (r / heads, r % heads);
                let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                let (qb, q16): (Vec<u8>, Vec<f32>) = match &blocks {
                    Some(_) => (Blocks::query(qi), Vec::new()),
                    None => (Vec::new(), qi.iter().map(|&v| round_f16(v)).collect()),
                };
                let keys = match &blocks {
                    Some(b) => RowKeys::Blocks { qb: &qb, keys: b },
                    None => RowKeys::Rows { q16: &q16 },
                };
                let part = match &order {
                    Some(o) => one_row_with(keys, &kv, h / group, seen_in(o, 0..o.len(), i), score, sum),
                    None => one_row_with(keys, &kv, h / group, visible(i), score, sum),
                };
                part.finish(out);
            });
        }
        FlashPath::Split => {
            assert_eq!(t, 1, "the split path is one token's");
            let chunk = plan.n_kv.div_ceil(plan.threads.max(1));
            let seen = visible(0);
            ctx.par_chunks_exact_mut(hd).enumerate().for_each(|(h, out)| {
                let q16: Vec<f32> = q[h * hd..(h + 1) * hd].iter().map(|&v| round_f16(v)).collect();
                let (keys, sum) = (RowKeys::Rows { q16: &q16 }, Context::F16(plan.f16_math));
                let mut merged = Partial::empty(hd);
                for c in 0..plan.threads.max(1) {
                    let (a, b) = (c * chunk, ((c + 1) * chunk).min(plan.n_kv));
                    if let Some(o) = &order {
                        let js = seen_in(o, a..b, 0);
                        if !js.is_empty() {
                            merged.merge(&one_row_with(keys, &kv, h / group, js, score, sum));
                        }
                        continue;
                    }
                    // Chunk c's cells, as positions from the first held.
                    let (a, b) =
                        (a.saturating_sub(plan.first).max(seen.start), b.saturating_sub(plan.first).min(seen.end));
                    if a >= b {
                        continue;
                    }
                    merged.merge(&one_row_with(keys, &kv, h / group, a..b, score, sum));
                }
                merged.finish(out);
            });
        }
    }
    if let Some(n) = plan.rotate_v {
        fwht(ctx, n);
    }
}

/// A quantized cache's key blocks as the scores read them.
pub(crate) struct Blocks<'a> {
    data: &'a [u8],
    /// Bytes of one position's row, and of one head's part of it.
    row: usize,
    head: usize,
    dot: crate::dot::DotFn,
    hd: usize,
}

impl<'a> Blocks<'a> {
    pub(crate) fn new(ty: GgmlType, data: &'a [u8], kvd: usize, hd: usize) -> Blocks<'a> {
        let bytes = |n: usize| ty.bytes_for(n as u64).expect("whole blocks") as usize;
        assert!(hd.is_multiple_of(32), "a block-format cache needs heads of whole blocks");
        let dot = crate::fast::dot_for(ty, crate::active_path());
        Blocks { data, row: bytes(kvd), head: bytes(hd), dot, hd }
    }

    /// A query row as llama.cpp quantizes it for these keys' dot product
    /// (Q8_0, as its CPU quantizes activations).
    pub(crate) fn query(q: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; GgmlType::Q8_0.bytes_for(q.len() as u64).expect("whole blocks") as usize];
        crate::fast::quantize_row(q, &mut out, GgmlType::Q8_0);
        out
    }

    /// Position j's key of kv head g · the quantized query.
    pub(crate) fn score(&self, j: usize, g: usize, qb: &[u8]) -> f32 {
        let at = j * self.row + g * self.head;
        (self.dot)(self.hd, &self.data[at..at + self.head], qb)
    }
}

/// The cache as flash attention reads it.
struct Kv<'a> {
    keys: KvRows<'a>,
    values: KvRows<'a>,
    kvd: usize,
}

impl<'a> Kv<'a> {
    /// Position j's value, elements off..off + hd, as f32 (widened into
    /// `buf` where the cache holds f16).
    fn value<'b>(&self, j: usize, off: usize, hd: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        self.values.at(j * self.kvd + off, hd, buf)
    }
}

/// How a score is made from q·k: times the op's scale, then the softcap.
#[derive(Debug, Clone, Copy)]
struct Score {
    scale: f32,
    cap: Option<f32>,
}

impl Score {
    #[inline]
    fn of(self, dot: f32) -> f32 {
        let s = dot * self.scale;
        match self.cap {
            Some(cap) => cap * s.tanh(),
            None => s,
        }
    }
}

/// A row's running maximum, sum and (unnormalized) context.
struct Partial {
    max: f32,
    sum: f32,
    acc: Vec<f32>,
}

impl Partial {
    fn empty(hd: usize) -> Partial {
        Partial { max: f32::NEG_INFINITY, sum: 0.0, acc: vec![0.0; hd] }
    }

    /// Another chunk's partial merged in, as llama.cpp's reduction of the
    /// split path does: both rescaled to the larger maximum.
    fn merge(&mut self, other: &Partial) {
        if other.sum == 0.0 {
            return;
        }
        let max = self.max.max(other.max);
        let (old, new) = ((self.max - max).exp(), (other.max - max).exp());
        for (a, &b) in self.acc.iter_mut().zip(&other.acc) {
            *a = a.mul_add(old, b * new);
        }
        self.sum = self.sum.mul_add(old, other.sum * new);
        self.max = max;
    }

    /// out = acc / sum (0 where nothing was seen).
    fn finish(&self, out: &mut [f32]) {
        let inv = if self.sum == 0.0 { 0.0 } else { 1.0 / self.sum };
        let n = out.len().min(self.acc.len());
        out[..n].copy_from_slice(&self.acc[..n]);
        mul_f32(&mut out[..n], inv);
    }
}

/// y = y·v, each element one f32 product (vectorized where the path has
/// AVX2; the same bits either way).
fn mul_f32(y: &mut [f32], v: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: as in `scale_widened`.
        return unsafe { f16c::mul32(y, v) };
    }
    y.iter_mut().for_each(|y| *y *= v);
}

/// How the one-row path scores a position: the query rounded to f16
/// against the keys' rows (f16, `ggml_vec_dot_f16`), or the query's Q8_0
/// blocks against the keys' blocks (their type's dot product).
#[derive(Clone, Copy)]
enum RowKeys<'a> {
    Rows { q16: &'a [f32] },
    Blocks { qb: &'a [u8], keys: &'a Blocks<'a> },
}

/// How the one-row path keeps its context: in f16 (`ggml_vec_scale_f16`,
/// `ggml_vec_mad_f16`, in the build's arithmetic) against f16 values, in
/// f32 (`ggml_vec_scale_f32`, `ggml_vec_mad_f32`) against values in
/// blocks.
#[derive(Clone, Copy)]
enum Context {
    F16(F16Math),
    F32,
}

/// llama.cpp's one-row path for kv head `g` over positions `js` (in
/// order): each score by `keys`, the context by `sum`.
fn one_row_with(
    keys: RowKeys,
    kv: &Kv,
    g: usize,
    js: impl IntoIterator<Item = usize>,
    score: Score,
    sum: Context,
) -> Partial {
    let hd = match keys {
        RowKeys::Rows { q16 } => q16.len(),
        RowKeys::Blocks { keys, .. } => keys.hd,
    };
    let off = g * hd;
    let mut p = Partial::empty(hd);
    let (mut kb, mut vb) = (vec![0f32; hd], vec![0f32; hd]);
    for j in js {
        let at = j * kv.kvd + off;
        let dot = match (keys, kv.keys) {
            (RowKeys::Blocks { qb, keys }, _) => keys.score(j, g, qb),
            (RowKeys::Rows { q16 }, KvRows::F32(d)) => mirror::dot_f16(&d[at..at + hd], q16),
            (RowKeys::Rows { q16 }, KvRows::F16(d)) => mirror::dot_f16_bits(&d[at..at + hd], q16, &mut kb),
        };
        let s = score.of(dot);
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > p.max {
            let old = p.max;
            p.max = s;
            ms = (old - s).exp();
            match sum {
                Context::F16(math) => scale_f16(&mut p.acc, ms, math),
                Context::F32 => p.acc.iter_mut().for_each(|a| *a *= ms),
            }
        } else {
            vs = (s - p.max).exp();
        }
        match (sum, kv.values) {
            (Context::F32, _) => mad_f32(&mut p.acc, kv.value(j, off, hd, &mut vb), vs),
            (Context::F16(math), KvRows::F32(d)) => mad_f16(&mut p.acc, &d[at..at + hd], vs, math),
            (Context::F16(math), KvRows::F16(d)) => mad_f16_bits(&mut p.acc, &d[at..at + hd], vs, math, &mut vb),
        }
        p.sum = p.sum.mul_add(ms, vs);
    }
    p
}

/// y += x·v, each element fused (`ggml_vec_mad_f32`).
fn mad_f32(y: &mut [f32], x: &[f32], v: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: as in `scale_widened`.
        return unsafe { f16c::mad32(y, x, v) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y = x.mul_add(v, *y);
    }
}

/// y = y·v, each element rounded to f16 (`ggml_vec_scale_f16`), in the
/// build's arithmetic ([`F16Math`]).
fn scale_f16(y: &mut [f32], v: f32, math: F16Math) {
    let whole = if math == F16Math::Native { y.len() / F16_STEP * F16_STEP } else { 0 };
    // The f32 product of two f16 values is exact: rounding it to f16 is
    // the one rounding of an f16 multiply.
    scale_widened(&mut y[..whole], round_f16(v));
    scale_widened(&mut y[whole..], v);
}

/// y = y·v, each element rounded to f16, the product in f32.
fn scale_widened(y: &mut [f32], v: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: the active path has AVX2, FMA and F16C (checked when it
        // was set or detected).
        return unsafe { f16c::scale(y, v) };
    }
    y.iter_mut().for_each(|y| *y = round_f16(*y * v));
}

/// y += x·v, each element rounded to f16 (`ggml_vec_mad_f16`), in the
/// build's arithmetic ([`F16Math`]).
fn mad_f16(y: &mut [f32], x: &[f32], v: f32, math: F16Math) {
    let whole = if math == F16Math::Native { y.len().min(x.len()) / F16_STEP * F16_STEP } else { 0 };
    if whole > 0 {
        half_math::mad(&mut y[..whole], &x[..whole], round_f16(v));
    }
    mad_widened(&mut y[whole..], &x[whole.min(x.len())..], v);
}

/// [`mad_f16`] with `x` given as f16 bits (`buf`: room for x widened,
/// where no kernel reads the bits directly): the same values.
fn mad_f16_bits(y: &mut [f32], x: &[u16], v: f32, math: F16Math, buf: &mut [f32]) {
    assert_eq!(y.len(), x.len());
    let whole = if math == F16Math::Native { x.len() / F16_STEP * F16_STEP } else { 0 };
    if whole > 0 {
        half_math::mad_bits(&mut y[..whole], &x[..whole], round_f16(v));
    }
    let (y, x) = (&mut y[whole..], &x[whole..]);
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: as in `scale_widened`.
        return unsafe { f16c::mad_bits(y, x, v) };
    }
    widen(x, &mut buf[..x.len()]);
    mad_widened(y, &buf[..x.len()], v);
}

/// y += x·v, each element fused in f32 and rounded to f16 (64 at a time in
/// f32 vectors, the rest one by one — fused too, as the compiler built it).
fn mad_widened(y: &mut [f32], x: &[f32], v: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: as in `scale_widened`.
        return unsafe { f16c::mad(y, x, v) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y = round_f16(x.mul_add(v, *y));
    }
}

/// f16 fused multiply-adds on f16 values held in f32: y = x·v + y rounded
/// once to f16, as AVX512-FP16's `vfmadd231ph` rounds it.
mod half_math {
    use plumb_quant::blocks::round_f16;

    /// y = x·v + y, each element rounded once to f16 (x, v and y hold f16
    /// values): the CPU's own instruction where it has one, else exactly
    /// emulated ([`fma16`]).
    pub(super) fn mad(y: &mut [f32], x: &[f32], v: f32) {
        #[cfg(target_arch = "x86_64")]
        if super::F16Math::cpu_has_native() && crate::active_path().uses_avx512f() {
            let n = y.len().min(x.len()) / 32 * 32;
            // SAFETY: the CPU has AVX512-FP16 (asked just above) and the
            // active path AVX512F and F16C.
            unsafe { native::mad(&mut y[..n], &x[..n], v) };
            for (y, &x) in y[n..].iter_mut().zip(&x[n..]) {
                *y = fma16(x, v, *y);
            }
            return;
        }
        for (y, &x) in y.iter_mut().zip(x) {
            *y = fma16(x, v, *y);
        }
    }

    /// [`mad`] with `x` given as f16 bits.
    pub(super) fn mad_bits(y: &mut [f32], x: &[u16], v: f32) {
        #[cfg(target_arch = "x86_64")]
        if super::F16Math::cpu_has_native() && crate::active_path().uses_avx512f() {
            let n = y.len().min(x.len()) / 32 * 32;
            // SAFETY: the CPU has AVX512-FP16 (asked just above) and the
            // active path AVX512F and F16C.
            unsafe { native::mad_bits(&mut y[..n], &x[..n], v) };
            for (y, &x) in y[n..].iter_mut().zip(&x[n..]) {
                *y = fma16(half::f16::from_bits(x).to_f32(), v, *y);
            }
            return;
        }
        for (y, &x) in y.iter_mut().zip(x) {
            *y = fma16(half::f16::from_bits(x).to_f32(), v, *y);
        }
    }

    /// x·v + y rounded once to f16, for f16 values x, v, y. The product is
    /// exact in f64 (22 bits) and the sum is rounded once there; that
    /// rounding can never land on a halfway point between two f16 values
    /// that the exact sum is not on (the sum's lowest bit is within 2⁻³³ of
    /// its size whenever it is near such a point). The f64 is then taken to
    /// f16 through f32 rounded to odd, which keeps the second rounding
    /// correct.
    pub fn fma16(x: f32, v: f32, y: f32) -> f32 {
        let exact = f64::from(x) * f64::from(v) + f64::from(y);
        if !exact.is_finite() {
            return round_f16(exact as f32);
        }
        let r = exact as f32;
        let odd = if f64::from(r) != exact && r.to_bits() & 1 == 0 {
            // Round to odd: of r's two neighbours, the one toward the
            // exact value has an odd last bit.
            let toward = exact.abs() > f64::from(r).abs();
            f32::from_bits(if toward { r.to_bits() + 1 } else { r.to_bits() - 1 })
        } else {
            r
        };
        round_f16(odd)
    }

    #[cfg(target_arch = "x86_64")]
    pub(super) mod native {
        use std::arch::x86_64::*;

        /// Two vectors of 16 f32 (each an f16 value) as one of 32 f16.
        #[inline(always)]
        unsafe fn halves(p: *const f32) -> __m512i {
            let lo = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(p));
            let hi = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm512_loadu_ps(p.add(16)));
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
        }

        /// y = x·v + y, 32 f16 at a time by `vfmadd231ph`.
        ///
        /// # Safety
        /// The CPU has AVX512F and AVX512-FP16; y and x are as long, a
        /// multiple of 32.
        #[target_feature(enable = "avx512f,f16c")]
        pub unsafe fn mad(y: &mut [f32], x: &[f32], v: f32) {
            assert!(y.len() == x.len() && y.len().is_multiple_of(32));
            let vv = _mm512_set1_epi16(half::f16::from_f32(v).to_bits() as i16);
            for i in (0..y.len()).step_by(32) {
                fma32(y.as_mut_ptr().add(i), halves(x.as_ptr().add(i)), vv);
            }
        }

        /// [`mad`] with `x` given as f16 bits, loaded as they are.
        ///
        /// # Safety
        /// As for [`mad`].
        #[target_feature(enable = "avx512f,f16c")]
        pub unsafe fn mad_bits(y: &mut [f32], x: &[u16], v: f32) {
            assert!(y.len() == x.len() && y.len().is_multiple_of(32));
            let vv = _mm512_set1_epi16(half::f16::from_f32(v).to_bits() as i16);
            for i in (0..y.len()).step_by(32) {
                fma32(y.as_mut_ptr().add(i), _mm512_loadu_si512(x.as_ptr().add(i) as *const _), vv);
            }
        }

        /// The 32 f32 at `p` (each an f16 value) += xs·vv in f16, rounded
        /// once, by `vfmadd231ph`.
        ///
        /// # Safety
        /// As for [`mad`]; `p` is readable and writable for 32 floats.
        #[inline]
        #[target_feature(enable = "avx512f,f16c")]
        unsafe fn fma32(p: *mut f32, xs: __m512i, vv: __m512i) {
            let mut acc = halves(p);
            std::arch::asm!(
                "vfmadd231ph {acc}, {x}, {v}",
                acc = inout(zmm_reg) acc,
                x = in(zmm_reg) xs,
                v = in(zmm_reg) vv,
                options(pure, nomem, nostack),
            );
            _mm512_storeu_ps(p, _mm512_cvtph_ps(_mm512_castsi512_si256(acc)));
            _mm512_storeu_ps(p.add(16), _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(acc)));
        }
    }
}

/// The f16 running context's updates eight elements at a time: f32
/// arithmetic, then a round trip through f16 (ties to even) — the plain
/// code's bits.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    use plumb_quant::blocks::round_f16;

    #[inline(always)]
    unsafe fn round8(v: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scale(y: &mut [f32], v: f32) {
        let n = y.len() / 8 * 8;
        let vv = _mm256_set1_ps(v);
        for i in (0..n).step_by(8) {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, round8(_mm256_mul_ps(_mm256_loadu_ps(p), vv)));
        }
        y[n..].iter_mut().for_each(|y| *y = round_f16(*y * v));
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mul32(y: &mut [f32], v: f32) {
        let n = y.len() / 8 * 8;
        let vv = _mm256_set1_ps(v);
        for i in (0..n).step_by(8) {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), vv));
        }
        y[n..].iter_mut().for_each(|y| *y *= v);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mad32(y: &mut [f32], x: &[f32], v: f32) {
        let n = y.len().min(x.len()) / 8 * 8;
        let vv = _mm256_set1_ps(v);
        for i in (0..n).step_by(8) {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vv, _mm256_loadu_ps(p)));
        }
        for (y, x) in y[n..].iter_mut().zip(&x[n..]) {
            *y = x.mul_add(v, *y);
        }
    }

    /// f16 bits to f32, eight at a time.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn widen(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len()) / 8 * 8;
        for i in (0..n).step_by(8) {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        for (d, &s) in dst[n..].iter_mut().zip(&src[n..]) {
            *d = half::f16::from_bits(s).to_f32();
        }
    }

    /// [`mad`] with `x` given as f16 bits, widened as they are loaded.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mad_bits(y: &mut [f32], x: &[u16], v: f32) {
        let n = y.len().min(x.len()) / 8 * 8;
        let vv = _mm256_set1_ps(v);
        for i in (0..n).step_by(8) {
            let p = y.as_mut_ptr().add(i);
            let xs = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i) as *const __m128i));
            _mm256_storeu_ps(p, round8(_mm256_fmadd_ps(xs, vv, _mm256_loadu_ps(p))));
        }
        for (y, &x) in y[n..].iter_mut().zip(&x[n..]) {
            *y = round_f16(half::f16::from_bits(x).to_f32().mul_add(v, *y));
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn mad(y: &mut [f32], x: &[f32], v: f32) {
        let n = y.len().min(x.len()) / 8 * 8;
        let vv = _mm256_set1_ps(v);
        for i in (0..n).step_by(8) {
            let p = y.as_mut_ptr().add(i);
            let r = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), vv, _mm256_loadu_ps(p));
            _mm256_storeu_ps(p, round8(r));
        }
        for (y, x) in y[n..].iter_mut().zip(&x[n..]) {
            *y = round_f16(x.mul_add(v, *y));
        }
    }
}

/// llama.cpp's tiled path for rows of one head: `qs[r]` sees positions
/// `spans[r]` and its context goes to `outs[r]`. Each tile of 64 positions
/// (on absolute multiples of 64) is scored by plain fused chains over the
/// head, folded into each row's running maximum and sum, and its values
/// added with the tile's exps.
fn tiled(qs: &[&[f32]], spans: &[std::ops::Range<usize>], kv: &Kv, off: usize, score: Score, outs: &mut [&mut [f32]]) {
    let hd = qs[0].len();
    let lo = spans.iter().map(|r| r.start).min().unwrap_or(0);
    let hi = spans.iter().map(|r| r.end).max().unwrap_or(0);
    let mut parts: Vec<Partial> = qs.iter().map(|_| Partial::empty(hd)).collect();
    let mut kt = vec![0f32; hd * TILE_KV]; //                                [hd, 64]
    let zeros = vec![0f32; hd];
    let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
    // Tiles start on multiples of 64, absolute ones too (the first
    // position held is one).
    let mut t0 = lo / TILE_KV * TILE_KV;
    while t0 < hi {
        let t1 = (t0 + TILE_KV).min(hi);
        let cols: Vec<Option<usize>> = (t0..t1).map(Some).collect();
        let keys = kv.keys.rows(&cols, kv.kvd, off, hd, &mut kbuf, &zeros);
        key_tile(&keys, &mut kt);
        // The tile's values, widened once for every block of rows.
        let values = kv.values.rows(&cols, kv.kvd, off, hd, &mut vbuf, &zeros);
        // The rows that see part of this tile, four at a time: each key
        // and value of the tile is read once for the four.
        let seen = |r: &usize| spans[*r].start.max(t0) < spans[*r].end.min(t1);
        let active: Vec<usize> = (0..qs.len()).filter(seen).collect();
        for block in active.chunks(ROWS) {
            let q4: [&[f32]; ROWS] = std::array::from_fn(|b| block.get(b).map_or(&zeros[..], |&r| qs[r]));
            let mut kq = [[0f32; TILE_KV]; ROWS];
            tile_scores(&q4, &kt, &mut kq);
            let mut weights: [Option<std::ops::Range<usize>>; ROWS] = std::array::from_fn(|_| None);
            for (b, &r) in block.iter().enumerate() {
                let (a, e) = (spans[r].start.max(t0), spans[r].end.min(t1));
                if online_tile_span(&mut parts[r], &mut kq[b], a - t0..e - t0, score) {
                    weights[b] = Some(a..e);
                }
            }
            // Each active row's weights over the tile (zeros where it sees
            // nothing), its values added by one fused chain per element.
            let from = weights.iter().flatten().map(|w| w.start).min().unwrap_or(t1);
            let to = weights.iter().flatten().map(|w| w.end).max().unwrap_or(t1);
            if from >= to {
                continue;
            }
            for (b, w) in weights.iter().enumerate() {
                match w {
                    Some(w) => {
                        kq[b][..w.start - t0].fill(0.0);
                        kq[b][w.end - t0..].fill(0.0);
                    }
                    None => kq[b].fill(0.0),
                }
            }
            let vs = &values[from - t0..to - t0];
            let mut accs: Vec<&mut [f32]> = Vec::with_capacity(ROWS);
            let mut rest = &mut parts[..];
            let mut taken = 0;
            for &r in block {
                let (_, tail) = rest.split_at_mut(r - taken);
                let (p, tail) = tail.split_first_mut().unwrap();
                accs.push(&mut p.acc);
                rest = tail;
                taken = r + 1;
            }
            let ws: Vec<&[f32]> = kq.iter().take(block.len()).map(|w| &w[from - t0..to - t0]).collect();
            add_tile(&mut accs, &ws, vs);
        }
        t0 += TILE_KV;
    }
    for (p, out) in parts.iter().zip(outs.iter_mut()) {
        p.finish(out);
    }
}

/// [`tiled`] over cells in llama.cpp's order (`order`: each cell's key
/// index, if it holds one): tiles of 64 cells, each row seeing the cells
/// whose keys its span holds, empty and unseen cells weighing nothing.
fn tiled_cells(
    qs: &[&[f32]],
    spans: &[std::ops::Range<usize>],
    order: &[Option<usize>],
    kv: &Kv,
    off: usize,
    score: Score,
    outs: &mut [&mut [f32]],
) {
    let hd = qs[0].len();
    let mut parts: Vec<Partial> = qs.iter().map(|_| Partial::empty(hd)).collect();
    let mut kt = vec![0f32; hd * TILE_KV]; //                                [hd, 64]
    let zeros = vec![0f32; hd];
    let (mut kbuf, mut vbuf) = (Vec::new(), Vec::new());
    for t0 in (0..order.len()).step_by(TILE_KV) {
        let t1 = (t0 + TILE_KV).min(order.len());
        let tile = &order[t0..t1];
        let seen = |r: usize, c: usize| tile.get(c).copied().flatten().is_some_and(|j| spans[r].contains(&j));
        let active: Vec<usize> = (0..qs.len()).filter(|&r| (0..tile.len()).any(|c| seen(r, c))).collect();
        if active.is_empty() {
            continue;
        }
        let keys = kv.keys.rows(tile, kv.kvd, off, hd, &mut kbuf, &zeros);
        key_tile(&keys, &mut kt);
        let values = kv.values.rows(tile, kv.kvd, off, hd, &mut vbuf, &zeros);
        for block in active.chunks(ROWS) {
            let q4: [&[f32]; ROWS] = std::array::from_fn(|b| block.get(b).map_or(&zeros[..], |&r| qs[r]));
            let mut kq = [[0f32; TILE_KV]; ROWS];
            tile_scores(&q4, &kt, &mut kq);
            let mut any = [false; ROWS];
            for (b, &r) in block.iter().enumerate() {
                any[b] = online_tile(&mut parts[r], &mut kq[b], |c| seen(r, c), score);
            }
            for (b, &r) in block.iter().enumerate() {
                for (c, w) in kq[b].iter_mut().enumerate() {
                    if !any[b] || !seen(r, c) {
                        *w = 0.0;
                    }
                }
            }
            let from = (0..tile.len()).find(|&c| block.iter().any(|&r| seen(r, c)));
            let Some(from) = from else { continue };
            let to = (0..tile.len()).rev().find(|&c| block.iter().any(|&r| seen(r, c))).map_or(from, |c| c + 1);
            let vs = &values[from..to];
            let mut accs: Vec<&mut [f32]> = Vec::with_capacity(ROWS);
            let mut rest = &mut parts[..];
            let mut taken = 0;
            for &r in block {
                let (_, tail) = rest.split_at_mut(r - taken);
                let (p, tail) = tail.split_first_mut().unwrap();
                accs.push(&mut p.acc);
                rest = tail;
                taken = r + 1;
            }
            let ws: Vec<&[f32]> = kq.iter().take(block.len()).map(|w| &w[from..to]).collect();
            add_tile(&mut accs, &ws, vs);
        }
    }
    for (p, out) in parts.iter().zip(outs.iter_mut()) {
        p.finish(out);
    }
}

/// Rows whose scores one pass over a tile makes (llama.cpp's GEMM blocks
/// four; each score's chain is its own either way).
const ROWS: usize = 4;

/// One tile of one row's scores (`kq`, positions `seen` of it visible)
/// folded into its running maximum and sum, `kq` becoming the weights of
/// its values: false when the row sees nothing of it.
fn online_tile(p: &mut Partial, kq: &mut [f32; TILE_KV], seen: impl Fn(usize) -> bool, score: Score) -> bool {
    for (j, v) in kq.iter_mut().enumerate() {
        *v = if seen(j) { score.of(*v) } else { f32::NEG_INFINITY };
    }
    fold_tile(p, kq)
}

/// [`online_tile`] for a row that sees the tile's positions `span` only.
fn online_tile_span(p: &mut Partial, kq: &mut [f32; TILE_KV], span: std::ops::Range<usize>, score: Score) -> bool {
    kq[..span.start].fill(f32::NEG_INFINITY);
    kq[span.end..].fill(f32::NEG_INFINITY);
    match score.cap {
        // A plain product per score, which the compiler vectorizes.
        None => kq[span].iter_mut().for_each(|v| *v *= score.scale),
        Some(_) => kq[span].iter_mut().for_each(|v| *v = score.of(*v)),
    }
    fold_tile(p, kq)
}

/// The scores of a tile (−∞ where unseen) folded into the row's running
/// maximum and sum, becoming the weights of its values; false when the
/// row sees nothing of the tile.
fn fold_tile(p: &mut Partial, kq: &mut [f32; TILE_KV]) -> bool {
    // The maximum in eight independent chains, then across them: the same
    // number as one chain (a maximum is one of the values; only a zero's
    // sign could differ, and e^(x − ±0) is the same), without one long
    // chain of dependent steps.
    let mut m8 = [f32::NEG_INFINITY; 8];
    for c in kq.chunks_exact(8) {
        for (m, &v) in m8.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let tile_max = m8.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if tile_max == f32::NEG_INFINITY {
        return false;
    }
    let max = p.max.max(tile_max);
    if max > p.max {
        let ms = (p.max - max).exp();
        mul_f32(&mut p.acc, ms);
        p.sum *= ms;
    }
    p.max = max;
    let mut sum = 0f64;
    for g in kq.chunks_exact_mut(16) {
        sum += mirror::exp_sum16(g, max) as f64;
    }
    p.sum = (p.sum as f64 + sum) as f32;
    true
}

/// kt [hd, 64] = the tile's keys (at most 64, each hd long) side by side,
/// column j being key j, zeros past the last.
fn key_tile(keys: &[&[f32]], kt: &mut [f32]) {
    key_tile_on(keys, kt, crate::active_path().uses_avx2());
}

/// [`key_tile`], eight keys at a time in AVX2 registers when `avx2`.
fn key_tile_on(keys: &[&[f32]], kt: &mut [f32], avx2: bool) {
    assert!(keys.len() <= TILE_KV);
    let hd = kt.len() / TILE_KV;
    let done = if avx2 && hd.is_multiple_of(8) { key_columns_by_eight(keys, kt) } else { 0 };
    for (j, key) in keys.iter().enumerate().skip(done) {
        for (d, &k) in key[..hd].iter().enumerate() {
            kt[d * TILE_KV + j] = k;
        }
    }
    kt.chunks_exact_mut(TILE_KV).for_each(|r| r[keys.len()..].fill(0.0));
}

/// The keys of whole groups of eight into their columns; how many.
#[cfg(target_arch = "x86_64")]
fn key_columns_by_eight(keys: &[&[f32]], kt: &mut [f32]) -> usize {
    assert!(std::arch::is_x86_feature_detected!("avx2"));
    let done = keys.len() / 8 * 8;
    for (b, eight) in keys[..done].chunks_exact(8).enumerate() {
        let rows: [&[f32]; 8] = std::array::from_fn(|i| eight[i]);
        // SAFETY: the CPU has AVX2 (asserted above).
        unsafe { transpose8::key_columns(&rows, kt, b * 8) };
    }
    done
}

#[cfg(not(target_arch = "x86_64"))]
fn key_columns_by_eight(_: &[&[f32]], _: &mut [f32]) -> usize {
    0
}

#[cfg(target_arch = "x86_64")]
mod transpose8 {
    use super::TILE_KV;
    use std::arch::x86_64::*;

    /// Eight keys into columns j0..j0+8 of kt [hd, 64], eight dimensions
    /// at a time by an 8×8 transpose in registers.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn key_columns(rows: &[&[f32]; 8], kt: &mut [f32], j0: usize) {
        let hd = kt.len() / TILE_KV;
        assert!(j0 + 8 <= TILE_KV && rows.iter().all(|r| r.len() >= hd));
        for d0 in (0..hd).step_by(8) {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i][d0..d0 + 8].as_ptr()));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (k, v) in out.iter().enumerate() {
                let at = (d0 + k) * TILE_KV + j0;
                _mm256_storeu_ps(kt[at..at + 8].as_mut_ptr(), *v);
            }
        }
    }
}

/// out[r][j] = Σ_d q[r][d]·kt[d, j], one fused chain over d from 0 for
/// each row and each of the tile's 64 positions (llama.cpp's small f32
/// GEMM, lane by lane).
fn tile_scores(q: &[&[f32]; ROWS], kt: &[f32], out: &mut [[f32; TILE_KV]; ROWS]) {
    #[cfg(target_arch = "x86_64")]
    {
        let path = crate::active_path();
        if path.uses_avx512f() {
            // SAFETY: the active path has AVX512F, AVX2 and FMA (checked
            // when it was set or detected).
            return unsafe { tile_scores_avx512(q, kt, out) };
        }
        if path.uses_avx2() {
            // SAFETY: the active path has AVX2 and FMA.
            return unsafe { tile_scores_fma(q, kt, out) };
        }
    }
    tile_scores_plain(q, kt, out)
}

/// [`tile_scores_plain`] with the four rows' 64 sums held in sixteen
/// registers: per dimension, the tile's row of keys loaded once and each
/// query element broadcast once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_scores_avx512(q: &[&[f32]; ROWS], kt: &[f32], out: &mut [[f32; TILE_KV]; ROWS]) {
    use std::arch::x86_64::*;
    let hd = kt.len() / TILE_KV;
    assert!(kt.len() == hd * TILE_KV && q.iter().all(|q| q.len() >= hd));
    let mut acc = [[_mm512_setzero_ps(); TILE_KV / 16]; ROWS];
    for d in 0..hd {
        let row = kt.as_ptr().add(d * TILE_KV);
        let k: [__m512; TILE_KV / 16] = std::array::from_fn(|c| _mm512_loadu_ps(row.add(16 * c)));
        for (a, q) in acc.iter_mut().zip(q) {
            let qd = _mm512_set1_ps(*q.get_unchecked(d));
            for (a, &k) in a.iter_mut().zip(&k) {
                *a = _mm512_fmadd_ps(qd, k, *a);
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        for (c, &a) in a.iter().enumerate() {
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_scores_fma(q: &[&[f32]; ROWS], kt: &[f32], out: &mut [[f32; TILE_KV]; ROWS]) {
    tile_scores_plain(q, kt, out)
}

#[inline(always)]
fn tile_scores_plain(q: &[&[f32]; ROWS], kt: &[f32], out: &mut [[f32; TILE_KV]; ROWS]) {
    let mut acc = [[0f32; TILE_KV]; ROWS];
    for (d, row) in kt.chunks_exact(TILE_KV).enumerate() {
        for (a, q) in acc.iter_mut().zip(q) {
            let qd = q[d];
            for (a, &k) in a.iter_mut().zip(row) {
                *a = qd.mul_add(k, *a);
            }
        }
    }
    *out = acc;
}

/// acc[b][e] += Σ_j ws[b][j]·vs[j][e]: for each element one fused chain
/// over the positions in order (llama.cpp's small GEMM, lane by lane),
/// sixteen elements of up to four rows at a time in registers.
fn add_tile(accs: &mut [&mut [f32]], ws: &[&[f32]], vs: &[&[f32]]) {
    #[cfg(target_arch = "x86_64")]
    {
        let path = crate::active_path();
        if path.uses_avx512f() {
            // SAFETY: as in `tile_scores`.
            return unsafe { add_tile_avx512(accs, ws, vs) };
        }
        if path.uses_avx2() {
            // SAFETY: as in `tile_scores`.
            return unsafe { add_tile_fma(accs, ws, vs) };
        }
    }
    add_tile_plain(accs, ws, vs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_tile_fma(accs: &mut [&mut [f32]], ws: &[&[f32]], vs: &[&[f32]]) {
    add_tile_plain(accs, ws, vs)
}

#[inline(always)]
fn add_tile_plain(accs: &mut [&mut [f32]], ws: &[&[f32]], vs: &[&[f32]]) {
    const L: usize = 16;
    let hd = accs.first().map_or(0, |a| a.len());
    let whole = hd / L * L;
    for e0 in (0..whole).step_by(L) {
        let mut a = [[0f32; L]; ROWS];
        for (a, acc) in a.iter_mut().zip(accs.iter()) {
            a.copy_from_slice(&acc[e0..e0 + L]);
        }
        for (j, v) in vs.iter().enumerate() {
            let v: &[f32; L] = v[e0..e0 + L].try_into().unwrap();
            for (a, w) in a.iter_mut().zip(ws) {
                let wj = w[j];
                for (a, &v) in a.iter_mut().zip(v) {
                    *a = wj.mul_add(v, *a);
                }
            }
        }
        for (a, acc) in a.iter().zip(accs.iter_mut()) {
            acc[e0..e0 + L].copy_from_slice(a);
        }
    }
    add_tile_tail(accs, ws, vs, whole);
}

/// [`add_tile_plain`] of the elements from `from` on, one at a time.
fn add_tile_tail(accs: &mut [&mut [f32]], ws: &[&[f32]], vs: &[&[f32]], from: usize) {
    for (acc, w) in accs.iter_mut().zip(ws) {
        for e in from..acc.len() {
            for (v, &wj) in vs.iter().zip(w.iter()) {
                acc[e] = wj.mul_add(v[e], acc[e]);
            }
        }
    }
}

/// [`add_tile_plain`] on 512-bit registers: four rows by 64 elements (then
/// 32), sixteen independent chains (rows missing from a block of four
/// weigh nothing into a scratch row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn add_tile_avx512(accs: &mut [&mut [f32]], ws: &[&[f32]], vs: &[&[f32]]) {
    let hd = accs.first().map_or(0, |a| a.len());
    let n = vs.len();
    let zero_w = vec![0f32; n];
    let mut scratch = vec![0f32; hd];
    let w: [*const f32; ROWS] = std::array::from_fn(|b| ws.get(b).map_or(zero_w.as_ptr(), |w| w[..n].as_ptr()));
    let out: [*mut f32; ROWS] = std::array::from_fn(|b| match accs.get_mut(b) {
        Some(a) => a.as_mut_ptr(),
        None => scratch.as_mut_ptr(),
    });
    // Sixty-four elements at a time (sixteen sums in registers, each
    // weight broadcast once for four vectors), then thirty-two.
    let by64 = hd / 64 * 64;
    for e0 in (0..by64).step_by(64) {
        add_tile_lanes::<4>(&out, &w, vs, e0);
    }
    let whole = by64 + (hd - by64) / 32 * 32;
    for e0 in (by64..whole).step_by(32) {
        add_tile_lanes::<2>(&out, &w, vs, e0);
    }
    add_tile_tail(accs, ws, vs, whole);
}

/// Elements e0..e0 + 16·N of each row: acc += Σ_j w[j]·v[j], one fused
/// chain per element over the positions in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn add_tile_lanes<const N: usize>(out: &[*mut f32; ROWS], w: &[*const f32; ROWS], vs: &[&[f32]], e0: usize) {
    use std::arch::x86_64::*;
    let mut a: [[__m512; N]; ROWS] =
        std::array::from_fn(|b| std::array::from_fn(|c| _mm512_loadu_ps(out[b].add(e0 + 16 * c))));
    for (j, v) in vs.iter().enumerate() {
        let v = &v[e0..e0 + 16 * N];
        let vv: [__m512; N] = std::array::from_fn(|c| _mm512_loadu_ps(v.as_ptr().add(16 * c)));
        for (a, w) in a.iter_mut().zip(w) {
            let wj = _mm512_set1_ps(*w.add(j));
            for (a, &v) in a.iter_mut().zip(&vv) {
                *a = _mm512_fmadd_ps(wj, v, *a);
            }
        }
    }
    for (a, o) in a.iter().zip(out) {
        for (c, &a) in a.iter().enumerate() {
            _mm512_storeu_ps(o.add(e0 + 16 * c), a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x·v + y rounded once to f16, by integers: every f16 is a whole
    /// multiple of 2⁻²⁴, so the exact sum is a whole multiple of 2⁻⁴⁸ below
    /// 2³⁴, rounded here to the f16 grid (ties to even) with no float
    /// arithmetic at all.
    fn fma16_by_integers(x: f32, v: f32, y: f32) -> f32 {
        let units = |f: f32| -> i128 { (f64::from(f) * 16777216.0) as i128 }; // exact: f16 values
        let s = units(x) * units(v) + (units(y) << 24); //                        × 2⁻⁴⁸
        let mag = s.unsigned_abs();
        // The grid: 2⁻²⁴ (subnormals) or 2^(e−10) for a value in [2^e, 2^(e+1)).
        let bits = 128 - mag.leading_zeros() as i32; //                            mag < 2^bits
        let q = (bits - 11).max(24) as u32; //                                     grid step, × 2⁻⁴⁸
        let (whole, rest, half) = (mag >> q, mag & ((1u128 << q) - 1), 1u128 << (q - 1));
        let up = rest > half || (rest == half && whole & 1 == 1);
        let r = ((whole + u128::from(up)) << q) as f64 / 2f64.powi(48);
        let r = if r > 65504.0 { f64::INFINITY } else { r };
        (if s < 0 { -r } else { r }) as f32
    }

    /// f16 values across the range: random bit patterns (subnormals
    /// included), and values set up so that x·v + y lands on or next to a
    /// halfway point between two f16 values.
    fn f16_triples() -> Vec<(f32, f32, f32)> {
        let f = |b: u16| half::f16::from_bits(b).to_f32();
        let mut state = 0x9e37_79b9u32;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut out = Vec::new();
        while out.len() < 200_000 {
            let (x, v, y) = (f(next() as u16 & 0x7bff), f(next() as u16), f(next() as u16 & 0xfbff));
            if x.is_finite() && v.is_finite() && y.is_finite() && (x * v).abs() < 60000.0 {
                out.push((x, v, y));
            }
        }
        // Ties: y + one half f16 step of y (x·v = step/2), and a hair either side.
        for k in 0..2000u16 {
            let y = f(0x3c00 + k);
            let step = f(0x3c01 + k) - y;
            for (x, v) in [(step, 0.5), (step * 0.5, 1.0), (step * 0.5 + step / 1024.0, 1.0), (-step * 0.5, 1.0)] {
                let (x, v) = (plumb_quant::blocks::round_f16(x), plumb_quant::blocks::round_f16(v));
                out.push((x, v, y));
                out.push((x, v, -y));
            }
        }
        out
    }

    #[test]
    fn the_f16_fused_multiply_add_rounds_once() {
        for (x, v, y) in f16_triples() {
            let (got, want) = (half_math::fma16(x, v, y), fma16_by_integers(x, v, y));
            assert_eq!(got.to_bits(), want.to_bits(), "fma16({x:e}, {v:e}, {y:e}): {got:e}, exactly {want:e}");
        }
        // Rounding the f32 fused result instead (the widened build) differs
        // somewhere in these: the test tells the two apart.
        assert!(f16_triples().iter().any(|&(x, v, y)| round_f16(x.mul_add(v, y)) != fma16_by_integers(x, v, y)));
    }

    /// Where the CPU has AVX512-FP16, its own instruction gives the same
    /// bits as the emulation (elsewhere the emulation alone is checked, above).
    #[test]
    fn the_cpus_f16_instructions_agree_with_the_emulation() {
        #[cfg(target_arch = "x86_64")]
        if F16Math::cpu_has_native() && crate::active_path().uses_avx512f() {
            let t = f16_triples();
            for (i, chunk) in t.chunks_exact(32).enumerate() {
                for v in [chunk[0].1, round_f16(0.3 + i as f32 * 1e-3)] {
                    let x: Vec<f32> = chunk.iter().map(|c| c.0).collect();
                    let mut y: Vec<f32> = chunk.iter().map(|c| c.2).collect();
                    let want: Vec<f32> = x.iter().zip(&y).map(|(&x, &y)| half_math::fma16(x, v, y)).collect();
                    // SAFETY: the CPU has AVX512-FP16 and AVX512F (asked above); 32 each.
                    unsafe { half_math::native::mad(&mut y, &x, v) };
                    assert_eq!(y, want, "chunk {i}, v = {v:e}");
                }
            }
        }
    }

    /// llama.cpp's AVX512-FP16 build: whole runs of 128 in f16 arithmetic
    /// with the factor rounded to f16, the rest widened; heads under 128
    /// are as the widened build's.
    #[test]
    fn native_f16_math_covers_whole_runs_of_128_only() {
        let v = 0.123_456_79_f32;
        let x = values(200, 7);
        let y0 = values(200, 9);
        let (mut native, mut widened) = (y0.clone(), y0.clone());
        mad_f16(&mut native, &x, v, F16Math::Native);
        mad_f16(&mut widened, &x, v, F16Math::Widened);
        let v16 = round_f16(v);
        for i in 0..200 {
            let want = if i < 128 { half_math::fma16(x[i], v16, y0[i]) } else { round_f16(x[i].mul_add(v, y0[i])) };
            assert_eq!(native[i].to_bits(), want.to_bits(), "element {i}");
        }
        assert_ne!(native[..128], widened[..128]);
        assert_eq!(native[128..], widened[128..]);
        let (mut a, mut b) = (y0[..96].to_vec(), y0[..96].to_vec());
        mad_f16(&mut a, &x[..96], v, F16Math::Native);
        mad_f16(&mut b, &x[..96], v, F16Math::Widened);
        assert_eq!(a, b);
        let (mut a, mut b) = (y0.clone(), y0.clone());
        scale_f16(&mut a, v, F16Math::Native);
        scale_f16(&mut b, v, F16Math::Widened);
        for i in 0..200 {
            let want = if i < 128 { round_f16(y0[i] * v16) } else { round_f16(y0[i] * v) };
            assert_eq!(a[i].to_bits(), want.to_bits(), "scaled element {i}");
        }
        assert_ne!(a[..128], b[..128]);
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| round_f16((((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 500.0 - 2.0)).collect()
    }

    fn shape(t: usize, p: usize, window: Option<usize>, softcap: Option<f32>) -> AttnShape {
        AttnShape {
            t,
            p,
            heads: 4,
            kv_heads: 2,
            hd: 80,
            window,
            scale: 0.125,
            softcap,
            scale_queries: false,
            full: false,
            future: 0,
            k_f16: true,
            v_f16: true,
        }
    }

    /// softmax(q·k·scale)·v over each row's visible positions, in f64.
    fn plain(s: &AttnShape, q: &[f32], keys: &[f32], vals: &[f32]) -> Vec<f32> {
        let (hd, kvd, group) = (s.hd, s.kv_heads * s.hd, s.heads / s.kv_heads);
        let mut out = vec![0f32; s.t * s.heads * hd];
        for i in 0..s.t {
            for h in 0..s.heads {
                let qi = &q[(i * s.heads + h) * hd..][..hd];
                let off = h / group * hd;
                let js = s.first_visible(i)..s.p + i + 1;
                let sc: Vec<f64> = js
                    .clone()
                    .map(|j| {
                        let d: f64 = (0..hd).map(|e| qi[e] as f64 * keys[j * kvd + off + e] as f64).sum();
                        let x = d * s.scale as f64;
                        s.softcap.map_or(x, |c| c as f64 * (x / c as f64).tanh())
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                for e in 0..hd {
                    let v: f64 = js.clone().zip(&sc).map(|(j, x)| (x - m).exp() * vals[j * kvd + off + e] as f64).sum();
                    out[(i * s.heads + h) * hd + e] = (v / z) as f32;
                }
            }
        }
        out
    }

    /// The transform is the orthonormal Walsh-Hadamard matrix (entries
    /// ±1/√n, sign by the parity of i AND j), and its own inverse.
    #[test]
    fn fwht_is_the_orthonormal_hadamard_matrix_and_its_own_inverse() {
        for n in [64, 256] {
            let x: Vec<f32> = (0..2 * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let mut y = x.clone();
            fwht(&mut y, n);
            for (xr, yr) in x.chunks(n).zip(y.chunks(n)) {
                for (i, &yi) in yr.iter().enumerate() {
                    let want: f64 = xr
                        .iter()
                        .enumerate()
                        .map(|(j, &v)| if (i & j).count_ones() % 2 == 0 { v as f64 } else { -v as f64 })
                        .sum::<f64>()
                        / (n as f64).sqrt();
                    assert!((yi as f64 - want).abs() < 1e-4, "n {n}, row element {i}: {yi} vs {want}");
                }
            }
            fwht(&mut y, n);
            assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-4), "n {n}: H·H is not I");
        }
        assert_eq!(Rotation::for_head(256), Some(Rotation { k: 256, v: 64 }));
        assert_eq!(Rotation::for_head(192), Some(Rotation { k: 64, v: 64 }));
        assert_eq!(Rotation::for_head(32), None);
    }

    #[test]
    fn n_kv_and_the_path_follow_llama_cpps_view_of_the_step() {
        assert_eq!(FlashPlan::n_kv(44, 13), 256);
        assert_eq!(FlashPlan::n_kv(2183, 2152), 2304);
        assert_eq!(FlashPlan::n_kv(2183, 300), 512);
        assert_eq!(FlashPlan::n_kv(300, 300), 512);
        let plan = |step_rows, n_kv| FlashPlan {
            step_rows,
            n_kv,
            threads: 2,
            first: 0,
            quantized: false,
            values_in_blocks: false,
            rotate_k: None,
            rotate_v: None,
            f16_math: F16Math::Widened,
        };
        assert_eq!(plan(63, 256).path(), FlashPath::OneRow);
        assert_eq!(plan(64, 256).path(), FlashPath::Tiled);
        assert_eq!(plan(1, 256).path(), FlashPath::OneRow);
        assert_eq!(plan(1, 512).path(), FlashPath::Split);
        assert_eq!(plan(2, 512).path(), FlashPath::OneRow);
    }

    /// Each path is attention: within f16's rounding of the plain f64
    /// definition, with a sliding window and a softcap.
    #[test]
    fn every_path_is_softmax_attention_within_f16_rounding() {
        for (t, p, rows, n_kv) in [(5, 40, 5, 256), (70, 30, 70, 256), (1, 700, 1, 768)] {
            for (window, cap) in [(None, None), (Some(100), Some(3.0))] {
                let s = shape(t, p, window, cap);
                let q = values(t * s.heads * s.hd, 1);
                let keys = values((p + t) * s.kv_heads * s.hd, 2);
                let vals = values((p + t) * s.kv_heads * s.hd, 3);
                let plan = FlashPlan {
                    step_rows: rows,
                    n_kv,
                    threads: 3,
                    first: 0,
                    quantized: false,
                    values_in_blocks: false,
                    rotate_k: None,
                    rotate_v: None,
                    f16_math: F16Math::Widened,
                };
                let mut ctx = vec![0f32; q.len()];
                flash_attention(
                    &s,
                    &plan,
                    &q,
                    &FlashCache { keys: KvRows::F32(&keys), values: KvRows::F32(&vals), key_blocks: None, cells: None },
                    &mut ctx,
                );
                let want = plain(&s, &q, &keys, &vals);
                let worst = ctx.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 0.02, "{:?}: worst |Δ| {worst}", plan.path());
            }
        }
    }

    /// A cache holding f16 bits gives the bits of one holding the same
    /// values in f32, on every path, in cell order too, in both builds'
    /// arithmetic.
    #[test]
    fn f16_bits_and_f32_held_f16_values_attend_alike() {
        let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect() };
        for (t, p, rows, n_kv) in [(5, 40, 5, 256), (70, 30, 70, 256), (1, 700, 1, 768)] {
            for math in [F16Math::Widened, F16Math::Native] {
                let mut s = shape(t, p, Some(100), None);
                s.hd = 128;
                let q = values(t * s.heads * s.hd, 1);
                let keys = values((p + t) * s.kv_heads * s.hd, 2);
                let vals = values((p + t) * s.kv_heads * s.hd, 3);
                let (k16, v16) = (bits(&keys), bits(&vals));
                let plan = FlashPlan {
                    step_rows: rows,
                    n_kv,
                    threads: 2,
                    first: 0,
                    quantized: false,
                    values_in_blocks: false,
                    rotate_k: None,
                    rotate_v: None,
                    f16_math: math,
                };
                // Cells in an order of their own: the positions reversed.
                let reversed: Vec<Option<usize>> = (0..p + t).rev().map(Some).collect();
                for cells in [None, Some(&reversed[..])] {
                    let run = |keys: KvRows, values: KvRows| {
                        let mut ctx = vec![0f32; q.len()];
                        flash_attention(&s, &plan, &q, &FlashCache { keys, values, key_blocks: None, cells }, &mut ctx);
                        ctx
                    };
                    let (a, b) =
                        (run(KvRows::F32(&keys), KvRows::F32(&vals)), run(KvRows::F16(&k16), KvRows::F16(&v16)));
                    assert!(
                        a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{:?} {math:?} cells {}",
                        plan.path(),
                        cells.is_some()
                    );
                }
            }
        }
    }

    /// The split path with one chunk is the one-row path, bit for bit.
    #[test]
    fn one_chunk_of_the_split_path_is_the_one_row_path() {
        let s = shape(1, 600, Some(300), None);
        let q = values(s.heads * s.hd, 4);
        let keys = values(601 * s.kv_heads * s.hd, 5);
        let vals = values(601 * s.kv_heads * s.hd, 6);
        let run = |n_kv, threads| {
            let mut ctx = vec![0f32; q.len()];
            let plan = FlashPlan {
                step_rows: 1,
                n_kv,
                threads,
                first: 0,
                quantized: false,
                values_in_blocks: false,
                rotate_k: None,
                rotate_v: None,
                f16_math: F16Math::Widened,
            };
            flash_attention(
                &s,
                &plan,
                &q,
                &FlashCache { keys: KvRows::F32(&keys), values: KvRows::F32(&vals), key_blocks: None, cells: None },
                &mut ctx,
            );
            ctx
        };
        let (one_row, split1, split2) = (run(256, 1), run(768, 1), run(768, 2));
        assert!(one_row.iter().zip(&split1).all(|(a, b)| a.to_bits() == b.to_bits()));
        assert!(one_row.iter().zip(&split2).any(|(a, b)| a.to_bits() != b.to_bits()), "two chunks round otherwise");
    }

    /// The vector builds of the tile kernels give the plain code's bits.
    #[test]
    fn key_tiles_put_each_key_in_its_column_on_every_path() {
        for (hd, n) in [(16, 64), (256, 64), (24, 61), (20, 13), (32, 0)] {
            let data = values(n * hd, 7);
            let keys: Vec<&[f32]> = data.chunks_exact(hd).collect();
            let mut want = vec![0f32; hd * TILE_KV];
            for (j, k) in keys.iter().enumerate() {
                for (d, &v) in k.iter().enumerate() {
                    want[d * TILE_KV + j] = v;
                }
            }
            let simd = crate::active_path().uses_avx2();
            for avx2 in [false, simd] {
                let mut kt = vec![f32::NAN; hd * TILE_KV];
                key_tile_on(&keys, &mut kt, avx2);
                assert!(kt.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "avx2 {avx2} hd {hd} n {n}");
            }
        }
    }

    #[test]
    fn tile_kernels_are_the_same_bits_on_every_path() {
        let qs: Vec<Vec<f32>> = (0..ROWS as u32).map(|r| values(96, 7 + r)).collect();
        let q: [&[f32]; ROWS] = std::array::from_fn(|r| &qs[r][..]);
        let kt = values(96 * TILE_KV, 8);
        let (mut a, mut b) = ([[0f32; TILE_KV]; ROWS], [[0f32; TILE_KV]; ROWS]);
        tile_scores_plain(&q, &kt, &mut a);
        tile_scores(&q, &kt, &mut b);
        assert_eq!(a.map(|r| r.map(f32::to_bits)), b.map(|r| r.map(f32::to_bits)));
        let (mut x, mut y) = (values(4 * 99, 9), values(4 * 99, 9));
        let ws: Vec<Vec<f32>> = (0..4).map(|r| values(30, 10 + r)).collect();
        let ws: Vec<&[f32]> = ws.iter().map(|w| &w[..]).collect();
        let vs: Vec<&[f32]> = kt.chunks_exact(99).take(30).collect();
        add_tile_plain(&mut x.chunks_exact_mut(99).collect::<Vec<_>>(), &ws, &vs);
        add_tile(&mut y.chunks_exact_mut(99).collect::<Vec<_>>(), &ws, &vs);
        assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
