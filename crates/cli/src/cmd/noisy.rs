//! The noise-aware `plumb bisect` (its default): findings about what the
//! two sides were given, then each stage's local error against its band.
//!
//! Passes, on the same token ids: B traced with every tensor kept (the
//! reference); A with every stage fed B's inputs (local errors); the
//! calibration — B's model in A's storage types at A's precision — fed the
//! same way (the bands), skipped when it would repeat A's run; and A end to
//! end (the consequences, logits agreement). Only B's trace is held whole;
//! the other passes are compared stage by stage as they run.

use std::path::Path;

use anyhow::{bail, Context};
use plumb_diff::noise::{self, BandTable, Bands, Finding, Probe};
use plumb_model::fault::Fault;
use plumb_model::given;
use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Precision};
use plumb_trace::Trace;

use crate::cmd::bisect::{reference_trace, teacher_force, traced, Args};
use crate::cmd::common::{load, Loaded, ModelArgs};
use crate::{out, Outcome};

/// Runs `m` on `ids` with `probe` observing (and, isolating, feeding).
fn probe_run(m: &Loaded, precision: Precision, ids: &[u32], probe: &mut Probe) {
    let kernels = kernels_for(precision);
    let mut cache = KvCache::new(&m.model.cfg, ids.len());
    m.model.forward(kernels.as_ref(), ids, &mut cache, true, probe);
}

fn finding(g: given::Given) -> Finding {
    Finding { kind: g.kind.to_string(), subject: g.subject, what: g.what, stages: g.stages }
}

