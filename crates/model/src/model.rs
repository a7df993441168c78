//! A loaded model and its forward pass.
//!
//! Dimension legend (as in llm.c): T tokens in this step, P tokens already
//! in the cache, Tkv = P + T, d model width, H / Hkv query / key-value heads,
//! hd head dim, ff FFN width, V vocabulary.

use std::path::Path;

use plumb_formats::{Bytes, OwnedTensor};

use crate::config::{Activation, Arch, ModelConfig};
use crate::fault::Fault;
use crate::weights::validate;
use crate::{ModelError, ModelSource};
use plumb_kernels::{Kernels, Precision, Weight};
use plumb_quant::blocks::{f16_to_f32, f32_to_f16};
use plumb_trace::stage::{Observer, Stage};
use rayon::prelude::*;

/// One layer's weights. Vectors (norms, biases) are f32, with any stored
/// offset already applied (HF gemma's 1 + w).
pub struct Layer {
    pub attn_norm: Vec<f32>,
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
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
    pub ffn_post_norm: Option<Vec<f32>>,
}

pub struct Model {
    pub cfg: ModelConfig,
    pub source: ModelSource,
    pub embed: Weight,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    /// The output matrix (the embedding when tied).
    pub output: Weight,
    /// Rotary inverse frequencies for global and sliding layers, [hd/2].
    inv_freq: Vec<f32>,
    inv_freq_local: Vec<f32>,
    /// A deliberate perturbation of one stage, for testing the diff tools.
    pub fault: Option<Fault>,
}

/// The key/value cache: per layer, rows of [Hkv·hd] for each position.
/// Values are kept in the layout the precision reads: rows (`v`, exact) or
/// transposed (`vt`, fast: [Hkv·hd][positions], as llama.cpp keeps its V
/// cache, so a decoding step appends one column instead of transposing the
/// whole cache). A layer holds one layout at a time and is converted if the
/// other precision reads it.
pub struct KvCache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    vt: Vec<Vec<f32>>,
    /// Positions held in `vt[l]`.
    vt_len: Vec<usize>,
    pub len: usize,
    pub capacity: usize,
    kv_dim: usize,
}

impl KvCache {
    pub fn new(cfg: &ModelConfig, capacity: usize) -> KvCache {
        let kv_dim = cfg.kv_dim();
        KvCache {
            k: (0..cfg.n_layer).map(|_| Vec::with_capacity(capacity * kv_dim)).collect(),
            v: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            vt: (0..cfg.n_layer).map(|_| Vec::new()).collect(),
            vt_len: vec![0; cfg.n_layer],
            len: 0,
            capacity,
            kv_dim,
        }
    }

