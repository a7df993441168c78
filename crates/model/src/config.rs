//! Hyperparameters and architecture quirks, read once from GGUF metadata or
//! a HuggingFace `config.json` and settled into plain data.

use std::path::Path;

use plumb_formats::gguf::GgufFile;
use serde_json::Value as J;

use crate::{ModelError, ModelSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// From a GGUF `general.architecture` or an HF `model_type`.
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" | "gemma3_text" => Arch::Gemma3,
            _ => return None,
        })
    }
}

pub use plumb_kernels::ops::Activation;

/// Everything the forward pass needs to know about a model.
/// Dimension legend: d model width, H query heads, Hkv key/value heads,
/// hd head dim, ff FFN hidden width, V vocabulary.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub d: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub ff: usize,
    pub vocab: usize,
    pub ctx_len: usize,
    pub rms_eps: f32,
    /// Rotary base for full-attention layers.
    pub rope_theta: f32,
    /// Rotary base for sliding-window layers.
    pub rope_theta_local: f32,
    /// Sliding window width in tokens, for layers marked sliding.
    pub sliding_window: Option<usize>,
    /// Per layer: does it attend through the sliding window?
    pub layer_sliding: Vec<bool>,
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k (qwen3, gemma3).
    pub qk_norm: bool,
    /// Norms after attention and after the FFN (gemma2/3).
    pub post_norms: bool,
    /// Embedding rows are multiplied by this (gemma: sqrt(d)).
    pub embed_scale: f32,
    pub act: Activation,
    /// Multiplies Q·Kᵀ (usually 1/sqrt(hd); gemma: query_pre_attn_scalar^-½).
    pub attn_scale: f32,
    pub attn_softcap: Option<f32>,
    /// llama.cpp's graph multiplies the queries by `attn_scale` before
    /// Q·Kᵀ instead of the scores after (gemma3); the fast precision, which
    /// mirrors that graph, does the same.
    pub query_pre_scale: bool,
    pub final_softcap: Option<f32>,
    /// No separate output matrix: logits use the embedding.
    pub tied_output: bool,
    /// Norm weights are stored zero-centred and applied as (1 + w): HF gemma.
    /// GGUF gemma files already carry the +1.
    pub norm_plus_one: bool,
    /// llama-arch GGUF Q/K rows are permuted for interleaved rope; undone at load.
    pub unpermute_qk: bool,
}

fn bad(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::invalid(path, what)
}

impl ModelConfig {
    pub fn from_source(src: &ModelSource) -> Result<ModelConfig, ModelError> {
        let cfg = match src {
            ModelSource::Gguf(g) => Self::from_gguf(g)?,
            ModelSource::Hf(h) => Self::from_hf(&h.dir.join("config.json"), &h.config)?,
        };
        cfg.check(&src.path())?;
        Ok(cfg)
    }

