//! Qwen2: llama with biases on q, k and v.

use std::path::Path;

use serde_json::Value as J;

use super::{ArchSpec, Quirks, PLAIN};
use crate::config::ModelConfig;
use crate::ModelError;

pub static SPEC: ArchSpec = ArchSpec {
    name: "qwen2",
    names: &["qwen2"],
    quirks: Quirks { qkv_bias: true, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[],
    from_gguf: super::no_gguf_extras,
    from_hf,
};

/// Qwen configs carry a `sliding_window` used only with `use_sliding_window`
/// (shared with qwen3).
pub(super) fn from_hf(cfg: &mut ModelConfig, c: &J, _: &Path) -> Result<(), ModelError> {
    super::hf_sliding_window(cfg, c, false);
    Ok(())
}
