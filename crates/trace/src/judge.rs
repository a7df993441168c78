//! Judging one trace on its own, with no reference to compare against:
//! verdicts per layer from the statistics (NaN/Inf, a layer whose output
//! std explodes, an outlier far outside its stage's std), and signs that a
//! generated continuation is garbage (loops, invalid UTF-8, ids outside the
//! vocabulary, non-finite logits).
//!
//! This is not a comparison of two traces (that is plumb-diff) and it does
//! not render: `plumb trace` prints what these functions decide.

use std::collections::BTreeMap;

use crate::file::Trace;
use crate::stage::parse_key;
use crate::stats::TensorStats;

/// How bad a layer looks, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    HighVar,
    Anomaly,
}

impl Level {
    /// The name in reports and JSON (docs/TRACE_FORMAT.md).
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::HighVar => "HIGH-VAR",
            Level::Anomaly => "ANOMALY",
        }
    }
}

/// The verdict on one layer, or on the global stages.
pub struct Verdict {
    /// None: the global stages (embedding, final norm, logits).
    pub layer: Option<usize>,
    pub level: Level,
    pub reasons: Vec<String>,
}

/// Thresholds of [`judge`].
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// A layer whose output std grows more than this factor over the
    /// previous layer's is HIGH-VAR.
    pub std_jump: f64,
    /// A stage whose abs_max exceeds this many stds is HIGH-VAR.
    pub outlier: f64,
}

/// A number for a report: `-` for none, 4 decimals, or scientific notation
/// when that would hide it.
pub fn fmt_g(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(x) if x.abs() >= 1e5 || x.abs() < 1e-3 => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
    }
}

/// Verdicts per layer (and one for the global stages), in key order:
/// ANOMALY for NaN/Inf; HIGH-VAR for a std jump of the layer output over
/// the previous layer's, or an abs_max far outside the std.
pub fn judge(trace: &Trace, th: Thresholds) -> Vec<Verdict> {
    let mut groups: BTreeMap<Option<usize>, Vec<(&str, &TensorStats)>> = BTreeMap::new();
    for (k, s) in &trace.stats {
        let layer = parse_key(k).and_then(|(_, l)| l);
        groups.entry(layer).or_default().push((k, s));
    }
    let out_std = |l: usize| trace.stat(&format!("blk.{l}.layer_out")).and_then(|s| s.all.std);
    let mut verdicts = Vec::new();
    for (layer, stages) in groups {
        let mut v = Verdict { layer, level: Level::Ok, reasons: Vec::new() };
        for (k, s) in &stages {
            if s.all.nan + s.all.inf > 0 {
                v.level = Level::Anomaly;
                v.reasons.push(format!("{k}: {} NaN, {} Inf", s.all.nan, s.all.inf));
            }
            if let (Some(a), Some(sd)) = (s.all.abs_max, s.all.std) {
                if sd > 0.0 && a / sd > th.outlier {
                    v.level = v.level.max(Level::HighVar);
                    v.reasons.push(format!("{k}: abs_max {} is {:.0}× its std", fmt_g(Some(a)), a / sd));
                }
            }
        }
        // Layer 0 is not compared with the embedding: the embedding's scale is
        // the model's choice (gemma's sqrt(d), post-norms), not a layer's doing.
        if let Some(l) = layer.filter(|&l| l > 0) {
            if let (Some(p), Some(c)) = (out_std(l - 1), out_std(l)) {
                if p > 0.0 && c / p > th.std_jump {
                    v.level = v.level.max(Level::HighVar);
                    v.reasons.push(format!("layer_out std jumps ×{:.1} over the previous layer", c / p));
                }
            }
        }
        verdicts.push(v);
    }
    verdicts
}

/// The first verdict at `level` in execution order: the embedding, the
/// layers, then the global tail (final norm, logits).
pub fn first_at(verdicts: &[Verdict], level: Level) -> Option<&Verdict> {
    let rank = |v: &&Verdict| match v.layer {
        Some(l) => l + 1,
        None if v.reasons.first().is_some_and(|r| r.starts_with("embedding")) => 0,
        None => usize::MAX,
    };
    verdicts.iter().filter(|v| v.level == level).min_by_key(rank)
}

/// Whether any verdict is an anomaly (the gate of `plumb trace`).
pub fn any_anomaly(verdicts: &[Verdict]) -> bool {
    verdicts.iter().any(|v| v.level == Level::Anomaly)
}

/// Whether any logit is NaN or infinite.
pub fn non_finite(logits: &[f32]) -> bool {
    logits.iter().any(|x| !x.is_finite())
}

