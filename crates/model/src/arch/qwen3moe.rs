//! Qwen3-MoE: qwen3 (per-head q/k norms) with a mixture of experts in
//! every layer, the chosen experts' probabilities renormalized (llama.cpp's
//! graph always does; HF's `norm_topk_prob` says).

use super::{ArchSpec, Quirks, PLAIN};

pub static SPEC: ArchSpec = ArchSpec {
    name: "qwen3moe",
    names: &["qwen3moe", "qwen3_moe"],
    quirks: Quirks { qk_norm: true, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[],
    from_gguf: super::no_gguf_extras,
    from_hf: super::qwen2::from_hf,
};
