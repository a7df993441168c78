//! Gemma 2: gemma 3 without the q/k norms — tanh-GELU FFN, embeddings
//! scaled by √d, norms after attention and after the FFN, queries scaled by
//! query_pre_attn_scalar^−½ — with softcapped attention scores and logits,
//! and every other layer (the even ones) attending through a sliding window,
//! all layers on one rotary base.

use std::path::Path;

use plumb_formats::gguf::GgufFile;
use serde_json::Value as J;

use super::{ArchSpec, Role};
use crate::config::ModelConfig;
use crate::ModelError;

pub static SPEC: ArchSpec = ArchSpec {
    name: "gemma2",
    names: &["gemma2"],
    quirks: super::gemma3::GEMMA,
    gguf_keys: super::gemma3::GEMMA_KEYS,
    hf_renames: &[(Role::FfnNorm, "pre_feedforward_layernorm.weight")],
    from_gguf,
    from_hf,
};

/// llama.cpp's gemma 2: layer l slides when l is even.
fn default_pattern(n_layer: usize) -> Vec<bool> {
    (0..n_layer).map(|il| il % 2 == 0).collect()
}

fn from_gguf(cfg: &mut ModelConfig, g: &GgufFile, prefix: &str) -> Result<(), ModelError> {
    super::gemma3::gemma_gguf(cfg, g, prefix, default_pattern(cfg.n_layer))?;
    // One rotary base for every layer, unless the file says otherwise.
    cfg.rope_theta_local = g.f64_opt(&format!("{prefix}.rope.local.freq_base"))?.map_or(cfg.rope_theta, |v| v as f32);
    Ok(())
}

fn from_hf(cfg: &mut ModelConfig, c: &J, _: &Path) -> Result<(), ModelError> {
    // transformers' Gemma2Config defaults, where a config leaves them out.
    super::gemma3::gemma_hf(cfg, c, 2);
    let num = |k: &str, default: f64| c.get(k).map_or(Some(default), J::as_f64);
    cfg.attn_softcap = num("attn_logit_softcapping", 50.0).map(|v| v as f32);
    cfg.final_softcap = num("final_logit_softcapping", 30.0).map(|v| v as f32);
    Ok(())
}
