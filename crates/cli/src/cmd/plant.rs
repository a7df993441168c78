//! `plumb plant MODEL OUT --bug SPEC`: writes a copy of a GGUF model with one
//! realistic bug planted (optionally after requantizing every matrix), to
//! check that `plumb bisect` — or any other tool — finds it.

use std::path::PathBuf;

use anyhow::bail;
use plumb_model::plant::{plant, CATALOGUE};
use plumb_quant::GgmlType;

use crate::cmd::common::check_output;
use crate::{out, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model to copy (it is only read).
    pub model: Option<PathBuf>,
    /// Where to write the copy.
    pub out: Option<PathBuf>,
    /// The bug: KIND[:TARGET[,TARGET2]], e.g. `swap:blk.9.ffn_gate,blk.9.ffn_up` or `rope-base`.
    #[arg(long)]
    pub bug: Option<String>,
    /// Requantize every matrix to this type first (e.g. q8_0), so the copy also differs by design.
    #[arg(long)]
    pub requant: Option<String>,
    /// List the catalogue of bugs the tests plant.
    #[arg(long)]
    pub list: bool,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.list {
        out::print(&(CATALOGUE.join("\n") + "\n"))?;
        return Ok(Outcome::Ok);
    }
    let (Some(model), Some(dst), Some(bug)) = (&args.model, &args.out, &args.bug) else {
        bail!("give MODEL OUT --bug SPEC (or --list)");
    };
    check_output(dst, args.force)?;
    if std::fs::canonicalize(model).ok() == std::fs::canonicalize(dst).ok() {
        bail!("{} is the model itself; plant writes a copy", dst.display());
    }
    let requant = match &args.requant {
        Some(t) => Some(GgmlType::from_name(t).ok_or_else(|| anyhow::anyhow!("--requant: unknown type {t:?}"))?),
        None => None,
    };
    plant(model, dst, bug, requant).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
    eprintln!(
        "wrote {} ({bug}{})",
        dst.display(),
        args.requant.as_deref().map(|t| format!(", requantized to {t}")).unwrap_or_default()
    );
    Ok(Outcome::Ok)
}
