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
//! before its flash attention, so the caller's cache holds them rounded
//! (in f32). Values are rows ([positions, Hkv·hd]), as llama.cpp keeps its
//! V cache untransposed under flash attention.

use plumb_quant::blocks::round_f16;
use rayon::prelude::*;

use crate::attention::AttnShape;
use crate::mirror::{self, LANES};

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
        if self.step_rows >= TILE_Q {
            FlashPath::Tiled
        } else if self.step_rows == 1 && self.n_kv >= SPLIT_FROM {
            FlashPath::Split
        } else {
            FlashPath::OneRow
        }
    }
}

/// ctx[i, h] = softmax(q[i, h]·kᵀ + mask)·v over the positions row i sees,
/// by the path `plan` picks. q [T, H·hd] (its rows in the cache's element
/// order), keys and values [positions, Hkv·hd] from the first position
/// held (f16 values), ctx [T, H·hd].
pub fn flash_attention(s: &AttnShape, plan: &FlashPlan, q: &[f32], keys: &[f32], values: &[f32], ctx: &mut [f32]) {
    let (t, hd, heads) = (s.t, s.hd, s.heads);
    let (qd, kvd, group) = (heads * hd, s.kv_heads * hd, heads / s.kv_heads);
    assert!(s.kv_heads > 0 && heads.is_multiple_of(s.kv_heads), "{heads} heads over {} kv heads", s.kv_heads);
    assert!(q.len() == t * qd && ctx.len() == t * qd);
    assert!(keys.len() >= (s.p + t) * kvd && values.len() >= (s.p + t) * kvd);
    assert!(plan.first.is_multiple_of(TILE_KV), "a cache's first position lies on a tile");
    // The graph scales the queries (gemma) or passes the scale to the op;
    // a softcap divides the op's scale.
    let (q, kq_scale) = if s.scale_queries {
        (std::borrow::Cow::Owned(q.iter().map(|v| v * s.scale).collect::<Vec<f32>>()), 1.0)
    } else {
        (std::borrow::Cow::Borrowed(q), s.scale)
    };
    let scale = s.softcap.map_or(kq_scale, |cap| kq_scale / cap);
    let score = Score { scale, cap: s.softcap };
    let kv = Kv { keys, values, kvd };
    let visible = |i: usize| s.first_visible(i)..s.p + i + 1;
    match plan.path() {
        FlashPath::Tiled => {
            // Tasks of up to 64 tokens of one head: each tile of keys and
            // values is read once for them.
            let mut rows: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(t * heads);
            for (i, row) in ctx.chunks_exact_mut(hd).enumerate() {
                rows.push((i / heads, i % heads, row));
            }
            rows.sort_by_key(|&(i, h, _)| (h, i));
            let mut tasks: Vec<Vec<(usize, usize, &mut [f32])>> = Vec::new();
            for r in rows {
                match tasks.last_mut() {
                    Some(task) if task.len() < TILE_Q && task[0].1 == r.1 => task.push(r),
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
                tiled(&qs, &spans, &kv, off, score, &mut outs);
            });
        }
        FlashPath::OneRow => {
            ctx.par_chunks_exact_mut(hd).enumerate().for_each(|(r, out)| {
                let (i, h) = (r / heads, r % heads);
                let q16: Vec<f32> = q[i * qd + h * hd..i * qd + (h + 1) * hd].iter().map(|&v| round_f16(v)).collect();
                let part = one_row(&q16, &kv, h / group * hd, visible(i), score);
                part.finish(out);
            });
        }
        FlashPath::Split => {
            assert_eq!(t, 1, "the split path is one token's");
            let chunk = plan.n_kv.div_ceil(plan.threads.max(1));
            let seen = visible(0);
            ctx.par_chunks_exact_mut(hd).enumerate().for_each(|(h, out)| {
                let q16: Vec<f32> = q[h * hd..(h + 1) * hd].iter().map(|&v| round_f16(v)).collect();
                let mut merged = Partial::empty(hd);
                for c in 0..plan.threads.max(1) {
                    // Chunk c's cells, as positions from the first held.
                    let (a, b) = (c * chunk, ((c + 1) * chunk).min(plan.n_kv));
                    let (a, b) =
                        (a.saturating_sub(plan.first).max(seen.start), b.saturating_sub(plan.first).min(seen.end));
                    if a >= b {
                        continue;
                    }
                    merged.merge(&one_row(&q16, &kv, h / group * hd, a..b, score));
                }
                merged.finish(out);
            });
        }
    }
}

/// The cache as flash attention reads it.
struct Kv<'a> {
    keys: &'a [f32],
    values: &'a [f32],
    kvd: usize,
}

impl Kv<'_> {
    fn key(&self, j: usize, off: usize, hd: usize) -> &[f32] {
        &self.keys[j * self.kvd + off..j * self.kvd + off + hd]
    }

    fn value(&self, j: usize, off: usize, hd: usize) -> &[f32] {
        &self.values[j * self.kvd + off..j * self.kvd + off + hd]
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
        for (o, a) in out.iter_mut().zip(&self.acc) {
            *o = a * inv;
        }
    }
}

