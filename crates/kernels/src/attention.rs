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

use plumb_quant::blocks::round_f16;
use rayon::prelude::*;

use crate::fast::FastKernels;
use crate::{ExactKernels, Precision};

/// The transposed V cache pads positions to a multiple of this, as
/// llama.cpp pads its cache.
pub const VALUE_PAD: usize = 64;

/// Tokens per task of the prompt scores and context (times the heads that
/// share a key head): each key and value is read once per task.
const SCORE_ROWS: usize = 16;
const CONTEXT_ROWS: usize = 16;

/// Keys and value rows per block of the exact prompt scores and context: a
/// block (32 KiB at 256 floats a row) is used by every row of a task while
/// it is in L1/L2.
const EXACT_KEYS: usize = 32;
const EXACT_POSITIONS: usize = 32;

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
    /// The cache holds keys as f16 (already rounded there). The fast
    /// precision then rounds the queries to f16 too, as llama.cpp converts
    /// a product's f32 operand to its f16 weights' type, and sums a row's
    /// last elements past the 64 lanes in f64 as its f16 dot product does.
    pub k_f16: bool,
    /// The cache holds values as f16: the fast precision then rounds the
    /// probabilities to f16 before the context's product, likewise.
    pub v_f16: bool,
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

    /// The same for `n` tasks of the group ones: all on one thread below
    /// one token's worth of work.
    fn min_tasks_per_thread(&self, n: usize) -> usize {
        if self.t * self.tkv() < 4096 {
            n.max(1)
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
        let (qd, kvd) = (s.heads * hd, s.kv_heads * hd);
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
                scale_and_cap(&mut sh[s.first_scored(0)..s.scored(0)], Some(s.scale), s.softcap, Precision::Exact);
            }
            return;
        }
        // Each score is one dot product, whatever task computes it: a task
        // takes the heads of one key head for a block of tokens, and each
        // block of keys goes to all of its rows before the next is read.
        let tasks = group_tasks(s, scores, tkv, |i, h| h * t + i, SCORE_ROWS);
        let min_len = s.min_tasks_per_thread(tasks.len());
        tasks.into_par_iter().with_min_len(min_len).for_each(|mut task| {
            let kh = task.kh;
            let rows: Vec<(usize, usize)> = task.rows().collect();
            let ranges: Vec<_> = rows.iter().map(|&(i, _)| s.first_scored(i)..s.scored(i)).collect();
            let (lo, hi) = (ranges.iter().map(|r| r.start).min(), ranges.iter().map(|r| r.end).max());
            for b0 in (lo.unwrap_or(0)..hi.unwrap_or(0)).step_by(EXACT_KEYS) {
                for ((&(i, h), range), row) in rows.iter().zip(&ranges).zip(task.out.iter_mut()) {
                    let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                    for j in range.start.max(b0)..range.end.min(b0 + EXACT_KEYS) {
                        row[j] = dot(qi, &keys[j * kvd + kh * hd..j * kvd + (kh + 1) * hd]);
                    }
                }
            }
            for (row, range) in task.out.iter_mut().zip(ranges) {
                scale_and_cap(&mut row[range], Some(s.scale), s.softcap, Precision::Exact);
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
                zero(&mut row[..first]);
                row[end..].fill(0.0);
                softmax_in_place(&mut row[first..end]);
            }
        });
    }

    fn attn_context(&self, s: &AttnShape, probs: &[f32], values: Values, ctx: &mut [f32]) {
        let Values::Rows(vc) = values else { panic!("the exact precision reads values as rows") };
        let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
        let kvd = s.kv_heads * hd;
        assert!(vc.len() >= tkv * kvd && probs.len() == s.heads * t * tkv);
        if t == 1 {
            decode_context_rows(s, probs, vc, ctx);
            return;
        }
        // Each output element sums p·v over its row's positions in order,
        // skipping zero probabilities; a task takes the heads of one key
        // head for a block of tokens, and each block of value rows goes to
        // all of its rows (their sums carried on) before the next is read.
        let tasks = group_tasks(s, ctx, hd, |i, h| i * s.heads + h, CONTEXT_ROWS);
        let min_len = s.min_tasks_per_thread(tasks.len());
        tasks.into_par_iter().with_min_len(min_len).for_each(|mut task| {
            let kh = task.kh;
            let rows: Vec<(usize, usize)> = task.rows().collect();
            task.out.iter_mut().for_each(|o| o.fill(0.0));
            let lo = rows.iter().map(|&(i, _)| s.first_visible(i)).min().unwrap_or(0);
            for b0 in (lo..tkv).step_by(EXACT_POSITIONS) {
                for (&(i, h), o) in rows.iter().zip(task.out.iter_mut()) {
                    let probs = &probs[(h * t + i) * tkv..(h * t + i + 1) * tkv];
                    for j in s.first_visible(i).max(b0)..tkv.min(b0 + EXACT_POSITIONS) {
                        let pr = probs[j];
                        if pr == 0.0 {
                            continue;
                        }
                        let vj = &vc[j * kvd + kh * hd..j * kvd + (kh + 1) * hd];
                        for (o, v) in o.iter_mut().zip(vj) {
                            *o += pr * v;
                        }
                    }
                }
            }
        });
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
        // The queries scaled first where llama.cpp's graph does so, then
        // rounded to the cache's f16 where it holds f16.
        let scaled: Vec<f32>;
        let (q, post_scale) = match (s.scale_queries, s.k_f16) {
            (false, false) => (q, Some(s.scale)),
            (pre, f16) => {
                let by = if pre { s.scale } else { 1.0 };
                scaled = q.iter().map(|v| if f16 { round_f16(v * by) } else { v * by }).collect();
                (scaled.as_slice(), if pre { None } else { Some(s.scale) })
            }
        };
        // Against an f16 cache llama.cpp converts the queries to a
        // contiguous f16 copy, so several tokens' scores go through its
        // tiled matmul (a head a multiple of 16 long); one token's, and
        // heads of other lengths, are f16 dot products.
        let tiled_f16 = s.k_f16 && t > 1 && hd.is_multiple_of(16);
        if s.k_f16 && !tiled_f16 && !hd.is_multiple_of(crate::mirror::LANES) {
            // A head shorter than the 64 lanes (or with a tail past them):
            // each score one f16 dot product, row by row.
            f16_scores(s, q, keys, scores);
            for i in 0..t {
                for h in 0..s.heads {
                    let row = &mut scores[(h * t + i) * tkv..(h * t + i + 1) * tkv];
                    scale_and_cap(&mut row[s.first_scored(i)..s.scored(i)], post_scale, s.softcap, Precision::Fast);
                }
            }
            return;
        }
        if t == 1 {
            decode_scores(s, q, keys, scores, |qg, ks, n, part| {
                crate::mirror::dot_f32_grid(qg, hd, ks, kvd, hd, &vec![n; group], part, n)
            });
            for sh in scores.chunks_exact_mut(tkv) {
                scale_and_cap(&mut sh[s.first_scored(0)..s.scored(0)], post_scale, s.softcap, Precision::Fast);
            }
            return;
        }
        // Each score is one dot product, whatever task computes it: a task
        // takes the heads of one key head for a block of tokens, each row
        // from its own window on, and reads each key once for all of them.
        let tasks = group_tasks(s, scores, tkv, |i, h| h * t + i, SCORE_ROWS);
        let min_len = s.min_tasks_per_thread(tasks.len());
        tasks.into_par_iter().with_min_len(min_len).for_each(|mut task| {
            let qs: Vec<&[f32]> = task.rows().map(|(i, h)| &q[i * qd + h * hd..i * qd + (h + 1) * hd]).collect();
            let ranges: Vec<_> = task.rows().map(|(i, _)| s.first_scored(i)..s.scored(i)).collect();
            if tiled_f16 {
                // The task's keys from its first row's first to its last
                // row's last, for every row (scores a row does not see are
                // masked by the softmax).
                let lo = ranges.iter().map(|r| r.start).min().unwrap_or(0);
                let hi = ranges.iter().map(|r| r.end).max().unwrap_or(0);
                if hi > lo {
                    let spans = vec![0..hd; qs.len()];
                    let mut outs: Vec<&mut [f32]> = task.out.iter_mut().map(|o| &mut o[lo..hi]).collect();
                    let ks = &keys[lo * kvd + task.kh * hd..];
                    crate::mirror::dot_f32_tiled_blocked(&qs, &spans, ks, kvd, hi - lo, &mut outs);
                }
            } else {
                crate::mirror::dot_f32_blocked(&qs, &keys[task.kh * hd..], kvd, hd, &ranges, &mut task.out);
            }
            if post_scale.is_some() || s.softcap.is_some() {
                for (row, range) in task.out.iter_mut().zip(ranges) {
                    scale_and_cap(&mut row[range], post_scale, s.softcap, Precision::Fast);
                }
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
                zero(&mut row[..skip]);
            }
        });
    }

    fn attn_context(&self, s: &AttnShape, probs: &[f32], values: Values, ctx: &mut [f32]) {
        let Values::Columns { data: vt, stride } = values else { panic!("the fast precision reads values as columns") };
        // Against f16 values the probabilities are rounded to f16 first.
        let rounded: Vec<f32>;
        let probs = if s.v_f16 {
            rounded = probs.iter().map(|&p| round_f16(p)).collect();
            rounded.as_slice()
        } else {
            probs
        };
        let (t, tkv, hd, p) = (s.t, s.tkv(), s.hd, s.p);
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
        // Each output sums its row's probabilities from the first multiple
        // of 16 of its window (the zeros before it leave the 16 lanes as
        // they are) to its last visible position, then zeros up to the next
        // multiple of 16 (as the cache padding adds them), where its lanes
        // stop. A task takes the heads of one key head for a block of
        // tokens and reads each value column once for all of them, writing
        // straight into their rows of ctx.
        let tasks = group_tasks(s, ctx, hd, |i, h| i * s.heads + h, CONTEXT_ROWS);
        let min_len = s.min_tasks_per_thread(tasks.len());
        tasks.into_par_iter().with_min_len(min_len).for_each(|mut task| {
            let rows: Vec<&[f32]> =
                task.rows().map(|(i, h)| &probs[(h * t + i) * tkv..(h * t + i + 1) * tkv]).collect();
            let spans: Vec<_> = task.rows().map(|(i, _)| s.first_visible(i) / 16 * 16..p + i + 1).collect();
            crate::mirror::dot_f32_tiled_blocked(
                &rows,
                &spans,
                &vt[task.kh * hd * stride..],
                stride,
                hd,
                &mut task.out,
            );
        });
    }
}

