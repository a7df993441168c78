//! AVX512F kernels: the f32 sums of the AVX2 kernels laid out in 512-bit
//! registers, where that keeps every lane's arithmetic — lanes 0–15 of a
//! 512-bit accumulator are two of the 256-bit kernel's accumulators, the
//! same elements meet the same operations in the same order — so each
//! result equals its 256-bit counterpart bit for bit, in fewer
//! instructions. The exact precision's Q8_0-family rows and four-token f32
//! dots; the fast precision's attention tiles and softmax (`mirror`'s
//! sums and exp).
//!
//! Not here: integer dot products with AVX-512 VNNI ([`super::vnni`]).

use std::arch::x86_64::*;

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

/// Four queries × four keys of `mirror::dot_f32_grid` and
/// `mirror::dot_f32_blocked`.
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA; `n` is a multiple of 64 and every pointer is readable for `n`
/// floats.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn avx512_dot_lanes_4x4(q: [*const f32; 4], k: [*const f32; 4], n: usize) -> [[f32; 4]; 4] {
    dot_lanes_4x4(q, k, n)
}

/// Four queries × `nk` keys, `ks` floats apart from `k`, of
/// `mirror::dot_f32_blocked`, in tiles of four keys (the last key repeated
/// to fill the last tile): query a's score of key j lands in `out[a] + j`
/// for j in `keep[a]` (and nowhere else).
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA; `n` is a multiple of 64, every query
/// pointer is readable for `n` floats and so is each key j < nk; `out[a]`
/// is writable at `keep[a]` ∩ 0..nk and no other reference to that memory
/// is used meanwhile.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn avx512_dot_lanes_4xn(
    q: [*const f32; 4],
    k: *const f32,
    ks: usize,
    nk: usize,
    n: usize,
    out: [*mut f32; 4],
    keep: [(usize, usize); 4],
) {
    for j0 in (0..nk).step_by(4) {
        let kj = [j0, (j0 + 1).min(nk - 1), (j0 + 2).min(nk - 1), (j0 + 3).min(nk - 1)];
        let v = dot_lanes_4x4(q, kj.map(|j| k.add(j * ks)), n);
        for a in 0..4 {
            let (from, to) = (keep[a].0, keep[a].1.min(nk));
            if from <= j0 && j0 + 4 <= to {
                _mm_storeu_ps(out[a].add(j0), _mm_loadu_ps(v[a].as_ptr()));
                continue;
            }
            for (b, &x) in v[a].iter().enumerate() {
                if (from..to).contains(&(j0 + b)) {
                    *out[a].add(j0 + b) = x;
                }
            }
        }
    }
}

/// The tile of [`avx512_dot_lanes_4x4`], to inline.
///
/// # Safety
/// As [`avx512_dot_lanes_4x4`].
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_lanes_4x4(q: [*const f32; 4], k: [*const f32; 4], n: usize) -> [[f32; 4]; 4] {
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
    let mut z = [[_mm512_setzero_ps(); 4]; 4];
    for a in 0..4 {
        for b in 0..4 {
            z[a][b] = _mm512_add_ps(even[a][b], odd[a][b]);
        }
    }
    fold16_4x4(z)
}