    /// Bytes the cache takes when full (the transposed layout's positions
    /// padded to a multiple of 64).
    pub fn bytes_for(cfg: &ModelConfig, capacity: usize) -> u64 {
        let positions = capacity as u64 + capacity.div_ceil(VT_PAD) as u64 * VT_PAD as u64;
        cfg.n_layer as u64 * positions * cfg.kv_dim() as u64 * 4
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Drops every position from `len` on.
    pub fn truncate(&mut self, len: usize) {
        for l in self.k.iter_mut().chain(self.v.iter_mut()) {
            l.truncate(len * self.kv_dim);
        }
        for vl in self.vt_len.iter_mut() {
            *vl = (*vl).min(len);
        }
        self.len = self.len.min(len);
    }

    /// Positions between columns in `vt[l]`: the capacity padded to 64,
    /// unless the layer had to grow past it.
    fn vt_stride(&self, l: usize) -> usize {
        match self.vt[l].len() / self.kv_dim.max(1) {
            0 => self.capacity.max(1).div_ceil(VT_PAD) * VT_PAD,
            s => s,
        }
    }

    /// Layer `l`'s values as rows, positions 0..p kept and `rows` (t rows of
    /// kv_dim) appended at p.
    fn put_v_rows(&mut self, l: usize, p: usize, rows: &[f32]) {
        let kvd = self.kv_dim;
        if self.vt_len[l] > 0 {
            // Last written transposed: rows back from the columns.
            let (stride, n) = (self.vt_stride(l), self.vt_len[l].min(p));
            let vt = &self.vt[l];
            self.v[l] = (0..n * kvd).map(|i| vt[(i % kvd) * stride + i / kvd]).collect();
            self.vt[l] = Vec::new();
            self.vt_len[l] = 0;
        }
        self.v[l].truncate(p * kvd);
        self.v[l].extend_from_slice(rows);
    }

    /// Layer `l`'s values transposed ([kv_dim][stride], zeros past the
    /// last position), positions 0..p kept and `rows` appended at p.
    fn put_v_columns(&mut self, l: usize, p: usize, rows: &[f32]) {
        let kvd = self.kv_dim;
        let t = rows.len() / kvd;
        if self.vt[l].is_empty() {
            self.vt[l] = vec![0f32; kvd * self.vt_stride(l)];
            self.vt_len[l] = 0;
        }
        if p + t > self.vt_stride(l) {
            // More positions than the cache was made for: a wider layout.
            let old = self.vt_stride(l);
            let stride = (p + t).div_ceil(VT_PAD) * VT_PAD;
            let mut wide = vec![0f32; kvd * stride];
            for (e, col) in self.vt[l].chunks_exact(old).enumerate() {
                wide[e * stride..e * stride + self.vt_len[l]].copy_from_slice(&col[..self.vt_len[l]]);
            }
            self.vt[l] = wide;
        }
        let stride = self.vt_stride(l);
        if !self.v[l].is_empty() {
            // Last written as rows: columns from the rows.
            let n = (self.v[l].len() / kvd).min(p);
            for (j, row) in self.v[l].chunks_exact(kvd).take(n).enumerate() {
                for (e, v) in row.iter().enumerate() {
                    self.vt[l][e * stride + j] = *v;
                }
            }
            self.vt_len[l] = n;
            self.v[l].clear();
        }
        let vt = &mut self.vt[l];
        // Positions dropped since (p..old end) go back to zeros.
        let end = self.vt_len[l].max(p + t);
        for (e, col) in vt.chunks_exact_mut(stride).enumerate() {
            for (j, row) in rows.chunks_exact(kvd).enumerate() {
                col[p + j] = row[e];
            }
            col[p + t..end].fill(0.0);
        }
        self.vt_len[l] = p + t;
    }
}

/// The transposed V cache pads positions to a multiple of this, as
/// llama.cpp pads its cache.
const VT_PAD: usize = 64;

fn rope_inv_freq(theta: f32, hd: usize) -> Vec<f32> {
    // transformers: 1 / base^(arange(0, hd, 2) / hd), in f32.
    (0..hd / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32)).collect()
}

