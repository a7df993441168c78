//! `plumb trace MODEL -p PROMPT`: every stage of the forward pass, with
//! statistics per layer and stage, layer verdicts, the next-token list, and
//! optionally the tensors, saved as a format-1 trace file.
//! `plumb trace --from FILE` renders a saved trace (from any engine).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context};
use plumb_model::generate::{Flow, Generator, Pick, Until};
use plumb_model::kernels::kernels_for;
use plumb_model::memory::{self, Estimate, Job};
use plumb_model::{NoTrace, Precision};
use plumb_trace::judge::{any_anomaly, first_at, fmt_g, garbage_flags, judge, non_finite, Level, Thresholds, Verdict};
use plumb_trace::plan::{parse_layers, parse_positions, parse_stages};
use plumb_trace::spill::Spill;
use plumb_trace::stage::parse_key;
use plumb_trace::{Positions, Recorder, Stage, Stats, Trace, TracePlan};
use serde_json::json;

use plumb_bisect::runs::trace_meta;

use crate::cmd::common::{load, parse_precision, sha256_file, Loaded, ModelArgs, PromptArgs, RunChoice};
use crate::progress::{bar, Progress};
use crate::style::{paint, ColorChoice, Paint};
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// A GGUF file or a HuggingFace model folder (omit with --from).
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// Render a saved trace file instead of running a model.
    #[arg(long, conflicts_with = "model")]
    pub from: Option<PathBuf>,
    /// Arithmetic: `exact` (the default here) or `fast`.
    #[arg(long, default_value = "exact", value_parser = parse_precision)]
    pub precision: Precision,
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub settings: RunChoice,
    /// Compute the prompt N tokens at a time, each part attending to the
    /// cache the earlier ones filled, as llama.cpp's ubatches (`-ub`; its
    /// default, and `plumb run`'s at the fast precision, is 512). The trace
    /// still holds every stage over the whole prompt, but no attn_scores or
    /// attn_probs when the prompt is cut. `all`: one forward pass.
    #[arg(long, value_name = "N|all", default_value = "all", value_parser = crate::cmd::common::parse_ubatch)]
    pub ubatch: crate::cmd::common::Ubatch,
    /// Stages to record: names, globs and aliases, e.g. `attn_norm,ffn_*`.
    #[arg(long, default_value = "*")]
    pub stages: String,
    /// Layers to record, e.g. `0-3,17` (default: all).
    #[arg(long)]
    pub layers: Option<String>,
    /// Keep the full tensors of the selected stages (for --save).
    #[arg(long)]
    pub tensors: bool,
    /// Token positions kept in saved tensors: `all` or `last`.
    #[arg(long, default_value = "all")]
    pub positions: String,
    /// Write the trace to this file (safetensors, format 1).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Overwrite an existing --save file.
    #[arg(long)]
    pub force: bool,
    /// Refuse, before running, a trace estimated to hold more memory than
    /// this (e.g. `8G`); by default 3/4 of the memory available.
    #[arg(long, value_parser = crate::cmd::common::parse_size)]
    pub max_memory: Option<u64>,
    /// JSON Lines on stdout instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Continue greedily for N tokens after the trace and check the output.
    #[arg(long, default_value_t = 0)]
    pub generate: usize,
    /// How many next-token candidates to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// A layer whose output std grows more than this factor over the
    /// previous layer's is marked HIGH-VAR.
    #[arg(long, default_value_t = 8.0)]
    pub std_jump: f64,
    /// A stage whose abs_max exceeds this many stds is marked HIGH-VAR.
    #[arg(long, default_value_t = 200.0)]
    pub outlier: f64,
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorChoice,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let style = paint(args.color);
    let (trace, generated, memory) = match (&args.from, &args.model) {
        (Some(f), _) => (Trace::load(f)?, None, None),
        (None, Some(_)) => run_model(&args)?,
        (None, None) => bail!("give a MODEL to run, or --from FILE to render a saved trace"),
    };
    if let (Some(path), None) = (&args.save, &args.from) {
        trace.save(path)?;
        eprintln!("wrote {} ({} stats, {} tensors)", path.display(), trace.stats.len(), trace.tensor_count());
    }
    let verdicts = judge(&trace, Thresholds { std_jump: args.std_jump, outlier: args.outlier });
    let garbage = generated.as_ref().map(|g: &Generated| g.flags.clone()).unwrap_or_default();
    if args.json {
        out::print(&render_json(&trace, &verdicts, generated.as_ref(), memory.as_ref())?)?;
    } else {
        out::print(&render_text(&trace, &verdicts, generated.as_ref(), style)?)?;
    }
    let failed = any_anomaly(&verdicts) || !garbage.is_empty();
    Ok(if failed { Outcome::GateFailed } else { Outcome::Ok })
}

