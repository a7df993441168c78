//! AVX2 + FMA + F16C dot products of the fast precision: one weight row
//! against one activation row (`fn(n, w, a)`, the signature of
//! `crate::dot`'s scalar references), four tokens at once, and many rows at
//! once. Each computes the same integer sums as its scalar reference in
//! `crate::dot` and differs only in the order of the float accumulation
//! (tests hold them to the reference on random blocks); the four-token and
//! many-row forms equal the one-token kernel bit for bit.
//!
//! Not here: the AVX-512 forms ([`super::vnni`], [`super::avx512`]), the
//! exact precision's kernels ([`super::exact`]).
//!
//! # Safety (every function)
//! The CPU has AVX2, FMA and F16C, and each slice holds what the doc
//! comment says (whole blocks; for `f32_f32` and `f16_f16`, `n` elements).

use std::arch::x86_64::*;

use plumb_quant::blocks::*;

use super::{bytes_from_bits_32, d16, hsum_epi32, hsum_ps, nibbles_32, Q8Format};

/// Σ x·y over 32 signed bytes each, as 8 i32 lanes (as float).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(mul_sum_i8_pairs(x, y))
}

/// Σ x·y over 32 signed bytes each, as 8 i32 lanes (exact).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sum_i8_pairs(x: __m256i, y: __m256i) -> __m256i {
    // maddubs needs an unsigned left operand: |x| and y with x's sign.
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot16 = _mm256_maddubs_epi16(ax, sy);
    _mm256_madd_epi16(dot16, _mm256_set1_epi16(1))
}

/// Σ w·a over `n` f32 elements: four accumulators of eight lanes at
/// stride 32, combined (0+1)+(2+3), then the tail one product at a time.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` and `a` hold at least `n` floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f32_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pw.add(i + 8 * k));
            let y = _mm256_loadu_ps(pa.add(i + 8 * k));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    let mut s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    while i < n {
        s += *pw.add(i) * *pa.add(i);
        i += 1;
    }
    s
}

/// Σ w·a over `n` f16 elements: one accumulator of eight lanes, then the tail.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` and `a` hold at least `n` f16 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (pw, pa) = (w.as_ptr(), a.as_ptr());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + 8 <= n {
        let x = _mm256_cvtph_ps(_mm_loadu_si128(pw.add(2 * i) as *const __m128i));
        let y = _mm256_cvtph_ps(_mm_loadu_si128(pa.add(2 * i) as *const __m128i));
        acc = _mm256_fmadd_ps(x, y, acc);
        i += 8;
    }
    let mut s = hsum_ps(acc);
    while i < n {
        s += f16_to_f32([w[2 * i], w[2 * i + 1]]) * f16_to_f32([a[2 * i], a[2 * i + 1]]);
        i += 1;
    }
    s
}

/// Q8_0 weights · Q8_0 activations (see `crate::dot::q8_0_q8_0`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ8_0] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm256_set1_ps(d16(x.d) * d16(y.d));
        let qx = _mm256_loadu_si256(x.qs.as_ptr() as *const __m256i);
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// Q4_0 weights · Q8_0 activations (see `crate::dot::q4_0_q8_0`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ4_0] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    let off = _mm256_set1_epi8(8);
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm256_set1_ps(d16(x.d) * d16(y.d));
        let qx = _mm256_sub_epi8(nibbles_32(x.qs.as_ptr()), off);
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// Q5_0 weights · Q8_0 activations (see `crate::dot::q5_0_q8_0`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ5_0] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm256_set1_ps(d16(x.d) * d16(y.d));
        let lo = nibbles_32(x.qs.as_ptr());
        // Fifth bit: 0x10 where set; value = (nibble | 0x10·bit) − 16.
        let hi = _mm256_and_si256(bytes_from_bits_32(u32::from_le_bytes(x.qh)), _mm256_set1_epi8(0x10));
        let qx = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(16));
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// Σ x·y over 32 unsigned bytes x and signed bytes y, as 8 i32 lanes of
/// four consecutive elements each, as float (exact sums).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sum_us8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)))
}

