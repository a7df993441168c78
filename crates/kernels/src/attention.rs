//! Causal self-attention over a key/value cache, in three steps the trace
//! sees apart: scores = q·kᵀ · scale, probabilities = softmax(scores + mask),
//! context = probabilities · v.
//!
//! The exact precision takes the f32 dot product of the active path and a
//! softmax with its sum in f64. The fast precision does what llama.cpp's CPU
//! backend does, in its order ([`crate::mirror`]): V cached transposed
//! (one column per position, padded to [`VALUE_PAD`]), 16-lane dot products,
//! its exp approximation, and — for the models whose graph does so — the
//! queries scaled before Q·Kᵀ rather than the scores after.
//!
//! Dimension legend: T tokens in this step, P positions already cached,
//! Tkv = P + T, H / Hkv query / key-value heads, hd head dim.

use rayon::prelude::*;

use crate::fast::FastKernels;
use crate::ExactKernels;

/// The transposed V cache pads positions to a multiple of this, as
/// llama.cpp pads its cache.
pub const VALUE_PAD: usize = 64;

/// Query rows per block of the fast scores and context: each block starts
/// at its first row's window, so window layers skip what they cannot see.
const SCORE_ROWS: usize = 16;
const CONTEXT_ROWS: usize = 16;

/// One attention step's sizes and the model's settings for it.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    /// T: tokens in this step.
    pub t: usize,
    /// P: positions already in the cache; this step's tokens sit at P ..
    pub p: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub hd: usize,
    /// Sliding window in tokens, for a layer that attends through one.
    pub window: Option<usize>,
    /// Multiplies q·k (1/√hd, or the model's own).
    pub scale: f32,
    /// scores = tanh(scores / cap) · cap (gemma2).
    pub softcap: Option<f32>,
    /// llama.cpp's graph for this model scales the queries before Q·Kᵀ
    /// (gemma3); the fast precision follows it, the exact one scales the
    /// scores (the same mathematics).
    pub scale_queries: bool,
    /// Compute the scores of future positions too (a trace asks for the
    /// pre-mask scores); the mask zeroes their probabilities either way.
    pub full: bool,
    /// Positions after this step's last token that the scores hold too
    /// (zero but where a trace takes a long step in blocks of rows: each
    /// block's scores are as wide as the whole step's). They are scored
    /// only when `full`; their probabilities are 0.
    pub future: usize,
}

impl AttnShape {
    /// Tkv: the positions the scores hold (attended over, and any future
    /// ones).
    pub fn tkv(&self) -> usize {
        self.p + self.t + self.future
    }

    /// Heads are worth a thread each only past one token's worth of work.
    fn min_heads_per_task(&self) -> usize {
        if self.t * self.tkv() < 4096 {
            self.heads
        } else {
            1
        }
    }

    /// The first position query row `i` sees: its sliding window's start.
    pub fn first_visible(&self, i: usize) -> usize {
        self.window.map_or(0, |win| (self.p + i + 1).saturating_sub(win))
    }

    /// The first position query row `i` scores against: its window's start,
    /// or 0 when the trace asks for every score. Positions before it are
    /// masked, so their scores are never read: a window layer's cost stays
    /// bounded by its window at any depth.
    fn first_scored(&self, i: usize) -> usize {
        if self.full {
            0
        } else {
            self.first_visible(i)
        }
    }

    /// The last position (exclusive) query row `i` scores against.
    fn scored(&self, i: usize) -> usize {
        if self.full {
            self.tkv()
        } else {
            self.p + i + 1
        }
    }
}

/// How a precision keeps the cached values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueLayout {
    /// [Tkv, Hkv·hd]: one row per position.
    Rows,
    /// [Hkv·hd, stride]: one column per position, zeros past the last.
    Columns,
}

/// One layer's cached values, in the layout they were stored in.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    Rows(&'a [f32]),
    Columns { data: &'a [f32], stride: usize },
}

