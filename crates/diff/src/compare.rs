//! Lines two traces up stage by stage (B is the reference) and measures how
//! far A is from B at each stage, where the first divergence is, and whether
//! each stage's error was introduced there or inherited from its inputs.

use plumb_trace::stage::{order_key, parse_key, Stage};
use plumb_trace::{Stats, Trace};
use serde::Serialize;

use crate::gate::{Bounds, Gate};

/// Below this relative error a stage counts as exact when computing growth.
const ERR_FLOOR: f64 = 1e-12;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Basis {
    /// Both tensors present and the same shape: element-wise metrics.
    Tensors,
    /// Statistics only, over all elements (counts equal).
    Stats,
    /// Statistics only, over the last token (the full counts differ).
    LastTokenStats,
    OnlyA,
    OnlyB,
    /// Shapes (or counts) differ and no comparison was possible.
    Mismatch {
        a: Vec<usize>,
        b: Vec<usize>,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Clean,
    /// Over its bound while every input stage is within bounds.
    Introduced,
    /// Over its bound with an input already over.
    Inherited,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageDiff {
    pub key: String,
    pub basis: Basis,
    pub cosine: Option<f64>,
    /// MSE / Var(reference).
    pub nmse: Option<f64>,
    pub max_abs: Option<f64>,
    /// (token, feature) of max |Δ|; for [H, T, Tkv]: (token, head·Tkv + key).
    pub max_at: Option<(usize, usize)>,
    pub mean_abs: Option<f64>,
    /// ‖A − B‖ / ‖B‖ — the error measure used for growth.
    pub rel_l2: Option<f64>,
    pub std_ratio: Option<f64>,
    /// Stats-only comparison: max(|Δmean|, |Δstd|) / std(B).
    pub stats_rel: Option<f64>,
    pub bounds: Bounds,
    pub over: bool,
    /// Error here ÷ the largest error among this stage's inputs.
    pub growth: Option<f64>,
    pub inputs: Vec<String>,
    pub origin: Origin,
}

impl StageDiff {
    /// A stage not yet measured.
    pub fn new(key: String, bounds: Bounds) -> StageDiff {
        StageDiff {
            key,
            basis: Basis::Tensors,
            cosine: None,
            nmse: None,
            max_abs: None,
            max_at: None,
            mean_abs: None,
            rel_l2: None,
            std_ratio: None,
            stats_rel: None,
            bounds,
            over: false,
            growth: None,
            inputs: Vec::new(),
            origin: Origin::Clean,
        }
    }

    /// The error figure: rel_l2 for tensors, stats_rel otherwise.
    pub fn err(&self) -> Option<f64> {
        self.rel_l2.or(self.stats_rel)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PositionLogits {
    pub position: usize,
    pub top1_a: u32,
    pub top1_b: u32,
    pub top1_agree: bool,
    /// |top-5 of A ∩ top-5 of B| / 5.
    pub top5_overlap: f64,
    /// KL(B ‖ A) in nats.
    pub kl: f64,
    /// The reference's top-1 minus top-2 logit.
    pub ref_margin: f64,
    /// A top-1 flip where the reference itself was nearly tied.
    pub near_tie: bool,
}

/// How the two sides' routers chose experts at one layer (B the reference).
#[derive(Debug, Clone, Serialize)]
pub struct RouterAgreement {
    pub layer: usize,
    pub tokens: usize,
    /// Tokens sent to the same experts on both sides (in any order).
    pub agree: usize,
    /// Mean over tokens of |A's experts ∩ B's| / k.
    pub overlap: f64,
    /// The tokens whose experts differ.
    pub flips: Vec<RouterFlip>,
}

/// A token whose experts differ between the two sides.
#[derive(Debug, Clone, Serialize)]
pub struct RouterFlip {
    pub token: usize,
    /// The experts chosen, most probable first.
    pub experts_a: Vec<f32>,
    pub experts_b: Vec<f32>,
    /// The reference's router margin: its least router logit among the
    /// experts it chose minus the greatest among those it left (from its
    /// `ffn_router`, else the log of its `ffn_router_probs`); none where
    /// the reference has neither.
    pub ref_margin: Option<f64>,
    /// A flip where the reference itself was nearly tied (margin below the
    /// same bound as a logit near-tie): expected noise, as a logit near-tie
    /// is.
    pub near_tie: bool,
}

/// The routers' agreement at `layer` from both sides' expert ids [T, k] and
/// the reference's router scores [T, E] (logits, or log-probabilities).
pub fn router_agreement(
    layer: usize,
    a: &[f32],
    b: &[f32],
    k: usize,
    scores: Option<(&[f32], usize)>,
    tie_margin: f64,
) -> RouterAgreement {
    let k = k.max(1);
    let tokens = b.len() / k;
    let (mut agree, mut overlap, mut flips) = (0, 0.0, Vec::new());
    for (t, (ra, rb)) in a.chunks_exact(k).zip(b.chunks_exact(k)).enumerate() {
        let common = ra.iter().filter(|x| rb.contains(x)).count();
        overlap += common as f64 / k as f64;
        if common == k {
            agree += 1;
            continue;
        }
        let ref_margin = scores.and_then(|(sc, e)| {
            let row = sc.get(t * e..(t + 1) * e)?;
            let chosen = |i: usize| rb.contains(&(i as f32));
            let least_in = (0..e).filter(|&i| chosen(i)).map(|i| row[i] as f64).fold(f64::INFINITY, f64::min);
            let most_out = (0..e).filter(|&i| !chosen(i)).map(|i| row[i] as f64).fold(f64::NEG_INFINITY, f64::max);
            Some(least_in - most_out)
        });
        let near_tie = ref_margin.is_some_and(|m| m < tie_margin);
        flips.push(RouterFlip { token: t, experts_a: ra.to_vec(), experts_b: rb.to_vec(), ref_margin, near_tie });
    }
    RouterAgreement { layer, tokens, agree, overlap: overlap / tokens.max(1) as f64, flips }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChainLink {
    pub key: String,
    pub rel_l2: f64,
    /// Error relative to the first divergent stage's.
    pub factor: f64,
    pub growth: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub engine_a: String,
    pub engine_b: String,
    pub notes: Vec<String>,
    pub tokens_match: bool,
    pub stages: Vec<StageDiff>,
    /// Index into `stages` of the first stage over its bound.
    pub first: Option<usize>,
    pub chain: Vec<ChainLink>,
    pub logits: Vec<PositionLogits>,
    /// Top-1 flips that are not near-ties.
    pub hard_flips: usize,
    pub tie_margin: f64,
    /// Router agreement at every layer with experts that both traces hold.
    pub routers: Vec<RouterAgreement>,
}

impl Diff {
    /// True when a stage is over its bound or a logits flip is not a near-tie.
    pub fn diverged(&self) -> bool {
        self.first.is_some() || self.hard_flips > 0
    }
}

fn f64s(x: &[f32]) -> impl Iterator<Item = f64> + '_ {
    x.iter().map(|&v| v as f64)
}

/// Element-wise metrics of A against the reference B.
pub(crate) fn tensor_metrics(a: &[f32], b: &[f32], shape: &[usize], token_axis: usize, d: &mut StageDiff) {
    let n = b.len() as f64;
    let (mut dot, mut na, mut nb, mut se, mut sabs) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut max_abs, mut max_i) = (0f64, 0usize);
    for (i, (x, y)) in f64s(a).zip(f64s(b)).enumerate() {
        dot += x * y;
        na += x * x;
        nb += y * y;
        let e = x - y;
        if !e.is_finite() {
            // NaN/Inf on one side: as far apart as it gets.
            max_abs = f64::INFINITY;
            max_i = i;
            se = f64::INFINITY;
            continue;
        }
        se += e * e;
        sabs += e.abs();
        if e.abs() > max_abs {
            max_abs = e.abs();
            max_i = i;
        }
    }
    let mean_b = f64s(b).sum::<f64>() / n;
    let var_b = f64s(b).map(|y| (y - mean_b).powi(2)).sum::<f64>() / n;
    let mean_a = f64s(a).sum::<f64>() / n;
    let var_a = f64s(a).map(|y| (y - mean_a).powi(2)).sum::<f64>() / n;
    d.cosine = Some(if na > 0.0 && nb > 0.0 {
        dot / (na.sqrt() * nb.sqrt())
    } else if na == nb {
        1.0
    } else {
        0.0
    });
    let mse = se / n;
    d.nmse = Some(if var_b > 0.0 {
        mse / var_b
    } else if mse == 0.0 {
        0.0
    } else {
        f64::INFINITY
    });
    d.max_abs = Some(max_abs);
    // Position: index along the token axis, and the rest flattened.
    let inner: usize = shape[token_axis + 1..].iter().product();
    let tlen = shape.get(token_axis).copied().unwrap_or(1);
    let outer_i = max_i / (tlen * inner).max(1);
    let tok = (max_i / inner.max(1)) % tlen.max(1);
    let feat = outer_i * inner + max_i % inner.max(1);
    d.max_at = Some((tok, feat));
    d.mean_abs = Some(sabs / n);
    d.rel_l2 = Some(if nb > 0.0 {
        se.sqrt() / nb.sqrt()
    } else if se == 0.0 {
        0.0
    } else {
        f64::INFINITY
    });
    d.std_ratio = Some(if var_b > 0.0 { (var_a / var_b).sqrt() } else { f64::NAN });
}

fn stats_metrics(a: &Stats, b: &Stats, d: &mut StageDiff) {
    if a.nan + a.inf != b.nan + b.inf {
        d.stats_rel = Some(f64::INFINITY);
        return;
    }
    if let (Some(ma), Some(mb), Some(sa), Some(sb)) = (a.mean, b.mean, a.std, b.std) {
        let scale = if sb > 0.0 { sb } else { 1.0 };
        d.stats_rel = Some(((ma - mb).abs()).max((sa - sb).abs()) / scale);
        d.std_ratio = Some(if sb > 0.0 { sa / sb } else { f64::NAN });
    }
}

/// `x > bound`, with NaN counting as over.
fn exceeds(x: f64, bound: f64) -> bool {
    x.is_nan() || x > bound
}

/// The stages a stage reads (the dataflow of one layer, from the stage
/// table), as the trace keys among those `present`.
pub fn inputs_of(key: &str, present: &dyn Fn(&str) -> bool) -> Vec<String> {
    parse_key(key).map_or_else(Vec::new, |(stage, layer)| stage.input_keys(layer, present))
}

fn softmax64(x: &[f32]) -> Vec<f64> {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn top_n(x: &[f32], n: usize) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    let n = n.min(x.len());
    if n == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(n - 1, |&i, &j| x[j].total_cmp(&x[i]).then(i.cmp(&j)));
    idx.truncate(n);
    idx.sort_by(|&i, &j| x[j].total_cmp(&x[i]).then(i.cmp(&j)));
    idx.into_iter().map(|i| i as u32).collect()
}

/// Per-position logit metrics of A against B, both [T, V].
pub fn logits_metrics(a: &[f32], b: &[f32], vocab: usize, tie_margin: f64) -> Vec<PositionLogits> {
    let mut out = Vec::new();
    for (pos, (ra, rb)) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)).enumerate() {
        let (ta, tb) = (top_n(ra, 5), top_n(rb, 5));
        let overlap = ta.iter().filter(|i| tb.contains(i)).count() as f64 / 5f64.min(vocab as f64);
        let (pa, pb) = (softmax64(ra), softmax64(rb));
        let kl: f64 =
            pb.iter().zip(&pa).filter(|(p, _)| **p > 0.0).map(|(p, q)| p * (p.ln() - q.max(1e-300).ln())).sum();
        let margin = if tb.len() > 1 { rb[tb[0] as usize] as f64 - rb[tb[1] as usize] as f64 } else { f64::INFINITY };
        let agree = ta.first() == tb.first();
        out.push(PositionLogits {
            position: pos,
            top1_a: ta.first().copied().unwrap_or(0),
            top1_b: tb.first().copied().unwrap_or(0),
            top1_agree: agree,
            top5_overlap: overlap,
            kl: kl.max(0.0),
            ref_margin: margin,
            near_tie: !agree && margin < tie_margin,
        });
    }
    out
}

/// Compares trace A against reference trace B.
pub fn diff(a: &Trace, b: &Trace, gate: &Gate, tie_margin: f64) -> Diff {
    let mut notes = Vec::new();
    let tokens_match = a.tokens == b.tokens;
    if !tokens_match {
        let at = a.tokens.iter().zip(&b.tokens).position(|(x, y)| x != y).unwrap_or(a.tokens.len().min(b.tokens.len()));
        notes.push(format!(
            "token ids differ: A has {} tokens, B {}; first difference at position {at} (A {:?}, B {:?})",
            a.tokens.len(),
            b.tokens.len(),
            a.tokens.get(at),
            b.tokens.get(at)
        ));
    }
    if a.arch() != b.arch() {
        notes.push(format!("architectures differ: A {}, B {}", a.arch(), b.arch()));
    }
    let mut keys: Vec<String> = b.stats.iter().map(|(k, _)| k.clone()).collect();
    for (k, _) in &a.stats {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    keys.sort_by_key(|k| order_key(k));

    let mut stages: Vec<StageDiff> = Vec::new();
    let mut routers = Vec::new();
    let mut stats_note = false;
    for key in &keys {
        let bounds = gate.bounds(key);
        let mut d = StageDiff::new(key.clone(), bounds);
        let axis = parse_key(key).map(|(s, _)| s.token_axis()).unwrap_or(0);
        match (a.stat(key), b.stat(key)) {
            (None, _) => d.basis = Basis::OnlyB,
            (_, None) => d.basis = Basis::OnlyA,
            (Some(sa), Some(sb)) => match (a.tensors.get(key), b.tensors.get(key)) {
                (Some((sha, da)), Some((shb, db))) if sha == shb => tensor_metrics(da, db, shb, axis, &mut d),
                _ if sa.all.count == sb.all.count => {
                    d.basis = Basis::Stats;
                    stats_metrics(&sa.all, &sb.all, &mut d);
                }
                _ if sa.last.count == sb.last.count => {
                    d.basis = Basis::LastTokenStats;
                    stats_note = true;
                    stats_metrics(&sa.last, &sb.last, &mut d);
                }
                _ => d.basis = Basis::Mismatch { a: sa.shape.clone(), b: sb.shape.clone() },
            },
        }
        d.over = match d.basis {
            Basis::Tensors => {
                d.nmse.is_some_and(|n| exceeds(n, bounds.nmse))
                    || bounds.cosine.is_some_and(|c| d.cosine.is_none_or(|v| v.is_nan() || v < c))
            }
            Basis::Stats | Basis::LastTokenStats => d.stats_rel.is_some_and(|s| exceeds(s, bounds.stats)),
            Basis::Mismatch { .. } => true,
            Basis::OnlyA | Basis::OnlyB => false,
        };
        if let Some(r) = routers_of(a, b, key, tie_margin) {
            // Expert ids are compared as choices, not magnitudes: the error is
            // the share of tokens sent elsewhere where the reference was not
            // nearly tied, and any such token puts the stage over.
            let hard: Vec<&RouterFlip> = r.flips.iter().filter(|f| !f.near_tie).collect();
            d = StageDiff {
                rel_l2: Some(hard.len() as f64 / r.tokens.max(1) as f64),
                ..StageDiff::new(key.clone(), bounds)
            };
            d.max_at = r.flips.first().map(|f| (f.token, 0));
            d.over = !hard.is_empty();
            routers.push(r);
        }
        stages.push(d);
    }
    if stats_note {
        notes.push("some stages were compared on last-token statistics because their full counts differ".into());
    }
    // Growth and origin, from each stage's inputs.
    // A stage one side lacks is no input here: under flash attention
    // attn_context reads q, k and v, whatever the other side has.
    let index: std::collections::HashMap<String, usize> = stages
        .iter()
        .enumerate()
        .filter(|(_, s)| !matches!(s.basis, Basis::OnlyA | Basis::OnlyB))
        .map(|(i, s)| (s.key.clone(), i))
        .collect();
    for i in 0..stages.len() {
        let present = |k: &str| index.contains_key(k);
        let inputs = inputs_of(&stages[i].key, &present);
        let in_err = inputs
            .iter()
            .filter_map(|k| index.get(k))
            .filter_map(|&j| stages[j].err())
            .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.max(e))));
        let any_over = inputs.iter().filter_map(|k| index.get(k)).any(|&j| stages[j].over);
        let d = &mut stages[i];
        // Growth is undefined where the inputs are exact.
        if let (Some(e), Some(ie)) = (d.err(), in_err) {
            if ie > ERR_FLOOR {
                d.growth = Some(e.max(ERR_FLOOR) / ie);
            }
        }
        d.inputs = inputs;
        if d.over {
            d.origin = if any_over { Origin::Inherited } else { Origin::Introduced };
        }
    }
    let first = stages.iter().position(|s| s.over);
    let chain = first.map(|f| chain_from(&stages, f)).unwrap_or_default();

    let mut logits = Vec::new();
    if let (Some((sa, la)), Some((sb, lb))) = (a.tensors.get("logits"), b.tensors.get("logits")) {
        if sa == sb && sa.len() == 2 {
            logits = logits_metrics(la, lb, sa[1], tie_margin);
        }
    }
    let hard_flips = logits.iter().filter(|p| !p.top1_agree && !p.near_tie).count();
    Diff {
        engine_a: a.engine().to_string(),
        engine_b: b.engine().to_string(),
        notes,
        tokens_match,
        stages,
        first,
        chain,
        logits,
        hard_flips,
        tie_margin,
        routers,
    }
}

