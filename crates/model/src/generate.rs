//! The generation loop: prefill the prompt, then pick a token, feed it, and
//! repeat until a stop token, a limit or the caller says stop. `plumb run`,
//! `plumb trace --generate`, bisect's teacher forcing and the tests that
//! decode all go through [`Generator`], so they make the same forward calls
//! in the same order and cannot drift apart.
//!
//! What varies between callers is a parameter: how the next token is picked
//! ([`Pick`]: greedy, a sampler, or given tokens for teacher forcing), the
//! observer of each forward pass, what happens with each token (a callback,
//! e.g. streaming text), and when to stop ([`Until`]).
//!
//! This is not a sampler (see [`crate::sample`]) nor a tokenizer: tokens are
//! ids here, and text is the caller's business.

use plumb_kernels::Kernels;
use plumb_trace::{Observer, Ubatched};

use crate::model::{KvCache, Model};
use crate::sample::{argmax, Sampler};

/// How the next token is chosen from the logits of the last position.
pub enum Pick<'a> {
    /// The most likely token (the lowest id on a tie, as [`argmax`]).
    Greedy,
    /// Drawn by a sampler (temperature, top-k, top-p; greedy at temperature 0).
    Sample(&'a mut Sampler),
    /// These tokens, one per step, whatever the logits say: teacher forcing.
    /// Generation ends when they run out.
    Given(&'a [u32]),
}

/// When generation ends (besides the caller's callback saying so).
pub struct Until<'a> {
    /// Tokens to pick at most.
    pub max_new: usize,
    /// A picked token that ends generation (end of turn, EOS): it is kept
    /// in the output but not fed.
    pub stop: Option<&'a dyn Fn(u32) -> bool>,
    /// Feed the last of `max_new` tokens too. Its logits are used by no
    /// one but an observer of that step (the digest tests hash it), or a
    /// caller that checks the final logits (`plumb trace`'s NaN check);
    /// teacher forcing skips it.
    pub feed_last: bool,
}

impl Until<'_> {
    /// `max_new` tokens with no stop token, every one of them fed.
    pub fn tokens(max_new: usize) -> Until<'static> {
        Until { max_new, stop: None, feed_last: true }
    }
}

/// The caller's answer to each picked token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End here; the token is kept but not fed.
    Stop,
}

/// One picked token, shown to the caller's callback before it is fed.
pub struct Step<'a> {
    /// 0 for the first token after the prompt.
    pub index: usize,
    pub token: u32,
    /// The logits of the position the token was picked from (one row of
    /// `vocab`).
    pub logits: &'a [f32],
}

/// What a generation produced.
pub struct Generated {
    /// The picked tokens, a stop token included.
    pub tokens: Vec<u32>,
    /// The logits of the last forward pass: those of the last token fed,
    /// or the prefill's when none was. All positions when that pass asked
    /// for them.
    pub logits: Vec<f32>,
}

/// A model, its kernels and a KV cache: one sequence being generated.
pub struct Generator<'a> {
    model: &'a Model,
    kernels: &'a dyn Kernels,
    pub cache: KvCache,
}