/// `mirror::fold16` of sixteen registers at once: each result makes the
/// same additions of the same lanes as [`super::lanes::avx2_fold16`] of its
/// register, but the sixteen share each instruction (a transposing reduction: the
/// 256-bit halves, the 128-bit quarters, then lanes 0 + 2 and 1 + 3, then
/// those two), so a tile spends 45 instructions on its sixteen sums, not
/// 128.
///
/// # Safety
/// The CPU has AVX512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn fold16_4x4(z: [[__m512; 4]; 4]) -> [[f32; 4]; 4] {
    // Register p = 4b + a in, so that result lane 4a + b comes out as
    // out[a][b] (the steps below transpose the 4 × 4).
    let w: [__m512; 16] = std::array::from_fn(|p| z[p % 4][p / 4]);
    // v = high 256 bits + low 256 bits: lanes 0–7 of register p's, 8–15 of p + 1's.
    let v: [__m512; 8] = std::array::from_fn(|c| {
        let (x, y) = (w[2 * c], w[2 * c + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0xEE>(x, y), _mm512_shuffle_f32x4::<0x44>(x, y))
    });
    // x = high 128 bits + low 128 bits of each v: 128-bit block k of
    // x[e] is register 4e + k's.
    let x: [__m512; 4] = std::array::from_fn(|e| {
        let (c, d) = (v[2 * e], v[2 * e + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0xDD>(c, d), _mm512_shuffle_f32x4::<0x88>(c, d))
    });
    // y0 = x0 + x2, y1 = x1 + x3: block k of y[g] holds those of registers
    // 8g + k (lanes 0, 1) and 8g + 4 + k (lanes 2, 3).
    let y: [__m512; 2] = std::array::from_fn(|g| {
        let (e, f) = (x[2 * g], x[2 * g + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(e, f), _mm512_shuffle_ps::<0xEE>(e, f))
    });
    // y0 + y1: lane 4k + m is register 4m + k's.
    let r = _mm512_add_ps(_mm512_shuffle_ps::<0x88>(y[0], y[1]), _mm512_shuffle_ps::<0xDD>(y[0], y[1]));
    let mut out = [[0f32; 4]; 4];
    _mm512_storeu_ps(out.as_mut_ptr().cast(), r);
    out
}

/// Four rows × `ne` columns, `vs` floats apart from `v`, of
/// `mirror::dot_f32_tiled_blocked`, in tiles of four columns (the last
/// repeated to fill the last tile): row a's output e lands in
/// `out[a] + e`. Row a's lanes take positions spans[a] = (from, to),
/// `from` a multiple of 16, reading `p[a]` (position 0's address) only
/// inside it and adding zeros up to `to` rounded up to 16, where its lanes
/// stop.
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA; each `p[a]` is readable at positions
/// spans[a], every column e < ne up to the largest `to` rounded up to 16;
/// each `out[a]` is writable for `ne` floats and no other reference to that
/// memory is used meanwhile.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn avx512_dot_tiled_4xn(
    p: [*const f32; 4],
    spans: [(usize, usize); 4],
    v: *const f32,
    vs: usize,
    ne: usize,
    out: [*mut f32; 4],
) {
    for e0 in (0..ne).step_by(4) {
        let ei = [e0, (e0 + 1).min(ne - 1), (e0 + 2).min(ne - 1), (e0 + 3).min(ne - 1)];
        let r = dot_tiled_4x4(p, spans, ei.map(|e| v.add(e * vs)));
        for a in 0..4 {
            if e0 + 4 <= ne {
                _mm_storeu_ps(out[a].add(e0), _mm_loadu_ps(r[a].as_ptr()));
            } else {
                for (b, &x) in r[a].iter().enumerate().take(ne - e0) {
                    *out[a].add(e0 + b) = x;
                }
            }
        }
    }
}

/// Four rows × four columns of [`avx512_dot_tiled_4xn`].
///
/// # Safety
/// As [`avx512_dot_tiled_4xn`], for the four columns `v`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dot_tiled_4x4(p: [*const f32; 4], spans: [(usize, usize); 4], v: [*const f32; 4]) -> [[f32; 4]; 4] {
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    let lo = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let hi = spans.iter().map(|s| s.1.div_ceil(16) * 16).max().unwrap_or(0);
    // Positions where every row takes whole groups of 16.
    let whole_from = spans.iter().map(|s| s.0).max().unwrap_or(0);
    let whole_to = spans.iter().map(|s| s.1 / 16 * 16).min().unwrap_or(0);
    let mut j = lo;
    while j < hi {
        if j >= whole_from && j + 16 <= whole_to {
            while j + 16 <= whole_to {
                let mut vv = [_mm512_setzero_ps(); 4];
                for b in 0..4 {
                    vv[b] = _mm512_loadu_ps(v[b].add(j));
                }
                for a in 0..4 {
                    let pv = _mm512_loadu_ps(p[a].add(j));
                    for b in 0..4 {
                        acc[a][b] = _mm512_fmadd_ps(pv, vv[b], acc[a][b]);
                    }
                }
                j += 16;
            }
            continue;
        }
        // A group at an edge: rows outside their span skip it; a row
        // ending inside it reads its positions and adds zeros for the rest.
        let mut vv = [_mm512_setzero_ps(); 4];
        for b in 0..4 {
            vv[b] = _mm512_loadu_ps(v[b].add(j));
        }
        for a in 0..4 {
            let (from, to) = spans[a];
            if j < from || j >= to.div_ceil(16) * 16 {
                continue;
            }
            let mask: __mmask16 = if j + 16 <= to { 0xffff } else { (1u16 << (to - j)) - 1 };
            let pv = _mm512_maskz_loadu_ps(mask, p[a].add(j));
            for b in 0..4 {
                acc[a][b] = _mm512_fmadd_ps(pv, vv[b], acc[a][b]);
            }
        }
        j += 16;
    }
    fold16_4x4(acc)
}