impl Model {
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
        let weight = |name: &str| -> Weight {
            let t = get(name);
            Weight { name: t.name.clone(), ty: t.ty, rows: t.shape[0], cols: t.shape[1], bytes: t.bytes }
        };
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
            let n = |s: &str| format!("blk.{l}.{s}");
            let mut wq = weight(&n("attn_q.weight"));
            let mut wk = weight(&n("attn_k.weight"));
            if cfg.unpermute_qk {
                wq = unpermute_rows(&wq, cfg.n_head);
                wk = unpermute_rows(&wk, cfg.n_head_kv);
            }
            let opt = |s: &str, on: bool, is_norm: bool| -> Result<Option<Vec<f32>>, ModelError> {
                if !on {
                    return Ok(None);
                }
                Ok(Some(if is_norm { norm(&n(s))? } else { vector(&n(s))? }))
            };
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm.weight"))?,
                wq,
                wk,
                wv: weight(&n("attn_v.weight")),
                bq: opt("attn_q.bias", cfg.qkv_bias, false)?,
                bk: opt("attn_k.bias", cfg.qkv_bias, false)?,
                bv: opt("attn_v.bias", cfg.qkv_bias, false)?,
                q_norm: opt("attn_q_norm.weight", cfg.qk_norm, true)?,
                k_norm: opt("attn_k_norm.weight", cfg.qk_norm, true)?,
                wo: weight(&n("attn_output.weight")),
                attn_post_norm: opt("post_attention_norm.weight", cfg.post_norms, true)?,
                ffn_norm: norm(&n("ffn_norm.weight"))?,
                w_gate: weight(&n("ffn_gate.weight")),
                w_up: weight(&n("ffn_up.weight")),
                w_down: weight(&n("ffn_down.weight")),
                ffn_post_norm: opt("post_ffw_norm.weight", cfg.post_norms, true)?,
            });
        }
        let embed = weight("token_embd.weight");
        let output = if cfg.tied_output { embed.clone() } else { weight("output.weight") };
        let final_norm = norm("output_norm.weight")?;
        let inv_freq = rope_inv_freq(cfg.rope_theta, cfg.head_dim);
        let inv_freq_local = rope_inv_freq(cfg.rope_theta_local, cfg.head_dim);
        Ok(Model { cfg, source, embed, layers, final_norm, output, inv_freq, inv_freq_local, fault: None })
    }

    /// Runs `tokens` at positions `cache.len ..`, appending to the cache.
    /// Returns logits [T, V] for every position when `all_logits`, else for
    /// the last position only ([1, V]).
    pub fn forward(
        &self,
        k: &dyn Kernels,
        tokens: &[u32],
        cache: &mut KvCache,
        all_logits: bool,
        tr: &mut dyn Observer,
    ) -> Vec<f32> {
        let t = tokens.len();
        let p = cache.len;
        assert!(p + t <= cache.capacity, "KV cache full: {} > {}", p + t, cache.capacity);
        let mut x = self.embed(tokens, tr);
        let mut rows = t;
        for l in 0..self.cfg.n_layer {
            // Without every position's logits, the last layer goes on past
            // its attention with the last token only, as llama.cpp does.
            let keep_last = !all_logits && l + 1 == self.cfg.n_layer;
            rows = self.layer(k, l, &mut x, rows, cache, p, keep_last, tr);
        }
        cache.len = p + t;
        let logits = self.head(k, &x, rows, all_logits, tr);
        tr.step_done();
        logits
    }

    /// One finished stage: the model's fault is applied if it targets this
    /// stage (self-tests of the diff tools), the observer records the result,
    /// and then may replace it (stage isolation feeds the next stage the
    /// reference's values; plain tracing leaves the buffer alone).
    #[inline]
    fn emit(&self, tr: &mut dyn Observer, layer: Option<usize>, stage: Stage, data: &mut [f32], shape: &[usize]) {
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
        let (t, d) = (tokens.len(), self.cfg.d);
        let mut x = vec![0f32; t * d];
        for (i, &tok) in tokens.iter().enumerate() {
            self.embed.row_into(tok as usize, &mut x[i * d..(i + 1) * d]);
        }
        if self.cfg.embed_scale != 1.0 {
            x.iter_mut().for_each(|v| *v *= self.cfg.embed_scale);
        }
        self.emit(tr, None, Stage::Embedding, &mut x, &[t, d]);
        x
    }

    /// One decoder layer on the residual stream x [T, d] at positions
    /// p .. p+T, appending this layer's keys and values to the cache (which
    /// must already hold positions 0 .. p for this layer).
    #[allow(clippy::too_many_arguments)]
    pub fn layer(
        &self,
        k: &dyn Kernels,
        l: usize,
        x: &mut Vec<f32>,
        t: usize,
        cache: &mut KvCache,
        p: usize,
        keep_last: bool,
        tr: &mut dyn Observer,
    ) -> usize {
        let c = &self.cfg;
        let w = &self.layers[l];
        let (d, hd, ff) = (c.d, c.head_dim, c.ff);
        let (nh, nkv, qd, kvd) = (c.n_head, c.n_head_kv, c.q_dim(), c.kv_dim());
        let tkv = p + t;
        let lr = Some(l);
        let mut xn = vec![0f32; t * d]; //                                    [T, d]
        let mut q = vec![0f32; t * qd]; //                                    [T, H*hd]
        let mut kk = vec![0f32; t * kvd]; //                                  [T, Hkv*hd]
        let mut vv = vec![0f32; t * kvd]; //                                  [T, Hkv*hd]
        let mut scores = vec![0f32; nh * t * tkv]; //                         [H, T, Tkv]
        let mut ctx = vec![0f32; t * qd]; //                                  [T, H*hd]
        let mut attn = vec![0f32; t * d]; //                                  [T, d]

        // xn = norm(x)
        rms_norm(x, &w.attn_norm, c.rms_eps, &mut xn, k.precision());
        self.emit(tr, lr, Stage::AttnNorm, &mut xn, &[t, d]);

        // q, k, v = xn·Wqᵀ + bq, …
        k.linears(&[&w.wq, &w.wk, &w.wv], &xn, t, &mut [&mut q, &mut kk, &mut vv]);
        add_bias(&mut q, w.bq.as_deref());
        self.emit(tr, lr, Stage::QProj, &mut q, &[t, qd]);
        add_bias(&mut kk, w.bk.as_deref());
        self.emit(tr, lr, Stage::KProj, &mut kk, &[t, kvd]);
        add_bias(&mut vv, w.bv.as_deref());
        self.emit(tr, lr, Stage::VProj, &mut vv, &[t, kvd]);

        // q, k = headwise_norm(q), headwise_norm(k)
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            head_rms_norm(&mut q, qn, c.rms_eps, k.precision());
            self.emit(tr, lr, Stage::QNorm, &mut q, &[t, qd]);
            head_rms_norm(&mut kk, kn, c.rms_eps, k.precision());
            self.emit(tr, lr, Stage::KNorm, &mut kk, &[t, kvd]);
        }

        // q, k = rope(q, pos), rope(k, pos)   (HF rotate-half convention)
        let sliding = c.layer_sliding[l];
        let inv_freq = if sliding { &self.inv_freq_local } else { &self.inv_freq };
        let base = if sliding { c.rope_theta_local } else { c.rope_theta };
        // The fast precision's cos/sin table is the same for q and k.
        let table = (k.precision() == Precision::Fast).then(|| plumb_kernels::mirror::rope_neox_table(t, p, hd, base));
        let rope = |x: &mut [f32], width: usize| match &table {
            None => rope(x, width, hd, p, inv_freq),
            Some(cs) => plumb_kernels::mirror::rope_neox(x, width, hd, cs),
        };
        rope(&mut q, qd);
        self.emit(tr, lr, Stage::QRope, &mut q, &[t, qd]);
        rope(&mut kk, kvd);
        self.emit(tr, lr, Stage::KRope, &mut kk, &[t, kvd]);

        let fast = k.precision() == Precision::Fast;
        cache.k[l].truncate(p * kvd);
        cache.k[l].extend_from_slice(&kk);
        if fast {
            cache.put_v_columns(l, p, &vv);
        } else {
            cache.put_v_rows(l, p, &vv);
        }
        let vt_stride = cache.vt_stride(l);
        let (kc, vc, vt) = (&cache.k[l], &cache.v[l], &cache.vt[l]);

        // scores[h, i, j] = q[i, h]·k[j, h/(H/Hkv)] · scale (then softcap).
        // Future positions are computed only when the trace asks for the
        // pre-mask scores; the mask zeroes their probabilities either way.
        let group = nh / nkv;
        let full = tr.wants(lr, Stage::AttnScores);
        let window = if sliding { c.sliding_window } else { None };
        // The fast precision does attention in llama.cpp's f32 order
        // (plumb_kernels::mirror), and scales where it does: gemma3's
        // queries before Q·Kᵀ, other models' scores after.
        // (q has been traced already and is read only by the scores below,
        // so it is scaled in place.)
        let post_scale = if fast && c.arch == Arch::Gemma3 {
            q.iter_mut().for_each(|v| *v *= c.attn_scale);
            None
        } else {
            Some(c.attn_scale)
        };
        let qs = q.as_slice();
        let dot = plumb_kernels::f32_dot_fn();
        // One token's attention is too small to be worth splitting across threads.
        let min_len = if t * tkv < 4096 { nh } else { 1 };
        scores.par_chunks_mut(t * tkv).with_min_len(min_len).enumerate().for_each(|(h, sh)| {
            let kh = h / group;
            let last = |i: usize| if full { tkv } else { p + i + 1 };
            if fast {
                let lens: Vec<usize> = (0..t).map(last).collect();
                plumb_kernels::mirror::dot_f32_grid(&qs[h * hd..], qd, &kc[kh * hd..], kvd, hd, &lens, sh, tkv);
            }
            for i in 0..t {
                let qi = &qs[i * qd + h * hd..i * qd + (h + 1) * hd];
                let row = &mut sh[i * tkv..(i + 1) * tkv];
                let last = last(i);
                if !fast {
                    for (j, s) in row.iter_mut().enumerate().take(last) {
                        *s = dot(qi, &kc[j * kvd + kh * hd..j * kvd + (kh + 1) * hd]);
                    }
                }
                for s in row.iter_mut().take(last) {
                    let mut v = *s;
                    if let Some(scale) = post_scale {
                        v *= scale;
                    }
                    if let Some(cap) = c.attn_softcap {
                        v = (v / cap).tanh() * cap;
                    }
                    *s = v;
                }
            }
        });
        self.emit(tr, lr, Stage::AttnScores, &mut scores, &[nh, t, tkv]);

        // probs = softmax(scores + causal/sliding mask)
        scores.par_chunks_mut(t * tkv).with_min_len(min_len).for_each(|sh| {
            for i in 0..t {
                let qpos = p + i;
                let row = &mut sh[i * tkv..(i + 1) * tkv];
                let visible = |j: usize| j <= qpos && window.is_none_or(|win| qpos - j < win);
                if fast {
                    // Visible: first..=qpos.
                    let first = window.map_or(0, |win| (qpos + 1).saturating_sub(win));
                    row[..first].fill(f32::NEG_INFINITY);
                    row[qpos + 1..].fill(f32::NEG_INFINITY);
                    plumb_kernels::mirror::softmax_visible(row, qpos + 1);
                } else {
                    softmax_masked(row, visible);
                }
            }
        });
        self.emit(tr, lr, Stage::AttnProbs, &mut scores, &[nh, t, tkv]);

        // ctx[i, h] = Σ_j probs[h, i, j] · v[j, h/(H/Hkv)]   (per head, then interleaved)
        let mut per_head = vec![0f32; nh * t * hd]; //                        [H, T, hd]
                                                    // Fast: each output is a dot product over positions, with V
                                                    // transposed to [Hkv, hd, Tkv] (llama.cpp keeps its V cache so).
                                                    // Positions are padded with zeros to a multiple of 64, as llama.cpp
                                                    // pads its cache; it sums one token's outputs as its dot product
                                                    // does, several tokens' as its tiled matmul does.
        let tpad = tkv.div_ceil(VT_PAD) * VT_PAD;
        per_head.par_chunks_mut(t * hd).with_min_len(min_len).enumerate().for_each(|(h, out)| {
            let kh = h / group;
            if fast && t == 1 {
                let mut probs = vec![0f32; tpad];
                probs[..tkv].copy_from_slice(&scores[h * tkv..(h + 1) * tkv]);
                for (e, o) in out.iter_mut().enumerate() {
                    let col = (kh * hd + e) * vt_stride;
                    *o = plumb_kernels::mirror::dot_f32(&probs, &vt[col..col + tpad]);
                }
                return;
            }
            if fast {
                // Past the last visible position the probabilities are zeros,
                // which leave the 16 lanes as they are: each sum stops at the
                // first multiple of 16 beyond it. The rows are padded to tpad.
                let lens: Vec<usize> = (0..t).map(|i| (p + i + 1).div_ceil(16) * 16).collect();
                let vh = &vt[kh * hd * vt_stride..];
                let sh = &scores[h * t * tkv..(h + 1) * t * tkv];
                if tkv.is_multiple_of(16) {
                    // Every length fits in its row as it is.
                    plumb_kernels::mirror::dot_f32_tiled_grid(sh, tkv, &lens, vh, vt_stride, hd, out, hd);
                } else {
                    let mut probs = vec![0f32; t * tpad];
                    for (i, row) in probs.chunks_exact_mut(tpad).enumerate() {
                        row[..tkv].copy_from_slice(&sh[i * tkv..(i + 1) * tkv]);
                    }
                    plumb_kernels::mirror::dot_f32_tiled_grid(&probs, tpad, &lens, vh, vt_stride, hd, out, hd);
                }
                return;
            }
            for i in 0..t {
                let probs = &scores[(h * t + i) * tkv..(h * t + i + 1) * tkv];
                let o = &mut out[i * hd..(i + 1) * hd];
                for (j, &pr) in probs.iter().enumerate() {
                    if pr == 0.0 {
                        continue;
                    }
                    let vj = &vc[j * kvd + kh * hd..j * kvd + (kh + 1) * hd];
                    for (o, v) in o.iter_mut().zip(vj) {
                        *o += pr * v;
                    }
                }
            }
        });
        for h in 0..nh {
            for i in 0..t {
                ctx[i * qd + h * hd..i * qd + (h + 1) * hd]
                    .copy_from_slice(&per_head[(h * t + i) * hd..(h * t + i + 1) * hd]);
            }
        }
        self.emit(tr, lr, Stage::AttnContext, &mut ctx, &[t, qd]);

        // attn = ctx·Woᵀ (then post-norm)
        k.linear(&w.wo, &ctx, t, &mut attn);
        self.emit(tr, lr, Stage::AttnOut, &mut attn, &[t, d]);
        // From here on only the last token, when asked (the last layer of a
        // step whose earlier positions' logits nobody reads).
        let t = if keep_last && t > 1 {
            attn.drain(..(t - 1) * d);
            x.drain(..(t - 1) * d);
            xn.truncate(d);
            1
        } else {
            t
        };
        let mut gate = vec![0f32; t * ff]; //                                 [T, ff]
        let mut up = vec![0f32; t * ff]; //                                   [T, ff]
        let mut down = vec![0f32; t * d]; //                                  [T, d]
        if let Some(pn) = &w.attn_post_norm {
            let raw = attn.clone();
            rms_norm(&raw, pn, c.rms_eps, &mut attn, k.precision());
            self.emit(tr, lr, Stage::AttnPostNorm, &mut attn, &[t, d]);
        }

        // x = x + attn
        x.iter_mut().zip(&attn).for_each(|(a, b)| *a += b);
        self.emit(tr, lr, Stage::AttnResidual, x, &[t, d]);

        // xn = norm(x); gate, up = xn·Wgateᵀ, xn·Wupᵀ
        rms_norm(x, &w.ffn_norm, c.rms_eps, &mut xn, k.precision());
        self.emit(tr, lr, Stage::FfnNorm, &mut xn, &[t, d]);
        k.linears(&[&w.w_gate, &w.w_up], &xn, t, &mut [&mut gate, &mut up]);
        self.emit(tr, lr, Stage::FfnGate, &mut gate, &[t, ff]);
        self.emit(tr, lr, Stage::FfnUp, &mut up, &[t, ff]);

        // gate = act(gate); gate = gate * up
        // Element-wise, in runs (each element's value is the same).
        for_each_run(&mut gate, PAR_MIN_ELEMS, |_, g| match c.act {
            Activation::Silu => g.iter_mut().for_each(|g| *g = silu(*g)),
            Activation::GeluTanh if k.precision() == Precision::Fast => {
                plumb_kernels::mirror::gelu_by_f16_table(gelu_f16_table(), g)
            }
            Activation::GeluTanh => g.iter_mut().for_each(|g| *g = gelu_tanh(*g)),
        });
        self.emit(tr, lr, Stage::FfnAct, &mut gate, &[t, ff]);
        for_each_run(&mut gate, PAR_MIN_ELEMS, |i, g| {
            let u = &up[i * PAR_MIN_ELEMS..i * PAR_MIN_ELEMS + g.len()];
            g.iter_mut().zip(u).for_each(|(g, u)| *g *= u)
        });
        self.emit(tr, lr, Stage::FfnMul, &mut gate, &[t, ff]);

        // down = gate·Wdownᵀ (then post-norm)
        k.linear(&w.w_down, &gate, t, &mut down);
        self.emit(tr, lr, Stage::FfnDown, &mut down, &[t, d]);
        if let Some(pn) = &w.ffn_post_norm {
            let raw = down.clone();
            rms_norm(&raw, pn, c.rms_eps, &mut down, k.precision());
            self.emit(tr, lr, Stage::FfnPostNorm, &mut down, &[t, d]);
        }

        // x = x + down
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        self.emit(tr, lr, Stage::LayerOut, x, &[t, d]);
        t
    }

    /// logits = norm(x)·Woutᵀ (then softcap), for all T rows or the last.
    pub fn head(&self, k: &dyn Kernels, x: &[f32], t: usize, all_logits: bool, tr: &mut dyn Observer) -> Vec<f32> {
        let c = &self.cfg;
        let d = c.d;
        let mut xn = vec![0f32; t * d];
        rms_norm(x, &self.final_norm, c.rms_eps, &mut xn, k.precision());
        self.emit(tr, None, Stage::FinalNorm, &mut xn, &[t, d]);
        let (rows, from) = if all_logits { (t, 0) } else { (1, t - 1) };
        let mut logits = vec![0f32; rows * c.vocab];
        k.linear(&self.output, &xn[from * d..], rows, &mut logits);
        if let Some(cap) = c.final_softcap {
            logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
        }
        self.emit(tr, None, Stage::Logits, &mut logits, &[rows, c.vocab]);
        logits
    }
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

