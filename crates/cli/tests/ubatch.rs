//! The prompt computed in ubatches (llama.cpp's physical batch, `-ub`) as
//! llama.cpp computes it: on the real model and the 2151-token test prompt,
//! plumb's fast precision with `--ubatch N` gives llama.cpp's last-position
//! logits bit for bit (its 16 largest) for the whole prompt and ubatches of
//! 512, 100 and 7 — the last moves the top logit by 0.28 (ubatches of
//! fewer than 8 rows take other matrix kernels, in llama.cpp and in plumb;
//! llama.cpp's ubatches of 8 and 16, whose last holds 7 rows, give a third
//! value, and of 9 the whole prompt's) — and `plumb run --ubatch 7`
//! continues as llama.cpp does (golden from llama.cpp itself:
//! scripts/gen_ubatch_golden.sh).

mod common;
use common::{
    assert_continues_as_llama_cpp, assert_top_logits_bitwise, ids, plumb, real_model, real_model_arg, root, REFERENCE,
};

use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{Model, NoTrace, Precision};

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn ubatches_round_as_llama_cpp_does() {
    let text = std::fs::read_to_string(root().join("testdata/gemma3-270m/llamacpp_ubatch.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tokens: Vec<u32> = ids(&golden["tokens"]).into_iter().map(|t| t as u32).collect();
    let model = Model::load(&real_model()).unwrap();
    let k = kernels_for(Precision::Fast);
    let mut tops = Vec::new();
    for (name, case) in golden["cases"].as_object().unwrap() {
        let ubatch = if name == "whole" { tokens.len() } else { name.parse().unwrap() };
        let mut g = Generator::windowed(&model, k.as_ref(), tokens.len() + 1);
        let logits = g.prefill_in(&tokens, ubatch, &mut NoTrace);
        assert_top_logits_bitwise(&format!("ubatch {name}"), &logits, &case["top_logits"]);
        tops.push(case["top_logits"][0][1].as_f64().unwrap());
        if name != "7" {
            continue;
        }
        // The command line too, on the schedule that moves the logits.
        let toks = tokens.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let ub = ubatch.to_string();
        let m = real_model_arg();
        let head = ["run", &m, "--tokens", &toks, "-n", "32", "--json"];
        let (code, out, err) = plumb(&[&head[..], REFERENCE, &["--ubatch", &ub]].concat());
        assert_eq!(code, 0, "{err}");
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let (got, want) = (ids(&got["generated"]), ids(&case["generated"]));
        assert_continues_as_llama_cpp(&format!("ubatch {name}"), &got, &want);
    }
    // The schedule matters: some ubatch size moves the logits.
    assert!(tops.iter().any(|t| *t != tops[0]), "every ubatch gave the same logits: {tops:?}");
    let (code, _, err) = plumb(&["run", real_model().to_str().unwrap(), "--tokens", "2,3", "--ubatch", "0"]);
    assert_eq!(code, 2, "{err}");
}

fn tokens_80() -> String {
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("testdata/tiny/llamacpp_greedy_fa.json")).unwrap())
            .unwrap();
    ids(&golden["tokens_80"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// `trace --ubatch N`: the prompt in forward passes of N rows, traced as
/// one step over every position. On the tiny llama (Q8_0, whose products
/// round alike for any number of rows) in the reference configuration, a
/// trace in ubatches of 40 or 7 has every stage of the whole prompt's, bit
/// for bit, but attn_scores and attn_probs, whose key axis a part does
/// not share — the saved tensors (a spill, gathered from parts) and the
/// statistics alone (`--json`, no tensors) alike.
#[test]
fn a_prompt_traced_in_ubatches_is_one_step_over_every_position() {
    use plumb_trace::Trace;
    let model = root().join("testdata/tiny/llama/llama-q8_0.gguf");
    let model = model.to_str().unwrap();
    let tokens = tokens_80();
    let dir = tempfile::tempdir().unwrap();
    let trace = |ubatch: &str| {
        let out = dir.path().join(format!("{ubatch}.safetensors"));
        let args = ["trace", model, "--precision", "fast", "--tokens", &tokens, "--ubatch", ubatch, "-t", "2"];
        let save = ["--tensors", "--save", out.to_str().unwrap(), "--force"];
        let (code, _, err) = plumb(&[&args[..], REFERENCE, &save].concat());
        assert_eq!(code, 0, "{err}");
        let (code, json, err) = plumb(&[&args[..], REFERENCE, &["--json"]].concat());
        assert_eq!(code, 0, "{err}");
        let stats: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "stage")
            .collect();
        (Trace::load(&out).unwrap(), stats)
    };
    let (whole, whole_stats) = trace("all");
    assert!(whole.tensors.contains_key("blk.0.attn_scores"));
    for ubatch in ["40", "7"] {
        let (cut, cut_stats) = trace(ubatch);
        assert_eq!(cut.meta.get("plumb.ubatch").map(String::as_str), Some(ubatch));
        assert!(cut.engine().ends_with(&format!("(fast, ubatch {ubatch})")), "{}", cut.engine());
        let attention = |k: &str| k.ends_with("attn_scores") || k.ends_with("attn_probs");
        assert!(cut.tensors.keys().all(|k| !attention(k)), "ubatch {ubatch}: attention weights traced");
        let common: Vec<&String> = whole.tensors.keys().filter(|k| !attention(k)).collect();
        assert_eq!(common.len(), cut.tensors.len(), "ubatch {ubatch}");
        for key in common {
            let ((sa, a), (sb, b)) = (&cut.tensors[key], &whole.tensors[key]);
            assert_eq!(sa, sb, "ubatch {ubatch}: {key}");
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "ubatch {ubatch}: {key} differs");
        }
        let kept: Vec<&serde_json::Value> =
            whole_stats.iter().filter(|s| !attention(s["key"].as_str().unwrap())).collect();
        assert_eq!(kept.len(), cut_stats.len(), "ubatch {ubatch}");
        // The same values, so the same statistics: extremes and counts
        // exactly; sums in f64 gathered part by part rather than over the
        // whole, so to the last few bits of f64.
        for (w, c) in kept.iter().zip(&cut_stats) {
            assert_eq!(w["key"], c["key"]);
            for part in ["", "last"] {
                let (ws, cs) =
                    if part.is_empty() { (&w["stats"], &c["stats"]) } else { (&w["stats"][part], &c["stats"][part]) };
                for f in ["count", "min", "max", "abs_max", "nan", "inf"] {
                    assert_eq!(ws[f], cs[f], "ubatch {ubatch}: {} {part} {f}", w["key"]);
                }
                for f in ["mean", "std", "l2"] {
                    let (a, b) = (ws[f].as_f64().unwrap(), cs[f].as_f64().unwrap());
                    assert!(
                        (a - b).abs() <= 1e-12 * a.abs().max(1e-30),
                        "ubatch {ubatch}: {} {part} {f}: {a} vs {b}",
                        w["key"]
                    );
                }
            }
            assert_eq!(w["stats"]["shape"], c["stats"]["shape"]);
        }
    }
}

/// The real model in ubatches of 7 (which round otherwise than the whole
/// prompt): `trace --ubatch 7` of the 2151-token prompt ends with
/// llama.cpp's last logits at that schedule, bit for bit.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_traced_in_ubatches_of_7_ends_as_llama_cpp_does() {
    let text = std::fs::read_to_string(root().join("testdata/gemma3-270m/llamacpp_ubatch.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let toks = ids(&golden["tokens"]).iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let model = real_model_arg();
    let args = ["trace", &model, "--precision", "fast", "--tokens", &toks, "--no-bos", "--ubatch", "7", "-t", "2"];
    let (code, out, err) = plumb(&[&args[..], REFERENCE, &["--stages", "logits", "--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let top = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "top")
        .expect("a top line");
    let want = golden["cases"]["7"]["top_logits"].as_array().unwrap();
    let whole = golden["cases"]["whole"]["top_logits"][0][1].as_f64().unwrap() as f32;
    let got = top["tokens"].as_array().unwrap();
    assert!(got.len() >= 5);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["id"], w[0], "{got:?}");
        let (a, b) = (g["logit"].as_f64().unwrap() as f32, w[1].as_f64().unwrap() as f32);
        assert_eq!(a.to_bits(), b.to_bits(), "token {}: {a} vs llama.cpp's {b}", g["id"]);
    }
    assert_ne!((got[0]["logit"].as_f64().unwrap() as f32).to_bits(), whole.to_bits(), "7 rounds as the whole");
}

/// `bisect` between two ubatch schedules: under flash attention, parts of
/// 40 rows take the one-row path where 80 take the tiled one, and the
/// first stage they part at is layer 0's attention context; the calibrated
/// bisect (each stage of A on B's inputs, through the parts) puts every
/// local error there; `--isolate` with ubatches is refused.
#[test]
fn bisect_names_where_two_ubatch_schedules_part() {
    let model = root().join("testdata/tiny/llama/llama-q8_0.gguf");
    let model = model.to_str().unwrap();
    let tokens = tokens_80();
    let head = ["bisect", model, "--tokens", &tokens, "--a-precision", "fast", "--b-precision", "fast"];
    let fa = ["--a-flash-attn", "on", "--b-flash-attn", "on", "--a-ubatch", "40"];
    let (code, out, err) = plumb(&[&head[..], &fa, &["--tol", "1e-20", "--brief"]].concat());
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ubatch 40)"), "{out}");
    assert!(out.contains("first divergence at blk.0.attn_context"), "{out}");
    let (code, out, err) = plumb(&[&head[..], &fa, &["--json"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let local = |key: &str| {
        let s = j["stages"].as_array().unwrap().iter().find(|s| s["key"] == key).unwrap();
        s["local"].as_f64().unwrap()
    };
    assert!(local("blk.0.attn_context") > 0.0);
    for key in ["blk.0.attn_out", "blk.0.ffn_gate", "blk.1.q_proj", "blk.2.ffn_down", "logits"] {
        assert_eq!(local(key), 0.0, "{key}: a local error outside the attention");
    }
    let (code, _, err) = plumb(&[&head[..], &fa, &["--tol", "1e-20", "--isolate"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--isolate runs each layer on the whole prompt"), "{err}");
}