/// `mirror::softmax_visible` of a row every position of which takes part
/// (hidden ones hold −∞), bit for bit: the maximum lane by lane then
/// across the lanes, each step taking a value only when it is strictly
/// larger as the scalar fold does (the same maximum; where +0 and −0 tie
/// either gives the same x − max); eˣ⁻ᵐᵃˣ of each group of 16 by
/// [`exp16`] (the last group padded with −∞), folded as `avx2_fold16`
/// does and added to an f64 total in order; every value times
/// (f32)(1 / total).
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn avx512_softmax(row: &mut [f32]) {
    let n = row.len();
    let ptr = row.as_mut_ptr();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mask_at = |i: usize| -> __mmask16 {
        if i + 16 <= n {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        }
    };
    let mut m = ninf;
    for i in (0..n).step_by(16) {
        let v = _mm512_mask_loadu_ps(ninf, mask_at(i), ptr.add(i));
        m = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, m), m, v);
    }
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), m);
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let vmax = _mm512_set1_ps(max);
    let mut sum = 0f64;
    for i in (0..n).step_by(16) {
        let k = mask_at(i);
        let e = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k, ptr.add(i)), vmax));
        _mm512_mask_storeu_ps(ptr.add(i), k, e);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
        sum += super::lanes::avx2_fold16(_mm512_castps512_ps256(e), hi) as f64;
    }
    let inv = _mm512_set1_ps((1.0 / sum) as f32);
    for i in (0..n).step_by(16) {
        let k = mask_at(i);
        _mm512_mask_storeu_ps(ptr.add(i), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, ptr.add(i)), inv));
    }
}

/// Sixteen lanes of `mirror::exp_approx`: `lanes::avx2_exp8`'s operations
/// on a 512-bit register, so each lane is the same bits.
///
/// # Safety
/// The CPU has AVX512F, AVX2 and FMA.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exp16(x: __m512) -> __m512 {
    use crate::mirror::{C, LN2_HI, LN2_LO, LOG2E, SHIFTER};
    let c = |bits: u32| _mm512_set1_ps(f32::from_bits(bits));
    let z = _mm512_fmadd_ps(x, c(LOG2E), c(SHIFTER));
    let n = _mm512_sub_ps(z, c(SHIFTER));
    let b = _mm512_fnmadd_ps(n, c(LN2_LO), _mm512_fnmadd_ps(n, c(LN2_HI), x));
    let u = _mm512_mul_ps(b, b);
    let j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(c(C[4]), b, c(C[3])), u, _mm512_fmadd_ps(c(C[2]), b, c(C[1]))),
        u,
        _mm512_fmadd_ps(c(C[0]), b, _mm512_set1_ps(1.0)),
    );
    // 2ⁿ as two normal factors; lanes with |n| > 192 are replaced below.
    let abs = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(n), _mm512_set1_epi32(0x7fff_ffff)));
    let big = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(abs, _mm512_set1_ps(192.0));
    let ni = _mm512_cvttps_epi32(_mm512_mask_blend_ps(big, n, _mm512_setzero_ps()));
    let a = _mm512_srai_epi32::<1>(ni);
    let pow2 = |e: __m512i| _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(e, _mm512_set1_epi32(127))));
    let res = _mm512_mul_ps(_mm512_mul_ps(j, pow2(a)), pow2(_mm512_sub_epi32(ni, a)));
    let below = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, _mm512_setzero_ps());
    let alt = _mm512_mask_blend_ps(below, _mm512_set1_ps(f32::INFINITY), _mm512_setzero_ps());
    _mm512_mask_blend_ps(big, res, alt)
}
