//! Hyperparameters and architecture quirks, read once from GGUF metadata or
//! a HuggingFace `config.json` and settled into plain data.

use std::path::Path;

use plumb_formats::gguf::GgufFile;
use plumb_kernels::flash::F16Math;
use plumb_quant::GgmlType;
use serde_json::Value as J;

use crate::arch::ArchSpec;
use crate::{ModelError, ModelSource};

/// A model's architecture family: a handle on its spec (crate::arch).
#[derive(Clone, Copy)]
pub struct Arch(&'static ArchSpec);

impl Arch {
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// From a GGUF `general.architecture` or an HF `model_type`.
    pub fn from_name(name: &str) -> Option<Arch> {
        ArchSpec::find(name).map(Arch)
    }

    /// Everything the family declares.
    pub fn spec(self) -> &'static ArchSpec {
        self.0
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Arch) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Arch {}

impl std::fmt::Debug for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub use plumb_kernels::ops::{Activation, RopeScaling};

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
    /// How full-attention layers stretch their rotary frequencies.
    pub rope_scaling: RopeScaling,
    /// How sliding-window layers do (gemma: never; others: as the rest).
    pub rope_scaling_local: RopeScaling,
    /// Sliding window width in tokens, for layers marked sliding.
    pub sliding_window: Option<usize>,
    /// Per layer: does it attend through the sliding window?
    pub layer_sliding: Vec<bool>,
    pub qkv_bias: bool,
    /// Per-head RMSNorm on q and k (qwen3, gemma3).
    pub qk_norm: bool,
    /// Norms after attention and after the FFN (gemma2/3, olmo2).
    pub post_norms: bool,
    /// Norms before attention and before the FFN (all but olmo2).
    pub pre_norms: bool,
    /// The q/k norms span the whole projection, not each head (olmo2).
    pub qk_norm_whole: bool,
    /// q, k, v stored as one matrix, and gate and up (phi3).
    pub fused: bool,
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
    /// A mixture of experts in place of every layer's FFN.
    pub moe: Option<Moe>,
    /// How the KV cache keeps keys and values: a setting of the run (the
    /// commands' `--kv-type`), not of the file; F32 unless asked.
    pub kv_type: KvTypes,
    /// The fast precision's attention as llama.cpp's flash attention
    /// computes it (`--flash-attn on`): keys and values read as f16, one
    /// query row at a time with a running softmax
    /// ([`plumb_kernels::flash`]). A setting of the run; off unless asked.
    pub flash_attn: bool,
    /// The fast precision's matrix products as llama.cpp computes them on
    /// the weights it repacks (`--repack on`): see [`crate::Model::set_run_settings`].
    pub repack: bool,
    /// The sliding-window layers' cache as llama.cpp keeps it when it is
    /// not full-size (`--swa-full off`, llama-completion's default): cells
    /// for the window and a ubatch of this many rows, reused as a ring
    /// ([`crate::model::SwaRing`]). None: full-size, positions in order.
    pub swa_ring_ubatch: Option<usize>,
    /// Flash attention's f16 running context in f16 arithmetic, as
    /// llama.cpp built for a CPU with AVX512-FP16 computes it (`--f16-math
    /// native`, [`plumb_kernels::flash::F16Math`]). A setting of the run.
    pub f16_math: F16Math,
    /// A traced prompt computed in forward passes of at most this many
    /// rows, as llama.cpp's ubatches (`trace --ubatch`, bisect's
    /// `--a-ubatch`): [`crate::generate::Generator::prefill`] honours it.
    /// None: the whole prompt in one pass.
    pub ubatch: Option<usize>,
}

/// What a run sets that changes its arithmetic but not the model: the KV
/// cache's type, flash attention, repacked weights, llama-completion's
/// window-sized cache, the f16 arithmetic of the build mirrored and a
/// traced prompt's ubatches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunSettings {
    pub kv_type: KvTypes,
    pub flash_attn: bool,
    pub repack: bool,
    pub swa_ring_ubatch: Option<usize>,
    pub f16_math: F16Math,
    pub ubatch: Option<usize>,
}

impl ModelConfig {
    pub fn run_settings(&self) -> RunSettings {
        RunSettings {
            kv_type: self.kv_type,
            flash_attn: self.flash_attn,
            repack: self.repack,
            swa_ring_ubatch: self.swa_ring_ubatch,
            f16_math: self.f16_math,
            ubatch: self.ubatch,
        }
    }

