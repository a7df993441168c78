//! `plumb ppl` against llama-perplexity's own figures on the same corpus
//! (testdata/gemma3-270m/llamacpp_ppl.json, by scripts/gen_ppl_golden.sh),
//! and its refusals.

mod common;
use common::*;

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join("testdata/gemma3-270m/llamacpp_ppl.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// plumb fast over the 2151-token test corpus, at contexts 512 and 256:
/// the perplexity after every chunk and the final estimate and its error
/// equal llama-perplexity's in the configuration plumb fast mirrors, to the
/// four decimals it prints (relative 1e-4 is the bar; this is
/// closer). llama.cpp's defaults (F16 cache, repacked weights) give other
/// numbers, which the golden keeps beside them.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn fast_perplexity_equals_llama_perplexity_chunk_by_chunk() {
    let m = real_model_arg();
    let corpus = root().join("testdata/gemma3-270m/long_prompt.txt");
    let g = golden();
    for ctx in [512, 256] {
        let want =
            g["runs"].as_array().unwrap().iter().find(|r| r["ctx"] == ctx && r["config"] == "reference").unwrap();
        let (code, out, err) =
            plumb(&["ppl", &m, "-f", corpus.to_str().unwrap(), "--ctx", &ctx.to_string(), "--json", "--quiet"]);
        assert_eq!(code, 0, "{err}");
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let running: Vec<f64> = got["running_ppl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let wanted: Vec<f64> = want["running_ppl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(running.len(), wanted.len(), "ctx {ctx}: chunks");
        assert_eq!(got["scored"], (ctx / 2 - 1) * running.len(), "ctx {ctx}: the second half of each chunk");
        for (i, (a, b)) in running.iter().zip(&wanted).enumerate() {
            // llama-perplexity prints four decimals.
            assert!((a - b).abs() <= 5e-5 + 1e-12, "ctx {ctx}, chunk {}: plumb {a} llama.cpp {b}", i + 1);
        }
        let (ppl, e) = (got["ppl"].as_f64().unwrap(), got["ppl_error"].as_f64().unwrap());
        assert!((ppl - want["ppl"].as_f64().unwrap()).abs() <= 5e-5, "ctx {ctx}: {ppl}");
        assert!((e - want["ppl_error"].as_f64().unwrap()).abs() <= 5e-6, "ctx {ctx}: error {e}");
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn a_corpus_too_short_or_a_bad_context_is_refused_with_exit_2() {
    let m = real_model_arg();
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words.").unwrap();
    let (code, _, err) = plumb(&["ppl", &m, "-f", short.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs at least 1024"), "{err}");
    let (code, _, err) = plumb(&["ppl", &m, "-f", short.to_str().unwrap(), "--ctx", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--ctx must be at least 4"), "{err}");
    let missing = dir.path().join("missing.txt");
    let (code, _, err) = plumb(&["ppl", &m, "-f", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read corpus"), "{err}");
    let binary = dir.path().join("binary.txt");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00]).unwrap();
    let (code, _, err) = plumb(&["ppl", &m, "-f", binary.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
}