/// Q4_1 weights · Q8_1 activations in the order of llama.cpp's AVX2
/// `vec_dot` (which it takes for any number of rows): per block the
/// quants' sums in eight lanes times d·d_y, fused into eight running
/// lanes; the mins m·s fused into a scalar total; the lanes folded, then
/// that total added.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_1_q8_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ4_1] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_1] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        summs = d16(x.m).mul_add(d16(y.s), summs);
        let d = _mm256_set1_ps(d16(x.d) * d16(y.d));
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_us8_pairs_float(nibbles_32(x.qs.as_ptr()), qy), acc);
    }
    hsum_ps(acc) + summs
}

/// Q5_1 weights · Q8_1 activations in the order of llama.cpp's AVX2
/// `vec_dot` (see [`q4_1_q8_1`]; the fifth bit or-ed into each quant).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_1_q8_1(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ5_1] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_1] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        summs = d16(x.m).mul_add(d16(y.s), summs);
        let hi = _mm256_and_si256(bytes_from_bits_32(u32::from_le_bytes(x.qh)), _mm256_set1_epi8(0x10));
        let qx = _mm256_or_si256(nibbles_32(x.qs.as_ptr()), hi);
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        let d = _mm256_set1_ps(d16(x.d) * d16(y.d));
        acc = _mm256_fmadd_ps(mul_sum_us8_pairs_float(qx, qy), d, acc);
    }
    hsum_ps(acc) + summs
}

/// IQ4_NL weights · Q8_0 activations (see `crate::dot::iq4_nl_q8_0`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl_q8_0(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockIQ4NL] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let d = _mm256_set1_ps(d16(x.d) * d16(y.d));
        let qx = _mm256_shuffle_epi8(table, nibbles_32(x.qs.as_ptr()));
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc);
    }
    hsum_ps(acc)
}

/// Q4_0 summed as llama.cpp's repacked kernels sum it (see
/// `crate::dot::q4_0_q8_0_repacked`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0_q8_0_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ4_0] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let off = _mm256_set1_epi8(8);
    let mut acc = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        let qx = _mm256_sub_epi8(nibbles_32(x.qs.as_ptr()), off);
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = (hsum_epi32(mul_sum_i8_pairs(qx, qy)) as f32).mul_add(d16(x.d) * d16(y.d), acc);
    }
    acc
}

/// IQ4_NL summed as llama.cpp's repacked kernels sum it (see
/// `crate::dot::iq4_nl_q8_0_repacked`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl_q8_0_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockIQ4NL] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    let mut acc = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        let qx = _mm256_shuffle_epi8(table, nibbles_32(x.qs.as_ptr()));
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc = (hsum_epi32(mul_sum_i8_pairs(qx, qy)) as f32).mul_add(d16(x.d) * d16(y.d), acc);
    }
    acc
}

/// IQ4_NL weights · Q8_0 activations for one token, as llama.cpp's
/// `vec_dot` sums them (its path for a product with one activation row;
/// two or more take the order of [`iq4_nl_q8_0`]): even blocks into one
/// accumulator of eight lanes, odd blocks into another, the two added lane
/// by lane and folded; an odd last block after, d·Σ added to the total
/// (fused, as the compiler contracts it).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl_q8_0_one(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockIQ4NL] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    let mut acc = [_mm256_setzero_ps(); 2];
    let pairs = xs.len() / 2 * 2;
    for (i, (x, y)) in xs[..pairs].iter().zip(ys).enumerate() {
        let d = _mm256_set1_ps(d16(y.d) * d16(x.d));
        let qx = _mm256_shuffle_epi8(table, nibbles_32(x.qs.as_ptr()));
        let qy = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
        acc[i % 2] = _mm256_fmadd_ps(d, mul_sum_i8_pairs_float(qx, qy), acc[i % 2]);
    }
    let mut sum = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
    for (x, y) in xs[pairs..].iter().zip(&ys[pairs..]) {
        let sumi = crate::dot::iq4_nl_sum(x, y);
        sum = (d16(y.d) * d16(x.d)).mul_add(sumi as f32, sum);
    }
    sum
}

/// Σ over 16 i16 lanes of products with 16-bit scales, as 8 i32 lanes.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn madd_scale(p16: __m256i, scale: i16) -> __m256i {
    _mm256_madd_epi16(p16, _mm256_set1_epi16(scale))
}

