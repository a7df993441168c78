//! Fault injection: one deliberate perturbation of one stage, so that the
//! diff and bisect tools can be shown to name exactly the stage at fault.
//!
//! Syntax: `STAGE@LAYER:KIND`, e.g. `ffn_gate@3:scale=1.5`,
//! `q_rope@0:permute-rope`, `embedding:noise=0.1`. Kinds:
//! `scale=F`, `noise=S` (Gaussian, S × the tensor's std, fixed seed),
//! `zero-head=H`, `swap-heads=A,B`, `permute-rope` (rotate-half pairs laid
//! out interleaved, the classic llama GGUF conversion bug), `off-by-one`
//! (every token takes the previous token's row), `bump=T,F,V` (V added to
//! token T's feature F only: one router logit, say, to flip one token's
//! experts).

use plumb_trace::stage::{parse_key, Stage};

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    Scale(f32),
    Noise(f32),
    ZeroHead(usize),
    SwapHeads(usize, usize),
    PermuteRope,
    OffByOne,
    Bump { token: usize, feature: usize, by: f32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub stage: Stage,
    pub layer: Option<usize>,
    pub kind: FaultKind,
    /// Width of one head in the perturbed tensor's feature axis.
    pub head_dim: usize,
}

impl Fault {
    /// Parses `STAGE@LAYER:KIND` (`STAGE:KIND` for global stages).
    pub fn parse(spec: &str, head_dim: usize) -> Result<Fault, String> {
        let (target, kind) =
            spec.split_once(':').ok_or_else(|| format!("--inject {spec:?}: expected STAGE@LAYER:KIND"))?;
        let key = match target.split_once('@') {
            Some((s, l)) => format!("blk.{l}.{s}"),
            None => target.to_string(),
        };
        let (stage, layer) =
            parse_key(&key).ok_or_else(|| format!("--inject {spec:?}: {target:?} is not a stage@layer"))?;
        let (name, arg) = kind.split_once('=').unwrap_or((kind, ""));
        let num = |a: &str| a.parse::<f32>().map_err(|_| format!("--inject {spec:?}: {a:?} is not a number"));
        let idx = |a: &str| a.parse::<usize>().map_err(|_| format!("--inject {spec:?}: {a:?} is not a head index"));
        let kind = match name {
            "scale" => FaultKind::Scale(if arg.is_empty() { 1.5 } else { num(arg)? }),
            "noise" => FaultKind::Noise(if arg.is_empty() { 0.1 } else { num(arg)? }),
            "zero-head" => FaultKind::ZeroHead(if arg.is_empty() { 0 } else { idx(arg)? }),
            "swap-heads" => {
                let (a, b) = arg.split_once(',').unwrap_or(("0", "1"));
                FaultKind::SwapHeads(idx(a)?, idx(b)?)
            }
            "permute-rope" => FaultKind::PermuteRope,
            "bump" => {
                let parts: Vec<&str> = arg.split(',').collect();
                let [t, f, v] = parts[..] else {
                    return Err(format!("--inject {spec:?}: bump takes TOKEN,FEATURE,VALUE"));
                };
                FaultKind::Bump { token: idx(t)?, feature: idx(f)?, by: num(v)? }
            }
            "off-by-one" => FaultKind::OffByOne,
            other => {
                return Err(format!(
                    "--inject {spec:?}: unknown kind {other:?} (scale=F, noise=S, zero-head=H, swap-heads=A,B, permute-rope, off-by-one, bump=T,F,V)"
                ))
            }
        };
        Ok(Fault { stage, layer, kind, head_dim })
    }