/// Token-level findings: the vocabularies and the prompt's ids under each
/// side's own tokenizer.
fn token_findings(a: &Loaded, b: &Loaded, args: &Args) -> anyhow::Result<Vec<Finding>> {
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
    if args.prompt.tokens.is_none() {
        let ida = args.prompt.token_ids(Some(ta))?;
        let idb = args.prompt.token_ids(Some(tb))?;
        if ida != idb {
            let at = ida.iter().zip(&idb).position(|(x, y)| x != y).unwrap_or(ida.len().min(idb.len()));
            let show = |t: &plumb_model::tokenizer::Tokenizer, ids: &[u32]| match ids.get(at) {
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

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let a_args = ModelArgs { model: args.a.clone(), precision: Some(args.a_precision), threads: args.threads };
    let mut a = load(&a_args)?;
    if let Some(spec) = &args.inject {
        a.model.fault = Some(Fault::parse(spec, a.model.cfg.head_dim).map_err(|e| anyhow::anyhow!(e))?);
    }
    let table: Option<BandTable> = match &args.noise {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read band table {}", p.display()))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: not a plumb band table: {e}", p.display()))?,
            )
        }
        None => None,
    };
    let b_path = args.b.clone().unwrap_or_else(|| args.a.clone());
    let b = match &args.reference {
        Some(_) => None,
        None => Some(load(&ModelArgs { model: b_path.clone(), precision: Some(args.b_precision), threads: None })?),
    };
    let mut findings = Vec::new();
    let (b_trace, ids) = match (&args.reference, &b) {
        (Some(r), _) => {
            let t = reference_trace(r, &a, &args.prompt)?;
            if t.tensors.is_empty() {
                bail!("{}: the reference trace holds no tensors (trace it with --tensors)", r.display());
            }
            let ids = t.tokens.clone();
            (t, ids)
        }
        (None, Some(b)) => {
            if a.model.cfg.vocab != b.model.cfg.vocab {
                bail!("vocabularies disagree: A has {} tokens, B has {}", a.model.cfg.vocab, b.model.cfg.vocab);
            }
            findings.extend(token_findings(&a, b, &args)?);
            findings.extend(given::compare_config(&a.model.cfg, &b.model.cfg).into_iter().map(finding));
            findings.extend(given::compare_weights(&a.model, &b.model).into_iter().map(finding));
            let tok = b.tokenizer.as_ref().or(a.tokenizer.as_ref());
            let ids = args.prompt.token_ids(tok)?;
            (traced(&b_path, b, args.b_precision, &ids, args.prompt.text.as_deref())?, ids)
        }
        (None, None) => unreachable!("B is a model or a trace"),
    };
    if ids.len() > a.model.cfg.ctx_len {
        bail!("{} tokens exceed A's context of {}", ids.len(), a.model.cfg.ctx_len);
    }

    // A, every stage on B's inputs.
    let mut local = Probe::new(&b_trace, true);
    probe_run(&a, args.a_precision, &ids, &mut local);

    // The bands.
    let same_model = b.is_some() && same_file(&args.a, &b_path);
    let identical = same_model && args.a_precision == args.b_precision && args.inject.is_none();
    let mut notes = Vec::new();
    let cal_stages;
    // The calibration model and, against a trace, the stand-in reference it
    // was measured against: kept for --save-noise's end-to-end pass.
    let mut cal_model: Option<Loaded> = None;
    let mut stand_in: Option<Trace> = None;
    // A trace from another engine rounds f32 in its own order.
    let floor = if args.reference.is_some() && !b_trace.engine().starts_with("plumb") {
        noise::ENGINE_FLOOR
    } else {
        noise::PARITY_FLOOR
    };
    let (bands, how) = if let Some(t) = &table {
        (Bands::Table(t), format!("the saved table {} ({})", args.noise.as_ref().unwrap().display(), t.source))
    } else if identical {
        (
            Bands::Exact,
            "none needed: both sides compute the same arithmetic, so any stage above f32 rounding is outside".into(),
        )
    } else if same_model && args.inject.is_none() {
        // The calibration would be A's own run again.
        cal_stages = local.stages.clone();
        (
            Bands::Calibrated(&cal_stages),
            format!(
                "calibrated: A is B's own model at {}, so its local errors are the floor; band = {}× that, at least {:.0e}",
                args.a_precision.name(),
                noise::BAND_WIDTH,
                floor
            ),
        )
    } else if args.reference.is_some() {
        // Against a trace there is no B model: A's own model at exact stands
        // in for the reference, and the calibration is A's model at A's
        // precision against it, each stage isolated. The other engine's own
        // f32 rounding is what the floor covers.
        let cal = load(&ModelArgs { model: args.a.clone(), precision: Some(Precision::Exact), threads: None })?;
        let reference = stand_in.insert(traced(&args.a, &cal, Precision::Exact, &ids, None)?);
        let mut probe = Probe::new(reference, true);
        probe_run(&cal, args.a_precision, &ids, &mut probe);
        cal_stages = probe.stages;
        cal_model = Some(cal);
        notes.push(
            "against a trace the bands cover A's precision only: if the trace was made from other weights (say, the float original of this quant), give that model as B, or a band table with --noise".into(),
        );
        (
            Bands::Calibrated(&cal_stages),
            format!(
                "calibrated: A's model at {} against itself at exact, each stage isolated; band = {}× that, at least {:.0e}",
                args.a_precision.name(),
                noise::BAND_WIDTH,
                floor
            ),
        )
    } else {
        // B's model made to compute as A does.
        let mut cal = load(&ModelArgs { model: b_path.clone(), precision: Some(args.a_precision), threads: None })?;
        let kept = given::weights_as(&mut cal.model, &a.model);
        if !kept.is_empty() {
            notes.push(format!(
                "the calibration keeps {} tensor(s) in B's storage type (no quantizer for A's): {}",
                kept.len(),
                kept.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut probe = Probe::new(&b_trace, true);
        probe_run(&cal, args.a_precision, &ids, &mut probe);
        cal_stages = probe.stages;
        cal_model = Some(cal);
        (
            Bands::Calibrated(&cal_stages),
            format!(
                "calibrated: B's model in A's storage types at {}, each stage on B's inputs; band = {}× its local error, at least {:.0e}",
                args.a_precision.name(),
                noise::BAND_WIDTH,
                floor
            ),
        )
    };
    // A end to end: the consequences.
    let mut e2e = Probe::new(&b_trace, false);
    probe_run(&a, args.a_precision, &ids, &mut e2e);
    if let Some(p) = &args.save_noise {
        let Bands::Calibrated(c) = &bands else {
            bail!("--save-noise needs a calibration run (the two sides compute the same arithmetic, or --noise was given)")
        };
        // The calibration end to end too, for `plumb diff --noise`, against
        // the reference its local errors were measured on. Without a
        // calibration model, the calibration is A's own run.
        let cal_e2e = match &cal_model {
            None => e2e.stages.clone(),
            Some(cal) => {
                let mut probe = Probe::new(stand_in.as_ref().unwrap_or(&b_trace), false);
                probe_run(cal, args.a_precision, &ids, &mut probe);
                probe.stages
            }
        };
        let source = format!(
            "{} in A's storage types at {} against itself at {}",
            b_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            args.a_precision.name(),
            args.b_precision.name()
        );
        let t = noise::band_table(c, &cal_e2e, &source);
        plumb_trace::file::write_atomic(p, (serde_json::to_string_pretty(&t)? + "\n").as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    let a_engine = format!(
        "plumb {} ({}) {}",
        env!("CARGO_PKG_VERSION"),
        args.a_precision.name(),
        args.a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    );
    let b_engine = match &args.reference {
        Some(r) => format!(
            "{} {}",
            b_trace.engine(),
            r.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ),
        None => format!(
            "plumb {} ({}) {}",
            env!("CARGO_PKG_VERSION"),
            args.b_precision.name(),
            b_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ),
    };
    let evidence = noise::Evidence {
        engine_a: &a_engine,
        engine_b: &b_engine,
        local: &local.stages,
        end_to_end: &e2e.stages,
        logits: noise::logits_of(&e2e, &b_trace, args.gate.tie_margin),
        findings,
        tie_margin: args.gate.tie_margin,
        floor,
    };
    let mut r = noise::judge(evidence, bands, how);
    r.notes.extend(notes);
    if let Some(b) = &b {
        r.config = given::config_side_by_side(&a.model.cfg, &b.model.cfg)
            .into_iter()
            .map(|(name, a, b, stages)| noise::ConfigRow { name, a, b, stages })
            .collect();
    }
    if let Some(spec) = &args.inject {
        r.notes.push(format!("fault injected into A: {spec}"));
    }
    if let Some(p) = &args.save_b {
        b_trace.save(p)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.save_a {
        traced(&args.a, &a, args.a_precision, &ids, args.prompt.text.as_deref())?.save(p)?;
        eprintln!("wrote {}", p.display());
    }
    let outcome = crate::cmd::diff::emit_noise(&r, &args.report)?;
    if args.teacher_force > 0 {
        let Some(b) = &b else { bail!("--teacher-force needs a reference model, not a trace file") };
        // Flips are shown; the verdict stays with the stages, since a flip
        // between sides that differ by design is the sum of their noise.
        let (text, _flips) =
            teacher_force(&a, args.a_precision, b, args.b_precision, &ids, args.teacher_force, args.gate.tie_margin)?;
        if !args.report.json {
            out::print(&text)?;
        }
    }
    Ok(outcome)
}
