//! Broken models and bad input give clear answers, never a panic.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use plumb_formats::gguf::GgufFile;
use plumb_formats::writer::GgufWriter;

/// A copy of the tiny llama GGUF with `edit` applied to each tensor's f32 data.
fn edited_copy(dir: &Path, name: &str, edit: impl Fn(&str, &mut Vec<f32>)) -> PathBuf {
    let src = GgufFile::open(root().join("testdata/tiny/llama/llama-f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.set(k.clone(), v.clone());
    }
    for t in &src.tensors {
        let mut data = src.view(t).to_f32().unwrap();
        edit(&t.name, &mut data);
        w.add_f32(t.name.clone(), &t.shape, plumb_formats::GgmlType::F32, &data).unwrap();
    }
    let p = dir.join(name);
    w.write(&p).unwrap();
    p
}

#[test]
fn nan_weights_are_flagged_at_the_first_stage_they_reach() {
    let dir = tempfile::tempdir().unwrap();
    let p = edited_copy(dir.path(), "nan.gguf", |name, d| {
        if name == "blk.1.ffn_up.weight" {
            d[5] = f32::NAN;
        }
    });
    let m = p.to_str().unwrap();
    let (code, out, _) = plumb(&["trace", m, "--tokens", "1,17,255,3", "--color", "never"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("layer 1 ANOMALY"), "{out}");
    assert!(out.contains("summary first anomaly in layer 1: blk.1.ffn_up:"), "{out}");
    assert!(out.contains("layer 0 OK"), "{out}");
    // Generation does not crash on NaN logits.
    let (code, _, _) = plumb(&["run", m, "--tokens", "1,17", "-n", "3"]);
    assert_eq!(code, 0);
    // Against the healthy model, bisect names the same stage.
    let good = root().join("testdata/tiny/llama/llama-f32.gguf");
    let (code, out, _) =
        plumb(&["bisect", m, good.to_str().unwrap(), "--tokens", "1,17,255,3", "--brief", "--color", "never"]);
    assert_eq!(code, 1);
    assert!(out.contains("ANOMALY at blk.1.ffn_up"), "{out}");
    assert!(out.contains("blk.1.ffn_up.weight: holds NaN or Inf values"), "{out}");
}

#[test]
fn misshaped_tensor_and_contradicting_metadata_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = GgufFile::open(root().join("testdata/tiny/llama/llama-f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        let v = if k == "llama.feed_forward_length" { plumb_formats::gguf::Value::U32(100) } else { v.clone() };
        w.set(k.clone(), v);
    }
    for t in &src.tensors {
        let data = src.view(t).to_f32().unwrap();
        w.add_f32(t.name.clone(), &t.shape, plumb_formats::GgmlType::F32, &data).unwrap();
    }
    let p = dir.path().join("contradict.gguf");
    w.write(&p).unwrap();
    let (code, _, err) = plumb(&["run", p.to_str().unwrap(), "--tokens", "1,2"]);
    assert_eq!(code, 2);
    assert!(err.contains("blk.0.ffn_gate.weight: shape [128, 64], expected [100, 64]"), "{err}");
    let (code, out, _) = plumb(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("INVALID"), "{out}");
}

/// A copy of the tiny llama GGUF with metadata `extra` set and the f32
/// tensors `tensors` added.
fn extended_copy(dir: &Path, name: &str, extra: &[(&str, plumb_formats::gguf::Value)], tensors: &[&str]) -> PathBuf {
    let src = GgufFile::open(root().join("testdata/tiny/llama/llama-f32.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.set(k.clone(), v.clone());
    }
    for (k, v) in extra {
        w.set(*k, v.clone());
    }
    for t in &src.tensors {
        let data = src.view(t).to_f32().unwrap();
        w.add_f32(t.name.clone(), &t.shape, plumb_formats::GgmlType::F32, &data).unwrap();
    }
    for &t in tensors {
        w.add_f32(t, &[8], plumb_formats::GgmlType::F32, &[1.5; 8]).unwrap();
    }
    let p = dir.join(name);
    w.write(&p).unwrap();
    p
}

/// Nothing in a file is passed over in silence: rope scaling plumb does not
/// compute (yarn without its trained context, half of longrope's factors,
/// longrope without its trained context, an attention factor on its own, a
/// factor without a type, two kinds of factors at once)
/// changes every angle and is refused with exit 2; a tensor plumb does not
/// read is named by `inspect` and warned about by every command that loads
/// the model. The scalings plumb computes agree with each other: a linear
/// factor and llama 3's per-pair factors all equal to it give the same
/// exact logits, which differ from the unscaled model's.
#[test]
fn rope_scaling_is_refused_and_unread_tensors_are_named() {
    use plumb_formats::gguf::Value;
    let dir = tempfile::tempdir().unwrap();
    // (file, metadata set, tensors added, what the refusal says)
    type Case<'a> = (&'a str, Vec<(&'a str, Value)>, Vec<&'a str>, &'a str);
    let linear = || {
        vec![
            ("llama.rope.scaling.type", Value::String("linear".into())),
            ("llama.rope.scaling.factor", Value::F32(1.5)),
        ]
    };
    let cases: [Case; 7] = [
        (
            "yarn.gguf",
            vec![
                ("llama.rope.scaling.type", Value::String("yarn".into())),
                ("llama.rope.scaling.factor", Value::F32(4.0)),
            ],
            vec![],
            "yarn rope scaling without rope.scaling.original_context_length",
        ),
        (
            "factor.gguf",
            vec![("llama.rope.scaling.factor", Value::F32(8.0))],
            vec![],
            "rope scaling factor 8 without a scaling type",
        ),
        ("both.gguf", linear(), vec!["rope_freqs.weight"], "rope_freqs.weight together with linear rope scaling"),
        (
            "long.gguf",
            vec![],
            vec!["rope_factors_long.weight"],
            "rope_factors_long.weight without rope_factors_short.weight",
        ),
        (
            "longrope.gguf",
            vec![],
            vec!["rope_factors_long.weight", "rope_factors_short.weight"],
            "longrope factors without rope.scaling.original_context_length",
        ),
        (
            "attn.gguf",
            vec![("llama.rope.scaling.attn_factor", Value::F32(2.0))],
            vec![],
            "rope.scaling.attn_factor 2 without longrope factors is not supported yet",
        ),
        (
            "mixed.gguf",
            vec![("llama.rope.scaling.original_context_length", Value::U32(4))],
            vec!["rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"],
            "rope_freqs.weight together with rope_factors_long.weight",
        ),
    ];
    for (name, extra, tensors, want) in cases {
        let p = extended_copy(dir.path(), name, &extra, &tensors);
        let p = p.to_str().unwrap();
        let (code, _, err) = plumb(&["run", p, "--tokens", "1,2", "-n", "1"]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        let (code, out, _) = plumb(&["inspect", p]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains("INVALID") && out.contains(want), "{name}: {out}");
    }
    // Scaling that scales nothing is no scaling.
    let none =
        extended_copy(dir.path(), "none.gguf", &[("llama.rope.scaling.type", Value::String("none".into()))], &[]);
    let (code, _, err) = plumb(&["run", none.to_str().unwrap(), "--tokens", "1,2", "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    // Linear ×1.5 two ways (extended_copy's tensor is [8] of 1.5: one
    // factor per rotary pair of the tiny llama's head of 16).
    let by_type = extended_copy(dir.path(), "linear.gguf", &linear(), &[]);
    let by_pair = extended_copy(dir.path(), "pairs.gguf", &[], &["rope_freqs.weight"]);
    let logits = |p: &Path| {
        use plumb_model::kernels::kernels_for;
        let m = plumb_model::Model::load(p).unwrap();
        let mut cache = plumb_model::KvCache::new(&m.cfg, 8);
        let k = kernels_for(plumb_model::Precision::Exact);
        m.forward(k.as_ref(), &[1, 17, 255, 3, 400, 511, 42, 7], &mut cache, true, &mut plumb_model::NoTrace)
    };
    let (a, b, plain) = (logits(&by_type), logits(&by_pair), logits(&none));
    assert_eq!(a, b, "linear scaling and equal per-pair factors differ");
    let moved = a.iter().zip(&plain).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "rope scaling moved no logit ({moved})");
    let (_, out, _) = plumb(&["inspect", by_pair.to_str().unwrap()]);
    assert!(out.contains("scaling per-pair factors (llama 3)") && !out.contains("not read by plumb"), "{out}");
    let (_, out, _) = plumb(&["inspect", by_type.to_str().unwrap()]);
    assert!(out.contains("scaling linear ×1.5"), "{out}");

    let extra = extended_copy(dir.path(), "extra.gguf", &[], &["blk.0.attn_sinks.weight"]);
    let extra = extra.to_str().unwrap();
    let (code, out, err) = plumb(&["run", extra, "--tokens", "1,2", "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    assert!(err.contains("warning: 1 tensor in the file is not read by plumb (blk.0.attn_sinks.weight)"), "{err}");
    let (code, out, _) = plumb(&["inspect", extra]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("not read by plumb:\n  - blk.0.attn_sinks.weight"), "{out}");
    let (_, out, _) = plumb(&["inspect", extra, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["unused_tensors"], serde_json::json!(["blk.0.attn_sinks.weight"]));
    assert_eq!(v["unused_metadata"], serde_json::json!([]));

    // Metadata keys likewise: a sliding window in a llama file (llama.cpp
    // ignores it too) and an expert group count are named, never dropped in
    // silence.
    let keys = [("llama.attention.sliding_window", Value::U32(4)), ("llama.expert_group_count", Value::U32(8))];
    let keyed = extended_copy(dir.path(), "keys.gguf", &keys, &[]);
    let keyed = keyed.to_str().unwrap();
    let (code, _, err) = plumb(&["run", keyed, "--tokens", "1,2", "-n", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(
            "2 metadata keys in the file are not read by plumb (llama.attention.sliding_window, llama.expert_group_count)"
        ),
        "{err}"
    );
    let (_, out, _) = plumb(&["inspect", keyed, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["unused_metadata"], serde_json::json!(["llama.attention.sliding_window", "llama.expert_group_count"]));

    // An expert count is read: a llama file that claims experts and holds
    // none is refused, naming the router it lacks.
    let keys = [("llama.expert_count", Value::U32(8)), ("llama.expert_used_count", Value::U32(2))];
    let moe = extended_copy(dir.path(), "moe.gguf", &keys, &[]);
    let (code, _, err) = plumb(&["run", moe.to_str().unwrap(), "--tokens", "1,2", "-n", "1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("blk.0.ffn_gate_inp.weight: missing (expected shape [8, 64])"), "{err}");
}

/// Every key and tensor of the test models is read or known not to matter:
/// `inspect` reports nothing unread for any tiny GGUF (every architecture,
/// F32 and Q8_0) or the real model.
#[test]
fn the_test_models_hold_nothing_plumb_passes_over() {
    let mut models: Vec<PathBuf> = Vec::new();
    for arch in TINY_ARCHS {
        for q in ["f32", "q8_0"] {
            models.push(root().join(format!("testdata/tiny/{arch}/{arch}-{q}.gguf")));
        }
    }
    let real = root().join("models/gemma-3-270m-q4_k_m.gguf");
    if real.exists() {
        models.push(real);
    }
    for m in models {
        let (code, out, _) = plumb(&["inspect", m.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "{}: {out}", m.display());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["unused_metadata"], serde_json::json!([]), "{}", m.display());
        assert_eq!(v["unused_tensors"], serde_json::json!([]), "{}", m.display());
    }
}

#[test]
fn bad_prompts_and_arguments_exit_2_with_a_message() {
    let m = root().join("testdata/tiny/llama/llama-f32.gguf");
    let m = m.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The same model with one vocabulary entry renamed.
    let renamed = {
        let src = GgufFile::open(root().join("testdata/tiny/llama/llama-f32.gguf")).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata() {
            let mut v = v.clone();
            if k == "tokenizer.ggml.tokens" {
                if let plumb_formats::gguf::Value::Array(items) = &mut v {
                    items[7] = plumb_formats::gguf::Value::String("x7".into());
                }
            }
            w.set(k.clone(), v);
        }
        for t in &src.tensors {
            w.add_f32(t.name.clone(), &t.shape, plumb_formats::GgmlType::F32, &src.view(t).to_f32().unwrap()).unwrap();
        }
        let p = dir.path().join("renamed.gguf");
        w.write(&p).unwrap();
        p
    };
    let bad = dir.path().join("prompt.txt");
    std::fs::write(&bad, b"caf\xe9").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", m, "-f", bad.to_str().unwrap()], "not UTF-8"),
        (vec!["run", m, "--tokens", "1,99999"], "outside the 512-token vocabulary"),
        (vec!["run", m, "-p", "", "--no-bos"], "empty"),
        (vec!["run", m, "--tokens", "1", "-n", "1000"], "exceeds the model's context of 256"),
        (vec!["run", m, "--tokens", "1", "--top-p", "0"], "--top-p"),
        (vec!["run", m, "--tokens", "1", "-t", "0"], "at least 1"),
        (vec!["trace", m, "--tokens", "1", "--precision", "turbo"], "unknown precision"),
        (
            vec!["bisect", m, renamed.to_str().unwrap(), "--tokens", "1", "--tol", "1e-5"],
            "vocabularies disagree at token 7: A \"t7\", B \"x7\"",
        ),
        (vec!["bisect", m, "--tokens", "1", "--inject", "ffn_up@0:melt"], "unknown kind"),
        (vec!["--kernels", "neon", "inspect", m], "kernel path"),
    ];
    for (args, want) in cases {
        let (code, _, err) = plumb(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
    }
    // Judged by noise (the default), a renamed vocabulary entry is a finding.
    let (code, out, _) = plumb(&["bisect", m, renamed.to_str().unwrap(), "--tokens", "1", "--color", "never"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tokens   vocabulary entry 7: A \"t7\", B \"x7\""), "{out}");
    // -n 0 generates nothing and succeeds.
    let (code, _, _) = plumb(&["run", m, "--tokens", "1,2", "-n", "0"]);
    assert_eq!(code, 0);
}

#[test]
fn plant_refuses_what_it_cannot_plant_and_never_touches_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("testdata/tiny/llama/llama-f32.gguf");
    let before = std::fs::read(&src).unwrap();
    let m = src.to_str().unwrap();
    let out = dir.path().join("out.gguf");
    let o = out.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["plant", m, o, "--bug", "melt"], "unknown bug kind"),
        (vec!["plant", m, o, "--bug", "zero:blk.99.ffn_up"], "no tensor blk.99.ffn_up.weight"),
        (vec!["plant", m, o, "--bug", "swap:blk.0.ffn_up"], "two tensors"),
        (vec!["plant", m, o, "--bug", "swap:blk.0.ffn_up,blk.0.attn_q"], "bytes"),
        (vec!["plant", m, o, "--bug", "none", "--requant", "q9_9"], "unknown type"),
        (vec!["plant", m, m, "--bug", "none", "--force"], "the model itself"),
        (vec!["plant", m, o], "--bug"),
    ];
    for (args, want) in cases {
        let (code, _, err) = plumb(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in {err:?}");
        assert!(!out.exists(), "{args:?} left a file behind");
    }
    let (code, _, err) = plumb(&["plant", m, o, "--bug", "offset:blk.1.ffn_norm"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = plumb(&["plant", m, o, "--bug", "none"]);
    assert_eq!(code, 2, "an existing output needs --force: {err}");
    assert_eq!(std::fs::read(&src).unwrap(), before, "the input model was modified");
}
