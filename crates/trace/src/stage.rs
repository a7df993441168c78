//! Trace points: the named steps of the forward pass (docs/TRACE_FORMAT.md) and
//! the observer that the forward pass reports each of them to.
//!
//! Tracing only observes: the forward pass hands each finished buffer to
//! [`Observer::record`] and carries on. [`NoTrace`] does nothing and is what
//! plain inference uses.

/// What a stage reads, as the diff tools walk the dataflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The first of these stages of the same layer that the trace holds
    /// (later ones stand in when an architecture lacks the earlier: `q_rope`
    /// reads `q_norm`, or `q_proj` where there is no q norm).
    FirstOf(&'static [Stage]),
    /// The layer's input: the previous layer's `layer_out`, or `embedding`
    /// in layer 0.
    LayerIn,
}

/// Declares the stages once: the enum, [`Stage::ALL`] in execution order,
/// and each stage's name, scope, token axis and inputs are all made from
/// this one table, which docs/TRACE_FORMAT.md is checked against.
macro_rules! stage_table {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $scope:ident, token axis $axis:literal,
        reads [$($input:expr),*]; )*) => {
        /// A stage of the forward pass, in execution order within a layer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Stage {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Stage {
            /// Every stage, in execution order.
            pub const ALL: [Stage; [$(Stage::$variant),*].len()] = [$(Stage::$variant),*];

            /// The canonical name (docs/TRACE_FORMAT.md).
            pub fn name(self) -> &'static str {
                match self { $( Stage::$variant => $name, )* }
            }

            /// Whether the stage sits inside a layer (`blk.L.<stage>`).
            pub fn is_per_layer(self) -> bool {
                match self { $( Stage::$variant => stage_table!(@per_layer $scope), )* }
            }

            /// The axis that indexes tokens: 1 for [H, T, Tkv] attention
            /// matrices, 0 for everything else.
            pub fn token_axis(self) -> usize {
                match self { $( Stage::$variant => $axis, )* }
            }

            /// The stages this one reads.
            pub fn inputs(self) -> &'static [Input] {
                use Stage::*;
                match self { $( $variant => &[$($input),*], )* }
            }
        }
    };
    (@per_layer layer) => { true };
    (@per_layer global) => { false };
}

use Input::{FirstOf, LayerIn};

