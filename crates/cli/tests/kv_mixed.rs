//! `--kv-type KEYS,VALUES`: keys and values of different types, as
//! llama.cpp's `-ctk KEYS -ctv VALUES` keeps and reads them (goldens from
//! llama.cpp itself, by `scripts/gen_knob_golden.sh`):
//! - `q8kf16v`: `--kv-type q8_0,f16 --flash-attn on`, and
//! - `f16kq4v`: `--kv-type f16,q4_0 --flash-attn on` (both `ONLY=gemma2
//!   LONG=1`): with either side quantized flash attention takes its
//!   one-row path, scoring by the keys' type (the query's Q8_0 blocks
//!   against key blocks, or f16 against f16) and keeping the context by the
//!   values' (f32 for values in blocks, else f16); llama.cpp rotates
//!   quantized keys (and the queries) and quantized values (and turns the
//!   context back) each by its own type;
//! - `f16kf32v`: `--kv-type f16,f32` without flash attention (`ONLY="llama
//!   gemma2" LONG=1`): the queries rounded to f16 for the scores, the
//!   probabilities left in f32 for the values;
//! - `q8kf16vnofa`: `--kv-type q8_0,f16 --flash-attn off` (`ONLY=gemma2
//!   LONG=1`): quantized keys read by llama.cpp's matrix product, each
//!   query row (rotated where the keys are) as Q8_0 blocks against the key
//!   blocks (`plumb_kernels::attention::block_scores`).
//!
//! Tiny models: every stage bit-identical at 12 and 80 tokens, and the
//! greedy 32 tokens. The real model (heads 256 wide, so rotated): the first
//! two layers' stages on a short prompt, and the last logits (16 largest)
//! and greedy 32 tokens after a short prompt and the 2151-token one, whole
//! and in ubatches of 512.

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_model::{F16Math, KvType, KvTypes, RunSettings};
use plumb_trace::Trace;

