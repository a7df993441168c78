//! Qwen2-MoE: qwen2 (biases on q, k and v) with a mixture of experts in
//! every layer and a shared expert beside them, gated per token by a
//! sigmoid. The chosen experts' probabilities are used as they are, not
//! renormalized (llama.cpp's graph never does; HF's `norm_topk_prob`
//! defaults to false).

use super::{ArchSpec, Quirks, PLAIN};

pub static SPEC: ArchSpec = ArchSpec {
    name: "qwen2moe",
    names: &["qwen2moe", "qwen2_moe"],
    quirks: Quirks { qkv_bias: true, moe_norm: false, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[],
    from_gguf: super::no_gguf_extras,
    from_hf: super::qwen2::from_hf,
};
