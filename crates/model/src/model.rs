//! A loaded model and its forward pass.
//!
//! Dimension legend (as in llm.c): T tokens in this step, P tokens already
//! in the cache, Tkv = P + T, d model width, H / Hkv query / key-value heads,
//! hd head dim, ff FFN width, V vocabulary.

use std::path::Path;

use plumb_formats::{Bytes, OwnedTensor};

use plumb_kernels::attention::{AttnShape, ValueLayout};
use plumb_kernels::flash::{FlashCache, FlashPlan};
use plumb_kernels::ops::{add_bias, add_in_place, mul_in_place, softcap, RopeSpan, Rotary};
use plumb_kernels::{Kernels, Weight};
use plumb_trace::stage::{Observer, Rows, Stage};

use crate::arch::{LayerTensor, Role, EMBEDDING, OUTPUT, OUTPUT_NORM};
pub use crate::cache::{KvCache, SwaRing};
use crate::config::{KvType, ModelConfig};
use crate::fault::Fault;
use crate::weights::validate;
use crate::{ModelError, ModelSource};

/// One layer's weights. Vectors (norms, biases) are f32, with any stored
/// offset already applied (HF gemma's 1 + w).
pub struct Layer {
    /// The norms before attention and before the FFN (all but olmo2).
    pub attn_norm: Option<Vec<f32>>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub wo: Weight,
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Option<Vec<f32>>,
    pub ffn: Ffn,
    pub ffn_post_norm: Option<Vec<f32>>,
}

/// An FFN's matrices: down(act(x·gateᵀ) · x·upᵀ).
#[derive(Clone)]
pub struct Mlp {
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// A layer's feed-forward network: one, or a mixture of experts.
#[derive(Clone)]
pub enum Ffn {
    Dense(Mlp),
    Experts(Experts),
}

/// A mixture of experts (see [`crate::config::Moe`]).
#[derive(Clone)]
pub struct Experts {
    /// [E, d]
    pub router: Weight,
    pub experts: Vec<Mlp>,
    /// The shared expert and its gate [1, d] (qwen2moe).
    pub shared: Option<(Weight, Mlp)>,
}

impl Ffn {
    /// Every matrix, with its GGUF name after `blk.L.` (an expert's with its
    /// number) and the stage it feeds: a dense FFN's three, or the router,
    /// each expert's and the shared expert's.
    pub fn matrices(&self) -> Vec<(String, &Weight, Stage)> {
        fn three<'a>(m: [&str; 3], w: &'a Mlp, tail: &str, s: [Stage; 3]) -> [(String, &'a Weight, Stage); 3] {
            let ws = [&w.gate, &w.up, &w.down];
            std::array::from_fn(|i| (format!("{}.weight{tail}", m[i]), ws[i], s[i]))
        }
        match self {
            Ffn::Dense(m) => {
                three(["ffn_gate", "ffn_up", "ffn_down"], m, "", [Stage::FfnGate, Stage::FfnUp, Stage::FfnDown])
                    .to_vec()
            }
            Ffn::Experts(x) => {
                let mut v = vec![("ffn_gate_inp.weight".to_string(), &x.router, Stage::FfnRouter)];
                for (e, m) in x.experts.iter().enumerate() {
                    let names = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"];
                    v.extend(three(names, m, &format!(" (expert {e})"), [Stage::FfnMoeOut; 3]));
                }
                if let Some((g, m)) = &x.shared {
                    v.push(("ffn_gate_inp_shexp.weight".to_string(), g, Stage::FfnSharedOut));
                    let names = ["ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"];
                    v.extend(three(names, m, "", [Stage::FfnSharedOut; 3]));
                }
                v
            }
        }
    }

    /// The same matrices, mutable, in the same order.
    pub fn matrices_mut(&mut self) -> Vec<&mut Weight> {
        match self {
            Ffn::Dense(m) => vec![&mut m.gate, &mut m.up, &mut m.down],
            Ffn::Experts(x) => {
                let mut v = vec![&mut x.router];
                for m in &mut x.experts {
                    v.extend([&mut m.gate, &mut m.up, &mut m.down]);
                }
                if let Some((g, m)) = &mut x.shared {
                    v.extend([g, &mut m.gate, &mut m.up, &mut m.down]);
                }
                v
            }
        }
    }
}

pub struct Model {
    pub cfg: ModelConfig,
    pub source: ModelSource,
    pub embed: Weight,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    /// The output matrix (the embedding when tied).
    pub output: Weight,
    /// Rotary frequencies of full-attention and sliding-window layers.
    rope: Rotary,
    rope_local: Rotary,
    /// A deliberate perturbation of one stage, for testing the diff tools.
    pub fault: Option<Fault>,
}

impl Model {
    /// Sets what a run changes of the arithmetic ([`RunSettings`]). With
    /// `repack`, the weights llama.cpp's CPU backend repacks into
    /// interleaved rows at load (on CPUs with AVX2: Q4_K with a multiple of
    /// 8 rows, whatever multiplies activations — not an embedding that is
    /// only looked up) are marked, and the fast precision sums their
    /// products as its repacked kernels do.
    pub fn set_run_settings(&mut self, r: crate::config::RunSettings) {
        self.cfg.set_run_settings(r);
        let tied = self.output.name == self.embed.name;
        let mut ws: Vec<&mut Weight> = Vec::new();
        for l in &mut self.layers {
            ws.extend([&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo]);
            ws.extend(l.ffn.matrices_mut());
        }
        if !tied {
            ws.push(&mut self.output);
        }
        for w in ws {
            w.repacked = r.repack && plumb_kernels::fast::repacks(w.ty, w.rows);
        }
    }

