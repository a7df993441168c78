//! The operations of a decoder layer other than the linear layers — norm,
//! rotary embedding, activation — as each precision computes them.
//!
//! The forward pass calls these through [`Ops`] (a supertrait of
//! [`crate::Kernels`]) and never asks which precision it runs: the exact
//! precision computes the textbook formulas (sums in f64, `sin_cos` of each
//! angle), the fast one rounds as llama.cpp's CPU backend does
//! ([`crate::mirror`]). Attention has its own module ([`crate::attention`]).
//!
//! Element-wise work is split across threads only above [`PAR_MIN_ELEMS`]
//! elements, in fixed runs, so the numbers never depend on the thread count.

use plumb_quant::blocks::{f16_to_f32, round_f16};
use rayon::prelude::*;

use crate::fast::FastKernels;
use crate::{ExactKernels, Precision};

/// The non-linearity of a gated FFN: gate = act(x·Wgateᵀ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x·sigmoid(x) (llama, qwen).
    Silu,
    /// tanh approximation of GELU (gemma).
    GeluTanh,
}

/// How a model stretches its rotary frequencies for contexts longer than
/// it was trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every frequency divided by the factor (positions interpolated).
    Linear {
        factor: f32,
    },
    /// Pair i's frequency divided by its own factor (llama 3's scaling,
    /// which GGUF files carry as the `rope_freqs` tensor), [hd/2].
    PerPair {
        factors: Vec<f32>,
    },
    /// YaRN: pairs that turn fewer than `beta_slow` times over the trained
    /// context `orig_ctx` are interpolated (divided by `factor`), those that
    /// turn more than `beta_fast` times kept, a linear ramp between; cos and
    /// sin are multiplied by `attn_factor` (1 + 0.1·ln factor by default).
    Yarn {
        factor: f32,
        orig_ctx: usize,
        beta_fast: f32,
        beta_slow: f32,
        attn_factor: f32,
    },
    /// LongRoPE (phi3's long-context variants): pair i's frequency divided
    /// by `short[i]` while the context stays within the trained `orig_ctx`
    /// positions, by `long[i]` past it; cos and sin multiplied by
    /// `attn_factor` either way. Which context decides is the engine's:
    /// [`RopeSpan`].
    LongRope {
        short: Vec<f32>,
        long: Vec<f32>,
        orig_ctx: usize,
        attn_factor: f32,
    },
}

/// The extent of the sequence a forward step belongs to, which decides
/// LongRoPE's factor set: transformers takes the long set when the step's
/// last position is past the trained context (so a prompt within it keeps
/// the short set in its cached keys while later steps turn long), llama.cpp
/// when its context size — the cache's, padded to 256 — is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeSpan {
    /// One past the step's last position.
    pub end: usize,
    /// Positions the cache was made for.
    pub ctx: usize,
}

impl RopeSpan {
    /// A step that is the whole sequence: positions 0 .. n.
    pub fn whole(n: usize) -> RopeSpan {
        RopeSpan { end: n, ctx: n }
    }
}

impl RopeScaling {
    /// "none", "linear ×8", "per pair (llama 3)".
    pub fn describe(&self) -> String {
        match self {
            RopeScaling::None => "none".into(),
            RopeScaling::Linear { factor } => format!("linear ×{factor}"),
            RopeScaling::PerPair { .. } => "per-pair factors (llama 3)".into(),
            RopeScaling::Yarn { factor, orig_ctx, .. } => format!("yarn ×{factor} (trained context {orig_ctx})"),
            RopeScaling::LongRope { orig_ctx, attn_factor, .. } => {
                format!("longrope, short and long factors (trained context {orig_ctx}, attention ×{attn_factor})")
            }
        }
    }

    /// Whether LongRoPE takes its long factors for a context of `n`
    /// positions: past the trained context (never without LongRoPE).
    pub fn long_set(&self, n: usize) -> bool {
        matches!(self, RopeScaling::LongRope { orig_ctx, .. } if n > *orig_ctx)
    }

