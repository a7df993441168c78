//! OLMo 2: llama with the norms moved — none before attention or the FFN,
//! one after each (on the branch, before the residual add) — and RMSNorms of
//! q and k over each token's whole projection, before the rotary embedding.

use super::{ArchSpec, Quirks, PLAIN};

pub static SPEC: ArchSpec = ArchSpec {
    name: "olmo2",
    names: &["olmo2"],
    quirks: Quirks { pre_norms: false, post_norms: true, qk_norm: true, qk_norm_whole: true, ..PLAIN },
    gguf_keys: &[],
    hf_renames: &[],
    from_gguf: super::no_gguf_extras,
    from_hf: super::qwen2::from_hf,
};
