//! Scalar quantizers for the formats plumb writes: activations (Q8_0, Q8_1,
//! Q8_K) and test-model weights (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K, and the
//! float formats).
//!
//! The Q8 and legacy 32-element formats follow ggml's `quantize_row_*_ref`
//! exactly. Q4_K and Q6_K use a plain min/max (resp. abs-max) fit per group
//! instead of ggml's iterative scale search: slightly larger error, same
//! layout, and every output is a valid block that any ggml reader accepts.

use crate::blocks::*;
use crate::types::{GgmlType, QK_K};
use crate::QuantError;

const SUPPORTED: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q8_K, Q4_K, Q6_K";

/// Quantizes `src` into a fresh byte vector of `ty` blocks.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let n = src.len();
    let be = ty.block_elems();
    if !n.is_multiple_of(be) {
        return Err(QuantError::NotBlockMultiple { ty, n, block: be });
    }
    let nb = n / be;
    Ok(match ty {
        GgmlType::F32 => src.iter().flat_map(|x| x.to_le_bytes()).collect(),
        GgmlType::F16 => src.iter().flat_map(|x| f32_to_f16(*x)).collect(),
        GgmlType::BF16 => src.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
        GgmlType::Q4_0 => to_bytes(src, nb, quantize_q4_0),
        GgmlType::Q4_1 => to_bytes(src, nb, quantize_q4_1),
        GgmlType::Q5_0 => to_bytes(src, nb, quantize_q5_0),
        GgmlType::Q5_1 => to_bytes(src, nb, quantize_q5_1),
        GgmlType::Q8_0 => to_bytes(src, nb, quantize_q8_0),
        GgmlType::Q8_1 => to_bytes(src, nb, quantize_q8_1),
        GgmlType::Q8_K => to_bytes(src, nb, quantize_q8_k),
        GgmlType::Q4_K => to_bytes(src, nb, quantize_q4_k),
        GgmlType::Q6_K => to_bytes(src, nb, quantize_q6_k),
        _ => return Err(QuantError::NoQuantizer { ty, supported: SUPPORTED }),
    })
}

fn to_bytes<B: bytemuck::Pod + bytemuck::Zeroable>(src: &[f32], nb: usize, f: fn(&[f32]) -> B) -> Vec<u8> {
    let be = src.len() / nb.max(1);
    let blocks: Vec<B> = src.chunks_exact(be.max(1)).take(nb).map(f).collect();
    bytemuck::cast_slice(&blocks).to_vec()
}

/// The element with the largest magnitude, keeping its sign.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = 0.0f32;
    for &v in x {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Q8_0 (ggml `quantize_row_q8_0_ref`): d = absmax / 127, q = round(x / d).
pub fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inv(d);
    let mut qs = [0i8; 32];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    BlockQ8_0 { d: f32_to_f16(d), qs }
}

/// Q8_0 as llama.cpp's x86 CPU backend quantizes activations (its AVX2
/// `quantize_row_q8_0`), which the fast precision mirrors: the inverse
/// scale is `127 / amax` rather than `1 / (amax / 127)`, and products round
/// half to even rather than away from zero. It differs from
/// [`quantize_q8_0`] (ggml's reference, used for weights) in the last bit
/// of a few products, and that is enough to flip a rounding.
#[inline(always)]
pub fn quantize_q8_0_act(x: &[f32]) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
    }
    BlockQ8_0 { d: f32_to_f16(amax / 127.0), qs }
}

/// Q8_1 activations as llama.cpp's x86 CPU backend makes them: as
/// [`quantize_q8_0_act`], plus `s = d * sum(q)` with the unrounded scale.
#[inline(always)]
pub fn quantize_q8_1_act(x: &[f32]) -> BlockQ8_1 {
    let b = quantize_q8_0_act(x);
    let d = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
    let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
    BlockQ8_1 { d: b.d, s: f32_to_f16(sum as f32 * d), qs: b.qs }
}

/// Q8_1: as Q8_0, plus `s = d * sum(q)`.
pub fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let b = quantize_q8_0(x);
    // ggml multiplies the sum by the unrounded scale.
    let d = x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
    let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
    BlockQ8_1 { d: b.d, s: f32_to_f16(sum as f32 * d), qs: b.qs }
}