    /// Opens and loads a model, validating every tensor it needs.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let source = ModelSource::open(path)?;
        let cfg = ModelConfig::from_source(&source)?;
        let problems = validate(&source, &cfg);
        if let Some(p) = problems.first() {
            let more =
                if problems.len() > 1 { format!(" (and {} more problems)", problems.len() - 1) } else { String::new() };
            return Err(ModelError::invalid(path, format!("{p}{more}")));
        }
        let arch = cfg.arch;
        let get = |name: &str| -> OwnedTensor { source.tensor_owned(arch, name).expect("validated above") };
        let as_weight = |t: OwnedTensor| -> Weight {
            // [cols] vectors (a shared expert's gate in llama.cpp's files) are one row.
            let (rows, cols) = match t.shape[..] {
                [c] => (1, c),
                [r, c] => (r, c),
                _ => unreachable!("validated as a matrix"),
            };
            Weight { name: t.name.clone(), ty: t.ty, rows, cols, bytes: t.bytes, repacked: false }
        };
        let weight = |name: &str| -> Weight { as_weight(get(name)) };
        let vector = |name: &str| -> Result<Vec<f32>, ModelError> {
            let t = get(name);
            let mut v = vec![0f32; t.shape.iter().product()];
            plumb_quant::dequantize(t.ty, &t.bytes, &mut v)
                .map_err(|e| ModelError::invalid(path, format!("{name}: {e}")))?;
            Ok(v)
        };
        let norm = |name: &str| -> Result<Vec<f32>, ModelError> {
            let mut v = vector(name)?;
            if cfg.norm_plus_one {
                v.iter_mut().for_each(|w| *w += 1.0);
            }
            Ok(v)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let name = |role: Role| LayerTensor::of(role).gguf_name(l);
            let matrix = |role: Role| weight(&name(role));
            // Optional vectors are loaded where the configuration has them.
            let vec_of = |role: Role| -> Result<Option<Vec<f32>>, ModelError> {
                let t = LayerTensor::of(role);
                if !t.present(&cfg) {
                    return Ok(None);
                }
                Ok(Some(if t.is_norm { norm(&name(role))? } else { vector(&name(role))? }))
            };
            let ((mut wq, mut wk, wv), ffn) = if cfg.fused {
                // phi3: rows [q | k | v] and [gate | up], split without a copy.
                let (qkv, up) = (matrix(Role::Wqkv), matrix(Role::WUp));
                let (qd, kvd, ff) = (cfg.q_dim(), cfg.kv_dim(), cfg.ff);
                let qkv =
                    (row_range(&qkv, 0, qd), row_range(&qkv, qd, qd + kvd), row_range(&qkv, qd + kvd, qd + 2 * kvd));
                let (gate, up) = (row_range(&up, 0, ff), row_range(&up, ff, 2 * ff));
                (qkv, Ffn::Dense(Mlp { gate, up, down: matrix(Role::WDown) }))
            } else {
                let qkv = (matrix(Role::Wq), matrix(Role::Wk), matrix(Role::Wv));
                let ffn = match &cfg.moe {
                    None => {
                        Ffn::Dense(Mlp { gate: matrix(Role::WGate), up: matrix(Role::WUp), down: matrix(Role::WDown) })
                    }
                    Some(moe) => {
                        let stack = |role: Role| -> Vec<Weight> {
                            let parts = source.stack_owned(arch, &name(role), moe.experts).expect("validated above");
                            parts.into_iter().map(as_weight).collect()
                        };
                        let (gates, ups, downs) = (stack(Role::ExpGate), stack(Role::ExpUp), stack(Role::ExpDown));
                        let experts = gates
                            .into_iter()
                            .zip(ups)
                            .zip(downs)
                            .map(|((gate, up), down)| Mlp { gate, up, down })
                            .collect();
                        let shared = moe.shared_ff.map(|_| {
                            let mlp = Mlp {
                                gate: matrix(Role::SharedGate),
                                up: matrix(Role::SharedUp),
                                down: matrix(Role::SharedDown),
                            };
                            (matrix(Role::SharedGateInp), mlp)
                        });
                        Ffn::Experts(Experts { router: matrix(Role::Router), experts, shared })
                    }
                };
                (qkv, ffn)
            };
            if cfg.unpermute_qk {
                wq = unpermute_rows(&wq, cfg.n_head);
                wk = unpermute_rows(&wk, cfg.n_head_kv);
            }
            layers.push(Layer {
                attn_norm: vec_of(Role::AttnNorm)?,
                wq,
                wk,
                wv,
                bq: vec_of(Role::Bq)?,
                bk: vec_of(Role::Bk)?,
                bv: vec_of(Role::Bv)?,
                q_norm: vec_of(Role::QNorm)?,
                k_norm: vec_of(Role::KNorm)?,
                wo: matrix(Role::Wo),
                attn_post_norm: vec_of(Role::AttnPostNorm)?,
                ffn_norm: vec_of(Role::FfnNorm)?,
                ffn,
                ffn_post_norm: vec_of(Role::FfnPostNorm)?,
            });
        }
        let embed = weight(EMBEDDING.0);
        let output = if cfg.tied_output { embed.clone() } else { weight(OUTPUT.0) };
        let final_norm = norm(OUTPUT_NORM.0)?;
        let rope = Rotary::new(cfg.rope_theta, cfg.head_dim, cfg.rope_scaling.clone());
        let rope_local = Rotary::new(cfg.rope_theta_local, cfg.head_dim, cfg.rope_scaling_local.clone());
        Ok(Model { cfg, source, embed, layers, final_norm, output, rope, rope_local, fault: None })
    }

    /// Runs `tokens` at positions `cache.len ..`, appending to the cache.
    /// Returns logits [T, V] for every position when `all_logits`, else for
    /// the last position only ([1, V]) — and the last only, too, when the
    /// observer took a long prompt in parts ([`Observer::takes_parts`]): its
    /// logits went to the observer block by block.
    pub fn forward(
        &self,
        k: &dyn Kernels,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        self.forward_with(k, tokens, cache, all_logits, false, tr)
    }

    /// [`Model::forward`] for an observer: one that takes stages in parts
    /// gets every position's logits (`all_logits`) a few rows at a time
    /// ([`LOGITS_BUDGET`]) whatever the step's length, and only the last
    /// position's are returned, so no [T, V] is held (a ubatch of 512 rows
    /// on a vocabulary of 262144 would be 0.5 GB); any other observer gets
    /// them whole, and all are returned.
    pub fn forward_observed(
        &self,
        k: &dyn Kernels,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        self.forward_with(k, tokens, cache, all_logits, true, tr)
    }

    /// [`Model::forward`], the logits in `blocks` for an observer that
    /// takes parts ([`Model::forward_observed`]).
    fn forward_with(
        &self,
        k: &dyn Kernels,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        blocks: bool,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        let t = tokens.len();
        let p = cache.len;
        assert!(p + t <= cache.capacity, "KV cache full: {} > {}", p + t, cache.capacity);
        cache.begin_step(t);
        if self.in_parts(t, tr) {
            return self.forward_in_parts(k, tokens, cache, all_logits, tr);
        }
        // A long prompt nobody looks inside of (only the last logits wanted)
        // goes through the layers in batches of rows, so no buffer grows
        // with its length; every row's numbers are the same.
        let batches = if all_logits || self.fault.is_some() || self.observed_inside(tr) {
            vec![(0, t)]
        } else {
            row_blocks(t, BATCH)
        };
        let (mut x, mut rows) = (Vec::new(), t);
        for (i, &(i0, i1)) in batches.iter().enumerate() {
            x = self.embed(&tokens[i0..i1], tr);
            let last = i + 1 == batches.len();
            for l in 0..self.cfg.n_layer {
                // Without every position's logits, the last layer goes on past
                // its attention with the last token only, as llama.cpp does.
                let keep_last = !all_logits && last && l + 1 == self.cfg.n_layer;
                rows = self.layer(k, l, &mut x, cache, keep_last, tr);
            }
            cache.len = p + i1;
        }
        let logits = if blocks && all_logits && self.fault.is_none() && tr.takes_parts() {
            self.head_in_parts(k, &x, &[(0, t)], tr)
        } else {
            self.head(k, &x, rows, all_logits, tr)
        };
        tr.step_done();
        logits
    }