/// One Q4_K superblock against its Q8_K block: Σ scale·q·y in eight i32
/// lanes (exact), and Σ min·Σy per pair of sub-blocks.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_sums(x: &BlockQ4K, y: &BlockQ8K) -> (__m256i, [i32; 4]) {
    let m4 = _mm256_set1_epi8(0x0F);
    k_mins_sums(&x.scales, y, |c| {
        let q4 = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c) as *const __m256i);
        (_mm256_and_si256(q4, m4), _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4))
    })
}

/// As [`q4_k_sums`] for Q5_K (the fifth bit from qh).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k_sums(x: &BlockQ5K, y: &BlockQ8K) -> (__m256i, [i32; 4]) {
    let m4 = _mm256_set1_epi8(0x0F);
    let bit16 = _mm256_set1_epi8(16);
    let qh = _mm256_loadu_si256(x.qh.as_ptr() as *const __m256i);
    k_mins_sums(&x.scales, y, |c| {
        let q5 = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c) as *const __m256i);
        // Bit 2c of qh[l] is the fifth bit of the low half, 2c+1 of the high.
        let b1 = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
        let b2 = _mm256_set1_epi8((2u8 << (2 * c)) as i8);
        let h1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), bit16);
        let h2 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b2), b2), bit16);
        let lo = _mm256_or_si256(_mm256_and_si256(q5, m4), h1);
        (lo, _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q5, 4), m4), h2))
    })
}

/// The sums of a K-quant with mins, given the unsigned quants of sub-blocks
/// 2c and 2c+1 for each 64-element chunk c.
///
/// # Safety
/// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them).
#[inline(always)]
unsafe fn k_mins_sums(
    scales: &[u8; 12],
    y: &BlockQ8K,
    quants: impl Fn(usize) -> (__m256i, __m256i),
) -> (__m256i, [i32; 4]) {
    let mut sumi = _mm256_setzero_si256();
    let mut msum = [0i32; 4];
    for (c, ms) in msum.iter_mut().enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        *ms = m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32)
            + m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
        let (lo, hi) = quants(c);
        let y1 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c) as *const __m256i);
        let y2 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32) as *const __m256i);
        let p1 = madd_scale(_mm256_maddubs_epi16(lo, y1), sc1 as i16);
        let p2 = madd_scale(_mm256_maddubs_epi16(hi, y2), sc2 as i16);
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p1, p2));
    }
    (sumi, msum)
}

/// Four tokens of [`q4_k_q8_k_tiled`] against one Q4_K row, decoding each
/// superblock's scales and nibbles once: each result is bit-identical to the
/// one-token kernel's (the same exact integers, the same float steps).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; each `a[k]` holds at least as many Q8_K blocks as `w` holds Q4_K
/// blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_q8_k_tiled_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let xs: &[BlockQ4K] = bytemuck::cast_slice(w);
    let ys: [&[BlockQ8K]; 4] = a.map(bytemuck::cast_slice);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [0f32; 4];
    for (i, x) in xs.iter().enumerate() {
        let (d, dmin) = (d16(x.d), d16(x.dmin));
        let mut sc = [(0u8, 0u8); 8];
        for (j, s) in sc.iter_mut().enumerate() {
            *s = scale_min_k4(j, &x.scales);
        }
        let mut sumi = [_mm256_setzero_si256(); 4];
        let mut msum = [0i32; 4];
        for c in 0..4 {
            let q4 = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c) as *const __m256i);
            let lo = _mm256_and_si256(q4, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
            let ((sc1, m1), (sc2, m2)) = (sc[2 * c], sc[2 * c + 1]);
            for k in 0..4 {
                let y = ys[k].get_unchecked(i);
                msum[k] += m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32)
                    + m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
                let y1 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c) as *const __m256i);
                let y2 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32) as *const __m256i);
                let p1 = madd_scale(_mm256_maddubs_epi16(lo, y1), sc1 as i16);
                let p2 = madd_scale(_mm256_maddubs_epi16(hi, y2), sc2 as i16);
                sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p1, p2));
            }
        }
        for k in 0..4 {
            let r = (-dmin).mul_add(msum[k] as f32, hsum_epi32(sumi[k]) as f32 * d);
            acc[k] = r.mul_add(ys[k].get_unchecked(i).d, acc[k]);
        }
    }
    acc
}

