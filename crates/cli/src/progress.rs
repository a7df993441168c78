//! A progress bar on stderr for long forward passes (a long prompt's
//! prefill in `run` and `trace`, filling a depth in `bench`): shown only
//! when stderr is a terminal and `--quiet` was not given, and only for work
//! long enough to be worth one.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};
use plumb_model::stage::Rows;
use plumb_model::{Observer, Stage};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `--quiet`: no progress bars.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Prompts shorter than this get no bar.
const MIN_TOKENS: usize = 1024;

/// A bar over `tokens` tokens through `layers` layers, or None where none
/// is shown.
pub fn bar(what: &str, tokens: usize, layers: usize) -> Option<ProgressBar> {
    if QUIET.load(Ordering::Relaxed) || tokens < MIN_TOKENS || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new((tokens * layers) as u64);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {percent}% · {elapsed} (eta {eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// Passes everything to the observer it wraps and moves the bar on by the
/// batch's rows as each layer's attention finishes.
pub struct Progress<'a> {
    pub inner: &'a mut dyn Observer,
    pub bar: Option<ProgressBar>,
}

impl<'a> Progress<'a> {
    pub fn new(inner: &'a mut dyn Observer, bar: Option<ProgressBar>) -> Progress<'a> {
        Progress { inner, bar }
    }

    /// Each layer's attention output has every row of its batch or part
    /// (the last layer's later stages may keep only the last).
    fn advance(&self, stage: Stage, shape: &[usize]) {
        if let (Some(b), Stage::AttnOut) = (&self.bar, stage) {
            b.inc(shape.first().copied().unwrap_or(0) as u64);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Observer for Progress<'_> {
    fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.inner.wants(layer, stage)
    }

    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        self.advance(stage, shape);
        self.inner.record(layer, stage, data, shape);
    }

    fn step_done(&mut self) {
        self.inner.step_done();
    }

    fn substitute(&mut self, layer: Option<usize>, stage: Stage, data: &mut [f32], shape: &[usize]) {
        self.inner.substitute(layer, stage, data, shape);
    }

    fn substitutes(&self) -> bool {
        self.inner.substitutes()
    }

    fn takes_parts(&self) -> bool {
        self.inner.takes_parts()
    }

    fn record_part(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize], rows: Rows) {
        self.advance(stage, shape);
        self.inner.record_part(layer, stage, data, shape, rows);
    }
}