    /// Runs `tokens` at positions `cache.len ..`, appending to the cache,
    /// and hands the logits of every row from `from` on to `each(row,
    /// logits [V])` in order, a few rows at a time: nothing held grows with
    /// the step beyond a batch of rows (a perplexity pass scores hundreds
    /// of rows, each [V] wide). Every number is the one [`Model::forward`]
    /// gives with all logits; `progress(rows)` is called as each batch of
    /// rows leaves the layers.
    pub fn forward_scoring(
        &self,
        k: &dyn Kernels,
        tokens: &[u32],
        cache: &mut KvCache,
        from: usize,
        each: &mut dyn FnMut(usize, &[f32]),
        progress: &mut dyn FnMut(usize),
    ) {
        let (c, t, p) = (&self.cfg, tokens.len(), cache.len);
        assert!(p + t <= cache.capacity, "KV cache full: {} > {}", p + t, cache.capacity);
        cache.begin_step(t);
        let d = c.d;
        let mut none = plumb_trace::stage::NoTrace;
        for (i0, i1) in row_blocks(t, BATCH) {
            let mut x = self.embed(&tokens[i0..i1], &mut none);
            for l in 0..c.n_layer {
                self.layer(k, l, &mut x, cache, false, &mut none);
            }
            cache.len = p + i1;
            progress(i1 - i0);
            let lo = from.clamp(i0, i1);
            self.score_rows(k, &x[(lo - i0) * d..], &mut |r, logits| each(lo + r, logits));
        }
    }

    /// The head of every row of x [rows, d] — logits = norm(x)·Woutᵀ (then
    /// softcap) — a few rows at a time: `each(row, logits [V])` in order.
    pub fn score_rows(&self, k: &dyn Kernels, x: &[f32], each: &mut dyn FnMut(usize, &[f32])) {
        let (c, rows) = (&self.cfg, x.len() / self.cfg.d);
        if rows == 0 {
            return;
        }
        let mut xn = vec![0f32; rows * c.d]; //                                [rows, d]
        k.rms_norm(x, &self.final_norm, c.rms_eps, &mut xn);
        self.logits_in_blocks(k, &xn, &mut |j0, logits| {
            for (r, row) in logits.chunks_exact(c.vocab).enumerate() {
                each(j0 + r, row);
            }
        });
    }

    /// Whether a step of `t` tokens goes to `tr` in parts: a prompt longer
    /// than a batch, for an observer that takes parts, with no fault to
    /// apply to a whole stage.
    pub fn in_parts(&self, t: usize, tr: &dyn Observer) -> bool {
        t > BATCH && self.fault.is_none() && tr.takes_parts()
    }

    /// A long prompt for an observer that takes stages in parts: layer by
    /// layer, each in batches of rows — every key and value first, so that
    /// the cache holds the whole layer when a trace asks for the scores of
    /// future positions too, then queries, attention and the rest — and
    /// the logits in blocks. Only the residual stream [T, d] grows with the
    /// prompt; every row's numbers are those of one whole pass.
    fn forward_in_parts(
        &self,
        k: &dyn Kernels,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        let c = &self.cfg;
        let (t, p, d) = (tokens.len(), cache.len, c.d);
        let blocks = row_blocks(t, BATCH);
        let part = |i0: usize| Rows { from: i0, total: t };
        let mut x = vec![0f32; t * d]; //                                     [T, d]
        for &(i0, i1) in &blocks {
            x[i0 * d..i1 * d].copy_from_slice(&self.embed_rows(&tokens[i0..i1], part(i0), tr));
        }
        let mut last = Vec::new(); //                                         [1, d]
        for l in 0..c.n_layer {
            for &(i0, i1) in &blocks {
                let span = cache.rope_span(p + i0, i1 - i0);
                let (_, kk, vv) =
                    self.project(k, l, &x[i0 * d..i1 * d], p + i0, span, part(i0), Inputs::KeysValues, tr);
                cache.store(l, p + i0, &self.key_order(k, &kk), &vv, self.value_layout(k));
            }
            let keep_last = !all_logits && l + 1 == c.n_layer;
            for &(i0, i1) in &blocks {
                // The queries are made here, not kept from above: [T, H·hd]
                // would grow with the prompt.
                let span = cache.rope_span(p + i0, i1 - i0);
                let (q, _, _) = self.project(k, l, &x[i0 * d..i1 * d], p + i0, span, part(i0), Inputs::Queries, tr);
                let ctx = self.attention(k, l, &q, cache, p, part(i0), tr);
                let mut xb = x[i0 * d..i1 * d].to_vec();
                match self.finish_layer(k, l, &mut xb, &ctx, keep_last, part(i0), tr) {
                    1 if keep_last => last = xb,
                    _ => x[i0 * d..i1 * d].copy_from_slice(&xb),
                }
            }
        }
        cache.len = p + t;
        let logits =
            if all_logits { self.head_in_parts(k, &x, &blocks, tr) } else { self.head(k, &last, 1, false, tr) };
        tr.step_done();
        logits
    }

    /// Whether `tr` wants any stage before the head.
    fn observed_inside(&self, tr: &dyn Observer) -> bool {
        Stage::ALL.iter().filter(|s| !matches!(s, Stage::FinalNorm | Stage::Logits)).any(|&s| {
            if s.is_per_layer() {
                (0..self.cfg.n_layer).any(|l| tr.wants(Some(l), s))
            } else {
                tr.wants(None, s)
            }
        })
    }