/// A greedy continuation and what looks wrong with it.
pub struct Generated {
    pub ids: Vec<u32>,
    pub text: String,
    pub flags: Vec<String>,
}

fn run_model(args: &Args) -> anyhow::Result<(Trace, Option<Generated>, Option<Estimate>)> {
    let model_path = args.model.clone().expect("checked by caller");
    if let Some(p) = &args.save {
        if p.exists() && !args.force {
            bail!("{} exists; pass --force to overwrite it", p.display());
        }
    }
    let margs = ModelArgs {
        model: model_path.clone(),
        precision: Some(args.precision),
        threads: args.threads,
        settings: args.settings,
    };
    let loaded = load(&margs)?;
    let traced = trace_loaded(&loaded, args)?;
    Ok((traced.trace, traced.generated, Some(traced.memory)))
}

/// What one traced forward pass gave.
pub struct Traced {
    pub trace: Trace,
    pub generated: Option<Generated>,
    pub memory: Estimate,
}

/// Traces `args`' prompt through a model already loaded with `args`'
/// precision and settings (`args.model` names it in the trace's metadata).
pub fn trace_loaded(loaded: &Loaded, args: &Args) -> anyhow::Result<Traced> {
    let model_path = args.model.clone().context("no model to trace")?;
    let plan = TracePlan {
        stages: parse_stages(&args.stages)?,
        layers: args.layers.as_deref().map(parse_layers).transpose()?,
        tensors: args.tensors,
        positions: parse_positions(&args.positions)?,
    };
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref());
    let ids = args.prompt.token_ids(tok)?;
    let capacity = ids.len() + args.generate;
    crate::cmd::common::check_capacity(model, ids.len(), "--generate", args.generate)?;
    let file_bytes = model.source.path().metadata().map(|m| m.len()).unwrap_or(0);
    let est = |plan: &TracePlan| {
        let all_logits = every_row(plan, model.cfg.n_layer);
        let job = Job { prompt: ids.len(), capacity, all_logits, plan: Some(plan), spill: plan.tensors };
        memory::estimate(&model.cfg, file_bytes, job)
    };
    let memory = est(&plan);
    let mut cheaper = Vec::new();
    if plan.tensors && plan.positions == Positions::All {
        cheaper.push(("--positions last", est(&TracePlan { positions: Positions::Last, ..plan.clone() })));
    }
    let attention = [Stage::AttnScores, Stage::AttnProbs];
    if attention.iter().any(|s| plan.stages.contains(s)) {
        let mut stages = plan.stages.clone();
        stages.retain(|s| !attention.contains(s));
        cheaper.push(("--stages without attn_scores and attn_probs", est(&TracePlan { stages, ..plan.clone() })));
    }
    if plan.tensors {
        cheaper.push(("statistics only (no --tensors)", est(&TracePlan { tensors: false, ..plan.clone() })));
    }
    if plan.layers.is_none() && model.cfg.n_layer > 1 {
        let layers = Some([0, model.cfg.n_layer - 1].into_iter().collect());
        cheaper.push(("--layers 0,LAST (first and last layer)", est(&TracePlan { layers, ..plan.clone() })));
    }
    crate::cmd::common::check_memory(&memory, args.max_memory, "this trace", &cheaper)?;
    // Kept tensors go to a scratch file beside the trace file as they are
    // recorded, so the trace holds one at a time.
    let mut rec = if plan.tensors {
        let dir = match args.save.as_deref().and_then(|p| p.parent()) {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            Some(_) => PathBuf::from("."),
            None => std::env::temp_dir(),
        };
        // The scratch file, then the trace file beside it: twice the tensors.
        let bytes = memory.tensors_on_disk;
        if let Some(free) = crate::cmd::common::free_disk(&dir).filter(|&free| free < 2 * bytes) {
            let b = crate::out::bytes;
            let mut msg = format!(
                "the traced tensors take about {} on disk, twice that while the file is written, and {} has {} free",
                b(bytes),
                dir.display(),
                b(free)
            );
            msg.push_str("; cheaper:");
            for (how, e) in cheaper.iter().filter(|(_, e)| e.tensors_on_disk < bytes) {
                msg.push_str(&format!("\n  {how}: about {} on disk", b(e.tensors_on_disk)));
            }
            bail!(msg);
        }
        let spill = Spill::new_in(&dir).with_context(|| format!("a scratch file in {}", dir.display()))?;
        Recorder::spilling(plan, spill)
    } else {
        Recorder::new(plan)
    };
    let kernels = kernels_for(args.precision);
    let mut gen = Generator::new(model, kernels.as_ref(), capacity);
    // A prompt cut into ubatches is traced over every row of each.
    let ubatch = args.ubatch.limit();
    let cut = ubatch.is_some_and(|u| u < ids.len());
    let all_rows = cut || every_row(&rec.plan, model.cfg.n_layer);
    let mut watch = Progress::new(&mut rec, bar("trace", ids.len(), model.cfg.n_layer));
    let logits = gen.prefill_parts(&ids, ubatch, all_rows, &mut watch);
    watch.finish();
    if let Some(e) = rec.spill_error.take() {
        return Err(e).context("writing the traced tensors to a scratch file");
    }
    let v = model.cfg.vocab;
    let last = &logits[logits.len() - v..];

    let piece = |id: u32| -> String { tok.and_then(|t| t.piece(id)).unwrap_or("").to_string() };
    let top = top_k(last, args.top);
    let sha = if model_path.is_file() { Some(sha256_file(&model_path)?) } else { None };
    let mut meta =
        trace_meta(&model_path, loaded, args.precision, kernels.as_ref(), args.prompt.text.as_deref(), &ids, sha)?;
    plumb_bisect::runs::note_ubatch(&mut meta, ubatch, ids.len());
    let top_json: Vec<_> =
        top.iter().map(|(id, p, l)| json!({"id": id, "token": piece(*id), "prob": p, "logit": l})).collect();
    meta.insert("plumb.top".into(), serde_json::to_string(&top_json)?);
    let mut trace = Trace {
        meta,
        tokens: ids.clone(),
        stats: std::mem::take(&mut rec.stats),
        tensors: rec.tensors.drain(..).map(|(k, s, d)| (k, (s, d))).collect(),
        spilled: rec.spill.take().map(std::sync::Arc::new),
    };
    trace.sort();

    let generated = if args.generate > 0 {
        // Greedy, the prompt's trace already taken: the continuation is
        // not recorded, only checked.
        let mut nan_logits = false;
        let is_eog = |id: u32| tok.is_some_and(|t| t.is_eog(id));
        let until = Until { max_new: args.generate, stop: Some(&is_eog), feed_last: true };
        let g = gen.decode(logits, Pick::Greedy, &until, &mut NoTrace, &mut |step| {
            nan_logits |= non_finite(step.logits);
            Flow::Continue
        });
        // The last pass's logits are checked too, though no token is picked from them.
        nan_logits |= non_finite(&g.logits[g.logits.len() - v..]);
        let text = tok.map(|t| t.decode(&g.tokens)).unwrap_or_default();
        let flags = garbage_flags(&g.tokens, &text, v, nan_logits);
        Some(Generated { ids: g.tokens, text, flags })
    } else {
        None
    };
    Ok(Traced { trace, generated, memory })
}

