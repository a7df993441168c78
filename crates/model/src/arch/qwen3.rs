//! Qwen3: llama with a per-head RMSNorm of q and k before the rotary
//! embedding, and no biases.

use super::{ArchSpec, Quirks, PLAIN};

pub static SPEC: ArchSpec = ArchSpec {
    name: "qwen3",
    names: &["qwen3"],
    quirks: Quirks { qk_norm: true, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[],
    from_gguf: super::no_gguf_extras,
    from_hf: super::qwen2::from_hf,
};
