//! The noise-aware `plumb bisect` (its default): the flags of
//! [`plumb_bisect::noisy`], the files it writes, and the report.
//!
//! What runs, and how the bands are made, is the library's; this file reads
//! the band table given with `--noise`, saves what `--save-*` ask for, and
//! prints.

use anyhow::{bail, Context};
use plumb_bisect::noisy::{noisy, SavedBands};
use plumb_bisect::runs::traced;
use plumb_bisect::teacher::teacher_force;
use plumb_diff::noise::BandTable;

use crate::cmd::bisect::{load_a, load_b, note_reference_ids, sides, teacher_text, Args};
use crate::{out, Outcome};

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let a = load_a(&args)?;
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
    let b = load_b(&args)?;
    let tokenize = args.prompt.tokenizer_fn();
    let saved = match (&args.noise, &table) {
        (Some(path), Some(table)) => Some(SavedBands { path, table }),
        _ => None,
    };
    let r = noisy(&sides(&args, &a, b.as_ref(), &tokenize), saved, args.save_noise.is_some(), args.gate.tie_margin)?;
    note_reference_ids(&args, &r.ids);
    if let (Some(p), Some(t)) = (&args.save_noise, &r.bands) {
        plumb_trace::file::write_atomic(p, (serde_json::to_string_pretty(t)? + "\n").as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.save_b {
        r.b.save(p)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.save_a {
        traced(&args.a, &a, args.a_precision, &r.ids, args.prompt.text.as_deref())?.save(p)?;
        eprintln!("wrote {}", p.display());
    }
    let outcome = crate::cmd::diff::emit_noise(&r.report, &args.report)?;
    if args.teacher_force > 0 {
        let Some(b) = &b else { bail!("--teacher-force needs a reference model, not a trace file") };
        // Flips are shown; the verdict stays with the stages, since a flip
        // between sides that differ by design is the sum of their noise.
        let tf =
            teacher_force(&a, args.a_precision, b, args.b_precision, &r.ids, args.teacher_force, args.gate.tie_margin);
        if !args.report.json {
            out::print(&teacher_text(&tf, b, args.teacher_force)?)?;
        }
    }
    Ok(outcome)
}
