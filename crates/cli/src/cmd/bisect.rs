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
//!
//! This file is the flags, the files written, the printing and the exit
//! code; the runs themselves (traces, isolation, calibration, teacher
//! forcing) are plumb-bisect's, which tests and bindings call too.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use plumb_bisect::teacher::{teacher_force, TeacherForced};
use plumb_bisect::Sides;
use plumb_model::fault::Fault;
use plumb_model::{F16Math, KvTypes, Precision};

use crate::cmd::common::{
    check_output, load, parse_f16_math, parse_kv_type, parse_on_off, parse_precision, Auto, Loaded, ModelArgs,
    PromptArgs, RunChoice,
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
    /// A's KV cache type: `f32`, `f16`, `q8_0`, `q4_0`, `KEYS,VALUES` or
    /// `auto` (as for `plumb run`: f16 at the fast precision, f32 at the
    /// exact one).
    #[arg(long, default_value = "auto", value_parser = parse_kv_type)]
    pub a_kv_type: Auto<KvTypes>,
    /// B's KV cache type.
    #[arg(long, default_value = "auto", value_parser = parse_kv_type)]
    pub b_kv_type: Auto<KvTypes>,
    /// A's prompt computed N tokens at a time (llama.cpp's ubatches, `-ub`;
    /// `plumb run`'s default at the fast precision is 512), each part
    /// attending to the cache the earlier ones filled; the traces then have
    /// no attn_scores or attn_probs. `all`: one forward pass.
    #[arg(long, value_name = "N|all", default_value = "all", value_parser = crate::cmd::common::parse_ubatch)]
    pub a_ubatch: crate::cmd::common::Ubatch,
    /// B's ubatch.
    #[arg(long, value_name = "N|all", default_value = "all", value_parser = crate::cmd::common::parse_ubatch)]
    pub b_ubatch: crate::cmd::common::Ubatch,
    /// A's flash attention (fast precision only): `on`, `off` or `auto` (on
    /// at the fast precision).
    #[arg(long, default_value = "auto", value_parser = parse_on_off)]
    pub a_flash_attn: Auto<bool>,
    /// B's flash attention.
    #[arg(long, default_value = "auto", value_parser = parse_on_off)]
    pub b_flash_attn: Auto<bool>,
    /// A's repacked weights (fast precision only): `on`, `off` or `auto` (on
    /// at the fast precision where llama.cpp repacks).
    #[arg(long, default_value = "auto", value_parser = parse_on_off)]
    pub a_repack: Auto<bool>,
    /// B's repacked weights.
    #[arg(long, default_value = "auto", value_parser = parse_on_off)]
    pub b_repack: Auto<bool>,
    /// A's f16 arithmetic under flash attention: `widened`, `native` or
    /// `auto` (as `plumb run --f16-math`: llama.cpp built on this CPU).
    #[arg(long, default_value = "auto", value_parser = parse_f16_math)]
    pub a_f16_math: Auto<F16Math>,
    /// B's f16 arithmetic.
    #[arg(long, default_value = "auto", value_parser = parse_f16_math)]
    pub b_f16_math: Auto<F16Math>,
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

/// The two sides as the bisect library takes them; `b` is None against a
/// saved reference trace.
pub(crate) fn sides<'a>(
    args: &'a Args,
    a: &'a Loaded,
    b: Option<&'a Loaded>,
    tokenize: plumb_bisect::Tokenize<'a>,
) -> Sides<'a> {
    Sides {
        a_path: &args.a,
        a,
        a_precision: args.a_precision,
        b_path: args.b.as_deref().unwrap_or(&args.a),
        b,
        b_precision: args.b_precision,
        reference: args.reference.as_deref(),
        prompt_text: args.prompt.text.as_deref(),
        prompt_is_ids: args.prompt.tokens.is_some(),
        tokenize,
        inject: args.inject.as_deref(),
    }
}

