//! The llama family (llama 1–3, mistral): the plain pre-norm decoder that the
//! others are described against. Its GGUF q/k rows are interleaved by the
//! converter for llama.cpp's rotary layout.

use std::path::Path;

use serde_json::Value as J;

use super::{ArchSpec, Quirks, PLAIN};
use crate::config::ModelConfig;
use crate::ModelError;

pub static SPEC: ArchSpec = ArchSpec {
    name: "llama",
    names: &["llama", "mistral"],
    quirks: Quirks { gguf_qk_interleaved: true, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[],
    from_gguf: super::no_gguf_extras,
    from_hf,
};

fn from_hf(cfg: &mut ModelConfig, c: &J, _: &Path) -> Result<(), ModelError> {
    // llama and mistral configs use their sliding window on every layer.
    super::hf_sliding_window(cfg, c, true);
    Ok(())
}