/// llama.cpp's one-row path over positions `js` (in order): q16 the query
/// rounded to f16, the context accumulated in f16.
fn one_row(q16: &[f32], kv: &Kv, off: usize, js: std::ops::Range<usize>, score: Score) -> Partial {
    let hd = q16.len();
    let mut p = Partial::empty(hd);
    for j in js {
        let s = score.of(mirror::dot_f16(kv.key(j, off, hd), q16));
        let (mut ms, mut vs) = (1f32, 1f32);
        if s > p.max {
            let old = p.max;
            p.max = s;
            ms = (old - s).exp();
            scale_f16(&mut p.acc, ms);
        } else {
            vs = (s - p.max).exp();
        }
        mad_f16(&mut p.acc, kv.value(j, off, hd), vs);
        p.sum = p.sum.mul_add(ms, vs);
    }
    p
}

/// y = y·v, each element rounded to f16 (`ggml_vec_scale_f16`).
fn scale_f16(y: &mut [f32], v: f32) {
    y.iter_mut().for_each(|y| *y = round_f16(*y * v));
}

/// y += x·v, each element fused and rounded to f16 (`ggml_vec_mad_f16`:
/// 64 at a time in f32 vectors, the rest one by one).
fn mad_f16(y: &mut [f32], x: &[f32], v: f32) {
    let whole = y.len() / LANES * LANES;
    for (y, x) in y[..whole].iter_mut().zip(x) {
        *y = round_f16(x.mul_add(v, *y));
    }
    for (y, x) in y[whole..].iter_mut().zip(&x[whole..]) {
        *y = round_f16(x.mul_add(v, *y));
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
    let mut kq = [0f32; TILE_KV];
    // Tiles start on multiples of 64, absolute ones too (the first
    // position held is one).
    let mut t0 = lo / TILE_KV * TILE_KV;
    while t0 < hi {
        let t1 = (t0 + TILE_KV).min(hi);
        for (j, col) in (t0..t1).enumerate() {
            for (d, &k) in kv.key(col, off, hd).iter().enumerate() {
                kt[d * TILE_KV + j] = k;
            }
        }
        kt.chunks_exact_mut(TILE_KV).for_each(|r| r[t1 - t0..].fill(0.0));
        for ((q, span), p) in qs.iter().zip(spans).zip(parts.iter_mut()) {
            let (a, b) = (span.start.max(t0), span.end.min(t1));
            if a >= b {
                continue;
            }
            tile_scores(q, &kt, &mut kq);
            for (j, v) in kq.iter_mut().enumerate() {
                *v = if (a..b).contains(&(t0 + j)) { score.of(*v) } else { f32::NEG_INFINITY };
            }
            let tile_max = kq.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            if tile_max == f32::NEG_INFINITY {
                continue;
            }
            let max = p.max.max(tile_max);
            if max > p.max {
                let ms = (p.max - max).exp();
                p.acc.iter_mut().for_each(|a| *a *= ms);
                p.sum *= ms;
            }
            p.max = max;
            let mut sum = 0f64;
            for g in kq.chunks_exact_mut(16) {
                sum += mirror::exp_sum16(g, max) as f64;
            }
            p.sum = (p.sum as f64 + sum) as f32;
            for j in a..b {
                add_scaled(&mut p.acc, kv.value(j, off, hd), kq[j - t0]);
            }
        }
        t0 += TILE_KV;
    }
    for (p, out) in parts.iter().zip(outs.iter_mut()) {
        p.finish(out);
    }
}

/// out[j] = Σ_d q[d]·kt[d, j], one fused chain over d from 0 for each of
/// the tile's 64 positions (llama.cpp's small f32 GEMM, lane by lane).
fn tile_scores(q: &[f32], kt: &[f32], out: &mut [f32; TILE_KV]) {
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: the active path has AVX2 and FMA (checked when it was set
        // or detected).
        return unsafe { tile_scores_fma(q, kt, out) };
    }
    tile_scores_plain(q, kt, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_scores_fma(q: &[f32], kt: &[f32], out: &mut [f32; TILE_KV]) {
    tile_scores_plain(q, kt, out)
}

#[inline(always)]
fn tile_scores_plain(q: &[f32], kt: &[f32], out: &mut [f32; TILE_KV]) {
    let mut acc = [0f32; TILE_KV];
    for (&qd, row) in q.iter().zip(kt.chunks_exact(TILE_KV)) {
        for (a, &k) in acc.iter_mut().zip(row) {
            *a = qd.mul_add(k, *a);
        }
    }
    *out = acc;
}

/// acc += p·v, each element fused.
fn add_scaled(acc: &mut [f32], v: &[f32], p: f32) {
    #[cfg(target_arch = "x86_64")]
    if crate::active_path().uses_avx2() {
        // SAFETY: as in `tile_scores`.
        return unsafe { add_scaled_fma(acc, v, p) };
    }
    add_scaled_plain(acc, v, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_scaled_fma(acc: &mut [f32], v: &[f32], p: f32) {
    add_scaled_plain(acc, v, p)
}

#[inline(always)]
fn add_scaled_plain(acc: &mut [f32], v: &[f32], p: f32) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a = p.mul_add(x, *a);
    }
}