stage_table! {
    /// Token embeddings after any input scaling, [T, d].
    Embedding = "embedding", global, token axis 0, reads [];
    /// The attention input norm, [T, d].
    AttnNorm = "attn_norm", layer, token axis 0, reads [LayerIn];
    /// xn·Wqᵀ (+ bias), [T, H·hd].
    QProj = "q_proj", layer, token axis 0, reads [FirstOf(&[AttnNorm])];
    /// xn·Wkᵀ (+ bias), [T, Hkv·hd].
    KProj = "k_proj", layer, token axis 0, reads [FirstOf(&[AttnNorm])];
    /// xn·Wvᵀ (+ bias), [T, Hkv·hd].
    VProj = "v_proj", layer, token axis 0, reads [FirstOf(&[AttnNorm])];
    /// Per-head norm of q.
    QNorm = "q_norm", layer, token axis 0, reads [FirstOf(&[QProj])];
    /// Per-head norm of k.
    KNorm = "k_norm", layer, token axis 0, reads [FirstOf(&[KProj])];
    /// q after the rotary embedding.
    QRope = "q_rope", layer, token axis 0, reads [FirstOf(&[QNorm, QProj])];
    /// k after the rotary embedding.
    KRope = "k_rope", layer, token axis 0, reads [FirstOf(&[KNorm, KProj])];
    /// q·kᵀ · scale (softcapped), before the mask, [H, T, Tkv].
    AttnScores = "attn_scores", layer, token axis 1, reads [FirstOf(&[QRope]), FirstOf(&[KRope])];
    /// softmax of the masked scores, [H, T, Tkv].
    AttnProbs = "attn_probs", layer, token axis 1, reads [FirstOf(&[AttnScores])];
    /// probabilities · v, [T, H·hd]; under flash attention, where there
    /// are no probabilities, the fused operation of q, k and v.
    AttnContext = "attn_context", layer, token axis 0,
        reads [FirstOf(&[AttnProbs, QRope]), FirstOf(&[AttnProbs, KRope]), FirstOf(&[VProj])];
    /// ctx·Woᵀ, [T, d].
    AttnOut = "attn_out", layer, token axis 0, reads [FirstOf(&[AttnContext])];
    /// The norm after attention, [T, d].
    AttnPostNorm = "attn_post_norm", layer, token axis 0, reads [FirstOf(&[AttnOut])];
    /// The residual stream after attention, [T, d].
    AttnResidual = "attn_residual", layer, token axis 0, reads [LayerIn, FirstOf(&[AttnPostNorm, AttnOut])];
    /// The FFN input norm, [T, d].
    FfnNorm = "ffn_norm", layer, token axis 0, reads [FirstOf(&[AttnResidual])];
    /// xn·Wgateᵀ, [T, ff].
    FfnGate = "ffn_gate", layer, token axis 0, reads [FirstOf(&[FfnNorm])];
    /// xn·Wupᵀ, [T, ff].
    FfnUp = "ffn_up", layer, token axis 0, reads [FirstOf(&[FfnNorm])];
    /// act(gate), [T, ff].
    FfnAct = "ffn_act", layer, token axis 0, reads [FirstOf(&[FfnGate])];
    /// act(gate) · up, [T, ff].
    FfnMul = "ffn_mul", layer, token axis 0, reads [FirstOf(&[FfnAct]), FirstOf(&[FfnUp])];
    /// (act(gate) · up)·Wdownᵀ, [T, d].
    FfnDown = "ffn_down", layer, token axis 0, reads [FirstOf(&[FfnMul])];
    /// Mixture of experts: the router's logits, xn·Wrᵀ, [T, E].
    FfnRouter = "ffn_router", layer, token axis 0, reads [FirstOf(&[FfnNorm])];
    /// The router's probabilities (softmax of its logits), [T, E].
    FfnRouterProbs = "ffn_router_probs", layer, token axis 0, reads [FirstOf(&[FfnRouter])];
    /// The experts each token is sent to, in selection order, [T, k]
    /// (integer ids; i32 in a trace file).
    FfnExperts = "ffn_experts", layer, token axis 0, reads [FirstOf(&[FfnRouterProbs])];
    /// The weights the selected experts' outputs are summed with, [T, k].
    FfnExpertWeights = "ffn_expert_weights", layer, token axis 0,
        reads [FirstOf(&[FfnRouterProbs]), FirstOf(&[FfnExperts])];
    /// The weighted sum of the selected experts' outputs, [T, d].
    FfnMoeOut = "ffn_moe_out", layer, token axis 0,
        reads [FirstOf(&[FfnNorm]), FirstOf(&[FfnExperts]), FirstOf(&[FfnExpertWeights])];
    /// The shared expert's output, gated (qwen2moe), [T, d].
    FfnSharedOut = "ffn_shared_out", layer, token axis 0, reads [FirstOf(&[FfnNorm])];
    /// The norm after the FFN, [T, d].
    FfnPostNorm = "ffn_post_norm", layer, token axis 0, reads [FirstOf(&[FfnDown])];
    /// The residual stream leaving the layer, [T, d].
    LayerOut = "layer_out", layer, token axis 0,
        reads [FirstOf(&[AttnResidual]), FirstOf(&[FfnPostNorm, FfnDown, FfnMoeOut]), FirstOf(&[FfnSharedOut])];
    /// The final norm, [T, d] (its input, the last layer's output, is not
    /// walked: the layer count is not part of a stage).
    FinalNorm = "final_norm", global, token axis 0, reads [];
    /// norm(x)·Woutᵀ (softcapped), [T, V].
    Logits = "logits", global, token axis 0, reads [FirstOf(&[FinalNorm])];
}

impl Stage {
    /// Whether the stage holds integer ids (expert indices), stored as i32
    /// in a trace file and carried as exact f32 values in memory.
    pub fn holds_ids(self) -> bool {
        self == Stage::FfnExperts
    }

    /// The trace tensor name: `embedding`, `blk.3.ffn_mul`, `logits`.
    pub fn key(self, layer: Option<usize>) -> String {
        match layer {
            Some(l) => format!("blk.{l}.{}", self.name()),
            None => self.name().to_string(),
        }
    }