impl<'a> Generator<'a> {
    /// A generator with room for `capacity` positions (prompt + new tokens).
    pub fn new(model: &'a Model, kernels: &'a dyn Kernels, capacity: usize) -> Generator<'a> {
        Generator { model, kernels, cache: KvCache::new(&model.cfg, capacity) }
    }

    /// A generator whose cache keeps of each sliding-window layer only its
    /// window ([`KvCache::windowed`]): the same numbers in bounded memory,
    /// for a run nobody traces the attention of.
    pub fn windowed(model: &'a Model, kernels: &'a dyn Kernels, capacity: usize) -> Generator<'a> {
        Generator { model, kernels, cache: KvCache::windowed(&model.cfg, capacity) }
    }

    /// Runs the prompt as one batch, or in the model's ubatches where it
    /// sets them ([`crate::config::ModelConfig::ubatch`]); logits of every
    /// position when `all_logits` (in ubatches, of every position of the
    /// last part; of the last position only where `obs` takes stages in
    /// parts: [`Model::forward_observed`]), else of the last. In ubatches `obs`
    /// sees one step over the whole prompt ([`Ubatched`]: without
    /// attn_scores and attn_probs), and a caller that traces must ask for
    /// every position's logits, so that every part computes all its rows.
    pub fn prefill(&mut self, ids: &[u32], all_logits: bool, obs: &mut dyn Observer) -> Vec<f32> {
        self.prefill_parts(ids, self.model.cfg.ubatch, all_logits, obs)
    }

    /// [`Generator::prefill`] in ubatches of `ubatch` rows (None: the
    /// whole prompt at once), whatever the model's setting.
    pub fn prefill_parts(
        &mut self,
        ids: &[u32],
        ubatch: Option<usize>,
        all_logits: bool,
        obs: &mut dyn Observer,
    ) -> Vec<f32> {
        let ubatch = match ubatch {
            Some(u) if u < ids.len() => u,
            _ => return self.model.forward_observed(self.kernels, ids, &mut self.cache, all_logits, obs),
        };
        // Only the last part's logits are returned: its last row is the
        // prompt's, and every part's went to the observer as it came
        // (keeping them all would hold [T, V] for nothing).
        let mut parts = Ubatched::new(obs, ids.len());
        let mut logits = Vec::new();
        for (i, part) in ids.chunks(ubatch).enumerate() {
            let from = i * ubatch;
            parts.part(from, part.len(), from + part.len() == ids.len());
            drop(std::mem::take(&mut logits));
            logits = self.model.forward_observed(self.kernels, part, &mut self.cache, all_logits, &mut parts);
        }
        logits
    }

    /// Runs the prompt in forward passes of at most `ubatch` tokens, each
    /// attending to the cache the earlier ones filled — llama.cpp's
    /// physical batch (`-ub`), whose schedule changes the rounding of the
    /// attention and of every matrix product after it. The logits of the
    /// last position.
    pub fn prefill_in(&mut self, ids: &[u32], ubatch: usize, obs: &mut dyn Observer) -> Vec<f32> {
        assert!(ubatch > 0, "a ubatch holds at least one token");
        let mut logits = Vec::new();
        for part in ids.chunks(ubatch) {
            logits = self.model.forward(self.kernels, part, &mut self.cache, false, obs);
        }
        logits
    }

    /// The decode loop, from `logits` (the prefill's, or any pass's; the
    /// last row is picked from): pick a token, show it to `on_token`, stop
    /// or feed it as a one-token forward pass observed by `obs`, repeat.
    /// Also stops when the cache is full.
    pub fn decode(
        &mut self,
        logits: Vec<f32>,
        mut pick: Pick,
        until: &Until,
        obs: &mut dyn Observer,
        on_token: &mut dyn FnMut(Step) -> Flow,
    ) -> Generated {
        let vocab = self.model.cfg.vocab;
        let mut logits = logits;
        let mut tokens = Vec::new();
        for index in 0..until.max_new {
            let last = &logits[logits.len() - vocab..];
            let token = match &mut pick {
                Pick::Greedy => argmax(last) as u32,
                Pick::Sample(s) => s.sample(last),
                Pick::Given(ids) => match ids.get(index) {
                    Some(&t) => t,
                    None => break,
                },
            };
            tokens.push(token);
            let flow = on_token(Step { index, token, logits: last });
            let last_one = index + 1 == until.max_new || matches!(pick, Pick::Given(ids) if index + 1 == ids.len());
            if flow == Flow::Stop
                || until.stop.is_some_and(|stop| stop(token))
                || (last_one && !until.feed_last)
                || self.cache.len >= self.cache.capacity
            {
                break;
            }
            logits = self.model.forward(self.kernels, &[token], &mut self.cache, false, obs);
        }
        Generated { tokens, logits }
    }
}

/// Prefill and decode in one call, the same observer for every pass.
pub fn generate(
    model: &Model,
    kernels: &dyn Kernels,
    prompt: &[u32],
    pick: Pick,
    until: &Until,
    obs: &mut dyn Observer,
    on_token: &mut dyn FnMut(Step) -> Flow,
) -> Generated {
    let mut g = Generator::new(model, kernels, prompt.len() + until.max_new);
    let logits = g.prefill(prompt, false, obs);
    g.decode(logits, pick, until, obs, on_token)
}
