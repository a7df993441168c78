//! Hybrid forward passes, for attributing a difference between two sides
//! (two models of one shape, or one model at two precisions) to the parts
//! of the forward pass.
//!
//! B's pass is cut into [`Unit`]s — the embedding, each layer's attention
//! half and feed-forward half, the head — and its residual stream is kept
//! at the input of each ([`Checkpoints`]). A hybrid runs chosen units with
//! A's weights and arithmetic on B's own input to them and every other
//! unit with B's, so how far a hybrid's logits move from B's says how much
//! of A's difference those units make by themselves.

use plumb_kernels::Kernels;
use plumb_trace::stage::NoTrace;

use crate::model::{row_blocks, BATCH};
use crate::{KvCache, Model};

/// A part of the forward pass that a hybrid takes from one side or the
/// other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// x = embed(tokens) · scale
    Embedding,
    /// x += attention(norm(x)) of layer l (projections, attention, output
    /// projection, post-norm)
    Attention(usize),
    /// x += ffn(norm(x)) of layer l (post-norm included)
    Ffn(usize),
    /// logits = norm(x)·Woutᵀ (then softcap)
    Head,
}

impl Unit {
    /// Every unit of an `n_layer`-layer model, in the order the pass runs
    /// them.
    pub fn all(n_layer: usize) -> Vec<Unit> {
        let layers = (0..n_layer).flat_map(|l| [Unit::Attention(l), Unit::Ffn(l)]);
        std::iter::once(Unit::Embedding).chain(layers).chain([Unit::Head]).collect()
    }

    /// Its name in the GGUF's tensor naming: `token_embd`, `blk.7.attn`,
    /// `blk.7.ffn`, `output`.
    pub fn name(&self) -> String {
        match self {
            Unit::Embedding => "token_embd".into(),
            Unit::Attention(l) => format!("blk.{l}.attn"),
            Unit::Ffn(l) => format!("blk.{l}.ffn"),
            Unit::Head => "output".into(),
        }
    }

    pub fn layer(&self) -> Option<usize> {
        match self {
            Unit::Attention(l) | Unit::Ffn(l) => Some(*l),
            _ => None,
        }
    }
}

/// One side of a comparison: a model and the arithmetic it runs in.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    pub model: &'a Model,
    pub kernels: &'a dyn Kernels,
}

impl Side<'_> {
    /// Runs `unit` (not the head) on rows of x [T, d] at positions from
    /// `cache.len`; the embedding replaces x with `tokens`' rows.
    fn apply(&self, unit: Unit, tokens: &[u32], x: &mut Vec<f32>, cache: &mut KvCache) {
        let (m, k) = (self.model, self.kernels);
        match unit {
            Unit::Embedding => *x = m.embed(tokens, &mut NoTrace),
            Unit::Attention(l) => m.attention_block(k, l, x, cache, &mut NoTrace),
            Unit::Ffn(l) => m.ffn_block(k, l, x, &mut NoTrace),
            Unit::Head => unreachable!("the head makes logits, not a residual stream"),
        }
    }
}

/// Why two models cannot be mixed unit by unit, if they cannot: the
/// residual stream's width, the layers, the vocabulary and the key-value
/// cache's shape (one cache serves both) must agree; each unit brings its
/// own norms, rotary and heads.
pub fn mismatch(a: &Model, b: &Model) -> Option<String> {
    let (x, y) = (&a.cfg, &b.cfg);
    let pairs = [
        ("layer counts", x.n_layer, y.n_layer),
        ("widths", x.d, y.d),
        ("key-value heads", x.n_head_kv, y.n_head_kv),
        ("head widths", x.head_dim, y.head_dim),
        ("vocabularies", x.vocab, y.vocab),
    ];
    pairs.iter().find(|(_, p, q)| p != q).map(|(what, p, q)| format!("their {what} differ ({p} and {q})"))
}

/// B's residual stream at the input of every unit over one step ([T, d]
/// per unit; none before the embedding).
pub struct Checkpoints {
    inputs: Vec<Vec<f32>>,
    /// The step's tokens, the positions cached before it, and the first
    /// row whose logits are wanted.
    tokens: Vec<u32>,
    p: usize,
    from: usize,
}

