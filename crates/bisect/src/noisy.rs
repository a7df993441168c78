//! The noise-aware bisect (`plumb bisect`'s default): findings about what
//! the two sides were given, then each stage's local error against its band.
//!
//! Passes, on the same token ids: B traced with every tensor kept (the
//! reference); A with every stage fed B's inputs (local errors); the
//! calibration — B's model in A's storage types at A's precision — fed the
//! same way (the bands), skipped when it would repeat A's run; and A end to
//! end (the consequences, logits agreement). Only B's trace is held whole;
//! the other passes are compared stage by stage as they run.
//!
//! The judgement itself (bands, verdicts) is plumb-diff's
//! [`plumb_diff::noise::judge`]; this module decides which runs feed it.

use std::path::Path;

use plumb_diff::noise::{self, BandTable, Bands, Finding, NoiseReport, Probe};
use plumb_model::given;
use plumb_model::tokenizer::Tokenizer;
use plumb_model::Precision;
use plumb_trace::Trace;

use crate::runs::{probe_run, traced};
use crate::{file_name, Error, Loaded, Result, Sides};

/// What a noise-aware bisect found.
pub struct NoiseRun {
    pub report: NoiseReport,
    /// B's trace (or the saved reference), every tensor kept.
    pub b: Trace,
    /// The token ids both sides ran.
    pub ids: Vec<u32>,
    /// The calibration's bands, when asked for.
    pub bands: Option<BandTable>,
}

fn finding(g: given::Given) -> Finding {
    Finding { kind: g.kind.to_string(), subject: g.subject, what: g.what, stages: g.stages }
}

/// Token-level findings: the vocabularies and the prompt's ids under each
/// side's own tokenizer.
fn token_findings(a: &Loaded, b: &Loaded, s: &Sides) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    let (Some(ta), Some(tb)) = (&a.tokenizer, &b.tokenizer) else { return Ok(out) };
    let differing: Vec<u32> =
        (0..ta.vocab_size().min(tb.vocab_size()) as u32).filter(|&id| ta.piece(id) != tb.piece(id)).collect();
    if let Some(&id) = differing.first() {
        out.push(Finding {
            kind: "tokens".into(),
            subject: format!("vocabulary entry {id}"),
            what: format!(
                "A {:?}, B {:?} ({} entries differ)",
                ta.piece(id).unwrap_or(""),
                tb.piece(id).unwrap_or(""),
                differing.len()
            ),
            stages: vec!["embedding".into()],
        });
    }
    if !s.prompt_is_ids {
        let ida = (s.tokenize)(Some(ta)).map_err(Error::Prompt)?;
        let idb = (s.tokenize)(Some(tb)).map_err(Error::Prompt)?;
        if ida != idb {
            let at = ida.iter().zip(&idb).position(|(x, y)| x != y).unwrap_or(ida.len().min(idb.len()));
            let show = |t: &Tokenizer, ids: &[u32]| match ids.get(at) {
                Some(&i) => format!("{i} {:?}", t.piece(i).unwrap_or("")),
                None => "(end)".into(),
            };
            out.push(Finding {
                kind: "tokens".into(),
                subject: format!("prompt position {at}"),
                what: format!(
                    "A's tokenizer gives {} ids, B's {}; first difference: A {}, B {}{}",
                    ida.len(),
                    idb.len(),
                    show(ta, &ida),
                    show(tb, &idb),
                    if ta.add_bos != tb.add_bos {
                        format!(" (A adds BOS: {}, B: {})", ta.add_bos, tb.add_bos)
                    } else {
                        String::new()
                    }
                ),
                stages: vec!["embedding".into()],
            });
        }
    }
    Ok(out)
}

