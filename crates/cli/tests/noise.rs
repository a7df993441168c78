//! The noise-aware bisect on the real Gemma 3 270M, in the two noisy
//! settings users live in: (a) fast precision against exact, and (b) a
//! requantized copy (every matrix to Q8_0 by plumb's quantizers) against the
//! original, both exact. Every bug of `plumb plant`'s catalogue must be
//! named — as its weight, config or token finding, and every stage outside
//! its band must be one that finding explains; every clean pair must be
//! WITHIN NOISE (exit 0) on eight prompts, one of them over 600 tokens; and
//! every injected fault kind must be named at its stage.

mod common;
use common::*;

use std::path::Path;

use serde_json::Value;

const PROMPT: &str = "The capital of France is Paris, and the capital of Germany is";

/// What a planted bug must be reported as: the finding's subject (a prefix
/// of it) and, for weights, a phrase of its diagnosis.
fn expected(bug: &str) -> (String, &'static str) {
    let (kind, target) = bug.split_once(':').unwrap_or((bug, ""));
    let first = target.split(',').next().unwrap_or("");
    let tensor = format!("{first}.weight");
    match kind {
        "swap" => (tensor, "holds B's"),
        "permute-rope" => (tensor, "rows permuted within each head"),
        "shift-rows" => (tensor, "rows shifted by one"),
        "transpose" => (tensor, "transposed"),
        "block-scale" => (tensor, "block"),
        "scale" => (tensor, "scaled by 2.0"),
        "zero" => (tensor, "zeroed"),
        "offset" => (tensor, "offset by -1"),
        "offset+" => (tensor, "offset by +1"),
        "rope-base" => ("rope_theta (global".into(), ""),
        "rope-local-base" => ("rope_theta_local".into(), ""),
        "rms-eps" => ("rms_eps".into(), ""),
        "window" => ("sliding_window".into(), ""),
        "attn-scale" => ("attn_scale".into(), ""),
        "all-global" => ("sliding layers".into(), ""),
        "softcap" => ("final_softcap".into(), ""),
        "no-bos" | "bos-id" => ("prompt position 0".into(), ""),
        "vocab-swap" => ("vocabulary entry".into(), ""),
        other => panic!("no expectation for bug kind {other}"),
    }
}

fn bisect_json(args: &[&str]) -> (i32, Value) {
    let mut all = vec!["bisect"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = plumb(&all);
    let j = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}\n{err}"));
    (code, j)
}

/// Checks one planted bug's report; returns a line for the failure list.
fn check_named(bug: &str, code: i32, j: &Value) -> Result<(), String> {
    let (subject, phrase) = expected(bug);
    if code != 1 || j["verdict"] != "anomaly" {
        return Err(format!("{bug}: exit {code}, verdict {}", j["verdict"]));
    }
    let findings = j["findings"].as_array().unwrap();
    let hit = findings.iter().find(|f| f["subject"].as_str().unwrap().starts_with(&subject));
    let Some(hit) = hit else {
        return Err(format!("{bug}: no finding on {subject}: {findings:?}"));
    };
    if !hit["what"].as_str().unwrap().contains(phrase) {
        return Err(format!("{bug}: finding {} does not say {phrase:?}", hit["what"]));
    }
    // No false alarm: every stage outside its band is explained by a finding.
    for s in j["stages"].as_array().unwrap() {
        if s["outside"] == true && s["explained_by"].as_array().unwrap().is_empty() {
            return Err(format!("{bug}: {} is outside its band with no finding explaining it", s["key"]));
        }
    }
    Ok(())
}

