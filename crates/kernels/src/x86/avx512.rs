//! AVX512F kernels: the f32 sums of the AVX2 kernels laid out in 512-bit
//! registers, where that keeps every lane's arithmetic — lanes 0–15 of a
//! 512-bit accumulator are two of the 256-bit kernel's accumulators, the
//! same elements meet the same operations in the same order — so each
//! result equals its 256-bit counterpart bit for bit, in fewer
//! instructions. The exact precision's Q8_0-family rows and four-token f32
//! dots; the fast precision's attention tiles (`mirror`'s sums).
//!
//! Not here: integer dot products with AVX-512 VNNI ([`super::vnni`]).

use std::arch::x86_64::*;

use super::lanes::avx2_fold16;
use super::{d16, hsum_ps, Q8Family, Q8Format};
use crate::mirror::LANES;

/// [`super::dot::f32_f32`] of one row `w` against four rows `x`, on 512-bit
/// registers: per pair, lanes 0–15 of `a` are its accumulators 0 and 1 and
/// of `b` 2 and 3, the tail is added one product at a time; the same
/// operations in the same order, so each result equals `f32_f32`'s bit for
/// bit.
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA; every `x[k].len() >= w.len()`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn f32_f32_x4(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
    let n = w.len();
    debug_assert!(x.iter().all(|r| r.len() >= n));
    let pw = w.as_ptr();
    let mut a = [_mm512_setzero_ps(); 4];
    let mut b = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        let (w0, w1) = (_mm512_loadu_ps(pw.add(i)), _mm512_loadu_ps(pw.add(i + 16)));
        for k in 0..4 {
            let px = x[k].as_ptr();
            a[k] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(px.add(i)), a[k]);
            b[k] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(px.add(i + 16)), b[k]);
        }
        i += 32;
    }
    let mut out = [0f32; 4];
    for k in 0..4 {
        let (ak, bk) = (_mm512_castps_pd(a[k]), _mm512_castps_pd(b[k]));
        let (a0, a1) =
            (_mm256_castpd_ps(_mm512_castpd512_pd256(ak)), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(ak)));
        let (b0, b1) =
            (_mm256_castpd_ps(_mm512_castpd512_pd256(bk)), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(bk)));
        let mut s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(b0, b1)));
        for j in i..n {
            s += *pw.add(j) * *x[k].as_ptr().add(j);
        }
        out[k] = s;
    }
    out
}

/// One exact-precision row of format `F` against `x`: `exact`'s 256-bit
/// row kernel with lanes 0–15 of `a` its accumulators 0 and 1, of `b` 2
/// and 3 (the same elements, the same operations), in half the
/// instructions.
///
/// # Safety
/// The CPU has AVX512F, AVX2, FMA and F16C;
/// `x.len() >= 32 * (row.len() / F::BLOCK_BYTES)`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn exact_row_q8_family_512<F: Q8Format>(row: &[u8], x: &[f32]) -> f32 {
    let bb = F::BLOCK_BYTES;
    let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let px = x.as_ptr();
    for i in 0..row.len() / bb {
        let blk = row.get_unchecked(i * bb..(i + 1) * bb);
        let dv = _mm512_set1_ps(d16([blk[0], blk[1]]));
        let (lo, hi) = if matches!(F::FORMAT, Q8Family::Q8_0) {
            // Q8_0's bytes are already the weights: widen straight from memory.
            let p = blk.as_ptr().add(2) as *const __m128i;
            (_mm512_cvtepi8_epi32(_mm_loadu_si128(p)), _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(1))))
        } else {
            let q = F::unpack(blk);
            (_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)), _mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)))
        };
        a = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(lo), dv), _mm512_loadu_ps(px.add(32 * i)), a);
        b = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(hi), dv), _mm512_loadu_ps(px.add(32 * i + 16)), b);
    }
    let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
    let (a0, a1) = (_mm256_castpd_ps(_mm512_castpd512_pd256(a)), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(a)));
    let (b0, b1) = (_mm256_castpd_ps(_mm512_castpd512_pd256(b)), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(b)));
    hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(b0, b1)))
}

