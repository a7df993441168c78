//! `plumb bisect A [B] -p PROMPT`: runs two models (or one model at two
//! precisions, or a model against a saved reference trace) on the same
//! token ids and names the stage where they part.
//!
//! By default the judgement is noise-aware: what the two sides were given
//! (tokens, hyperparameters, weights) is compared first; then every stage of
//! A runs on B's own inputs to it (stage isolation), and its local error is
//! judged against a band measured by a calibration run — B's model made to
//! compute as A does — so expected noise (fast against exact, a quant
//! against its original) is told from a bug. `--tol`/`--gate` switch to a
//! fixed bound instead (verdict DIVERGED), where `--isolate` re-runs each
//! layer of A on B's layer input. `--inject` breaks one stage of A on
//! purpose; `--teacher-force N` follows the reference's greedy tokens and
//! compares the logits at every step.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use plumb_diff::compare::logits_metrics;
use plumb_diff::diff;
use plumb_model::fault::Fault;
use plumb_model::kernels::kernels_for;
use plumb_model::sample::argmax;
use plumb_model::{KvCache, NoTrace, Precision};
use plumb_trace::{Observer, Positions, Recorder, Trace, TracePlan};

use crate::cmd::common::{
    check_output, check_vocabularies, load, parse_precision, trace_meta, Loaded, ModelArgs, PromptArgs,
};
use crate::cmd::diff::{GateArgs, ReportArgs};
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// The model under test.
    pub a: PathBuf,
    /// The reference model (default: A itself, e.g. at another precision).
    pub b: Option<PathBuf>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[arg(long, default_value = "exact", value_parser = parse_precision)]
    pub a_precision: Precision,
    #[arg(long, default_value = "exact", value_parser = parse_precision)]
    pub b_precision: Precision,
    /// A saved reference trace (with tensors) instead of running B.
    #[arg(long, conflicts_with = "b")]
    pub reference: Option<PathBuf>,
    /// Run each layer of A on B's input to that layer: local error only.
    #[arg(long)]
    pub isolate: bool,
    /// Perturb one stage of A: STAGE@LAYER:KIND (scale=F, noise=S,
    /// zero-head=H, swap-heads=A,B, permute-rope, off-by-one).
    #[arg(long)]
    pub inject: Option<String>,
    /// Continue N tokens greedily on the reference's tokens and compare the logits at each.
    #[arg(long, default_value_t = 0)]
    pub teacher_force: usize,
    /// A saved band table (from --save-noise) instead of a calibration run.
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Save the calibration's bands, for `plumb diff --noise` of traces.
    #[arg(long)]
    pub save_noise: Option<PathBuf>,
    /// Save A's and B's traces.
    #[arg(long)]
    pub save_a: Option<PathBuf>,
    #[arg(long)]
    pub save_b: Option<PathBuf>,
    /// Overwrite existing --save-a, --save-b and --html files.
    #[arg(long)]
    pub force: bool,
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub gate: GateArgs,
    #[command(flatten)]
    pub report: ReportArgs,
}

pub(crate) fn full_plan() -> TracePlan {
    TracePlan { tensors: true, positions: Positions::All, ..TracePlan::default() }
}

/// Runs `loaded` on `ids` with every stage traced.
pub(crate) fn traced(
    path: &std::path::Path,
    loaded: &Loaded,
    precision: Precision,
    ids: &[u32],
    prompt: Option<&str>,
) -> anyhow::Result<Trace> {
    let kernels = kernels_for(precision);
    let mut rec = Recorder::new(full_plan());
    let mut cache = KvCache::new(&loaded.model.cfg, ids.len());
    loaded.model.forward(kernels.as_ref(), ids, &mut cache, true, &mut rec);
    let meta = trace_meta(path, loaded, precision, kernels.as_ref(), prompt, ids, false)?;
    let mut t = Trace { meta, tokens: ids.to_vec(), stats: rec.stats, tensors: Default::default() };
    t.tensors = rec.tensors.into_iter().map(|(k, s, d)| (k, (s, d))).collect();
    t.sort();
    Ok(t)
}