/// Four tokens of [`q6_k_q8_k_tiled`] against one Q6_K row (as
/// [`q4_k_q8_k_tiled_x4`]).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; each `a[k]` holds at least as many Q8_K blocks as `w` holds Q6_K
/// blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_q8_k_tiled_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let xs: &[BlockQ6K] = bytemuck::cast_slice(w);
    let ys: [&[BlockQ8K]; 4] = a.map(bytemuck::cast_slice);
    let mut acc = [0f32; 4];
    for (i, x) in xs.iter().enumerate() {
        let d = d16(x.d);
        let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr() as *const __m128i));
        let mut sumi = [_mm256_setzero_si256(); 4];
        for half in 0..2 {
            let q = q6k_half(x, half);
            for (kk, qk) in q.iter().enumerate() {
                let s_lo = x.scales[8 * half + 2 * kk] as i16;
                let s_hi = x.scales[8 * half + 2 * kk + 1] as i16;
                let scales = _mm256_setr_epi16(
                    s_lo, s_lo, s_lo, s_lo, s_lo, s_lo, s_lo, s_lo, s_hi, s_hi, s_hi, s_hi, s_hi, s_hi, s_hi, s_hi,
                );
                for k in 0..4 {
                    let y = ys[k].get_unchecked(i);
                    let yk = _mm256_loadu_si256(y.qs.as_ptr().add(128 * half + 32 * kk) as *const __m256i);
                    sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(_mm256_maddubs_epi16(*qk, yk), scales));
                }
            }
        }
        for k in 0..4 {
            let y = ys[k].get_unchecked(i);
            let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
            let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
            let total = hsum_epi32(_mm256_sub_epi32(sumi[k], offset));
            acc[k] = (total as f32 * d).mul_add(y.d, acc[k]);
        }
    }
    acc
}

/// The K-quants with mins (Q4_K, Q5_K), summed as llama.cpp's
/// `ggml_vec_dot_q4_K_q8_K` does on AVX2: each superblock's lanes fused
/// into eight f32 lanes; the mins' term in four lanes, one per pair of
/// sub-blocks, fused multiply-adds, summed (0+2)+(1+3) at the end.
macro_rules! k_with_mins {
    ($name:ident, $tiled:ident, $block:ty, $sums:ident, $one_min_total:expr) => {
        /// The one-token kernel, in the order of llama.cpp's AVX2
        /// `vec_dot`: the scaled quants' sums in eight running lanes; the
        /// mins' products in four running lanes (Q4_K) or, summed exactly
        /// first, one running total (Q5_K); the lanes folded, the mins
        /// added last.
        ///
        /// # Safety
        /// The CPU has AVX2, FMA and F16C.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(_n: usize, w: &[u8], a: &[u8]) -> f32 {
            let xs: &[$block] = bytemuck::cast_slice(w);
            let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
            let mut acc = _mm256_setzero_ps();
            let mut acc_m = [0f32; 4];
            for (x, y) in xs.iter().zip(ys) {
                let d = d16(x.d) * y.d;
                let dmin = -(y.d * d16(x.dmin));
                let (sumi, msum) = $sums(x, y);
                if $one_min_total {
                    acc_m[0] = dmin.mul_add(msum.iter().sum::<i32>() as f32, acc_m[0]);
                } else {
                    for (am, m) in acc_m.iter_mut().zip(msum) {
                        *am = dmin.mul_add(m as f32, *am);
                    }
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_ps(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
        }

        /// The same dot product summed as llama.cpp's tiled K-quant matmul
        /// sums it (batches of eight or more tokens): see `dot::q4_k_q8_k_tiled`.
        ///
        /// # Safety
        /// The CPU has AVX2, FMA and F16C.
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
            let xs: &[$block] = bytemuck::cast_slice(w);
            let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
            let mut acc = 0f32;
            for (x, y) in xs.iter().zip(ys) {
                let (sumi, msum) = $sums(x, y);
                let m: i32 = msum.iter().sum();
                let r = (-d16(x.dmin)).mul_add(m as f32, hsum_epi32(sumi) as f32 * d16(x.d));
                acc = r.mul_add(y.d, acc);
            }
            acc
        }
    };
}

k_with_mins!(q4_k_q8_k, q4_k_q8_k_tiled, BlockQ4K, q4_k_sums, false);

/// Q4_K summed as llama.cpp's repacked kernels sum it (see
/// `crate::dot::q4_k_q8_k_repacked`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_q8_k_repacked(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ4K] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in xs.iter().zip(ys) {
        let (sumi, msum) = q4_k_sums(x, y);
        let m: i32 = msum.iter().sum();
        acc = (hsum_epi32(sumi) as f32).mul_add(d16(x.d) * y.d, acc);
        acc_min = (m as f32).mul_add(d16(x.dmin) * y.d, acc_min);
    }
    acc - acc_min
}