    /// The settings as [`RunSettings`] holds them. Repacking also marks
    /// the weights: use [`crate::Model::set_run_settings`].
    pub(crate) fn set_run_settings(&mut self, r: RunSettings) {
        self.kv_type = r.kv_type;
        self.flash_attn = r.flash_attn;
        self.repack = r.repack;
        self.swa_ring_ubatch = r.swa_ring_ubatch;
        self.f16_math = r.f16_math;
        self.ubatch = r.ubatch;
    }
}

/// The KV cache's element type. F16 rounds every key and value to f16 as
/// it is stored (under flash attention kept as f16 bits, two bytes an
/// element; otherwise held in f32, so the kernels read them as f32);
/// the fast precision then also rounds what it multiplies them by, as
/// llama.cpp's `-ctk f16 -ctv f16` does. Q8_0 and Q4_0 quantize each block
/// of 32 as llama.cpp stores them (`-ctk q8_0 -ctv q8_0`): the cache keeps
/// the keys' blocks, which flash attention's scores read, and every key
/// and value as its block gives it back; like llama.cpp, they need flash
/// attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    #[default]
    F32,
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0];

    pub fn parse(s: &str) -> Option<KvType> {
        KvType::ALL.into_iter().find(|k| k.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }

    /// The block format of a quantized cache.
    pub fn block_type(self) -> Option<GgmlType> {
        match self {
            KvType::Q8_0 => Some(GgmlType::Q8_0),
            KvType::Q4_0 => Some(GgmlType::Q4_0),
            KvType::F32 | KvType::F16 => None,
        }
    }
}

/// The KV cache's types: the keys' and the values', which may differ
/// (llama.cpp's `-ctk` and `-ctv`; `--kv-type K,V`, or one type for both).
/// A quantized value cache needs flash attention, as llama.cpp's does;
/// under it a cache whose keys or values are quantized takes the one-row
/// path, the scores by the keys' type and the context by the values'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvTypes {
    pub k: KvType,
    pub v: KvType,
}

impl KvTypes {
    /// One type for keys and values.
    pub const fn both(t: KvType) -> KvTypes {
        KvTypes { k: t, v: t }
    }

    /// `T` (both) or `K,V`.
    pub fn parse(s: &str) -> Option<KvTypes> {
        match s.split_once(',') {
            Some((k, v)) => Some(KvTypes { k: KvType::parse(k)?, v: KvType::parse(v)? }),
            None => KvType::parse(s).map(KvTypes::both),
        }
    }

    /// As [`KvTypes::parse`] reads it: `f16` for both, `q8_0,f16` for
    /// keys and values that differ.
    pub fn name(self) -> String {
        if self.k == self.v {
            self.k.name().to_string()
        } else {
            format!("{},{}", self.k.name(), self.v.name())
        }
    }

    /// Whether keys or values are kept in a block format.
    pub fn any_quantized(self) -> bool {
        self.k.block_type().is_some() || self.v.block_type().is_some()
    }
}

impl From<KvType> for KvTypes {
    fn from(t: KvType) -> KvTypes {
        KvTypes::both(t)
    }
}

/// A mixture-of-experts FFN: a router picks `used` of `experts` FFNs for
/// each token by the softmax of its logits, and their outputs are summed
/// weighted by those probabilities (renormalized over the chosen where
/// `norm_weights`); a shared expert, gated by a sigmoid, adds to every
/// token's (qwen2moe).
#[derive(Debug, Clone, PartialEq)]
pub struct Moe {
    /// E: experts per layer.
    pub experts: usize,
    /// k: experts each token is sent to.
    pub used: usize,
    /// Each expert's FFN width.
    pub ff: usize,
    /// The shared expert's FFN width, where the model has one.
    pub shared_ff: Option<usize>,
    /// The k chosen probabilities are divided by their sum.
    pub norm_weights: bool,
}

/// The sizes every family's metadata gives.
struct Sizes {
    n_layer: usize,
    d: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    ff: usize,
    vocab: usize,
}

fn bad(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::invalid(path, what)
}

