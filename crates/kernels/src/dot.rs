//! Scalar reference dot products between a row of quantized weights and a
//! row of quantized activations, written like ggml's reference code: an
//! exact integer sum per block (or group), then the block's float scales.
//! These are the numerics of llama.cpp's CPU path; the SIMD variants in
//! `x86::dot` compute the same integer sums and may only differ in the order
//! of the float accumulation.
//!
//! Every function has the signature `fn(n, weights, activations) -> f32`
//! where `n` is the row length and both slices hold whole blocks.

#![allow(clippy::needless_range_loop)] // index loops mirror the ggml reference code

use plumb_quant::blocks::*;
use plumb_quant::GgmlType;

/// The activation format each weight format is paired with (ggml's
/// `vec_dot_type`).
pub fn act_type(w: GgmlType) -> GgmlType {
    use GgmlType::*;
    match w {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => Q8_K,
        F16 => F16,
        BF16 => BF16,
        _ => F32,
    }
}

pub type DotFn = fn(usize, &[u8], &[u8]) -> f32;

fn blocks<B: bytemuck::Pod>(b: &[u8]) -> &[B] {
    bytemuck::cast_slice(b)
}

/// Q8_K blocks have alignment 4; activation buffers are built aligned.
fn q8k(b: &[u8]) -> &[BlockQ8K] {
    bytemuck::cast_slice(b)
}

pub fn f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let w: &[f32] = bytemuck::cast_slice(&w[..n * 4]);
    let a: &[f32] = bytemuck::cast_slice(&a[..n * 4]);
    crate::dot_f32(w, a)
}

pub fn f16_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0f32;
    for i in 0..n {
        s += f16_to_f32([w[2 * i], w[2 * i + 1]]) * f16_to_f32([a[2 * i], a[2 * i + 1]]);
    }
    s
}

pub fn bf16_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut s = 0f32;
    for i in 0..n {
        s += bf16_to_f32([w[2 * i], w[2 * i + 1]]) * bf16_to_f32([a[2 * i], a[2 * i + 1]]);
    }
    s
}

pub fn q8_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ8_0>(w).iter().zip(blocks::<BlockQ8_0>(a)) {
        let sumi: i32 = x.qs.iter().zip(&y.qs).map(|(&p, &q)| p as i32 * q as i32).sum();
        sumf += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sumf
}

/// One Q4_0 block against its Q8_0 block: Σ (q − 8)·y, exact.
fn q4_0_sum(x: &BlockQ4_0, y: &BlockQ8_0) -> i32 {
    (0..16)
        .map(|j| ((x.qs[j] & 0xF) as i32 - 8) * y.qs[j] as i32 + ((x.qs[j] >> 4) as i32 - 8) * y.qs[j + 16] as i32)
        .sum()
}

pub fn q4_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ4_0>(w).iter().zip(blocks::<BlockQ8_0>(a)) {
        sumf += q4_0_sum(x, y) as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sumf
}

/// Q4_0 as llama.cpp's repacked kernels (its 8×8 interleaved rows, on CPUs
/// with AVX2) sum it, for every token alike: per block the exact integer
/// sum, and the running total += sum · (d·d_y) by one fused multiply-add.
pub fn q4_0_q8_0_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ4_0>(w).iter().zip(blocks::<BlockQ8_0>(a));
    xs.fold(0.0, |acc, (x, y)| b32_repacked(q4_0_sum(x, y), x.d, y.d, acc))
}

/// One block's step of llama.cpp's repacked 32-element kernels (Q4_0,
/// IQ4_NL): acc + sum · (d_w·d_y), the product of the scales rounded, the
/// rest fused.
#[inline]
fn b32_repacked(sum: i32, dw: [u8; 2], dy: [u8; 2], acc: f32) -> f32 {
    (sum as f32).mul_add(f16_to_f32(dw) * f16_to_f32(dy), acc)
}

pub fn q4_1_q8_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ4_1>(w).iter().zip(blocks::<BlockQ8_1>(a)) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (x.qs[j] & 0xF) as i32 * y.qs[j] as i32 + (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
        }
        sumf += (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sumf
}