    /// Perturbs `data` (row-major `shape`) in place.
    pub fn apply(&self, data: &mut [f32], shape: &[usize]) {
        let width = *shape.last().unwrap_or(&1);
        // Attention matrices [H, T, Tkv] have heads on axis 0; everything
        // else has features on the last axis, cut into heads of head_dim.
        let attn = shape.len() == 3;
        let hd = if attn { data.len() / shape[0].max(1) } else { self.head_dim.min(width).max(1) };
        match self.kind {
            FaultKind::Scale(f) => data.iter_mut().for_each(|v| *v *= f),
            FaultKind::Noise(s) => {
                let n = data.len().max(1) as f64;
                let mean = data.iter().map(|&v| v as f64).sum::<f64>() / n;
                let std = (data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt() as f32;
                let mut state = 0x9E37_79B9_7F4A_7C15u64;
                for v in data.iter_mut() {
                    // xorshift64* → two uniforms → Box–Muller.
                    let mut next = || {
                        state ^= state >> 12;
                        state ^= state << 25;
                        state ^= state >> 27;
                        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
                    };
                    let (u1, u2) = (next(), next());
                    let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    *v += s * std * g as f32;
                }
            }
            FaultKind::ZeroHead(h) => {
                for_each_head(data, width, hd, attn, |head, i| {
                    if i == h {
                        head.iter_mut().for_each(|v| *v = 0.0)
                    }
                });
            }
            FaultKind::SwapHeads(a, b) => {
                if attn {
                    if a.max(b) * hd < data.len() && a != b {
                        let (lo, hi) = (a.min(b), a.max(b));
                        let (x, y) = data.split_at_mut(hi * hd);
                        x[lo * hd..(lo + 1) * hd].swap_with_slice(&mut y[..hd]);
                    }
                } else {
                    for row in data.chunks_exact_mut(width) {
                        if a.max(b) * hd < width && a != b {
                            let (lo, hi) = (a.min(b), a.max(b));
                            let (x, y) = row.split_at_mut(hi * hd);
                            x[lo * hd..(lo + 1) * hd].swap_with_slice(&mut y[..hd]);
                        }
                    }
                }
            }
            FaultKind::Bump { token, feature, by } => {
                // [T, …] rows of `width`; attention matrices are [H, T, Tkv]:
                // the feature indexes head·Tkv + key, as the diff reports it.
                let (t, row) = if attn { (shape[1], shape[2]) } else { (data.len() / width, width) };
                let (h, f) = (feature / row, feature % row);
                if token < t && (attn || h == 0) {
                    if let Some(v) = data.get_mut((h * t + token) * row + f) {
                        *v += by;
                    }
                }
            }
            FaultKind::PermuteRope => {
                for_each_head(data, width, hd, attn, |head, _| {
                    let half = head.len() / 2;
                    let src = head.to_vec();
                    for i in 0..half {
                        head[2 * i] = src[i];
                        head[2 * i + 1] = src[i + half];
                    }
                });
            }
            FaultKind::OffByOne => {
                if attn {
                    // Shift along the token axis within each head.
                    let t = shape[1];
                    let row = shape[2];
                    for head in data.chunks_exact_mut(t * row) {
                        for i in (1..t).rev() {
                            let (x, y) = head.split_at_mut(i * row);
                            y[..row].copy_from_slice(&x[(i - 1) * row..]);
                        }
                    }
                } else {
                    let t = data.len() / width;
                    for i in (1..t).rev() {
                        let (x, y) = data.split_at_mut(i * width);
                        y[..width].copy_from_slice(&x[(i - 1) * width..]);
                    }
                }
            }
        }
    }
}

/// Calls `f(head_slice, head_index)` for every head of every row.
fn for_each_head(data: &mut [f32], width: usize, hd: usize, attn: bool, mut f: impl FnMut(&mut [f32], usize)) {
    if attn {
        for (i, head) in data.chunks_exact_mut(hd).enumerate() {
            f(head, i);
        }
    } else {
        for row in data.chunks_exact_mut(width) {
            for (i, head) in row.chunks_exact_mut(hd).enumerate() {
                f(head, i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_applies() {
        let f = Fault::parse("ffn_gate@3:scale=2", 4).unwrap();
        assert_eq!((f.stage, f.layer), (Stage::FfnGate, Some(3)));
        let mut d = vec![1.0, 2.0];
        f.apply(&mut d, &[1, 2]);
        assert_eq!(d, vec![2.0, 4.0]);
        assert!(Fault::parse("embedding:noise=0.5", 4).is_ok());
        assert!(Fault::parse("bogus@1:scale", 4).is_err());
        assert!(Fault::parse("ffn_gate@1:melt", 4).is_err());

        let p = Fault::parse("q_rope@0:permute-rope", 4).unwrap();
        let mut d: Vec<f32> = (0..8).map(|i| i as f32).collect();
        p.apply(&mut d, &[1, 8]);
        assert_eq!(d, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);

        let s = Fault::parse("q_proj@0:swap-heads=0,1", 2).unwrap();
        let mut d = vec![1.0, 2.0, 3.0, 4.0];
        s.apply(&mut d, &[1, 4]);
        assert_eq!(d, vec![3.0, 4.0, 1.0, 2.0]);

        let o = Fault::parse("attn_norm@0:off-by-one", 2).unwrap();
        let mut d = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        o.apply(&mut d, &[3, 2]);
        assert_eq!(d, vec![1.0, 2.0, 1.0, 2.0, 3.0, 4.0]);

        let z = Fault::parse("attn_probs@0:zero-head=1", 2).unwrap();
        let mut d = vec![1.0; 8];
        z.apply(&mut d, &[2, 2, 2]);
        assert_eq!(d, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
