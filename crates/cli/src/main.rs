//! The `plumb` command line: a thin layer that parses flags, calls the
//! library crates and prints. One file per subcommand under `cmd/`.
//!
//! Exit codes (docs/TRACE_FORMAT.md): 0 success, 1 a divergence or failed gate,
//! 2 bad input or usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod out;
mod progress;
mod style;

#[derive(Parser)]
#[command(name = "plumb", about = "An LLM inference engine built to be seen inside")]
struct Cli {
    /// Kernel code path: `auto` (the widest this CPU has), `scalar` (the reference kernels),
    /// `avx2`, `avx512` (adds AVX512F) or `avx512vnni` (adds AVX512VL and AVX512VNNI).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_kernels)]
    kernels: plumb_kernels::KernelPath,
    /// No progress bars (they are drawn on stderr only when it is a terminal).
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
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
enum Command {
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

/// How a command ended when it did not fail outright.
pub enum Outcome {
    Ok,
    /// A gate failed (invalid model, divergence found): exit code 1.
    GateFailed,
}

/// A forward pass allocates and frees buffers of megabytes per layer. By
/// default glibc maps each such buffer afresh and trims the heap after it,
/// so every pass faults its whole working set in again, page by page (15%
/// of prefill time on the reference machine). Keeping freed memory in the
/// heap for reuse leaves peak RSS where it was.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // The version line names the kernel path this CPU gets.
    let version: &'static str = Box::leak(
        format!("{} (kernels: {})", env!("CARGO_PKG_VERSION"), plumb_kernels::KernelPath::detect().name())
            .into_boxed_str(),
    );
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    plumb_kernels::set_path(cli.kernels);
    progress::set_quiet(cli.quiet);
    keep_freed_memory();
    // Ctrl-C or a termination signal: remove any file being written (the
    // target is only ever replaced whole, by a rename) and exit as a shell
    // expects of an interrupted program.
    let _ = ctrlc::set_handler(|| {
        plumb_formats::atomic::abandon_writes();
        std::process::exit(130);
    });
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Bisect(a) => cmd::bisect::run(a),
        Command::Plant(a) => cmd::plant::run(a),
        Command::Ppl(a) => cmd::ppl::run(a),
        Command::Kld(a) => cmd::kld::run(a),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::GateFailed) => ExitCode::from(1),
        Err(e) if out::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plumb: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