/// Whether the plan wants a stage that holds every position only when all
/// positions' logits are computed: the logits, the final norm, or the last
/// layer's stages after attention (which otherwise go on with the last
/// token alone).
fn every_row(plan: &TracePlan, n_layer: usize) -> bool {
    let after_attention =
        |s: &Stage| Stage::ALL.iter().position(|a| a == s) > Stage::ALL.iter().position(|a| *a == Stage::AttnOut);
    plan.wants(None, Stage::Logits)
        || plan.wants(None, Stage::FinalNorm)
        || Stage::ALL
            .iter()
            .filter(|s| s.is_per_layer() && after_attention(s))
            .any(|&s| plan.wants(Some(n_layer - 1), s))
}

/// (id, probability, logit) of the k most likely tokens, softmax in f64.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f64, f32)> {
    let max = logits.iter().copied().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().filter(|x| x.is_finite()).map(|&x| ((x - max) as f64).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter().map(|i| (i as u32, ((logits[i] - max) as f64).exp() / z, logits[i])).collect()
}

pub fn token_texts(trace: &Trace) -> Vec<String> {
    trace.meta.get("plumb.token_text").and_then(|t| serde_json::from_str(t).ok()).unwrap_or_default()
}

fn stats_row(name: &str, s: &Stats, style: Paint) -> String {
    let bad = s.nan + s.inf > 0;
    let naninf = format!("{}/{}", s.nan, s.inf);
    let row = format!(
        "  {name:<16} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}",
        fmt_g(s.mean),
        fmt_g(s.std),
        fmt_g(s.min),
        fmt_g(s.max),
        fmt_g(s.abs_max),
        naninf
    );
    if bad {
        style.red(&row)
    } else {
        row
    }
}

