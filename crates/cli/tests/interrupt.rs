//! An interrupted plumb leaves no partial output. SIGINT or SIGTERM at any
//! moment of `plumb trace --save` leaves the target absent or whole and no
//! temporary file; SIGKILL, which no program can catch, still never leaves
//! a partial target (it is only ever replaced whole, by a rename), though
//! a hidden temporary file may remain.

mod common;
use common::{real_model, root};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn trace_cmd(model: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_plumb"));
    c.args(["trace", model.to_str().unwrap(), "-p", "The capital of France is", "--tensors", "--save"]);
    c.arg(out).arg("--json").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    c
}

#[test]
fn signals_never_leave_a_partial_trace_file() {
    // The real model where present (a pass long enough to interrupt), else a tiny one.
    let model = if cfg!(has_real_model) { real_model() } else { root().join("testdata/tiny/gemma3/gemma3-f32.gguf") };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.safetensors");
    // How long a whole run takes, to spread the signals over it.
    let t0 = Instant::now();
    assert!(trace_cmd(&model, &out).status().unwrap().success());
    let whole = t0.elapsed();
    let want = std::fs::read(&out).unwrap();
    for sig in ["INT", "TERM", "KILL"] {
        for step in 0..10 {
            let _ = std::fs::remove_file(&out);
            let mut child = trace_cmd(&model, &out).spawn().unwrap();
            // Mostly towards the end, where the file is written.
            std::thread::sleep(whole.mul_f64(0.55 + 0.5 * step as f64 / 9.0));
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status();
            let status = child.wait().unwrap();
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert!(!stderr.contains("panicked"), "{stderr}");
            if sig != "KILL" {
                // Done, or exited 130 from plumb's handler, or (before the
                // handler is installed, with nothing written yet) killed.
                use std::os::unix::process::ExitStatusExt;
                let ok = status.success() || status.code() == Some(130) || status.signal().is_some();
                assert!(ok, "SIG{sig}: {status:?} {stderr}");
            }
            if out.exists() {
                let got = std::fs::read(&out).unwrap();
                assert!(
                    got == want,
                    "SIG{sig} at step {step}: a partial trace file ({} of {} bytes)",
                    got.len(),
                    want.len()
                );
            }
            let others: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "t.safetensors")
                .collect();
            if sig == "KILL" {
                others.iter().for_each(|n| std::fs::remove_file(dir.path().join(n)).unwrap());
            } else {
                assert!(others.is_empty(), "SIG{sig} at step {step} left {others:?}");
            }
        }
    }
}