/// The attention of one precision.
pub trait Attention {
    /// The layout [`Attention::attn_context`] reads the values in.
    fn value_layout(&self) -> ValueLayout;
    /// scores[h, i, j] = q[i, h]·k[j, h/(H/Hkv)] · scale (then softcap), for
    /// the positions each query sees (all of them when `s.full`).
    /// q [T, H·hd], keys [Tkv, Hkv·hd], scores [H, T, Tkv].
    fn attn_scores(&self, s: &AttnShape, q: &[f32], keys: &[f32], scores: &mut [f32]);
    /// probs = softmax(scores + causal/sliding mask), in place; hidden
    /// positions become 0.
    fn attn_softmax(&self, s: &AttnShape, scores: &mut [f32]);
    /// ctx[i, h] = Σ_j probs[h, i, j] · v[j, h/(H/Hkv)]; ctx [T, H·hd].
    fn attn_context(&self, s: &AttnShape, probs: &[f32], values: Values, ctx: &mut [f32]);
}

impl Attention for ExactKernels {
    fn value_layout(&self) -> ValueLayout {
        ValueLayout::Rows
    }

    fn attn_scores(&self, s: &AttnShape, q: &[f32], keys: &[f32], scores: &mut [f32]) {
        let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
        let (qd, kvd, group) = (s.heads * hd, s.kv_heads * hd, s.heads / s.kv_heads);
        check_sizes(s, q, keys, scores);
        let dot = crate::f32_dot_fn();
        if t == 1 {
            decode_scores(s, q, keys, scores, |qg, ks, n, part| {
                for (g, row) in part.chunks_exact_mut(n).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = dot(&qg[g * hd..(g + 1) * hd], &ks[j * kvd..j * kvd + hd]);
                    }
                }
            });
            for sh in scores.chunks_exact_mut(tkv) {
                scale_and_cap(&mut sh[s.first_scored(0)..s.scored(0)], Some(s.scale), s.softcap);
            }
            return;
        }
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, sh)| {
            let kh = h / group;
            for i in 0..t {
                let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                let row = &mut sh[i * tkv..(i + 1) * tkv];
                let (from, to) = (s.first_scored(i), s.scored(i));
                for (j, v) in row.iter_mut().enumerate().take(to).skip(from) {
                    *v = dot(qi, &keys[j * kvd + kh * hd..j * kvd + (kh + 1) * hd]);
                }
                scale_and_cap(&mut row[from..to], Some(s.scale), s.softcap);
            }
        });
    }

    fn attn_softmax(&self, s: &AttnShape, scores: &mut [f32]) {
        let (t, tkv) = (s.t, s.tkv());
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).for_each(|sh| {
            for i in 0..t {
                // Visible: first..=p+i; the rest become 0.
                let (first, end) = (s.first_visible(i), s.p + i + 1);
                let row = &mut sh[i * tkv..(i + 1) * tkv];
                row[..first].fill(0.0);
                row[end..].fill(0.0);
                softmax_in_place(&mut row[first..end]);
            }
        });
    }

    fn attn_context(&self, s: &AttnShape, probs: &[f32], values: Values, ctx: &mut [f32]) {
        let Values::Rows(vc) = values else { panic!("the exact precision reads values as rows") };
        let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
        let (kvd, group) = (s.kv_heads * hd, s.heads / s.kv_heads);
        assert!(vc.len() >= tkv * kvd && probs.len() == s.heads * t * tkv);
        if t == 1 {
            decode_context_rows(s, probs, vc, ctx);
            return;
        }
        let mut per_head = vec![0f32; s.heads * t * hd]; //                       [H, T, hd]
        per_head.par_chunks_mut(t * hd).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, out)| {
            let kh = h / group;
            for i in 0..t {
                let probs = &probs[(h * t + i) * tkv..(h * t + i + 1) * tkv];
                let o = &mut out[i * hd..(i + 1) * hd];
                for (j, &pr) in probs.iter().enumerate().skip(s.first_visible(i)) {
                    if pr == 0.0 {
                        continue;
                    }
                    let vj = &vc[j * kvd + kh * hd..j * kvd + (kh + 1) * hd];
                    for (o, v) in o.iter_mut().zip(vj) {
                        *o += pr * v;
                    }
                }
            }
        });
        interleave_heads(s, &per_head, ctx);
    }
}