pub fn render_text(
    trace: &Trace,
    verdicts: &[Verdict],
    generated: Option<&Generated>,
    style: Paint,
) -> anyhow::Result<String> {
    let mut s = String::new();
    let m = |k: &str| trace.meta.get(k).cloned().unwrap_or_else(|| "?".into());
    writeln!(s, "{}  {} ({})", style.bold("plumb trace"), m("plumb.model"), trace.arch())?;
    writeln!(s, "engine     {}", trace.engine())?;
    if let Some(k) = trace.meta.get("plumb.kernels") {
        writeln!(s, "kernels    {k}")?;
    }
    if let Some(p) = trace.meta.get("plumb.prompt") {
        writeln!(s, "prompt     {p:?}")?;
    }
    let texts = token_texts(trace);
    let toks: Vec<String> = trace
        .tokens
        .iter()
        .enumerate()
        .map(|(i, id)| match texts.get(i) {
            Some(t) => format!("{id}:{t:?}"),
            None => id.to_string(),
        })
        .collect();
    writeln!(s, "tokens     {} · {}", trace.tokens.len(), toks.join(" "))?;
    writeln!(s, "{}", style.dim("stats over all tokens (f64); the last token's are in --json and the trace file"))?;
    let header = format!(
        "  {:<16} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}",
        "stage", "mean", "std", "min", "max", "abs_max", "nan/inf"
    );
    let by_layer: BTreeMap<Option<usize>, &Verdict> = verdicts.iter().map(|v| (v.layer, v)).collect();
    let mut current: Option<Option<usize>> = None;
    let mut global_header_done = false;
    for (k, st) in &trace.stats {
        let (stage_name, layer) = match parse_key(k) {
            Some((stage, l)) => (stage.name().to_string(), l),
            None => (k.clone(), None),
        };
        if current != Some(layer) {
            current = Some(layer);
            match layer {
                Some(l) => {
                    let v = by_layer.get(&Some(l));
                    let tag = match v.map(|v| v.level) {
                        Some(Level::Anomaly) => style.red("ANOMALY"),
                        Some(Level::HighVar) => style.yellow("HIGH-VAR"),
                        _ => style.green("OK"),
                    };
                    writeln!(s, "\n{} {tag}", style.bold(&format!("layer {l}")))?;
                    for r in v.map(|v| v.reasons.as_slice()).unwrap_or_default() {
                        writeln!(s, "  {}", style.yellow(&format!("! {r}")))?;
                    }
                    writeln!(s, "{}", style.dim(&header))?;
                }
                None => {
                    if !global_header_done {
                        writeln!(s, "\n{}", style.dim(&header))?;
                        global_header_done = true;
                    } else {
                        writeln!(s)?;
                    }
                }
            }
        }
        writeln!(s, "{}", stats_row(&stage_name, &st.all, style))?;
    }
    if let Some(top) = trace.meta.get("plumb.top").and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(t).ok())
    {
        writeln!(s, "\n{}", style.bold("next token (last position)"))?;
        for (i, e) in top.iter().enumerate() {
            writeln!(
                s,
                "  {:>2}. {:>7} {:<20} p={:.4}  logit={:.4}",
                i + 1,
                e["id"],
                format!("{:?}", e["token"].as_str().unwrap_or("")),
                e["prob"].as_f64().unwrap_or(f64::NAN),
                e["logit"].as_f64().unwrap_or(f64::NAN)
            )?;
        }
    }
    if let Some(g) = generated {
        writeln!(s, "\n{} {:?}", style.bold(&format!("greedy continuation ({} tokens):", g.ids.len())), g.text)?;
        for f in &g.flags {
            writeln!(s, "  {}", style.red(&format!("GARBAGE: {f}")))?;
        }
    }
    let first_anomaly = first_at(verdicts, Level::Anomaly);
    let first_high = first_at(verdicts, Level::HighVar);
    let n_layers = verdicts.iter().filter(|v| v.layer.is_some()).count();
    writeln!(s)?;
    match (first_anomaly, first_high) {
        (Some(v), _) => writeln!(
            s,
            "{} first anomaly in {}: {}",
            style.red("summary"),
            v.layer.map(|l| format!("layer {l}")).unwrap_or_else(|| "the global stages".into()),
            v.reasons.first().cloned().unwrap_or_default()
        )?,
        (None, Some(v)) => writeln!(
            s,
            "{} no NaN/Inf; first high-variance layer {}: {}",
            style.yellow("summary"),
            v.layer.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            v.reasons.first().cloned().unwrap_or_default()
        )?,
        (None, None) => writeln!(
            s,
            "{} {} layers, {} stages traced, no anomaly",
            style.green("summary"),
            n_layers,
            trace.stats.len()
        )?,
    }
    Ok(s)
}

