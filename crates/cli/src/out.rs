//! Output helpers: results go to stdout in one write; a closed pipe
//! (`plumb inspect m.gguf | head`) ends the program quietly.

use std::io::Write;

thread_local! {
    /// Where [`Stdout`] (and so [`print`]) writes instead of stdout,
    /// inside [`captured`].
    static CAPTURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with what it prints collected rather than written to stdout:
/// how the Python package gets a command's report, word for word.
pub fn captured<R>(f: impl FnOnce() -> R) -> (R, String) {
    let before = CAPTURE.with(|c| c.borrow_mut().replace(String::new()));
    let r = f();
    let text = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), before)).unwrap_or_default();
    (r, text)
}

/// Standard output as a command streams to it, inside [`captured`] the
/// capture instead.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if CAPTURE.with(|c| c.borrow_mut().as_mut().map(|s| s.push_str(&text)).is_some()) {
            return Ok(buf.len());
        }
        std::io::stdout().lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// Writes `text` to stdout (or the capture).
pub fn print(text: &str) -> anyhow::Result<()> {
    Stdout.write_all(text.as_bytes())?;
    Stdout.flush()?;
    Ok(())
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// "253.0 MiB"-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "268.1 M"-style counts.
pub fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1} K", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}