impl Attention for FastKernels {
    fn value_layout(&self) -> ValueLayout {
        ValueLayout::Columns
    }

    fn attn_scores(&self, s: &AttnShape, q: &[f32], keys: &[f32], scores: &mut [f32]) {
        let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
        let (qd, kvd, group) = (s.heads * hd, s.kv_heads * hd, s.heads / s.kv_heads);
        check_sizes(s, q, keys, scores);
        // The queries scaled first where llama.cpp's graph does so.
        let scaled: Vec<f32>;
        let (q, post_scale) = if s.scale_queries {
            scaled = q.iter().map(|v| v * s.scale).collect();
            (scaled.as_slice(), None)
        } else {
            (q, Some(s.scale))
        };
        if t == 1 {
            decode_scores(s, q, keys, scores, |qg, ks, n, part| {
                crate::mirror::dot_f32_grid(qg, hd, ks, kvd, hd, &vec![n; group], part, n)
            });
            for sh in scores.chunks_exact_mut(tkv) {
                scale_and_cap(&mut sh[s.first_scored(0)..s.scored(0)], post_scale, s.softcap);
            }
            return;
        }
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, sh)| {
            let kh = h / group;
            // Each score is one dot product, whatever block computes it:
            // blocks of rows start at their first row's window.
            for i0 in (0..t).step_by(SCORE_ROWS) {
                let i1 = (i0 + SCORE_ROWS).min(t);
                let from = s.first_scored(i0);
                let lens: Vec<usize> = (i0..i1).map(|i| s.scored(i) - from).collect();
                crate::mirror::dot_f32_grid(
                    &q[i0 * qd + h * hd..],
                    qd,
                    &keys[from * kvd + kh * hd..],
                    kvd,
                    hd,
                    &lens,
                    &mut sh[i0 * tkv + from..],
                    tkv,
                );
            }
            for i in 0..t {
                scale_and_cap(&mut sh[i * tkv + s.first_scored(i)..i * tkv + s.scored(i)], post_scale, s.softcap);
            }
        });
    }

    fn attn_softmax(&self, s: &AttnShape, scores: &mut [f32]) {
        let (t, tkv) = (s.t, s.tkv());
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).for_each(|sh| {
            for i in 0..t {
                let qpos = s.p + i;
                let row = &mut sh[i * tkv..(i + 1) * tkv];
                // Visible: first..=qpos; the rest −∞ before the softmax.
                // Whole groups of 16 before the window would add e^−∞ = 0
                // to the total: they are set to 0 and skipped.
                let first = s.first_visible(i);
                let skip = first / 16 * 16;
                row[skip..first].fill(f32::NEG_INFINITY);
                row[qpos + 1..].fill(f32::NEG_INFINITY);
                crate::mirror::softmax_visible(&mut row[skip..], qpos + 1 - skip);
                row[..skip].fill(0.0);
            }
        });
    }

    fn attn_context(&self, s: &AttnShape, probs: &[f32], values: Values, ctx: &mut [f32]) {
        let Values::Columns { data: vt, stride } = values else { panic!("the fast precision reads values as columns") };
        let (t, tkv, hd, p) = (s.t, s.tkv(), s.hd, s.p);
        let group = s.heads / s.kv_heads;
        // Each output is a dot product over positions, padded with zeros to a
        // multiple of 64 as llama.cpp pads its cache; one token's outputs
        // are summed as its dot product does, several tokens' as its tiled
        // matmul does.
        let tpad = tkv.div_ceil(VALUE_PAD) * VALUE_PAD;
        assert!(stride >= tpad && vt.len() >= s.kv_heads * hd * stride && probs.len() == s.heads * t * tkv);
        if t == 1 {
            decode_context(s, probs, vt, stride, ctx);
            return;
        }
        let mut per_head = vec![0f32; s.heads * t * hd]; //                       [H, T, hd]
        per_head.par_chunks_mut(t * hd).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, out)| {
            let kh = h / group;
            // Past the last visible position the probabilities are zeros,
            // which leave the 16 lanes as they are: each sum stops at the
            // first multiple of 16 beyond it. The rows are padded to tpad.
            let lens: Vec<usize> = (0..t).map(|i| (p + i + 1).div_ceil(16) * 16).collect();
            let sh = &probs[h * t * tkv..(h + 1) * t * tkv];
            let padded: Vec<f32>;
            let (rows, row_len) = if tkv.is_multiple_of(16) {
                // Every length fits in its row as it is.
                (sh, tkv)
            } else {
                padded = (0..t).flat_map(|i| sh[i * tkv..(i + 1) * tkv].iter().copied().chain([0.0; 16])).collect();
                (padded.as_slice(), tkv + 16)
            };
            // Blocks of rows start at the first multiple of 16 of their first
            // row's window: the zeros before it leave each sum's 16 lanes
            // as they are.
            for i0 in (0..t).step_by(CONTEXT_ROWS) {
                let i1 = (i0 + CONTEXT_ROWS).min(t);
                let skip = s.first_visible(i0) / 16 * 16;
                let lens: Vec<usize> = lens[i0..i1].iter().map(|l| l - skip).collect();
                crate::mirror::dot_f32_tiled_grid(
                    &rows[i0 * row_len + skip..],
                    row_len,
                    &lens,
                    &vt[kh * hd * stride + skip..],
                    stride,
                    hd,
                    &mut out[i0 * hd..i1 * hd],
                    hd,
                );
            }
        });
        interleave_heads(s, &per_head, ctx);
    }
}

