//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) and crash
//! regressions through the same code the fuzz targets drive, without
//! libFuzzer: nothing in them may panic. `.ci/run` runs this; the long
//! fuzzing runs are `cargo fuzz run` (see fuzz/README.md).

use std::path::{Path, PathBuf};

use plumb_formats::gguf::GgufFile;
use plumb_model::tokenizer::{StreamDecoder, Tokenizer};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in [root().join("fuzz/corpus").join(target), root().join("fuzz/regressions").join(target)] {
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            out.extend(paths.iter().map(|p| std::fs::read(p).unwrap()));
        }
    }
    out
}

#[test]
fn gguf_corpus() {
    let all = inputs("gguf");
    assert!(!all.is_empty());
    for data in all {
        if let Ok(h) = plumb_formats::gguf::parse_header(Path::new("fuzz.gguf"), &data) {
            for t in &h.tensors {
                assert!(t.start + t.n_bytes <= data.len() as u64);
            }
        }
        // And every prefix of it, as truncated files.
        for cut in (0..data.len()).step_by(97) {
            let _ = plumb_formats::gguf::parse_header(Path::new("fuzz.gguf"), &data[..cut]);
        }
    }
}

#[test]
fn apr_corpus() {
    let all = inputs("apr");
    assert!(!all.is_empty());
    for data in all {
        let h = plumb_formats::apr::parse_header(Path::new("fuzz.apr"), &data).expect("every seed is a valid file");
        for t in &h.tensors {
            assert!(t.start + t.len <= data.len() as u64);
        }
        // Every prefix, and every single-byte change, is an error or a
        // checked header: never a panic.
        for cut in 0..data.len() {
            let _ = plumb_formats::apr::parse_header(Path::new("fuzz.apr"), &data[..cut]);
        }
        for at in 0..data.len() {
            let mut bad = data.clone();
            bad[at] ^= 0xA5;
            if let Ok(h) = plumb_formats::apr::parse_header(Path::new("fuzz.apr"), &bad) {
                assert!(h.tensors.iter().all(|t| t.start + t.len <= bad.len() as u64));
            }
        }
    }
}

#[test]
fn trace_corpus() {
    let all = inputs("trace");
    assert!(!all.is_empty());
    for data in all {
        let _ = plumb_trace::Trace::from_bytes(Path::new("fuzz.safetensors"), &data);
    }
}

#[test]
fn tokenizer_corpus() {
    let toks: Vec<Tokenizer> = [
        "testdata/tiny/llama/llama-f32.gguf",
        "testdata/tokenizers/qwen2/vocab.gguf",
        "testdata/tokenizers/llama3/vocab.gguf",
    ]
    .iter()
    .map(|p| Tokenizer::from_gguf(&GgufFile::open(root().join(p)).unwrap()).unwrap())
    .collect();
    for data in inputs("tokenizer") {
        for t in &toks {
            if let Ok(text) = std::str::from_utf8(&data) {
                assert!(t.encode(text, true, true).iter().all(|&i| (i as usize) < t.vocab_size()));
            }
            let ids: Vec<u32> = data.chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a * 256 + b as u32)).collect();
            let _ = t.decode(&ids);
            let mut s = StreamDecoder::default();
            for &i in &ids {
                let _ = s.push(&t.token_bytes(i));
            }
        }
    }
}

#[test]
fn parser_corpus() {
    for data in inputs("parsers") {
        if let Ok(s) = std::str::from_utf8(&data) {
            let _ = plumb_trace::plan::parse_stages(s);
            let _ = plumb_trace::plan::parse_layers(s);
            let _ = plumb_diff::Gate::parse_toml(s);
            if let Ok(f) = plumb_model::fault::Fault::parse(s, 4) {
                let mut d = vec![1.0f32; 24];
                f.apply(&mut d, &[2, 3, 4]);
                f.apply(&mut d, &[3, 8]);
            }
        }
    }
}

#[test]
fn hf_corpus() {
    use plumb_model::kernels::kernels_for;
    use plumb_model::{KvCache, Model, NoTrace, Precision};
    let dir = tempfile::tempdir().unwrap();
    let mut loaded = 0;
    for data in inputs("hf") {
        if plumb_model::fuzzing::write_hf_folder(dir.path(), &data).is_err() {
            continue;
        }
        if let Ok(model) = Model::load(dir.path()) {
            let mut cache = KvCache::new(&model.cfg, 1);
            let k = kernels_for(Precision::Exact);
            assert_eq!(model.forward(k.as_ref(), &[0], &mut cache, false, &mut NoTrace).len(), model.cfg.vocab);
            loaded += 1;
        }
    }
    // The seeds (fuzz/seed_hf.py) are whole models of every architecture.
    assert!(loaded >= 4, "only {loaded} corpus inputs load as models");
}