pub fn render_json(
    trace: &Trace,
    verdicts: &[Verdict],
    generated: Option<&Generated>,
    memory: Option<&Estimate>,
) -> anyhow::Result<String> {
    let mut lines = Vec::new();
    lines.push(json!({
        "type": "header",
        "engine": trace.engine(),
        "arch": trace.arch(),
        "meta": trace.meta.iter().filter(|(k, _)| k.as_str() != "plumb.top" && k.as_str() != "plumb.token_text").map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "tokens": trace.tokens,
        "token_text": token_texts(trace),
        "memory_estimate": memory.map(Estimate::to_json),
    }));
    for (k, st) in &trace.stats {
        let (stage, layer) = match parse_key(k) {
            Some((s, l)) => (s.name().to_string(), l),
            None => (k.clone(), None),
        };
        lines.push(json!({"type": "stage", "key": k, "stage": stage, "layer": layer, "stats": st}));
    }
    for v in verdicts {
        lines.push(json!({"type": "verdict", "layer": v.layer, "level": v.level.name(), "reasons": v.reasons}));
    }
    if let Some(top) = trace.meta.get("plumb.top").and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()) {
        lines.push(json!({"type": "top", "tokens": top}));
    }
    if let Some(g) = generated {
        lines.push(json!({"type": "generation", "ids": g.ids, "text": g.text, "flags": g.flags}));
    }
    let mut s = String::new();
    for l in lines {
        s.push_str(&serde_json::to_string(&l).context("JSON")?);
        s.push('\n');
    }
    Ok(s)
}
