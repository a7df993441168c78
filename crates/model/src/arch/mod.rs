//! Architecture families, one file each: the names a family answers to, the
//! tensors it stores and what HuggingFace calls them, its fixed quirks, and
//! the metadata only it has. Configuration parsing (crate::config),
//! validation and naming (crate::weights) and loading (crate::model) are
//! derived from these specs and never ask which family they read.
//!
//! Adding a family: a file here with its `SPEC`, one line in [`FAMILIES`],
//! and a tiny model of it under testdata/tiny with its transformers golden.

use std::path::Path;

use plumb_formats::gguf::GgufFile;
use serde_json::Value as J;

use crate::config::{Activation, ModelConfig};
use crate::ModelError;

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod olmo2;
pub mod phi3;
pub mod qwen2;
pub mod qwen2moe;
pub mod qwen3;
pub mod qwen3moe;

/// Every family plumb runs; the first whose names match a file wins.
pub static FAMILIES: &[&ArchSpec] = &[
    &llama::SPEC,
    &qwen2::SPEC,
    &qwen3::SPEC,
    &gemma2::SPEC,
    &gemma3::SPEC,
    &olmo2::SPEC,
    &phi3::SPEC,
    &qwen2moe::SPEC,
    &qwen3moe::SPEC,
];

/// One architecture family.
pub struct ArchSpec {
    /// The canonical name (GGUF's `general.architecture`).
    pub name: &'static str,
    /// Every name it answers to: GGUF architectures and HF `model_type`s.
    pub names: &'static [&'static str],
    pub quirks: Quirks,
    /// HF names of the layer tensors whose names differ from the defaults
    /// in [`LAYER_TENSORS`], by role (`{e}` stands for an expert's number).
    pub hf_renames: &'static [(Role, &'static str)],
    /// The GGUF keys (after the architecture prefix) that `from_gguf` reads.
    pub gguf_keys: &'static [&'static str],
    /// Reads what only this family's GGUF metadata holds (`prefix` is the
    /// file's architecture name, the key prefix), after the common keys.
    pub from_gguf: fn(&mut ModelConfig, &GgufFile, prefix: &str) -> Result<(), ModelError>,
    /// Reads what only this family's HF `config.json` holds (`c` is the text
    /// model's config), after the common keys.
    pub from_hf: fn(&mut ModelConfig, c: &J, path: &Path) -> Result<(), ModelError>,
}

/// A family's fixed quirks: data the forward pass reads, settled at load.
#[derive(Debug, Clone, Copy)]
pub struct Quirks {
    /// Biases on q, k and v (qwen2).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k (qwen3, gemma3).
    pub qk_norm: bool,
    /// Norms after attention and after the FFN (gemma, olmo2).
    pub post_norms: bool,
    /// Norms before attention and before the FFN (all but olmo2).
    pub pre_norms: bool,
    /// The q/k norms span each token's whole projection rather than each
    /// head (olmo2).
    pub qk_norm_whole: bool,
    /// q, k and v are one stored matrix, and so are the FFN's gate and up
    /// (phi3); split by rows at load.
    pub fused: bool,
    pub act: Activation,
    /// Embeddings are multiplied by √d (gemma).
    pub embed_scale_sqrt_d: bool,
    /// llama.cpp's graph scales queries before Q·Kᵀ (gemma3).
    pub query_pre_scale: bool,
    /// HF stores norm weights zero-centred, applied as 1 + w (gemma; its
    /// GGUF files already carry the +1).
    pub hf_norm_plus_one: bool,
    /// GGUF q/k rows are interleaved for llama.cpp's rotary layout (the
    /// converter permutes llama's); undone at load.
    pub gguf_qk_interleaved: bool,
    /// Whether an HF config without `tie_word_embeddings` ties the output.
    pub hf_tied_default: bool,
    /// Sliding-window layers keep the trained rotary frequencies when the
    /// model scales them (gemma: only global layers are stretched).
    pub local_rope_unscaled: bool,
    /// Experts' weights are renormalized over the chosen: what llama.cpp's
    /// graph of the family does whatever a GGUF says, and what an HF config
    /// without `norm_topk_prob` means (mixtral, qwen3moe; not qwen2moe).
    pub moe_norm: bool,
}