    /// YaRN's first and last pair of the ramp between extrapolated and
    /// interpolated frequencies (both engines round them outward): the
    /// pairs that turn `beta_fast` and `beta_slow` times over the trained
    /// context.
    pub fn yarn_ramp(hd: usize, base: f32, orig_ctx: usize, beta_fast: f32, beta_slow: f32) -> (f32, f32) {
        let dim =
            |turns: f32| hd as f32 * (orig_ctx as f32 / (turns * 2.0 * std::f32::consts::PI)).ln() / (2.0 * base.ln());
        (dim(beta_fast).floor().max(0.0), dim(beta_slow).ceil().min(hd as f32 - 1.0))
    }

    /// YaRN's share of pair i's extrapolated frequency: 1 below the ramp, 0
    /// above it.
    pub fn yarn_extrapolated(i: usize, (low, high): (f32, f32)) -> f32 {
        let y = (i as f32 - low) / (high - low).max(0.001);
        1.0 - y.clamp(0.0, 1.0)
    }
}

/// A rotary embedding's frequencies, settled at load: pair i of a head of
/// `hd` turns by pos · base^(−2i/hd), divided by the scaling's factor.
#[derive(Debug, Clone)]
pub struct Rotary {
    pub base: f32,
    pub hd: usize,
    pub scaling: RopeScaling,
    /// base^(−2i/hd) / factor in f32, as transformers computes it, [hd/2]
    /// (LongRoPE: with the short factors).
    pub inv_freq: Vec<f32>,
    /// LongRoPE's frequencies with the long factors; empty otherwise.
    pub inv_freq_long: Vec<f32>,
    /// What cos and sin are multiplied by (YaRN's attention factor; 1).
    pub mscale: f32,
}

impl Rotary {
    pub fn new(base: f32, hd: usize, scaling: RopeScaling) -> Rotary {
        // transformers: base^(arange(0, hd, 2) / hd), in f32; each kind's
        // frequencies from it as transformers computes them.
        let pos = |i: usize| base.powf((2 * i) as f32 / hd as f32);
        let pairs = 0..hd / 2;
        let per_pair = |f: &dyn Fn(usize) -> f32| -> Vec<f32> { pairs.clone().map(f).collect() };
        let (inv_freq, inv_freq_long, mscale) = match &scaling {
            RopeScaling::None => (per_pair(&|i| 1.0 / pos(i)), Vec::new(), 1.0),
            RopeScaling::Linear { factor } => (per_pair(&|i| 1.0 / pos(i) / factor), Vec::new(), 1.0),
            RopeScaling::PerPair { factors } => {
                assert_eq!(factors.len(), hd / 2, "one rope factor per pair");
                (per_pair(&|i| 1.0 / pos(i) / factors[i]), Vec::new(), 1.0)
            }
            &RopeScaling::Yarn { factor, orig_ctx, beta_fast, beta_slow, attn_factor } => {
                // interpolated · (1 − e) + extrapolated · e.
                let ramp = RopeScaling::yarn_ramp(hd, base, orig_ctx, beta_fast, beta_slow);
                let blend = |i: usize| {
                    let e = RopeScaling::yarn_extrapolated(i, ramp);
                    1.0 / (factor * pos(i)) * (1.0 - e) + 1.0 / pos(i) * e
                };
                (per_pair(&blend), Vec::new(), attn_factor)
            }
            RopeScaling::LongRope { short, long, attn_factor, .. } => {
                assert!(short.len() == hd / 2 && long.len() == hd / 2, "one longrope factor per pair");
                // 1 / (factor · base^(2i/hd)), each set.
                (per_pair(&|i| 1.0 / (short[i] * pos(i))), per_pair(&|i| 1.0 / (long[i] * pos(i))), *attn_factor)
            }
        };
        Rotary { base, hd, scaling, inv_freq, inv_freq_long, mscale }
    }

    /// The frequencies for a context of `n` positions ([`RopeScaling::long_set`]).
    pub fn inv_freq_for(&self, n: usize) -> &[f32] {
        if self.scaling.long_set(n) {
            &self.inv_freq_long
        } else {
            &self.inv_freq
        }
    }
}

/// (cos, sin) of every pair's angle for `t` positions from `p0`, [T, hd/2]:
/// made once per layer and step, used for both q and k.
pub type Angles = Vec<(f32, f32)>;

