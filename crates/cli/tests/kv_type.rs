//! `--kv-type f16`: the KV cache keeps keys and values as f16, and the fast
//! precision computes as llama.cpp does with `-ctk f16 -ctv f16 -fa off`
//! (goldens from llama.cpp itself, scripts/gen_knob_golden.sh kv16 --kv-type f16): the queries
//! and the probabilities rounded to f16 before their products with the
//! cache, several tokens' scores through its tiled matmul (the queries are
//! converted to a contiguous copy), one token's as its f16 dot product,
//! which sums a head's elements past 64 lanes in f64.
//!
//! Tiny models: every stage llama.cpp exposes bit-identical (four models
//! traced) and the greedy 32 tokens of all of them. The real model: the
//! prompt's last logits (16 largest) bit for bit and the greedy 32 tokens,
//! for a short prompt and the 2151-token test prompt, whole and in ubatches
//! of 512. And `bisect` between the two cache types names where they part.

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_model::{KvType, RunSettings};
use plumb_trace::Trace;

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

#[test]
fn tiny_models_with_an_f16_cache_compute_as_llama_cpp_does() {
    let golden = json("testdata/tiny/llamacpp_greedy_kv16.json");
    let tokens = ids(&golden["tokens"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().unwrap();
    let mut traced = 0;
    for (arch, case) in golden["cases"].as_object().unwrap() {
        let t = root().join(format!("testdata/tiny/{arch}"));
        let model = t.join(format!("{arch}-q8_0.gguf"));
        let model = model.to_str().unwrap();
        let fast =
            ["--precision", "fast", "--kv-type", "f16", "--flash-attn", "off", "--repack", "off", "--tokens", &tokens];
        let want = ids(&case["generated"]);
        let (code, out, err) = plumb(&[&["run", model, "-n", "32", "--json"][..], &fast].concat());
        assert_eq!(code, 0, "{err}");
        let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
        assert_continues_as_llama_cpp(arch, &got, &want);
        let golden_trace = t.join("llamacpp_trace_kv16.safetensors");
        if !golden_trace.exists() {
            continue;
        }
        let out = dir.path().join(format!("{arch}.safetensors"));
        let save = ["--tensors", "--save", out.to_str().unwrap(), "--force"];
        let (code, _, err) = plumb(&[&["trace", model][..], &fast, &save].concat());
        assert_eq!(code, 0, "{err}");
        let a = Trace::load(&out).unwrap();
        assert!(a.engine().ends_with("(fast, KV f16)"), "{}", a.engine());
        assert_eq!(a.meta.get("plumb.kv_type").map(String::as_str), Some("f16"));
        let d = diff(&a, &Trace::load(&golden_trace).unwrap(), &Gate::default(), 0.01);
        let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
        assert!(compared.len() >= 30, "{arch}: only {} stages compared", compared.len());
        for (key, nmse) in compared {
            assert!(nmse == 0.0, "{arch}: {key} differs from llama.cpp's with an f16 cache (NMSE {nmse:e})");
        }
        traced += 1;
    }
    assert_eq!(traced, 4, "four tiny models have f16 traces");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn real_model_with_an_f16_cache_computes_as_llama_cpp_does() {
    let settings = RunSettings { kv_type: KvType::F16.into(), ..RunSettings::default() };
    let flags = ["--kv-type", "f16", "--flash-attn", "off", "--repack", "off"];
    assert_real_model_cases("testdata/gemma3-270m/llamacpp_kv16.json", settings, &flags);
}

/// `bisect` between the two cache types of one model: the first stage
/// they part at is layer 0's scores, the first product with the cache.
#[test]
fn bisect_names_where_an_f16_cache_parts_from_an_f32_one() {
    let model = root().join("testdata/tiny/llama/llama-q8_0.gguf");
    let (code, out, err) = bisect_fast_settings(
        model.to_str().unwrap(),
        "1,17,255,3,400,511,42,7,99,128,300,5",
        &[
            "--a-kv-type",
            "f16",
            "--b-kv-type",
            "f32",
            "--a-flash-attn",
            "off",
            "--b-flash-attn",
            "off",
            "--a-repack",
            "off",
            "--b-repack",
            "off",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(fast, KV f16)"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_scores"), "{out}");
    let (code, _, err) = plumb(&["run", model.to_str().unwrap(), "--kv-type", "q4_1", "--tokens", "1,2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown KV cache type \"q4_1\""), "{err}");
}
