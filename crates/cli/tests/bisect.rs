//! `plumb bisect` and `plumb diff` end to end on the real Gemma 3 270M.

mod common;
use common::*;

use std::process::Command;

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn injected_fault_in_layer_3_ffn_gate_is_named_with_its_chain() {
    let m = real_model_arg();
    let (code, out, _) = plumb(&[
        "bisect",
        &m,
        "-p",
        "The capital of France is",
        "--inject",
        "ffn_gate@3:scale=1.5",
        "--tol",
        "1e-5",
        "--color",
        "never",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DIVERGED first divergence at blk.3.ffn_gate — introduced here"), "{out}");
    assert!(out.contains("chain (error relative to the first): L3.ffn_gate 1.00× → L3.ffn_act"), "{out}");
    // Nothing before it is over its bound.
    let table = &out[out.find("stage ").unwrap()..];
    let first_over = table.lines().find(|l| l.contains("OVER")).unwrap();
    assert!(first_over.starts_with("blk.3.ffn_gate "), "{first_over}");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn same_model_same_precision_is_parity_and_json_parses() {
    let m = real_model_arg();
    let (code, out, _) = plumb(&["bisect", &m, "-p", "Hello", "--json"]);
    assert_eq!(code, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["diverged"], false);
    assert_eq!(j["verdict"], "parity");
    assert_eq!(j["first_anomaly"], serde_json::Value::Null);
    assert!(j["stages"].as_array().unwrap().len() > 300);
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn isolate_confines_the_error_to_the_faulty_layer() {
    let m = real_model_arg();
    let (code, out, _) = plumb(&[
        "bisect",
        &m,
        "-p",
        "Water boils at",
        "--inject",
        "attn_out@5:noise=0.5",
        "--isolate",
        "--tol",
        "1e-5",
        "--json",
    ]);
    assert_eq!(code, 1);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["first_divergence"], "blk.5.attn_out");
    for s in j["stages"].as_array().unwrap() {
        let key = s["key"].as_str().unwrap();
        let in_l5 = key.starts_with("blk.5.");
        if s["over"] == true {
            assert!(in_l5, "{key} is over its bound outside the faulty layer under --isolate");
        }
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn diff_of_saved_traces_and_teacher_forcing() {
    let m = real_model_arg();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    let html = dir.path().join("r.html");
    let (code, _, _) = plumb(&[
        "bisect",
        &m,
        "-p",
        "Once upon a time",
        "--inject",
        "q_rope@2:permute-rope",
        "--save-a",
        a.to_str().unwrap(),
        "--save-b",
        b.to_str().unwrap(),
        "--brief",
        "--teacher-force",
        "4",
    ]);
    assert_eq!(code, 1);
    let (code, out, _) = plumb(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--color",
        "never",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("first divergence at blk.2.q_rope"), "{out}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<svg") && page.contains("DIVERGED at <b>blk.2.q_rope</b>"));
    // A trace against itself is parity.
    let (code, out, _) = plumb(&["diff", b.to_str().unwrap(), b.to_str().unwrap(), "--brief", "--color", "never"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("PARITY"));
    // A loose enough gate file accepts the fault.
    let gate = dir.path().join("gate.toml");
    std::fs::write(&gate, "nmse = 10.0\n").unwrap();
    let (code, out, _) =
        plumb(&["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--gate", gate.to_str().unwrap(), "--brief"]);
    assert!(code == 0 || out.contains("top-1 flips"), "{out}");
    // Garbage in: exit 2.
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a trace").unwrap();
    let (code, _, err) = plumb(&["diff", junk.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("junk.safetensors"), "{err}");
    std::fs::write(&gate, "nmse = [1]\n").unwrap();
    assert_eq!(plumb(&["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--gate", gate.to_str().unwrap()]).0, 2);
}

/// Headless Chromium renders the HTML report (Debian's `chromium`, which
/// `.ci/run` installs); the screenshot must be a real picture, not a blank.
#[test]
// One ignore at most: two on one test are an error to clippy.
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
#[cfg_attr(
    all(has_real_model, not(has_chromium)),
    ignore = "needs chromium (/usr/bin/chromium or chromium-browser) to render the HTML report"
)]
fn html_report_renders_in_headless_chromium() {
    let m = real_model_arg();
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("the build script saw chromium");
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let png = dir.path().join("report.png");
    let (code, _, _) = plumb(&[
        "bisect",
        &m,
        "-p",
        "The capital of France is",
        "--inject",
        "ffn_gate@3:scale=1.5",
        "--brief",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", dir.path().join("profile").display()),
            "--window-size=1200,1400",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", html.display()),
        ])
        .output()
        .unwrap();
    assert!(png.is_file(), "no screenshot: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // A blank 1200×1400 page compresses to a few KB; the charts make it far larger.
    assert!(bytes.len() > 40_000, "screenshot is only {} bytes: a blank page?", bytes.len());
}

/// CI renders the HTML report rather than ignoring the test: without
/// chromium there, this fails loudly.
#[cfg(not(has_chromium))]
#[test]
fn ci_has_chromium() {
    assert!(std::env::var("CI").is_err(), "CI must install chromium for the HTML report test");
}
