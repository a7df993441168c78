//! A HuggingFace model folder from arbitrary bytes: a u16 little-endian
//! length, that many bytes of config.json, then model.safetensors. Loading
//! gives an error or a model that runs one token, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Model, NoTrace, Precision};

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("plumb-fuzz-hf-{}", std::process::id()));
    if plumb_model::fuzzing::write_hf_folder(&dir, data).is_err() {
        return;
    }
    if let Ok(model) = Model::load(&dir) {
        // The config was accepted: it must describe a model that runs.
        if model.cfg.vocab > 0 && model.cfg.d.saturating_mul(model.cfg.n_layer) <= 1 << 16 {
            let mut cache = KvCache::new(&model.cfg, 1);
            let k = kernels_for(Precision::Exact);
            let logits = model.forward(k.as_ref(), &[0], &mut cache, false, &mut NoTrace);
            assert_eq!(logits.len(), model.cfg.vocab);
        }
    }
});
