//! AVX2 + FMA (+ F16C) forms of `mirror`'s f32 arithmetic — the
//! 64-lane and 16-lane dot products, the polynomial exp, the table GELU,
//! RoPE — each making the same roundings lane by lane as the scalar code in
//! `crate::mirror`, which keeps the 512-bit lanes of llama.cpp's AVX-512
//! build in pairs of 256-bit registers here. Tests hold each to its scalar
//! form bit for bit.
//!
//! Not here: the 512-bit register tiles of the same sums
//! ([`super::avx512`]), the scalar code and its order of operations (`mirror`).

use std::arch::x86_64::*;

use crate::mirror::{gelu_by_f16_table_one, rope_row, C, LANES, LN2_HI, LN2_LO, LOG2E, SHIFTER};

/// Two rows of [`avx2_dot_lanes`] at once.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_dot_lanes_x2(x: &[f32], y0: &[f32], y1: &[f32]) -> [f32; 2] {
    let mut a0 = [_mm256_setzero_ps(); 8];
    let mut a1 = [_mm256_setzero_ps(); 8];
    let (px, p0, p1) = (x.as_ptr(), y0.as_ptr(), y1.as_ptr());
    let n = x.len().min(y0.len()).min(y1.len());
    let mut i = 0;
    while i + LANES <= n {
        for k in 0..8 {
            let xv = _mm256_loadu_ps(px.add(i + 8 * k));
            a0[k] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(p0.add(i + 8 * k)), a0[k]);
            a1[k] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(p1.add(i + 8 * k)), a1[k]);
        }
        i += LANES;
    }
    let mut out = [0f32; 2];
    for (o, acc) in out.iter_mut().zip([a0, a1]) {
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
        *o = avx2_fold16(lo, hi);
    }
    out
}

/// [`fold16`] of the 16 lanes `lo` (0–7) and `hi` (8–15), in registers:
/// the same additions in the same order.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_fold16(lo: __m256, hi: __m256) -> f32 {
    let v = _mm256_add_ps(hi, lo);
    let x = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let y = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(y, _mm_movehdup_ps(y)))
}

/// `mirror::scalar_dot_lanes` on AVX2: the 64 lanes as eight registers.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    // acc[2k] and acc[2k+1] are the low and high halves of 512-bit register k.
    let mut acc = [_mm256_setzero_ps(); 8];
    let (px, py) = (x.as_ptr(), y.as_ptr());
    let mut i = 0;
    while i + LANES <= x.len().min(y.len()) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i + 8 * k)), _mm256_loadu_ps(py.add(i + 8 * k)), *a);
        }
        i += LANES;
    }
    let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
    let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
    avx2_fold16(lo, hi)
}

/// [`avx2_dot_lanes`] with `x` given as f16 bits, each widened as it is
/// loaded (exact): the same sums, from half the bytes.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_dot_lanes_f16(x: &[u16], y: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 8];
    let (px, py) = (x.as_ptr(), y.as_ptr());
    let mut i = 0;
    while i + LANES <= x.len().min(y.len()) {
        for (k, a) in acc.iter_mut().enumerate() {
            let xk = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i + 8 * k) as *const __m128i));
            *a = _mm256_fmadd_ps(xk, _mm256_loadu_ps(py.add(i + 8 * k)), *a);
        }
        i += LANES;
    }
    let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
    let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
    avx2_fold16(lo, hi)
}

/// `mirror::scalar_dot_tiled` on AVX2: the 16 lanes as two registers.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_dot_tiled(x: &[f32], y: &[f32]) -> f32 {
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (px, py) = (x.as_ptr(), y.as_ptr());
    let mut i = 0;
    while i + 16 <= x.len().min(y.len()) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(i + 8)), _mm256_loadu_ps(py.add(i + 8)), hi);
        i += 16;
    }
    avx2_fold16(lo, hi)
}

