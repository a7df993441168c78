//! `--flash-attn on`: the fast precision's attention as llama.cpp's flash
//! attention computes it on the CPU (goldens from llama.cpp itself,
//! `scripts/gen_knob_golden.sh fa --flash-attn on`), in each of its three
//! paths: one query row at a time with an f16 running context (steps under
//! 64 rows), tiles of 64 positions (steps of 64 rows or more), and one
//! token's positions split by thread and merged (512 cells or more).
//!
//! Tiny models: every stage llama.cpp exposes bit-identical for four models
//! at 12 tokens (one-row path) and 80 tokens (tiled path), and every
//! model's greedy 32 tokens. The real model: the prompt's last logits (16
//! largest) bit for bit for a short prompt (one row) and the 2151-token
//! test prompt whole and in ubatches of 512 (tiled), and the greedy 32
//! tokens after the short and the long prompt (the long one's decoding
//! steps take the split path over 2304 cells, on 2 threads as the golden).

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{KvType, Model, NoTrace, Precision, RunSettings};
use plumb_trace::Trace;

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn joined(v: &serde_json::Value) -> String {
    ids(v).iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn tiny_models_with_flash_attention_compute_as_llama_cpp_does() {
    let golden = json("testdata/tiny/llamacpp_greedy_fa.json");
    let dir = tempfile::tempdir().unwrap();
    let mut traced = 0;
    for (arch, case) in golden["cases"].as_object().unwrap() {
        let t = root().join(format!("testdata/tiny/{arch}"));
        let model = t.join(format!("{arch}-q8_0.gguf"));
        let model = model.to_str().unwrap();
        let tokens = joined(&golden["tokens"]);
        // Flash attention alone, as the goldens were made (an f32 cache,
        // which flash attention reads as f16 anyway; no repacking; by a
        // build without AVX512-FP16).
        let fast = [
            "--precision",
            "fast",
            "--flash-attn",
            "on",
            "--kv-type",
            "f32",
            "--repack",
            "off",
            "--f16-math",
            "widened",
            "-t",
            "2",
        ];
        let (code, out, err) =
            plumb(&[&["run", model, "-n", "32", "--json", "--tokens", &tokens, "--ubatch", "all"][..], &fast].concat());
        assert_eq!(code, 0, "{err}");
        let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
        assert_continues_as_llama_cpp(arch, &got, &ids(&case["generated"]));
        for (suffix, tokens) in [("", joined(&golden["tokens"])), ("_80", joined(&golden["tokens_80"]))] {
            let golden_trace = t.join(format!("llamacpp_trace_fa{suffix}.safetensors"));
            if !golden_trace.exists() {
                continue;
            }
            let out = dir.path().join(format!("{arch}{suffix}.safetensors"));
            let save = ["--tensors", "--save", out.to_str().unwrap(), "--force", "--tokens", &tokens];
            let (code, _, err) = plumb(&[&["trace", model][..], &fast, &save].concat());
            assert_eq!(code, 0, "{err}");
            let a = Trace::load(&out).unwrap();
            assert!(a.engine().ends_with("(fast, flash attention)"), "{}", a.engine());
            assert_eq!(a.meta.get("plumb.flash_attn").map(String::as_str), Some("on"));
            // Under flash attention no scores or probabilities exist.
            assert!(a.tensors.keys().all(|k| !k.ends_with("attn_scores") && !k.ends_with("attn_probs")));
            assert!(a.tensors.contains_key("blk.0.attn_context"));
            let d = diff(&a, &Trace::load(&golden_trace).unwrap(), &Gate::default(), 0.01);
            let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
            assert!(compared.len() >= 20, "{arch}{suffix}: only {} stages compared", compared.len());
            assert!(compared.iter().any(|(k, _)| *k == "blk.0.attn_context"), "{arch}{suffix}: no attn_context");
            for (key, nmse) in compared {
                assert!(nmse == 0.0, "{arch}{suffix}: {key} differs from llama.cpp's flash attention (NMSE {nmse:e})");
            }
            traced += 1;
        }
    }
    assert_eq!(traced, 8, "four tiny models have flash attention traces at 12 and 80 tokens");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn real_model_with_flash_attention_computes_as_llama_cpp_does() {
    // Flash attention alone: an f32 cache, no repacking, full-size windows,
    // by a build without AVX512-FP16.
    let settings = RunSettings { flash_attn: true, ..RunSettings::default() };
    let flags =
        ["--kv-type", "f32", "--flash-attn", "on", "--repack", "off", "--swa-full", "on", "--f16-math", "widened"];
    assert_real_model_cases("testdata/gemma3-270m/llamacpp_fa.json", settings, &flags);
}

/// llama.cpp casts an f32 cache to f16 before its flash attention, so the
/// cache's type changes nothing under it: the same logits, bit for bit.
#[test]
fn under_flash_attention_an_f32_cache_computes_as_an_f16_one() {
    let golden = json("testdata/tiny/llamacpp_greedy_fa.json");
    let tokens: Vec<u32> = ids(&golden["tokens_80"]).into_iter().map(|t| t as u32).collect();
    let k = kernels_for(Precision::Fast);
    for arch in ["llama", "gemma2"] {
        let mut model = Model::load(&root().join(format!("testdata/tiny/{arch}/{arch}-q8_0.gguf"))).unwrap();
        model.cfg.flash_attn = true;
        let mut logits = Vec::new();
        for kv in [KvType::F32, KvType::F16] {
            model.cfg.kv_type = kv.into();
            let mut g = Generator::new(&model, k.as_ref(), tokens.len());
            logits.push(g.prefill_in(&tokens, 40, &mut NoTrace));
        }
        assert!(logits[0].iter().zip(&logits[1]).all(|(a, b)| a.to_bits() == b.to_bits()), "{arch}");
        // And flash attention is another arithmetic: off gives other bits.
        model.cfg.flash_attn = false;
        let mut g = Generator::new(&model, k.as_ref(), tokens.len());
        let off = g.prefill_in(&tokens, 40, &mut NoTrace);
        assert!(off.iter().zip(&logits[0]).any(|(a, b)| a.to_bits() != b.to_bits()), "{arch}");
    }
}

/// `bisect` between flash attention on and off names layer 0's context,
/// the first stage both have; the exact precision refuses flash attention.
#[test]
fn bisect_names_where_flash_attention_parts_and_exact_refuses_it() {
    let model = root().join("testdata/tiny/llama/llama-q8_0.gguf");
    let model = model.to_str().unwrap();
    let tokens = "1,17,255,3,400,511,42,7,99,128,300,5";
    let (code, out, err) = bisect_fast_settings(
        model,
        tokens,
        &[
            "--a-flash-attn",
            "on",
            "--a-kv-type",
            "f32",
            "--b-flash-attn",
            "off",
            "--b-kv-type",
            "f32",
            "--a-f16-math",
            "widened",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(fast, flash attention, repacked)"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_context"), "{out}");
    // With no probabilities on A's side, the fused operation's inputs are
    // q, k and v, all equal.
    assert!(out.contains("inputs: blk.0.q_rope rel err 0, blk.0.k_rope rel err 0, blk.0.v_proj rel err 0"), "{out}");
    let (code, _, err) = plumb(&["run", model, "--precision", "exact", "--flash-attn", "on", "--tokens", tokens]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("flash attention is a setting of the fast precision"), "{err}");
    let (code, _, err) = plumb(&["run", model, "--flash-attn", "maybe", "--tokens", tokens]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("on, off or auto"), "{err}");
}