/// The quirks of the llama family, which the others start from.
pub const PLAIN: Quirks = Quirks {
    qkv_bias: false,
    qk_norm: false,
    post_norms: false,
    pre_norms: true,
    qk_norm_whole: false,
    fused: false,
    act: Activation::Silu,
    embed_scale_sqrt_d: false,
    query_pre_scale: false,
    hf_norm_plus_one: false,
    gguf_qk_interleaved: false,
    hf_tied_default: false,
    local_rope_unscaled: false,
    moe_norm: true,
};

/// What a layer tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    AttnNorm,
    Wq,
    Wk,
    Wv,
    /// q, k and v in one matrix (phi3).
    Wqkv,
    Bq,
    Bk,
    Bv,
    QNorm,
    KNorm,
    Wo,
    AttnPostNorm,
    FfnNorm,
    WGate,
    WUp,
    WDown,
    FfnPostNorm,
    /// Mixture of experts: the router [E, d].
    Router,
    /// Every expert's gate, up and down, stacked [E, rows, cols].
    ExpGate,
    ExpUp,
    ExpDown,
    /// The shared expert's sigmoid gate [1, d], and its FFN (qwen2moe).
    SharedGateInp,
    SharedGate,
    SharedUp,
    SharedDown,
}

/// When a layer tensor is present.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Always,
    QkvBias,
    QkNorm,
    PostNorms,
    PreNorms,
    /// In families that store q, k, v (and gate, up) apart.
    Unfused,
    /// In families that store them together.
    Fused,
    /// In a dense FFN (no experts).
    Dense,
    /// In a dense FFN of a family that stores gate and up apart.
    DenseUnfused,
    /// With experts.
    Moe,
    /// With experts and a shared expert.
    Shared,
}

/// The shape of a layer tensor, in the configuration's dimensions.
#[derive(Debug, Clone, Copy)]
pub enum Dims {
    /// [d]
    D,
    /// [hd] per head, or the projection's width [H·hd] (`Q`) or
    /// [Hkv·hd] (`Kv`) where the family norms whole rows.
    Norm(Dim),
    /// [H·hd]
    Q,
    /// [Hkv·hd]
    Kv,
    /// [rows, cols]
    Matrix(Dim, Dim),
    /// [E, rows, cols]: one matrix per expert.
    Experts(Dim, Dim),
}

#[derive(Debug, Clone, Copy)]
pub enum Dim {
    D,
    Q,
    Kv,
    Ff,
    /// q, k and v stacked: H·hd + 2·Hkv·hd.
    Qkv,
    /// The up projection: ff, or 2·ff where gate and up are one matrix.
    Up,
    /// E, the experts.
    E,
    /// Each expert's FFN width.
    ExpFf,
    /// The shared expert's FFN width.
    SharedFf,
    /// 1.
    One,
}

/// One tensor of every layer.
pub struct LayerTensor {
    pub role: Role,
    /// The GGUF name after `blk.L.` (the same in every family).
    pub gguf: &'static str,
    /// The HF name after `model.layers.L.`, unless the family renames it.
    pub hf: &'static str,
    pub dims: Dims,
    pub when: When,
    /// A norm weight (stored zero-centred where the family's HF files do so).
    pub is_norm: bool,
}

const fn t(role: Role, gguf: &'static str, hf: &'static str, dims: Dims, when: When, is_norm: bool) -> LayerTensor {
    LayerTensor { role, gguf, hf, dims, when, is_norm }
}