/// Loads A, with any injected fault.
pub(crate) fn load_a(args: &Args) -> anyhow::Result<Loaded> {
    let a_args = ModelArgs {
        model: args.a.clone(),
        precision: Some(args.a_precision),
        threads: args.threads,
        settings: RunChoice {
            kv_type: args.a_kv_type,
            flash_attn: args.a_flash_attn,
            repack: args.a_repack,
            f16_math: args.a_f16_math,
        },
    };
    let mut a = load(&a_args)?;
    let run = a.model.cfg.run_settings();
    a.model.set_run_settings(plumb_model::RunSettings { ubatch: args.a_ubatch.limit(), ..run });
    if let Some(spec) = &args.inject {
        a.model.fault = Some(Fault::parse(spec, a.model.cfg.head_dim).map_err(|e| anyhow::anyhow!(e))?);
    }
    Ok(a)
}

/// Loads B: the model given, or A's file again (at B's precision); None
/// against a reference trace.
pub(crate) fn load_b(args: &Args) -> anyhow::Result<Option<Loaded>> {
    if args.reference.is_some() {
        return Ok(None);
    }
    let b_path = args.b.clone().unwrap_or_else(|| args.a.clone());
    let mut b = load(&ModelArgs {
        model: b_path,
        precision: Some(args.b_precision),
        threads: None,
        settings: RunChoice {
            kv_type: args.b_kv_type,
            flash_attn: args.b_flash_attn,
            repack: args.b_repack,
            f16_math: args.b_f16_math,
        },
    })?;
    let run = b.model.cfg.run_settings();
    b.model.set_run_settings(plumb_model::RunSettings { ubatch: args.b_ubatch.limit(), ..run });
    Ok(Some(b))
}

/// Says that a saved reference's ids replace the prompt, if one was given.
pub(crate) fn note_reference_ids(args: &Args, ids: &[u32]) {
    if args.reference.is_some() && (args.prompt.text.is_some() || args.prompt.tokens.is_some()) {
        eprintln!("plumb: note: using the reference trace's {} token ids; the prompt is not re-tokenized", ids.len());
    }
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
    let a = load_a(&args)?;
    let b = load_b(&args)?;
    let tokenize = args.prompt.tokenizer_fn();
    let r = plumb_bisect::fixed::fixed(
        &sides(&args, &a, b.as_ref(), &tokenize),
        args.isolate,
        &args.gate.gate()?,
        args.gate.tie_margin,
    )?;
    note_reference_ids(&args, &r.ids);
    for (p, t) in [(&args.save_a, &r.a), (&args.save_b, &r.b)] {
        if let Some(p) = p {
            t.save(p)?;
            eprintln!("wrote {}", p.display());
        }
    }
    args.report.emit(&r.diff, &r.a, &r.b)?;

    let mut hard = 0;
    if args.teacher_force > 0 {
        let Some(b) = &b else { bail!("--teacher-force needs a reference model, not a trace file") };
        let tf =
            teacher_force(&a, args.a_precision, b, args.b_precision, &r.ids, args.teacher_force, args.gate.tie_margin);
        hard = tf.flips;
        if !args.report.json {
            out::print(&teacher_text(&tf, b, args.teacher_force)?)?;
        }
    }
    Ok(if r.diff.diverged() || hard > 0 { Outcome::GateFailed } else { Outcome::Ok })
}

/// The teacher-forced continuation as a table, one line a step.
pub(crate) fn teacher_text(tf: &TeacherForced, b: &Loaded, n: usize) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(s, "\nteacher-forced continuation ({n} tokens, B's greedy choices fed to both)")?;
    writeln!(
        s,
        "{:>5} {:>8} {:>8} {:>6} {:>8} {:>10} {:>10}  token",
        "step", "B top1", "A top1", "agree", "top5", "KL(B‖A)", "B margin"
    )?;
    for (step, st) in tf.steps.iter().enumerate() {
        let m = &st.metrics;
        let piece = b.tokenizer.as_ref().and_then(|t| t.piece(st.token)).unwrap_or("");
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
    }
    writeln!(s, "top-1 flips that are not near-ties: {}", tf.flips)?;
    Ok(s)
}
