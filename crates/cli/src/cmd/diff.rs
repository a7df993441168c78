//! `plumb diff A.safetensors B.safetensors`: compares two trace files from
//! any engine, B being the reference, and names the first divergence.

use std::path::PathBuf;

use anyhow::Context;
use plumb_diff::noise::{self, BandTable};
use plumb_diff::report::{details, json, verdict};
use plumb_diff::{diff, Gate};
use plumb_trace::Trace;

use crate::style::ColorChoice;
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct GateArgs {
    /// NMSE bound for every stage (default 1e-5, for f32 against f32).
    #[arg(long, conflicts_with = "gate")]
    pub tol: Option<f64>,
    /// A TOML gate file with bounds per stage and layer.
    #[arg(long)]
    pub gate: Option<PathBuf>,
    /// A top-1 flip where the reference's top-2 margin is below this is a near-tie, not a divergence.
    #[arg(long, default_value_t = 0.01)]
    pub tie_margin: f64,
}

impl GateArgs {
    pub fn gate(&self) -> anyhow::Result<Gate> {
        if let Some(t) = self.tol {
            if t.is_nan() || t < 0.0 {
                anyhow::bail!("--tol must be a number ≥ 0, got {t}");
            }
            return Ok(Gate::with_tol(t));
        }
        match &self.gate {
            Some(p) => {
                let text =
                    std::fs::read_to_string(p).with_context(|| format!("cannot read gate file {}", p.display()))?;
                Gate::parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
            }
            None => Ok(Gate::default()),
        }
    }
}

#[derive(clap::Args)]
pub struct ReportArgs {
    /// One JSON document instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report with charts.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Only the verdict, not the per-stage table.
    #[arg(long)]
    pub brief: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub color: ColorChoice,
}

impl ReportArgs {
    pub fn emit(&self, d: &plumb_diff::Diff, a: &Trace, b: &Trace) -> anyhow::Result<()> {
        if let Some(p) = &self.html {
            plumb_trace::file::write_atomic(p, plumb_diff::html::page(d, a, b).as_bytes())
                .with_context(|| format!("cannot write {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        if self.json {
            return out::print(&json(d));
        }
        let paint = crate::style::paint(self.color);
        let mut s = verdict(d, paint);
        if !self.brief {
            s.push('\n');
            s.push_str(&details(d, paint));
        }
        out::print(&s)
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The trace under test (a trace file, or a folder of aprender's APRT
    /// stage dumps from `apr trace --save-tensor`).
    pub a: PathBuf,
    /// The reference trace (likewise).
    pub b: PathBuf,
    #[command(flatten)]
    pub gate: GateArgs,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Judge against a band table (from `plumb bisect --save-noise`) instead
    /// of a fixed bound: for two sides that differ by design.
    #[arg(long, conflicts_with_all = ["tol", "gate"])]
    pub noise: Option<PathBuf>,
    /// Overwrite an existing --html file.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if let Some(p) = &args.report.html {
        crate::cmd::common::check_output(p, args.force)?;
    }
    let (a, b) = load_pair(&args.a, &args.b)?;
    compare(&a, &b, &args)
}

/// Reads two traces, either of which may be a folder of aprender's APRT
/// stage dumps: such a folder is read after the other trace, whose shapes
/// and token ids it takes.
pub fn load_pair(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<(Trace, Trace)> {
    use plumb_trace::aprt::{is_dump, load_dump};
    Ok(match (is_dump(a), is_dump(b)) {
        (true, true) => anyhow::bail!("both sides are APRT folders: give a trace file for one of them"),
        (true, false) => {
            let b = Trace::load(b)?;
            (load_dump(a, &b)?, b)
        }
        (false, true) => {
            let a = Trace::load(a)?;
            let b = load_dump(b, &a)?;
            (a, b)
        }
        (false, false) => (Trace::load(a)?, Trace::load(b)?),
    })
}

/// Compares two traces already read (the paths in `args` are not opened)
/// and prints the report `args` asks for.
pub fn compare(a: &Trace, b: &Trace, args: &Args) -> anyhow::Result<Outcome> {
    let d = diff(a, b, &args.gate.gate()?, args.gate.tie_margin);
    if let Some(p) = &args.noise {
        let text = std::fs::read_to_string(p).with_context(|| format!("cannot read band table {}", p.display()))?;
        let table: BandTable =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: not a plumb band table: {e}", p.display()))?;
        if table.end_to_end.is_empty() {
            anyhow::bail!(
                "{}: the band table has no end-to-end bands (write it with plumb bisect --save-noise)",
                p.display()
            );
        }
        let how =
            format!("the saved table {} ({}), {}× its end-to-end error", p.display(), table.source, noise::BAND_WIDTH);
        let r = noise::judge_diff(&d, &table, how);
        return emit_noise(&r, &args.report);
    }
    if a.engine() != b.engine() && d.diverged() && !args.report.json {
        eprintln!(
            "plumb: note: the traces come from {} and {}, which differ by design; `plumb bisect MODEL --a-precision fast --save-noise bands.json` makes a band table for `--noise bands.json`",
            a.engine(),
            b.engine()
        );
    }
    args.report.emit(&d, a, b)?;
    Ok(if d.diverged() { Outcome::GateFailed } else { Outcome::Ok })
}

/// Prints a noise-aware report (and its page) as --json/--html/--brief ask.
pub fn emit_noise(r: &noise::NoiseReport, report: &ReportArgs) -> anyhow::Result<Outcome> {
    if let Some(p) = &report.html {
        plumb_trace::file::write_atomic(p, plumb_diff::html::noise_page(r).as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if report.json {
        out::print(&noise::json(r))?;
    } else {
        let paint = crate::style::paint(report.color);
        let mut s = noise::verdict_text(r, paint);
        if !report.brief {
            s.push('\n');
            s.push_str(&noise::table(r, paint));
        }
        out::print(&s)?;
    }
    Ok(if r.failed() { Outcome::GateFailed } else { Outcome::Ok })
}
