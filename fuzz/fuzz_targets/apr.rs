//! The APR v2 reader on arbitrary bytes: an error or a checked header, never
//! a panic; every tensor it accepts lies inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = plumb_formats::apr::parse_header(std::path::Path::new("fuzz.apr"), data) {
        for t in &h.tensors {
            assert!(t.start + t.len <= data.len() as u64);
        }
    }
});
