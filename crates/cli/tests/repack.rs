//! `--repack on`: the fast precision's products with the weights llama.cpp
//! repacks at load (its default on CPUs with AVX2), as its repacked
//! kernels sum them (goldens from llama.cpp itself, with repacking on:
//! `ONLY=none scripts/gen_knob_golden.sh repack --repack on`). On the real
//! model that is every Q4_K matrix (attn_output, half the ffn_down): the
//! rows of a step in whole fours through the four-row kernel's order, the
//! rest through the one-row kernel's.
//!
//! The real model: every stage of the first two layers on a short prompt
//! (four rows one way, two the other), the prompt's last logits (16
//! largest) bit for bit for the short prompt and the 2151-token test prompt
//! whole and in ubatches of 512, and the greedy 32 tokens after the short
//! and the long prompt. The tiny models hold only Q8_0, which llama.cpp
//! does not repack on x86.

mod common;
use common::{
    assert_continues_as_llama_cpp, assert_first_layers_bitwise, assert_top_logits_bitwise, ids, plumb, real_model, root,
};

use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{Model, NoTrace, Precision, RunSettings};

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn joined(v: &serde_json::Value) -> String {
    ids(v).iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_with_repacked_weights_computes_as_llama_cpp_does() {
    assert_first_layers_bitwise(&["--repack", "on"], "testdata/gemma3-270m/llamacpp_trace_repack.safetensors");
    let model_arg = real_model();
    let golden = json("testdata/gemma3-270m/llamacpp_repack.json");
    let mut model = Model::load(&real_model()).unwrap();
    model.set_run_settings(RunSettings { repack: true, ..RunSettings::default() });
    let k = kernels_for(Precision::Fast);
    for (name, case) in golden["cases"].as_object().unwrap() {
        let tokens: Vec<u32> = ids(&case["tokens"]).into_iter().map(|t| t as u32).collect();
        let ubatch = case["ubatch"].as_u64().map_or(tokens.len(), |u| u as usize);
        let mut g = Generator::windowed(&model, k.as_ref(), tokens.len() + 1);
        let logits = g.prefill_in(&tokens, ubatch, &mut NoTrace);
        assert_top_logits_bitwise(name, &logits, &case["top_logits"]);
        if case["ubatch"].is_u64() {
            continue;
        }
        let toks = joined(&case["tokens"]);
        let args = ["run", model_arg.to_str().unwrap(), "--repack", "on", "--tokens", &toks, "-n", "32", "--json"];
        let (code, out, err) = plumb(&args);
        assert_eq!(code, 0, "{err}");
        let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
        assert_continues_as_llama_cpp(name, &got, &ids(&case["generated"]));
    }
}

/// Repacking is llama.cpp's arithmetic: the exact precision refuses it;
/// `bisect` between repacked and plain weights names the first Q4_K
/// product, layer 0's attention output.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn repacking_is_a_setting_of_the_fast_precision() {
    let model = real_model();
    let model = model.to_str().unwrap();
    let (code, _, err) = plumb(&["run", model, "--precision", "exact", "--repack", "on", "-p", "Hi", "-n", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("repacked weights are a setting of the fast precision"), "{err}");
    let (code, out, err) = plumb(&[
        "bisect",
        model,
        "-p",
        "The capital of France is",
        "--a-precision",
        "fast",
        "--b-precision",
        "fast",
        "--a-repack",
        "on",
        "--tol",
        "1e-20",
        "--brief",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(fast, repacked)"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_out"), "{out}");
}
