//! Judging two sides that differ by design (fast against exact, a quant
//! against its original, one engine against another): which difference is
//! expected noise and which is a bug.
//!
//! The measure is each stage's *local* error: A's output for that stage
//! computed from the reference's own inputs to it, so nothing is inherited
//! from earlier stages. A [`Probe`] measures it while A runs: it compares
//! every stage with the reference trace and then hands the next stage the
//! reference's values (stage isolation). The expected local error of a
//! stage, its band, comes from a calibration run measured the same way —
//! B's own model made to compute as A does (A's precision, A's storage
//! types) — or from a saved band table. A stage whose local error is far
//! above its band is an anomaly; everything else is noise.
//!
//! What the two sides were *given* (tokens, hyperparameters, weights) is
//! compared by the caller, who sees the models; its findings arrive here as
//! [`Finding`]s, are reported first, and are linked to the stages they touch.
//!
//! This module never sees the engine: it reads traces and observes stages.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plumb_trace::stage::{order_key, parse_key, Observer, Stage};
use plumb_trace::Trace;
use serde::{Deserialize, Serialize};

use crate::compare::{logits_metrics, routers_against, tensor_metrics, PositionLogits, RouterAgreement, StageDiff};
use crate::gate::Gate;
use crate::report::{g, Paint};

/// A stage whose local error is within this relative L2 of the reference is
/// equal within f32 rounding: a few units in the last place of f32 (2⁻²³ ≈
/// 1.2e-7) summed over a stage's reductions.
pub const PARITY_FLOOR: f64 = 1e-6;

/// The least band against a trace from another engine, which rounds f32 in
/// its own order: plumb exact against transformers differs by NMSE up to
/// 6.4e-12 end to end on the real model (docs/CONFORMANCE.md), a relative L2
/// of about 2.5e-6; this leaves four times that.
pub const ENGINE_FLOOR: f64 = 1e-5;

/// The band is this many times the calibration's local error. Where the
/// calibration computes exactly as A does (plumb against plumb) the ratio
/// of a clean stage is 1; another engine's quantizer or kernel order moves
/// it by less than 2× in our measurements (docs/NOISE.md), and every planted
/// bug sat above 10×.
pub const BAND_WIDTH: f64 = 4.0;

/// Measures every stage of a forward pass against a reference trace, and
/// (when isolating) replaces each stage's output with the reference's so
/// the next stage starts from the reference's inputs.
pub struct Probe<'a> {
    reference: &'a Trace,
    isolate: bool,
    /// A's error against the reference, per stage, in execution order.
    pub stages: Vec<StageDiff>,
    /// A's logits, [T, V], when not isolating.
    pub logits: Option<(Vec<usize>, Vec<f32>)>,
    /// A's expert ids per layer with experts, [T, k], when not isolating.
    pub experts: Vec<(usize, Vec<usize>, Vec<f32>)>,
}

impl<'a> Probe<'a> {
    pub fn new(reference: &'a Trace, isolate: bool) -> Probe<'a> {
        Probe { reference, isolate, stages: Vec::new(), logits: None, experts: Vec::new() }
    }
}

impl Observer for Probe<'_> {
    fn wants(&self, _: Option<usize>, _: Stage) -> bool {
        true
    }

    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        let key = stage.key(layer);
        let mut d = StageDiff::new(key.clone(), Gate::default().bounds(&key));
        match self.reference.tensors.get(&key) {
            Some((shb, db)) if shb.as_slice() == shape => tensor_metrics(data, db, shape, stage.token_axis(), &mut d),
            Some((shb, _)) => d.basis = crate::compare::Basis::Mismatch { a: shape.to_vec(), b: shb.clone() },
            None => d.basis = crate::compare::Basis::OnlyA,
        }
        // Only an end-to-end run's logits mean anything to compare (T × V
        // floats: hundreds of MB at long prompts, so not kept otherwise).
        if stage == Stage::Logits && !self.isolate {
            self.logits = Some((shape.to_vec(), data.to_vec()));
        }
        if let (Stage::FfnExperts, Some(l), false) = (stage, layer, self.isolate) {
            self.experts.push((l, shape.to_vec(), data.to_vec()));
        }
        self.stages.push(d);
    }

    fn substitutes(&self) -> bool {
        self.isolate
    }
    fn substitute(&mut self, layer: Option<usize>, stage: Stage, data: &mut [f32], shape: &[usize]) {
        if !self.isolate {
            return;
        }
        if let Some((shb, db)) = self.reference.tensors.get(&stage.key(layer)) {
            if shb.as_slice() == shape {
                data.copy_from_slice(db);
            }
        }
    }
}