/// Norms, rotary embedding and activations of one precision.
pub trait Ops {
    /// y = x / rms(x) · w, row by row (rows of `w.len()`).
    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, y: &mut [f32]);
    /// [`Ops::rms_norm`] in place (q and k, head by head).
    fn rms_norm_in_place(&self, x: &mut [f32], w: &[f32], eps: f32);
    /// The rotary angles of positions p0 .. p0+t, of a step in `span`.
    fn rope_angles(&self, rot: &Rotary, p0: usize, t: usize, span: RopeSpan) -> Angles;
    /// Rotate-half rotary embedding of x [T, width] (heads of `hd`) by
    /// `angles`: element i pairs with i + hd/2.
    fn rope(&self, x: &mut [f32], width: usize, hd: usize, angles: &Angles);
    /// g = act(g), element-wise, on rows of `width` (the FFN's width: the
    /// fast precision's SiLU, like llama.cpp's, treats each row's last
    /// few elements apart).
    fn activation(&self, act: Activation, g: &mut [f32], width: usize);
    /// Softmax of each row of `width` in place (a mixture of experts'
    /// router: a few to a few hundred values a row, nothing masked).
    fn softmax_rows(&self, x: &mut [f32], width: usize);
    /// The logistic sigmoid 1 / (1 + e⁻ˣ), element-wise (a shared expert's
    /// gate).
    fn sigmoid(&self, x: &mut [f32]);
}

impl Ops for ExactKernels {
    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        rms_norm(x, w, eps, y, Precision::Exact)
    }

    fn rms_norm_in_place(&self, x: &mut [f32], w: &[f32], eps: f32) {
        rms_norm_in_place(x, w, eps, Precision::Exact)
    }

    /// LongRoPE's factor set by the step's end, as transformers picks it.
    fn rope_angles(&self, rot: &Rotary, p0: usize, t: usize, span: RopeSpan) -> Angles {
        let inv_freq = rot.inv_freq_for(span.end);
        let mut cs = Vec::with_capacity(t * inv_freq.len());
        for ti in 0..t {
            let pos = (p0 + ti) as f32;
            cs.extend(inv_freq.iter().map(|f| {
                let (sin, cos) = (pos * f).sin_cos();
                if rot.mscale == 1.0 {
                    (cos, sin)
                } else {
                    (cos * rot.mscale, sin * rot.mscale)
                }
            }));
        }
        cs
    }

    fn rope(&self, x: &mut [f32], width: usize, hd: usize, angles: &Angles) {
        let half = hd / 2;
        for (row, cs) in x.chunks_exact_mut(width).zip(angles.chunks(half.max(1))) {
            for head in row.chunks_exact_mut(hd) {
                let (lo, hi) = head.split_at_mut(half);
                for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
                    let (x0, x1) = (*a, *b);
                    *a = x0 * cos - x1 * sin;
                    *b = x1 * cos + x0 * sin;
                }
            }
        }
    }

    fn activation(&self, act: Activation, g: &mut [f32], _width: usize) {
        for_each_run(g, PAR_MIN_ELEMS, |_, g| match act {
            Activation::Silu => g.iter_mut().for_each(|g| *g = silu(*g)),
            Activation::GeluTanh => g.iter_mut().for_each(|g| *g = gelu_tanh(*g)),
        });
    }

    /// In f64, each value rounded once.
    fn softmax_rows(&self, x: &mut [f32], width: usize) {
        for row in x.chunks_exact_mut(width) {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            row.iter_mut().zip(&e).for_each(|(r, e)| *r = (e / sum) as f32);
        }
    }

    fn sigmoid(&self, x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = (1.0 / (1.0 + (-*v as f64).exp())) as f32);
    }
}