fn q5_bits(qh: u32, j: usize) -> (i32, i32) {
    (((qh >> j) << 4 & 0x10) as i32, ((qh >> (j + 12)) & 0x10) as i32)
}

pub fn q5_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ5_0>(w).iter().zip(blocks::<BlockQ8_0>(a)) {
        let qh = u32::from_le_bytes(x.qh);
        let mut sumi = 0i32;
        for j in 0..16 {
            let (h0, h1) = q5_bits(qh, j);
            let x0 = ((x.qs[j] & 0xF) as i32 | h0) - 16;
            let x1 = ((x.qs[j] >> 4) as i32 | h1) - 16;
            sumi += x0 * y.qs[j] as i32 + x1 * y.qs[j + 16] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
    }
    sumf
}

pub fn q5_1_q8_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ5_1>(w).iter().zip(blocks::<BlockQ8_1>(a)) {
        let qh = u32::from_le_bytes(x.qh);
        let mut sumi = 0i32;
        for j in 0..16 {
            let (h0, h1) = q5_bits(qh, j);
            sumi += ((x.qs[j] & 0xF) as i32 | h0) * y.qs[j] as i32 + ((x.qs[j] >> 4) as i32 | h1) * y.qs[j + 16] as i32;
        }
        sumf += (f16_to_f32(x.d) * f16_to_f32(y.d)) * sumi as f32 + f16_to_f32(x.m) * f16_to_f32(y.s);
    }
    sumf
}

/// One IQ4_NL block against its Q8_0 block: Σ table[q]·y, exact.
pub(crate) fn iq4_nl_sum(x: &BlockIQ4NL, y: &BlockQ8_0) -> i32 {
    let v = |q: u8| KVALUES_IQ4NL[q as usize] as i32;
    (0..16).map(|j| v(x.qs[j] & 0xF) * y.qs[j] as i32 + v(x.qs[j] >> 4) * y.qs[j + 16] as i32).sum()
}

pub fn iq4_nl_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockIQ4NL>(w).iter().zip(blocks::<BlockQ8_0>(a)) {
        sumf += (f16_to_f32(x.d) * f16_to_f32(y.d)) * iq4_nl_sum(x, y) as f32;
    }
    sumf
}

/// IQ4_NL as llama.cpp's repacked kernels sum it (see
/// [`q4_0_q8_0_repacked`]: the same kernel with the table's values).
pub fn iq4_nl_q8_0_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockIQ4NL>(w).iter().zip(blocks::<BlockQ8_0>(a));
    xs.fold(0.0, |acc, (x, y)| b32_repacked(iq4_nl_sum(x, y), x.d, y.d, acc))
}

/// One Q2_K superblock against its Q8_K block: (Σscale·q·y, Σmin·Σy),
/// exact.
fn q2_k_sums(x: &BlockQ2K, y: &BlockQ8K) -> (i32, i32) {
    let [(i0, m0), (i1, m1)] = q2_k_half_sums(x, y);
    (i0 + i1, m0 + m1)
}

/// The same for each half of the superblock (128 elements, sub-blocks
/// 8h..8h+8).
fn q2_k_half_sums(x: &BlockQ2K, y: &BlockQ8K) -> [(i32, i32); 2] {
    std::array::from_fn(|h| {
        let summs: i32 = (8 * h..8 * h + 8).map(|j| (x.scales[j] >> 4) as i32 * y.bsums[j] as i32).sum();
        let isum = (0..4)
            .flat_map(|s| (0..32).map(move |e| (s, e)))
            .map(|(s, e)| {
                q2_k_scale(x, 8 * h + 2 * s + e / 16) * q2_k_quant(x, h, s, e) * y.qs[128 * h + 32 * s + e] as i32
            })
            .sum();
        (isum, summs)
    })
}

/// The K-quants whose superblocks are halves (h) of four 32-element chunks
/// (s), as their quants are packed two bits a chunk: element `e` of chunk
/// (h, s) is element 128h + 32s + e of the superblock, in sub-block
/// 8h + 2s + e/16. Q2_K's quant there.
pub(crate) fn q2_k_quant(x: &BlockQ2K, h: usize, s: usize, e: usize) -> i32 {
    ((x.qs[32 * h + e] >> (2 * s)) & 3) as i32
}

