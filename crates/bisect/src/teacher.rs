//! Teacher forcing: B continues greedily from the prompt; A is fed B's
//! tokens; the logits are compared at every generated position. Both go
//! through plumb-model's generation loop, B picking greedily and A given
//! B's picks, so each makes the forward calls a plain generation would.
//!
//! This is not a judgement: it returns the per-step comparison and the count
//! of top-1 flips that are not near-ties; what to make of them is the
//! caller's choice (the fixed-bound bisect fails on them, the noise-aware one
//! only shows them).

use plumb_diff::compare::{logits_metrics, PositionLogits};
use plumb_model::generate::{Flow, Generator, Pick, Until};
use plumb_model::kernels::kernels_for;
use plumb_model::{NoTrace, Precision};

use crate::Loaded;

/// One generated position.
pub struct ForcedStep {
    /// B's greedy choice, fed to both.
    pub token: u32,
    /// A's logits against B's at the position the token was picked from.
    pub metrics: PositionLogits,
}

/// The teacher-forced continuation.
pub struct TeacherForced {
    pub steps: Vec<ForcedStep>,
    /// Top-1 disagreements where B's top-2 margin is not a near-tie.
    pub flips: usize,
}

/// Up to `n` tokens of B's greedy continuation of `prompt`, A fed the same
/// tokens; a B end-of-generation token ends it.
pub fn teacher_force(
    a: &Loaded,
    ap: Precision,
    b: &Loaded,
    bp: Precision,
    prompt: &[u32],
    n: usize,
    tie: f64,
) -> TeacherForced {
    let (ka, kb) = (kernels_for(ap), kernels_for(bp));
    let v = b.model.cfg.vocab;
    let is_eog = |id: u32| b.tokenizer.as_ref().is_some_and(|t| t.is_eog(id));
    // The last token's logits would be compared with nothing: not fed.
    let until = Until { max_new: n, stop: Some(&is_eog), feed_last: false };

    // B first, keeping its logits at each step; then A on B's tokens. The
    // two caches are apart, so the order of the passes changes no number.
    let mut gb = Generator::new(&b.model, kb.as_ref(), prompt.len() + n);
    let lb = gb.prefill(prompt, false, &mut NoTrace);
    let mut b_rows: Vec<Vec<f32>> = Vec::new();
    let picked = gb
        .decode(lb, Pick::Greedy, &until, &mut NoTrace, &mut |s| {
            b_rows.push(s.logits.to_vec());
            Flow::Continue
        })
        .tokens;

    let mut ga = Generator::new(&a.model, ka.as_ref(), prompt.len() + n);
    let la = ga.prefill(prompt, false, &mut NoTrace);
    let mut steps = Vec::new();
    ga.decode(la, Pick::Given(&picked), &until, &mut NoTrace, &mut |s| {
        let metrics = logits_metrics(s.logits, &b_rows[s.index], v, tie).remove(0);
        steps.push(ForcedStep { token: s.token, metrics });
        Flow::Continue
    });
    let flips = steps.iter().filter(|s| !s.metrics.top1_agree && !s.metrics.near_tie).count();
    TeacherForced { steps, flips }
}
