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
