//! Byte-level BPE tokenizers against transformers' ids, for the tiny
//! qwen2- and llama3-style vocabularies made by
//! `scripts/gen_tiny_tokenizers.py`: once through the GGUF metadata path
//! (`tokenizer.ggml.model = gpt2`) and once through `tokenizer.json`.

use std::path::PathBuf;

use plumb_formats::gguf::GgufFile;
use plumb_model::tokenizer::Tokenizer;

fn dir(style: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tokenizers").join(style)
}

fn cases(style: &str) -> Vec<(String, Vec<u32>, Vec<u32>, String)> {
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir(style).join("expected.json")).unwrap()).unwrap();
    let list = j.as_array().cloned().or_else(|| j["cases"].as_array().cloned()).expect("a list of cases");
    let ids =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    list.iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                ids(&c["ids"]),
                ids(&c["ids_no_special"]),
                c["decoded"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn check(tok: &Tokenizer, style: &str, via: &str) {
    let cases = cases(style);
    assert!(cases.len() >= 12);
    for (text, with, without, decoded) in cases {
        assert_eq!(tok.encode(&text, true, true), with, "{style} via {via}, with specials: {text:?}");
        assert_eq!(tok.encode(&text, false, true), without, "{style} via {via}, without: {text:?}");
        if !text.contains("<|") {
            assert_eq!(tok.decode(&without), decoded, "{style} via {via}: decode of {text:?}");
        }
    }
}

#[test]
fn gguf_gpt2_vocabularies_match_transformers() {
    for style in ["qwen2", "llama3"] {
        let g = GgufFile::open(dir(style).join("vocab.gguf")).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        check(&tok, style, "GGUF");
    }
}

#[test]
fn tokenizer_json_matches_transformers() {
    for style in ["qwen2", "llama3"] {
        let tok = Tokenizer::from_hf_dir(&dir(style)).unwrap();
        check(&tok, style, "tokenizer.json");
    }
}
