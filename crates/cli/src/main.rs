//! The `plumb` command line: a thin layer that parses flags, calls the
//! library crates and prints. One file per subcommand under `cmd/`.
//!
//! Exit codes (docs/TRACE_FORMAT.md): 0 success, 1 a divergence or failed gate,
//! 2 bad input or usage.

use std::process::ExitCode;

use plumb_cli::{execute, out, progress, Cli, Outcome};

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
    let result = execute(cli.command);
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