    /// One finished stage, or `rows` of it: the model's fault is applied if
    /// it targets this stage (self-tests of the diff tools), the observer
    /// records the result, and then may replace it (stage isolation feeds
    /// the next stage the reference's values; plain tracing leaves the
    /// buffer alone). A part of a stage is only recorded.
    #[inline]
    fn emit(
        &self,
        tr: &mut dyn Observer,
        layer: Option<usize>,
        stage: Stage,
        data: &mut [f32],
        shape: &[usize],
        rows: Rows,
    ) {
        if !rows.whole(shape[stage.token_axis()]) {
            tr.record_part(layer, stage, data, shape, rows);
            return;
        }
        if let Some(f) = &self.fault {
            if f.stage == stage && f.layer == layer {
                f.apply(data, shape);
            }
        }
        tr.record(layer, stage, data, shape);
        tr.substitute(layer, stage, data, shape);
    }

    /// x = embed(tokens) · embed_scale                                      [T, d]
    pub fn embed(&self, tokens: &[u32], tr: &mut dyn Observer) -> Vec<f32> {
        self.embed_rows(tokens, Rows::all(tokens.len()), tr)
    }

    fn embed_rows(&self, tokens: &[u32], rows: Rows, tr: &mut dyn Observer) -> Vec<f32> {
        let (t, d) = (tokens.len(), self.cfg.d);
        let mut x = vec![0f32; t * d];
        for (i, &tok) in tokens.iter().enumerate() {
            self.embed.row_into(tok as usize, &mut x[i * d..(i + 1) * d]);
        }
        if self.cfg.embed_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= self.cfg.embed_scale);
        }
        self.emit(tr, None, Stage::Embedding, &mut x, &[t, d], rows);
        x
    }

    /// One decoder layer on the residual stream x [T, d] at positions
    /// p .. p+T, p = `cache.len`, appending this layer's keys and values to
    /// the cache (which must hold positions 0 .. p for this layer; `len`
    /// moves on once every layer has run). With `keep_last`,
    /// everything after attention runs on the last token only (the last
    /// layer of a step whose earlier positions' logits nobody reads, as
    /// llama.cpp does). Returns the rows of x left.
    pub fn layer(
        &self,
        k: &dyn Kernels,
        l: usize,
        x: &mut Vec<f32>,
        cache: &mut KvCache,
        keep_last: bool,
        tr: &mut dyn Observer,
    ) -> usize {
        let ctx = self.attend(k, l, x, cache, tr);
        self.finish_layer(k, l, x, &ctx, keep_last, Rows::all(x.len() / self.cfg.d), tr)
    }

    /// The attention half of layer `l` on x [T, d] at positions p .. p+T,
    /// p = `cache.len`, as in [`Model::layer`]: x += the attention's
    /// output. With [`Model::ffn_block`] after it, the whole layer — in
    /// halves that can come from two models ([`crate::hybrid`]).
    pub fn attention_block(
        &self,
        k: &dyn Kernels,
        l: usize,
        x: &mut Vec<f32>,
        cache: &mut KvCache,
        tr: &mut dyn Observer,
    ) {
        let ctx = self.attend(k, l, x, cache, tr);
        self.attn_output(k, l, x, &ctx, false, Rows::all(x.len() / self.cfg.d), tr);
    }

    /// The feed-forward half of layer `l` on x [T, d]: x += its output.
    pub fn ffn_block(&self, k: &dyn Kernels, l: usize, x: &mut [f32], tr: &mut dyn Observer) {
        self.ffn(k, l, x, Rows::all(x.len() / self.cfg.d), tr);
    }

    /// Layer `l`'s attention over x [T, d] at positions p .. p+T, p =
    /// `cache.len`, keeping its keys and values: the context [T, H·hd].
    fn attend(&self, k: &dyn Kernels, l: usize, x: &[f32], cache: &mut KvCache, tr: &mut dyn Observer) -> Vec<f32> {
        let (p, all) = (cache.len, Rows::all(x.len() / self.cfg.d));
        let span = cache.rope_span(p, all.total);
        let (q, kk, vv) = self.project(k, l, x, p, span, all, Inputs::All, tr);
        cache.store(l, p, &self.key_order(k, &kk), &vv, self.value_layout(k));
        self.attention(k, l, &q, cache, p, all, tr)
    }

    /// The attention's inputs from rows of x [T, d] at positions `pos ..`
    /// in layer `l`, of a step in `span`: `what` says which — q [T, H·hd],
    /// and k, v [T, Hkv·hd] (empty where not made). The norm is traced with
    /// the keys (the queries alone recompute it).
    #[allow(clippy::too_many_arguments)]
    fn project(
        &self,
        k: &dyn Kernels,
        l: usize,
        x: &[f32],
        pos: usize,
        span: RopeSpan,
        rows: Rows,
        what: Inputs,
        tr: &mut dyn Observer,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let c = &self.cfg;
        let w = &self.layers[l];
        let (d, qd, kvd) = (c.d, c.q_dim(), c.kv_dim());
        let (t, at) = (x.len() / d, Some(l));
        let (wq, wkv) = (what != Inputs::KeysValues, what != Inputs::Queries);
        let mut xn = vec![0f32; t * d]; //                                    [T, d]
        let mut q = vec![0f32; if wq { t * qd } else { 0 }]; //               [T, H·hd]
        let mut kk = vec![0f32; if wkv { t * kvd } else { 0 }]; //            [T, Hkv·hd]
        let mut vv = vec![0f32; if wkv { t * kvd } else { 0 }]; //            [T, Hkv·hd]

        // xn = norm(x) (olmo2: xn = x)
        match &w.attn_norm {
            Some(norm) => {
                k.rms_norm(x, norm, c.rms_eps, &mut xn);
                if wkv {
                    self.emit(tr, at, Stage::AttnNorm, &mut xn, &[t, d], rows);
                }
            }
            None => xn.copy_from_slice(x),
        }

        // q, k, v = xn·Wqᵀ + bq, xn·Wkᵀ + bk, xn·Wvᵀ + bv
        match what {
            Inputs::All => k.linears(&[&w.wq, &w.wk, &w.wv], &xn, t, &mut [&mut q, &mut kk, &mut vv]),
            Inputs::KeysValues => k.linears(&[&w.wk, &w.wv], &xn, t, &mut [&mut kk, &mut vv]),
            Inputs::Queries => k.linear(&w.wq, &xn, t, &mut q),
        }
        if wq {
            add_bias(&mut q, w.bq.as_deref());
            self.emit(tr, at, Stage::QProj, &mut q, &[t, qd], rows);
        }
        if wkv {
            add_bias(&mut kk, w.bk.as_deref());
            self.emit(tr, at, Stage::KProj, &mut kk, &[t, kvd], rows);
            add_bias(&mut vv, w.bv.as_deref());
            self.emit(tr, at, Stage::VProj, &mut vv, &[t, kvd], rows);
        }

        // q, k = norm(q), norm(k), head by head (qwen3, gemma3) or whole
        // rows (olmo2): the norm weight's width says which
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            if wq {
                k.rms_norm_in_place(&mut q, qn, c.rms_eps);
                self.emit(tr, at, Stage::QNorm, &mut q, &[t, qd], rows);
            }
            if wkv {
                k.rms_norm_in_place(&mut kk, kn, c.rms_eps);
                self.emit(tr, at, Stage::KNorm, &mut kk, &[t, kvd], rows);
            }
        }

        // q, k = rope(q, pos), rope(k, pos)   (rotate-half pairs)
        let rotary = if c.layer_sliding[l] { &self.rope_local } else { &self.rope };
        let angles = k.rope_angles(rotary, pos, t, span);
        if wq {
            k.rope(&mut q, qd, c.head_dim, &angles);
            self.emit(tr, at, Stage::QRope, &mut q, &[t, qd], rows);
        }
        if wkv {
            k.rope(&mut kk, kvd, c.head_dim, &angles);
            self.emit(tr, at, Stage::KRope, &mut kk, &[t, kvd], rows);
        }
        (q, kk, vv)
    }

    /// The rest of layer `l` on rows of x [T, d], from the attention's
    /// context [T, H·hd]. With `keep_last`, only the step's last token goes
    /// on past the attention's output (rows that do not end the step stop
    /// there). Returns the rows of x left.
    #[allow(clippy::too_many_arguments)]
    fn finish_layer(
        &self,
        k: &dyn Kernels,
        l: usize,
        x: &mut Vec<f32>,
        ctx: &[f32],
        keep_last: bool,
        rows: Rows,
        tr: &mut dyn Observer,
    ) -> usize {
        match self.attn_output(k, l, x, ctx, keep_last, rows, tr) {
            (0, _) => 0,
            (t, rows) => {
                self.ffn(k, l, x, rows, tr);
                t
            }
        }
    }

    /// The attention's output projection (and post-norm) added to rows of x
    /// [T, d]. With `keep_last`, rows that do not end the step stop here
    /// and x keeps the last. Returns the rows of x left and which they are.
    #[allow(clippy::too_many_arguments)]
    fn attn_output(
        &self,
        k: &dyn Kernels,
        l: usize,
        x: &mut Vec<f32>,
        ctx: &[f32],
        keep_last: bool,
        rows: Rows,
        tr: &mut dyn Observer,
    ) -> (usize, Rows) {
        let c = &self.cfg;
        let w = &self.layers[l];
        let d = c.d;
        let (t, at) = (x.len() / d, Some(l));
        let mut attn = vec![0f32; t * d]; //                                  [T, d]

        // attn = ctx·Woᵀ
        k.linear(&w.wo, ctx, t, &mut attn);
        self.emit(tr, at, Stage::AttnOut, &mut attn, &[t, d], rows);
        let (t, rows) = if keep_last && !rows.ends(t) {
            return (0, rows);
        } else if keep_last && t > 1 {
            attn.drain(..(t - 1) * d);
            x.drain(..(t - 1) * d);
            (1, Rows::all(1))
        } else {
            (t, rows)
        };

        // attn = norm(attn) (gemma's post-norm)
        if let Some(pn) = &w.attn_post_norm {
            let raw = attn.clone();
            k.rms_norm(&raw, pn, c.rms_eps, &mut attn);
            self.emit(tr, at, Stage::AttnPostNorm, &mut attn, &[t, d], rows);
        }

        // x = x + attn
        add_in_place(x, &attn);
        self.emit(tr, at, Stage::AttnResidual, x, &[t, d], rows);
        (t, rows)
    }

    /// The feed-forward half of layer `l` on rows of x [T, d]: x += its
    /// output.
    fn ffn(&self, k: &dyn Kernels, l: usize, x: &mut [f32], rows: Rows, tr: &mut dyn Observer) {
        let c = &self.cfg;
        let w = &self.layers[l];
        let d = c.d;
        let (t, at) = (x.len() / d, Some(l));
        // xn = norm(x) (olmo2: xn = x)
        let mut xn = vec![0f32; t * d]; //                                    [T, d]
        match &w.ffn_norm {
            Some(norm) => {
                k.rms_norm(x, norm, c.rms_eps, &mut xn);
                self.emit(tr, at, Stage::FfnNorm, &mut xn, &[t, d], rows);
            }
            None => xn.copy_from_slice(x),
        }
        let mut out = match &w.ffn {
            Ffn::Dense(mlp) => self.mlp(k, l, mlp, &xn, rows, tr),
            Ffn::Experts(experts) => self.experts(k, l, experts, &xn, rows, tr),
        };

        // out = norm(out) (gemma's post-norm)
        if let Some(pn) = &w.ffn_post_norm {
            let raw = out.clone();
            k.rms_norm(&raw, pn, c.rms_eps, &mut out);
            self.emit(tr, at, Stage::FfnPostNorm, &mut out, &[t, d], rows);
        }

        // x = x + out
        add_in_place(x, &out);
        self.emit(tr, at, Stage::LayerOut, x, &[t, d], rows);
    }

    /// A dense FFN on xn [T, d], traced: down(act(xn·Wgateᵀ) · xn·Wupᵀ).
    fn mlp(&self, k: &dyn Kernels, l: usize, w: &Mlp, xn: &[f32], rows: Rows, tr: &mut dyn Observer) -> Vec<f32> {
        self.mlp_with(k, w, xn, &mut |stage, data, shape| self.emit(tr, Some(l), stage, data, shape, rows))
    }

    /// down(act(xn·Wgateᵀ) · xn·Wupᵀ) on xn [T, d], each stage handed to
    /// `emit` as it is made: a layer's FFN, the shared expert or one
    /// token's expert (these two untraced: their stages are not the layer's).
    fn mlp_with(&self, k: &dyn Kernels, w: &Mlp, xn: &[f32], emit: &mut StageSink) -> Vec<f32> {
        let (d, ff) = (self.cfg.d, w.gate.rows);
        let t = xn.len() / d;
        let mut gate = vec![0f32; t * ff]; //                                 [T, ff]
        let mut up = vec![0f32; t * ff]; //                                   [T, ff]
        let mut down = vec![0f32; t * d]; //                                  [T, d]

        // gate, up = xn·Wgateᵀ, xn·Wupᵀ
        k.linears(&[&w.gate, &w.up], xn, t, &mut [&mut gate, &mut up]);
        emit(Stage::FfnGate, &mut gate, &[t, ff]);
        emit(Stage::FfnUp, &mut up, &[t, ff]);

        // gate = act(gate) · up
        k.activation(self.cfg.act, &mut gate, ff);
        emit(Stage::FfnAct, &mut gate, &[t, ff]);
        mul_in_place(&mut gate, &up);
        emit(Stage::FfnMul, &mut gate, &[t, ff]);

        // down = gate·Wdownᵀ
        k.linear(&w.down, &gate, t, &mut down);
        emit(Stage::FfnDown, &mut down, &[t, d]);
        down
    }

    /// A mixture of experts on xn [T, d], traced: each token's `k` most
    /// probable experts by the router, their outputs summed in that order
    /// weighted by their probabilities, and the shared expert's output,
    /// gated, added.
    fn experts(
        &self,
        k: &dyn Kernels,
        l: usize,
        w: &Experts,
        xn: &[f32],
        rows: Rows,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        let c = &self.cfg;
        let moe = c.moe.as_ref().expect("a model with experts has their configuration");
        let (d, ne, used, at) = (c.d, moe.experts, moe.used, Some(l));
        let t = xn.len() / d;

        // router = xn·Wrᵀ; probs = softmax(router)                           [T, E]
        let mut router = vec![0f32; t * ne];
        k.linear(&w.router, xn, t, &mut router);
        self.emit(tr, at, Stage::FfnRouter, &mut router, &[t, ne], rows);
        let mut probs = router;
        k.softmax_rows(&mut probs, ne);
        self.emit(tr, at, Stage::FfnRouterProbs, &mut probs, &[t, ne], rows);

        // ids = the `used` most probable experts, most probable first (ties:
        // the lower id, as llama.cpp's sort of a few values orders them)   [T, k]
        let mut ids = vec![0f32; t * used];
        for (p, row) in probs.chunks_exact(ne).zip(ids.chunks_exact_mut(used)) {
            let mut order: Vec<usize> = (0..ne).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            row.iter_mut().zip(&order).for_each(|(r, &e)| *r = e as f32);
        }
        self.emit(tr, at, Stage::FfnExperts, &mut ids, &[t, used], rows);

        // weights = their probabilities (divided by their sum)             [T, k]
        let id = |v: f32| (v >= 0.0 && (v as usize) < ne).then_some(v as usize);
        let mut weights = vec![0f32; t * used];
        for ((p, row), wr) in probs.chunks_exact(ne).zip(ids.chunks_exact(used)).zip(weights.chunks_exact_mut(used)) {
            wr.iter_mut().zip(row).for_each(|(w, &e)| *w = id(e).map_or(0.0, |e| p[e]));
            if moe.norm_weights {
                // Summed in f64 and rounded, as llama.cpp's sum_rows; it
                // keeps the sum off zero (the least normal f16).
                let sum = wr.iter().map(|&w| w as f64).sum::<f64>() as f32;
                let sum = if k.precision() == plumb_kernels::Precision::Fast { sum.max(6.103_515_6e-5) } else { sum };
                wr.iter_mut().for_each(|w| *w /= sum);
            }
        }
        self.emit(tr, at, Stage::FfnExpertWeights, &mut weights, &[t, used], rows);

        // out = Σ weight · down(act(xn·Wgateᵀ) · xn·Wupᵀ), token by token
        // (each product as a one-token step), in selection order          [T, d]
        let mut out = vec![0f32; t * d];
        for (i, (x, o)) in xn.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
            let mut first = true;
            for (&e, &weight) in ids[i * used..(i + 1) * used].iter().zip(&weights[i * used..(i + 1) * used]) {
                let Some(e) = id(e) else { continue };
                let mut y = self.mlp_with(k, &w.experts[e], x, &mut |_, _, _| {});
                y.iter_mut().for_each(|v| *v *= weight);
                if first {
                    o.copy_from_slice(&y);
                    first = false;
                } else {
                    add_in_place(o, &y);
                }
            }
        }
        self.emit(tr, at, Stage::FfnMoeOut, &mut out, &[t, d], rows);

        // shared = sigmoid(xn·Wsᵀ) · down(act(xn·Wgateᵀ) · xn·Wupᵀ)          [T, d]
        if let Some((gate_w, mlp)) = &w.shared {
            let mut gate = vec![0f32; t]; //                                   [T, 1]
            k.linear(gate_w, xn, t, &mut gate);
            k.sigmoid(&mut gate);
            let mut shared = self.mlp_with(k, mlp, xn, &mut |_, _, _| {});
            for (row, g) in shared.chunks_exact_mut(d).zip(&gate) {
                row.iter_mut().for_each(|v| *v *= g);
            }
            self.emit(tr, at, Stage::FfnSharedOut, &mut shared, &[t, d], rows);
            add_in_place(&mut out, &shared);
        }
        out
    }

    /// Attention of q [T, H·hd], rows `rows` of a step at positions p ..
    /// (`p` the positions cached before the step), over layer `l`'s cache
    /// (which holds the step's keys and values — all of them, where a part
    /// of a step is traced): the context [T, H·hd], with the scores and
    /// probabilities traced on the way.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        k: &dyn Kernels,
        l: usize,
        q: &[f32],
        cache: &KvCache,
        p: usize,
        rows: Rows,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        let (c, qd, nh) = (&self.cfg, self.cfg.q_dim(), self.cfg.n_head);
        let (t, at) = (q.len() / qd, Some(l));
        let ordered = self.key_order(k, q);
        let q: &[f32] = &ordered;
        // Positions are counted from the first the layer holds (a windowed
        // cache's window layers drop older ones in multiples of 64); the
        // window's mask depends only on distances, so nothing changes.
        let first = cache.first(l);
        let shape = AttnShape {
            t,
            p: p + rows.from - first,
            heads: nh,
            kv_heads: c.n_head_kv,
            hd: c.head_dim,
            window: if c.layer_sliding[l] { c.sliding_window } else { None },
            scale: c.attn_scale,
            softcap: c.attn_softcap,
            scale_queries: c.query_pre_scale,
            // Future positions are scored only when the trace asks for the
            // pre-mask scores.
            full: tr.wants(at, Stage::AttnScores),
            future: 0,
            k_f16: c.kv_type.k == KvType::F16,
            v_f16: c.kv_type.v == KvType::F16,
        };
        let seen =
            |stage| tr.wants(at, stage) || self.fault.as_ref().is_some_and(|f| f.stage == stage && f.layer == at);
        let mut ctx = vec![0f32; t * qd]; //                                  [T, H·hd]
        if self.flash(k) {
            // No scores or probabilities exist: each row's softmax runs
            // along its positions.
            // A window-sized sliding-window cache: its cells, in its order.
            let ring = if c.layer_sliding[l] { cache.swa_ring().map(|r| r.view()) } else { None };
            let plan = FlashPlan {
                step_rows: cache.step_rows(),
                n_kv: ring.map_or_else(|| FlashPlan::n_kv(cache.capacity, cache.step_end()), |r| r.len()),
                threads: rayon::current_num_threads(),
                first,
                quantized: cache.key_blocks(l).is_some(),
                values_in_blocks: cache.values_in_blocks(),
                rotate_k: cache.rotations().0,
                rotate_v: cache.rotations().1,
                f16_math: c.f16_math,
            };
            let (keys, values) = cache.flash_rows(l);
            let given = FlashCache { keys, values, key_blocks: cache.key_blocks(l), cells: ring };
            plumb_kernels::flash::flash_attention(&shape, &plan, q, &given, &mut ctx);
            self.emit(tr, at, Stage::AttnContext, &mut ctx, &[t, qd], rows);
            return ctx;
        }
        let traced = seen(Stage::AttnScores) || seen(Stage::AttnProbs);
        assert!(!traced || first == 0, "a traced attention needs every position: trace with a whole cache");
        if !traced || !rows.whole(t) {
            // Blocks of query rows, so a long prompt never holds
            // [H, T, Tkv] (each row's numbers are the same). Where a trace
            // takes a long step in parts, each block's scores are as wide
            // as the whole step's, future positions included.
            let tkv = if traced { p + rows.total } else { shape.tkv() };
            for (i0, i1) in query_blocks(t, tkv * nh, SCORES_BUDGET) {
                debug_assert!(i1 - i0 > 1 || t == 1);
                let s = AttnShape { t: i1 - i0, p: shape.p + i0, ..shape };
                let s = AttnShape { future: if traced { tkv - s.tkv() } else { 0 }, ..s };
                let part = Rows { from: rows.from + i0, total: rows.total };
                let mut scores = vec![0f32; nh * s.t * s.tkv()]; //           [H, T, Tkv]
                self.scores(k, &s, &q[i0 * qd..i1 * qd], cache, l, &mut scores);
                if traced {
                    self.emit(tr, at, Stage::AttnScores, &mut scores, &[nh, s.t, tkv], part);
                }
                k.attn_softmax(&s, &mut scores);
                if traced {
                    self.emit(tr, at, Stage::AttnProbs, &mut scores, &[nh, s.t, tkv], part);
                }
                k.attn_context(&s, &scores, cache.values(l), &mut ctx[i0 * qd..i1 * qd]);
            }
            self.emit(tr, at, Stage::AttnContext, &mut ctx, &[t, qd], rows);
            return ctx;
        }
        let (s, tkv) = (shape, shape.tkv());
        let mut scores = vec![0f32; nh * t * tkv]; //                         [H, T, Tkv]

        // scores = q·kᵀ · scale (then softcap)
        self.scores(k, &s, q, cache, l, &mut scores);
        self.emit(tr, at, Stage::AttnScores, &mut scores, &[nh, t, tkv], rows);

        // probs = softmax(scores + causal/sliding mask)
        k.attn_softmax(&s, &mut scores);
        self.emit(tr, at, Stage::AttnProbs, &mut scores, &[nh, t, tkv], rows);

        // ctx = probs · v
        k.attn_context(&s, &scores, cache.values(l), &mut ctx);
        self.emit(tr, at, Stage::AttnContext, &mut ctx, &[t, qd], rows);
        ctx
    }

    /// scores = q·kᵀ · scale (then softcap) against layer `l`'s keys: in
    /// their blocks where the cache keeps them so (the fast precision
    /// without flash attention, [`plumb_kernels::attention::block_scores`]).
    fn scores(&self, k: &dyn Kernels, s: &AttnShape, q: &[f32], cache: &KvCache, l: usize, scores: &mut [f32]) {
        match cache.key_blocks(l) {
            Some((ty, blocks)) => plumb_kernels::attention::block_scores(s, q, ty, blocks, cache.rotations().0, scores),
            None => k.attn_scores(s, q, cache.keys(l), scores),
        }
    }

    /// Whether attention runs as llama.cpp's flash attention: asked for,
    /// in the fast precision (the exact one follows transformers).
    fn flash(&self, k: &dyn Kernels) -> bool {
        self.cfg.flash_attn && k.precision() == plumb_kernels::Precision::Fast
    }

    /// The layout the cached values are kept in: flash attention reads
    /// rows, as llama.cpp keeps them untransposed for it.
    fn value_layout(&self, k: &dyn Kernels) -> ValueLayout {
        if self.flash(k) {
            ValueLayout::Rows
        } else {
            k.value_layout()
        }
    }

    /// q or k rows [T, heads·hd] in the element order the attention's dot
    /// products take: as given, except in the fast precision for GGUF
    /// files whose q/k rows llama.cpp keeps interleaved (llama): there its
    /// Q·Kᵀ sums each head's products pair by pair (0, hd/2, 1, hd/2+1, …),
    /// so the fast precision stores keys and orders queries that way. The
    /// sum is the same; its rounding is llama.cpp's.
    fn key_order<'a>(&self, k: &dyn Kernels, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        if !(self.cfg.unpermute_qk && k.precision() == plumb_kernels::Precision::Fast) {
            return std::borrow::Cow::Borrowed(x);
        }
        let (hd, half) = (self.cfg.head_dim, self.cfg.head_dim / 2);
        let mut out = vec![0f32; x.len()];
        for (o, r) in out.chunks_exact_mut(hd).zip(x.chunks_exact(hd)) {
            for i in 0..half {
                o[2 * i] = r[i];
                o[2 * i + 1] = r[half + i];
            }
        }
        std::borrow::Cow::Owned(out)
    }

    /// logits = norm(x)·Woutᵀ (then softcap), for all T rows or the last.
    pub fn head(&self, k: &dyn Kernels, x: &[f32], t: usize, all_logits: bool, tr: &mut dyn Observer) -> Vec<f32> {
        let c = &self.cfg;
        let (d, all) = (c.d, Rows::all(t));
        let mut xn = vec![0f32; t * d];
        k.rms_norm(x, &self.final_norm, c.rms_eps, &mut xn);
        self.emit(tr, None, Stage::FinalNorm, &mut xn, &[t, d], all);
        let (rows, from) = if all_logits { (t, 0) } else { (1, t - 1) };
        let mut logits = vec![0f32; rows * c.vocab];
        k.linear(&self.output, &xn[from * d..], rows, &mut logits);
        softcap(&mut logits, c.final_softcap, k.precision());
        self.emit(tr, None, Stage::Logits, &mut logits, &[rows, c.vocab], Rows::all(rows));
        logits
    }

    /// The head of every row of x [T, d], given to the observer in parts:
    /// `blocks` of rows for the final norm, fewer rows at a time for the
    /// logits ([`LOGITS_BUDGET`]). Returns the last row's logits [1, V].
    fn head_in_parts(&self, k: &dyn Kernels, x: &[f32], blocks: &[(usize, usize)], tr: &mut dyn Observer) -> Vec<f32> {
        let (c, t) = (&self.cfg, x.len() / self.cfg.d);
        let (d, v) = (c.d, c.vocab);
        let mut last = Vec::new();
        for &(i0, i1) in blocks {
            let mut xn = vec![0f32; (i1 - i0) * d]; //                        [T, d]
            k.rms_norm(&x[i0 * d..i1 * d], &self.final_norm, c.rms_eps, &mut xn);
            self.emit(tr, None, Stage::FinalNorm, &mut xn, &[i1 - i0, d], Rows { from: i0, total: t });
            self.logits_in_blocks(k, &xn, &mut |j0, logits| {
                let n = logits.len() / v;
                self.emit(tr, None, Stage::Logits, logits, &[n, v], Rows { from: i0 + j0, total: t });
                last = logits[(n - 1) * v..].to_vec();
            });
        }
        last
    }

    /// The logits of normed rows xn [rows, d], a few rows at a time
    /// ([`LOGITS_BUDGET`]): `each(first row, logits [n, V])` for each block.
    fn logits_in_blocks(&self, k: &dyn Kernels, xn: &[f32], each: &mut dyn FnMut(usize, &mut [f32])) {
        let (d, v) = (self.cfg.d, self.cfg.vocab);
        for (j0, j1) in row_blocks(xn.len() / d, (LOGITS_BUDGET / v).max(2)) {
            let mut logits = vec![0f32; (j1 - j0) * v]; //                     [n, V]
            k.linear(&self.output, &xn[j0 * d..j1 * d], j1 - j0, &mut logits);
            softcap(&mut logits, self.cfg.final_softcap, k.precision());
            each(j0, &mut logits);
        }
    }
}