/// y = x / sqrt(mean(x²) + eps) · w, row by row; the mean in f64.
///
/// The fast precision rounds as llama.cpp's CPU backend does: squares in
/// f32 summed in f64, then the mean, the epsilon and the scale in f32.
/// y = x / rms(x) · w, row by row (rows of w.len()).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], p: Precision) {
    let n = w.len();
    // Four rows at a time (rows are independent: the numbers do not depend
    // on the split).
    for_each_run(y, 4 * n, |i, yg| {
        let xg = &x[i * 4 * n..i * 4 * n + yg.len()];
        let r = rms_scales(xg, n, eps, p);
        for ((xr, yr), r) in xg.chunks_exact(n).zip(yg.chunks_exact_mut(n)).zip(r) {
            for ((o, v), g) in yr.iter_mut().zip(xr).zip(w) {
                *o = (v * r) * g;
            }
        }
    });
}

/// Element-wise work below this many elements stays on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 14;

/// `f(i, run i)` over the runs of `run` elements of `y`: on this thread
/// when `y` is small (a decoding step is not worth the hand-over), on all
/// threads otherwise. The runs are the same either way, so are the numbers.
fn for_each_run(y: &mut [f32], run: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if y.len() < PAR_MIN_ELEMS {
        y.chunks_mut(run).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        y.par_chunks_mut(run).enumerate().with_min_len(4).for_each(|(i, r)| f(i, r));
    }
}