/// Eight rows of [`dot_f32_tiled_rows`]: the caller keeps rows `ys`,
/// `ys + stride`, … `ys + 7·stride` readable for `x.len()` floats.
///
/// # Safety
/// The CPU has AVX2 and FMA; rows `ys + r·stride` for r < 8 are readable for `x.len()` floats.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_dot_tiled_x8(x: &[f32], ys: *const f32, stride: usize) -> [f32; 8] {
    let mut lo = [_mm256_setzero_ps(); 8];
    let mut hi = [_mm256_setzero_ps(); 8];
    let px = x.as_ptr();
    let mut i = 0;
    while i + 16 <= x.len() {
        let (xl, xh) = (_mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(px.add(i + 8)));
        for r in 0..8 {
            let py = ys.add(r * stride + i);
            lo[r] = _mm256_fmadd_ps(xl, _mm256_loadu_ps(py), lo[r]);
            hi[r] = _mm256_fmadd_ps(xh, _mm256_loadu_ps(py.add(8)), hi[r]);
        }
        i += 16;
    }
    let mut out = [0f32; 8];
    for r in 0..8 {
        out[r] = avx2_fold16(lo[r], hi[r]);
    }
    out
}

/// [`rope_row`] with `mul_add` as the FMA instruction rather than a call.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn rope_row_fma(row: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    rope_row(row, hd, cs)
}

/// `mirror::gelu_by_f16_table` eight values at a time (a gather).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn avx2_gelu_by_f16_table(table: &[f32], xs: &mut [f32]) {
    let (lo, hi) = (_mm256_set1_ps(-10.0), _mm256_set1_ps(10.0));
    let mut chunks = xs.chunks_exact_mut(8);
    for c in &mut chunks {
        let x = _mm256_loadu_ps(c.as_ptr());
        let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(x);
        let idx = _mm256_cvtepu16_epi32(h);
        let y = _mm256_i32gather_ps::<4>(table.as_ptr(), idx);
        let y = _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, hi));
        let y = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(x, lo), y);
        _mm256_storeu_ps(c.as_mut_ptr(), y);
    }
    for x in chunks.into_remainder() {
        *x = gelu_by_f16_table_one(table, *x);
    }
}

/// `mirror::scalar_exp16` on AVX2, bit for bit.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_exp16(g: &[f32], max: f32, out: &mut [f32; 16]) {
    let mut buf = [f32::NEG_INFINITY; 16];
    buf[..g.len()].copy_from_slice(g);
    let vmax = _mm256_set1_ps(max);
    for h in 0..2 {
        let x = _mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr().add(8 * h)), vmax);
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), avx2_exp8(x));
    }
}

/// Eight lanes of [`exp_approx`].
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn avx2_exp8(x: __m256) -> __m256 {
    let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
    let z = _mm256_fmadd_ps(x, c(LOG2E), c(SHIFTER));
    let n = _mm256_sub_ps(z, c(SHIFTER));
    let b = _mm256_fnmadd_ps(n, c(LN2_LO), _mm256_fnmadd_ps(n, c(LN2_HI), x));
    let u = _mm256_mul_ps(b, b);
    let j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(c(C[4]), b, c(C[3])), u, _mm256_fmadd_ps(c(C[2]), b, c(C[1]))),
        u,
        _mm256_fmadd_ps(c(C[0]), b, _mm256_set1_ps(1.0)),
    );
    // 2ⁿ as two normal factors; lanes with |n| > 192 are replaced below.
    let big = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0), n), _mm256_set1_ps(192.0), _CMP_GT_OQ);
    let ni = _mm256_cvttps_epi32(_mm256_blendv_ps(n, _mm256_setzero_ps(), big));
    let a = _mm256_srai_epi32(ni, 1);
    let pow2 = |e: __m256i| _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
    let res = _mm256_mul_ps(_mm256_mul_ps(j, pow2(a)), pow2(_mm256_sub_epi32(ni, a)));
    let below = _mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ);
    let alt = _mm256_blendv_ps(_mm256_set1_ps(f32::INFINITY), _mm256_setzero_ps(), below);
    _mm256_blendv_ps(res, alt, big)
}
