//! The GGUF reader on arbitrary bytes: an error or a checked header, never a
//! panic; every tensor view it accepts lies inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = plumb_formats::gguf::parse_header(std::path::Path::new("fuzz.gguf"), data) {
        for t in &h.tensors {
            assert!(t.start + t.n_bytes <= data.len() as u64);
        }
        for (_, v) in &h.metadata {
            let _ = v.summary();
        }
    }
});
