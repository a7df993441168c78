//! `plumb bench MODEL`: prompt processing and generation speed, like
//! llama-bench: `-p 512 -n 128 -r 5`, each test repeated after a warm-up,
//! reported as mean ± σ tokens/s with the precision and kernel path.
//! `-d 0,4096` runs each test again with that many tokens already in the
//! cache (llama-bench's depth); lists are accepted for `-p`, `-n` and `-d`.

use std::time::Instant;

use anyhow::bail;
use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Model, NoTrace, Observer};
use plumb_trace::{Recorder, TracePlan};
use serde_json::json;

use crate::cmd::common::{load, Auto, ModelArgs, Ubatch};
use crate::progress::{bar, Progress};
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt tokens processed as one batch (0 skips the test); a list
    /// such as `512,4096` runs each.
    #[arg(short = 'p', long = "n-prompt", default_value = "512", value_delimiter = ',')]
    pub n_prompt: Vec<usize>,
    /// Tokens generated one at a time (0 skips the test); a list runs each.
    #[arg(short = 'n', long = "n-gen", default_value = "128", value_delimiter = ',')]
    pub n_gen: Vec<usize>,
    /// Tokens already in the KV cache when each test starts (llama-bench's
    /// depth), e.g. `0,4096,16384`. The cache is filled once per depth, not
    /// timed, and cut back to the depth before every repetition.
    #[arg(short = 'd', long = "n-depth", default_value = "0", value_delimiter = ',')]
    pub depth: Vec<usize>,
    /// Prompt tokens per forward pass (llama-bench's `-ub`): a number,
    /// `all` (each prompt test in one pass) or `auto` (512 at the fast
    /// precision, as llama-bench; `all` at the exact one).
    #[arg(long, value_name = "N|all|auto", default_value = "auto", value_parser = crate::cmd::common::parse_ubatch_auto)]
    pub ubatch: Auto<Ubatch>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    pub reps: usize,
    /// Trace while timing: `off`, or `stats` (every stage, statistics only).
    #[arg(long, default_value = "off")]
    pub trace: String,
    #[arg(long)]
    pub json: bool,
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let v = if xs.len() > 1 { xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, v.sqrt())
}

/// Peak resident memory of this process (Linux VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn observer(kind: &str) -> Box<dyn Observer> {
    match kind {
        "stats" => Box::new(Recorder::new(TracePlan::default())),
        _ => Box::new(NoTrace),
    }
}

/// Tokens per batch when filling the cache to a depth (not timed).
const FILL: usize = 512;

/// Tokens of a deterministic synthetic prompt (speed does not depend on them).
fn tokens(model: &Model, n: usize) -> Vec<u32> {
    let v = model.cfg.vocab as u64;
    (0..n as u64).map(|i| ((i * 7919 + 13) % v.max(1)) as u32).collect()
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.reps == 0 {
        bail!("-r must be at least 1");
    }
    if !matches!(args.trace.as_str(), "off" | "stats") {
        bail!("--trace must be `off` or `stats`, got {:?}", args.trace);
    }
    let precision = args.model.precision();
    let loaded = load(&args.model)?;
    let model = &loaded.model;
    let tests: Vec<(&str, usize)> = (args.n_prompt.iter().map(|&n| ("pp", n)))
        .chain(args.n_gen.iter().map(|&n| ("tg", n)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let longest = tests.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let need = args.depth.iter().max().copied().unwrap_or(0) + longest.max(1);
    if need > model.cfg.ctx_len {
        bail!("{need} tokens (depth and test) exceed the model's context of {}", model.cfg.ctx_len);
    }
    crate::cmd::common::check_kv_fits(model, need)?;
    let kernels = kernels_for(precision);
    let ubatch = Ubatch::resolve(args.ubatch, precision);
    let mut results = Vec::new();
    for &depth in &args.depth {
        // The depth, filled once: its own tokens, in batches of FILL.
        let mut cache = KvCache::new(&model.cfg, depth + longest);
        let fill = tokens(model, depth + longest);
        let mut quiet = NoTrace;
        let mut watch = Progress::new(&mut quiet, bar(&format!("depth {depth}"), depth, model.cfg.n_layer));
        for chunk in fill[..depth].chunks(FILL) {
            model.forward(kernels.as_ref(), chunk, &mut cache, false, &mut watch);
        }
        watch.finish();
        for &(test, n) in &tests {
            let toks = &fill[depth..depth + n];
            let mut times = Vec::new();
            for rep in 0..=args.reps {
                cache.truncate(depth);
                let mut obs = observer(&args.trace);
                let t0 = Instant::now();
                if test == "pp" {
                    for part in toks.chunks(ubatch.rows(n)) {
                        model.forward(kernels.as_ref(), part, &mut cache, false, obs.as_mut());
                    }
                } else {
                    for &t in toks {
                        model.forward(kernels.as_ref(), &[t], &mut cache, false, obs.as_mut());
                    }
                }
                let dt = t0.elapsed().as_secs_f64();
                if rep > 0 {
                    // rep 0 is the warm-up.
                    times.push(n as f64 / dt);
                }
            }
            let (m, sd) = mean_sd(&times);
            let name = if depth > 0 { format!("{test}{n} @ d{depth}") } else { format!("{test}{n}") };
            results.push((name, depth, m, sd, times));
        }
    }
    let threads = rayon::current_num_threads();
    let size = model.source.path().metadata().map(|m| m.len()).unwrap_or(0);
    // The precision with the settings that change its arithmetic
    // ("fast, KV f16, flash attention, repacked").
    let run = model.cfg.run_settings();
    let settings = plumb_bisect::runs::settings(precision, run);
    if args.json {
        let doc = json!({
            "model": model.source.path().display().to_string(),
            "model_bytes": size,
            "arch": model.cfg.arch.name(),
            "precision": precision.name(),
            "settings": settings,
            "kv_type": run.kv_type.name(),
            "flash_attn": run.flash_attn,
            "repack": run.repack,
            "f16_math": run.f16_math.name(),
            "ubatch": match ubatch {
                Ubatch::All => json!("all"),
                Ubatch::Rows(n) => json!(n),
            },
            "kernels": kernels.describe(),
            "threads": threads,
            "trace": args.trace,
            "reps": args.reps,
            "peak_rss_bytes": peak_rss(),
            "tests": results.iter().map(|(t, d, m, sd, ts)| json!({"test": t, "depth": d, "tokens_per_s": m, "stddev": sd, "samples": ts})).collect::<Vec<_>>(),
        });
        out::print(&(serde_json::to_string_pretty(&doc)? + "\n"))?;
    } else {
        let mut s = String::new();
        s.push_str("| model | size | precision | kernels | threads | trace | test | t/s |\n|---|---:|---|---|---:|---|---:|---:|\n");
        for (t, _, m, sd, _) in &results {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} ± {:.2} |\n",
                model.source.path().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                out::bytes(size),
                settings,
                plumb_kernels::active_path().name(),
                threads,
                args.trace,
                t,
                m,
                sd
            ));
        }
        if let Some(r) = peak_rss() {
            s.push_str(&format!("\npeak RSS {} (model file {})\n", out::bytes(r), out::bytes(size)));
        }
        out::print(&s)?;
    }
    Ok(Outcome::Ok)
}
