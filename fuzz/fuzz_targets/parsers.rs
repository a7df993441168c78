//! The command line's stage, layer, fault and gate parsers on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = plumb_trace::plan::parse_stages(s);
        let _ = plumb_trace::plan::parse_layers(s);
        let _ = plumb_trace::plan::parse_positions(s);
        let _ = plumb_model::fault::Fault::parse(s, 16);
        if let Ok(g) = plumb_diff::Gate::parse_toml(s) {
            let _ = g.bounds("blk.3.ffn_gate");
        }
        if let Ok(f) = plumb_model::fault::Fault::parse(s, 4) {
            let mut d = vec![1.0f32; 24];
            f.apply(&mut d, &[2, 3, 4]);
            f.apply(&mut d, &[3, 8]);
        }
    }
});