/// Keys per task of a decoding step's scores.
const DECODE_KEYS: usize = 256;
/// Value columns per task of a decoding step's context.
const DECODE_COLUMNS: usize = 32;

/// The scores of one token (T = 1): the heads that share a key head are
/// scored together, so each key is read once for all of them; tasks take
/// runs of keys. `fill(q_group, keys_from, n, part)` writes part[g·n + j] =
/// q_g·k_j for the group's heads g and n keys; every score is the same dot
/// product as one head at a time.
fn decode_scores(
    s: &AttnShape,
    q: &[f32],
    keys: &[f32],
    scores: &mut [f32],
    fill: impl Fn(&[f32], &[f32], usize, &mut [f32]) + Sync,
) {
    let (tkv, hd, kvd, group) = (s.tkv(), s.hd, s.kv_heads * s.hd, s.heads / s.kv_heads);
    let keys_run = |kh: usize, j0: usize, j1: usize, part: &mut [f32]| {
        fill(&q[kh * group * hd..(kh + 1) * group * hd], &keys[j0 * kvd + kh * hd..], j1 - j0, part)
    };
    by_key_head(s, s.first_scored(0)..s.scored(0), DECODE_KEYS, scores, tkv, keys_run);
}

/// One decoding step's work in runs of `range` per key head, in parallel:
/// `work(kh, a, b, part)` fills part [group, b − a] for the heads of key head
/// kh, which land in `out` at head h's row (`row` apart), columns a..b.
fn by_key_head(
    s: &AttnShape,
    range: std::ops::Range<usize>,
    step: usize,
    out: &mut [f32],
    row: usize,
    work: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
) {
    let group = s.heads / s.kv_heads;
    let runs: Vec<(usize, usize, usize)> = (0..s.kv_heads)
        .flat_map(|kh| range.clone().step_by(step).map(move |a| (kh, a, (a + step).min(range.end))))
        .collect();
    let parts: Vec<Vec<f32>> = runs
        .par_iter()
        .map(|&(kh, a, b)| {
            let mut part = vec![0f32; group * (b - a)]; //                    [group, b − a]
            work(kh, a, b, &mut part);
            part
        })
        .collect();
    for (&(kh, a, b), part) in runs.iter().zip(&parts) {
        for (g, r) in part.chunks_exact(b - a).enumerate() {
            let h = kh * group + g;
            out[h * row + a..h * row + b].copy_from_slice(r);
        }
    }
}

