//! The tensors each architecture needs, under their GGUF names, with the
//! shapes the configuration implies; the mapping to HuggingFace names; and
//! the validation that `plumb inspect` reports.

use crate::{Arch, ModelConfig, ModelSource};

/// One tensor the model needs.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    /// Row-major shape ([out, in] for matrices).
    pub shape: Vec<usize>,
}

/// Every tensor the forward pass reads, in load order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (d, q, kv, ff, hd) = (cfg.d, cfg.q_dim(), cfg.kv_dim(), cfg.ff, cfg.head_dim);
    let mut v = vec![TensorSpec { name: "token_embd.weight".into(), shape: vec![cfg.vocab, d] }];
    for l in 0..cfg.n_layer {
        let mut t = |n: &str, shape: Vec<usize>| v.push(TensorSpec { name: format!("blk.{l}.{n}"), shape });
        t("attn_norm.weight", vec![d]);
        t("attn_q.weight", vec![q, d]);
        t("attn_k.weight", vec![kv, d]);
        t("attn_v.weight", vec![kv, d]);
        if cfg.qkv_bias {
            t("attn_q.bias", vec![q]);
            t("attn_k.bias", vec![kv]);
            t("attn_v.bias", vec![kv]);
        }
        if cfg.qk_norm {
            t("attn_q_norm.weight", vec![hd]);
            t("attn_k_norm.weight", vec![hd]);
        }
        t("attn_output.weight", vec![d, q]);
        if cfg.post_norms {
            t("post_attention_norm.weight", vec![d]);
        }
        t("ffn_norm.weight", vec![d]);
        t("ffn_gate.weight", vec![ff, d]);
        t("ffn_up.weight", vec![ff, d]);
        t("ffn_down.weight", vec![d, ff]);
        if cfg.post_norms {
            t("post_ffw_norm.weight", vec![d]);
        }
    }
    v.push(TensorSpec { name: "output_norm.weight".into(), shape: vec![d] });
    if !cfg.tied_output {
        v.push(TensorSpec { name: "output.weight".into(), shape: vec![cfg.vocab, d] });
    }
    v
}

/// The HuggingFace name of a GGUF-named tensor (transformers' naming).
pub fn hf_name(arch: Arch, gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, stem) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let gemma = arch == Arch::Gemma3;
    let hf = match stem {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        // gemma's post_attention_layernorm follows attention; llama's is the
        // FFN input norm.
        "post_attention_norm.weight" if gemma => "post_attention_layernorm.weight",
        "ffn_norm.weight" if gemma => "pre_feedforward_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "post_ffw_norm.weight" if gemma => "post_feedforward_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// One finding of [`validate`].
#[derive(Debug, Clone)]
pub enum Problem {
    Missing { name: String, shape: Vec<usize> },
    Shape { name: String, expected: Vec<usize>, actual: Vec<usize> },
    NoDequantizer { name: String, ty: plumb_quant::GgmlType },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { name, shape } => {
                write!(f, "{name}: missing (expected shape {shape:?})")
            }
            Problem::Shape { name, expected, actual } => {
                write!(f, "{name}: shape {actual:?}, expected {expected:?}")
            }
            Problem::NoDequantizer { name, ty } => {
                write!(f, "{name}: type {ty} cannot be computed with yet")
            }
        }
    }
}

/// Checks that every tensor the architecture needs is present, with the
/// shape the configuration implies and a type plumb can compute with.
pub fn validate(src: &ModelSource, cfg: &ModelConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    for spec in expected_tensors(cfg) {
        match src.tensor(cfg.arch, &spec.name) {
            None => problems.push(Problem::Missing { name: spec.name, shape: spec.shape }),
            Some(t) if t.shape != spec.shape.as_slice() => problems.push(Problem::Shape {
                name: spec.name.clone(),
                expected: spec.shape,
                actual: t.shape.to_vec(),
            }),
            Some(t) if !t.ty.can_dequantize() => problems.push(Problem::NoDequantizer { name: spec.name, ty: t.ty }),
            Some(_) => {}
        }
    }
    problems
}