/// What the two sides were given, found to differ before any activation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// "tokens", "config" or "weights".
    pub kind: String,
    /// The token position, hyperparameter or tensor concerned.
    pub subject: String,
    pub what: String,
    /// The stage keys (`blk.9.ffn_gate`, or a bare name for every layer's
    /// stage of that name) whose computation this finding changes.
    pub stages: Vec<String>,
}

impl Finding {
    fn touches(&self, key: &str) -> bool {
        let name = parse_key(key).map(|(s, _)| s.name()).unwrap_or(key);
        self.stages.iter().any(|s| s == key || s == name || s == "*")
    }
}

/// One hyperparameter of the two sides, side by side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConfigRow {
    pub name: String,
    pub a: String,
    pub b: String,
    /// The stages it touches.
    pub stages: Vec<String>,
}

/// Expected local error per stage, saved from a calibration so that a later
/// `plumb diff` of two traces can be judged without the models.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct BandTable {
    pub format: String,
    /// How the bands were made (the calibration pair).
    pub source: String,
    /// Stage key → calibration local error (relative L2), each stage on
    /// the reference's inputs: the bands of `plumb bisect --noise`.
    pub local: BTreeMap<String, f64>,
    /// Stage key → calibration error run end to end (inherited and local
    /// together): the bands of `plumb diff --noise`, where two traces are
    /// all there is.
    #[serde(default)]
    pub end_to_end: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Parity,
    WithinNoise,
    Anomaly,
}

/// One stage judged against its band.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    pub key: String,
    /// A's local error (relative L2 against the reference).
    pub local: Option<f64>,
    pub nmse: Option<f64>,
    pub cosine: Option<f64>,
    pub max_abs: Option<f64>,
    pub max_at: Option<(usize, usize)>,
    /// The calibration's local error at this stage.
    pub calibration: Option<f64>,
    pub band: f64,
    /// local ÷ band: above 1 is outside the band.
    pub ratio: Option<f64>,
    /// local ÷ the median local error of this stage kind over the other layers.
    pub vs_kind: Option<f64>,
    /// A's error here when run end to end (inherited and local together).
    pub end_to_end: Option<f64>,
    pub outside: bool,
    /// Indices into the report's findings that touch this stage.
    pub explained_by: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NoiseReport {
    /// The command that judged: "plumb bisect" or "plumb diff".
    pub command: String,
    pub engine_a: String,
    pub engine_b: String,
    /// How the bands were obtained.
    pub calibration: String,
    pub notes: Vec<String>,
    /// Every hyperparameter of both sides (when both are models).
    pub config: Vec<ConfigRow>,
    pub findings: Vec<Finding>,
    pub verdict: Verdict,
    /// Index into `stages` of the first stage outside its band.
    pub anomaly: Option<usize>,
    /// Index of the stage with the largest ratio.
    pub worst: Option<usize>,
    pub stages: Vec<Judged>,
    /// End-to-end logits of A against B, per position.
    pub logits: Vec<PositionLogits>,
    /// End-to-end router agreement, per layer with experts.
    pub routers: Vec<RouterAgreement>,
    pub tie_margin: f64,
    pub band_width: f64,
    pub parity_floor: f64,
}

impl NoiseReport {
    pub fn failed(&self) -> bool {
        self.verdict == Verdict::Anomaly
    }

    pub fn outside(&self) -> impl Iterator<Item = &Judged> {
        self.stages.iter().filter(|s| s.outside)
    }
}

