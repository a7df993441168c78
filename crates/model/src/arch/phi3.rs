//! Phi-3: llama with q, k and v stored as one matrix and the FFN's gate and
//! up as another (split by rows at load), queries scaled before Q·Kᵀ in
//! llama.cpp's graph, and a sliding window on every layer where configured.
//! Long-context variants carry LongRoPE's two factor sets (read with the
//! rope settings, `config.rs`).

use std::path::Path;

use plumb_formats::gguf::GgufFile;
use serde_json::Value as J;

use super::{bad, ArchSpec, Quirks, Role, PLAIN};
use crate::config::ModelConfig;
use crate::ModelError;

pub static SPEC: ArchSpec = ArchSpec {
    name: "phi3",
    names: &["phi3"],
    quirks: Quirks { fused: true, query_pre_scale: true, ..PLAIN },
    gguf_keys: &["attention.sliding_window"],
    hf_renames: &[(Role::WUp, "mlp.gate_up_proj.weight")],
    from_gguf,
    from_hf,
};

fn from_gguf(cfg: &mut ModelConfig, g: &GgufFile, prefix: &str) -> Result<(), ModelError> {
    // llama.cpp reads the window and then does not apply it (its phi3 SWA is
    // disabled); plumb applies it, as transformers does.
    if let Some(w) = g.u64_opt(&format!("{prefix}.attention.sliding_window"))?.filter(|&w| w > 0) {
        cfg.sliding_window = Some(w as usize);
        cfg.layer_sliding = vec![true; cfg.n_layer];
    }
    Ok(())
}

fn from_hf(cfg: &mut ModelConfig, c: &J, path: &Path) -> Result<(), ModelError> {
    let partial = c
        .get("partial_rotary_factor")
        .or_else(|| c.get("rope_parameters").and_then(|r| r.get("partial_rotary_factor")))
        .and_then(J::as_f64)
        .unwrap_or(1.0);
    if partial != 1.0 {
        return Err(bad(
            path,
            format!("partial_rotary_factor {partial} (rotary on part of each head) is not supported yet"),
        ));
    }
    super::hf_sliding_window(cfg, c, true);
    Ok(())
}
