//! Tokenizers: arbitrary UTF-8 in (SentencePiece-style and byte-level BPE),
//! arbitrary ids out through decode and the streaming decoder.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plumb_formats::gguf::GgufFile;
use plumb_model::tokenizer::{StreamDecoder, Tokenizer};

fn toks() -> &'static [Tokenizer] {
    static T: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        ["testdata/tiny/llama/llama-f32.gguf", "testdata/tokenizers/qwen2/vocab.gguf", "testdata/tokenizers/llama3/vocab.gguf"]
            .iter()
            .map(|p| Tokenizer::from_gguf(&GgufFile::open(root.join(p)).unwrap()).unwrap())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    for t in toks() {
        if let Ok(text) = std::str::from_utf8(data) {
            let ids = t.encode(text, true, true);
            assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
        }
        let ids: Vec<u32> = data.chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a * 256 + b as u32)).collect();
        let _ = t.decode(&ids);
        let mut s = StreamDecoder::default();
        for &i in &ids {
            let _ = s.push(&t.token_bytes(i));
        }
        let _ = s.finish();
    }
});
