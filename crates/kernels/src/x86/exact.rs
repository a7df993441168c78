//! AVX2 row kernels of the exact precision, fused: each weight block is
//! dequantized in registers (q·d, one multiply, as [`super::dequant`]) and
//! taken straight into the f32 dot product in [`super::dot::f32_f32`]'s
//! order (four accumulators of eight lanes at stride 32, combined
//! (0+1)+(2+3)): bit-identical to dequantizing the row and then calling
//! `f32_f32`, without the row's store and reload.
//!
//! Not here: the 512-bit form of the Q8_0-family rows ([`super::avx512`]).

use std::arch::x86_64::*;

use super::dequant::{q4_k_rows, q6_k_rows, Sink};
use super::{d16, hsum_ps, KQuant, Q8Family, Q8Format};

/// One exact-precision row of format `F` against `x`.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `x.len() >= 32 * (row.len() / F::BLOCK_BYTES)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exact_row_q8_family<F: Q8Format>(row: &[u8], x: &[f32]) -> f32 {
    let bb = F::BLOCK_BYTES;
    let mut acc = [_mm256_setzero_ps(); 4];
    let px = x.as_ptr();
    for i in 0..row.len() / bb {
        let blk = row.get_unchecked(i * bb..(i + 1) * bb);
        let dv = _mm256_set1_ps(d16([blk[0], blk[1]]));
        let q = F::unpack(blk);
        let halves = [_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)];
        for (h, half) in halves.into_iter().enumerate() {
            let a = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(half)), dv);
            let b = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(half, 8))), dv);
            acc[2 * h] = _mm256_fmadd_ps(a, _mm256_loadu_ps(px.add(32 * i + 16 * h)), acc[2 * h]);
            acc[2 * h + 1] = _mm256_fmadd_ps(b, _mm256_loadu_ps(px.add(32 * i + 16 * h + 8)), acc[2 * h + 1]);
        }
    }
    hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// The slice lengths the exact row kernels ([`rows_exact`],
/// [`rows_exact_k`], `avx512::rows_exact`) read within, for `rows` rows of
/// `rb` bytes, `cols` elements each, against `x`: asserted once per call
/// by their safe callers.
pub fn check_rows_exact(w: &[u8], rb: usize, cols: usize, x: &[f32], rows: usize) {
    assert!(w.len() >= rows * rb && x.len() >= cols, "exact rows: short slices");
}

/// Exact-precision outputs of consecutive rows (`rb` bytes each) of a
/// Q8_0-family matrix of format `fmt` against one f32 activation row, on
/// 256-bit registers (what a CPU without AVX-512 runs).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w.len() >= out.len() * rb` and `x`
/// holds a row's elements ([`check_rows_exact`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_exact(fmt: Q8Family, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    super::with_q8_format!(fmt, F => {
        for (r, o) in out.iter_mut().enumerate() {
            *o = exact_row_q8_family::<F>(w.get_unchecked(r * rb..(r + 1) * rb), x);
        }
    })
}

/// Exact-precision outputs of consecutive Q4_K or Q6_K rows against one
/// f32 activation row, fused as [`rows_exact`].
///
/// # Safety
/// As [`rows_exact`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_exact_k(fmt: KQuant, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get_unchecked(r * rb..(r + 1) * rb);
        let mut s = Sink { out: std::ptr::null_mut(), x: x.as_ptr(), acc: [_mm256_setzero_ps(); 4] };
        match fmt {
            KQuant::Q6K => q6_k_rows::<true>(row, &mut s),
            KQuant::Q4K => q4_k_rows::<true>(row, &mut s),
        }
        let a = s.acc;
        *o = hsum_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}