    /// The trace keys that `key`'s stage reads, among those `present`.
    pub fn input_keys(self, layer: Option<usize>, present: &dyn Fn(&str) -> bool) -> Vec<String> {
        self.inputs()
            .iter()
            .filter_map(|input| match input {
                FirstOf(cands) => cands.iter().map(|c| c.key(layer)).find(|k| present(k)),
                LayerIn => Some(match layer {
                    Some(0) | None => Stage::Embedding.key(None),
                    Some(l) => Stage::LayerOut.key(Some(l - 1)),
                })
                .filter(|k| present(k)),
            })
            .fold(Vec::new(), |mut keys, k| {
                if !keys.contains(&k) {
                    keys.push(k);
                }
                keys
            })
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
    /// Whether [`Observer::substitute`] may change anything: lets a
    /// wrapper that must stage the buffer skip the work for observers that
    /// only watch.
    fn substitutes(&self) -> bool {
        false
    }
    /// Whether this observer takes a step's stages in blocks of rows
    /// ([`Observer::record_part`]) rather than whole: one that keeps only
    /// statistics needs no stage whole, so a long prompt's trace need not
    /// hold every row of a stage at once. Parts are never substituted.
    fn takes_parts(&self) -> bool {
        false
    }
    /// Rows `rows.from ..` of a stage whose whole has `rows.total` rows on
    /// its token axis; `shape` is the part's. The parts of a stage come in
    /// row order and cover it once; the parts of different stages
    /// interleave. Called only where [`Observer::takes_parts`] says yes.
    fn record_part(&mut self, _layer: Option<usize>, _stage: Stage, _data: &[f32], _shape: &[usize], _rows: Rows) {}
}

/// Which rows of a step a block of work covers, on the token axis: `from`
/// of `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    pub from: usize,
    pub total: usize,
}

impl Rows {
    /// All `total` rows at once.
    pub fn all(total: usize) -> Rows {
        Rows { from: 0, total }
    }

    /// Whether a block of `n` rows starting here is the whole step.
    pub fn whole(&self, n: usize) -> bool {
        self.from == 0 && n == self.total
    }

    /// Whether a block of `n` rows starting here ends the step.
    pub fn ends(&self, n: usize) -> bool {
        self.from + n == self.total
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/TRACE_FORMAT.md names every stage, in execution order, and no
    /// stage the table lacks.
    #[test]
    fn the_trace_format_document_lists_the_stage_table_in_order() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/TRACE_FORMAT.md")).unwrap();
        let section = &doc[doc.find("## Stages").unwrap()..];
        let section = &section[..section.find("\nA stage that an architecture lacks").unwrap()];
        let mut at = 0;
        for s in Stage::ALL {
            let name = format!("`{}`", s.name());
            let found = section[at..].find(&name).unwrap_or_else(|| panic!("{name} missing or out of order"));
            at += found + name.len();
        }
        // Every backticked snake_case word in the table is a stage.
        for word in section.split('`').skip(1).step_by(2) {
            if word.chars().all(|c| c.is_ascii_lowercase() || c == '_') && word.contains('_') || word == "embedding" {
                assert!(Stage::from_name(word).is_some(), "the document names `{word}`, which is not a stage");
            }
        }
    }

    #[test]
    fn inputs_fall_back_to_the_stages_present() {
        let present = |k: &str| !k.ends_with("q_norm");
        assert_eq!(Stage::QRope.input_keys(Some(2), &present), ["blk.2.q_proj"]);
        assert_eq!(Stage::AttnNorm.input_keys(Some(0), &present), ["embedding"]);
        assert_eq!(Stage::AttnResidual.input_keys(Some(3), &|_| true), ["blk.2.layer_out", "blk.3.attn_post_norm"]);
        assert!(Stage::Embedding.input_keys(None, &|_| true).is_empty());
        // Flash attention forms no probabilities: its context reads q, k, v.
        assert_eq!(Stage::AttnContext.input_keys(Some(1), &|_| true), ["blk.1.attn_probs", "blk.1.v_proj"]);
        let fused = |k: &str| !k.ends_with("attn_probs") && !k.ends_with("attn_scores");
        assert_eq!(Stage::AttnContext.input_keys(Some(1), &fused), ["blk.1.q_rope", "blk.1.k_rope", "blk.1.v_proj"]);
        // Every input is a stage of the same scope that runs earlier.
        for s in Stage::ALL {
            for input in s.inputs() {
                if let Input::FirstOf(cands) = input {
                    assert!(cands.iter().all(|c| c < &s && c.is_per_layer() == s.is_per_layer()), "{s:?}");
                }
            }
        }
    }
}
