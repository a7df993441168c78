//! Whether terminal colour is on: when stdout is a terminal and `NO_COLOR`
//! is unset, or as `--color` says. The painting itself is
//! [`plumb_trace::paint::Paint`], the one painter of every text report.

use std::io::IsTerminal;

pub use plumb_trace::paint::Paint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The painter `choice` asks for.
pub fn paint(choice: ColorChoice) -> Paint {
    Paint(match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    })
}
