//! The one terminal painter of plumb's text reports: ANSI colours when on,
//! the text unchanged when off. Every command's text output (trace
//! reports, diff and bisect reports) paints through it; whether it is on
//! (a terminal, `--color`, `NO_COLOR`) is the command line's decision.
//!
//! Not for HTML: the HTML report's colours are CSS (plumb-diff's html.rs).

/// ANSI colours, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paint(pub bool);

impl Paint {
    pub fn enabled(&self) -> bool {
        self.0
    }

    /// `s` inside the SGR sequence `code` (ECMA-48 §8.3.117), reset after.
    fn p(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    /// Bold red: an anomaly, a divergence.
    pub fn red(&self, s: &str) -> String {
        self.p("1;31", s)
    }
    /// Green: a layer that is fine.
    pub fn green(&self, s: &str) -> String {
        self.p("32", s)
    }
    /// Bold green: a verdict that passed (PARITY, WITHIN NOISE).
    pub fn green_bold(&self, s: &str) -> String {
        self.p("1;32", s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.p("33", s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.p("2", s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.p("1", s)
    }
}

#[cfg(test)]
mod tests {
    use super::Paint;

    #[test]
    fn off_is_the_text_and_on_wraps_it() {
        assert_eq!(Paint(false).red("x"), "x");
        assert_eq!(Paint(true).red("x"), "\x1b[1;31mx\x1b[0m");
        assert_eq!(Paint(true).green("x"), "\x1b[32mx\x1b[0m");
        assert_eq!(Paint(true).green_bold("x"), "\x1b[1;32mx\x1b[0m");
    }
}