/// Q2_K's scale of a sub-block.
pub(crate) fn q2_k_scale(x: &BlockQ2K, sub: usize) -> i32 {
    (x.scales[sub] & 0xF) as i32
}

/// Q3_K's quant of element `e` of chunk (h, s) (see [`q2_k_quant`]): two
/// bits, less 4 where its high bit is clear.
pub(crate) fn q3_k_quant(x: &BlockQ3K, h: usize, s: usize, e: usize) -> i32 {
    let high = x.hmask[e] & (1 << (4 * h + s)) != 0;
    ((x.qs[32 * h + e] >> (2 * s)) & 3) as i32 - if high { 0 } else { 4 }
}

/// Q2_K as llama.cpp's repacked kernels (8×8 interleaved rows, on CPUs with
/// AVX-512) sum it for a token its one-row kernel takes: per superblock the
/// exact sums, Σscale·q·y times d·d_y and Σmin·Σy times dmin·d_y each fused
/// into a running total of its own, their difference at the end.
pub fn q2_k_q8_k_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in blocks::<BlockQ2K>(w).iter().zip(q8k(a)) {
        let (isum, msum) = q2_k_sums(x, y);
        acc = (isum as f32).mul_add(f16_to_f32(x.d) * y.d, acc);
        acc_min = (msum as f32).mul_add(f16_to_f32(x.dmin) * y.d, acc_min);
    }
    acc - acc_min
}

/// The same for a token its four-row kernel takes: the totals fed half a
/// superblock (128 elements) at a time.
pub fn q2_k_q8_k_repacked4(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in blocks::<BlockQ2K>(w).iter().zip(q8k(a)) {
        let (d, dmin) = (f16_to_f32(x.d) * y.d, f16_to_f32(x.dmin) * y.d);
        for (isum, msum) in q2_k_half_sums(x, y) {
            acc = (isum as f32).mul_add(d, acc);
            acc_min = (msum as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

pub fn q2_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ2K>(w).iter().zip(q8k(a)) {
        let (isum, summs) = q2_k_sums(x, y);
        let dall = y.d * f16_to_f32(x.d);
        let dmin = y.d * f16_to_f32(x.dmin);
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q2_K in llama.cpp's tiled order (see [`q4_k_q8_k_tiled`]).
pub fn q2_k_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ2K>(w).iter().zip(q8k(a));
    xs.fold(0.0, |acc, (x, y)| k_tiled(f16_to_f32(x.d), f16_to_f32(x.dmin), q2_k_sums(x, y), y.d, acc))
}

/// One Q3_K superblock against its Q8_K block: Σscale·q·y, exact.
fn q3_k_sum(x: &BlockQ3K, y: &BlockQ8K) -> i32 {
    let scales = q3k_scales(&x.scales);
    let chunks = (0..2).flat_map(|h| (0..4).flat_map(move |s| (0..32).map(move |e| (h, s, e))));
    chunks
        .map(|(h, s, e)| {
            let sc = scales[8 * h + 2 * s + e / 16] as i32 - 32;
            sc * q3_k_quant(x, h, s, e) * y.qs[128 * h + 32 * s + e] as i32
        })
        .sum()
}

pub fn q3_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ3K>(w).iter().zip(q8k(a)) {
        sumf += f16_to_f32(x.d) * y.d * q3_k_sum(x, y) as f32;
    }
    sumf
}

/// Q3_K in llama.cpp's tiled order (no mins: r = Σ·d, total += r·d_y).
pub fn q3_k_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ3K>(w).iter().zip(q8k(a));
    xs.fold(0.0, |acc, (x, y)| (q3_k_sum(x, y) as f32 * f16_to_f32(x.d)).mul_add(y.d, acc))
}

/// One Q4_K superblock against its Q8_K block: Σ scale·q·y and
/// Σ min·Σy (both exact).
fn q4_k_sums(x: &BlockQ4K, y: &BlockQ8K) -> (i32, i32) {
    k_sums(&x.scales, |j, l| ((x.qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF) as i32, y)
}

/// As [`q4_k_sums`] for Q5_K (the fifth bit from qh).
fn q5_k_sums(x: &BlockQ5K, y: &BlockQ8K) -> (i32, i32) {
    k_sums(
        &x.scales,
        |j, l| {
            let hi = if x.qh[l] & (1 << j) != 0 { 16 } else { 0 };
            ((x.qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF) as i32 + hi
        },
        y,
    )
}

/// The two integer sums of a K-quant with mins, given quant `q(j, l)` of
/// element l of sub-block j.
fn k_sums(scales: &[u8; 12], q: impl Fn(usize, usize) -> i32, y: &BlockQ8K) -> (i32, i32) {
    let (mut isum, mut msum) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let s: i32 = (0..32).map(|l| q(j, l) * y.qs[j * 32 + l] as i32).sum();
        isum += sc as i32 * s;
        msum += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
    }
    (isum, msum)
}

/// A K-quant with mins in the one-token order: d·Σ − dmin·M per superblock.
fn k_unit(d: f32, dmin: f32, (isum, msum): (i32, i32), yd: f32) -> f32 {
    d * yd * isum as f32 - dmin * yd * msum as f32
}

/// The same in llama.cpp's tiled order (see [`q4_k_q8_k_tiled`]).
fn k_tiled(d: f32, dmin: f32, (isum, msum): (i32, i32), yd: f32, acc: f32) -> f32 {
    (-dmin).mul_add(msum as f32, isum as f32 * d).mul_add(yd, acc)
}

pub fn q4_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ4K>(w).iter().zip(q8k(a));
    xs.fold(0.0, |s, (x, y)| s + k_unit(f16_to_f32(x.d), f16_to_f32(x.dmin), q4_k_sums(x, y), y.d))
}

pub fn q5_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ5K>(w).iter().zip(q8k(a));
    xs.fold(0.0, |s, (x, y)| s + k_unit(f16_to_f32(x.d), f16_to_f32(x.dmin), q5_k_sums(x, y), y.d))
}

/// One Q6_K superblock's Σ scale·(q − 32)·y (exact).
fn q6_k_isum(x: &BlockQ6K, y: &BlockQ8K) -> i32 {
    let q = x.quants();
    (0..256).map(|e| x.scales[e / 16] as i32 * q[e] as i32 * y.qs[e] as i32).sum()
}

pub fn q6_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockQ6K>(w).iter().zip(q8k(a)) {
        sumf += f16_to_f32(x.d) * y.d * q6_k_isum(x, y) as f32;
    }
    sumf
}

