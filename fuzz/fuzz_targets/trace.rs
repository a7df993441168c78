//! The trace-file reader (any engine's safetensors) on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = plumb_trace::file::Trace::from_bytes(std::path::Path::new("fuzz.safetensors"), data);
});
