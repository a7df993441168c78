//! `plumb trace` end to end on the real model: the report, the JSON Lines,
//! the trace file read back by Python, and `--from` re-rendering.

mod common;
use common::*;

use std::path::PathBuf;
use std::process::Command;

const GEMMA_STAGES: &str = "attn_norm,q_proj,k_proj,v_proj,q_norm,k_norm,q_rope,k_rope,attn_scores,attn_probs,\
attn_context,attn_out,attn_post_norm,attn_residual,ffn_norm,ffn_gate,ffn_up,ffn_act,ffn_mul,ffn_down,ffn_post_norm,layer_out";

/// The Python with numpy + safetensors: $PLUMB_PYTHON, or .venv-test/ made by
/// `.ci/run` (`python3 -m venv .venv-test && .venv-test/bin/pip install numpy safetensors`).
/// The test that runs it is ignored where the build script found neither.
fn python() -> PathBuf {
    std::env::var_os("PLUMB_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv-test/bin/python"))
}

/// CI reads a trace file from Python rather than ignoring the test: without
/// that Python there, this fails loudly.
#[cfg(not(has_python))]
#[test]
fn ci_has_python() {
    assert!(std::env::var("CI").is_err(), "CI must create .venv-test with numpy and safetensors");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn report_shows_every_layer_and_stage_and_transformers_top_tokens() {
    let m = real_model();
    let (code, out, _) = plumb(&["trace", m.to_str().unwrap(), "-p", "The capital of France is", "--color", "never"]);
    assert_eq!(code, 0, "{out}");
    for l in 0..18 {
        let start = out.find(&format!("\nlayer {l} ")).unwrap_or_else(|| panic!("no layer {l}"));
        let block = &out[start..];
        let block = &block[..block[1..].find("\nlayer ").map(|e| e + 1).unwrap_or(block.len())];
        for s in GEMMA_STAGES.split(',') {
            assert!(block.contains(&format!("\n  {s} ")), "layer {l} lacks {s}");
        }
    }
    // transformers' top three for this prompt (testdata/gemma3-270m/reference.json).
    let top = &out[out.find("next token").unwrap()..];
    let lines: Vec<&str> = top.lines().skip(1).take(3).collect();
    for (line, want) in lines.iter().zip(["\"▁the\"", "\"▁a\"", "\"▁Paris\""]) {
        assert!(line.contains(want), "{line} should be {want}");
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn trace_file_rerenders_and_is_not_overwritten() {
    let m = real_model();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.safetensors");
    let args = ["trace", m.to_str().unwrap(), "-p", "The capital of France is", "--color", "never"];
    let (code, direct, _) = plumb(&[&args[..], &["--tensors", "--save", file.to_str().unwrap()]].concat());
    assert_eq!(code, 0);
    // Re-rendering the saved file gives the same report.
    let (code, again, _) = plumb(&["trace", "--from", file.to_str().unwrap(), "--color", "never"]);
    assert_eq!(code, 0);
    assert_eq!(direct, again);
    // An existing file is not overwritten without --force.
    let (code, _, err) = plumb(&[&args[..], &["--save", file.to_str().unwrap()]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("--force"), "{err}");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
#[cfg_attr(
    all(has_real_model, not(has_python)),
    ignore = "needs a Python with numpy + safetensors: .venv-test or $PLUMB_PYTHON"
)]
fn trace_file_is_readable_from_python() {
    let m = real_model();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.safetensors");
    let args = ["trace", m.to_str().unwrap(), "-p", "The capital of France is", "--color", "never"];
    let (code, _, _) = plumb(&[&args[..], &["--tensors", "--save", file.to_str().unwrap()]].concat());
    assert_eq!(code, 0);
    let out = Command::new(python())
        .arg(root().join("tests/python/check_trace.py"))
        .args([file.to_str().unwrap(), "--layers", "18", "--stages", GEMMA_STAGES])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "python check failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("ok: 399 tensors"), "{text}");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn json_lines_and_filters() {
    let m = real_model();
    let (code, out, _) = plumb(&[
        "trace",
        m.to_str().unwrap(),
        "-p",
        "Hello",
        "--json",
        "--stages",
        "ffn_*,lm_head",
        "--layers",
        "0-1,17",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["type"], "header");
    let keys: Vec<&str> = lines.iter().filter(|l| l["type"] == "stage").map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 3 * 7 + 1, "{keys:?}");
    assert!(keys.contains(&"blk.17.ffn_post_norm") && keys.contains(&"logits") && !keys.contains(&"blk.2.ffn_up"));
    let stage = lines.iter().find(|l| l["key"] == "blk.0.ffn_up").unwrap();
    assert_eq!(stage["stats"]["shape"], serde_json::json!([2, 2048]));
    assert_eq!(stage["stats"]["last"]["count"], 2048);
    // Unknown stage names and bad layer specs are usage errors.
    assert_eq!(plumb(&["trace", m.to_str().unwrap(), "-p", "x", "--stages", "nope"]).0, 2);
    assert_eq!(plumb(&["trace", m.to_str().unwrap(), "-p", "x", "--layers", "5-2"]).0, 2);
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn garbage_detector_flags_loops_and_replacement_chars() {
    let m = real_model();
    // A healthy continuation: exit 0, no GARBAGE line.
    let (code, out, _) = plumb(&[
        "trace",
        m.to_str().unwrap(),
        "-p",
        "Once upon a time",
        "--generate",
        "12",
        "--stages",
        "logits",
        "--color",
        "never",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("GARBAGE"), "{out}");
}

#[test]
fn the_same_command_writes_a_bit_identical_trace_file() {
    let m = root().join("testdata/tiny/gemma3/gemma3-q8_0.gguf");
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..2).map(|i| dir.path().join(format!("t{i}.safetensors"))).collect();
    for (i, f) in files.iter().enumerate() {
        let threads = if i == 0 { "1" } else { "2" };
        let (code, _, _) = plumb(&[
            "trace",
            m.to_str().unwrap(),
            "--tokens",
            "1,17,255,3,400,511",
            "--tensors",
            "--save",
            f.to_str().unwrap(),
            "-t",
            threads,
        ]);
        assert_eq!(code, 0);
    }
    assert_eq!(std::fs::read(&files[0]).unwrap(), std::fs::read(&files[1]).unwrap(), "trace files differ between runs");
}
