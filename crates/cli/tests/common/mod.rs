//! Helpers shared by the end-to-end tests: run the `plumb` binary, find the
//! repository's files, and the real model (mandatory in CI).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every architecture with a tiny test model under testdata/tiny.
pub const TINY_ARCHS: &[&str] = &include!("../../../tiny_archs.rs");

/// llama.cpp's reference configuration, the one the fast precision's older
/// goldens were made in (`-ctk f32 -ctv f32 -fa off --no-repack`): plumb's
/// defaults are llama.cpp's default configuration instead.
pub const REFERENCE: &[&str] = &["--kv-type", "f32", "--flash-attn", "off", "--repack", "off"];

/// The same for `plumb run`, with the whole prompt in one pass (`-ub` at
/// least the prompt).
pub const REFERENCE_RUN: &[&str] = &["--kv-type", "f32", "--flash-attn", "off", "--repack", "off", "--ubatch", "all"];

/// Runs plumb; returns (exit code, stdout, stderr). Fails on any panic.
pub fn plumb(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_plumb")).args(args).output().unwrap();
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!se.contains("panicked"), "plumb {args:?} panicked:\n{se}");
    (out.status.code().unwrap_or(-1), so, se)
}

/// `plumb bisect MODEL` between two settings of the fast precision
/// (`settings`: the `--a-…`/`--b-…` flags) on `tokens`, brief, with a
/// bound of 1e-12 so that any difference is a divergence; returns (exit
/// code, stdout, stderr).
pub fn bisect_fast_settings(model: &str, tokens: &str, settings: &[&str]) -> (i32, String, String) {
    let head = ["bisect", model, "--a-precision", "fast", "--b-precision", "fast"];
    let tail = ["--tokens", tokens, "--tol", "1e-12", "--brief"];
    plumb(&[&head[..], settings, &tail].concat())
}

/// The real Gemma 3 270M (scripts/fetch-model.sh). The tests that call it
/// are `#[cfg_attr(not(has_real_model), ignore = ...)]`: reported ignored
/// where it is absent, never passed.
pub fn real_model() -> PathBuf {
    root().join("models/gemma-3-270m-q4_k_m.gguf")
}

/// The real model's path as a command-line argument.
pub fn real_model_arg() -> String {
    real_model().to_string_lossy().into_owned()
}

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

/// plumb's greedy tokens (`got`) are llama.cpp's (`want`): plumb stops
/// after an end-of-generation token, llama.cpp's loop does not, so plumb's
/// may be a prefix.
pub fn assert_continues_as_llama_cpp(what: &str, got: &[u64], want: &[u64]) {
    assert!(!got.is_empty() && got[..] == want[..got.len()], "{what}:\n plumb     {got:?}\n llama.cpp {want:?}");
}

/// llama.cpp's 16 largest last logits (`want`: [[id, value], …]) are
/// plumb's `logits` at those ids, bit for bit.
pub fn assert_top_logits_bitwise(what: &str, logits: &[f32], want: &serde_json::Value) {
    let want = want.as_array().unwrap();
    assert_eq!(want.len(), 16);
    for pair in want {
        let (id, v) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
        assert_eq!(logits[id].to_bits(), v.to_bits(), "{what}: logit {id} is {}, llama.cpp's {v}", logits[id]);
    }
}

/// The real model's first two layers traced by plumb fast with `flags` on
/// the short prompt equal llama.cpp's (`golden`, made by
/// scripts/gen_knob_golden.sh): v_proj, attn_context and layer_out of
/// layers 0 and 1, NMSE 0.
pub fn assert_first_layers_bitwise(flags: &[&str], golden: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("first_layers.safetensors");
    let model = real_model_arg();
    let head = ["trace", &model, "-p", "The capital of France is", "--precision", "fast"];
    let tail = ["--layers", "0-1", "--stages", "v_proj,attn_context,layer_out", "--tensors", "--save"];
    let (code, _, err) = plumb(&[&head[..], flags, &tail, &[out.to_str().unwrap()]].concat());
    assert_eq!(code, 0, "{err}");
    let a = plumb_trace::Trace::load(&out).unwrap();
    let b = plumb_trace::Trace::load(&root().join(golden)).unwrap();
    let d = plumb_diff::diff(&a, &b, &plumb_diff::Gate::default(), 0.01);
    let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
    assert_eq!(compared.len(), 6, "{flags:?}: {compared:?}");
    for (key, nmse) in compared {
        assert!(nmse == 0.0, "{flags:?}: {key} differs from llama.cpp's (NMSE {nmse:e})");
    }
}

/// A golden of the real model by scripts/gen_knob_golden.sh
/// (`testdata/gemma3-270m/llamacpp_NAME.json`: a short prompt, and the
/// 2151-token one whole and in ubatches of 512), computed with `settings`
/// (a window-sized cache, if they ask for one, sized for each case's
/// ubatch): every case's last logits bit for bit, computed in this
/// process, and the greedy 32 tokens of `plumb run --precision fast` with
/// `flags` and the case's ubatch (every case, the ubatched ones included).
pub fn assert_real_model_cases(golden: &str, settings: plumb_model::RunSettings, flags: &[&str]) {
    use plumb_model::{generate::Generator, kernels::kernels_for, Model, NoTrace, Precision, RunSettings};
    let text = std::fs::read_to_string(root().join(golden)).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let k = kernels_for(Precision::Fast);
    let mut model = Model::load(&real_model()).unwrap();
    let model_arg = real_model_arg();
    for (name, case) in golden["cases"].as_object().unwrap() {
        let tokens: Vec<u32> = ids(&case["tokens"]).into_iter().map(|t| t as u32).collect();
        let ubatch = case["ubatch"].as_u64().map_or(tokens.len(), |u| u as usize);
        model.set_run_settings(RunSettings { swa_ring_ubatch: settings.swa_ring_ubatch.map(|_| ubatch), ..settings });
        let mut g = Generator::windowed(&model, k.as_ref(), tokens.len() + 32);
        let logits = g.prefill_in(&tokens, ubatch, &mut NoTrace);
        assert_top_logits_bitwise(name, &logits, &case["top_logits"]);
        let toks = tokens.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        // A case in ubatches of 512 runs with plumb's default ubatch,
        // which is llama.cpp's.
        let ub: &[&str] = match case["ubatch"].as_u64() {
            None => &["--ubatch", "all"],
            Some(512) => &[],
            Some(n) => panic!("{name}: a ubatch of {n}"),
        };
        let head = ["run", &model_arg, "--precision", "fast", "-t", "2", "--tokens", &toks, "-n", "32", "--json"];
        let (code, out, err) = plumb(&[&head[..], ub, flags].concat());
        assert_eq!(code, 0, "{err}");
        let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
        assert_continues_as_llama_cpp(
            &format!("{golden:?} {name}", golden = golden["configuration"]),
            &got,
            &ids(&case["generated"]),
        );
    }
}

/// CI runs the real-model tests rather than ignoring them: without the
/// model there, this fails loudly (in every test binary that has this module).
#[cfg(not(has_real_model))]
#[test]
fn ci_has_the_real_model() {
    assert!(std::env::var("CI").is_err(), "CI must fetch the real model first (scripts/fetch-model.sh)");
}