/// B's pass over `tokens` at positions from `cache.len`, keeping its input
/// to every unit, and `each(row, logits [V])` for the rows from `from` on
/// (as [`Model::forward_scoring`], same numbers).
pub fn checkpoints(
    b: Side,
    tokens: &[u32],
    cache: &mut KvCache,
    from: usize,
    each: &mut dyn FnMut(usize, &[f32]),
) -> Checkpoints {
    let (d, t, p) = (b.model.cfg.d, tokens.len(), cache.len);
    assert!(p + t <= cache.capacity, "KV cache full: {} > {}", p + t, cache.capacity);
    cache.begin_step(t);
    let units = Unit::all(b.model.cfg.n_layer);
    let mut inputs: Vec<Vec<f32>> = units.iter().map(|_| Vec::new()).collect();
    inputs[1..].iter_mut().for_each(|v| v.reserve_exact(t * d));
    for (i0, i1) in row_blocks(t, BATCH) {
        cache.len = p + i0;
        let mut x = Vec::new();
        for (u, &unit) in units.iter().enumerate() {
            if u > 0 {
                inputs[u].extend_from_slice(&x);
            }
            if unit == Unit::Head {
                let lo = from.clamp(i0, i1);
                b.model.score_rows(b.kernels, &x[(lo - i0) * d..], &mut |r, logits| each(lo + r, logits));
            } else {
                b.apply(unit, &tokens[i0..i1], &mut x, cache);
            }
        }
    }
    cache.len = p + t;
    Checkpoints { inputs, tokens: tokens.to_vec(), p, from }
}

