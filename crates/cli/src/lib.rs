//! The `plumb` command line's commands as a library: the binary parses
//! flags and calls [`cmd`]; the Python package (crates/python) calls the same
//! functions, so both give the same numbers and the same verdicts.

use clap::{Parser, Subcommand};

pub mod cmd;
pub mod out;
pub mod progress;
pub mod style;

/// How a command ended when it did not fail outright.
pub enum Outcome {
    Ok,
    /// A gate failed (invalid model, divergence found): exit code 1.
    GateFailed,
}

#[derive(Parser)]
#[command(name = "plumb", about = "An LLM inference engine built to be seen inside")]
pub struct Cli {
    /// Kernel code path: `auto` (the widest this CPU has), `scalar` (the reference kernels),
    /// `avx2`, `avx512` (adds AVX512F) or `avx512vnni` (adds AVX512VL and AVX512VNNI).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_kernels)]
    pub kernels: plumb_kernels::KernelPath,
    /// No progress bars (they are drawn on stderr only when it is a terminal).
    #[arg(long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

fn parse_kernels(s: &str) -> Result<plumb_kernels::KernelPath, String> {
    plumb_kernels::KernelPath::parse(s).ok_or_else(|| {
        format!(
            "unknown or unavailable kernel path {s:?} (this CPU: auto, {})",
            plumb_kernels::KernelPath::available().iter().map(|p| p.flag()).collect::<Vec<_>>().join(", ")
        )
    })
}

#[derive(Subcommand)]
pub enum Command {
    /// Show a model's architecture, hyperparameters, tokenizer and tensors, and validate it.
    Inspect(cmd::inspect::Args),
    /// Generate text from a prompt.
    Run(cmd::run::Args),
    /// Measure prompt and generation speed (like llama-bench).
    Bench(cmd::bench::Args),
    /// Run a prompt with every stage traced: statistics per layer, verdicts, tensors.
    Trace(cmd::trace::Args),
    /// Compare two trace files (from any engine) stage by stage; B is the reference.
    Diff(cmd::diff::Args),
    /// Run two models or precisions on the same tokens and name the first stage where they part.
    Bisect(cmd::bisect::Args),
    /// Write a copy of a GGUF model with one realistic bug planted, to check the tools find it.
    Plant(cmd::plant::Args),
    /// Perplexity over a corpus, in chunks of --ctx tokens (as llama-perplexity).
    Ppl(cmd::ppl::Args),
    /// KL divergence of A's next-token distributions from B's over a corpus (as llama-perplexity --kl-divergence).
    Kld(cmd::kld::Args),
}

/// Runs one command, as the binary does once its flags are parsed.
pub fn execute(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Bisect(a) => cmd::bisect::run(a),
        Command::Plant(a) => cmd::plant::run(a),
        Command::Ppl(a) => cmd::ppl::run(a),
        Command::Kld(a) => cmd::kld::run(a),
    }
}
