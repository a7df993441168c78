//! `plumb kld --attribute` names the layer that does the damage: on a copy
//! of the real model requantized to Q8_0 with one layer at Q4_0, that
//! layer's two halves rank first and the units add up to about the whole.

mod common;
use common::*;

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn a_coarsely_requantized_layer_ranks_first() {
    let m = real_model_arg();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("q8_0-blk12-q4_0.gguf");
    let (code, _, err) =
        plumb(&["plant", &m, copy.to_str().unwrap(), "--requant", "q8_0", "--bug", "requant:blk.12,q4_0"]);
    assert_eq!(code, 0, "{err}");
    let corpus = root().join("testdata/gemma3-270m/long_prompt.txt");
    let args = ["kld", copy.to_str().unwrap(), &m, "-f", corpus.to_str().unwrap(), "--ctx", "64", "--chunks", "1"];
    let page = dir.path().join("kld.html");
    let html = ["--html", page.to_str().unwrap()];
    let (code, out, err) = plumb(&[&args[..], &["--attribute", "--json", "--quiet"], &html[..]].concat());
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let at = &d["attribution"];
    let f = |v: &serde_json::Value| v["kld_mean"].as_f64().unwrap();
    let mut units: Vec<&serde_json::Value> = at["units"].as_array().unwrap().iter().collect();
    assert_eq!(units.len(), 2 * 18 + 2, "embedding, two halves of 18 layers, head");
    units.sort_by(|x, y| f(y).total_cmp(&f(x)));
    let top: Vec<&str> = units[..2].iter().map(|u| u["unit"].as_str().unwrap()).collect();
    assert!(top.contains(&"blk.12.attn") && top.contains(&"blk.12.ffn"), "ranked first: {top:?}");
    let layers = at["layers"].as_array().unwrap();
    let worst = layers.iter().max_by(|x, y| f(x).total_cmp(&f(y))).unwrap();
    assert_eq!(worst["layer"], 12);
    // The coarse layer does most of the damage, and ten times any other.
    let whole = d["kld_mean"].as_f64().unwrap();
    assert_eq!(at["whole"].as_f64().unwrap(), whole);
    assert!(f(worst) > 0.5 * whole, "blk.12: {} of {whole}", f(worst));
    let next = layers.iter().filter(|l| l["layer"] != 12).map(f).fold(0.0, f64::max);
    assert!(f(worst) > 10.0 * next, "blk.12 {} against the next layer {next}", f(worst));
    // With B exact the units add up: their sum is near the whole.
    let sum = at["sum"].as_f64().unwrap();
    assert!((0.8..1.25).contains(&(sum / whole)), "the units' sum {sum} against the whole {whole}");

    // The page ranks the same units, and has a bar for each.
    let page = std::fs::read_to_string(&page).unwrap();
    let ranked = page.split("<th>same top</th></tr>").nth(1).expect("the ranked table");
    let first = ranked.split("</tr>").next().unwrap();
    assert!(first.contains(top[0]), "{first}");
    assert_eq!(page.matches("<rect x=\"110\"").count(), units.len());
    assert!(!page.contains("NaN"), "a figure is missing from the page");

    // B in fast arithmetic would make every unit look guilty: refused.
    let (code, _, err) = plumb(&[&args[..], &["--attribute", "--b-precision", "fast"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--attribute runs B in exact arithmetic"), "{err}");
    // A base file has no inside to run.
    let (code, _, err) = plumb(&[&args[..2], &["--base", "x.bin", "--attribute"]].concat());
    assert_eq!(code, 2, "{err}");
}