/// A task of a prompt step's attention: the rows of key head `kh`'s query
/// heads for the tokens `tokens`, in the order (token, head), so that where
/// a group has four heads four rows in a row are one token's.
struct GroupRows<'a> {
    kh: usize,
    group: usize,
    tokens: std::ops::Range<usize>,
    /// Each row's part of the output, in the same order.
    out: Vec<&'a mut [f32]>,
}

impl GroupRows<'_> {
    /// (token, head) of each row.
    fn rows(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let heads = self.kh * self.group..(self.kh + 1) * self.group;
        self.tokens.clone().flat_map(move |i| heads.clone().map(move |h| (i, h)))
    }
}

/// `out` cut into rows of `len` — row `index(i, h)` that of token i and
/// head h — and handed out by key head and blocks of `tokens` tokens, each
/// row to one task.
fn group_tasks<'a>(
    s: &AttnShape,
    out: &'a mut [f32],
    len: usize,
    index: impl Fn(usize, usize) -> usize,
    tokens: usize,
) -> Vec<GroupRows<'a>> {
    let group = s.heads / s.kv_heads;
    assert_eq!(out.len(), s.t * s.heads * len);
    let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(len).collect();
    let mut tasks = Vec::new();
    for kh in 0..s.kv_heads {
        for i0 in (0..s.t).step_by(tokens) {
            let mut task = GroupRows { kh, group, tokens: i0..(i0 + tokens).min(s.t), out: Vec::new() };
            task.out = task.rows().map(|(i, h)| std::mem::take(&mut rows[index(i, h)])).collect();
            tasks.push(task);
        }
    }
    tasks
}

