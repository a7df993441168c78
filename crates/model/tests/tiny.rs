//! Every architecture's tiny model, from its HuggingFace folder and from its
//! F32 GGUF, against transformers' logits (`scripts/gen_tiny_models.py` →
//! `testdata/tiny/<arch>/golden.json`): max |Δ| ≤ 1e-4 × max|logit| and the
//! same argmax at every position. The Q8_0 GGUF stays close too.

use std::path::PathBuf;

use plumb_model::kernels::kernels_for;
use plumb_model::sample::argmax;
use plumb_model::{KvCache, Model, NoTrace, Precision};

/// Every architecture with a tiny test model.
const ARCHS: &[&str] = &include!("../../tiny_archs.rs");

fn dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(arch)
}

struct Golden {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn golden(arch: &str) -> Golden {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(dir(arch).join("golden.json")).unwrap()).unwrap();
    Golden {
        tokens: j["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect(),
        logits: j["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
            .collect(),
    }
}

/// All-position logits for the golden tokens: the first half as a batch,
/// the rest one token at a time through the KV cache.
fn logits(model: &Model, p: Precision, tokens: &[u32]) -> Vec<Vec<f32>> {
    let k = kernels_for(p);
    let mut cache = KvCache::new(&model.cfg, tokens.len());
    let half = tokens.len() / 2;
    let v = model.cfg.vocab;
    let mut rows: Vec<Vec<f32>> = model
        .forward(k.as_ref(), &tokens[..half], &mut cache, true, &mut NoTrace)
        .chunks(v)
        .map(|r| r.to_vec())
        .collect();
    for &t in &tokens[half..] {
        rows.push(model.forward(k.as_ref(), &[t], &mut cache, true, &mut NoTrace));
    }
    rows
}

fn compare(name: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    let max_logit = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let mut worst = 0f32;
    for (pos, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(argmax(g), argmax(w), "{name}: argmax differs at position {pos}");
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-4 * max_logit, "{name}: max |Δ| {worst} > 1e-4 × {max_logit}");
    worst / max_logit
}

#[test]
fn hf_folders_and_f32_gguf_match_transformers() {
    for arch in ARCHS {
        let g = golden(arch);
        for (what, path) in [("hf", dir(arch).join("hf")), ("f32 gguf", dir(arch).join(format!("{arch}-f32.gguf")))] {
            let model = Model::load(&path).unwrap_or_else(|e| panic!("{arch} {what}: {e}"));
            let rel = compare(&format!("{arch} {what}"), &logits(&model, Precision::Exact, &g.tokens), &g.logits);
            eprintln!("{arch} {what}: max |Δ| / max|logit| = {rel:.2e}");
        }
    }
}

#[test]
fn q8_0_gguf_and_fast_precision_stay_close() {
    for arch in ARCHS {
        let g = golden(arch);
        let model = Model::load(&dir(arch).join(format!("{arch}-q8_0.gguf"))).unwrap();
        for p in [Precision::Exact, Precision::Fast] {
            let got = logits(&model, p, &g.tokens);
            let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
            for (a, b) in got.iter().flatten().zip(g.logits.iter().flatten()) {
                dot += (*a as f64) * (*b as f64);
                na += (*a as f64).powi(2);
                nb += (*b as f64).powi(2);
            }
            let cos = dot / (na.sqrt() * nb.sqrt());
            eprintln!("{arch} q8_0 {}: cosine to transformers' f32 logits {cos:.6}", p.name());
            assert!(cos > 0.999, "{arch} q8_0 {}: cosine {cos}", p.name());
        }
    }
}

/// Writes the tiny llama's weights as two shards with an index.
fn shard_copy(dst: &std::path::Path, extra_index_entry: Option<(&str, &str)>) {
    let src = dir("llama").join("hf");
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dst.join(&file)).unwrap();
        for n in part.iter() {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    if let Some((k, v)) = extra_index_entry {
        map.insert(k.into(), serde_json::Value::String(v.into()));
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dst.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

#[test]
fn sharded_hf_folder_gives_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    shard_copy(tmp.path(), None);
    let g = golden("llama");
    let model = Model::load(tmp.path()).unwrap();
    compare("llama sharded", &logits(&model, Precision::Exact, &g.tokens), &g.logits);

    // An index naming a shard that is not there is refused, naming it.
    let bad = tempfile::tempdir().unwrap();
    shard_copy(bad.path(), Some(("extra.weight", "model-00009-of-00009.safetensors")));
    let err = Model::load(bad.path()).err().expect("missing shard accepted").to_string();
    assert!(err.contains("model-00009-of-00009.safetensors"), "{err}");
    // A shard name that tries to leave the folder is refused.
    let evil = tempfile::tempdir().unwrap();
    shard_copy(evil.path(), Some(("extra.weight", "../model.safetensors")));
    let err = Model::load(evil.path()).err().expect("path escape accepted").to_string();
    assert!(err.contains("not a plain file name"), "{err}");
}

/// LongRoPE as transformers computes it step by step: a prompt within the
/// trained context is rotated by the short factors and stays so in the
/// cache, and each later step whose last position is past it turns to the
/// long factors (`golden.json`'s "switch": transformers' greedy steps with
/// their logits). Exact precision follows every step's logits and token,
/// from the HF folder and from the F32 GGUF.
#[test]
fn longrope_switches_factor_sets_where_transformers_does() {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir("phi3long").join("golden.json")).unwrap()).unwrap();
    let s = &j["switch"];
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
    };
    let (prompt, generated) = (ids(&s["prompt"]), ids(&s["generated"]));
    let want: Vec<Vec<f32>> = s["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect();
    for path in [dir("phi3long").join("hf"), dir("phi3long").join("phi3long-f32.gguf")] {
        let model = Model::load(&path).unwrap();
        let k = kernels_for(Precision::Exact);
        let mut cache = KvCache::new(&model.cfg, prompt.len() + generated.len());
        let (mut got, mut tokens, mut step) = (Vec::new(), Vec::new(), prompt.clone());
        for _ in 0..generated.len() {
            let logits = model.forward(k.as_ref(), &step, &mut cache, false, &mut NoTrace);
            tokens.push(argmax(&logits) as u32);
            step = vec![*tokens.last().unwrap()];
            got.push(logits);
        }
        let rel = compare(&format!("phi3long switch {}", path.display()), &got, &want);
        assert_eq!(tokens, generated, "{}", path.display());
        eprintln!("phi3long switch {}: max |Δ| / max|logit| = {rel:.2e}", path.display());
    }
    // The same steps with the long factors throughout (as one whole pass
    // over the same positions would take them) are another model: the
    // golden's first steps are not theirs.
    let model = Model::load(&dir("phi3long").join("hf")).unwrap();
    let k = kernels_for(Precision::Exact);
    let mut cache = KvCache::new(&model.cfg, 16);
    let mut whole = prompt.clone();
    whole.extend(&generated[..2]);
    let all = model.forward(k.as_ref(), &whole, &mut cache, true, &mut NoTrace);
    let v = model.cfg.vocab;
    let last_prompt_row = &all[(prompt.len() - 1) * v..prompt.len() * v];
    let moved = last_prompt_row.iter().zip(&want[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "long and short factors give the same logits ({moved})");
}