/// Runs each layer of A on B's input to that layer (B's embedding for
/// layer 0, B's previous layer_out after), and the head on B's last output.
fn isolated(
    path: &std::path::Path,
    a: &Loaded,
    precision: Precision,
    b: &Trace,
    prompt: Option<&str>,
) -> anyhow::Result<Trace> {
    let m = &a.model;
    let kernels = kernels_for(precision);
    let ids = &b.tokens;
    let t = ids.len();
    let get = |key: &str| -> anyhow::Result<Vec<f32>> {
        let (shape, data) =
            b.tensors.get(key).with_context(|| format!("--isolate needs the reference's {key} tensor"))?;
        if shape != &vec![t, m.cfg.d] {
            bail!("--isolate: reference {key} has shape {shape:?}, A needs [{t}, {}]", m.cfg.d);
        }
        Ok(data.clone())
    };
    let mut rec = Recorder::new(full_plan());
    m.embed(ids, &mut rec);
    let mut cache = KvCache::new(&m.cfg, t);
    for l in 0..m.cfg.n_layer {
        let mut x = if l == 0 { get("embedding")? } else { get(&format!("blk.{}.layer_out", l - 1))? };
        m.layer(kernels.as_ref(), l, &mut x, &mut cache, false, &mut rec);
    }
    let x = get(&format!("blk.{}.layer_out", m.cfg.n_layer - 1))?;
    m.head(kernels.as_ref(), &x, t, true, &mut rec);
    rec.step_done();
    let mut meta = trace_meta(path, a, precision, kernels.as_ref(), prompt, ids, false)?;
    meta.insert("plumb.isolated".into(), "each layer on the reference's input".into());
    let mut tr = Trace { meta, tokens: ids.to_vec(), stats: rec.stats, tensors: Default::default() };
    tr.tensors = rec.tensors.into_iter().map(|(k, s, d)| (k, (s, d))).collect();
    tr.sort();
    Ok(tr)
}

/// A saved reference trace: its token ids must fit A's vocabulary (they
/// replace the prompt, which is not re-tokenized).
pub(crate) fn reference_trace(r: &std::path::Path, a: &Loaded, prompt: &PromptArgs) -> anyhow::Result<Trace> {
    let t = Trace::load(r)?;
    if t.tokens.is_empty() {
        bail!("{}: the reference trace records no token ids (plumb.tokens)", r.display());
    }
    if prompt.text.is_some() || prompt.tokens.is_some() {
        eprintln!(
            "plumb: note: using the reference trace's {} token ids; the prompt is not re-tokenized",
            t.tokens.len()
        );
    }
    if let Some(bad) = t.tokens.iter().find(|&&i| i as usize >= a.model.cfg.vocab) {
        bail!("{}: token id {bad} is outside A's {}-token vocabulary", r.display(), a.model.cfg.vocab);
    }
    Ok(t)
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    for p in [&args.save_a, &args.save_b, &args.report.html, &args.save_noise].into_iter().flatten() {
        check_output(p, args.force)?;
    }
    if args.gate.tol.is_none() && args.gate.gate.is_none() {
        if args.isolate {
            eprintln!("plumb: note: --isolate is the default (per stage) without --tol/--gate");
        }
        return crate::cmd::noisy::run(args);
    }
    let a_args = ModelArgs { model: args.a.clone(), precision: Some(args.a_precision), threads: args.threads };
    let mut a = load(&a_args)?;
    if let Some(spec) = &args.inject {
        a.model.fault = Some(Fault::parse(spec, a.model.cfg.head_dim).map_err(|e| anyhow::anyhow!(e))?);
    }
    let b_loaded = match (&args.reference, &args.b) {
        (Some(_), _) => None,
        (None, Some(bp)) => {
            Some(load(&ModelArgs { model: bp.clone(), precision: Some(args.b_precision), threads: None })?)
        }
        (None, None) => {
            Some(load(&ModelArgs { model: args.a.clone(), precision: Some(args.b_precision), threads: None })?)
        }
    };
    if let Some(b) = &b_loaded {
        check_vocabularies(&a, b)?;
    }
    let b_path = args.b.clone().unwrap_or_else(|| args.a.clone());

    let (b_trace, ids) = match (&args.reference, &b_loaded) {
        (Some(r), _) => {
            let t = reference_trace(r, &a, &args.prompt)?;
            let ids = t.tokens.clone();
            (t, ids)
        }
        (None, Some(b)) => {
            let tok = b.tokenizer.as_ref().or(a.tokenizer.as_ref());
            let ids = args.prompt.token_ids(tok)?;
            (traced(&b_path, b, args.b_precision, &ids, args.prompt.text.as_deref())?, ids)
        }
        (None, None) => unreachable!("B is a model or a trace"),
    };
    if ids.len() > a.model.cfg.ctx_len {
        bail!("{} tokens exceed A's context of {}", ids.len(), a.model.cfg.ctx_len);
    }
    let a_trace = if args.isolate {
        isolated(&args.a, &a, args.a_precision, &b_trace, args.prompt.text.as_deref())?
    } else {
        traced(&args.a, &a, args.a_precision, &ids, args.prompt.text.as_deref())?
    };
    for (p, t) in [(&args.save_a, &a_trace), (&args.save_b, &b_trace)] {
        if let Some(p) = p {
            t.save(p)?;
            eprintln!("wrote {}", p.display());
        }
    }
    let mut d = diff(&a_trace, &b_trace, &args.gate.gate()?, args.gate.tie_margin);
    if args.isolate {
        d.notes.push("isolated: each layer of A ran on B's input to that layer, so errors are local".into());
    }
    if let Some(spec) = &args.inject {
        d.notes.push(format!("fault injected into A: {spec}"));
    }
    args.report.emit(&d, &a_trace, &b_trace)?;

    let mut hard = 0;
    if args.teacher_force > 0 {
        let Some(b) = &b_loaded else { bail!("--teacher-force needs a reference model, not a trace file") };
        let (text, flips) =
            teacher_force(&a, args.a_precision, b, args.b_precision, &ids, args.teacher_force, args.gate.tie_margin)?;
        hard = flips;
        if !args.report.json {
            out::print(&text)?;
        }
    }
    Ok(if d.diverged() || hard > 0 { Outcome::GateFailed } else { Outcome::Ok })
}