/// Where the bands come from.
pub enum Bands<'a> {
    /// Both sides compute the same arithmetic: any difference above f32
    /// rounding is outside.
    Exact,
    /// A calibration probe's local errors.
    Calibrated(&'a [StageDiff]),
    /// A saved table's local errors (for isolated stages).
    Table(&'a BandTable),
    /// A saved table's end-to-end errors (for two traces run end to end).
    EndToEnd(&'a BandTable),
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// What a judgement reads, besides the bands.
pub struct Evidence<'a> {
    pub engine_a: &'a str,
    pub engine_b: &'a str,
    /// A's error per stage: local (each stage on the reference's inputs),
    /// or end to end when two traces are all there is.
    pub local: &'a [StageDiff],
    /// A run end to end against the same reference (may be empty).
    pub end_to_end: &'a [StageDiff],
    /// End-to-end logits of A against B, per position.
    pub logits: Vec<PositionLogits>,
    /// End-to-end router agreement of A against B, per layer with experts.
    pub routers: Vec<RouterAgreement>,
    pub findings: Vec<Finding>,
    pub tie_margin: f64,
    /// The least band: [`PARITY_FLOOR`], or [`ENGINE_FLOOR`] against another engine.
    pub floor: f64,
}

/// Judges A's errors against their bands; `calibration` says how the bands
/// were obtained, for the report.
pub fn judge(e: Evidence, bands: Bands, calibration: String) -> NoiseReport {
    let Evidence { engine_a, engine_b, local, end_to_end, logits, routers, findings, tie_margin, floor } = e;
    let cal: BTreeMap<&str, f64> = match &bands {
        Bands::Exact => BTreeMap::new(),
        Bands::Calibrated(c) => c.iter().filter_map(|s| Some((s.key.as_str(), s.rel_l2?))).collect(),
        Bands::Table(t) => t.local.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        Bands::EndToEnd(t) => t.end_to_end.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
    };
    let e2e: BTreeMap<&str, f64> = end_to_end.iter().filter_map(|s| Some((s.key.as_str(), s.rel_l2?))).collect();
    // Each stage kind's local errors over the layers, for the median of
    // the other layers.
    let mut by_kind: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
    for s in local {
        if let (Some((st, Some(_))), Some(e)) = (parse_key(&s.key), s.rel_l2) {
            by_kind.entry(st.name()).or_default().push((s.key.as_str(), e));
        }
    }
    let others_median = |key: &str| -> Option<f64> {
        let v = by_kind.get(parse_key(key)?.0.name())?;
        let rest: Vec<f64> = v.iter().filter(|(k, _)| *k != key).map(|(_, e)| *e).collect();
        if rest.len() < 2 {
            return None;
        }
        median(rest)
    };

    let mut stages: Vec<Judged> = local
        .iter()
        .map(|s| {
            let calibration = cal.get(s.key.as_str()).copied();
            let band = match &bands {
                Bands::Exact => floor,
                _ => (BAND_WIDTH * calibration.unwrap_or(0.0)).max(floor),
            };
            let ratio = s.rel_l2.map(|e| if e.is_nan() { f64::INFINITY } else { e / band });
            let vs_kind = others_median(&s.key).and_then(|m| Some(s.rel_l2? / m.max(PARITY_FLOOR)));
            let mismatch = matches!(s.basis, crate::compare::Basis::Mismatch { .. });
            let explained_by = findings.iter().enumerate().filter(|(_, f)| f.touches(&s.key)).map(|(i, _)| i).collect();
            Judged {
                key: s.key.clone(),
                local: s.rel_l2,
                nmse: s.nmse,
                cosine: s.cosine,
                max_abs: s.max_abs,
                max_at: s.max_at,
                calibration,
                band,
                ratio,
                vs_kind,
                end_to_end: e2e.get(s.key.as_str()).copied(),
                outside: mismatch || ratio.is_some_and(|r| r > 1.0),
                explained_by,
            }
        })
        .collect();
    stages.sort_by_key(|s| order_key(&s.key));
    let anomaly = stages.iter().position(|s| s.outside);
    let worst = stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.ratio?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i);
    let parity = stages.iter().all(|s| s.local.is_none_or(|e| e <= PARITY_FLOOR));
    let verdict = if anomaly.is_some() || !findings.is_empty() {
        Verdict::Anomaly
    } else if parity {
        Verdict::Parity
    } else {
        Verdict::WithinNoise
    };
    NoiseReport {
        command: "plumb bisect".into(),
        engine_a: engine_a.to_string(),
        engine_b: engine_b.to_string(),
        calibration,
        notes: Vec::new(),
        config: Vec::new(),
        findings,
        verdict,
        anomaly,
        worst,
        stages,
        logits,
        routers,
        tie_margin,
        band_width: BAND_WIDTH,
        parity_floor: floor,
    }
}

/// A's end-to-end logits against B's, per position, where both are [T, V].
pub fn logits_of(a: &Probe, b: &Trace, tie_margin: f64) -> Vec<PositionLogits> {
    match (a.logits.as_ref(), b.tensors.get("logits")) {
        (Some((sa, la)), Some((sb, lb))) if sa == sb && sa.len() == 2 => logits_metrics(la, lb, sa[1], tie_margin),
        _ => Vec::new(),
    }
}

/// A's end-to-end expert choices against B's, per layer where both hold them.
pub fn routers_of(a: &Probe, b: &Trace, tie_margin: f64) -> Vec<RouterAgreement> {
    a.experts.iter().filter_map(|(l, shape, ids)| routers_against(*l, ids, shape, b, tie_margin)).collect()
}

/// The calibration's errors as a table to save: local (isolated) and end
/// to end.
pub fn band_table(local: &[StageDiff], end_to_end: &[StageDiff], source: &str) -> BandTable {
    let map = |v: &[StageDiff]| v.iter().filter_map(|s| Some((s.key.clone(), s.rel_l2?))).collect();
    BandTable {
        format: "plumb-bands 1".into(),
        source: source.to_string(),
        local: map(local),
        end_to_end: map(end_to_end),
    }
}

/// Judges a diff of two traces run end to end against a saved table's
/// end-to-end bands: the first stage far outside its band is the anomaly
/// (later ones may inherit it).
pub fn judge_diff(d: &crate::compare::Diff, table: &BandTable, source: String) -> NoiseReport {
    let mut findings = Vec::new();
    if !d.tokens_match {
        findings.push(Finding {
            kind: "tokens".into(),
            subject: "token ids".into(),
            what: d.notes.first().cloned().unwrap_or_else(|| "the two traces were fed different token ids".into()),
            stages: vec!["*".into()],
        });
    }
    // Stats-only stages have no relative L2 to judge; they are shown, not judged.
    let evidence = Evidence {
        engine_a: &d.engine_a,
        engine_b: &d.engine_b,
        local: &d.stages,
        end_to_end: &d.stages,
        logits: d.logits.clone(),
        routers: d.routers.clone(),
        findings,
        tie_margin: d.tie_margin,
        floor: if d.engine_a.starts_with("plumb") && d.engine_b.starts_with("plumb") {
            PARITY_FLOOR
        } else {
            ENGINE_FLOOR
        },
    };
    let mut r = judge(evidence, Bands::EndToEnd(table), source);
    r.command = "plumb diff".into();
    r.notes.extend(d.notes.iter().filter(|n| !n.starts_with("token ids differ")).cloned());
    r.notes.push(
        "two traces run end to end: each stage's error includes what it inherits, judged against the calibration's own end-to-end error there".into(),
    );
    r
}

fn ratio_str(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.is_infinite() => "inf".into(),
        Some(r) if r >= 100.0 => format!("{r:.1e}×"),
        Some(r) if r >= 0.01 => format!("{r:.2}×"),
        Some(r) => format!("{r:.0e}×"),
    }
}

