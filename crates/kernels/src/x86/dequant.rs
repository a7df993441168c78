//! AVX2 weight-row dequantizers (Q8_0, Q4_0, Q5_0, Q4_K, Q6_K): the same
//! per-element float operations as the scalar references in `plumb_quant`
//! (one multiply, then the min; no fused multiply-add), so their output is
//! bit-identical. The K-quant decoders also feed the exact precision's
//! fused rows ([`super::exact`]) through a [`Sink`].
//!
//! Not here: formats without a SIMD dequantizer (they take the reference).

use std::arch::x86_64::*;

use plumb_quant::blocks::*;

use super::dot::q6k_half;
use super::{d16, unpack_q4_0, unpack_q5_0, unpack_q8_0};

/// 32 signed weights times the block scale `d`, stored at `out`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `out` is writable for 32 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store_i8x32_scaled(q: __m256i, d: f32, out: *mut f32) {
    let dv = _mm256_set1_ps(d);
    let lo = _mm256_castsi256_si128(q);
    let hi = _mm256_extracti128_si256(q, 1);
    for (k, half) in [lo, hi].into_iter().enumerate() {
        let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(half));
        let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(half, 8)));
        _mm256_storeu_ps(out.add(16 * k), _mm256_mul_ps(a, dv));
        _mm256_storeu_ps(out.add(16 * k + 8), _mm256_mul_ps(b, dv));
    }
}

/// Q8_0 blocks of `src` into `dst`, as `plumb_quant`'s reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        store_i8x32_scaled(unpack_q8_0(b), d16([b[0], b[1]]), y.as_mut_ptr());
    }
}

/// Q5_0 blocks of `src` into `dst`, as `plumb_quant`'s reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        store_i8x32_scaled(unpack_q5_0(b), d16([b[0], b[1]]), y.as_mut_ptr());
    }
}

/// Q4_0 blocks of `src` into `dst`, as `plumb_quant`'s reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        store_i8x32_scaled(unpack_q4_0(b), d16([b[0], b[1]]), y.as_mut_ptr());
    }
}

/// 32 unsigned quants (0..=63) → d1·q − m1, stored.
/// Where the K-quant dequantizers put each vector of eight weights: stored
/// at element `off` of the row (`DOT` false), or, for the exact precision's
/// fused rows, multiplied into the activation at `off` and added to
/// accumulator (off mod 32) / 8 — [`f32_f32`]'s order.
pub(crate) struct Sink {
    pub(crate) out: *mut f32,
    pub(crate) x: *const f32,
    pub(crate) acc: [__m256; 4],
}

/// One vector of eight weights into the [`Sink`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `s.out` (`DOT` false) or `s.x` (`DOT` true) is valid for 8
/// floats at `off`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn emit<const DOT: bool>(s: &mut Sink, off: usize, v: __m256) {
    if DOT {
        let j = (off % 32) / 8;
        s.acc[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(s.x.add(off)), s.acc[j]);
    } else {
        _mm256_storeu_ps(s.out.add(off), v);
    }
}

/// 32 unsigned quants (0..=63) → d1·q − m1, from element `off`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; as [`emit`] for 32 floats from `off`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn affine_u8x32<const DOT: bool>(q: __m256i, d: f32, m: f32, s: &mut Sink, off: usize) {
    let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
    let lo = _mm256_castsi256_si128(q);
    let hi = _mm256_extracti128_si256(q, 1);
    for (k, half) in [lo, hi].into_iter().enumerate() {
        let a = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(half));
        let b = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(half, 8)));
        emit::<DOT>(s, off + 16 * k, _mm256_sub_ps(_mm256_mul_ps(a, dv), mv));
        emit::<DOT>(s, off + 16 * k + 8, _mm256_sub_ps(_mm256_mul_ps(b, dv), mv));
    }
}

/// Q4_K blocks of `src`, decoded into the [`Sink`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `s.out` (`DOT` false) or `s.x` (`DOT` true) is valid for 256
/// floats per block of `src`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_k_rows<const DOT: bool>(src: &[u8], s: &mut Sink) {
    let blocks: &[BlockQ4K] = bytemuck::cast_slice(src);
    let m4 = _mm256_set1_epi8(0x0F);
    for (i, x) in blocks.iter().enumerate() {
        let (d, min) = (d16(x.d), d16(x.dmin));
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &x.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &x.scales);
            let q = _mm256_loadu_si256(x.qs.as_ptr().add(32 * c) as *const __m256i);
            let off = 256 * i + 64 * c;
            affine_u8x32::<DOT>(_mm256_and_si256(q, m4), d * sc1 as f32, min * m1 as f32, s, off);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            affine_u8x32::<DOT>(hi, d * sc2 as f32, min * m2 as f32, s, off + 32);
        }
    }
}

/// Q6_K blocks of `src`, decoded into the [`Sink`].
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `s.out` (`DOT` false) or `s.x` (`DOT` true) is valid for 256
/// floats per block of `src`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q6_k_rows<const DOT: bool>(src: &[u8], s: &mut Sink) {
    let blocks: &[BlockQ6K] = bytemuck::cast_slice(src);
    for (i, x) in blocks.iter().enumerate() {
        let d = d16(x.d);
        for half in 0..2 {
            let q = q6k_half(x, half);
            for (k, qk) in q.iter().enumerate() {
                // (d·sc)·(q − 32) per 16 elements, as the scalar reference.
                let signed = _mm256_sub_epi8(*qk, _mm256_set1_epi8(32));
                let lo = _mm256_castsi256_si128(signed);
                let hi = _mm256_extracti128_si256(signed, 1);
                let off = 256 * i + 128 * half + 32 * k;
                for (g, part) in [lo, hi].into_iter().enumerate() {
                    let ds = _mm256_set1_ps(d * x.scales[8 * half + 2 * k + g] as f32);
                    let a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                    let b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(part, 8)));
                    emit::<DOT>(s, off + 16 * g, _mm256_mul_ps(ds, a));
                    emit::<DOT>(s, off + 16 * g + 8, _mm256_mul_ps(ds, b));
                }
            }
        }
    }
}

/// Q4_K blocks of `src` into `dst`, as `plumb_quant`'s reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `dst` holds every element of `src`'s blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    q4_k_rows::<false>(src, &mut Sink { out: dst.as_mut_ptr(), x: std::ptr::null(), acc: [_mm256_setzero_ps(); 4] });
}

/// Q6_K blocks of `src` into `dst`, as `plumb_quant`'s reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `dst` holds every element of `src`'s blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    q6_k_rows::<false>(src, &mut Sink { out: dst.as_mut_ptr(), x: std::ptr::null(), acc: [_mm256_setzero_ps(); 4] });
}
