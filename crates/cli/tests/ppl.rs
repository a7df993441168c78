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
/// equal llama-perplexity's to the four decimals it prints (relative 1e-4
/// is the bar; this is closer), in both configurations the golden
/// holds: llama.cpp's defaults (f16 cache, flash attention, repacked
/// weights), which are plumb's, and its reference configuration.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn fast_perplexity_equals_llama_perplexity_chunk_by_chunk() {
    let m = real_model_arg();
    let corpus = root().join("testdata/gemma3-270m/long_prompt.txt");
    let g = golden();
    // ctx 1024 in the default configuration: llama-perplexity computes each
    // chunk in two ubatches of 512, plumb in one pass; the figures agree.
    let runs = [(512, "reference"), (256, "reference"), (512, "default"), (256, "default"), (1024, "default")];
    for (ctx, config) in runs {
        let want = g["runs"].as_array().unwrap().iter().find(|r| r["ctx"] == ctx && r["config"] == config).unwrap();
        let flags = if config == "reference" { REFERENCE } else { &[] };
        let ctx_arg = ctx.to_string();
        let head = ["ppl", &m, "-f", corpus.to_str().unwrap(), "--ctx", &ctx_arg, "--json", "--quiet"];
        let (code, out, err) = plumb(&[&head[..], flags].concat());
        assert_eq!(code, 0, "{err}");
        let got: serde_json::Value = serde_json::from_str(&out).unwrap();
        let running: Vec<f64> = got["running_ppl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let wanted: Vec<f64> = want["running_ppl"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(running.len(), wanted.len(), "{config} ctx {ctx}: chunks");
        assert_eq!(got["scored"], (ctx / 2 - 1) * running.len(), "{config} ctx {ctx}: the second half of each chunk");
        for (i, (a, b)) in running.iter().zip(&wanted).enumerate() {
            // llama-perplexity prints four decimals.
            assert!((a - b).abs() <= 5e-5 + 1e-12, "{config} ctx {ctx}, chunk {}: plumb {a} llama.cpp {b}", i + 1);
        }
        let (ppl, e) = (got["ppl"].as_f64().unwrap(), got["ppl_error"].as_f64().unwrap());
        assert!((ppl - want["ppl"].as_f64().unwrap()).abs() <= 5e-5, "{config} ctx {ctx}: {ppl}");
        assert!((e - want["ppl_error"].as_f64().unwrap()).abs() <= 5e-6, "{config} ctx {ctx}: error {e}");
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

fn sha256(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The base-logits file both ways, and the KL statistics: plumb fast
/// writes, byte for byte, the base llama-perplexity writes for the same
/// chunks; and plumb fast judged against a base written by plumb exact
/// gives the statistics llama-perplexity gives against that same file
/// (testdata/gemma3-270m/llamacpp_kld.json, scripts/gen_ppl_golden.sh), to
/// the digits it prints.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn kld_base_files_and_statistics_equal_llama_perplexitys() {
    let m = real_model_arg();
    let corpus = root().join("testdata/gemma3-270m/long_prompt.txt");
    let text = std::fs::read_to_string(root().join("testdata/gemma3-270m/llamacpp_kld.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (fast, exact) = (dir.path().join("fast.base"), dir.path().join("exact.base"));
    // The first two 256-token chunks, as the golden's.
    let two_chunks = ["kld", &m, "-f", corpus.to_str().unwrap(), "--ctx", "256", "--chunks", "2", "--quiet"];
    for (precision, path, want) in
        [("fast", &fast, &g["llama_base_sha256"]), ("exact", &exact, &g["plumb_exact_base_sha256"])]
    {
        // The golden's base is llama-perplexity's in its reference
        // configuration.
        let reference = if precision == "fast" { REFERENCE } else { &[] };
        let (code, _, err) = plumb(
            &[&two_chunks[..], &["--precision", precision, "--save-base", path.to_str().unwrap()], reference].concat(),
        );
        assert_eq!(code, 0, "{err}");
        assert_eq!(&sha256(path), want.as_str().unwrap(), "{precision} base file");
    }
    let (code, out, err) =
        plumb(&[&["kld", &m, "--base", exact.to_str().unwrap(), "--json", "--quiet"], REFERENCE].concat());
    assert_eq!(code, 0, "{err}");
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = &g["against_plumb_exact_base"];
    let w = |k: &str, i: usize| want[k][i].as_f64().unwrap_or_else(|| panic!("golden lacks {k}"));
    let pct = |k: &str, p: &str| got[k][p].as_f64().unwrap_or_else(|| panic!("plumb lacks {k} {p}"));
    // (plumb's figure, llama-perplexity's, the unit of its last printed digit)
    let checks = [
        (got["ppl"].as_f64().unwrap(), w("Mean PPL(Q)", 0), 1e-6),
        (got["ppl_error"].as_f64().unwrap(), w("Mean PPL(Q)", 1), 1e-6),
        (got["ppl_base"].as_f64().unwrap(), w("Mean PPL(base)", 0), 1e-6),
        (got["ppl_ratio"].as_f64().unwrap(), w("Mean PPL(Q)/PPL(base)", 0), 1e-6),
        (got["kld_mean"].as_f64().unwrap(), w("Mean    KLD", 0), 1e-6),
        (got["kld_mean_error"].as_f64().unwrap(), w("Mean    KLD", 1), 1e-6),
        (got["kld_median"].as_f64().unwrap(), w("Median  KLD", 0), 1e-6),
        (pct("kld_percentiles", "100"), w("Maximum KLD", 0), 1e-6),
        (pct("kld_percentiles", "99"), w("99.0%   KLD", 0), 1e-6),
        (pct("kld_percentiles", "90"), w("90.0%   KLD", 0), 1e-6),
        (pct("kld_percentiles", "10"), w("10.0%   KLD", 0), 1e-6),
        (100.0 * got["p_diff_mean"].as_f64().unwrap(), w("Mean    Δp", 0), 1e-3),
        (100.0 * pct("p_diff_percentiles", "99"), w("99.0%   Δp", 0), 1e-3),
        (100.0 * got["p_diff_rms"].as_f64().unwrap(), w("RMS Δp", 0), 1e-3),
        (100.0 * got["same_top"].as_f64().unwrap(), w("Same top p", 0), 1e-3),
    ];
    for (i, (a, b, unit)) in checks.iter().enumerate() {
        // Printed values round to the unit; sums in another order may
        // move the last digit by one.
        assert!((a - b).abs() <= 1.5 * unit, "check {i}: plumb {a}, llama-perplexity {b}");
    }
    assert_eq!(got["tokens"], 254);

    // B in memory (A's model at exact) goes through the same rows: the
    // same report as against the file.
    let (code, out, err) = plumb(&[&two_chunks[..], &["--b-precision", "exact", "--json"], REFERENCE].concat());
    assert_eq!(code, 0, "{err}");
    let mut in_memory: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut from_file = got.clone();
    for doc in [&mut in_memory, &mut from_file] {
        let o = doc.as_object_mut().unwrap();
        o.remove("b");
        o.remove("seconds");
    }
    assert_eq!(in_memory, from_file);

    // Not a base file: refused before any work.
    let readme = root().join("README.md");
    let (code, _, err) = plumb(&["kld", &m, "--base", readme.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a base-logits file"), "{err}");
}

/// Every number of a JSON document equal to the other's within `rel`
/// (sums added in another order), everything else exactly.
fn same_numbers(a: &serde_json::Value, b: &serde_json::Value, rel: f64, at: &str) {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= rel * x.abs().max(y.abs()), "{at}: {x} vs {y}");
        }
        (Object(x), Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{at}");
            for (k, v) in x {
                same_numbers(v, &y[k], rel, &format!("{at}.{k}"));
            }
        }
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                same_numbers(v, w, rel, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// Four shards of the chunks, merged, give the report one pass gives:
/// percentiles, medians, counts and the worst tokens exactly (every
/// token's value travels with its shard), sums to rounding; a missing
/// shard is refused.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn four_shards_merged_give_the_one_pass_report() {
    let m = real_model_arg();
    let corpus = root().join("testdata/gemma3-270m/long_prompt.txt");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("exact.base");
    let base_arg = base.to_str().unwrap();
    let args = ["kld", &m, "-f", corpus.to_str().unwrap(), "--ctx", "256", "--precision", "exact"];
    let (code, _, err) = plumb(&[&args[..], &["--save-base", base_arg, "--quiet"]].concat());
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = plumb(&["kld", &m, "--base", base_arg, "--json", "--quiet"]);
    assert_eq!(code, 0, "{err}");
    let mut one: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(one["chunks"], 8);
    let mut parts = Vec::new();
    for i in 1..=4 {
        let part = dir.path().join(format!("part{i}.json"));
        let shard = format!("{i}/4");
        let (code, _, err) =
            plumb(&["kld", &m, "--base", base_arg, "--shard", &shard, "--partial", part.to_str().unwrap(), "--quiet"]);
        assert_eq!(code, 0, "{err}");
        parts.push(part.to_str().unwrap().to_string());
    }
    // In any order.
    let shuffled = [&parts[2], &parts[0], &parts[3], &parts[1]].map(String::as_str);
    let (code, out, err) = plumb(&[&["kld", "--merge"][..], &shuffled, &["--json"]].concat());
    assert_eq!(code, 0, "{err}");
    let mut merged: serde_json::Value = serde_json::from_str(&out).unwrap();
    for doc in [&mut one, &mut merged] {
        doc.as_object_mut().unwrap().remove("seconds");
    }
    same_numbers(&one, &merged, 1e-12, "report");
    for k in ["kld_percentiles", "p_diff_percentiles", "kld_median", "tokens", "same_top", "worst"] {
        assert_eq!(one[k], merged[k], "{k}");
    }
    let (code, _, err) = plumb(&["kld", "--merge", &parts[0], &parts[1], &parts[3]]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("a shard is missing or repeated"), "{err}");
}