/// The tensors of a layer, in load order.
pub static LAYER_TENSORS: &[LayerTensor] = {
    use Dim as M;
    use Dims::*;
    use Role::*;
    use When::*;
    &[
        t(AttnNorm, "attn_norm.weight", "input_layernorm.weight", D, PreNorms, true),
        t(Wq, "attn_q.weight", "self_attn.q_proj.weight", Matrix(M::Q, M::D), Unfused, false),
        t(Wk, "attn_k.weight", "self_attn.k_proj.weight", Matrix(M::Kv, M::D), Unfused, false),
        t(Wv, "attn_v.weight", "self_attn.v_proj.weight", Matrix(M::Kv, M::D), Unfused, false),
        t(Wqkv, "attn_qkv.weight", "self_attn.qkv_proj.weight", Matrix(M::Qkv, M::D), Fused, false),
        t(Bq, "attn_q.bias", "self_attn.q_proj.bias", Q, QkvBias, false),
        t(Bk, "attn_k.bias", "self_attn.k_proj.bias", Kv, QkvBias, false),
        t(Bv, "attn_v.bias", "self_attn.v_proj.bias", Kv, QkvBias, false),
        t(QNorm, "attn_q_norm.weight", "self_attn.q_norm.weight", Norm(M::Q), QkNorm, true),
        t(KNorm, "attn_k_norm.weight", "self_attn.k_norm.weight", Norm(M::Kv), QkNorm, true),
        t(Wo, "attn_output.weight", "self_attn.o_proj.weight", Matrix(M::D, M::Q), Always, false),
        t(AttnPostNorm, "post_attention_norm.weight", "post_attention_layernorm.weight", D, PostNorms, true),
        t(FfnNorm, "ffn_norm.weight", "post_attention_layernorm.weight", D, PreNorms, true),
        t(WGate, "ffn_gate.weight", "mlp.gate_proj.weight", Matrix(M::Ff, M::D), DenseUnfused, false),
        t(WUp, "ffn_up.weight", "mlp.up_proj.weight", Matrix(M::Up, M::D), Dense, false),
        t(WDown, "ffn_down.weight", "mlp.down_proj.weight", Matrix(M::D, M::Ff), Dense, false),
        t(Router, "ffn_gate_inp.weight", "mlp.gate.weight", Matrix(M::E, M::D), Moe, false),
        t(ExpGate, "ffn_gate_exps.weight", "mlp.experts.{e}.gate_proj.weight", Experts(M::ExpFf, M::D), Moe, false),
        t(ExpUp, "ffn_up_exps.weight", "mlp.experts.{e}.up_proj.weight", Experts(M::ExpFf, M::D), Moe, false),
        t(ExpDown, "ffn_down_exps.weight", "mlp.experts.{e}.down_proj.weight", Experts(M::D, M::ExpFf), Moe, false),
        t(
            SharedGateInp,
            "ffn_gate_inp_shexp.weight",
            "mlp.shared_expert_gate.weight",
            Matrix(M::One, M::D),
            Shared,
            false,
        ),
        t(
            SharedGate,
            "ffn_gate_shexp.weight",
            "mlp.shared_expert.gate_proj.weight",
            Matrix(M::SharedFf, M::D),
            Shared,
            false,
        ),
        t(
            SharedUp,
            "ffn_up_shexp.weight",
            "mlp.shared_expert.up_proj.weight",
            Matrix(M::SharedFf, M::D),
            Shared,
            false,
        ),
        t(
            SharedDown,
            "ffn_down_shexp.weight",
            "mlp.shared_expert.down_proj.weight",
            Matrix(M::D, M::SharedFf),
            Shared,
            false,
        ),
        t(FfnPostNorm, "post_ffw_norm.weight", "post_feedforward_layernorm.weight", D, PostNorms, true),
    ]
};

/// The tensors outside the layers: (GGUF name, HF name).
pub const EMBEDDING: (&str, &str) = ("token_embd.weight", "model.embed_tokens.weight");
pub const OUTPUT_NORM: (&str, &str) = ("output_norm.weight", "model.norm.weight");
pub const OUTPUT: (&str, &str) = ("output.weight", "lm_head.weight");