/// Q4_K summed as llama.cpp's repacked four-row kernel sums it (see
/// `crate::dot::q4_k_q8_k_repacked4`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_k_q8_k_repacked4(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ4K] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
    let m4 = _mm256_set1_epi8(0x0F);
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in xs.iter().zip(ys) {
        let (d, dmin) = (d16(x.d) * y.d, d16(x.dmin) * y.d);
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &x.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &x.scales);
            let msum = m1 as i32 * (y.bsums[4 * c] as i32 + y.bsums[4 * c + 1] as i32)
                + m2 as i32 * (y.bsums[4 * c + 2] as i32 + y.bsums[4 * c + 3] as i32);
            let q4 = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c) as *const __m256i);
            let (lo, hi) = (_mm256_and_si256(q4, m4), _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4));
            let y1 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c) as *const __m256i);
            let y2 = _mm256_loadu_si256(y.qs.as_ptr().add(64 * c + 32) as *const __m256i);
            let p1 = madd_scale(_mm256_maddubs_epi16(lo, y1), sc1 as i16);
            let p2 = madd_scale(_mm256_maddubs_epi16(hi, y2), sc2 as i16);
            acc = (hsum_epi32(_mm256_add_epi32(p1, p2)) as f32).mul_add(d, acc);
            acc_min = (msum as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}
k_with_mins!(q5_k_q8_k, q5_k_q8_k_tiled, BlockQ5K, q5_k_sums, true);

/// The 128 quants of one half of a Q6_K block as four groups of 32
/// unsigned 6-bit values (elements 0–31, 32–63, 64–95, 96–127 of the half).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6k_half(x: &BlockQ6K, half: usize) -> [__m256i; 4] {
    let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let ql0 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half) as *const __m256i);
    let ql1 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half + 32) as *const __m256i);
    let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * half) as *const __m256i);
    let hi = |shift: i32| match shift {
        0 => _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
        2 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
        4 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
        _ => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
    };
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), hi(0)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), hi(2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hi(4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hi(6)),
    ]
}

/// One Q6_K superblock against its Q8_K block: Σ scale·(q − 32)·y in
/// eight i32 lanes (exact). The −32 term comes from the per-16 sums of y,
/// lane k holding sub-blocks 2k and 2k+1, as in llama.cpp's AVX2 kernel:
/// the lanes' integer totals, and so the float rounding, then match it.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_sums(x: &BlockQ6K, y: &BlockQ8K) -> __m256i {
    let bsums = _mm256_loadu_si256(y.bsums.as_ptr() as *const __m256i);
    let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr() as *const __m128i));
    let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, scales16), 5);
    let mut sumi = _mm256_setzero_si256();
    for half in 0..2 {
        let q = q6k_half(x, half);
        for (k, qk) in q.iter().enumerate() {
            let yk = _mm256_loadu_si256(y.qs.as_ptr().add(128 * half + 32 * k) as *const __m256i);
            let p = _mm256_maddubs_epi16(*qk, yk);
            // Lanes 0..7 of p hold elements 0..15 (scale 2k), lanes 8..15 elements 16..31 (scale 2k+1).
            let s_lo = x.scales[8 * half + 2 * k] as i16;
            let s_hi = x.scales[8 * half + 2 * k + 1] as i16;
            let scales = _mm256_setr_epi16(
                s_lo, s_lo, s_lo, s_lo, s_lo, s_lo, s_lo, s_lo, s_hi, s_hi, s_hi, s_hi, s_hi, s_hi, s_hi, s_hi,
            );
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scales));
        }
    }
    _mm256_sub_epi32(sumi, offset)
}

/// Q6_K weights · Q8_K activations (see `crate::dot::q6_k_q8_k`).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ6K] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in xs.iter().zip(ys) {
        let d = d16(x.d) * y.d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q6_k_sums(x, y)), acc);
    }
    hsum_ps(acc)
}