/// The K-quant dot products as llama.cpp's tiled K-quant matmul sums them
/// (its path for batches of eight or more tokens): per superblock the exact
/// integer sums, r = Σscale·q·y · d − dmin · Σmin·Σy (one fused
/// multiply-add), and the running total += r · d_y, fused too (the
/// compiler contracts llama.cpp's separate multiply and add).
pub fn q4_k_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ4K>(w).iter().zip(q8k(a));
    xs.fold(0.0, |acc, (x, y)| k_tiled(f16_to_f32(x.d), f16_to_f32(x.dmin), q4_k_sums(x, y), y.d, acc))
}

/// Q4_K as llama.cpp's repacked kernels (its 8×8 interleaved rows, on
/// CPUs with AVX2) sum it for a token its one-row kernel takes (the last
/// T mod 4 rows of a step, and every row of a step of fewer than 4): per
/// superblock the exact integer sums, two running totals — Σscale·q·y
/// times d·d_y and Σmin·Σy times dmin·d_y, each by one fused multiply-add
/// — and their difference at the end.
pub fn q4_k_q8_k_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in blocks::<BlockQ4K>(w).iter().zip(q8k(a)) {
        let (isum, msum) = q4_k_sums(x, y);
        acc = (isum as f32).mul_add(f16_to_f32(x.d) * y.d, acc);
        acc_min = (msum as f32).mul_add(f16_to_f32(x.dmin) * y.d, acc_min);
    }
    acc - acc_min
}