impl Checkpoints {
    /// The hybrid pass over the step these were made from: the units where
    /// `from_a` is true run on A's side, the rest on B's, each on the
    /// stream the one before left — from B's checkpoint at the first of A's
    /// units, so the units before it are not run again. Calls `each(row,
    /// logits [V])` for the same rows as B's pass. With no unit from A
    /// these are B's logits.
    pub fn hybrid(&self, a: Side, b: Side, from_a: &[bool], cache: &mut KvCache, each: &mut dyn FnMut(usize, &[f32])) {
        let (d, t, tokens, from) = (b.model.cfg.d, self.tokens.len(), &self.tokens, self.from);
        let units = Unit::all(b.model.cfg.n_layer);
        assert_eq!(from_a.len(), units.len(), "one choice per unit");
        assert!(self.p + t <= cache.capacity, "KV cache full: {} > {}", self.p + t, cache.capacity);
        // The first unit that differs from B's pass; B's head if none does.
        let start = from_a.iter().position(|&x| x).unwrap_or(units.len() - 1);
        cache.len = self.p;
        cache.begin_step(t);
        for (i0, i1) in row_blocks(t, BATCH) {
            cache.len = self.p + i0;
            let mut x = if start > 0 { self.inputs[start][i0 * d..i1 * d].to_vec() } else { Vec::new() };
            for (u, &unit) in units.iter().enumerate().skip(start) {
                let side = if from_a[u] { a } else { b };
                if unit == Unit::Head {
                    let lo = from.clamp(i0, i1);
                    side.model.score_rows(side.kernels, &x[(lo - i0) * d..], &mut |r, logits| each(lo + r, logits));
                } else {
                    side.apply(unit, &tokens[i0..i1], &mut x, cache);
                }
            }
        }
        cache.len = self.p + t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::kernels_for;
    use crate::Precision;

    fn tiny() -> Model {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/llama/llama-q8_0.gguf");
        Model::load(&path).expect("tiny llama")
    }

    /// Logits of rows `from..` of a pass, flattened.
    fn collect(run: impl FnOnce(&mut dyn FnMut(usize, &[f32]))) -> Vec<f32> {
        let mut out = Vec::new();
        let mut next = None;
        run(&mut |r, logits| {
            assert!(next.is_none_or(|n| n == r), "rows in order");
            next = Some(r + 1);
            out.extend_from_slice(logits);
        });
        out
    }

    fn tokens(n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
    }

    /// B's checkpoint pass gives forward_scoring's logits, and every
    /// hybrid of a side with itself gives them again, bit for bit — over
    /// more rows than a batch, so the batches and the cache are exercised.
    #[test]
    fn a_hybrid_of_a_side_with_itself_is_that_side() {
        let m = tiny();
        let k = kernels_for(Precision::Exact);
        let side = Side { model: &m, kernels: k.as_ref() };
        let (t, from) = (BATCH + 40, 300);
        let toks = tokens(t, m.cfg.vocab);
        let mut cache = KvCache::new(&m.cfg, t);
        let want = collect(|each| m.forward_scoring(k.as_ref(), &toks, &mut cache, from, each, &mut |_| {}));
        assert_eq!(want.len(), (t - from) * m.cfg.vocab);
        cache.len = 0;
        let mut cp = None;
        let got = collect(|each| cp = Some(checkpoints(side, &toks, &mut cache, from, each)));
        assert!(got == want, "checkpoint pass");
        let cp = cp.unwrap();
        let n = Unit::all(m.cfg.n_layer).len();
        for u in 0..=n {
            // Unit u from "A" (the same side), or none at all for u = n.
            let mask: Vec<bool> = (0..n).map(|i| i == u).collect();
            let got = collect(|each| cp.hybrid(side, side, &mask, &mut cache, each));
            assert!(got == want, "unit {u}");
        }
    }

    /// Every unit from A is A's own pass, bit for bit; one unit from A
    /// (here the other precision) moves B's logits, and is B's pass with that unit alone run
    /// by A — composed here by hand from the model's halves — starting
    /// from B's checkpoint instead of running B's units before it again.
    #[test]
    fn hybrids_take_the_chosen_units_from_a() {
        let m = tiny();
        let (ka, kb) = (kernels_for(Precision::Fast), kernels_for(Precision::Exact));
        let (a, b) = (Side { model: &m, kernels: ka.as_ref() }, Side { model: &m, kernels: kb.as_ref() });
        let (t, from, d) = (48, 24, m.cfg.d);
        let toks = tokens(t, m.cfg.vocab);
        let mut cache = KvCache::new(&m.cfg, t);
        let of_a = collect(|each| m.forward_scoring(ka.as_ref(), &toks, &mut cache, from, each, &mut |_| {}));
        cache.len = 0;
        let mut cp = None;
        let of_b = collect(|each| cp = Some(checkpoints(b, &toks, &mut cache, from, each)));
        let cp = cp.unwrap();
        let units = Unit::all(m.cfg.n_layer);
        let all = vec![true; units.len()];
        assert!(collect(|each| cp.hybrid(a, b, &all, &mut cache, each)) == of_a);
        for (u, &unit) in units.iter().enumerate() {
            let mask: Vec<bool> = (0..units.len()).map(|i| i == u).collect();
            let got = collect(|each| cp.hybrid(a, b, &mask, &mut cache, each));
            // The embedding is a lookup, the same in both precisions.
            assert_eq!(got != of_b, unit != Unit::Embedding, "{}", unit.name());
            let mut by_hand = KvCache::new(&m.cfg, t);
            let want = collect(|each| {
                let mut x = Vec::new();
                for (i, &v) in units.iter().enumerate() {
                    let side = if i == u { a } else { b };
                    let (model, k) = (side.model, side.kernels);
                    match v {
                        Unit::Embedding => x = model.embed(&toks, &mut NoTrace),
                        Unit::Attention(l) => model.attention_block(k, l, &mut x, &mut by_hand, &mut NoTrace),
                        Unit::Ffn(l) => model.ffn_block(k, l, &mut x, &mut NoTrace),
                        Unit::Head => model.score_rows(k, &x[from * d..], &mut |r, l| each(from + r, l)),
                    }
                }
            });
            assert!(got == want, "{}", unit.name());
        }
    }

    #[test]
    fn models_of_other_shapes_do_not_mix() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny");
        let load = |f: &str| Model::load(&dir.join(f)).expect("a tiny model");
        let (llama, qwen3, gemma3) = (tiny(), load("qwen3/qwen3-q8_0.gguf"), load("gemma3/gemma3-q8_0.gguf"));
        // Each unit brings its own norms and rotary: only shapes must agree.
        assert_eq!(mismatch(&llama, &qwen3), None);
        assert_eq!(mismatch(&llama, &gemma3).as_deref(), Some("their head widths differ (16 and 32)"));
    }

    #[test]
    fn units_are_named_as_the_tensors_they_hold() {
        let names: Vec<String> = Unit::all(2).iter().map(Unit::name).collect();
        assert_eq!(names, ["token_embd", "blk.0.attn", "blk.0.ffn", "blk.1.attn", "blk.1.ffn", "output"]);
    }
}