fn same_file(x: &Path, y: &Path) -> bool {
    match (std::fs::canonicalize(x), std::fs::canonicalize(y)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A saved band table and where it came from, instead of a calibration run.
pub struct SavedBands<'a> {
    pub path: &'a Path,
    pub table: &'a BandTable,
}

/// Runs the noise-aware bisect. `table` replaces the calibration;
/// `want_bands` asks for the calibration's bands (for `--save-noise`),
/// measured end to end too.
pub fn noisy(s: &Sides, table: Option<SavedBands>, want_bands: bool, tie_margin: f64) -> Result<NoiseRun> {
    let a = s.a;
    let mut findings = Vec::new();
    if s.reference.is_none() {
        let b = s.b.expect("B is a model or a trace");
        if a.model.cfg.vocab != b.model.cfg.vocab {
            return Err(Error::VocabSize { a: a.model.cfg.vocab, b: b.model.cfg.vocab });
        }
        findings.extend(token_findings(a, b, s)?);
        findings.extend(given::compare_config(&a.model.cfg, &b.model.cfg).into_iter().map(finding));
        findings.extend(given::compare_weights(&a.model, &b.model).into_iter().map(finding));
    }
    let (b_trace, ids) = s.reference_and_ids()?;
    if let (Some(r), true) = (s.reference, b_trace.tensors.is_empty()) {
        return Err(Error::ReferenceNoTensors { path: r.into() });
    }
    s.check_context(&ids)?;

    // A, every stage on B's inputs.
    let mut local = Probe::new(&b_trace, true);
    probe_run(a, s.a_precision, &ids, &mut local);

    // The bands.
    let same_model = s.b.is_some() && same_file(s.a_path, s.b_path);
    let run_b = s.b.map(|b| b.model.cfg.run_settings());
    let identical =
        same_model && s.a_precision == s.b_precision && s.inject.is_none() && run_b == Some(a.model.cfg.run_settings());
    let a_settings = crate::runs::settings(s.a_precision, a.model.cfg.run_settings());
    let mut notes = Vec::new();
    let cal_stages;
    // The calibration model and, against a trace, the stand-in reference it
    // was measured against: kept for the end-to-end bands.
    let mut cal_model: Option<Loaded> = None;
    let mut stand_in: Option<Trace> = None;
    // A trace from another engine rounds f32 in its own order.
    let floor = if s.reference.is_some() && !b_trace.engine().starts_with("plumb") {
        noise::ENGINE_FLOOR
    } else {
        noise::PARITY_FLOOR
    };
    let (bands, how) = if let Some(t) = &table {
        (Bands::Table(t.table), format!("the saved table {} ({})", t.path.display(), t.table.source))
    } else if identical {
        (
            Bands::Exact,
            "none needed: both sides compute the same arithmetic, so any stage above f32 rounding is outside".into(),
        )
    } else if same_model && s.inject.is_none() {
        // The calibration would be A's own run again.
        cal_stages = local.stages.clone();
        notes.push(
            "A and B are one model at two settings, so the bands are A's own differences from B: every stage is within them by construction, and what this says is how far the settings alone move each stage; --tol names the first stage where they part".into(),
        );
        (
            Bands::Calibrated(&cal_stages),
            format!(
                "calibrated: A is B's own model at {}, so its local errors are the floor; band = {}× that, at least {:.0e}",
                a_settings,
                noise::BAND_WIDTH,
                floor
            ),
        )
    } else if s.reference.is_some() {
        // Against a trace there is no B model: A's own model at exact stands
        // in for the reference, and the calibration is A's model at A's
        // precision against it, each stage isolated. The other engine's own
        // f32 rounding is what the floor covers.
        let (mut cal, _) = Loaded::open(s.a_path)?;
        let reference = stand_in.insert(traced(s.a_path, &cal, Precision::Exact, &ids, None)?);
        // The stand-in keeps an f32 cache; the calibration takes A's.
        cal.model.set_run_settings(a.model.cfg.run_settings());
        let mut probe = Probe::new(reference, true);
        probe_run(&cal, s.a_precision, &ids, &mut probe);
        cal_stages = probe.stages;
        cal_model = Some(cal);
        notes.push(
            "against a trace the bands cover A's precision only: if the trace was made from other weights (say, the float original of this quant), give that model as B, or a band table with --noise".into(),
        );
        (
            Bands::Calibrated(&cal_stages),
            format!(
                "calibrated: A's model at {} against itself at exact, each stage isolated; band = {}× that, at least {:.0e}",
                s.a_precision.name(),
                noise::BAND_WIDTH,
                floor
            ),
        )
    } else {
        // B's model made to compute as A does.
        let (mut cal, _) = Loaded::open(s.b_path)?;
        cal.model.set_run_settings(a.model.cfg.run_settings());
        let kept = given::weights_as(&mut cal.model, &a.model);
        if !kept.is_empty() {
            notes.push(format!(
                "the calibration keeps {} tensor(s) in B's storage type (no quantizer for A's): {}",
                kept.len(),
                kept.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut probe = Probe::new(&b_trace, true);
        probe_run(&cal, s.a_precision, &ids, &mut probe);
        cal_stages = probe.stages;
        cal_model = Some(cal);
        (
            Bands::Calibrated(&cal_stages),
            format!(
                "calibrated: B's model in A's storage types at {}, each stage on B's inputs; band = {}× its local error, at least {:.0e}",
                s.a_precision.name(),
                noise::BAND_WIDTH,
                floor
            ),
        )
    };
    // A end to end: the consequences.
    let mut e2e = Probe::new(&b_trace, false);
    probe_run(a, s.a_precision, &ids, &mut e2e);
    let saved_bands = if want_bands {
        let Bands::Calibrated(c) = &bands else { return Err(Error::NoCalibration) };
        // The calibration end to end too, for `plumb diff --noise`, against
        // the reference its local errors were measured on. Without a
        // calibration model, the calibration is A's own run.
        let cal_e2e = match &cal_model {
            None => e2e.stages.clone(),
            Some(cal) => {
                let mut probe = Probe::new(stand_in.as_ref().unwrap_or(&b_trace), false);
                probe_run(cal, s.a_precision, &ids, &mut probe);
                probe.stages
            }
        };
        let source = format!(
            "{} in A's storage types at {} against itself at {}",
            file_name(s.b_path),
            s.a_precision.name(),
            s.b_precision.name()
        );
        Some(noise::band_table(c, &cal_e2e, &source))
    } else {
        None
    };
    let a_engine = format!("plumb {} ({a_settings}) {}", env!("CARGO_PKG_VERSION"), file_name(s.a_path));
    let b_engine = match s.reference {
        Some(r) => format!("{} {}", b_trace.engine(), file_name(r)),
        None => format!(
            "plumb {} ({}) {}",
            env!("CARGO_PKG_VERSION"),
            crate::runs::settings(s.b_precision, run_b.unwrap_or_default()),
            file_name(s.b_path)
        ),
    };
    let evidence = noise::Evidence {
        engine_a: &a_engine,
        engine_b: &b_engine,
        local: &local.stages,
        end_to_end: &e2e.stages,
        logits: noise::logits_of(&e2e, &b_trace, tie_margin),
        routers: noise::routers_of(&e2e, &b_trace, tie_margin),
        findings,
        tie_margin,
        floor,
    };
    let mut report = noise::judge(evidence, bands, how);
    report.notes.extend(notes);
    if let Some(b) = s.b {
        report.config = given::config_side_by_side(&a.model.cfg, &b.model.cfg)
            .into_iter()
            .map(|(name, a, b, stages)| noise::ConfigRow { name, a, b, stages })
            .collect();
    }
    if let Some(spec) = s.inject {
        report.notes.push(format!("fault injected into A: {spec}"));
    }
    Ok(NoiseRun { report, b: b_trace, ids, bands: saved_bands })
}
