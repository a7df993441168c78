//! plumb's fast precision continues the real model exactly as llama.cpp does.
//! The golden (testdata/gemma3-270m/llamacpp_greedy.json) is llama.cpp's own
//! greedy output, made by scripts/conformance.py through
//! reference/llamacpp_trace.py --generate in llama.cpp's reference
//! configuration (f32 cache, no flash attention or repacking, the prompt in
//! one batch), which plumb is asked for; see docs/CONFORMANCE.md.

mod common;
use common::{assert_continues_as_llama_cpp, ids, plumb, real_model, root, REFERENCE_RUN};

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn fast_precision_continues_exactly_as_llama_cpp() {
    let model = real_model();
    let text = std::fs::read_to_string(root().join("testdata/gemma3-270m/llamacpp_greedy.json")).unwrap();
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let (prompt, want) = (ids(&case["prompt_ids"]), ids(&case["generated"]));
        let toks = prompt.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let n = want.len().to_string();
        let (code, out, err) =
            plumb(&[&["run", model.to_str().unwrap(), "--tokens", &toks, "-n", &n, "--json"], REFERENCE_RUN].concat());
        assert_eq!(code, 0, "{err}");
        let got: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let got = ids(&got["generated"]);
        assert_continues_as_llama_cpp(&format!("{:?}", case["prompt"]), &got, &want);
    }
}
