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
use common::{
    assert_continues_as_llama_cpp, assert_first_layers_bitwise, assert_top_logits_bitwise, ids, plumb, real_model, root,
};

use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{KvType, Model, NoTrace, Precision, RunSettings};

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_in_llama_cpps_default_configuration_computes_as_llama_cpp_does() {
    let golden = json("testdata/gemma3-270m/llamacpp_default.json");
    let k = kernels_for(Precision::Fast);
    let model_arg = real_model();
    let mut model = Model::load(&model_arg).unwrap();
    for (name, case) in golden["cases"].as_object().unwrap() {
        let tokens: Vec<u32> = ids(&case["tokens"]).into_iter().map(|t| t as u32).collect();
        let ubatch = case["ubatch"].as_u64().map_or(tokens.len(), |u| u as usize);
        model.set_run_settings(RunSettings {
            kv_type: KvType::F16,
            flash_attn: true,
            repack: true,
            swa_ring_ubatch: Some(ubatch),
        });
        let mut g = Generator::windowed(&model, k.as_ref(), tokens.len() + 32);
        let logits = g.prefill_in(&tokens, ubatch, &mut NoTrace);
        assert_top_logits_bitwise(name, &logits, &case["top_logits"]);
        let toks = ids(&case["tokens"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let ub = ubatch.to_string();
        let args = [
            "run",
            model_arg.to_str().unwrap(),
            "--kv-type",
            "f16",
            "--flash-attn",
            "on",
            "--repack",
            "on",
            "--swa-full",
            "off",
            "--ubatch",
            &ub,
            "-t",
            "2",
            "--tokens",
            &toks,
            "-n",
            "32",
            "--json",
        ];
        let (code, out, err) = plumb(&args);
        assert_eq!(code, 0, "{err}");
        let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
        assert_continues_as_llama_cpp(name, &got, &ids(&case["generated"]));
    }
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
    let (code, _, err) = plumb(&["run", gemma2.to_str().unwrap(), "--swa-full", "off", "--tokens", "1,17,255"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("under --flash-attn on only"), "{err}");
    // Without --ubatch the prompt is one ubatch, and the cells are sized
    // for it: a prompt longer than the window runs.
    let tokens: Vec<String> = (0..200).map(|i| (1 + i * 7 % 500).to_string()).collect();
    let (code, _, err) = plumb(&[
        "run",
        gemma2.to_str().unwrap(),
        "--flash-attn",
        "on",
        "--swa-full",
        "off",
        "--tokens",
        &tokens.join(","),
        "-n",
        "4",
    ]);
    assert_eq!(code, 0, "{err}");
}
