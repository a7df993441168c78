//! llama.cpp as people run it: `llama-completion --temp 0` with nothing
//! else computes with an F16 KV cache, flash attention (auto: on for the
//! CPU), ubatches of 512, repacked weights and a sliding-window cache cut to
//! the window and a ubatch (1024 cells on the real model), reused as a ring
//! (goldens from llama.cpp itself: `ONLY=none scripts/gen_knob_golden.sh
//! default --kv-type f16 --flash-attn on --repack on --swa-full off`).
//! plumb's `--kv-type f16 --flash-attn on --repack on --swa-full off` with
//! `--ubatch 512` computes the same bits, with `--f16-math` as the build's
//! CPU (AVX512-FP16 or not; `default_f16math` is the golden of a build
//! with it).
//!
//! The real model: the prompt's last logits (16 largest) bit for bit for a
//! short prompt and the 2151-token test prompt, whole and in ubatches of
//! 512 (where the third ubatch wraps around the cells), and the greedy 32
//! tokens after each; every stage of the first two layers on the short
//! prompt.

mod common;
use common::*;

use plumb_model::{F16Math, KvType, RunSettings};

/// llama.cpp's default configuration as built on a CPU without AVX512-FP16
/// (`llamacpp_default.json`) and on one with it
/// (`llamacpp_default_f16math.json`): the f16 arithmetic of its flash
/// attention differs between the two builds (`--f16-math`). Each golden
/// records which it is.
const GOLDENS: [(&str, F16Math); 2] = [
    ("testdata/gemma3-270m/llamacpp_default.json", F16Math::Widened),
    ("testdata/gemma3-270m/llamacpp_default_f16math.json", F16Math::Native),
];

fn default_settings(f16_math: F16Math) -> RunSettings {
    RunSettings {
        kv_type: KvType::F16.into(),
        flash_attn: true,
        repack: true,
        swa_ring_ubatch: Some(512),
        f16_math,
        ubatch: None,
    }
}

fn golden_f16_math(golden: &str) -> String {
    let text = std::fs::read_to_string(root().join(golden)).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["f16_math"].as_str().unwrap_or("widened").to_string()
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_in_llama_cpps_default_configuration_computes_as_llama_cpp_does() {
    // plumb's own defaults, no flag given: llama.cpp's as built on this CPU.
    let this_cpu = F16Math::of_this_cpu();
    let (golden, math) = GOLDENS.into_iter().find(|g| g.1 == this_cpu).unwrap();
    assert_eq!(golden_f16_math(golden), math.name(), "{golden}");
    assert_real_model_cases(golden, default_settings(math), &[]);
}

/// The build of the other kind, by its flag: any CPU mirrors either.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_other_builds_f16_arithmetic_is_mirrored_by_its_flag() {
    let this_cpu = F16Math::of_this_cpu();
    let (golden, math) = GOLDENS.into_iter().find(|g| g.1 != this_cpu).unwrap();
    assert_eq!(golden_f16_math(golden), math.name(), "{golden}");
    assert_real_model_cases(golden, default_settings(math), &["--f16-math", math.name()]);
}

/// Every stage llama.cpp exposes of the first two layers, on a short
/// prompt (the one-row path, whose f16 context the two builds update
/// differently), in its default configuration, for both builds.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_models_stages_in_llama_cpps_default_configuration_are_llama_cpps() {
    let flags = ["--kv-type", "f16", "--flash-attn", "on", "--repack", "on", "--f16-math"];
    assert_first_layers_bitwise(
        &[&flags[..], &["widened"]].concat(),
        "testdata/gemma3-270m/llamacpp_trace_default.safetensors",
    );
    assert_first_layers_bitwise(
        &[&flags[..], &["native"]].concat(),
        "testdata/gemma3-270m/llamacpp_trace_default_f16math.safetensors",
    );
}

/// `--f16-math native` needs flash attention's f16 context, and `auto`
/// says what it chose.
#[test]
fn native_f16_math_needs_flash_attention_over_an_f16_context() {
    let llama = root().join("testdata/tiny/gemma2/gemma2-q8_0.gguf");
    let run =
        |extra: &[&str]| plumb(&[&["run", llama.to_str().unwrap(), "--tokens", "1,17,255", "-n", "1"], extra].concat());
    let (code, _, err) = run(&["--flash-attn", "off", "--f16-math", "native"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs flash attention"), "{err}");
    let (code, _, err) = run(&["--kv-type", "q8_0", "--f16-math", "native"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["--f16-math", "sometimes"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = run(&["--f16-math", "native", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("f16 arithmetic"), "{out}");
}

/// The window-sized cache is mirrored under flash attention only.
#[test]
fn a_window_sized_cache_needs_flash_attention() {
    let gemma2 = root().join("testdata/tiny/gemma2/gemma2-q8_0.gguf");
    let (code, _, err) =
        plumb(&["run", gemma2.to_str().unwrap(), "--swa-full", "off", "--flash-attn", "off", "--tokens", "1,17,255"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("under flash attention only"), "{err}");
    // With the whole prompt as one ubatch the cells are sized for it: a
    // prompt longer than the window runs.
    let tokens: Vec<String> = (0..200).map(|i| (1 + i * 7 % 500).to_string()).collect();
    let (code, _, err) = plumb(&[
        "run",
        gemma2.to_str().unwrap(),
        "--flash-attn",
        "on",
        "--swa-full",
        "off",
        "--ubatch",
        "all",
        "--tokens",
        &tokens.join(","),
        "-n",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
}
