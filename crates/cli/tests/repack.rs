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
use common::*;

use plumb_model::RunSettings;

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_with_repacked_weights_computes_as_llama_cpp_does() {
    let reference = ["--kv-type", "f32", "--flash-attn", "off"];
    assert_first_layers_bitwise(
        &[&reference[..], &["--repack", "on"]].concat(),
        "testdata/gemma3-270m/llamacpp_trace_repack.safetensors",
    );
    let settings = RunSettings { repack: true, ..RunSettings::default() };
    let flags = [&reference[..], &["--repack", "on"]].concat();
    assert_real_model_cases("testdata/gemma3-270m/llamacpp_repack.json", settings, &flags);
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
        "--b-repack",
        "off",
        "--a-f16-math",
        "widened",
        "--b-f16-math",
        "widened",
        "--tol",
        "1e-20",
        "--brief",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(fast, KV f16, flash attention, repacked)"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_out"), "{out}");
}