impl Ops for FastKernels {
    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        rms_norm(x, w, eps, y, Precision::Fast)
    }

    fn rms_norm_in_place(&self, x: &mut [f32], w: &[f32], eps: f32) {
        rms_norm_in_place(x, w, eps, Precision::Fast)
    }

    /// LongRoPE's factor set by the context size, as llama.cpp picks it
    /// (its contexts come in multiples of 256 positions).
    fn rope_angles(&self, rot: &Rotary, p0: usize, t: usize, span: RopeSpan) -> Angles {
        let long = rot.scaling.long_set(span.ctx.max(1).div_ceil(256) * 256);
        crate::mirror::rope_neox_table(t, p0, rot, long)
    }

    fn rope(&self, x: &mut [f32], width: usize, hd: usize, angles: &Angles) {
        crate::mirror::rope_neox(x, width, hd, angles)
    }

    fn activation(&self, act: Activation, g: &mut [f32], width: usize) {
        match act {
            Activation::Silu => {
                let lanes = crate::mirror::SiluLanes::of(self.path);
                if g.len() < PAR_MIN_ELEMS {
                    g.chunks_mut(width).for_each(|row| crate::mirror::silu_row(lanes, row));
                } else {
                    g.par_chunks_mut(width).for_each(|row| crate::mirror::silu_row(lanes, row));
                }
            }
            Activation::GeluTanh => {
                for_each_run(g, PAR_MIN_ELEMS, |_, g| crate::mirror::gelu_by_f16_table(gelu_f16_table(), g))
            }
        }
    }

    /// As llama.cpp's soft_max op on a row that fills no KV padding.
    fn softmax_rows(&self, x: &mut [f32], width: usize) {
        let lanes = crate::mirror::SiluLanes::of(self.path);
        x.chunks_exact_mut(width).for_each(|row| crate::mirror::softmax_row(lanes, row));
    }

    /// As llama.cpp's qwen2moe graph computes it: silu(x) / x, each a row
    /// of one (so by the C library's e^x).
    fn sigmoid(&self, x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = silu(*v) / *v);
    }
}

/// gate = gate · up, element-wise (the same numbers in any split).
pub fn mul_in_place(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len());
    for_each_run(gate, PAR_MIN_ELEMS, |i, g| {
        let u = &up[i * PAR_MIN_ELEMS..i * PAR_MIN_ELEMS + g.len()];
        g.iter_mut().zip(u).for_each(|(g, u)| *g *= u)
    });
}