/// The verdict: findings first, then the anomaly with its evidence, then the
/// end-to-end consequences.
pub fn verdict_text(r: &NoiseReport, paint: Paint) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}  A: {}   B (reference): {}", paint.bold(&r.command), r.engine_a, r.engine_b);
    let _ = writeln!(s, "bands: {}", r.calibration);
    for n in &r.notes {
        let _ = writeln!(s, "{}", paint.yellow(&format!("note: {n}")));
    }
    if !r.findings.is_empty() {
        let _ = writeln!(s, "{}", paint.bold("given differently (before any activation):"));
        for f in &r.findings {
            let _ = writeln!(s, "  {:<8} {}: {}", f.kind, paint.bold(&f.subject), f.what);
        }
    }
    let compared = r.stages.iter().filter(|j| j.local.is_some()).count();
    match r.anomaly {
        Some(i) => {
            let a = &r.stages[i];
            let _ = writeln!(
                s,
                "{} at {} — local error {} is {} its band ({})",
                paint.red("ANOMALY"),
                paint.bold(&a.key),
                g(a.local),
                ratio_str(a.ratio),
                g(Some(a.band)),
            );
            let before = r.stages[..i].iter().filter_map(|j| Some((j, j.ratio?))).max_by(|x, y| x.1.total_cmp(&y.1));
            match before {
                Some((j, rt)) => {
                    let _ = writeln!(
                        s,
                        "  every stage before it is within noise (worst {} at {})",
                        ratio_str(Some(rt)),
                        j.key
                    );
                }
                None => {
                    let _ = writeln!(s, "  it is the first stage");
                }
            }
            let _ = writeln!(
                s,
                "  evidence: NMSE {}, cosine {}, max |Δ| {} at token {}, feature {}; calibration {}",
                g(a.nmse),
                g(a.cosine),
                g(a.max_abs),
                a.max_at.map(|p| p.0).unwrap_or(0),
                a.max_at.map(|p| p.1).unwrap_or(0),
                g(a.calibration),
            );
            if let Some(k) = a.vs_kind {
                let _ = writeln!(s, "  {} the median local error of this stage over the layers", ratio_str(Some(k)));
            }
            for &f in &a.explained_by {
                let f = &r.findings[f];
                let _ = writeln!(s, "  explained by the {} finding: {} {}", f.kind, f.subject, f.what);
            }
            let others: Vec<String> = r.stages[i + 1..]
                .iter()
                .filter(|j| j.outside)
                .map(|j| format!("{} {}", j.key, ratio_str(j.ratio)))
                .collect();
            if !others.is_empty() {
                let more = if others.len() > 8 { format!(" … ({} in all)", others.len()) } else { String::new() };
                let _ = writeln!(
                    s,
                    "  also outside their bands: {}{more}",
                    others.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        None if !r.findings.is_empty() => {
            let w = r.worst.map(|i| &r.stages[i]);
            let _ = writeln!(
                s,
                "{} in what the sides were given ({}): every stage's local error is within its band{}",
                paint.red("ANOMALY"),
                r.findings[0].subject,
                w.map(|w| format!(" (worst {} at {})", ratio_str(w.ratio), w.key)).unwrap_or_default()
            );
        }
        None if r.verdict == Verdict::Parity => {
            let _ = writeln!(s, "{} {compared} stages equal within f32 rounding", paint.green_bold("PARITY"));
        }
        None => {
            let w = r.worst.map(|i| &r.stages[i]);
            let _ = writeln!(
                s,
                "{} {compared} stages inside their bands{}",
                paint.green_bold("WITHIN NOISE"),
                w.map(|w| format!(" (worst {} of its band at {})", ratio_str(w.ratio), w.key)).unwrap_or_default()
            );
        }
    }
    // The end-to-end consequence: the residual stream's error by layer.
    let outs: Vec<(&str, f64)> = r
        .stages
        .iter()
        .filter(|j| j.key.ends_with(".layer_out"))
        .filter_map(|j| Some((j.key.as_str(), j.end_to_end?)))
        .collect();
    if let (Some(first), Some(last)) = (outs.first(), outs.last()) {
        let _ = writeln!(
            s,
            "end to end: residual-stream error {} after {} → {} after {}",
            g(Some(first.1)),
            first.0.trim_end_matches(".layer_out"),
            g(Some(last.1)),
            last.0.trim_end_matches(".layer_out")
        );
    }
    if !r.logits.is_empty() {
        let n = r.logits.len();
        let agree = r.logits.iter().filter(|p| p.top1_agree).count();
        let ties = r.logits.iter().filter(|p| p.near_tie).count();
        let kl = r.logits.iter().map(|p| p.kl).fold(0.0, f64::max);
        let mean_kl = r.logits.iter().map(|p| p.kl).sum::<f64>() / n as f64;
        let _ = writeln!(
            s,
            "logits: top-1 agree {agree}/{n}{}, KL(B‖A) mean {} max {}",
            if ties > 0 { format!(" ({ties} flips at near-ties, margin < {})", r.tie_margin) } else { String::new() },
            g(Some(mean_kl)),
            g(Some(kl))
        );
        for p in r.logits.iter().filter(|p| !p.top1_agree).take(6) {
            let _ = writeln!(s, "{}", crate::report::flip_line(p));
        }
        if r.anomaly.is_none() && r.findings.is_empty() && agree < n {
            let _ = writeln!(
                s,
                "  every stage is inside its band: these flips are in-band noise summed over the layers, not one stage's fault"
            );
        }
    }
    if !r.routers.is_empty() {
        let (n, agree) = r.routers.iter().fold((0, 0), |(n, a), x| (n + x.tokens, a + x.agree));
        let flips: Vec<(usize, &crate::compare::RouterFlip)> =
            r.routers.iter().flat_map(|x| x.flips.iter().map(move |f| (x.layer, f))).collect();
        let ties = flips.iter().filter(|(_, f)| f.near_tie).count();
        let _ = writeln!(
            s,
            "routers: same experts for {agree}/{n} token-layers over {} layers{}",
            r.routers.len(),
            if ties > 0 { format!(" ({ties} flips at near-ties, margin < {})", r.tie_margin) } else { String::new() }
        );
        for (layer, f) in flips.iter().take(6) {
            let _ = writeln!(s, "{}", crate::report::router_flip_line(*layer, f));
        }
        if r.anomaly.is_none() && r.findings.is_empty() && !flips.is_empty() {
            let _ = writeln!(
                s,
                "  every stage is inside its band: these tokens went elsewhere on in-band noise, not one stage's fault"
            );
        }
    }
    s
}

/// The per-stage table: local error, calibration, band, ratio.
pub fn table(r: &NoiseReport, paint: Paint) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}",
        paint.dim(&format!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11}  {}",
            "stage", "local err", "calib", "band", "ratio", "vs kind", "end to end", "verdict"
        ))
    );
    for j in &r.stages {
        let verdict = if j.outside {
            "OUTSIDE"
        } else if j.local.is_none() {
            "-"
        } else {
            "ok"
        };
        let line = format!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11}  {}",
            j.key,
            g(j.local),
            g(j.calibration),
            g(Some(j.band)),
            ratio_str(j.ratio),
            ratio_str(j.vs_kind),
            g(j.end_to_end),
            verdict
        );
        let _ = writeln!(s, "{}", if j.outside { paint.red(&line) } else { line });
    }
    s
}