/// The same for a token its four-row kernel takes (the rows of a step in
/// whole fours): the totals take each pair of sub-blocks (64 elements) in
/// turn, four fused multiply-adds per superblock.
pub fn q4_k_q8_k_repacked4(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in blocks::<BlockQ4K>(w).iter().zip(q8k(a)) {
        let (d, dmin) = (f16_to_f32(x.d) * y.d, f16_to_f32(x.dmin) * y.d);
        for c in 0..4 {
            let (mut isum, mut msum) = (0i32, 0i32);
            for j in [2 * c, 2 * c + 1] {
                let (sc, m) = scale_min_k4(j, &x.scales);
                let q = |l: usize| ((x.qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF) as i32;
                isum += sc as i32 * (0..32).map(|l| q(l) * y.qs[j * 32 + l] as i32).sum::<i32>();
                msum += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
            }
            acc = (isum as f32).mul_add(d, acc);
            acc_min = (msum as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

pub fn q5_k_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockQ5K>(w).iter().zip(q8k(a));
    xs.fold(0.0, |acc, (x, y)| k_tiled(f16_to_f32(x.d), f16_to_f32(x.dmin), q5_k_sums(x, y), y.d, acc))
}

pub fn q6_k_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in blocks::<BlockQ6K>(w).iter().zip(q8k(a)) {
        acc = (q6_k_isum(x, y) as f32 * f16_to_f32(x.d)).mul_add(y.d, acc);
    }
    acc
}

/// One IQ4_XS superblock against its Q8_K block: Σscale·table[q]·y, exact.
fn iq4_xs_sum(x: &BlockIQ4XS, y: &BlockQ8K) -> i32 {
    (0..8)
        .map(|b| iq4_xs_scale(x, b) * (0..32).map(|e| iq4_xs_quant(x, b, e) * y.qs[32 * b + e] as i32).sum::<i32>())
        .sum()
}

/// IQ4_XS's scale of sub-block `b` (32 elements), less 32.
pub(crate) fn iq4_xs_scale(x: &BlockIQ4XS, b: usize) -> i32 {
    let high = ((u16::from_le_bytes(x.scales_h) >> (2 * b)) & 3) as u8;
    (((x.scales_l[b / 2] >> (4 * (b % 2))) & 0xF) | (high << 4)) as i32 - 32
}

/// IQ4_XS's value of element `e` of sub-block `b`: the table at its nibble
/// (low nibbles hold elements 0..16, high ones 16..32).
pub(crate) fn iq4_xs_quant(x: &BlockIQ4XS, b: usize, e: usize) -> i32 {
    let q = x.qs[16 * b + e % 16];
    KVALUES_IQ4NL[(if e < 16 { q & 0xF } else { q >> 4 }) as usize] as i32
}

pub fn iq4_xs_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut sumf = 0f32;
    for (x, y) in blocks::<BlockIQ4XS>(w).iter().zip(q8k(a)) {
        sumf += f16_to_f32(x.d) * y.d * iq4_xs_sum(x, y) as f32;
    }
    sumf
}

/// IQ4_XS in llama.cpp's tiled order (see [`q3_k_q8_k_tiled`]).
pub fn iq4_xs_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs = blocks::<BlockIQ4XS>(w).iter().zip(q8k(a));
    xs.fold(0.0, |acc, (x, y)| (iq4_xs_sum(x, y) as f32 * f16_to_f32(x.d)).mul_add(y.d, acc))
}

/// The scalar reference dot product for a weight type, if plumb has one.
pub fn scalar_dot(w: GgmlType) -> Option<DotFn> {
    use GgmlType::*;
    Some(match w {
        F32 => f32_f32,
        F16 => f16_f16,
        BF16 => bf16_bf16,
        Q8_0 => q8_0_q8_0,
        Q4_0 => q4_0_q8_0,
        Q4_1 => q4_1_q8_1,
        Q5_0 => q5_0_q8_0,
        Q5_1 => q5_1_q8_1,
        IQ4_NL => iq4_nl_q8_0,
        Q2_K => q2_k_q8_k,
        Q3_K => q3_k_q8_k,
        Q4_K => q4_k_q8_k,
        Q5_K => q5_k_q8_k,
        Q6_K => q6_k_q8_k,
        IQ4_XS => iq4_xs_q8_k,
        _ => return None,
    })
}
