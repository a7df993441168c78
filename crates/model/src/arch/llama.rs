//! The llama family (llama 1–3, mistral, mixtral): the plain pre-norm decoder
//! that the others are described against. Its GGUF q/k rows are interleaved
//! by the converter for llama.cpp's rotary layout. Mixtral is llama with a
//! mixture of experts (GGUF keeps the architecture name llama); its HF
//! folders name the experts' matrices w1 (gate), w3 (up) and w2 (down).

use std::path::Path;

use serde_json::Value as J;

use super::{ArchSpec, Quirks, Role, PLAIN};
use crate::config::ModelConfig;
use crate::ModelError;

pub static SPEC: ArchSpec = ArchSpec {
    name: "llama",
    names: &["llama", "mistral", "mixtral"],
    quirks: Quirks { gguf_qk_interleaved: true, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[
        (Role::Router, "block_sparse_moe.gate.weight"),
        (Role::ExpGate, "block_sparse_moe.experts.{e}.w1.weight"),
        (Role::ExpUp, "block_sparse_moe.experts.{e}.w3.weight"),
        (Role::ExpDown, "block_sparse_moe.experts.{e}.w2.weight"),
    ],
    from_gguf: super::no_gguf_extras,
    from_hf,
};

fn from_hf(cfg: &mut ModelConfig, c: &J, _: &Path) -> Result<(), ModelError> {
    // llama and mistral configs use their sliding window on every layer.
    super::hf_sliding_window(cfg, c, true);
    Ok(())
}