    /// Sanity limits so that a hostile config cannot ask for absurd buffers.
    fn check(&self, path: &Path) -> Result<(), ModelError> {
        let dims = [
            ("layers", self.n_layer),
            ("embedding width", self.d),
            ("heads", self.n_head),
            ("kv heads", self.n_head_kv),
            ("head dim", self.head_dim),
            ("ffn width", self.ff),
            ("vocabulary", self.vocab),
        ];
        for (what, v) in dims {
            if v == 0 || v > 1 << 24 {
                return Err(bad(path, format!("{what} is {v}, outside 1..=16777216")));
            }
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(bad(path, format!("{} heads is not a multiple of {} kv heads", self.n_head, self.n_head_kv)));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(path, format!("head dim {} is odd; rotary embedding needs pairs", self.head_dim)));
        }
        if self.layer_sliding.len() != self.n_layer {
            return Err(bad(path, "sliding-window pattern length differs from the layer count"));
        }
        Ok(())
    }

    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
        let path = g.path();
        let arch_name = g.arch().ok_or_else(|| bad(path, "metadata general.architecture is missing"))?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| {
            bad(path, format!("architecture {arch_name:?} is not supported (llama, qwen2, qwen3, gemma3)"))
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize, ModelError> { Ok(g.u64(&key(k))? as usize) };
        let n_layer = req("block_count")?;
        let d = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = g.u64_opt(&key("attention.head_count_kv"))?.map(|v| v as usize).unwrap_or(n_head);
        let head_dim =
            g.u64_opt(&key("attention.key_length"))?.map(|v| v as usize).unwrap_or(d.checked_div(n_head).unwrap_or(0));
        let ff = req("feed_forward_length")?;
        let vocab = match g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(t) => t.len(),
            None => g
                .tensor_info("token_embd.weight")
                .map(|t| t.shape[0])
                .ok_or_else(|| bad(path, "no tokenizer.ggml.tokens and no token_embd.weight to size the vocabulary"))?,
        };
        let ctx_len = g.u64_opt(&key("context_length"))?.unwrap_or(2048) as usize;
        let rms_eps = g.f64_opt(&key("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6) as f32;
        let rope_theta = g.f64_opt(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let tied_output = g.tensor_info("output.weight").is_none();
        let mut cfg = ModelConfig {
            arch,
            n_layer,
            d,
            n_head,
            n_head_kv,
            head_dim,
            ff,
            vocab,
            ctx_len,
            rms_eps,
            rope_theta,
            rope_theta_local: rope_theta,
            sliding_window: None,
            layer_sliding: vec![false; n_layer],
            qkv_bias: arch == Arch::Qwen2,
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            post_norms: arch == Arch::Gemma3,
            embed_scale: 1.0,
            act: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            query_pre_scale: arch == Arch::Gemma3,
            final_softcap: None,
            tied_output,
            norm_plus_one: false,
            unpermute_qk: arch == Arch::Llama,
        };
        if arch == Arch::Gemma3 {
            cfg.act = Activation::GeluTanh;
            cfg.embed_scale = (d as f32).sqrt();
            cfg.sliding_window = g.u64_opt(&key("attention.sliding_window"))?.map(|v| v as usize);
            // llama.cpp's gemma3 defaults: local rope base 10000, every sixth
            // layer global; files may override both (plumb's writer does).
            cfg.rope_theta_local = g.f64_opt(&key("rope.local.freq_base"))?.unwrap_or(10000.0) as f32;
            cfg.layer_sliding = match g.get(&key("attention.sliding_window_pattern")) {
                Some(v) => {
                    let arr = v.as_array().ok_or_else(|| bad(path, "sliding_window_pattern is not an array"))?;
                    arr.iter()
                        .map(|b| b.as_bool().ok_or_else(|| bad(path, "sliding_window_pattern holds a non-bool")))
                        .collect::<Result<Vec<_>, _>>()?
                }
                None => (0..n_layer).map(|il| il % 6 != 5).collect(),
            };
            if cfg.sliding_window.is_none() {
                cfg.layer_sliding = vec![false; n_layer];
            }
            let scalar = g.f64_opt(&key("attention.query_pre_attn_scalar"))?.unwrap_or(head_dim as f64);
            cfg.attn_scale = (1.0 / scalar.sqrt()) as f32;
            cfg.attn_softcap = g.f64_opt(&key("attn_logit_softcapping"))?.map(|v| v as f32);
            cfg.final_softcap = g.f64_opt(&key("final_logit_softcapping"))?.map(|v| v as f32);
        }
        Ok(cfg)
    }

    pub fn from_hf(path: &Path, config: &J) -> Result<ModelConfig, ModelError> {
        // Multimodal gemma3 folders keep the text model under text_config.
        let c = match config.get("text_config") {
            Some(t) if t.is_object() => t,
            _ => config,
        };
        let model_type = c
            .get("model_type")
            .or_else(|| config.get("model_type"))
            .and_then(J::as_str)
            .ok_or_else(|| bad(path, "no model_type"))?;
        let arch = Arch::from_name(model_type).ok_or_else(|| {
            bad(path, format!("model_type {model_type:?} is not supported (llama, qwen2, qwen3, gemma3)"))
        })?;
        let num = |k: &str| -> Option<f64> { c.get(k).and_then(J::as_f64) };
        let req = |k: &str| -> Result<usize, ModelError> {
            c.get(k)
                .and_then(J::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| bad(path, format!("{k} is missing or not a non-negative integer")))
        };
        let n_layer = req("num_hidden_layers")?;
        let d = req("hidden_size")?;
        let n_head = req("num_attention_heads")?;
        let n_head_kv = c.get("num_key_value_heads").and_then(J::as_u64).map(|v| v as usize).unwrap_or(n_head);
        let head_dim = match c.get("head_dim").and_then(J::as_u64) {
            Some(h) => h as usize,
            None => d / n_head.max(1),
        };
        let ff = req("intermediate_size")?;
        let vocab = req("vocab_size")?;
        // transformers 5 moved rope settings into rope_parameters; older
        // configs keep rope_theta at the top level.
        let rope = c.get("rope_parameters");
        let theta_of = |p: Option<&J>| p.and_then(|p| p.get("rope_theta")).and_then(J::as_f64);
        let (rope_theta, rope_theta_local) = match rope {
            Some(r) if r.get("full_attention").is_some() => (
                theta_of(r.get("full_attention")).unwrap_or(10000.0),
                theta_of(r.get("sliding_attention")).unwrap_or(10000.0),
            ),
            Some(r) => {
                let t = theta_of(Some(r)).or(num("rope_theta")).unwrap_or(10000.0);
                (t, num("rope_local_base_freq").unwrap_or(t))
            }
            None => {
                let t = num("rope_theta").unwrap_or(10000.0);
                (t, num("rope_local_base_freq").unwrap_or(t))
            }
        };
        for r in [rope, c.get("rope_scaling")].into_iter().flatten() {
            let kinds: Vec<&J> = if r.get("full_attention").is_some() {
                r.as_object().map(|o| o.values().collect()).unwrap_or_default()
            } else {
                vec![r]
            };
            for k in kinds {
                let ty = k.get("rope_type").or_else(|| k.get("type")).and_then(J::as_str).unwrap_or("default");
                if ty != "default" {
                    return Err(bad(path, format!("rope scaling type {ty:?} is not supported yet")));
                }
            }
        }
        let tied_output = c
            .get("tie_word_embeddings")
            .or_else(|| config.get("tie_word_embeddings"))
            .and_then(J::as_bool)
            .unwrap_or(arch == Arch::Gemma3);
        let mut cfg = ModelConfig {
            arch,
            n_layer,
            d,
            n_head,
            n_head_kv,
            head_dim,
            ff,
            vocab,
            ctx_len: c.get("max_position_embeddings").and_then(J::as_u64).unwrap_or(2048) as usize,
            rms_eps: num("rms_norm_eps").unwrap_or(1e-6) as f32,
            rope_theta: rope_theta as f32,
            rope_theta_local: rope_theta_local as f32,
            sliding_window: None,
            layer_sliding: vec![false; n_layer],
            qkv_bias: arch == Arch::Qwen2 || c.get("attention_bias").and_then(J::as_bool).unwrap_or(false),
            qk_norm: matches!(arch, Arch::Qwen3 | Arch::Gemma3),
            post_norms: arch == Arch::Gemma3,
            embed_scale: 1.0,
            act: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            query_pre_scale: arch == Arch::Gemma3,
            final_softcap: None,
            tied_output,
            norm_plus_one: false,
            unpermute_qk: false,
        };
        if c.get("mlp_bias").and_then(J::as_bool).unwrap_or(false) {
            return Err(bad(path, "mlp_bias is not supported"));
        }
        if arch == Arch::Gemma3 {
            cfg.act = Activation::GeluTanh;
            cfg.embed_scale = (d as f32).sqrt();
            cfg.norm_plus_one = true;
            cfg.sliding_window = c.get("sliding_window").and_then(J::as_u64).map(|v| v as usize);
            cfg.layer_sliding = match c.get("layer_types").and_then(J::as_array) {
                Some(types) => types.iter().map(|t| t.as_str() == Some("sliding_attention")).collect(),
                None => {
                    let pattern = c.get("sliding_window_pattern").and_then(J::as_u64).unwrap_or(6) as usize;
                    (0..n_layer).map(|il| (il + 1) % pattern.max(1) != 0).collect()
                }
            };
            let scalar = num("query_pre_attn_scalar").unwrap_or(head_dim as f64);
            cfg.attn_scale = (1.0 / scalar.sqrt()) as f32;
            cfg.attn_softcap = num("attn_logit_softcapping").map(|v| v as f32);
            cfg.final_softcap = num("final_logit_softcapping").map(|v| v as f32);
        } else if let Some(w) = c.get("sliding_window").and_then(J::as_u64) {
            // qwen2/qwen3 configs carry a sliding_window that is only used
            // when use_sliding_window is set; llama/mistral use it directly.
            let used = match arch {
                Arch::Llama => true,
                _ => c.get("use_sliding_window").and_then(J::as_bool).unwrap_or(false),
            };
            if used {
                cfg.sliding_window = Some(w as usize);
                let max_window_layers = c.get("max_window_layers").and_then(J::as_u64).map(|v| v as usize);
                cfg.layer_sliding =
                    (0..n_layer).map(|il| max_window_layers.is_none_or(|m| il >= m) || arch == Arch::Llama).collect();
            }
        }
        Ok(cfg)
    }

    /// Query width H·hd.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Key/value width Hkv·hd.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}
