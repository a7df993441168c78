//! `plumb inspect` end to end: the real model's figures, JSON output, and
//! exit code 2 with a clear message for every broken file.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use plumb_formats::gguf::Value;
use plumb_formats::writer::GgufWriter;
use plumb_formats::GgmlType;

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn real_model_report() {
    let p = real_model();
    let (code, out, _) = plumb(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("arch        gemma3"), "{out}");
    assert!(out.contains("18 layers · d 640"), "{out}");
    assert!(out.contains("vocab 262144"), "{out}");
    assert!(out.contains("tensors (236)"), "{out}");
    for (ty, n) in [("F32", 109), ("Q5_0", 81), ("Q4_K", 27), ("Q8_0", 10), ("Q6_K", 9)] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{ty} ")))
            .unwrap_or_else(|| panic!("no {ty} line"));
        assert!(line.contains(&format!("{n} tensors")), "{line}");
    }
    assert!(out.contains("verdict     valid"), "{out}");
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn real_model_json() {
    let p = real_model();
    let (code, out, _) = plumb(&["inspect", "--json", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).expect("inspect --json is one JSON document");
    assert_eq!(j["config"]["layers"], 18);
    assert_eq!(j["config"]["embedding"], 640);
    assert_eq!(j["config"]["vocab"], 262144);
    assert_eq!(j["tensor_count"], 236);
    assert_eq!(j["by_type"]["Q5_0"]["tensors"], 81);
    assert_eq!(j["tokenizer"]["kind"], "llama");
    assert_eq!(j["valid"], true);
}

fn small_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.tags", Value::Array(vec![Value::String("t".into())]));
    let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
    w.add_f32("a.weight", &[2, 32], GgmlType::Q8_0, &x).unwrap();
    w.add_f32("b.weight", &[64], GgmlType::F32, &x).unwrap();
    w.to_bytes()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn every_truncation_exits_2_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = small_gguf();
    // The last tensor (64 f32, a multiple of the alignment) ends the file.
    let whole = bytes.len() - (bytes.len() % 32);
    for len in (0..whole - 1).step_by(7).chain([whole - 1]) {
        let p = write(dir.path(), "cut.gguf", &bytes[..len]);
        let (code, _, err) = plumb(&["inspect", p.to_str().unwrap()]);
        assert_eq!(code, 2, "truncated to {len}: exit {code}, stderr {err}");
        assert!(err.contains("cut.gguf"), "truncated to {len}: message does not name the file: {err}");
    }
}

#[test]
fn incomplete_model_is_a_failed_gate_not_a_crash() {
    // A valid GGUF of a llama model that lacks most tensors: exit 1, with
    // the missing tensors listed.
    let dir = tempfile::tempdir().unwrap();
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    for (k, v) in
        [("block_count", 1u32), ("embedding_length", 32), ("feed_forward_length", 64), ("attention.head_count", 2)]
    {
        w.set(format!("llama.{k}"), Value::U32(v));
    }
    w.add_f32("token_embd.weight", &[8, 32], GgmlType::F32, &[0.0; 256]).unwrap();
    let p = dir.path().join("partial.gguf");
    w.write(&p).unwrap();
    let (code, out, _) = plumb(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("INVALID"), "{out}");
    assert!(out.contains("blk.0.attn_q.weight: missing"), "{out}");
}

#[test]
fn bad_paths_and_garbage_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = plumb(&["inspect", "/nonexistent/model.gguf"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    let p = write(dir.path(), "junk.gguf", b"this is not a model at all, just text");
    let (code, _, err) = plumb(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("not a GGUF file"), "{err}");
    // A folder without config.json.
    let (code, _, err) = plumb(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("config.json"), "{err}");
    // A folder whose safetensors header lies.
    std::fs::write(dir.path().join("config.json"), br#"{"model_type": "llama"}"#).unwrap();
    let mut st = (1u64 << 40).to_le_bytes().to_vec();
    st.extend_from_slice(b"{}");
    std::fs::write(dir.path().join("model.safetensors"), st).unwrap();
    let (code, _, err) = plumb(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("model.safetensors"), "{err}");
    // Usage errors are exit 2 as well.
    let (code, _, _) = plumb(&["inspect"]);
    assert_eq!(code, 2);
}