/// The fast context of one token (T = 1): each value column is read once
/// for the heads that share it (dot products in pairs of heads, the same
/// sums as one head at a time: x·y = y·x in every rounding). Zero
/// probabilities before the window leave the dot product's 64 lanes as
/// they are, so each sum starts at the last multiple of 64 at or before it.
fn decode_context(s: &AttnShape, probs: &[f32], vt: &[f32], stride: usize, ctx: &mut [f32]) {
    let (tkv, hd, group) = (s.tkv(), s.hd, s.heads / s.kv_heads);
    let tpad = tkv.div_ceil(VALUE_PAD) * VALUE_PAD;
    let skip = s.first_visible(0) / crate::mirror::LANES * crate::mirror::LANES;
    let len = tpad - skip;
    let mut rows = vec![0f32; s.heads * len]; //                              [H, len]
    for (h, row) in rows.chunks_exact_mut(len).enumerate() {
        row[..tkv - skip].copy_from_slice(&probs[h * tkv + skip..(h + 1) * tkv]);
    }
    let columns = |kh: usize, e0: usize, e1: usize, part: &mut [f32]| {
        let mut o = vec![0f32; group];
        for e in e0..e1 {
            let c = kh * hd + e;
            let col = &vt[c * stride + skip..c * stride + tpad];
            crate::mirror::dot_f32_rows(col, &rows[kh * group * len..(kh + 1) * group * len], len, &mut o);
            for (g, v) in o.iter().enumerate() {
                part[g * (e1 - e0) + e - e0] = *v;
            }
        }
    };
    by_key_head(s, 0..hd, DECODE_COLUMNS, ctx, hd, columns);
}

/// The exact context of one token (T = 1) from values kept as rows: each
/// value row is read once for the heads that share it; tasks take runs of
/// its elements. Each output element sums p·v over the positions in order,
/// skipping zero probabilities, as one head at a time does.
fn decode_context_rows(s: &AttnShape, probs: &[f32], vc: &[f32], ctx: &mut [f32]) {
    let (tkv, hd, kvd, group) = (s.tkv(), s.hd, s.kv_heads * s.hd, s.heads / s.kv_heads);
    let from = s.first_visible(0);
    let elements = |kh: usize, e0: usize, e1: usize, part: &mut [f32]| {
        for j in from..tkv {
            let v = &vc[j * kvd + kh * hd + e0..j * kvd + kh * hd + e1];
            for (g, o) in part.chunks_exact_mut(e1 - e0).enumerate() {
                let pr = probs[(kh * group + g) * tkv + j];
                if pr == 0.0 {
                    continue;
                }
                for (o, v) in o.iter_mut().zip(v) {
                    *o += pr * v;
                }
            }
        }
    };
    by_key_head(s, 0..hd, DECODE_COLUMNS, ctx, hd, elements);
}

fn check_sizes(s: &AttnShape, q: &[f32], keys: &[f32], scores: &mut [f32]) {
    assert!(s.kv_heads > 0 && s.heads.is_multiple_of(s.kv_heads), "{} heads over {} kv heads", s.heads, s.kv_heads);
    assert_eq!(q.len(), s.t * s.heads * s.hd);
    assert!(keys.len() >= s.tkv() * s.kv_heads * s.hd);
    assert_eq!(scores.len(), s.heads * s.t * s.tkv());
}

/// v = v · scale (where the scores are scaled after Q·Kᵀ), then the softcap.
fn scale_and_cap(row: &mut [f32], scale: Option<f32>, cap: Option<f32>) {
    for s in row.iter_mut() {
        let mut v = *s;
        if let Some(scale) = scale {
            v *= scale;
        }
        if let Some(cap) = cap {
            v = (v / cap).tanh() * cap;
        }
        *s = v;
    }
}

/// [H, T, hd] → [T, H·hd].
fn interleave_heads(s: &AttnShape, per_head: &[f32], ctx: &mut [f32]) {
    let (t, hd, qd) = (s.t, s.hd, s.heads * s.hd);
    assert_eq!(ctx.len(), t * qd);
    for h in 0..s.heads {
        for i in 0..t {
            ctx[i * qd + h * hd..i * qd + (h + 1) * hd]
                .copy_from_slice(&per_head[(h * t + i) * hd..(h * t + i + 1) * hd]);
        }
    }
}

/// In-place softmax of a row of visible positions, sum in f64.
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0f64;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}