/// Where a stage goes as it is made: (stage, data, shape).
type StageSink<'a> = dyn FnMut(Stage, &mut [f32], &[usize]) + 'a;

/// Which of the attention's inputs [`Model::project`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inputs {
    All,
    KeysValues,
    Queries,
}

/// Logits held at once by a long prompt's head given in parts, in floats
/// (16 MiB).
pub(crate) const LOGITS_BUDGET: usize = 1 << 22;

/// Scores held at once by an untraced attention step, in floats (4 MiB).
pub(crate) const SCORES_BUDGET: usize = 1 << 20;

/// Rows a batch of an unobserved prompt goes through the layers in.
pub(crate) const BATCH: usize = 512;

/// Blocks of query rows [i0, i1) whose scores (`per_row` floats a row) fit
/// in `budget`: multiples of 16 rows.
fn query_blocks(t: usize, per_row: usize, budget: usize) -> Vec<(usize, usize)> {
    row_blocks(t, (budget / per_row.max(1) / 16 * 16).max(16))
}

/// [i0, i1) blocks of `rows` rows covering 0..t, never a block of one row
/// out of several (a one-token step is summed as decoding sums it).
pub(crate) fn row_blocks(t: usize, rows: usize) -> Vec<(usize, usize)> {
    let mut blocks: Vec<(usize, usize)> = (0..t).step_by(rows.max(2)).map(|i| (i, (i + rows).min(t))).collect();
    if blocks.len() > 1 && blocks.last().is_some_and(|(a, b)| b - a == 1) {
        let (_, end) = blocks.pop().unwrap_or_default();
        if let Some(last) = blocks.last_mut() {
            last.1 = end;
        }
    }
    if blocks.is_empty() {
        blocks.push((0, t));
    }
    blocks
}