/// `exact::rows_exact` on 512-bit registers, bit for bit.
///
/// # Safety
/// The CPU has AVX512F, AVX2, FMA and F16C; `w.len() >= out.len() * rb`
/// and `x` holds a row's elements (`exact::check_rows_exact`).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn rows_exact(fmt: Q8Family, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    super::with_q8_format!(fmt, F => {
        for (r, o) in out.iter_mut().enumerate() {
            *o = exact_row_q8_family_512::<F>(w.get_unchecked(r * rb..(r + 1) * rb), x);
        }
    })
}

/// Four queries × four keys of [`dot_f32_grid`]; `n` a multiple of 64 and
/// every pointer readable for `n` floats.
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA; `n` is a multiple of 64 and every pointer is readable for `n`
/// floats.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn avx512_dot_lanes_4x4(q: [*const f32; 4], k: [*const f32; 4], n: usize) -> [[f32; 4]; 4] {
    // Register m of the four (lanes 16m..16m+16, elements 16m + 64u, u =
    // 0, 1, … in order) holds accumulators 2m and 2m+1 of [`dot_f32`]'s
    // eight; its combination (0+4)+(2+6) | (1+5)+(3+7) is, as 512-bit
    // registers, (m0 + m2) + (m1 + m3): m0 + m2 and m1 + m3 are kept in
    // `even` and `odd` between the passes.
    let mut even = [[_mm512_setzero_ps(); 4]; 4];
    let mut odd = [[_mm512_setzero_ps(); 4]; 4];
    for m in [0usize, 2, 1, 3] {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut u = 0;
        while u < n {
            let off = u + 16 * m;
            let mut qv = [_mm512_setzero_ps(); 4];
            for a in 0..4 {
                qv[a] = _mm512_loadu_ps(q[a].add(off));
            }
            for b in 0..4 {
                let kv = _mm512_loadu_ps(k[b].add(off));
                for a in 0..4 {
                    acc[a][b] = _mm512_fmadd_ps(qv[a], kv, acc[a][b]);
                }
            }
            u += LANES;
        }
        for a in 0..4 {
            for b in 0..4 {
                match m {
                    0 => even[a][b] = acc[a][b],
                    2 => even[a][b] = _mm512_add_ps(even[a][b], acc[a][b]),
                    1 => odd[a][b] = acc[a][b],
                    _ => odd[a][b] = _mm512_add_ps(odd[a][b], acc[a][b]),
                }
            }
        }
    }
    let mut out = [[0f32; 4]; 4];
    for a in 0..4 {
        for b in 0..4 {
            let z = _mm512_castps_pd(_mm512_add_ps(even[a][b], odd[a][b]));
            let lo = _mm256_castpd_ps(_mm512_castpd512_pd256(z));
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(z));
            out[a][b] = avx2_fold16(lo, hi);
        }
    }
    out
}

/// Four queries × four outputs of [`dot_f32_tiled_grid`]: query a's lanes
/// take positions 0..lens[a] (non-decreasing multiples of 16).
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA; `lens` are non-decreasing multiples of 16 and `p[a]` is
/// readable for `lens[a]` floats, every `v[b]` for `lens[3]`.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn avx512_dot_tiled_4x4(p: [*const f32; 4], lens: [usize; 4], v: [*const f32; 4]) -> [[f32; 4]; 4] {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let mut j = 0;
    // Queries from `first` on are still running between lens[first - 1]
    // and lens[first].
    for (first, &end) in lens.iter().enumerate() {
        while j < end {
            let mut vv = [_mm512_setzero_ps(); 4];
            for b in 0..4 {
                vv[b] = _mm512_loadu_ps(v[b].add(j));
            }
            for a in first..4 {
                let pv = _mm512_loadu_ps(p[a].add(j));
                for b in 0..4 {
                    acc[a][b] = _mm512_fmadd_ps(pv, vv[b], acc[a][b]);
                }
            }
            j += 16;
        }
    }
    let mut out = [[0f32; 4]; 4];
    for a in 0..4 {
        for b in 0..4 {
            let lo = _mm512_castps512_ps256(acc[a][b]);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[a][b])));
            out[a][b] = avx2_fold16(lo, hi);
        }
    }
    out
}