/// Golden name, the types and flash attention. The golden's tiny models
/// (gemma2, and llama for `f16kf32v`) continue as llama.cpp does; gemma2's
/// every stage is traced. (The llama-cpp-python built on the AVX-512 Xeon
/// hands the tracer a `kqv_out` for the tiny llama without flash attention
/// that is not the attention's context, docs/CONFORMANCE.md: its traces are
/// not kept.)
const CASES: [(&str, KvTypes, bool); 4] = [
    ("q8kf16v", KvTypes { k: KvType::Q8_0, v: KvType::F16 }, true),
    ("q8kf16vnofa", KvTypes { k: KvType::Q8_0, v: KvType::F16 }, false),
    ("f16kq4v", KvTypes { k: KvType::F16, v: KvType::Q4_0 }, true),
    ("f16kf32v", KvTypes { k: KvType::F16, v: KvType::F32 }, false),
];

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn joined(v: &serde_json::Value) -> String {
    ids(v).iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

#[test]
fn tiny_models_with_keys_and_values_of_different_types_compute_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kv, fa) in CASES {
        let golden = json(&format!("testdata/tiny/llamacpp_greedy_{name}.json"));
        let kv_name = kv.name();
        for (arch, case) in golden["cases"].as_object().unwrap() {
            let t = root().join(format!("testdata/tiny/{arch}"));
            let model = t.join(format!("{arch}-q8_0.gguf"));
            let model = model.to_str().unwrap();
            let fast = [
                "--precision",
                "fast",
                "--kv-type",
                &kv_name,
                "--flash-attn",
                on_off(fa),
                "--repack",
                "off",
                "-t",
                "2",
            ];
            let tokens = joined(&golden["tokens"]);
            let run = ["run", model, "-n", "32", "--json", "--tokens", &tokens];
            let (code, out, err) = plumb(&[&run[..], &fast].concat());
            assert_eq!(code, 0, "{err}");
            let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
            assert_continues_as_llama_cpp(&format!("{name} {arch}"), &got, &ids(&case["generated"]));
            if arch != "gemma2" {
                continue;
            }
            for (suffix, tokens) in [("", joined(&golden["tokens"])), ("_80", joined(&golden["tokens_80"]))] {
                let out = dir.path().join(format!("{name}_{arch}{suffix}.safetensors"));
                let save = ["--tensors", "--save", out.to_str().unwrap(), "--force", "--tokens", &tokens];
                let (code, _, err) = plumb(&[&["trace", model][..], &fast, &save].concat());
                assert_eq!(code, 0, "{err}");
                let a = Trace::load(&out).unwrap();
                assert_eq!(a.meta.get("plumb.kv_type"), Some(&kv_name));
                let reference = Trace::load(&t.join(format!("llamacpp_trace_{name}{suffix}.safetensors"))).unwrap();
                let d = diff(&a, &reference, &Gate::default(), 0.01);
                let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
                let what = format!("{name} {arch}{suffix}");
                assert!(compared.len() >= 20, "{what}: only {} stages compared", compared.len());
                assert!(compared.iter().any(|(k, _)| *k == "blk.0.attn_context"), "{what}: no attn_context");
                for (key, nmse) in compared {
                    assert!(nmse == 0.0, "{what}: {key} differs from llama.cpp's (NMSE {nmse:e})");
                }
            }
        }
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_with_keys_and_values_of_different_types_computes_as_llama_cpp_does() {
    for (name, kv, fa) in CASES {
        let golden = format!("testdata/gemma3-270m/llamacpp_{name}.json");
        // The golden's build keeps an f16 context (values f16 under flash
        // attention) in its own f16 arithmetic.
        let math = json(&golden)["f16_math"].as_str().unwrap_or("widened").to_string();
        let f16_math = if math == "native" { F16Math::Native } else { F16Math::Widened };
        let f16_context = fa && kv.v.block_type().is_none();
        let math_flags: &[&str] = if f16_context { &["--f16-math", &math] } else { &[] };
        let kv_name = kv.name();
        let flags = [&["--kv-type", &kv_name, "--flash-attn", on_off(fa), "--repack", "off"][..], math_flags].concat();
        assert_first_layers_bitwise(&flags, &format!("testdata/gemma3-270m/llamacpp_trace_{name}.safetensors"));
        let settings = RunSettings {
            kv_type: kv,
            flash_attn: fa,
            f16_math: if f16_context { f16_math } else { F16Math::Widened },
            ..RunSettings::default()
        };
        let flags = [&flags[..], &["--swa-full", "on"]].concat();
        assert_real_model_cases(&golden, settings, &flags);
    }
}

/// As in llama.cpp: quantized values need flash attention, quantized keys
/// do not; both are settings of the fast precision; the types are named in
/// the engine; and `bisect` between quantized keys and an f16 cache names
/// layer 0's context, where the key blocks are first read.
#[test]
fn keys_and_values_are_set_apart_and_refused_where_llama_cpp_or_plumb_cannot() {
    let gemma2 = root().join("testdata/tiny/gemma2/gemma2-q8_0.gguf");
    let gemma2 = gemma2.to_str().unwrap();
    let tokens = "1,17,255,3,400,511,42,7,99,128,300,5";
    let run = |kv: &str, fa: &str| {
        plumb(&["run", gemma2, "--kv-type", kv, "--flash-attn", fa, "--tokens", tokens, "-n", "1"])
    };
    let (code, _, err) = run("f16,q8_0", "off");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--kv-type f16,q8_0: a quantized value cache needs flash attention"), "{err}");
    for (kv, fa) in [("q8_0,f16", "off"), ("q8_0,f16", "on"), ("q4_0,f32", "off")] {
        let (code, _, err) = run(kv, fa);
        assert_eq!(code, 0, "{kv} {fa}: {err}");
    }
    let exact = ["run", gemma2, "--kv-type", "q8_0,f32", "--precision", "exact", "--tokens", tokens];
    let (code, _, err) = plumb(&exact);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a quantized key cache is a setting of the fast precision"), "{err}");
    for bad in ["q8_0,", "f16,q8_0,f32", "f16;q8_0", "q5_0,f16"] {
        let (code, _, err) = run(bad, "on");
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("KEYS,VALUES"), "{bad}: {err}");
    }
    let (code, out, err) = bisect_fast_settings(
        gemma2,
        tokens,
        &["--a-kv-type", "q8_0,f16", "--a-flash-attn", "on", "--b-kv-type", "f16", "--b-flash-attn", "on"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(fast, KV q8_0,f16, flash attention, repacked"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_context"), "{out}");
}