/// [`rms_norm`] of each head (rows of w.len()), in place.
fn head_rms_norm(x: &mut [f32], w: &[f32], eps: f32, p: Precision) {
    let n = w.len();
    for_each_run(x, 4 * n, |_, xg| {
        let r = rms_scales(xg, n, eps, p);
        for (xr, r) in xg.chunks_exact_mut(n).zip(r) {
            for (v, g) in xr.iter_mut().zip(w) {
                *v = (*v * r) * g;
            }
        }
    });
}

/// 1 / rms of up to four rows of n, each summed in order (f64, as llama.cpp
/// sums them in the fast precision); the four sums advance together so
/// their additions overlap instead of waiting on one another.
fn rms_scales(xg: &[f32], n: usize, eps: f32, p: Precision) -> [f32; 4] {
    let rows = xg.len() / n;
    let mut sum = [0f64; 4];
    let row = |r: usize| &xg[r.min(rows - 1) * n..(r.min(rows - 1) + 1) * n];
    let (a, b, c, d) = (row(0), row(1), row(2), row(3));
    for i in 0..n {
        let v = [a[i], b[i], c[i], d[i]];
        for (s, v) in sum.iter_mut().zip(v) {
            *s += match p {
                Precision::Exact => (v as f64) * (v as f64),
                Precision::Fast => (v * v) as f64,
            };
        }
    }
    sum.map(|s| match p {
        Precision::Exact => (1.0 / (s / n as f64 + eps as f64).sqrt()) as f32,
        Precision::Fast => 1.0 / ((s / n as f64) as f32 + eps).sqrt(),
    })
}

fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// Rotate-half rotary embedding on x [T, width]: within each head of hd,
/// element i pairs with i + hd/2 at angle pos · inv_freq[i], pos = p0 + row.
fn rope(x: &mut [f32], width: usize, hd: usize, p0: usize, inv_freq: &[f32]) {
    let half = hd / 2;
    for (ti, row) in x.chunks_exact_mut(width).enumerate() {
        let pos = (p0 + ti) as f32;
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let (sin, cos) = (pos * inv_freq[i]).sin_cos();
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos - b * sin;
                head[i + half] = b * cos + a * sin;
            }
        }
    }
}

/// The rotary embedding of the fast precision, rounded as llama.cpp's CPU
/// backend rounds it: the angle of pair i is pos·θ^i with θ = base^(−2/hd),
/// made by repeated multiplication in f32, and each rotation is two fused
/// multiply-adds (a·cos − b·sin as fma(a, cos, −b·sin)).
/// In-place softmax over the visible positions; hidden ones become 0.
fn softmax_masked(row: &mut [f32], visible: impl Fn(usize) -> bool) {
    let mut max = f32::NEG_INFINITY;
    for (j, v) in row.iter().enumerate() {
        if visible(j) && *v > max {
            max = *v;
        }
    }
    let mut sum = 0f64;
    for (j, v) in row.iter_mut().enumerate() {
        if visible(j) {
            *v = (*v - max).exp();
            sum += *v as f64;
        } else {
            *v = 0.0;
        }
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The fast precision's GELU table, as llama.cpp's CPU backend makes it: by
/// f16 bit pattern, the f16-rounded 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))
/// (looked up by `plumb_kernels::mirror::gelu_by_f16_table`), made once.
fn gelu_f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16_to_f32(bits.to_le_bytes());
                // 1 + a·x·x is one fused multiply-add in llama.cpp's build.
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (0.044715 * x).mul_add(x, 1.0)).tanh());
                f16_to_f32(f32_to_f16(y))
            })
            .collect()
    })
}

/// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
#[inline]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v_cache_holds_the_same_values_in_either_layout() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/llama/llama-q8_0.gguf");
        let m = Model::load(&path).unwrap();
        let kvd = m.cfg.kv_dim();
        let rows = |n: usize, seed: f32| -> Vec<f32> { (0..n * kvd).map(|i| (i as f32 * 0.37 + seed).sin()).collect() };
        let (a, b, d) = (rows(3, 0.0), rows(2, 1.0), rows(70, 2.0));
        let columns = |c: &KvCache, n: usize| -> Vec<f32> {
            let stride = c.vt_stride(0);
            (0..n * kvd).map(|i| c.vt[0][(i % kvd) * stride + i / kvd]).collect()
        };
        let zeros_past =
            |c: &KvCache, n: usize| c.vt[0].chunks(c.vt_stride(0)).all(|col| col[n..].iter().all(|v| *v == 0.0));
        let mut c = KvCache::new(&m.cfg, 5);
        // Rows (exact), then columns (fast): converted, then appended.
        c.put_v_rows(0, 0, &a);
        c.put_v_columns(0, 3, &b);
        let ab: Vec<f32> = a.iter().chain(&b).copied().collect();
        assert_eq!(columns(&c, 5), ab);
        assert!(zeros_past(&c, 5) && c.v[0].is_empty());
        // Rewriting from position 2 drops what followed: zeros again.
        c.put_v_columns(0, 2, &b[..kvd]);
        assert_eq!(columns(&c, 3), [&ab[..2 * kvd], &b[..kvd]].concat());
        assert!(zeros_past(&c, 3));
        // Back to rows, and to columns again: nothing of the first columns
        // is left past the new end.
        c.put_v_rows(0, 3, &a[..kvd]);
        assert_eq!(c.v[0], [&ab[..2 * kvd], &b[..kvd], &a[..kvd]].concat());
        c.put_v_columns(0, 1, &b[kvd..]);
        assert_eq!(columns(&c, 2), [&ab[..kvd], &b[kvd..]].concat());
        assert!(zeros_past(&c, 2));
        // More positions than the capacity: a wider layout.
        c.put_v_columns(0, 0, &d);
        assert!(c.vt_stride(0) >= 70);
        assert_eq!(columns(&c, 70), d);
        assert!(zeros_past(&c, 70));
    }

    #[test]
    fn table_gelu_is_the_f16_rounded_formula_on_the_f16_rounded_input() {
        let gelu_by_table = |x: f32| {
            let mut v = [x];
            plumb_kernels::mirror::gelu_by_f16_table(gelu_f16_table(), &mut v);
            v[0]
        };
        assert_eq!(gelu_by_table(-10.0), 0.0);
        assert_eq!(gelu_by_table(12.5), 12.5);
        for x in [-3.7f32, -0.3, 0.0, 0.1234, 1.0, 2.5, 9.99] {
            let xh = f16_to_f32(f32_to_f16(x));
            let want = f16_to_f32(f32_to_f16(gelu_tanh(xh)));
            let got = gelu_by_table(x);
            // The two arrangements of the cubic differ in the last bit of
            // f32 at most, which f16 rounding hides except at a tie.
            assert!((got - want).abs() <= f32::EPSILON * 8.0 * want.abs().max(1.0), "{x}: {got} vs {want}");
            assert_eq!(f16_to_f32(f32_to_f16(got)), got, "results are f16 values");
        }
    }
}