fn planted_bugs_are_named(requant: Option<&str>, precision: &str) {
    let m = real_model_arg();
    let (_, list, _) = plumb(&["plant", "--list"]);
    let bugs: Vec<&str> = list.lines().collect();
    assert!(bugs.len() >= 30, "the catalogue has {} bugs", bugs.len());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("planted.gguf");
    // The requantized copy is made once; each bug is planted into it.
    let base = match requant {
        Some(t) => {
            let base = dir.path().join("base.gguf");
            let (code, _, err) = plumb(&["plant", &m, base.to_str().unwrap(), "--bug", "none", "--requant", t]);
            assert_eq!(code, 0, "{err}");
            base.to_string_lossy().into_owned()
        }
        None => m.clone(),
    };
    let mut failures = Vec::new();
    for bug in &bugs {
        let args = vec!["plant", &base, copy.to_str().unwrap(), "--bug", bug, "--force"];
        let (code, _, err) = plumb(&args);
        assert_eq!(code, 0, "plant {bug}: {err}");
        let (code, j) = bisect_json(&[copy.to_str().unwrap(), &m, "--a-precision", precision, "-p", PROMPT]);
        if let Err(e) = check_named(bug, code, &j) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} planted bugs not named:\n{}",
        failures.len(),
        bugs.len(),
        failures.join("\n")
    );
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn planted_bugs_are_named_fast_against_exact() {
    planted_bugs_are_named(None, "fast");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn planted_bugs_are_named_in_a_requantized_copy() {
    planted_bugs_are_named(Some("q8_0"), "exact");
}

fn prompts() -> Vec<Vec<String>> {
    let long = root().join("testdata/prompts/long.txt");
    let mut v: Vec<Vec<String>> = [
        "The capital of France is",
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        "Once upon a time, in a small village by the sea, there lived",
        "Q: What is 17 times 23?\nA:",
        "Le chat est assis sur le tapis et regarde",
        "<start_of_turn>user\nWrite a haiku about rain.<end_of_turn>\n<start_of_turn>model\n",
        "1, 1, 2, 3, 5, 8, 13, 21,",
    ]
    .iter()
    .map(|p| vec!["-p".to_string(), p.to_string(), "--special".to_string()])
    .collect();
    v.push(vec!["-f".into(), long.to_string_lossy().into_owned()]);
    v
}

fn clean_pairs_are_within_noise(a: &Path, b: &Path, precision: &str) {
    let mut failures = Vec::new();
    let mut longest = 0;
    for p in prompts() {
        let mut args = vec![a.to_str().unwrap(), b.to_str().unwrap(), "--a-precision", precision];
        args.extend(p.iter().map(String::as_str));
        let (code, j) = bisect_json(&args);
        let n = j["logits"].as_array().map(|l| l.len()).unwrap_or(0);
        longest = longest.max(n);
        if code != 0 || j["verdict"] != "within_noise" {
            let worst = j["worst"].as_u64().map(|i| j["stages"][i as usize]["key"].clone()).unwrap_or_default();
            failures.push(format!(
                "{:?}: exit {code}, {} (worst {worst}), findings {}",
                &p[1], j["verdict"], j["findings"]
            ));
        }
    }
    assert!(longest >= 600, "the longest prompt has only {longest} tokens");
    assert!(failures.is_empty(), "clean pairs not within noise:\n{}", failures.join("\n"));
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn clean_fast_against_exact_is_within_noise_on_eight_prompts() {
    let m = real_model();
    clean_pairs_are_within_noise(&m, &m, "fast");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn clean_requantized_copy_is_within_noise_on_eight_prompts() {
    let m = real_model();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("q8.gguf");
    let (code, _, err) =
        plumb(&["plant", m.to_str().unwrap(), copy.to_str().unwrap(), "--bug", "none", "--requant", "q8_0"]);
    assert_eq!(code, 0, "{err}");
    clean_pairs_are_within_noise(&copy, &m, "exact");
}

/// Six fault kinds × four stages × three layers, fast against exact: each
/// is named at its own stage, and nothing before it is outside its band.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn injected_faults_are_named_under_fast_against_exact() {
    let m = real_model_arg();
    let kinds = ["scale=1.5", "noise=0.5", "zero-head=1", "swap-heads=0,1", "permute-rope", "off-by-one"];
    let stages = ["q_proj", "q_rope", "attn_context", "ffn_gate"];
    let mut failures = Vec::new();
    let mut n = 0;
    for layer in [0, 8, 17] {
        for stage in stages {
            for kind in kinds {
                let spec = format!("{stage}@{layer}:{kind}");
                let (code, j) = bisect_json(&[
                    &m,
                    "--a-precision",
                    "fast",
                    "-p",
                    "Water boils at a temperature of",
                    "--inject",
                    &spec,
                ]);
                let want = format!("blk.{layer}.{stage}");
                n += 1;
                if code != 1 || j["first_anomaly"] != want.as_str() {
                    failures.push(format!("{spec}: exit {code}, first anomaly {}", j["first_anomaly"]));
                }
            }
        }
    }
    assert_eq!(n, 72);
    assert!(failures.is_empty(), "{} of {n} injected faults not named:\n{}", failures.len(), failures.join("\n"));
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn same_model_and_precision_is_parity() {
    let m = real_model_arg();
    let (code, j) = bisect_json(&[&m, "-p", "Hello"]);
    assert_eq!(code, 0);
    assert_eq!(j["verdict"], "parity");
    assert_eq!(j["diverged"], false);
    // Every hyperparameter side by side, with the stages it touches.
    let eps = j["config"].as_array().unwrap().iter().find(|c| c["name"] == "rms_eps").unwrap();
    assert_eq!(eps["a"], eps["b"]);
    assert!(eps["stages"].as_array().unwrap().iter().any(|s| s == "attn_norm"));
    assert!(j["stages"].as_array().unwrap().len() > 300);
}

/// Cross-engine, from traces alone: plumb fast against the committed
/// transformers trace of tiny gemma3 is WITHIN NOISE under a band table
/// that `plumb bisect --save-noise` measured (fast against exact of the same
/// model), and a fault in plumb's trace is named at its stage.
#[test]
fn diff_of_foreign_traces_is_judged_by_a_saved_band_table() {
    let hf_dir = root().join("testdata/tiny/gemma3/hf");
    let hf_trace = root().join("testdata/tiny/gemma3/hf_trace.safetensors");
    let tokens = "1,17,255,3,400,511,42,7,99,128,300,5";
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    let hf = hf_dir.to_str().unwrap();
    let bisect_fast = |extra: &[&str]| {
        let mut args = vec!["bisect", hf, "--a-precision", "fast", "--tokens", tokens, "--brief"];
        args.extend_from_slice(extra);
        plumb(&args)
    };
    let (code, _, err) = bisect_fast(&["--save-noise", &p("bands.json")]);
    assert_eq!(code, 0, "{err}");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(p("bands.json")).unwrap()).unwrap();
    assert!(table["end_to_end"]["blk.1.ffn_down"].as_f64().unwrap() > 0.0);
    let (code, _, err) =
        bisect_fast(&["--inject", "attn_context@1:swap-heads=0,1", "--save-a", &p("broken.safetensors")]);
    assert_eq!(code, 1, "{err}");
    let (code, _, err) =
        plumb(&["trace", hf, "--precision", "fast", "--tokens", tokens, "--tensors", "--save", &p("fast.safetensors")]);
    assert!(code == 0 || code == 1, "{err}");
    let (code, out, _) =
        plumb(&["diff", &p("fast.safetensors"), hf_trace.to_str().unwrap(), "--noise", &p("bands.json"), "--json"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 0, "{out}");
    assert_eq!(j["verdict"], "within_noise");
    assert_eq!(j["command"], "plumb diff");
    let (code, out, _) =
        plumb(&["diff", &p("broken.safetensors"), hf_trace.to_str().unwrap(), "--noise", &p("bands.json"), "--json"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(code, 1, "{out}");
    assert_eq!(j["first_anomaly"], "blk.1.attn_context");
    // Against the trace itself (no B model): calibrated by A's own model.
    let hf_ref = hf_trace.to_str().unwrap();
    let (code, j) = bisect_json(&[hf, "--reference", hf_ref, "--a-precision", "fast"]);
    assert_eq!(code, 0);
    assert_eq!(j["verdict"], "within_noise");
    let (code, j) =
        bisect_json(&[hf, "--reference", hf_ref, "--a-precision", "fast", "--inject", "k_rope@1:permute-rope"]);
    assert_eq!(code, 1);
    assert_eq!(j["first_anomaly"], "blk.1.k_rope");
    // A band table without end-to-end bands, or not a table at all: exit 2.
    std::fs::write(p("junk.json"), "{\"local\": 3}").unwrap();
    let (code, _, err) =
        plumb(&["diff", &p("fast.safetensors"), hf_trace.to_str().unwrap(), "--noise", &p("junk.json")]);
    assert_eq!(code, 2);
    assert!(err.contains("junk.json"), "{err}");
}
