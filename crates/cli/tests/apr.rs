//! aprender's files: APR v2 models made by `apr import` / `apr convert`
//! from the tiny GGUFs, and an APRT dump made by `apr trace`
//! (scripts/gen_apr_fixtures.py, aprender's version in testdata/apr/VERSION).

mod common;

use std::path::{Path, PathBuf};

use common::{plumb, root};
use plumb_formats::apr::{AprFile, AprType, Footer};

fn apr(name: &str) -> PathBuf {
    root().join("testdata/apr").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A converted model computes what its GGUF computes: aprender copies the
/// tensors' bytes, so every stage is bit for bit the same (NMSE 0), and so
/// is the greedy continuation.
#[test]
fn apr_models_compute_exactly_what_their_gguf_computes() {
    let pairs = [
        (apr("llama-f32.apr"), root().join("testdata/tiny/llama/llama-f32.gguf")),
        (apr("qwen2-bpe.apr"), apr("qwen2-bpe.gguf")),
        (apr("qwen3-f32.apr"), root().join("testdata/tiny/qwen3/qwen3-f32.gguf")),
        // aprender's other writer: ggml's Q8_0 blocks, no footer.
        (apr("llama-q8_0-preserve.apr"), root().join("testdata/tiny/llama/llama-q8_0.gguf")),
        (apr("qwen2-q8_0-preserve.apr"), root().join("testdata/tiny/qwen2/qwen2-q8_0.gguf")),
    ];
    for (a, g) in &pairs {
        for precision in ["exact", "fast"] {
            let args = ["bisect", s(a), s(g), "--tokens", "1,5,9,14,3,7"];
            let p = ["--a-precision", precision, "--b-precision", precision, "--tol", "0", "--color", "never"];
            let (code, out, err) = plumb(&[&args[..], &p[..]].concat());
            assert_eq!(code, 0, "{}: {out}\n{err}", a.display());
            assert!(out.contains("PARITY"), "{out}");
        }
        let run = |m: &Path| plumb(&["run", s(m), "--tokens", "1,5,9", "-n", "12", "--precision", "exact", "--json"]);
        let ((ca, oa, ea), (cg, og, _)) = (run(a), run(g));
        assert_eq!((ca, cg), (0, 0), "{ea}");
        let ids = |o: &str| serde_json::from_str::<serde_json::Value>(o).unwrap()["generated"].clone();
        assert_eq!(ids(&oa), ids(&og));
    }
}

/// The byte-level BPE vocabulary in an APR file's metadata tokenizes as the
/// GGUF's does; a SentencePiece one, whose scores aprender drops, is
/// refused with the reason, and ids still run.
#[test]
fn the_tokenizer_comes_from_the_metadata() {
    let ids = |m: &Path| {
        let (code, out, err) = plumb(&["run", s(m), "-p", "What is 2+2? Hello there", "-n", "1", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["prompt_ids"].clone()
    };
    assert_eq!(ids(&apr("qwen2-bpe.apr")), ids(&apr("qwen2-bpe.gguf")));
    let (code, _, err) = plumb(&["run", s(&apr("llama-f32.apr")), "-p", "Hello", "-n", "1"]);
    assert_eq!(code, 2);
    assert!(err.contains("without its scores"), "{err}");
}

/// APR's own Q8 and Q4 (`apr convert --quantize int8|int4`) hold what
/// aprender's encoder made of the f32 weights: each value within half a
/// quantization step of the original (round to nearest), the step being the
/// tensor's max |x|/127 for Q8 and each block of 32's max |x|/7 for Q4.
/// aprender 0.72.3's convert keeps neither the head counts nor the
/// tokenizer, and calls the llama a qwen2: plumb refuses to run what it
/// cannot size, naming the key.
#[test]
fn apr_q8_and_q4_dequantize_within_half_a_step() {
    let f32s = AprFile::open(apr("llama-f32.apr")).unwrap();
    for (file, want) in [("llama-int8.apr", AprType::Q8), ("llama-int4.apr", AprType::Q4)] {
        let q = AprFile::open(apr(file)).unwrap();
        let quantized: Vec<_> = q.header.tensors.iter().filter(|t| t.ty == want).collect();
        assert!(quantized.len() >= 24, "{file}: {} {want:?} tensors", quantized.len());
        let mut checked = 0;
        for t in quantized {
            // convert adds an output.weight beside lm_head.weight.
            let Some(orig) = f32s.tensor(&t.name) else { continue };
            checked += 1;
            let orig = orig.to_f32().unwrap();
            let deq = q.tensor(&t.name).unwrap().to_f32().unwrap();
            assert_eq!(orig.len(), deq.len());
            let groups: Vec<(&[f32], &[f32])> = match want {
                AprType::Q8 => vec![(&orig[..], &deq[..])],
                _ => orig.chunks(32).zip(deq.chunks(32)).collect(),
            };
            let levels = if want == AprType::Q8 { 127.0 } else { 7.0 };
            for (o, d) in groups {
                let step = o.iter().fold(0f32, |m, x| m.max(x.abs())) / levels;
                for (x, y) in o.iter().zip(d) {
                    // Q4 keeps the step as an f16: it is off by up to 2^-11 of
                    // itself, times the level (at most 8).
                    let slack = if want == AprType::Q4 { 8.0 / 2048.0 } else { 0.0 };
                    let bound = step * (0.5 + slack) * (1.0 + 1e-6) + 1e-9;
                    assert!((x - y).abs() <= bound, "{file} {}: {x} → {y}, step {step}", t.name);
                }
            }
        }
        assert!(checked >= 23, "{file}: {checked} tensors checked");
        let (code, out, err) = plumb(&["run", s(&apr(file)), "--tokens", "1,5,9", "-n", "4", "--precision", "exact"]);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains("the metadata has no num_heads"), "{err}");
    }
}

#[test]
fn inspect_names_the_checks_and_finds_every_tensor() {
    let (code, out, err) = plumb(&["inspect", s(&apr("qwen2-bpe.apr"))]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("APR v2.0"), "{out}");
    assert!(out.contains("header checksum verified, footer checksum verified"), "{out}");
    assert!(out.contains("verdict     valid"), "{out}");
    assert!(!out.contains("not read by plumb"), "{out}");
    let f = AprFile::open(apr("qwen2-bpe.apr")).unwrap();
    assert_eq!(f.header.footer, Footer::Verified);
}

/// A damaged file is exit 2 with the field named, never a panic; the file
/// given is not modified.
#[test]
fn damaged_apr_files_are_refused_naming_the_field() {
    let good = std::fs::read(apr("llama-f32.apr")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, usize, &str); 3] = [
        ("tensor count", 9, "header checksum"),
        ("a weight's bytes", good.len() - 100, "footer checksum"),
        ("magic", 1, "not an APR file"),
    ];
    for (what, at, expect) in cases {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        let p = dir.path().join("bad.apr");
        std::fs::write(&p, &bad).unwrap();
        let (code, out, err) = plumb(&["inspect", s(&p)]);
        assert_eq!(code, 2, "{what}: {out}{err}");
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(std::fs::read(&p).unwrap(), bad);
    }
    for cut in (0..good.len()).step_by(4099) {
        let p = dir.path().join("cut.apr");
        std::fs::write(&p, &good[..cut]).unwrap();
        let (code, _, err) = plumb(&["inspect", s(&p)]);
        assert_eq!(code, 2, "cut at {cut}: {err}");
        assert!(err.contains("cut.apr"), "{err}");
    }
}

/// aprender's own stage dumps of its forward pass (`apr trace
/// --save-tensor all`, prompt "What is 2+2?" with no BOS) against plumb
/// exact on the same file's GGUF: every stage aprender writes is read, split
/// or mapped to plumb's, and agrees to f32 rounding (NMSE ≤ 1e-12), the
/// embedding exactly (the same token ids from the same BPE merges).
#[test]
fn an_aprt_dump_diffs_against_plumbs_trace() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("plumb.safetensors");
    let gguf = apr("qwen2-bpe.gguf");
    let (code, _, err) =
        plumb(&["trace", s(&gguf), "-p", "What is 2+2?", "--no-bos", "--tensors", "--save", s(&ours), "--json"]);
    assert_eq!(code, 0, "{err}");
    let dump = apr("qwen2-bpe-aprt");
    let (code, out, err) = plumb(&["diff", s(&dump), s(&ours), "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["diverged"], false);
    let stages = d["stages"].as_array().unwrap();
    let compared: Vec<&serde_json::Value> = stages.iter().filter(|st| st["basis"]["kind"] == "tensors").collect();
    // embedding, 3 layers × 17 stages (all but attn_scores), final_norm.
    assert_eq!(compared.len(), 1 + 3 * 17 + 1, "{out}");
    for st in &compared {
        let nmse = st["nmse"].as_f64().unwrap();
        assert!(nmse <= 1e-12, "{}: nmse {nmse}", st["key"]);
    }
    assert_eq!(compared[0]["key"], "embedding");
    assert_eq!(compared[0]["nmse"].as_f64(), Some(0.0));
    let scores: Vec<_> = stages.iter().filter(|st| st["key"].as_str().unwrap().ends_with("attn_scores")).collect();
    assert!(scores.iter().all(|st| st["basis"]["kind"] == "only_b"), "{scores:?}");

    // Another prompt's trace cannot be shaped against: said, exit 2.
    let (code, _, err) = plumb(&["trace", s(&gguf), "-p", "Hello", "--tensors", "--save", s(&ours), "--force"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = plumb(&["diff", s(&dump), s(&ours)]);
    assert_eq!(code, 2);
    assert!(err.contains("What is 2+2?"), "{err}");

    // A damaged dump file is named.
    let bad = dir.path().join("dump");
    std::fs::create_dir_all(bad.join("layer-0")).unwrap();
    let mut bytes = std::fs::read(dump.join("layer-0/attn_norm.bin")).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(bad.join("layer-0/attn_norm.bin"), &bytes).unwrap();
    let (code, _, err) = plumb(&["diff", s(&bad), s(&ours)]);
    assert_eq!(code, 2);
    assert!(err.contains("attn_norm.bin") && err.contains("values"), "{err}");
}
