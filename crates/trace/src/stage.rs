//! Trace points: the named steps of the forward pass (docs/TRACE_FORMAT.md) and
//! the observer that the forward pass reports each of them to.
//!
//! Tracing only observes: the forward pass hands each finished buffer to
//! [`Observer::record`] and carries on. [`NoTrace`] does nothing and is what
//! plain inference uses.

/// A stage of the forward pass, in execution order within a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Embedding,
    AttnNorm,
    QProj,
    KProj,
    VProj,
    QNorm,
    KNorm,
    QRope,
    KRope,
    AttnScores,
    AttnProbs,
    AttnContext,
    AttnOut,
    AttnPostNorm,
    AttnResidual,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnAct,
    FfnMul,
    FfnDown,
    FfnPostNorm,
    LayerOut,
    FinalNorm,
    Logits,
}

impl Stage {
    pub const ALL: [Stage; 25] = {
        use Stage::*;
        [
            Embedding,
            AttnNorm,
            QProj,
            KProj,
            VProj,
            QNorm,
            KNorm,
            QRope,
            KRope,
            AttnScores,
            AttnProbs,
            AttnContext,
            AttnOut,
            AttnPostNorm,
            AttnResidual,
            FfnNorm,
            FfnGate,
            FfnUp,
            FfnAct,
            FfnMul,
            FfnDown,
            FfnPostNorm,
            LayerOut,
            FinalNorm,
            Logits,
        ]
    };

    /// The canonical name (docs/TRACE_FORMAT.md).
    pub fn name(self) -> &'static str {
        use Stage::*;
        match self {
            Embedding => "embedding",
            AttnNorm => "attn_norm",
            QProj => "q_proj",
            KProj => "k_proj",
            VProj => "v_proj",
            QNorm => "q_norm",
            KNorm => "k_norm",
            QRope => "q_rope",
            KRope => "k_rope",
            AttnScores => "attn_scores",
            AttnProbs => "attn_probs",
            AttnContext => "attn_context",
            AttnOut => "attn_out",
            AttnPostNorm => "attn_post_norm",
            AttnResidual => "attn_residual",
            FfnNorm => "ffn_norm",
            FfnGate => "ffn_gate",
            FfnUp => "ffn_up",
            FfnAct => "ffn_act",
            FfnMul => "ffn_mul",
            FfnDown => "ffn_down",
            FfnPostNorm => "ffn_post_norm",
            LayerOut => "layer_out",
            FinalNorm => "final_norm",
            Logits => "logits",
        }
    }

    /// Whether the stage sits inside a layer (`blk.L.<stage>`).
    pub fn is_per_layer(self) -> bool {
        !matches!(self, Stage::Embedding | Stage::FinalNorm | Stage::Logits)
    }

    /// The trace tensor name: `embedding`, `blk.3.ffn_mul`, `logits`.
    pub fn key(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) => format!("blk.{l}.{}", self.name()),
            None => self.name().to_string(),
        }
    }
}

/// Receives every finished stage of a forward pass.
pub trait Observer {
    /// Whether `record` would keep anything for this stage; lets the forward
    /// pass skip assembling buffers that exist only for the trace.
    fn wants(&self, layer: Option<usize>, stage: Stage) -> bool;
    /// `data` is row-major with `shape`.
    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]);
    /// Called once at the end of every forward step, so an observer can
    /// finish deferred work (the recorder computes its statistics here).
    fn step_done(&mut self) {}
    /// Called after `record` with the same buffer, which the observer may
    /// overwrite before the forward pass reads it again. Stage isolation
    /// replaces each stage's output with the reference's here, so every
    /// stage runs on the reference's inputs; observers that only watch
    /// leave this as it is.
    fn substitute(&mut self, _layer: Option<usize>, _stage: Stage, _data: &mut [f32], _shape: &[usize]) {}
}

/// The observer of plain inference: keeps nothing.
pub struct NoTrace;

impl Observer for NoTrace {
    #[inline]
    fn wants(&self, _: Option<usize>, _: Stage) -> bool {
        false
    }
    #[inline]
    fn record(&mut self, _: Option<usize>, _: Stage, _: &[f32], _: &[usize]) {}
}

impl Stage {
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// The axis that indexes tokens: 1 for [H, T, Tkv] attention matrices,
    /// 0 for everything else.
    pub fn token_axis(self) -> usize {
        match self {
            Stage::AttnScores | Stage::AttnProbs => 1,
            _ => 0,
        }
    }
}

/// Splits a trace key (`blk.3.ffn_mul`, `logits`) into its stage and layer.
pub fn parse_key(key: &str) -> Option<(Stage, Option<usize>)> {
    if let Some(rest) = key.strip_prefix("blk.") {
        let (l, name) = rest.split_once('.')?;
        let layer = l.parse().ok()?;
        let s = Stage::from_name(name)?;
        s.is_per_layer().then_some((s, Some(layer)))
    } else {
        let s = Stage::from_name(key)?;
        (!s.is_per_layer()).then_some((s, None))
    }
}

/// Execution order of trace keys: embedding, then layer by layer in stage
/// order, then final_norm and logits; unknown names last, by name.
pub fn order_key(key: &str) -> (u8, usize, usize, String) {
    match parse_key(key) {
        Some((Stage::Embedding, _)) => (0, 0, 0, String::new()),
        Some((s, Some(l))) => (1, l, s as usize, String::new()),
        Some((s, None)) => (2, 0, s as usize, String::new()),
        None => (3, 0, 0, key.to_string()),
    }
}

/// Names accepted on the command line for compatibility with an earlier
/// tool (docs/TRACE_FORMAT.md), mapped to canonical stage names.
pub fn resolve_alias(name: &str) -> Option<&'static [&'static str]> {
    Some(match name {
        "qkv_matmul" => &["q_proj", "k_proj", "v_proj"],
        "q_post_rope" => &["q_rope"],
        "k_post_rope" => &["k_rope"],
        "attn_softmax" => &["attn_probs"],
        "attention" => &["attn_context"],
        "ffn_silu" => &["ffn_act"],
        "ffn_swigl" | "ffn_swiglu" => &["ffn_mul"],
        "ffn_out" => &["ffn_down"],
        "post_ffn_residual" | "layer_output" => &["layer_out"],
        "post_attn_residual" => &["attn_residual"],
        "lm_head" => &["logits"],
        _ => return None,
    })
}
