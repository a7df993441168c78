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
}

impl AttnShape {
    /// Tkv: the positions attended over.
    pub fn tkv(&self) -> usize {
        self.p + self.t
    }

    /// Heads are worth a thread each only past one token's worth of work.
    fn min_heads_per_task(&self) -> usize {
        if self.t * self.tkv() < 4096 {
            self.heads
        } else {
            1
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
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, sh)| {
            let kh = h / group;
            for i in 0..t {
                let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
                let row = &mut sh[i * tkv..(i + 1) * tkv];
                for (j, v) in row.iter_mut().enumerate().take(s.scored(i)) {
                    *v = dot(qi, &keys[j * kvd + kh * hd..j * kvd + (kh + 1) * hd]);
                }
                scale_and_cap(&mut row[..s.scored(i)], Some(s.scale), s.softcap);
            }
        });
    }

    fn attn_softmax(&self, s: &AttnShape, scores: &mut [f32]) {
        let (t, tkv) = (s.t, s.tkv());
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).for_each(|sh| {
            for i in 0..t {
                let qpos = s.p + i;
                let visible = |j: usize| j <= qpos && s.window.is_none_or(|win| qpos - j < win);
                softmax_masked(&mut sh[i * tkv..(i + 1) * tkv], visible);
            }
        });
    }

    fn attn_context(&self, s: &AttnShape, probs: &[f32], values: Values, ctx: &mut [f32]) {
        let Values::Rows(vc) = values else { panic!("the exact precision reads values as rows") };
        let (t, tkv, hd) = (s.t, s.tkv(), s.hd);
        let (kvd, group) = (s.kv_heads * hd, s.heads / s.kv_heads);
        assert!(vc.len() >= tkv * kvd && probs.len() == s.heads * t * tkv);
        let mut per_head = vec![0f32; s.heads * t * hd]; //                       [H, T, hd]
        per_head.par_chunks_mut(t * hd).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, out)| {
            let kh = h / group;
            for i in 0..t {
                let probs = &probs[(h * t + i) * tkv..(h * t + i + 1) * tkv];
                let o = &mut out[i * hd..(i + 1) * hd];
                for (j, &pr) in probs.iter().enumerate() {
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
        scores.par_chunks_mut(t * tkv).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, sh)| {
            let kh = h / group;
            let lens: Vec<usize> = (0..t).map(|i| s.scored(i)).collect();
            crate::mirror::dot_f32_grid(&q[h * hd..], qd, &keys[kh * hd..], kvd, hd, &lens, sh, tkv);
            for i in 0..t {
                scale_and_cap(&mut sh[i * tkv..i * tkv + s.scored(i)], post_scale, s.softcap);
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
                let first = s.window.map_or(0, |win| (qpos + 1).saturating_sub(win));
                row[..first].fill(f32::NEG_INFINITY);
                row[qpos + 1..].fill(f32::NEG_INFINITY);
                crate::mirror::softmax_visible(row, qpos + 1);
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
        let mut per_head = vec![0f32; s.heads * t * hd]; //                       [H, T, hd]
        per_head.par_chunks_mut(t * hd).with_min_len(s.min_heads_per_task()).enumerate().for_each(|(h, out)| {
            let kh = h / group;
            if t == 1 {
                let mut row = vec![0f32; tpad];
                row[..tkv].copy_from_slice(&probs[h * tkv..(h + 1) * tkv]);
                for (e, o) in out.iter_mut().enumerate() {
                    let col = (kh * hd + e) * stride;
                    *o = crate::mirror::dot_f32(&row, &vt[col..col + tpad]);
                }
                return;
            }
            // Past the last visible position the probabilities are zeros,
            // which leave the 16 lanes as they are: each sum stops at the
            // first multiple of 16 beyond it. The rows are padded to tpad.
            let lens: Vec<usize> = (0..t).map(|i| (p + i + 1).div_ceil(16) * 16).collect();
            let vh = &vt[kh * hd * stride..];
            let sh = &probs[h * t * tkv..(h + 1) * t * tkv];
            if tkv.is_multiple_of(16) {
                // Every length fits in its row as it is.
                crate::mirror::dot_f32_tiled_grid(sh, tkv, &lens, vh, stride, hd, out, hd);
            } else {
                let mut padded = vec![0f32; t * tpad];
                for (i, row) in padded.chunks_exact_mut(tpad).enumerate() {
                    row[..tkv].copy_from_slice(&sh[i * tkv..(i + 1) * tkv]);
                }
                crate::mirror::dot_f32_tiled_grid(&padded, tpad, &lens, vh, stride, hd, out, hd);
            }
        });
        interleave_heads(s, &per_head, ctx);
    }
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

/// In-place softmax over the visible positions, sum in f64; hidden ones
/// become 0.
fn softmax_masked(row: &mut [f32], visible: impl Fn(usize) -> bool) {
    let mut max = f32::NEG_INFINITY;
    for (j, v) in row.iter().enumerate() {
        if visible(j) && *v > max {
            max = *v;
        }
    }
    let mut sum = 0f64;
    for (j, v) in row.iter_mut().enumerate() {
        if visible(j) {
            *v = (*v - max).exp();
            sum += *v as f64;
        } else {
            *v = 0.0;
        }
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}
