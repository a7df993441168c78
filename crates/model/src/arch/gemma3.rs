//! Gemma 3 (text): tanh-GELU FFN, embeddings scaled by √d, q/k norms, norms
//! after attention and after the FFN, queries scaled by
//! query_pre_attn_scalar^−½, sliding-window layers with their own rotary
//! base (five of every six by default), optional softcaps, output tied to
//! the embedding.

use std::path::Path;

use plumb_formats::gguf::GgufFile;
use serde_json::Value as J;

use super::{bad, ArchSpec, Quirks, Role, PLAIN};
use crate::config::{Activation, ModelConfig};
use crate::ModelError;

pub static SPEC: ArchSpec = ArchSpec {
    name: "gemma3",
    names: &["gemma3", "gemma3_text"],
    quirks: Quirks { qk_norm: true, ..GEMMA },
    gguf_keys: GEMMA_KEYS,
    // gemma's post_attention_layernorm follows attention; llama's is the FFN
    // input norm.
    hf_renames: &[(Role::FfnNorm, "pre_feedforward_layernorm.weight")],
    from_gguf,
    from_hf,
};

/// The quirks gemma 2 and 3 share (gemma 3 adds q/k norms).
pub(super) const GEMMA: Quirks = Quirks {
    post_norms: true,
    act: Activation::GeluTanh,
    embed_scale_sqrt_d: true,
    query_pre_scale: true,
    hf_norm_plus_one: true,
    hf_tied_default: true,
    local_rope_unscaled: true,
    ..PLAIN
};

/// The GGUF keys gemma 2 and 3 read beyond the common ones.
pub(super) const GEMMA_KEYS: &[&str] = &[
    "attention.sliding_window",
    "attention.sliding_window_pattern",
    "attention.query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "rope.local.freq_base",
];

fn from_gguf(cfg: &mut ModelConfig, g: &GgufFile, prefix: &str) -> Result<(), ModelError> {
    // llama.cpp's gemma3 defaults: local rope base 10000, every sixth layer
    // global; files may override both (plumb's writer does).
    cfg.rope_theta_local = g.f64_opt(&format!("{prefix}.rope.local.freq_base"))?.unwrap_or(10000.0) as f32;
    gemma_gguf(cfg, g, prefix, (0..cfg.n_layer).map(|il| il % 6 != 5).collect())
}

/// What gemma 2 and 3 files share: the sliding window and its pattern
/// (`default_pattern` where the file has none), the query scale and the
/// softcaps.
pub(super) fn gemma_gguf(
    cfg: &mut ModelConfig,
    g: &GgufFile,
    prefix: &str,
    default_pattern: Vec<bool>,
) -> Result<(), ModelError> {
    let path = g.path();
    let key = |k: &str| format!("{prefix}.{k}");
    cfg.sliding_window = g.u64_opt(&key("attention.sliding_window"))?.map(|v| v as usize);
    cfg.layer_sliding = match g.get(&key("attention.sliding_window_pattern")) {
        Some(v) => {
            let arr = v.as_array().ok_or_else(|| bad(path, "sliding_window_pattern is not an array"))?;
            arr.iter()
                .map(|b| b.as_bool().ok_or_else(|| bad(path, "sliding_window_pattern holds a non-bool")))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => default_pattern,
    };
    if cfg.sliding_window.is_none() {
        cfg.layer_sliding = vec![false; cfg.n_layer];
    }
    let scalar = g.f64_opt(&key("attention.query_pre_attn_scalar"))?.unwrap_or(cfg.head_dim as f64);
    cfg.attn_scale = (1.0 / scalar.sqrt()) as f32;
    cfg.attn_softcap = g.f64_opt(&key("attn_logit_softcapping"))?.map(|v| v as f32);
    cfg.final_softcap = g.f64_opt(&key("final_logit_softcapping"))?.map(|v| v as f32);
    Ok(())
}

fn from_hf(cfg: &mut ModelConfig, c: &J, _: &Path) -> Result<(), ModelError> {
    gemma_hf(cfg, c, 6);
    let num = |k: &str| -> Option<f64> { c.get(k).and_then(J::as_f64) };
    cfg.attn_softcap = num("attn_logit_softcapping").map(|v| v as f32);
    cfg.final_softcap = num("final_logit_softcapping").map(|v| v as f32);
    Ok(())
}

/// What gemma 2 and 3 configs share: the sliding window, which layers use
/// it (`layer_types`, else one global layer in every `pattern`) and the
/// query scale.
pub(super) fn gemma_hf(cfg: &mut ModelConfig, c: &J, pattern: u64) {
    cfg.sliding_window = c.get("sliding_window").and_then(J::as_u64).map(|v| v as usize);
    cfg.layer_sliding = match c.get("layer_types").and_then(J::as_array) {
        Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
        None => {
            let pattern = c.get("sliding_window_pattern").and_then(J::as_u64).unwrap_or(pattern) as usize;
            (0..cfg.n_layer).map(|il| (il + 1) % pattern.max(1) != 0).collect()
        }
    };
    let scalar = c.get("query_pre_attn_scalar").and_then(J::as_f64).unwrap_or(cfg.head_dim as f64);
    cfg.attn_scale = (1.0 / scalar.sqrt()) as f32;
}