impl LayerTensor {
    /// The entry of `role`.
    pub fn of(role: Role) -> &'static LayerTensor {
        LAYER_TENSORS.iter().find(|t| t.role == role).expect("every role has an entry")
    }

    /// Whether a model with `cfg` has this tensor.
    pub fn present(&self, cfg: &ModelConfig) -> bool {
        match self.when {
            When::Always => true,
            When::QkvBias => cfg.qkv_bias,
            When::QkNorm => cfg.qk_norm,
            When::PostNorms => cfg.post_norms,
            When::PreNorms => cfg.pre_norms,
            When::Unfused => !cfg.fused,
            When::Fused => cfg.fused,
            When::Dense => cfg.moe.is_none(),
            When::DenseUnfused => cfg.moe.is_none() && !cfg.fused,
            When::Moe => cfg.moe.is_some(),
            When::Shared => cfg.moe.as_ref().is_some_and(|m| m.shared_ff.is_some()),
        }
    }

    /// Its shape under `cfg`.
    pub fn shape(&self, cfg: &ModelConfig) -> Vec<usize> {
        let dim = |m: Dim| match m {
            Dim::D => cfg.d,
            Dim::Q => cfg.q_dim(),
            Dim::Kv => cfg.kv_dim(),
            Dim::Ff => cfg.ff,
            Dim::Qkv => cfg.q_dim() + 2 * cfg.kv_dim(),
            Dim::Up => {
                if cfg.fused {
                    2 * cfg.ff
                } else {
                    cfg.ff
                }
            }
            Dim::E => cfg.moe.as_ref().map_or(0, |m| m.experts),
            Dim::ExpFf => cfg.moe.as_ref().map_or(0, |m| m.ff),
            Dim::SharedFf => cfg.moe.as_ref().and_then(|m| m.shared_ff).unwrap_or(0),
            Dim::One => 1,
        };
        match self.dims {
            Dims::D => vec![cfg.d],
            Dims::Norm(m) => vec![if cfg.qk_norm_whole { dim(m) } else { cfg.head_dim }],
            Dims::Q => vec![cfg.q_dim()],
            Dims::Kv => vec![cfg.kv_dim()],
            Dims::Matrix(r, c) => vec![dim(r), dim(c)],
            Dims::Experts(r, c) => vec![dim(Dim::E), dim(r), dim(c)],
        }
    }

    /// Whether it holds one matrix per expert.
    pub fn is_stack(&self) -> bool {
        matches!(self.dims, Dims::Experts(..))
    }

    /// `blk.L.<gguf>`.
    pub fn gguf_name(&self, layer: usize) -> String {
        format!("blk.{layer}.{}", self.gguf)
    }
}

impl ArchSpec {
    /// The family a GGUF architecture or HF model_type names.
    pub fn find(name: &str) -> Option<&'static ArchSpec> {
        FAMILIES.iter().copied().find(|f| f.names.contains(&name))
    }

    /// "llama, qwen2, …": what an error about an unknown family lists.
    pub fn known() -> String {
        FAMILIES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
    }

    /// The HF name of a GGUF-named tensor (transformers' naming).
    pub fn hf_name(&self, gguf: &str) -> Option<String> {
        for (g, h) in [EMBEDDING, OUTPUT_NORM, OUTPUT] {
            if gguf == g {
                return Some(h.into());
            }
        }
        let (layer, stem) = gguf.strip_prefix("blk.")?.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let t = LAYER_TENSORS.iter().find(|t| t.gguf == stem)?;
        if !self.has_role(t.role) {
            return None;
        }
        let hf = self.hf_renames.iter().find(|(r, _)| *r == t.role).map_or(t.hf, |(_, h)| h);
        Some(format!("model.layers.{layer}.{hf}"))
    }

    /// The HF names of a GGUF-named tensor: one, or, for a stack of experts
    /// (which HF folders keep one tensor per expert), `experts` of them.
    pub fn hf_names(&self, gguf: &str, experts: usize) -> Vec<String> {
        match self.hf_name(gguf) {
            Some(n) if n.contains("{e}") => (0..experts).map(|e| n.replace("{e}", &e.to_string())).collect(),
            Some(n) => vec![n],
            None => Vec::new(),
        }
    }

    /// Whether the family can hold a tensor of `role` at all (whatever a
    /// given model's flags say).
    fn has_role(&self, role: Role) -> bool {
        match LayerTensor::of(role).when {
            When::Always => true,
            // qwen2 always has biases; llama may, by `attention_bias`.
            When::QkvBias => true,
            When::QkNorm => self.quirks.qk_norm,
            When::PostNorms => self.quirks.post_norms,
            When::PreNorms => self.quirks.pre_norms,
            When::Unfused => !self.quirks.fused,
            When::Fused => self.quirks.fused,
            When::Dense | When::Moe | When::Shared => true,
            When::DenseUnfused => !self.quirks.fused,
        }
    }
}

