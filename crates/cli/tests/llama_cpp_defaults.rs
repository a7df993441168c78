//! llama.cpp as people run it: `llama-completion --temp 0` with nothing
//! else computes with an F16 KV cache, flash attention (auto: on for the
//! CPU), ubatches of 512, repacked weights and a sliding-window cache cut to
//! the window and a ubatch (1024 cells on the real model), reused as a ring
//! (goldens from llama.cpp itself: `ONLY=none scripts/gen_knob_golden.sh
//! default --kv-type f16 --flash-attn on --repack on --swa-full off`).
//! plumb's `--kv-type f16 --flash-attn on --repack on --swa-full off` with
//! `--ubatch 512` computes the same bits.
//!
//! The real model: the prompt's last logits (16 largest) bit for bit for a
//! short prompt and the 2151-token test prompt, whole and in ubatches of
//! 512 (where the third ubatch wraps around the cells), and the greedy 32
//! tokens after each; every stage of the first two layers on the short
//! prompt.

mod common;
use common::*;

use plumb_model::{KvType, RunSettings};

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_in_llama_cpps_default_configuration_computes_as_llama_cpp_does() {
    // plumb's own defaults, no flag given: llama.cpp's.
    let settings = RunSettings { kv_type: KvType::F16, flash_attn: true, repack: true, swa_ring_ubatch: Some(512) };
    assert_real_model_cases("testdata/gemma3-270m/llamacpp_default.json", settings, &[]);
}

/// Every stage llama.cpp exposes of the first two layers, on a short
/// prompt, in its default configuration.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_models_stages_in_llama_cpps_default_configuration_are_llama_cpps() {
    let flags = ["--kv-type", "f16", "--flash-attn", "on", "--repack", "on"];
    assert_first_layers_bitwise(&flags, "testdata/gemma3-270m/llamacpp_trace_default.safetensors");
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