/// Q6_K summed as llama.cpp's tiled K-quant matmul does: see `dot::q6_k_q8_k_tiled`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q6_k_q8_k_tiled(_n: usize, w: &[u8], a: &[u8]) -> f32 {
    let xs: &[BlockQ6K] = bytemuck::cast_slice(w);
    let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
    let mut acc = 0f32;
    for (x, y) in xs.iter().zip(ys) {
        acc = (hsum_epi32(q6_k_sums(x, y)) as f32 * d16(x.d)).mul_add(y.d, acc);
    }
    acc
}

/// One weight row (format `F`, whole blocks) against four Q8_0 activation
/// rows, unpacking each weight block once.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; each `a[k]` holds at least as many
/// 34-byte blocks as `w` holds blocks of `F`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q8_family<F: Q8Format>(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let bb = F::BLOCK_BYTES;
    let nb = w.len() / bb;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let blk = w.get_unchecked(i * bb..(i + 1) * bb);
        let dx = d16([blk[0], blk[1]]);
        let qx = F::unpack(blk);
        // |qx| once per block; each token's quants take qx's signs.
        let ax = _mm256_sign_epi8(qx, qx);
        let ones = _mm256_set1_epi16(1);
        for k in 0..4 {
            let y = a[k].get_unchecked(i * 34..(i + 1) * 34);
            let d = _mm256_set1_ps(dx * d16([y[0], y[1]]));
            let qy = _mm256_loadu_si256(y.as_ptr().add(2) as *const __m256i);
            let dot16 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(qy, qx));
            let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(dot16, ones));
            acc[k] = _mm256_fmadd_ps(d, sum, acc[k]);
        }
    }
    [hsum_ps(acc[0]), hsum_ps(acc[1]), hsum_ps(acc[2]), hsum_ps(acc[3])]
}

/// [`dot4_q8_family`] for one format, as a plain function (for `fn` pointers).
macro_rules! dot4_kernel {
    ($name:ident, $fmt:ty) => {
        /// One weight row against four Q8_0 activation rows; each result
        /// equals the one-token kernel's bit for bit.
        ///
        /// # Safety
        /// The CPU has AVX2, FMA and F16C; each `a[k]` holds at least as
        /// many 34-byte blocks as `w` holds weight blocks.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
            dot4_q8_family::<$fmt>(w, a)
        }
    };
}

dot4_kernel!(q8_0_q8_0_x4, super::FmtQ8_0);
dot4_kernel!(q4_0_q8_0_x4, super::FmtQ4_0);
dot4_kernel!(q5_0_q8_0_x4, super::FmtQ5_0);
dot4_kernel!(iq4_nl_q8_0_x4, super::FmtIQ4NL);

/// `out[k] = dot(row k of w, a)` for consecutive rows of `rb` bytes: the
/// per-row kernel inlined into one loop, so a short row (640 weights is 20
/// blocks) does not pay a call and its checks per row.
macro_rules! rows_kernel {
    ($name:ident, $dot:ident) => {
        /// `out[k]` = the one-row kernel on row `k` of `w` (`rb` bytes
        /// each) against `a`, bit for bit.
        ///
        /// # Safety
        /// The CPU has AVX2, FMA and F16C; `w.len() >= out.len() * rb`, and
        /// `a` holds what the one-row kernel needs for a row of `n`.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $name(w: &[u8], rb: usize, n: usize, a: &[u8], out: &mut [f32]) {
            for (k, o) in out.iter_mut().enumerate() {
                *o = $dot(n, w.get_unchecked(k * rb..(k + 1) * rb), a);
            }
        }
    };
}

rows_kernel!(rows_q8_0, q8_0_q8_0);
rows_kernel!(rows_q4_0, q4_0_q8_0);
rows_kernel!(rows_q5_0, q5_0_q8_0);
rows_kernel!(rows_iq4_nl, iq4_nl_q8_0);
rows_kernel!(rows_q4_k, q4_k_q8_k);
rows_kernel!(rows_q5_k, q5_k_q8_k);
rows_kernel!(rows_q6_k, q6_k_q8_k);
rows_kernel!(rows_f32, f32_f32);
rows_kernel!(rows_f16, f16_f16);