impl ModelConfig {
    pub fn from_source(src: &ModelSource) -> Result<ModelConfig, ModelError> {
        let cfg = match src {
            ModelSource::Gguf(g) => Self::from_gguf(g)?,
            ModelSource::Hf(h) => Self::from_hf(&h.dir.join("config.json"), &h.config)?,
            ModelSource::Apr(a) => Self::from_apr(a)?,
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
        if let Some(m) = &self.moe {
            for (what, v) in
                [("experts", m.experts), ("expert ffn width", m.ff), ("shared expert width", m.shared_ff.unwrap_or(1))]
            {
                if v == 0 || v > 1 << 24 {
                    return Err(bad(path, format!("{what} is {v}, outside 1..=16777216")));
                }
            }
            if m.used == 0 || m.used > m.experts {
                return Err(bad(path, format!("{} experts used per token of {}", m.used, m.experts)));
            }
        }
        Ok(())
    }

    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig, ModelError> {
        let path = g.path();
        let arch_name = g.arch().ok_or_else(|| bad(path, "metadata general.architecture is missing"))?;
        let arch = Arch::from_name(arch_name)
            .ok_or_else(|| bad(path, format!("architecture {arch_name:?} is not supported ({})", ArchSpec::known())))?;
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
        let rope_scaling = gguf_rope_scaling(g, &key, head_dim)?;
        if let Some(n) = g.u64_opt(&key("rope.dimension_count"))?.filter(|&n| n as usize != head_dim) {
            return Err(bad(
                path,
                format!("rotary embedding on {n} of each head's {head_dim} dims is not supported yet"),
            ));
        }
        let tied_output = g.tensor_info("output.weight").is_none();
        let sizes = Sizes { n_layer, d, n_head, n_head_kv, head_dim, ff, vocab };
        let mut cfg = ModelConfig::with_quirks(arch, sizes, ctx_len, rms_eps, (rope_theta, rope_theta), tied_output);
        cfg.unpermute_qk = arch.spec().quirks.gguf_qk_interleaved;
        cfg.moe = gguf_moe(g, &key, ff, arch.spec().quirks.moe_norm)?;
        cfg.set_rope_scaling(rope_scaling);
        (arch.spec().from_gguf)(&mut cfg, g, arch_name)?;
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
        let arch = Arch::from_name(model_type)
            .ok_or_else(|| bad(path, format!("model_type {model_type:?} is not supported ({})", ArchSpec::known())))?;
        let q = arch.spec().quirks;
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
        // The scaling of full-attention layers and of sliding ones: one
        // entry per layer kind (gemma3), else one for all (rope_parameters
        // in transformers 5, rope_scaling before).
        let (mut scaling, mut scaling_local) = (RopeScaling::None, None);
        for r in [rope, c.get("rope_scaling")].into_iter().flatten().filter(|r| !r.is_null()) {
            if let Some(full) = r.get("full_attention") {
                scaling = hf_rope_scaling(path, c, full, head_dim, rope_theta)?;
                let local = r.get("sliding_attention").unwrap_or(&J::Null);
                scaling_local = Some(hf_rope_scaling(path, c, local, head_dim, rope_theta_local)?);
            } else {
                scaling = hf_rope_scaling(path, c, r, head_dim, rope_theta)?;
            }
        }
        let tied_output = c
            .get("tie_word_embeddings")
            .or_else(|| config.get("tie_word_embeddings"))
            .and_then(J::as_bool)
            .unwrap_or(q.hf_tied_default);
        let ctx_len = c.get("max_position_embeddings").and_then(J::as_u64).unwrap_or(2048) as usize;
        let rms_eps = num("rms_norm_eps").unwrap_or(1e-6) as f32;
        let sizes = Sizes { n_layer, d, n_head, n_head_kv, head_dim, ff, vocab };
        let rope = (rope_theta as f32, rope_theta_local as f32);
        let mut cfg = ModelConfig::with_quirks(arch, sizes, ctx_len, rms_eps, rope, tied_output);
        cfg.qkv_bias |= c.get("attention_bias").and_then(J::as_bool).unwrap_or(false);
        cfg.norm_plus_one = q.hf_norm_plus_one;
        cfg.set_rope_scaling(scaling);
        if let Some(local) = scaling_local {
            cfg.rope_scaling_local = local;
        }
        if c.get("mlp_bias").and_then(J::as_bool).unwrap_or(false) {
            return Err(bad(path, "mlp_bias is not supported"));
        }
        cfg.moe = hf_moe(path, c, ff, q.moe_norm)?;
        (arch.spec().from_hf)(&mut cfg, c, path)?;
        Ok(cfg)
    }

    /// From an APR file's metadata: aprender writes HF's hyperparameter
    /// names (or their aliases), so they are read as a config.json is; the
    /// tensors of a file imported from GGUF are GGUF's bytes, so the
    /// GGUF-side conventions hold (llama's interleaved q/k rows, norm
    /// weights stored whole). APR metadata has no sliding window, softcap
    /// or rope scaling keys: families that need them take transformers'
    /// defaults, which `plumb inspect` shows.
    pub fn from_apr(a: &plumb_formats::apr::AprFile) -> Result<ModelConfig, ModelError> {
        let path = a.path();
        let meta = &a.header.metadata;
        let first = |keys: &[&str]| keys.iter().find_map(|k| meta.get(*k).filter(|v| !v.is_null())).cloned();
        let model_type = [meta.get("hf_model_type"), meta.get("model_type"), meta.get("architecture")]
            .into_iter()
            .flatten()
            .filter_map(J::as_str)
            .find(|n| Arch::from_name(n).is_some())
            .ok_or_else(|| {
                let named = first(&["model_type", "architecture"]).unwrap_or(J::Null);
                bad(path, format!("architecture {named} is not supported ({})", ArchSpec::known()))
            })?;
        let mut c = serde_json::Map::new();
        c.insert("model_type".into(), J::from(model_type));
        let fields: [(&str, &[&str]); 10] = [
            ("hidden_size", &["hidden_size", "hidden_dim", "d_model", "n_embd"]),
            ("num_hidden_layers", &["num_layers", "num_hidden_layers", "n_layers", "n_layer"]),
            ("num_attention_heads", &["num_heads", "num_attention_heads", "n_heads", "n_head"]),
            ("num_key_value_heads", &["num_kv_heads", "num_key_value_heads", "n_kv_heads"]),
            ("vocab_size", &["vocab_size", "n_vocab"]),
            ("intermediate_size", &["intermediate_size", "intermediate_dim", "ffn_dim", "n_inner"]),
            ("max_position_embeddings", &["max_position_embeddings", "max_seq_len", "context_length", "n_ctx"]),
            ("rms_norm_eps", &["rms_norm_eps", "layer_norm_eps", "norm_eps"]),
            ("rope_theta", &["rope_theta"]),
            ("head_dim", &["head_dim"]),
        ];
        const REQUIRED: [&str; 5] =
            ["hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size"];
        for (hf, aliases) in fields {
            match first(aliases) {
                Some(v) => {
                    c.insert(hf.into(), v);
                }
                None if REQUIRED.contains(&hf) => {
                    return Err(bad(
                        path,
                        format!("the metadata has no {} (nor {})", aliases[0], aliases[1..].join(", ")),
                    ))
                }
                None => {}
            }
        }
        let has = |n: &str| a.tensor(n).is_some();
        let output = has("output.weight") || has("lm_head.weight");
        c.insert("tie_word_embeddings".into(), J::Bool(!output));
        let mut cfg = Self::from_hf(path, &J::Object(c))?;
        let from_gguf = meta.get("original_format").and_then(J::as_str) == Some("gguf")
            || has("token_embd.weight")
            || a.header.ggml_ids;
        if from_gguf {
            cfg.unpermute_qk = cfg.arch.spec().quirks.gguf_qk_interleaved;
            cfg.norm_plus_one = false;
        }
        Ok(cfg)
    }

    /// A configuration with the family's fixed quirks and the common
    /// settings; the rotary bases are (full attention, sliding window).
    fn with_quirks(arch: Arch, s: Sizes, ctx_len: usize, rms_eps: f32, rope: (f32, f32), tied_output: bool) -> Self {
        let q = arch.spec().quirks;
        ModelConfig {
            arch,
            n_layer: s.n_layer,
            d: s.d,
            n_head: s.n_head,
            n_head_kv: s.n_head_kv,
            head_dim: s.head_dim,
            ff: s.ff,
            vocab: s.vocab,
            ctx_len,
            rms_eps,
            rope_theta: rope.0,
            rope_theta_local: rope.1,
            rope_scaling: RopeScaling::None,
            rope_scaling_local: RopeScaling::None,
            sliding_window: None,
            layer_sliding: vec![false; s.n_layer],
            qkv_bias: q.qkv_bias,
            qk_norm: q.qk_norm,
            post_norms: q.post_norms,
            pre_norms: q.pre_norms,
            qk_norm_whole: q.qk_norm_whole,
            fused: q.fused,
            embed_scale: if q.embed_scale_sqrt_d { (s.d as f32).sqrt() } else { 1.0 },
            act: q.act,
            attn_scale: 1.0 / (s.head_dim as f32).sqrt(),
            attn_softcap: None,
            query_pre_scale: q.query_pre_scale,
            final_softcap: None,
            tied_output,
            norm_plus_one: false,
            unpermute_qk: false,
            moe: None,
            kv_type: KvTypes::default(),
            flash_attn: false,
            repack: false,
            swa_ring_ubatch: None,
            ubatch: None,
            f16_math: F16Math::Widened,
        }
    }

    /// Full-attention layers scale their rotary frequencies by `scaling`;
    /// sliding-window layers too, except in families whose local layers
    /// keep the trained frequencies (gemma).
    fn set_rope_scaling(&mut self, scaling: RopeScaling) {
        if !self.arch.spec().quirks.local_rope_unscaled {
            self.rope_scaling_local = scaling.clone();
        }
        self.rope_scaling = scaling;
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

/// The GGUF keys every family reads (after the architecture prefix).
pub const GGUF_KEYS: &[&str] = &[
    "block_count",
    "embedding_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "feed_forward_length",
    "context_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scaling.original_context_length",
    "rope.scaling.yarn_ext_factor",
    "rope.scaling.attn_factor",
    "rope.scaling.yarn_log_multiplier",
    "rope.scaling.yarn_beta_fast",
    "rope.scaling.yarn_beta_slow",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
    "expert_shared_feed_forward_length",
    "expert_shared_count",
    "expert_weights_scale",
    "expert_gating_func",
    "leading_dense_block_count",
];

/// A GGUF file's mixture of experts: `expert_count` experts, of which
/// `expert_used_count` per token, each `expert_feed_forward_length` wide
/// (`ffn` where absent, as llama.cpp's llama reads mixtral), a shared
/// expert where `expert_shared_feed_forward_length` says so. Whether the
/// chosen weights are renormalized is the family's (`norm`: llama.cpp's
/// graphs fix it per architecture). Settings that change the arithmetic
/// in ways plumb does not compute are refused.
fn gguf_moe(g: &GgufFile, key: &dyn Fn(&str) -> String, ffn: usize, norm: bool) -> Result<Option<Moe>, ModelError> {
    let path = g.path();
    let Some(experts) = g.u64_opt(&key("expert_count"))?.filter(|&e| e > 0) else { return Ok(None) };
    let used =
        g.u64_opt(&key("expert_used_count"))?.ok_or_else(|| bad(path, "expert_count without expert_used_count"))?;
    if let Some(s) = g.f64_opt(&key("expert_weights_scale"))?.filter(|&s| s != 0.0 && s != 1.0) {
        return Err(bad(path, format!("expert weights scaled by {s} are not supported yet")));
    }
    if let Some(f) = g.u64_opt(&key("expert_gating_func"))?.filter(|&f| f != 1) {
        return Err(bad(path, format!("expert gating function {f} (not softmax) is not supported yet")));
    }
    if let Some(n) = g.u64_opt(&key("leading_dense_block_count"))?.filter(|&n| n > 0) {
        return Err(bad(path, format!("{n} leading dense layers before the experts are not supported yet")));
    }
    // A shared expert without its width is as wide as the dense FFN (llama.cpp).
    let shared_ff = match g.u64_opt(&key("expert_shared_feed_forward_length"))?.filter(|&n| n > 0) {
        Some(n) => Some(n as usize),
        None => g.tensor_info("blk.0.ffn_gate_inp_shexp.weight").map(|_| ffn),
    };
    if let Some(n) = g.u64_opt(&key("expert_shared_count"))?.filter(|&n| n > 1) {
        return Err(bad(path, format!("{n} shared experts are not supported yet")));
    }
    let ff = g.u64_opt(&key("expert_feed_forward_length"))?.filter(|&n| n > 0).map_or(ffn, |n| n as usize);
    Ok(Some(Moe { experts: experts as usize, used: used as usize, ff, shared_ff, norm_weights: norm }))
}

/// An HF config's mixture of experts: `num_local_experts` or `num_experts`,
/// `num_experts_per_tok`, each expert `moe_intermediate_size` wide
/// (mixtral: `intermediate_size`), a shared expert
/// `shared_expert_intermediate_size` wide, weights renormalized by
/// `norm_topk_prob` (mixtral has none and always does: `norm`, the
/// family's). Dense layers among sparse ones (`mlp_only_layers`,
/// `decoder_sparse_step`) are refused.
fn hf_moe(path: &Path, c: &J, ffn: usize, norm: bool) -> Result<Option<Moe>, ModelError> {
    let int = |k: &str| c.get(k).and_then(J::as_u64).map(|v| v as usize);
    let Some(experts) = int("num_local_experts").or(int("num_experts")).filter(|&e| e > 0) else { return Ok(None) };
    let used = int("num_experts_per_tok").ok_or_else(|| bad(path, "experts without num_experts_per_tok"))?;
    if c.get("mlp_only_layers").and_then(J::as_array).is_some_and(|a| !a.is_empty()) {
        return Err(bad(path, "mlp_only_layers (dense layers among the experts) is not supported yet"));
    }
    if int("decoder_sparse_step").is_some_and(|s| s != 1) {
        return Err(bad(
            path,
            "decoder_sparse_step other than 1 (dense layers among the experts) is not supported yet",
        ));
    }
    let ff = int("moe_intermediate_size").unwrap_or(ffn);
    let shared_ff = int("shared_expert_intermediate_size").filter(|&n| n > 0);
    let norm_weights = c.get("norm_topk_prob").and_then(J::as_bool).unwrap_or(norm);
    Ok(Some(Moe { experts, used, ff, shared_ff, norm_weights }))
}

/// GGUF keys that never change plumb's numbers: all of `general.*` (names,
/// licence, file type), `tokenizer.*` (the tokenizer's own, read there),
/// `quantize.*` (how a quantizer was run) and `split.*`; and, after the
/// architecture prefix, the vocabulary size (the tokenizer's is used), the
/// value width (checked through the tensor shapes) and the trained context
/// of scaling kinds plumb refuses anyway.
pub const GGUF_KEYS_IRRELEVANT: (&[&str], &[&str]) = (
    &["general.", "tokenizer.", "quantize.", "split."],
    &["vocab_size", "attention.value_length", "rope.scaling.finetuned"],
);

/// A GGUF file's rope scaling: `rope.scaling.type` none, linear (with
/// `rope.scaling.factor`) or yarn (and `original_context_length`, betas),
/// llama 3's per-pair factors in the `rope_freqs` tensor, and longrope's
/// two factor tensors. Kinds that change the arithmetic otherwise (yarn's
/// extra knobs, an attention factor on its own) are refused.
fn gguf_rope_scaling(g: &GgufFile, key: &dyn Fn(&str) -> String, hd: usize) -> Result<RopeScaling, ModelError> {
    let path = g.path();
    let kind = g.str_opt(&key("rope.scaling.type"))?.unwrap_or("none");
    let factor = g.f64_opt(&key("rope.scaling.factor"))?.filter(|&f| f != 0.0 && f != 1.0);
    let scaling = match (kind, factor) {
        ("none", None) | ("linear", None) => RopeScaling::None,
        ("linear", Some(f)) => RopeScaling::Linear { factor: f as f32 },
        ("yarn", Some(f)) => {
            let orig = g
                .u64_opt(&key("rope.scaling.original_context_length"))?
                .ok_or_else(|| bad(path, "yarn rope scaling without rope.scaling.original_context_length"))?;
            for (k, neutral) in [("rope.scaling.yarn_ext_factor", 1.0), ("rope.scaling.attn_factor", 1.0)] {
                if let Some(v) = g.f64_opt(&key(k))?.filter(|&v| v != neutral && v >= 0.0) {
                    return Err(bad(path, format!("yarn with {k} {v} is not supported yet")));
                }
            }
            if let Some(v) = g.f64_opt(&key("rope.scaling.yarn_log_multiplier"))?.filter(|&v| v != 0.0) {
                return Err(bad(path, format!("yarn with a log multiplier {v} is not supported yet")));
            }
            let beta = |k: &str, d: f64| -> Result<f32, ModelError> { Ok(g.f64_opt(&key(k))?.unwrap_or(d) as f32) };
            RopeScaling::Yarn {
                factor: f as f32,
                orig_ctx: orig as usize,
                beta_fast: beta("rope.scaling.yarn_beta_fast", 32.0)?,
                beta_slow: beta("rope.scaling.yarn_beta_slow", 1.0)?,
                attn_factor: (0.1 * f.ln() + 1.0) as f32,
            }
        }
        ("yarn", None) => return Err(bad(path, "yarn rope scaling without a factor")),
        ("none", Some(f)) => return Err(bad(path, format!("rope scaling factor {f} without a scaling type"))),
        (other, _) => return Err(bad(path, format!("rope scaling type {other:?} is not supported yet"))),
    };
    let attn_factor = g.f64_opt(&key("rope.scaling.attn_factor"))?.filter(|&v| v != 1.0);
    let [long, short] = LONGROPE_FACTORS.map(|n| g.tensor(n).map(|_| n));
    match (g.tensor(ROPE_FREQS), long.or(short)) {
        (Some(_), Some(n)) => Err(bad(path, format!("{ROPE_FREQS} together with {n}"))),
        (Some(_), None) if scaling != RopeScaling::None => {
            Err(bad(path, format!("{ROPE_FREQS} together with {kind} rope scaling")))
        }
        (None, Some(n)) if scaling != RopeScaling::None => {
            Err(bad(path, format!("{n} together with {kind} rope scaling")))
        }
        (None, Some(_)) => {
            let (Some(long), Some(short)) = (long, short) else {
                let [l, s] = LONGROPE_FACTORS;
                let (has, lacks) = if long.is_some() { (l, s) } else { (s, l) };
                return Err(bad(path, format!("{has} without {lacks}")));
            };
            let orig = g
                .u64_opt(&key("rope.scaling.original_context_length"))?
                .ok_or_else(|| bad(path, "longrope factors without rope.scaling.original_context_length"))?;
            Ok(RopeScaling::LongRope {
                short: rope_factors(g, short, hd)?,
                long: rope_factors(g, long, hd)?,
                orig_ctx: orig as usize,
                attn_factor: attn_factor.unwrap_or(1.0) as f32,
            })
        }
        _ if attn_factor.is_some() && !matches!(scaling, RopeScaling::Yarn { .. }) => Err(bad(
            path,
            format!("rope.scaling.attn_factor {} without longrope factors is not supported yet", attn_factor.unwrap()),
        )),
        (Some(_), None) => Ok(RopeScaling::PerPair { factors: rope_factors(g, ROPE_FREQS, hd)? }),
        (None, None) => Ok(scaling),
    }
}

/// A rope factor tensor's values: F32 [hd/2], each positive.
fn rope_factors(g: &GgufFile, name: &str, hd: usize) -> Result<Vec<f32>, ModelError> {
    let (path, t) = (g.path(), g.tensor(name).expect("present"));
    if t.ty != plumb_quant::GgmlType::F32 || t.shape != [hd / 2] {
        return Err(bad(path, format!("{name} is {} {:?}, expected F32 [{}]", t.ty, t.shape, hd / 2)));
    }
    let factors: Vec<f32> = t.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some(f) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
        return Err(bad(path, format!("{name} holds {f}, not a positive factor")));
    }
    Ok(factors)
}

/// The tensor of llama 3's per-pair rope factors in GGUF files.
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// LongRoPE's long and short factors in GGUF files (phi3's converter
/// writes them with `rope.scaling.attn_factor` and
/// `rope.scaling.original_context_length`, no scaling type).
pub const LONGROPE_FACTORS: [&str; 2] = ["rope_factors_long.weight", "rope_factors_short.weight"];

/// An HF rope settings entry's scaling (`rope_type` or the older `type`):
/// default, linear (`factor`), llama3 (`factor`, `low_freq_factor`,
/// `high_freq_factor`, `original_max_position_embeddings`) and yarn
/// (`factor`, `original_max_position_embeddings`, `beta_fast`, `beta_slow`,
/// `attention_factor`) and longrope (`short_factor`, `long_factor`, the
/// trained context from the entry or the config `c`, `attention_factor` or
/// the factor's); others refused.
fn hf_rope_scaling(path: &Path, c: &J, r: &J, hd: usize, theta: f64) -> Result<RopeScaling, ModelError> {
    let kind = r.get("rope_type").or_else(|| r.get("type")).and_then(J::as_str).unwrap_or("default");
    let num = |k: &str| -> Result<f64, ModelError> {
        r.get(k).and_then(J::as_f64).ok_or_else(|| bad(path, format!("{kind} rope scaling without {k}")))
    };
    let positive = |k: &str| -> Result<f64, ModelError> {
        let v = num(k)?;
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(bad(path, format!("rope scaling {k} is {v}, not positive")))
        }
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: positive("factor")? as f32 }),
        "llama3" => {
            let (factor, lo, hi) = (positive("factor")?, positive("low_freq_factor")?, positive("high_freq_factor")?);
            let old = positive("original_max_position_embeddings")?;
            if hi <= lo {
                return Err(bad(path, format!("llama3 rope scaling: high_freq_factor {hi} ≤ low_freq_factor {lo}")));
            }
            Ok(RopeScaling::PerPair { factors: llama3_factors(hd, theta, factor, lo, hi, old) })
        }
        "yarn" => {
            let factor = positive("factor")?;
            let orig = positive("original_max_position_embeddings")?;
            if r.get("truncate").and_then(J::as_bool) == Some(false) {
                return Err(bad(path, "yarn rope scaling without truncation is not supported yet"));
            }
            if r.get("mscale").is_some() || r.get("mscale_all_dim").is_some() {
                return Err(bad(path, "yarn rope scaling with mscale is not supported yet"));
            }
            let beta = |k: &str, d: f64| r.get(k).and_then(J::as_f64).unwrap_or(d) as f32;
            let attn = r.get("attention_factor").and_then(J::as_f64).unwrap_or(0.1 * factor.ln() + 1.0);
            Ok(RopeScaling::Yarn {
                factor: factor as f32,
                orig_ctx: orig as usize,
                beta_fast: beta("beta_fast", 32.0),
                beta_slow: beta("beta_slow", 1.0),
                attn_factor: attn as f32,
            })
        }
        "longrope" | "su" => {
            let factors = |k: &str| -> Result<Vec<f32>, ModelError> {
                let v: Option<Vec<f64>> =
                    r.get(k).and_then(J::as_array).and_then(|a| a.iter().map(J::as_f64).collect());
                match v {
                    Some(v) if v.len() == hd / 2 && v.iter().all(|f| f.is_finite() && *f > 0.0) => {
                        Ok(v.into_iter().map(|f| f as f32).collect())
                    }
                    _ => Err(bad(path, format!("longrope {k} is not {} positive numbers", hd / 2))),
                }
            };
            let orig = r
                .get("original_max_position_embeddings")
                .or_else(|| c.get("original_max_position_embeddings"))
                .and_then(J::as_u64)
                .filter(|&o| o > 1)
                .ok_or_else(|| bad(path, "longrope rope scaling without original_max_position_embeddings"))?;
            // transformers: the factor is the context's stretch unless given;
            // the attention factor √(1 + ln factor / ln trained) unless given.
            let ctx = c.get("max_position_embeddings").and_then(J::as_f64).unwrap_or(orig as f64);
            let factor = r.get("factor").and_then(J::as_f64).unwrap_or(ctx / orig as f64);
            let attn = match r.get("attention_factor").and_then(J::as_f64) {
                Some(a) => a,
                None if factor <= 1.0 => 1.0,
                None => (1.0 + factor.ln() / (orig as f64).ln()).sqrt(),
            };
            Ok(RopeScaling::LongRope {
                short: factors("short_factor")?,
                long: factors("long_factor")?,
                orig_ctx: orig as usize,
                attn_factor: attn as f32,
            })
        }
        other => Err(bad(path, format!("rope scaling type {other:?} is not supported yet"))),
    }
}

/// Llama 3's divisor of each rotary pair's frequency: 1 where the
/// wavelength is under old/high, `factor` over old/low, a blend between
/// (the numbers llama.cpp's converter writes to `rope_freqs`).
pub fn llama3_factors(hd: usize, theta: f64, factor: f64, lo: f64, hi: f64, old: f64) -> Vec<f32> {
    (0..hd / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / hd as f32);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            let f = if wavelen < old / hi {
                1.0
            } else if wavelen > old / lo {
                factor
            } else {
                let smooth = (old / wavelen - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}