pub fn json(r: &NoiseReport) -> String {
    let first = r.anomaly.map(|i| r.stages[i].key.clone());
    crate::report::json_with(r, r.failed(), ("first_anomaly", first))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(stages: &[(&str, Vec<f32>)]) -> Trace {
        let mut t = Trace::default();
        for (k, v) in stages {
            t.tensors.insert(k.to_string(), (vec![1, v.len()], v.clone()));
        }
        t
    }

    fn run(probe: &mut Probe, outputs: &[(Option<usize>, Stage, Vec<f32>)]) -> Vec<Vec<f32>> {
        let mut fed = Vec::new();
        for (l, st, v) in outputs {
            let mut v = v.clone();
            let shape = [1, v.len()];
            probe.record(*l, *st, &v, &shape);
            probe.substitute(*l, *st, &mut v, &shape);
            fed.push(v);
        }
        fed
    }

    #[test]
    fn isolation_feeds_the_reference_and_measures_only_local_error() {
        let b = trace(&[("embedding", vec![1.0, 2.0, 3.0, 4.0]), ("blk.0.attn_norm", vec![1.0, 1.0, 1.0, 1.0])]);
        let mut p = Probe::new(&b, true);
        let fed = run(
            &mut p,
            &[(None, Stage::Embedding, vec![1.0, 2.0, 3.0, 5.0]), (Some(0), Stage::AttnNorm, vec![1.0, 1.0, 1.0, 1.0])],
        );
        assert_eq!(fed[0], vec![1.0, 2.0, 3.0, 4.0], "the next stage reads the reference's values");
        assert!(p.stages[0].rel_l2.unwrap() > 0.1);
        assert_eq!(p.stages[1].rel_l2, Some(0.0));
        let mut plain = Probe::new(&b, false);
        let fed = run(&mut plain, &[(None, Stage::Embedding, vec![1.0, 2.0, 3.0, 5.0])]);
        assert_eq!(fed[0], vec![1.0, 2.0, 3.0, 5.0], "without isolation the probe only watches");
    }

    fn evidence(local: &[StageDiff], findings: Vec<Finding>) -> Evidence<'_> {
        Evidence {
            engine_a: "a",
            engine_b: "b",
            local,
            end_to_end: &[],
            logits: Vec::new(),
            routers: Vec::new(),
            findings,
            tie_margin: 0.01,
            floor: PARITY_FLOOR,
        }
    }

    fn stage(key: &str, e: f64) -> StageDiff {
        let mut d = StageDiff::new(key.into(), Gate::default().bounds(key));
        d.rel_l2 = Some(e);
        d
    }

    #[test]
    fn a_stage_far_above_its_calibration_is_the_anomaly() {
        let cal: Vec<StageDiff> = (0..4)
            .flat_map(|l| [stage(&format!("blk.{l}.q_proj"), 1e-3), stage(&format!("blk.{l}.ffn_gate"), 2e-3)])
            .collect();
        let mut a = cal.clone();
        a[1].rel_l2 = Some(6e-3); // 3× its calibration: noise, inside the band
        let r = judge(evidence(&a, vec![]), Bands::Calibrated(&cal), String::new());
        assert_eq!(r.verdict, Verdict::WithinNoise);
        assert_eq!(r.worst.map(|i| r.stages[i].key.as_str()), Some("blk.0.ffn_gate"));
        a[5].rel_l2 = Some(0.3); // blk.2.ffn_gate
        let r = judge(evidence(&a, vec![]), Bands::Calibrated(&cal), String::new());
        assert_eq!(r.verdict, Verdict::Anomaly);
        let at = &r.stages[r.anomaly.unwrap()];
        assert_eq!(at.key, "blk.2.ffn_gate");
        assert!((at.ratio.unwrap() - 0.3 / 8e-3).abs() < 1e-9);
        assert!(at.vs_kind.unwrap() > 100.0);
    }

    #[test]
    fn exact_bands_give_parity_and_findings_alone_are_an_anomaly() {
        let a = vec![stage("embedding", 0.0), stage("blk.0.attn_norm", 3e-8)];
        let r = judge(evidence(&a, vec![]), Bands::Exact, String::new());
        assert_eq!(r.verdict, Verdict::Parity);
        let f = Finding {
            kind: "config".into(),
            subject: "rms_eps".into(),
            what: "A 1e-5, B 1e-6".into(),
            stages: vec!["attn_norm".into()],
        };
        let r = judge(evidence(&a, vec![f]), Bands::Exact, String::new());
        assert_eq!(r.verdict, Verdict::Anomaly);
        assert_eq!(r.stages[1].explained_by, vec![0]);
        assert!(r.stages[0].explained_by.is_empty());
    }
}