/// Every score of a step one [`crate::mirror::dot_f16`] at a time (heads
/// whose length leaves a tail past the 64 lanes, against an f16 cache).
fn f16_scores(s: &AttnShape, q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
    let (qd, kvd, group) = (s.heads * hd, s.kv_heads * hd, s.heads / s.kv_heads);
    scores.par_chunks_mut(t * tkv).enumerate().for_each(|(h, sh)| {
        let kh = h / group;
        for i in 0..t {
            let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
            for j in s.first_scored(i)..s.scored(i) {
                let kj = &keys[j * kvd + kh * hd..j * kvd + (kh + 1) * hd];
                sh[i * tkv + j] = crate::mirror::dot_f16(qi, kj);
            }
        }
    });
}

/// The fast precision's scores against keys kept in a block format
/// without flash attention (llama.cpp's `-ctk q8_0|q4_0 -fa off`): its
/// matrix product takes each query row (scaled first where the graph
/// scales it, then turned by the keys' Walsh-Hadamard rotation of
/// `rotate` rows where they went through one) as Q8_0 blocks against the
/// key blocks, the blocks' dot product in the same order for one token as
/// for many; then the scale and softcap as over any cache. keys are one
/// row of kv_dim elements per position, as [`Attention::attn_scores`]
/// reads them.
pub fn block_scores(
    s: &AttnShape,
    q: &[f32],
    ty: plumb_quant::GgmlType,
    blocks: &[u8],
    rotate: Option<usize>,
    scores: &mut [f32],
) {
    let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
    let (qd, kvd, group) = (s.heads * hd, s.kv_heads * hd, s.heads / s.kv_heads);
    assert!(q.len() == t * qd && scores.len() == s.heads * t * tkv, "block_scores: sizes");
    let mut q = if s.scale_queries { q.iter().map(|v| v * s.scale).collect() } else { q.to_vec() };
    let post_scale = if s.scale_queries { None } else { Some(s.scale) };
    if let Some(n) = rotate {
        crate::flash::fwht(&mut q, n);
    }
    let keys = crate::flash::Blocks::new(ty, blocks, kvd, hd);
    scores.par_chunks_mut(t * tkv).enumerate().for_each(|(h, sh)| {
        for i in 0..t {
            let qb = crate::flash::Blocks::query(&q[i * qd + h * hd..i * qd + (h + 1) * hd]);
            let range = s.first_scored(i)..s.scored(i);
            for j in range.clone() {
                sh[i * tkv + j] = keys.score(j, h / group, &qb);
            }
            scale_and_cap(&mut sh[i * tkv..(i + 1) * tkv][range], post_scale, s.softcap, Precision::Fast);
        }
    });
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
/// for the heads that share it (tiles of heads × columns, the same sums as
/// one head at a time: x·y = y·x in every rounding). Zero
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
        let c0 = kh * hd + e0;
        let heads = &rows[kh * group * len..(kh + 1) * group * len];
        crate::mirror::dot_f32_grid(
            heads,
            len,
            &vt[c0 * stride + skip..],
            stride,
            len,
            &vec![e1 - e0; group],
            part,
            e1 - e0,
        );
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

/// v = v · scale (where the scores are scaled after Q·Kᵀ), then the softcap
/// as `precision` computes it ([`crate::ops::softcap`]).
fn scale_and_cap(row: &mut [f32], scale: Option<f32>, cap: Option<f32>, precision: Precision) {
    if let Some(scale) = scale {
        row.iter_mut().for_each(|v| *v *= scale);
    }
    crate::ops::softcap(row, cap, precision);
}

/// Sets `xs` to zeros, writing only where it is not already 0: positions
/// before a window are most of a long row, and the caller's buffer
/// usually holds zeros there (a fresh allocation, or the last step's
/// probabilities) — reading them costs less than writing them again.
fn zero(xs: &mut [f32]) {
    for c in xs.chunks_mut(256) {
        if c.iter().fold(0, |a, v| a | v.to_bits()) != 0 {
            c.fill(0.0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::{dot_f32, scalar_dot_tiled, softmax};

    /// A one-token step of `heads` query heads on `kv_heads` key heads of
    /// `hd`, scale 1/8, no cap, queries unscaled: the tests set the rest.
    fn heads_of(heads: usize, kv_heads: usize, hd: usize) -> AttnShape {
        AttnShape {
            t: 1,
            p: 0,
            heads,
            kv_heads,
            hd,
            window: None,
            scale: 0.125,
            softcap: None,
            scale_queries: false,
            full: false,
            future: 0,
            k_f16: false,
            v_f16: false,
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 500.0 - 2.0).collect()
    }

    /// The exact precision's attention (one token and a prompt), task by task and
    /// block by block, against each number's plain definition: every score
    /// one dot product of the active path times the scale, every output a
    /// sum of p·v over its row's positions in order.
    #[test]
    fn exact_prompt_attention_is_each_numbers_plain_sum_bit_for_bit() {
        let k = ExactKernels { path: crate::active_path() };
        let dot = crate::f32_dot_fn();
        for (heads, kv_heads, hd) in [(4, 1, 256), (4, 2, 64), (3, 1, 72)] {
            for (t, p, window, full) in [
                (1, 0, None, false),
                (1, 300, Some(100), false),
                (2, 0, None, false),
                (17, 0, Some(8), false),
                (40, 100, Some(20), true),
                (70, 45, None, false),
            ] {
                let s = AttnShape { t, p, window, full, softcap: Some(30.0), ..heads_of(heads, kv_heads, hd) };
                let (tkv, qd, kvd, group) = (s.tkv(), heads * hd, kv_heads * hd, heads / kv_heads);
                let what = format!("{heads}/{kv_heads} heads of {hd}, t {t}, p {p}, window {window:?}, full {full}");
                let q = values(t * qd, 4);
                let keys = values(tkv * kvd, 5);
                let vc = values(tkv * kvd, 6);
                let mut scores = vec![0f32; heads * t * tkv];
                k.attn_scores(&s, &q, &keys, &mut scores);
                for h in 0..heads {
                    let kh = h / group;
                    for i in 0..t {
                        let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                        for j in s.first_scored(i)..s.scored(i) {
                            let mut want = [dot(qi, &keys[j * kvd + kh * hd..j * kvd + (kh + 1) * hd])];
                            scale_and_cap(&mut want, Some(s.scale), s.softcap, Precision::Exact);
                            let got = scores[(h * t + i) * tkv + j];
                            assert_eq!(want[0].to_bits(), got.to_bits(), "{what}: score {h} {i} {j}");
                        }
                    }
                }
                k.attn_softmax(&s, &mut scores);
                let mut ctx = vec![f32::NAN; t * qd];
                k.attn_context(&s, &scores, Values::Rows(&vc), &mut ctx);
                for h in 0..heads {
                    let kh = h / group;
                    for i in 0..t {
                        let mut want = vec![0f32; hd];
                        for j in s.first_visible(i)..tkv {
                            let pr = scores[(h * t + i) * tkv + j];
                            if pr != 0.0 {
                                for (o, v) in want.iter_mut().zip(&vc[j * kvd + kh * hd..]) {
                                    *o += pr * v;
                                }
                            }
                        }
                        let got = &ctx[i * qd + h * hd..i * qd + (h + 1) * hd];
                        assert!(
                            want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{what}: context {i} {h}"
                        );
                    }
                }
            }
        }
    }

    /// The fast precision's attention of one token (T = 1), against each
    /// number's plain definition: every score one [`dot_f32`] of the scaled
    /// query, every output one [`dot_f32`] of the probabilities and the
    /// value column from the last multiple of 64 at or before the window's
    /// start to the cache's padded length (zeros past the last position).
    #[test]
    fn fast_decode_attention_is_each_numbers_plain_sum_bit_for_bit() {
        let k = FastKernels { path: crate::active_path() };
        for (heads, kv_heads, hd) in [(4, 1, 256), (4, 2, 64), (3, 1, 64), (2, 2, 128), (8, 1, 64)] {
            for (p, window) in [(0, None), (63, None), (200, Some(70)), (700, Some(512)), (1000, None)] {
                let s = AttnShape { p, window, scale_queries: true, ..heads_of(heads, kv_heads, hd) };
                let (tkv, qd, kvd, group) = (s.tkv(), heads * hd, kv_heads * hd, heads / kv_heads);
                let what = format!("{heads}/{kv_heads} heads of {hd}, p {p}, window {window:?}");
                let q = values(qd, 7);
                let keys = values(tkv * kvd, 8);
                let tpad = tkv.div_ceil(VALUE_PAD) * VALUE_PAD;
                let stride = tpad + VALUE_PAD;
                let mut vt = values(kvd * stride, 9);
                for col in vt.chunks_exact_mut(stride) {
                    col[tkv..].fill(0.0);
                }
                let mut scores = vec![0f32; heads * tkv];
                k.attn_scores(&s, &q, &keys, &mut scores);
                let scaled: Vec<f32> = q.iter().map(|v| v * s.scale).collect();
                for h in 0..heads {
                    let kh = h / group;
                    for j in s.first_scored(0)..s.scored(0) {
                        let want = dot_f32(&scaled[h * hd..(h + 1) * hd], &keys[j * kvd + kh * hd..][..hd]);
                        assert_eq!(want.to_bits(), scores[h * tkv + j].to_bits(), "{what}: score {h} {j}");
                    }
                }
                k.attn_softmax(&s, &mut scores);
                let mut ctx = vec![f32::NAN; qd];
                k.attn_context(&s, &scores, Values::Columns { data: &vt, stride }, &mut ctx);
                let skip = s.first_visible(0) / 64 * 64;
                for h in 0..heads {
                    let kh = h / group;
                    let mut x = scores[h * tkv..(h + 1) * tkv].to_vec();
                    x.resize(tpad, 0.0);
                    for e in 0..hd {
                        let col = &vt[(kh * hd + e) * stride..];
                        let want = dot_f32(&x[skip..], &col[skip..tpad]);
                        assert_eq!(want.to_bits(), ctx[h * hd + e].to_bits(), "{what}: context {h} {e}");
                    }
                }
            }
        }
    }

    /// The fast precision's prompt attention (T > 1), task by task and tile
    /// by tile, against each number's plain definition: every score one
    /// [`dot_f32`] of the scaled query, every probability [`softmax`] of
    /// the masked row, every output one [`scalar_dot_tiled`] from position
    /// 0 over the row padded with zeros to a multiple of 16.
    #[test]
    fn fast_prompt_attention_is_each_numbers_plain_sum_bit_for_bit() {
        let k = FastKernels { path: crate::active_path() };
        for (heads, kv_heads, hd) in [(4, 1, 256), (4, 2, 64), (3, 1, 64), (2, 2, 128), (8, 1, 64)] {
            for (t, p, window, full, future) in [
                (2, 0, None, false, 0),
                (5, 7, None, true, 0),
                (17, 0, Some(8), false, 0),
                (40, 100, Some(20), false, 0),
                (33, 30, Some(20), true, 3),
                (19, 45, None, false, 0),
            ] {
                let s = AttnShape { t, p, window, full, future, scale_queries: true, ..heads_of(heads, kv_heads, hd) };
                let (tkv, qd, kvd, group) = (s.tkv(), heads * hd, kv_heads * hd, heads / kv_heads);
                let what = format!("{heads}/{kv_heads} heads of {hd}, t {t}, p {p}, window {window:?}, full {full}");
                let q = values(t * qd, 1);
                let keys = values(tkv * kvd, 2);
                let stride = tkv.div_ceil(VALUE_PAD) * VALUE_PAD + VALUE_PAD;
                let mut vt = values(kvd * stride, 3);
                for col in vt.chunks_exact_mut(stride) {
                    col[tkv..].fill(0.0);
                }
                let mut scores = vec![0f32; heads * t * tkv];
                k.attn_scores(&s, &q, &keys, &mut scores);
                let scaled: Vec<f32> = q.iter().map(|v| v * s.scale).collect();
                for h in 0..heads {
                    let kh = h / group;
                    for i in 0..t {
                        let qi = &scaled[i * qd + h * hd..i * qd + (h + 1) * hd];
                        for j in s.first_scored(i)..s.scored(i) {
                            let want = dot_f32(qi, &keys[j * kvd + kh * hd..j * kvd + (kh + 1) * hd]);
                            let got = scores[(h * t + i) * tkv + j];
                            assert_eq!(want.to_bits(), got.to_bits(), "{what}: score {h} {i} {j}");
                        }
                    }
                }
                let mut probs = scores.clone();
                k.attn_softmax(&s, &mut probs);
                for h in 0..heads {
                    for i in 0..t {
                        let row = (h * t + i) * tkv;
                        let mut want = scores[row..row + tkv].to_vec();
                        let visible = s.first_visible(i)..p + i + 1;
                        for (j, v) in want.iter_mut().enumerate() {
                            if !visible.contains(&j) {
                                *v = f32::NEG_INFINITY;
                            }
                        }
                        softmax(&mut want);
                        let got = &probs[row..row + tkv];
                        assert!(want.iter().zip(got).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}: probs {h} {i}");
                    }
                }
                let mut ctx = vec![0f32; t * qd];
                k.attn_context(&s, &probs, Values::Columns { data: &vt, stride }, &mut ctx);
                for h in 0..heads {
                    let kh = h / group;
                    for i in 0..t {
                        let len = (p + i + 1).div_ceil(16) * 16;
                        let mut x = probs[(h * t + i) * tkv..(h * t + i + 1) * tkv].to_vec();
                        x.resize(len.max(tkv), 0.0);
                        for e in 0..hd {
                            let col = &vt[(kh * hd + e) * stride..];
                            let want = scalar_dot_tiled(&x[..len], &col[..len]);
                            let got = ctx[i * qd + h * hd + e];
                            assert_eq!(want.to_bits(), got.to_bits(), "{what}: context {i} {h} {e}");
                        }
                    }
                }
            }
        }
    }
}