/// Rows r0..r1 of a matrix, sharing its bytes (a view of a stored fused
/// matrix), named after the whole with the rows it holds.
fn row_range(w: &Weight, r0: usize, r1: usize) -> Weight {
    let rb = w.row_bytes();
    let bytes = match &w.bytes {
        Bytes::Mapped { map, start, .. } => {
            Bytes::Mapped { map: map.clone(), start: start + r0 * rb, len: (r1 - r0) * rb }
        }
        Bytes::Owned(v) => Bytes::Owned(std::sync::Arc::new(v[r0 * rb..r1 * rb].to_vec())),
    };
    Weight { name: format!("{} rows {r0}..{r1}", w.name), rows: r1 - r0, bytes, ..w.clone() }
}

/// Reorders the rows of a llama-arch GGUF Q or K matrix from the interleaved
/// rope layout back to HuggingFace's rotate-half layout. The converter maps
/// HF row (h, half, i) to GGUF row (h, i, half) for i < hd/2; rows are moved
/// whole, as raw block bytes, so no precision is touched.
fn unpermute_rows(w: &Weight, heads: usize) -> Weight {
    let rb = w.row_bytes();
    let hd = w.rows / heads;
    let half = hd / 2;
    let mut out = vec![0u8; w.bytes.len()];
    for h in 0..heads {
        for part in 0..2 {
            for i in 0..half {
                let hf_row = h * hd + part * half + i;
                let gguf_row = h * hd + i * 2 + part;
                out[hf_row * rb..(hf_row + 1) * rb].copy_from_slice(&w.bytes[gguf_row * rb..(gguf_row + 1) * rb]);
            }
        }
    }
    Weight { bytes: Bytes::Owned(std::sync::Arc::new(out)), ..w.clone() }
}

#[cfg(test)]
mod tests {
    use super::query_blocks;

    #[test]
    fn query_blocks_cover_the_rows_in_multiples_of_16_and_never_leave_one_row_alone() {
        for t in [1, 2, 15, 16, 17, 33, 700, 4097] {
            for per_row in [1, 100, 2800, 65536, 1 << 22] {
                let blocks = query_blocks(t, per_row, 1 << 20);
                assert_eq!(blocks.first().map(|b| b.0), Some(0));
                assert_eq!(blocks.last().map(|b| b.1), Some(t));
                assert!(blocks.windows(2).all(|w| w[0].1 == w[1].0 && (w[0].1 - w[0].0) % 16 == 0));
                assert!(t == 1 || blocks.iter().all(|(a, b)| b - a > 1), "{t} {per_row}: {blocks:?}");
            }
        }
        assert_eq!(query_blocks(700, 2800, 1 << 20), vec![(0, 368), (368, 700)]);
    }
}
