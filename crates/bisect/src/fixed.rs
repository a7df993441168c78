//! The bisect against a fixed bound (`--tol`/`--gate`): B traced (or a
//! saved trace), A traced end to end or, isolating, each layer on B's
//! input to it, and plumb-diff's stage-by-stage comparison (verdict
//! DIVERGED at the first stage over its bound).
//!
//! Not noise-aware: for two sides that differ by design, see [`crate::noisy`].

use plumb_diff::{diff, Diff, Gate};
use plumb_trace::Trace;

use crate::{check_vocabularies, runs, Result, Sides};

/// What a fixed-bound bisect found.
pub struct FixedRun {
    pub diff: Diff,
    pub a: Trace,
    pub b: Trace,
    /// The token ids both sides ran.
    pub ids: Vec<u32>,
}

/// Traces both sides and compares them under `gate`; `isolate` runs each
/// layer of A on B's input to that layer, so errors are local.
pub fn fixed(s: &Sides, isolate: bool, gate: &Gate, tie_margin: f64) -> Result<FixedRun> {
    if let Some(b) = s.b {
        check_vocabularies(s.a, b)?;
    }
    let (b_trace, ids) = s.reference_and_ids()?;
    s.check_context(&ids)?;
    let a_trace = if isolate {
        runs::isolated(s.a_path, s.a, s.a_precision, &b_trace, s.prompt_text)?
    } else {
        runs::traced(s.a_path, s.a, s.a_precision, &ids, s.prompt_text)?
    };
    let mut d = diff(&a_trace, &b_trace, gate, tie_margin);
    if isolate {
        d.notes.push("isolated: each layer of A ran on B's input to that layer, so errors are local".into());
    }
    if let Some(spec) = s.inject {
        d.notes.push(format!("fault injected into A: {spec}"));
    }
    Ok(FixedRun { diff: d, a: a_trace, b: b_trace, ids })
}