/// x = x + y, element-wise.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// x = x + b for each row of x (rows of `b.len()`), where there is a bias.
pub fn add_bias(x: &mut [f32], b: Option<&[f32]>) {
    if let Some(b) = b {
        for row in x.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// x = tanh(x / cap) · cap, element-wise, where there is a cap. The exact
/// precision divides (transformers); the fast one multiplies by the
/// rounded reciprocal, as llama.cpp's graph scales by 1/cap.
pub fn softcap(x: &mut [f32], cap: Option<f32>, precision: Precision) {
    match (cap, precision) {
        (None, _) => {}
        (Some(cap), Precision::Exact) => x.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap),
        (Some(cap), Precision::Fast) => {
            let inv = 1.0 / cap;
            x.iter_mut().for_each(|v| *v = (*v * inv).tanh() * cap)
        }
    }
}

/// Element-wise work below this many elements stays on the calling thread.
pub const PAR_MIN_ELEMS: usize = 1 << 14;

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

/// y = x / rms(x) · w, row by row (rows of w.len()), four rows at a time
/// (rows are independent: the numbers do not depend on the split).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], p: Precision) {
    let n = w.len();
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

/// [`rms_norm`] in place.
fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32, p: Precision) {
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

/// 1 / rms of up to four rows of n, each summed in order; the four sums
/// advance together so their additions overlap instead of waiting on one
/// another. Exact: squares and mean in f64. Fast, as llama.cpp's CPU
/// backend rounds: squares in f32 summed in f64, then the mean, the epsilon
/// and the scale in f32.
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

/// x·sigmoid(x) = x / (1 + e^−x), with the C library's e^x.
#[inline]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
#[inline]
fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// The fast precision's GELU table, as llama.cpp's CPU backend makes it: by
/// f16 bit pattern, the f16-rounded 0.5·x·(1 + tanh(√(2/π)·x·(1 + 0.044715·x²)))
/// (looked up by [`crate::mirror::gelu_by_f16_table`]), made once.
fn gelu_f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        (0..=u16::MAX)
            .map(|bits| {
                let x = f16_to_f32(bits.to_le_bytes());
                // 1 + a·x·x is one fused multiply-add in llama.cpp's build.
                let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (0.044715 * x).mul_add(x, 1.0)).tanh());
                round_f16(y)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_gelu_is_the_f16_rounded_formula_on_the_f16_rounded_input() {
        let gelu_by_table = |x: f32| {
            let mut v = [x];
            crate::mirror::gelu_by_f16_table(gelu_f16_table(), &mut v);
            v[0]
        };
        assert_eq!(gelu_by_table(-10.0), 0.0);
        assert_eq!(gelu_by_table(12.5), 12.5);
        for x in [-3.7f32, -0.3, 0.0, 0.1234, 1.0, 2.5, 9.99] {
            let xh = round_f16(x);
            let want = round_f16(gelu_tanh(xh));
            let got = gelu_by_table(x);
            // The two arrangements of the cubic differ in the last bit of
            // f32 at most, which f16 rounding hides except at a tie.
            assert!((got - want).abs() <= f32::EPSILON * 8.0 * want.abs().max(1.0), "{x}: {got} vs {want}");
            assert_eq!(round_f16(got), got, "results are f16 values");
        }
    }

    #[test]
    fn both_precisions_rotate_by_the_same_angles_to_within_rounding() {
        let rot = Rotary::new(10_000.0, 8, RopeScaling::None);
        let (e, f) =
            (ExactKernels { path: crate::KernelPath::Scalar }, FastKernels { path: crate::KernelPath::Scalar });
        let (ae, af) = (e.rope_angles(&rot, 5, 3, RopeSpan::whole(8)), f.rope_angles(&rot, 5, 3, RopeSpan::whole(8)));
        assert_eq!(ae.len(), 12);
        for (a, b) in ae.iter().zip(&af) {
            assert!((a.0 - b.0).abs() < 1e-5 && (a.1 - b.1).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        // Position 0 is the identity.
        let mut x: Vec<f32> = (0..8).map(|i| i as f32).collect();
        e.rope(&mut x, 8, 8, &e.rope_angles(&rot, 0, 1, RopeSpan::whole(1)));
        assert_eq!(x, (0..8).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn longrope_takes_its_long_factors_past_the_trained_context_each_engine_by_its_own_measure() {
        let (short, long) = (vec![1.0, 1.5], vec![2.0, 8.0]);
        let scaling =
            RopeScaling::LongRope { short: short.clone(), long: long.clone(), orig_ctx: 300, attn_factor: 1.25 };
        let rot = Rotary::new(10_000.0, 4, scaling);
        let (e, f) =
            (ExactKernels { path: crate::KernelPath::Scalar }, FastKernels { path: crate::KernelPath::Scalar });
        // The angle of pair 1 at position 7 with factor f, and the scaled cos.
        let want = |f: f32| {
            let a = 7.0 / (f * 100.0);
            (a.cos() * 1.25, a.sin() * 1.25)
        };
        let near = |got: (f32, f32), w: (f32, f32)| (got.0 - w.0).abs() < 1e-6 && (got.1 - w.1).abs() < 1e-6;
        // Exact (transformers): by the step's end; the cache size is no matter.
        let short_step = e.rope_angles(&rot, 7, 1, RopeSpan { end: 300, ctx: 4096 });
        assert!(near(short_step[1], want(short[1])), "{:?}", short_step[1]);
        let long_step = e.rope_angles(&rot, 7, 1, RopeSpan { end: 301, ctx: 301 });
        assert!(near(long_step[1], want(long[1])), "{:?}", long_step[1]);
        // Fast (llama.cpp): by the context, in multiples of 256 — 300
        // positions are a context of 512, past the trained 300.
        let small = f.rope_angles(&rot, 7, 1, RopeSpan { end: 8, ctx: 256 });
        assert!(near(small[1], want(short[1])), "{:?}", small[1]);
        let padded = f.rope_angles(&rot, 7, 1, RopeSpan { end: 8, ctx: 257 });
        assert!(near(padded[1], want(long[1])), "{:?}", padded[1]);
    }
}
