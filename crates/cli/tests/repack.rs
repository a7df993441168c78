//! `--repack on`: the fast precision's products with the weights llama.cpp
//! repacks at load (its default on CPUs with AVX2: Q4_0, IQ4_NL and Q4_K),
//! as its repacked kernels sum them (goldens from llama.cpp itself, with repacking on:
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
//! does not repack on x86; the tiny llama's Q4_0 and IQ4_NL copies
//! (`scripts/gen_repack_golden.sh`) hold the other formats it repacks
//! there: every stage llama.cpp's trace has (but attn_context) at 12 and
//! 80 tokens, the prompt's last logits bit for bit and the greedy 32
//! tokens, with repacking on and off.

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{Model, NoTrace, Precision, RunSettings};
use plumb_trace::Trace;

fn joined(v: &serde_json::Value) -> String {
    ids(v).iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn repacked_q4_0_and_iq4_nl_compute_as_llama_cpp_does() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("testdata/tiny/llamacpp_greedy_repack.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reference = ["--precision", "fast", "--kv-type", "f32", "--flash-attn", "off", "-t", "2"];
    for q in ["q4_0", "iq4_nl"] {
        let t = root().join("testdata/tiny/llama");
        let model = t.join(format!("llama-{q}.gguf"));
        let model = model.to_str().unwrap();
        for (suffix, tokens, least) in [("", joined(&golden["tokens"]), 50), ("_80", joined(&golden["tokens_80"]), 25)]
        {
            let golden_trace = Trace::load(&t.join(format!("llamacpp_trace_repack_{q}{suffix}.safetensors"))).unwrap();
            let mut worst = [0f64; 2];
            for (i, repack) in ["on", "off"].into_iter().enumerate() {
                let out = dir.path().join(format!("{q}{suffix}_{repack}.safetensors"));
                let save = ["--tensors", "--save", out.to_str().unwrap(), "--force", "--tokens", &tokens];
                let (code, _, err) = plumb(&[&["trace", model][..], &reference, &["--repack", repack], &save].concat());
                assert_eq!(code, 0, "{err}");
                let a = Trace::load(&out).unwrap();
                let d = diff(&a, &golden_trace, &Gate::default(), 0.01);
                let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.clone(), n))).collect();
                assert!(compared.len() >= least, "{q}{suffix}: only {} stages compared", compared.len());
                worst[i] = compared.iter().map(|(_, n)| *n).fold(0.0, f64::max);
                if repack == "on" {
                    assert!(a.engine().ends_with("(fast, repacked)"), "{}", a.engine());
                    for (key, nmse) in compared {
                        assert!(
                            nmse == 0.0,
                            "{q}{suffix}: {key} differs from llama.cpp's repacked kernels (NMSE {nmse:e})"
                        );
                    }
                }
            }
            // The plain kernels round otherwise: the golden tells them apart.
            assert!(worst[1] > 0.0, "{q}{suffix}: plain weights match the repacked golden too");
        }
        // The prompt's last logits and the greedy continuation, both ways.
        let tokens: Vec<u32> = ids(&golden["tokens"]).into_iter().map(|t| t as u32).collect();
        let mut m = Model::load(std::path::Path::new(model)).unwrap();
        for (repack, case) in [(true, "repack_on"), (false, "repack_off")] {
            let want = &golden["cases"][q][case];
            m.set_run_settings(RunSettings { repack, ..RunSettings::default() });
            let k = kernels_for(Precision::Fast);
            let logits = Generator::new(&m, k.as_ref(), tokens.len()).prefill_in(&tokens, tokens.len(), &mut NoTrace);
            assert_top_logits_bitwise(&format!("{q} {case}"), &logits, &want["top_logits"]);
            let flag = if repack { "on" } else { "off" };
            let run = ["run", model, "-n", "32", "--json", "--tokens", &joined(&golden["tokens"]), "--ubatch", "all"];
            let (code, out, err) = plumb(&[&run[..], &reference, &["--repack", flag]].concat());
            assert_eq!(code, 0, "{err}");
            let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
            assert_eq!(got.len(), 32);
            assert_continues_as_llama_cpp(&format!("{q} {case}"), &got, &ids(&want["generated"]));
        }
    }
}

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