/// The router agreement at `key`'s layer where `key` is an `ffn_experts`
/// stage whose tensors both traces hold, alike in shape.
fn routers_of(a: &Trace, b: &Trace, key: &str, tie_margin: f64) -> Option<RouterAgreement> {
    let (Stage::FfnExperts, Some(layer)) = parse_key(key)? else { return None };
    let (sa, ia) = a.tensors.get(key)?;
    routers_against(layer, ia, sa, b, tie_margin)
}

/// The router agreement at `layer` of A's expert ids `ia` (shape `sa`)
/// with reference trace `b`, where it holds that layer's ids alike in shape.
pub fn routers_against(layer: usize, ia: &[f32], sa: &[usize], b: &Trace, tie_margin: f64) -> Option<RouterAgreement> {
    let (sb, ib) = b.tensors.get(&Stage::FfnExperts.key(Some(layer)))?;
    if sa != sb.as_slice() || sb.len() != 2 {
        return None;
    }
    use std::borrow::Cow;
    let logits = b.tensors.get(&Stage::FfnRouter.key(Some(layer))).map(|(s, d)| (s, Cow::Borrowed(d.as_slice())));
    let logprobs = || {
        b.tensors
            .get(&Stage::FfnRouterProbs.key(Some(layer)))
            .map(|(s, d)| (s, Cow::Owned(d.iter().map(|p| p.max(f32::MIN_POSITIVE).ln()).collect::<Vec<f32>>())))
    };
    let scores = logits.or_else(logprobs).filter(|(s, _)| s.len() == 2 && s[0] == sb[0]);
    let scores = scores.as_ref().map(|(s, d)| (&d[..], s[1]));
    Some(router_agreement(layer, ia, ib, sb[1], scores, tie_margin))
}

/// From the first divergence downstream along the dataflow: the stages of
/// its layer that read from it (directly or not), then each later layer's
/// output, then the final norm and logits.
fn chain_from(stages: &[StageDiff], first: usize) -> Vec<ChainLink> {
    let base = stages[first].err().unwrap_or(0.0).max(ERR_FLOOR);
    let layer_of = |k: &str| parse_key(k).and_then(|(_, l)| l);
    let first_layer = layer_of(&stages[first].key);
    let mut reached: std::collections::HashSet<&str> = std::collections::HashSet::new();
    reached.insert(&stages[first].key);
    let mut out = Vec::new();
    for (i, s) in stages.iter().enumerate().skip(first) {
        let downstream = i == first || s.inputs.iter().any(|k| reached.contains(k.as_str()));
        if !downstream {
            continue;
        }
        reached.insert(&s.key);
        let l = layer_of(&s.key);
        let shown = l == first_layer || l.is_none() || s.key.ends_with(".layer_out");
        if let (true, Some(e)) = (shown, s.err()) {
            out.push(ChainLink { key: s.key.clone(), rel_l2: e, factor: e / base, growth: s.growth });
        }
    }
    out
}