/// A configuration error about the file at `path`.
pub(crate) fn bad(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::invalid(path, what)
}

/// The HF `sliding_window` of families that take it literally on every
/// layer (`always`: llama, mistral) or only with `use_sliding_window`, from
/// layer `max_window_layers` on (qwen).
pub(crate) fn hf_sliding_window(cfg: &mut ModelConfig, c: &J, always: bool) {
    let Some(w) = c.get("sliding_window").and_then(J::as_u64) else { return };
    let used = always || c.get("use_sliding_window").and_then(J::as_bool).unwrap_or(false);
    if used {
        cfg.sliding_window = Some(w as usize);
        let max_window_layers = c.get("max_window_layers").and_then(J::as_u64).map(|v| v as usize);
        cfg.layer_sliding = (0..cfg.n_layer).map(|il| max_window_layers.is_none_or(|m| il >= m) || always).collect();
    }
}

/// Nothing beyond the common keys.
pub(crate) fn no_gguf_extras(_: &mut ModelConfig, _: &GgufFile, _: &str) -> Result<(), ModelError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_finds_its_own_family_and_no_other() {
        let mut seen = std::collections::HashSet::new();
        for f in FAMILIES {
            assert!(f.names.contains(&f.name), "{} does not answer to its own name", f.name);
            for n in f.names {
                assert!(seen.insert(*n), "{n} names two families");
                assert_eq!(ArchSpec::find(n).map(|s| s.name), Some(f.name));
            }
        }
        assert!(ArchSpec::find("gpt2").is_none());
    }

    #[test]
    fn hf_names_follow_each_familys_renames() {
        let (llama, gemma) = (ArchSpec::find("llama").unwrap(), ArchSpec::find("gemma3").unwrap());
        assert_eq!(llama.hf_name("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.post_attention_layernorm.weight");
        assert_eq!(gemma.hf_name("blk.3.ffn_norm.weight").unwrap(), "model.layers.3.pre_feedforward_layernorm.weight");
        assert_eq!(
            gemma.hf_name("blk.0.post_attention_norm.weight").unwrap(),
            "model.layers.0.post_attention_layernorm.weight"
        );
        // A family without post-norms has no such tensor to name.
        assert!(llama.hf_name("blk.0.post_attention_norm.weight").is_none());
        assert_eq!(llama.hf_name("token_embd.weight").unwrap(), "model.embed_tokens.weight");
        assert!(llama.hf_name("blk.x.attn_q.weight").is_none());
        assert!(llama.hf_name("blk.0.no_such.weight").is_none());
    }

    #[test]
    fn the_layer_table_has_one_entry_per_role_and_distinct_names() {
        let gguf: std::collections::HashSet<_> = LAYER_TENSORS.iter().map(|t| t.gguf).collect();
        assert_eq!(gguf.len(), LAYER_TENSORS.len());
        for t in LAYER_TENSORS {
            assert_eq!(LayerTensor::of(t.role).gguf, t.gguf, "{:?} has two entries", t.role);
        }
    }
}
