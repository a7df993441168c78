//! plumb's traces against transformers' (`reference/hf_trace.py`, made by
//! `scripts/gen_tiny_traces.sh`): every stage of every tiny architecture
//! with cosine ≥ 0.99999 and `plumb diff` reporting parity; and the real
//! Gemma 3 270M against transformers at 6 tokens (statistics) and 2151
//! (statistics, and every stage element by element at the last position).

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_trace::Trace;

#[test]
fn tiny_models_match_transformers_stage_by_stage() {
    let dir = tempfile::tempdir().unwrap();
    for arch in TINY_ARCHS {
        let t = root().join(format!("testdata/tiny/{arch}"));
        let reference = t.join("hf_trace.safetensors");
        let b = Trace::load(&reference).unwrap();
        let ids: Vec<String> = b.tokens.iter().map(|i| i.to_string()).collect();
        for model in [t.join("hf"), t.join(format!("{arch}-f32.gguf"))] {
            let out = dir.path().join(format!("{arch}.safetensors"));
            let (code, _, _) = plumb(&[
                "trace",
                model.to_str().unwrap(),
                "--tokens",
                &ids.join(","),
                "--tensors",
                "--save",
                out.to_str().unwrap(),
                "--force",
            ]);
            assert_eq!(code, 0);
            let a = Trace::load(&out).unwrap();
            let d = diff(&a, &b, &Gate::default(), 0.01);
            assert!(
                !d.diverged(),
                "{arch} ({}) diverges from transformers at {:?}",
                model.display(),
                d.first.map(|i| &d.stages[i].key)
            );
            // Expert ids are compared as choices: every token sent to the
            // same experts at every layer.
            let ids = |key: &str| key.ends_with(".ffn_experts");
            let compared = d.stages.iter().filter(|s| s.cosine.is_some() || ids(&s.key)).count();
            assert_eq!(compared, b.stats.len(), "{arch}: every transformers stage compared element-wise");
            for s in d.stages.iter().filter(|s| !ids(&s.key)) {
                let c = s.cosine.unwrap_or_else(|| panic!("{arch}: {} not compared element-wise", s.key));
                assert!(c >= 0.99999, "{arch}: {} cosine {c}", s.key);
            }
            let experts = d.stages.iter().filter(|s| ids(&s.key)).count();
            assert_eq!(d.routers.len(), experts, "{arch}: a router comparison for every layer with experts");
            for r in &d.routers {
                assert_eq!(r.agree, r.tokens, "{arch}: layer {} routes differently: {:?}", r.layer, r.flips);
            }
            let (code, out, _) =
                plumb(&["diff", out.to_str().unwrap(), reference.to_str().unwrap(), "--brief", "--color", "never"]);
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("PARITY"), "{out}");
        }
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn real_gemma_matches_transformers_stats() {
    let m = real_model();
    let reference = root().join("testdata/gemma3-270m/hf_trace_stats.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plumb.safetensors");
    let (code, _, _) =
        plumb(&["trace", m.to_str().unwrap(), "-p", "The capital of France is", "--save", out.to_str().unwrap()]);
    assert_eq!(code, 0);
    let (code, report, _) = plumb(&["diff", out.to_str().unwrap(), reference.to_str().unwrap(), "--color", "never"]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("stages compared: 399"), "{report}");
    assert!(report.contains("PARITY"), "{report}");
}

/// Long context: a 2151-token prompt (testdata/gemma3-270m/long_prompt.txt),
/// past the sliding window (512) of five layers in six, traced by
/// transformers in f32 (scripts/gen_tiny_traces.sh: statistics of every
/// position, tensors of the last). plumb exact is within bounds at every
/// stage, and at the last position — whose attention spans the whole
/// prompt — every stage agrees element by element to NMSE ≤ 1e-10.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn real_gemma_matches_transformers_on_a_long_prompt() {
    let m = real_model_arg();
    let prompt = root().join("testdata/gemma3-270m/long_prompt.txt");
    let reference = root().join("testdata/gemma3-270m/hf_trace_long.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("plumb.safetensors");
    let (code, _, err) = plumb(&[
        "trace",
        &m,
        "-f",
        prompt.to_str().unwrap(),
        "--precision",
        "exact",
        "--tensors",
        "--positions",
        "last",
        "--save",
        out.to_str().unwrap(),
    ]);
    assert!(code == 0 || code == 1, "{err}");
    let (code, report, _) = plumb(&["diff", out.to_str().unwrap(), reference.to_str().unwrap(), "--color", "never"]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("stages compared: 399"), "{report}");
    assert!(report.contains("PARITY"), "{report}");

    let (a, b) = (Trace::load(&out).unwrap(), Trace::load(&reference).unwrap());
    assert_eq!(a.tokens.len(), 2151, "the prompt's tokens");
    let d = diff(&a, &b, &Gate::default(), 0.01);
    assert_eq!(d.stages.len(), 399);
    for s in &d.stages {
        let nmse = s.nmse.unwrap_or_else(|| panic!("{} not compared element by element", s.key));
        assert!(nmse <= 1e-10, "{}: NMSE {nmse:e} at the last of 2151 positions", s.key);
    }
}