/// Q8_K (ggml `quantize_row_q8_K_ref`): scale from the signed absmax so that
/// it maps to -127, f32 scale, per-16 sums.
#[inline(always)]
pub fn quantize_q8_k(x: &[f32]) -> BlockQ8K {
    let max = signed_absmax(x);
    let mut b = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
    if max == 0.0 {
        return b;
    }
    let iscale = -127.0 / max;
    for (q, v) in b.qs.iter_mut().zip(x) {
        // ggml's nearest_int rounds half to even.
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (j, s) in b.bsums.iter_mut().enumerate() {
        *s = b.qs[j * 16..j * 16 + 16].iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
    b
}

/// Q4_0 (ggml reference): d = max / -8 with the signed absmax.
pub fn quantize_q4_0(x: &[f32]) -> BlockQ4_0 {
    let d = signed_absmax(x) / -8.0;
    let id = inv(d);
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let x0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let x1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
        qs[j] = x0 | (x1 << 4);
    }
    BlockQ4_0 { d: f32_to_f16(d), qs }
}

/// Q4_1 (ggml reference): affine over [min, max] in 15 steps.
pub fn quantize_q4_1(x: &[f32]) -> BlockQ4_1 {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = inv(d);
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let x1 = (((x[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
        qs[j] = x0 | (x1 << 4);
    }
    BlockQ4_1 { d: f32_to_f16(d), m: f32_to_f16(min), qs }
}

/// Q5_0 (ggml reference): d = max / -16 with the signed absmax.
pub fn quantize_q5_0(x: &[f32]) -> BlockQ5_0 {
    let d = signed_absmax(x) / -16.0;
    let id = inv(d);
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let x1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
        qs[j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    BlockQ5_0 { d: f32_to_f16(d), qh: qh.to_le_bytes(), qs }
}

/// Q5_1 (ggml reference): affine over [min, max] in 31 steps.
pub fn quantize_q5_1(x: &[f32]) -> BlockQ5_1 {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 31.0;
    let id = inv(d);
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(31) as u8;
        let x1 = (((x[j + 16] - min) * id + 0.5) as i8).min(31) as u8;
        qs[j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    BlockQ5_1 { d: f32_to_f16(d), m: f32_to_f16(min), qh: qh.to_le_bytes(), qs }
}

/// Q4_K: per group of 32 an affine fit over [min(0, min x), max x], the
/// group scales and mins quantized to 6 bits against the block's largest.
pub fn quantize_q4_k(x: &[f32]) -> BlockQ4K {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, g) in x.chunks_exact(32).enumerate() {
        let lo = g.iter().copied().fold(0.0f32, f32::min);
        let hi = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scales[j] = (hi - lo).max(0.0) / 15.0;
        mins[j] = -lo;
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let ls = ((inv_scale * scales[j]).round() as i32).clamp(0, 63) as u8;
        let lm = ((inv_min * mins[j]).round() as i32).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    let (df, dminf) = (f16_to_f32(d), f16_to_f32(dmin));
    let mut levels = [0u8; QK_K];
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dj = df * sc as f32;
        let mj = dminf * m as f32;
        for l in 0..32 {
            let q = if dj != 0.0 { ((x[j * 32 + l] + mj) / dj).round() as i32 } else { 0 };
            levels[j * 32 + l] = q.clamp(0, 15) as u8;
        }
    }
    let mut qs = [0u8; QK_K / 2];
    for chunk in 0..4 {
        for l in 0..32 {
            qs[chunk * 32 + l] = levels[chunk * 64 + l] | (levels[chunk * 64 + l + 32] << 4);
        }
    }
    BlockQ4K { d, dmin, scales: packed, qs }
}

/// Q6_K: per group of 16 a symmetric fit onto -32..31, the group scales
/// quantized to signed 8 bits against the block's largest.
pub fn quantize_q6_k(x: &[f32]) -> BlockQ6K {
    let mut group_scale = [0f32; 16];
    for (j, g) in x.chunks_exact(16).enumerate() {
        let m = signed_absmax(g);
        group_scale[j] = if m != 0.0 { m / -32.0 } else { 0.0 };
    }
    let max_scale = signed_absmax(&group_scale);
    let mut b = BlockQ6K { ql: [0; 128], qh: [0; 64], scales: [0; 16], d: [0; 2] };
    if max_scale == 0.0 {
        return b;
    }
    let iscale = -128.0 / max_scale;
    b.d = f32_to_f16(1.0 / iscale);
    let d = f16_to_f32(b.d);
    let mut levels = [0u8; QK_K];
    for j in 0..16 {
        let sc = ((iscale * group_scale[j]).round() as i32).clamp(-128, 127) as i8;
        b.scales[j] = sc;
        let dj = d * sc as f32;
        for l in 0..16 {
            let q = if dj != 0.0 { (x[j * 16 + l] / dj).round() as i32 } else { 0 };
            levels[j * 16 + l] = (q.clamp(-32, 31) + 32) as u8;
        }
    }
    for half in 0..2 {
        let lv = &levels[half * 128..half * 128 + 128];
        for l in 0..32 {
            let (q1, q2, q3, q4) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
            b.ql[half * 64 + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            b.ql[half * 64 + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            b.qh[half * 32 + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::f16_to_f32;

    #[test]
    fn activation_q8_0_rounds_half_to_even_like_the_x86_backend() {
        // amax 127 makes the inverse scale exactly 1, so x·id is x itself.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1..5].copy_from_slice(&[2.5, 3.5, -2.5, 0.5]);
        let (act, reference) = (quantize_q8_0_act(&x), quantize_q8_0(&x));
        assert_eq!(act.qs[..5], [127, 2, 4, -2, 0]);
        assert_eq!(reference.qs[..5], [127, 3, 4, -3, 1]);
        assert_eq!(f16_to_f32(act.d), 1.0);
        let q1 = quantize_q8_1_act(&x);
        assert_eq!(q1.qs, act.qs);
        assert_eq!(f16_to_f32(q1.s), act.qs.iter().map(|&q| q as f32).sum::<f32>());
    }
}