/// B continues greedily; A is fed B's tokens; the logits are compared at
/// every generated position. Returns the report and the count of top-1
/// flips that are not near-ties.
pub(crate) fn teacher_force(
    a: &Loaded,
    ap: Precision,
    b: &Loaded,
    bp: Precision,
    prompt: &[u32],
    n: usize,
    tie: f64,
) -> anyhow::Result<(String, usize)> {
    let (ka, kb) = (kernels_for(ap), kernels_for(bp));
    let cap = prompt.len() + n;
    let (mut ca, mut cb) = (KvCache::new(&a.model.cfg, cap), KvCache::new(&b.model.cfg, cap));
    let mut la = a.model.forward(ka.as_ref(), prompt, &mut ca, false, &mut NoTrace);
    let mut lb = b.model.forward(kb.as_ref(), prompt, &mut cb, false, &mut NoTrace);
    let v = b.model.cfg.vocab;
    let mut s = String::new();
    writeln!(s, "\nteacher-forced continuation ({n} tokens, B's greedy choices fed to both)")?;
    writeln!(
        s,
        "{:>5} {:>8} {:>8} {:>6} {:>8} {:>10} {:>10}  token",
        "step", "B top1", "A top1", "agree", "top5", "KL(B‖A)", "B margin"
    )?;
    let mut flips = 0;
    for step in 0..n {
        let m = &logits_metrics(&la, &lb, v, tie)[0];
        let next = argmax(&lb) as u32;
        if !m.top1_agree && !m.near_tie {
            flips += 1;
        }
        let piece = b.tokenizer.as_ref().and_then(|t| t.piece(next)).unwrap_or("");
        writeln!(
            s,
            "{:>5} {:>8} {:>8} {:>6} {:>7.0}% {:>10.3e} {:>10.4}  {:?}{}",
            step,
            m.top1_b,
            m.top1_a,
            if m.top1_agree { "yes" } else { "NO" },
            m.top5_overlap * 100.0,
            m.kl,
            m.ref_margin,
            piece,
            if m.near_tie { " (near-tie)" } else { "" }
        )?;
        if b.tokenizer.as_ref().is_some_and(|t| t.is_eog(next)) || step + 1 == n {
            break;
        }
        la = a.model.forward(ka.as_ref(), &[next], &mut ca, false, &mut NoTrace);
        lb = b.model.forward(kb.as_ref(), &[next], &mut cb, false, &mut NoTrace);
    }
    writeln!(s, "top-1 flips that are not near-ties: {flips}")?;
    Ok((s, flips))
}