/// Signs of garbage output that hold in any language: a repeating loop at
/// the end, replacement characters, ids outside the vocabulary; and first,
/// when `nan_logits`, non-finite logits along the way.
pub fn garbage_flags(ids: &[u32], text: &str, vocab: usize, nan_logits: bool) -> Vec<String> {
    let mut flags = Vec::new();
    if nan_logits {
        flags.push("NaN or Inf in the logits".into());
    }
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        flags.push(format!("token id {bad} is outside the {vocab}-token vocabulary"));
    }
    let fffd = text.matches('\u{FFFD}').count();
    if fffd > 0 {
        flags.push(format!("{fffd} replacement character(s) (U+FFFD): invalid UTF-8 from byte tokens"));
    }
    // A period-p loop repeated at least 3 full times (and over ≥ 8 tokens) at
    // the end: 3 rules out a phrase said twice, 8 a short word repeated in a
    // list ("1, 2, 1, 2"). Chosen on the real model's clean continuations.
    for p in 1..=ids.len() / 3 {
        let mut reps = 1;
        while (reps + 1) * p <= ids.len()
            && ids[ids.len() - (reps + 1) * p..ids.len() - reps * p] == ids[ids.len() - p..]
        {
            reps += 1;
        }
        if reps >= 3 && reps * p >= 8 {
            flags.push(format!("repetition loop: the last {p} token(s) repeat {reps} times"));
            break;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn loops_replacement_chars_and_bad_ids_are_flagged() {
        let ids: Vec<u32> = [5, 6, 7].into_iter().chain([1, 2, 3].repeat(4)).collect();
        let f = garbage_flags(&ids, "ok", 100, false);
        assert!(f.iter().any(|m| m.contains("last 3 token(s) repeat 4 times")), "{f:?}");
        assert!(garbage_flags(&[9; 10], "ok", 100, false).iter().any(|m| m.contains("repeat 10 times")));
        assert!(garbage_flags(&[1, 2], "a\u{FFFD}b", 100, false).iter().any(|m| m.contains("replacement")));
        assert!(garbage_flags(&[1, 200], "ab", 100, false).iter().any(|m| m.contains("outside")));
        // Short repeats (fewer than 8 tokens in the loop) and varied text pass.
        assert!(garbage_flags(&[1, 2, 1, 2, 1, 2], "ok", 100, false).is_empty());
        assert!(garbage_flags(&(0..40).collect::<Vec<_>>(), "Привет, 世界", 100, false).is_empty());
        // Non-finite logits come first.
        assert_eq!(garbage_flags(&[1, 200], "ab", 100, true)[0], "NaN or Inf in the logits");
        assert!(non_finite(&[0.0, f32::NAN]) && !non_finite(&[0.0, 1.0]));
    }

    fn stats(std: f64, abs_max: f64, nan: u64) -> TensorStats {
        let s = Stats {
            count: 4,
            mean: Some(0.0),
            std: Some(std),
            min: Some(-abs_max),
            max: Some(abs_max),
            abs_max: Some(abs_max),
            l2: None,
            nan,
            inf: 0,
        };
        TensorStats { shape: vec![4], all: s, last: s }
    }

    #[test]
    fn nan_is_an_anomaly_and_jumps_and_outliers_are_high_variance() {
        let mut t = Trace::default();
        t.stats.push(("embedding".into(), stats(1.0, 3.0, 0)));
        t.stats.push(("blk.0.layer_out".into(), stats(1.0, 3.0, 0)));
        t.stats.push(("blk.1.layer_out".into(), stats(20.0, 30.0, 0)));
        t.stats.push(("blk.2.ffn_gate".into(), stats(1.0, 500.0, 0)));
        t.stats.push(("blk.2.layer_out".into(), stats(20.0, 30.0, 2)));
        let th = Thresholds { std_jump: 8.0, outlier: 200.0 };
        let v = judge(&t, th);
        let level = |l: Option<usize>| v.iter().find(|v| v.layer == l).unwrap().level;
        assert_eq!(level(None), Level::Ok);
        assert_eq!(level(Some(0)), Level::Ok);
        assert_eq!(level(Some(1)), Level::HighVar);
        assert_eq!(level(Some(2)), Level::Anomaly);
        assert_eq!(first_at(&v, Level::HighVar).unwrap().layer, Some(1));
        assert_eq!(first_at(&v, Level::Anomaly).unwrap().layer, Some(2));
        assert!(any_anomaly(&v));
        assert_eq!(fmt_g(Some(123456.0)), "1.235e5");
        assert_eq!(fmt_g(None), "-");
    }
}
