//! `--kv-type q8_0|q4_0 --flash-attn on`: a KV cache in blocks of 32, as
//! llama.cpp's `-ctk q8_0 -ctv q8_0 -fa on` keeps and reads it (goldens
//! from llama.cpp itself: `ONLY=gemma2 LONG=1 scripts/gen_knob_golden.sh
//! q8kv --kv-type q8_0 --flash-attn on`, and `q4kv` likewise). Keys and
//! values are quantized as stored; each score is the key's blocks times
//! the query's Q8_0 blocks; flash attention takes its one-row path at every
//! step, with the context in f32.
//!
//! Tiny models: only gemma2's heads are whole blocks of 32 (llama.cpp
//! refuses the others, and so does plumb); its every stage bit-identical at
//! 12 and 80 tokens, and its greedy 32 tokens. The real model: the prompt's
//! last logits (16 largest) bit for bit for a short prompt and the
//! 2151-token test prompt whole and in ubatches of 512, the greedy 32
//! tokens after the short and the long prompt, and the first two layers'
//! stages on the short prompt: its heads are 256 wide, so llama.cpp
//! stores keys and values rotated by a Walsh-Hadamard transform and turns
//! the context back (plumb_kernels::flash::Rotation).

mod common;
use common::*;

use plumb_diff::{diff, Gate};
use plumb_model::{KvType, RunSettings};
use plumb_trace::Trace;

/// Golden name and cache type.
const CACHES: [(&str, KvType); 2] = [("q8kv", KvType::Q8_0), ("q4kv", KvType::Q4_0)];

fn json(path: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join(path)).unwrap()).unwrap()
}

fn joined(v: &serde_json::Value) -> String {
    ids(v).iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[test]
fn a_tiny_model_with_a_quantized_cache_computes_as_llama_cpp_does() {
    let dir = tempfile::tempdir().unwrap();
    for (name, kv) in CACHES {
        let golden = json(&format!("testdata/tiny/llamacpp_greedy_{name}.json"));
        let case = &golden["cases"]["gemma2"];
        let t = root().join("testdata/tiny/gemma2");
        let model = t.join("gemma2-q8_0.gguf");
        let model = model.to_str().unwrap();
        let fast = ["--precision", "fast", "--kv-type", kv.name(), "--flash-attn", "on", "-t", "2"];
        let tokens = joined(&golden["tokens"]);
        let (code, out, err) = plumb(&[&["run", model, "-n", "32", "--json", "--tokens", &tokens][..], &fast].concat());
        assert_eq!(code, 0, "{err}");
        let got = ids(&serde_json::from_str::<serde_json::Value>(out.trim()).unwrap()["generated"]);
        assert_continues_as_llama_cpp(name, &got, &ids(&case["generated"]));
        for (suffix, tokens) in [("", joined(&golden["tokens"])), ("_80", joined(&golden["tokens_80"]))] {
            let out = dir.path().join(format!("{name}{suffix}.safetensors"));
            let save = ["--tensors", "--save", out.to_str().unwrap(), "--force", "--tokens", &tokens];
            let (code, _, err) = plumb(&[&["trace", model][..], &fast, &save].concat());
            assert_eq!(code, 0, "{err}");
            let a = Trace::load(&out).unwrap();
            assert_eq!(a.meta.get("plumb.kv_type").map(String::as_str), Some(kv.name()));
            let reference = Trace::load(&t.join(format!("llamacpp_trace_{name}{suffix}.safetensors"))).unwrap();
            let d = diff(&a, &reference, &Gate::default(), 0.01);
            let compared: Vec<_> = d.stages.iter().filter_map(|s| s.nmse.map(|n| (s.key.as_str(), n))).collect();
            assert!(compared.len() >= 20, "{name}{suffix}: only {} stages compared", compared.len());
            assert!(compared.iter().any(|(k, _)| *k == "blk.0.attn_context"), "{name}{suffix}: no attn_context");
            for (key, nmse) in compared {
                assert!(nmse == 0.0, "{name}{suffix}: {key} differs from llama.cpp's (NMSE {nmse:e})");
            }
        }
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_with_a_quantized_cache_computes_as_llama_cpp_does() {
    for (name, kv) in CACHES {
        // Its heads are 256 wide, so llama.cpp rotates what the cache
        // holds: the first two layers' context, turned back, bit for bit.
        let flags = ["--kv-type", kv.name(), "--flash-attn", "on", "--repack", "off"];
        assert_first_layers_bitwise(&flags, &format!("testdata/gemma3-270m/llamacpp_trace_{name}.safetensors"));
        // A windowed cache: the window layers let go of key blocks too.
        let settings = RunSettings { kv_type: kv.into(), flash_attn: true, ..RunSettings::default() };
        let flags = [&flags[..], &["--swa-full", "on"]].concat();
        assert_real_model_cases(&format!("testdata/gemma3-270m/llamacpp_{name}.json"), settings, &flags);
    }
}

/// As in llama.cpp: a quantized cache needs flash attention, and heads of
/// whole blocks; `bisect` between a q8_0 and an f16 cache names layer 0's
/// context, where the keys' and values' blocks are first read.
#[test]
fn a_quantized_cache_needs_flash_attention_and_whole_blocks() {
    let gemma2 = root().join("testdata/tiny/gemma2/gemma2-q8_0.gguf");
    let llama = root().join("testdata/tiny/llama/llama-q8_0.gguf");
    let tokens = "1,17,255,3,400,511,42,7,99,128,300,5";
    let (code, _, err) =
        plumb(&["run", gemma2.to_str().unwrap(), "--kv-type", "q8_0", "--flash-attn", "off", "--tokens", tokens]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs flash attention"), "{err}");
    // Flash attention's `auto` is on at the fast precision (llama.cpp's
    // default), off at the exact one.
    let (code, _, err) = plumb(&["run", gemma2.to_str().unwrap(), "--kv-type", "q8_0", "--tokens", tokens, "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        plumb(&["run", gemma2.to_str().unwrap(), "--kv-type", "q8_0", "--precision", "exact", "--tokens", tokens]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs flash attention"), "{err}");
    let (code, _, err) =
        plumb(&["run", llama.to_str().unwrap(), "--kv-type", "q4_0", "--flash-attn", "on", "--tokens", tokens]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("16 wide, not whole blocks of 32"), "{err}");
    let (code, _, err) = plumb(&["run", gemma2.to_str().unwrap(), "--kv-type", "q5_0", "--tokens", tokens]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("available: auto, f32, f16, q8_0, q4_0"), "{err}");
    let (code, out, err) = bisect_fast_settings(
        gemma2.to_str().unwrap(),
        tokens,
        &["--a-kv-type", "q8_0", "--a-flash-attn", "on", "--b-kv-type", "f16", "--b-flash-attn", "on"],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("(fast, KV q8_0, flash attention, repacked)"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_context"), "{out}");
}
