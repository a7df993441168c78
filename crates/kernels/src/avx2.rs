//! AVX2 + FMA (+ F16C) dot products. Each computes the same integer sums
//! as its scalar reference in `dot` and differs only in the order of the
//! float accumulation; tests hold them to the reference on random blocks.
//!
//! Only reached through `dispatch`, after `is_x86_feature_detected!` has
//! confirmed avx2, fma and f16c.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use plumb_quant::blocks::*;

/// f16 → f32 with the F16C instruction (the `half` crate's portable
/// conversion is several times slower in these loops).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn d16(h: F16le) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(h) as i32)))
}

/// Horizontal sum of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum_ps(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Σ x·y over 32 signed bytes each, as 8 i32 lanes (as float).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    // maddubs needs an unsigned left operand: |x| and y with x's sign.
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    let dot16 = _mm256_maddubs_epi16(ax, sy);
    let dot32 = _mm256_madd_epi16(dot16, _mm256_set1_epi16(1));
    _mm256_cvtepi32_ps(dot32)
}

/// 16 bytes of nibbles → 32 bytes: low nibbles first, then high.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 32 bits → 32 bytes of 0xFF where the bit is set.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn bytes_from_bits_32(x: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0x0000000000000000);
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
    let bytes = _mm256_or_si256(bytes, bit_mask);
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

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

/// [`f32_f32`] of one row `w` against four rows `x`, on 512-bit registers:
/// per pair, lanes 0–15 of `a` are its accumulators 0 and 1 and of `b` 2
/// and 3, the tail is added one product at a time; the same operations in
/// the same order, so each result equals [`f32_f32`]'s bit for bit.
#[target_feature(enable = "avx512f,avx2,fma")]
pub unsafe fn f32_f32_x4_512(w: &[f32], x: [&[f32]; 4]) -> [f32; 4] {
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

/// Σ over 16 i16 lanes of products with 16-bit scales, as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn madd_scale(p16: __m256i, scale: i16) -> __m256i {
    _mm256_madd_epi16(p16, _mm256_set1_epi16(scale))
}

/// One Q4_K superblock against its Q8_K block: Σ scale·q·y in eight i32
/// lanes (exact), and Σ min·Σy per pair of sub-blocks.
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

/// Sum of eight i32 lanes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let mut l = [0i32; 8];
    _mm256_storeu_si256(l.as_mut_ptr() as *mut __m256i, v);
    l.iter().sum()
}

/// The K-quants with mins (Q4_K, Q5_K), summed as llama.cpp's
/// `ggml_vec_dot_q4_K_q8_K` does on AVX2: each superblock's lanes fused
/// into eight f32 lanes; the mins' term in four lanes, one per pair of
/// sub-blocks, fused multiply-adds, summed (0+2)+(1+3) at the end.
macro_rules! k_with_mins {
    ($name:ident, $tiled:ident, $block:ty, $sums:ident) => {
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
                for (am, m) in acc_m.iter_mut().zip(msum) {
                    *am = dmin.mul_add(m as f32, *am);
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            hsum_ps(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]))
        }

        /// The same dot product summed as llama.cpp's tiled K-quant matmul
        /// sums it (batches of eight or more tokens): see `dot::q4_k_q8_k_tiled`.
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

k_with_mins!(q4_k_q8_k, q4_k_q8_k_tiled, BlockQ4K, q4_k_sums);
k_with_mins!(q5_k_q8_k, q5_k_q8_k_tiled, BlockQ5K, q5_k_sums);

/// The 128 quants of one half of a Q6_K block as four groups of 32
/// unsigned 6-bit values (elements 0–31, 32–63, 64–95, 96–127 of the half).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_half(x: &BlockQ6K, half: usize) -> [__m256i; 4] {
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

/// The 32 signed weights of one block of the Q8_0-paired formats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q8_0(b: &[u8]) -> __m256i {
    _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4_0(b: &[u8]) -> __m256i {
    _mm256_sub_epi8(nibbles_32(b.as_ptr().add(2)), _mm256_set1_epi8(8))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q5_0(b: &[u8]) -> __m256i {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let lo = nibbles_32(b.as_ptr().add(6));
    let hi = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
    _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(16))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_iq4_nl(b: &[u8]) -> __m256i {
    let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    _mm256_shuffle_epi8(table, nibbles_32(b.as_ptr().add(2)))
}

/// Bytes per block of Q8_0-paired format `kind` (0 Q8_0, 1 Q4_0, 2 Q5_0,
/// 3 IQ4_NL).
const fn q8_family_block_bytes(kind: u8) -> usize {
    match kind {
        0 => 34,
        2 => 22,
        _ => 18,
    }
}

/// The 32 signed weights of one block of Q8_0-paired format `KIND` (0 Q8_0,
/// 1 Q4_0, 2 Q5_0, 3 IQ4_NL).
#[inline(always)]
unsafe fn unpack_q8_family<const KIND: u8>(blk: &[u8]) -> __m256i {
    match KIND {
        0 => unpack_q8_0(blk),
        1 => unpack_q4_0(blk),
        2 => unpack_q5_0(blk),
        _ => unpack_iq4_nl(blk),
    }
}

/// One weight row against four activation rows (Q8_0), unpacking each
/// weight block once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_q8_family<const KIND: u8>(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    let bb = q8_family_block_bytes(KIND);
    let nb = w.len() / bb;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in 0..nb {
        let blk = w.get_unchecked(i * bb..(i + 1) * bb);
        let dx = d16([blk[0], blk[1]]);
        let qx = unpack_q8_family::<KIND>(blk);
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

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_0_q8_0_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    dot4_q8_family::<0>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q4_0_q8_0_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    dot4_q8_family::<1>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q5_0_q8_0_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    dot4_q8_family::<2>(w, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn iq4_nl_q8_0_x4(w: &[u8], a: [&[u8]; 4]) -> [f32; 4] {
    dot4_q8_family::<3>(w, a)
}

// ---- AVX-512 VNNI (256-bit, AVX512VL) variants of the four-token kernels.
// The weights are offset to unsigned (q + OFFSET) so one `vpdpbusd` takes
// the place of sign·maddubs·madd; the offset's contribution, −OFFSET × the
// sum of each lane's four activation quants, is computed once per
// activation block (`ActAux`) and starts the lane. The lanes' integers are
// the same as the AVX2 kernel's, and so is every float operation after
// them: the results are bit-identical, only faster.

/// Per activation block (Q8_0) for the VNNI kernels: its scale in f32 and,
/// per i32 lane, −offset × the sum of the lane's four quants.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub struct ActAux {
    pub corr: [i32; 8],
    pub d: f32,
}

/// The weight offset of a Q8_0-paired format in the VNNI kernels.
pub fn vnni_offset(kind: u8) -> i32 {
    match kind {
        1 => 8,   // Q4_0: −8..7
        2 => 16,  // Q5_0: −16..15
        _ => 128, // Q8_0, IQ4_NL: any i8
    }
}

/// [`ActAux`] for each block of one activation row.
pub fn act_aux(row: &[u8], offset: i32, out: &mut Vec<ActAux>) {
    out.extend(row.chunks_exact(34).map(|y| ActAux::of(y, offset)));
}

impl ActAux {
    /// The scale and lane corrections of one Q8_0 activation block (34 bytes).
    fn of(y: &[u8], offset: i32) -> ActAux {
        let mut a = ActAux { d: plumb_quant::blocks::f16_to_f32([y[0], y[1]]), ..Default::default() };
        for (l, c) in a.corr.iter_mut().enumerate() {
            let s: i32 = y[2 + 4 * l..6 + 4 * l].iter().map(|&q| q as i8 as i32).sum();
            *c = -offset * s;
        }
        a
    }
}

/// Bytes ahead of use at which the decoding kernels prefetch their weights.
const PREFETCH_AHEAD: usize = 4096;

/// Many weight rows against one activation row (decoding), one row after
/// another; each output equals the single-row kernel's bit for bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn rows_q8_family_vnni<const KIND: u8>(w: &[u8], rb: usize, a: &[u8], aux: &[ActAux], out: &mut [f32]) {
    let bb = q8_family_block_bytes(KIND);
    let nb = rb / bb;
    let off = _mm256_set1_epi8(vnni_offset(KIND) as i8);
    let end = w.as_ptr().wrapping_add(w.len());
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get_unchecked(r * rb..(r + 1) * rb);
        let mut acc = _mm256_setzero_ps();
        for i in 0..nb {
            let blk = row.get_unchecked(i * bb..(i + 1) * bb);
            // The weights stream from memory once: ask for them a few rows
            // ahead of use (a hint only; never past this task's rows).
            let ahead = blk.as_ptr().wrapping_add(PREFETCH_AHEAD);
            if ahead < end {
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            }
            let qx = unpack_q8_family::<KIND>(blk);
            let ax = aux.get_unchecked(i);
            let qy = _mm256_loadu_si256(a.as_ptr().add(i * 34 + 2) as *const __m256i);
            let corr = _mm256_loadu_si256(ax.corr.as_ptr() as *const __m256i);
            let sum = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, _mm256_add_epi8(qx, off), qy));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d16([blk[0], blk[1]]) * ax.d), sum, acc);
        }
        *o = hsum_ps(acc);
    }
}

/// The VNNI multi-row kernel for format `kind` (0 Q8_0, 1 Q4_0, 2 Q5_0,
/// 3 IQ4_NL).
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn rows_vnni(kind: u8, w: &[u8], rb: usize, a: &[u8], aux: &[ActAux], out: &mut [f32]) {
    match kind {
        0 => rows_q8_family_vnni::<0>(w, rb, a, aux, out),
        1 => rows_q8_family_vnni::<1>(w, rb, a, aux, out),
        2 => rows_q8_family_vnni::<2>(w, rb, a, aux, out),
        _ => rows_q8_family_vnni::<3>(w, rb, a, aux, out),
    }
}

// ---- VNNI register tiles for prefill: four weight rows × four tokens.
// A task unpacks its weight rows once (unsigned, as the kernels above use
// them) and packs the tokens' blocks once, so the inner loop does only the
// integer dot (`vpdpbusd`, started from the lane correction), the
// conversion, the scale product and the fused multiply-add, each on 256
// bits. Every (row, token) sees the same lane integers and the same float
// operations in the same order as [`rows_vnni`] (and the AVX2 kernels): the
// results are identical.

/// 32 bytes, aligned for the packed tiles.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Chunk(pub [u8; 32]);

/// Chunks per (group of four weight rows, block): the four rows' unsigned
/// quants, then their four scales twice over (f32).
pub const W_CHUNKS: usize = 5;
/// Chunks per (group of four tokens, block): the four tokens' quants, their
/// lane corrections (8 × i32 each), then their four scales (f32).
pub const A_CHUNKS: usize = 9;

/// Packs `rows` weight rows (Q8_0-family format `kind`, `rb` bytes each, `nb`
/// blocks) for [`tile_vnni`], in groups of four; a short last group is
/// padded with zero rows.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn pack_weights_vnni(kind: u8, w: &[u8], rb: usize, nb: usize, out: &mut Vec<Chunk>) {
    let rows = w.len() / rb;
    let bb = q8_family_block_bytes(kind);
    debug_assert_eq!(bb * nb, rb);
    let groups = rows.div_ceil(4);
    out.clear();
    out.resize(groups * nb * W_CHUNKS, Chunk::default());
    let off = _mm256_set1_epi8(vnni_offset(kind) as i8);
    for r in 0..rows {
        let (g, k) = (r / 4, r % 4);
        for i in 0..nb {
            let blk = w.get_unchecked(r * rb + i * bb..r * rb + (i + 1) * bb);
            let qx = match kind {
                0 => unpack_q8_0(blk),
                1 => unpack_q4_0(blk),
                2 => unpack_q5_0(blk),
                _ => unpack_iq4_nl(blk),
            };
            let base = (g * nb + i) * W_CHUNKS;
            _mm256_store_si256(out.as_mut_ptr().add(base + k) as *mut __m256i, _mm256_add_epi8(qx, off));
            let d = out.as_mut_ptr().add(base + 4) as *mut f32;
            let v = d16([blk[0], blk[1]]);
            *d.add(k) = v;
            *d.add(k + 4) = v;
        }
    }
}

/// Packs `t` Q8_0 activation rows (`row(i)`, `nb` blocks each) for
/// [`tile_vnni`] with the lane corrections of `kind`, in groups of four; a
/// short last group is padded with zero tokens.
pub fn pack_acts_vnni<'a>(kind: u8, t: usize, nb: usize, row: impl Fn(usize) -> &'a [u8], out: &mut Vec<Chunk>) {
    let offset = vnni_offset(kind);
    out.clear();
    out.resize(t.div_ceil(4) * nb * A_CHUNKS, Chunk::default());
    for ti in 0..t {
        let (g, k) = (ti / 4, ti % 4);
        for (i, y) in row(ti).chunks_exact(34).enumerate() {
            let base = (g * nb + i) * A_CHUNKS;
            let a = ActAux::of(y, offset);
            out[base + k].0.copy_from_slice(&y[2..34]);
            out[base + 4 + k].0.copy_from_slice(bytemuck::bytes_of(&a.corr));
            out[base + 8].0[4 * k..4 * k + 4].copy_from_slice(&a.d.to_le_bytes());
        }
    }
}

/// Lane `r` of each 128-bit half of `v`, in every lane.
#[inline(always)]
unsafe fn lane(v: __m256, r: usize) -> __m256 {
    match r {
        0 => _mm256_shuffle_ps::<0x00>(v, v),
        1 => _mm256_shuffle_ps::<0x55>(v, v),
        2 => _mm256_shuffle_ps::<0xAA>(v, v),
        _ => _mm256_shuffle_ps::<0xFF>(v, v),
    }
}

/// One group of four packed weight rows against one group of four packed
/// tokens over `nb` blocks: `[token][row]`.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn tile_vnni(w: &[Chunk], a: &[Chunk], nb: usize) -> [[f32; 4]; 4] {
    debug_assert!(w.len() >= nb * W_CHUNKS && a.len() >= nb * A_CHUNKS);
    let mut acc = [[_mm256_setzero_ps(); 4]; 4];
    let (mut wp, mut ap) = (w.as_ptr(), a.as_ptr());
    for _ in 0..nb {
        // (A loop, not `array::from_fn`: a closure is compiled without this
        // function's target features.)
        let mut wq = [_mm256_setzero_si256(); 4];
        for (r, q) in wq.iter_mut().enumerate() {
            *q = _mm256_load_si256(wp.add(r) as *const __m256i);
        }
        let da = _mm256_load_ps(wp.add(4) as *const f32);
        for (k, acc) in acc.iter_mut().enumerate() {
            let qy = _mm256_load_si256(ap.add(k) as *const __m256i);
            let corr = _mm256_load_si256(ap.add(4 + k) as *const __m256i);
            let d = _mm256_mul_ps(da, _mm256_broadcast_ss(&*(ap.add(8) as *const f32).add(k)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let sum = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, wq[r], qy));
                *acc = _mm256_fmadd_ps(lane(d, r), sum, *acc);
            }
        }
        wp = wp.add(W_CHUNKS);
        ap = ap.add(A_CHUNKS);
    }
    let mut out = [[0f32; 4]; 4];
    for k in 0..4 {
        for r in 0..4 {
            out[k][r] = hsum_ps(acc[k][r]);
        }
    }
    out
}

// ---- VNNI register tiles for the K-quants in llama.cpp's tiled order:
// eight weight rows in the eight i32 lanes × eight tokens. The weights are
// repacked once per task so that one 32-byte load holds four consecutive
// quants of each of the eight rows; each token's four matching quants are
// broadcast, and one `vpdpbusd` advances eight rows at once. The integer
// sums per superblock are exact whatever the order, and the float steps
// after them are the one-token kernel's, lane by lane: the results are
// identical to [`q4_k_q8_k_tiled`] and [`q6_k_q8_k_tiled`].

/// Chunks per (group of eight K-quant rows, superblock): 64 of quants
/// (unsigned; chunk s holds elements 4s..4s+4 of each row), 16 of
/// per-sub-block scales (i32 lanes), 8 of i16 pairs taken against pairs of
/// the activations' 16-element sums, then the scale d and −dmin (f32).
pub const K_CHUNKS: usize = 90;
const K_SCALES: usize = 64;
const K_PAIRS: usize = 80;
const K_D: usize = 88;
const K_NEG_DMIN: usize = 89;

/// Packs Q4_K (`q6` false) or Q6_K rows (`rb` bytes each, `nsb`
/// superblocks) for [`tile_k_vnni`], in groups of eight; a short last group
/// is padded with zero rows.
pub fn pack_k_rows(q6: bool, w: &[u8], rb: usize, nsb: usize, out: &mut Vec<Chunk>) {
    let rows = w.len() / rb;
    out.clear();
    out.resize(rows.div_ceil(8) * nsb * K_CHUNKS, Chunk::default());
    let put_i32 = |c: &mut Chunk, lane: usize, v: i32| c.0[4 * lane..4 * lane + 4].copy_from_slice(&v.to_le_bytes());
    let put_pair = |c: &mut Chunk, lane: usize, a: i16, b: i16| {
        c.0[4 * lane..4 * lane + 2].copy_from_slice(&a.to_le_bytes());
        c.0[4 * lane + 2..4 * lane + 4].copy_from_slice(&b.to_le_bytes());
    };
    for r in 0..rows {
        let (g, lane) = (r / 8, r % 8);
        for s in 0..nsb {
            let base = (g * nsb + s) * K_CHUNKS;
            let p = &mut out[base..base + K_CHUNKS];
            let mut q = [0u8; 256];
            if q6 {
                let blk: &BlockQ6K = bytemuck::from_bytes(&w[r * rb + s * 210..r * rb + (s + 1) * 210]);
                for (o, v) in q.iter_mut().zip(blk.quants()) {
                    *o = (v + 32) as u8;
                }
                for j in 0..16 {
                    put_i32(&mut p[K_SCALES + j], lane, blk.scales[j] as i32);
                }
                for c in 0..8 {
                    put_pair(&mut p[K_PAIRS + c], lane, blk.scales[2 * c] as i16, blk.scales[2 * c + 1] as i16);
                }
                put_i32(&mut p[K_D], lane, f16_to_f32(blk.d).to_bits() as i32);
            } else {
                let blk: &BlockQ4K = bytemuck::from_bytes(&w[r * rb + s * 144..r * rb + (s + 1) * 144]);
                for (e, o) in q.iter_mut().enumerate() {
                    let (j, l) = (e / 32, e % 32);
                    *o = (blk.qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0xF;
                }
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &blk.scales);
                    put_i32(&mut p[K_SCALES + j], lane, sc as i32);
                    // Sub-block j's min against both of its 16-element sums.
                    put_pair(&mut p[K_PAIRS + j], lane, m as i16, m as i16);
                }
                put_i32(&mut p[K_D], lane, f16_to_f32(blk.d).to_bits() as i32);
                put_i32(&mut p[K_NEG_DMIN], lane, (-f16_to_f32(blk.dmin)).to_bits() as i32);
            }
            for (step, c) in p[..64].iter_mut().enumerate() {
                c.0[4 * lane..4 * lane + 4].copy_from_slice(&q[4 * step..4 * step + 4]);
            }
        }
    }
}

/// One group of eight packed K-quant rows (Q6_K if `Q6`, else Q4_K)
/// against eight tokens' Q8_K rows over `nsb` superblocks: `[token][row]`.
/// `ys[k]` must point at `nsb` readable blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn tile_k_vnni<const Q6: bool>(w: &[Chunk], ys: [*const BlockQ8K; 8], nsb: usize) -> [[f32; 8]; 8] {
    debug_assert!(w.len() >= nsb * K_CHUNKS);
    let (nsub, steps) = if Q6 { (16, 4) } else { (8, 8) };
    let mut acc = [_mm256_setzero_ps(); 8];
    for s in 0..nsb {
        let wp = w.as_ptr().add(s * K_CHUNKS) as *const __m256i;
        let y: [&BlockQ8K; 8] = std::array::from_fn(|k| &*ys[k].add(s));
        let mut isum = [_mm256_setzero_si256(); 8];
        for j in 0..nsub {
            let mut p = [_mm256_setzero_si256(); 8];
            for st in j * steps..(j + 1) * steps {
                let wq = _mm256_load_si256(wp.add(st));
                for k in 0..8 {
                    let a = std::ptr::read_unaligned(y[k].qs.as_ptr().add(4 * st) as *const i32);
                    p[k] = _mm256_dpbusd_epi32(p[k], wq, _mm256_set1_epi32(a));
                }
            }
            let sc = _mm256_load_si256(wp.add(K_SCALES + j));
            for k in 0..8 {
                isum[k] = _mm256_add_epi32(isum[k], _mm256_mullo_epi32(p[k], sc));
            }
        }
        let d = _mm256_load_ps(wp.add(K_D) as *const f32);
        for k in 0..8 {
            let mut m = _mm256_setzero_si256();
            for c in 0..8 {
                let b = std::ptr::read_unaligned(y[k].bsums.as_ptr().add(2 * c) as *const i32);
                m = _mm256_dpwssd_epi32(m, _mm256_load_si256(wp.add(K_PAIRS + c)), _mm256_set1_epi32(b));
            }
            let yd = _mm256_set1_ps(y[k].d);
            acc[k] = if Q6 {
                // Σ scale·(q − 32)·y = Σ scale·q·y − 32·Σ scale·Σy.
                let total = _mm256_sub_epi32(isum[k], _mm256_slli_epi32(m, 5));
                _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(total), d), yd, acc[k])
            } else {
                let neg_dmin = _mm256_load_ps(wp.add(K_NEG_DMIN) as *const f32);
                let isd = _mm256_mul_ps(_mm256_cvtepi32_ps(isum[k]), d);
                _mm256_fmadd_ps(_mm256_fmadd_ps(neg_dmin, _mm256_cvtepi32_ps(m), isd), yd, acc[k])
            };
        }
    }
    let mut out = [[0f32; 8]; 8];
    for k in 0..8 {
        _mm256_storeu_ps(out[k].as_mut_ptr(), acc[k]);
    }
    out
}

// ---- Activation quantizers: the same roundings as `quantize_q8_0_act` and
// `quantize_q8_k` (multiply, round half to even, convert), eight lanes at a
// time. A block holding NaN or ±Inf takes the scalar code, whose
// float-to-int conversions saturate where these would not.

/// 32 i32 lanes (four registers, in order) to 32 bytes in order.
#[inline(always)]
unsafe fn pack_i32x32(v: [__m256i; 4], out: *mut u8) {
    let ab = _mm256_packs_epi32(v[0], v[1]);
    let cd = _mm256_packs_epi32(v[2], v[3]);
    let x = _mm256_packs_epi16(ab, cd);
    let x = _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out as *mut __m256i, x);
}

/// max |x| over 8·n lanes from `p`, and whether every lane is finite.
#[inline(always)]
unsafe fn abs_max(p: *const f32, n: usize) -> (f32, bool) {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    let mut finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    let inf = _mm256_set1_ps(f32::INFINITY);
    for i in 0..n {
        let a = _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i)));
        m = _mm256_max_ps(a, m);
        finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
    }
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    (_mm_cvtss_f32(h), _mm256_movemask_ps(finite) == 0xFF)
}

/// Q8_0 activation blocks (34 bytes each) of `x` into `out`, as
/// `plumb_quant::quantize::quantize_q8_0_act` makes them.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_0_act_avx2(x: &[f32], out: &mut [u8]) {
    for (b, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let (amax, finite) = abs_max(b.as_ptr(), 4);
        if !finite {
            o.copy_from_slice(bytemuck::bytes_of(&plumb_quant::quantize::quantize_q8_0_act(b)));
            continue;
        }
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        // (Loops, not `array::from_fn`: a closure is compiled without this
        // function's target features.)
        let mut q = [_mm256_setzero_si256(); 4];
        for (i, q) in q.iter_mut().enumerate() {
            let v = _mm256_mul_ps(_mm256_loadu_ps(b.as_ptr().add(8 * i)), id);
            *q = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v));
        }
        o[..2].copy_from_slice(&f32_to_f16(amax / 127.0));
        pack_i32x32(q, o.as_mut_ptr().add(2));
    }
}

/// Q8_K blocks of `x` into `out`, as `plumb_quant::quantize::quantize_q8_k`
/// makes them.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q8_k_avx2(x: &[f32], out: &mut [u8]) {
    for (b, o) in x.chunks_exact(256).zip(out.chunks_exact_mut(std::mem::size_of::<BlockQ8K>())) {
        let (amax, finite) = abs_max(b.as_ptr(), 32);
        if !finite || amax == 0.0 {
            o.copy_from_slice(bytemuck::bytes_of(&plumb_quant::quantize::quantize_q8_k(b)));
            continue;
        }
        // The signed value of the first element of largest magnitude.
        let max = *b.iter().find(|v| v.abs() == amax).unwrap_or(&0.0);
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        let blk: &mut BlockQ8K = bytemuck::from_bytes_mut(o);
        let cap = _mm256_set1_epi32(127);
        for c in 0..8 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (i, q) in q.iter_mut().enumerate() {
                let v = _mm256_mul_ps(is, _mm256_loadu_ps(b.as_ptr().add(32 * c + 8 * i)));
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                *q = _mm256_min_epi32(_mm256_cvtps_epi32(r), cap);
            }
            pack_i32x32(q, blk.qs.as_mut_ptr().add(32 * c) as *mut u8);
        }
        for (j, s) in blk.bsums.iter_mut().enumerate() {
            *s = blk.qs[j * 16..j * 16 + 16].iter().map(|&q| q as i16).sum();
        }
        blk.d = 1.0 / iscale;
    }
}

// ---- Exact precision, fused: each weight block dequantized in registers
// (q·d, one multiply, as the dequantizers below) and taken straight into
// the f32 dot product in [`f32_f32`]'s order (four accumulators of eight
// lanes at stride 32, combined (0+1)+(2+3)): bit-identical to dequantizing
// the row and then calling `f32_f32`, without the row's store and reload.

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exact_row_q8_family<const KIND: u8>(row: &[u8], x: &[f32]) -> f32 {
    let bb = q8_family_block_bytes(KIND);
    let mut acc = [_mm256_setzero_ps(); 4];
    let px = x.as_ptr();
    for i in 0..row.len() / bb {
        let blk = row.get_unchecked(i * bb..(i + 1) * bb);
        let dv = _mm256_set1_ps(d16([blk[0], blk[1]]));
        let q = unpack_q8_family::<KIND>(blk);
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

/// [`exact_row_q8_family`] on 512-bit registers: lanes 0–15 of `a` are its
/// accumulators 0 and 1, of `b` 2 and 3 (the same elements, the same
/// operations), in half the instructions.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn exact_row_q8_family_512<const KIND: u8>(row: &[u8], x: &[f32]) -> f32 {
    let bb = q8_family_block_bytes(KIND);
    let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let px = x.as_ptr();
    for i in 0..row.len() / bb {
        let blk = row.get_unchecked(i * bb..(i + 1) * bb);
        let dv = _mm512_set1_ps(d16([blk[0], blk[1]]));
        let (lo, hi) = if KIND == 0 {
            let p = blk.as_ptr().add(2) as *const __m128i;
            (_mm512_cvtepi8_epi32(_mm_loadu_si128(p)), _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(1))))
        } else {
            let q = unpack_q8_family::<KIND>(blk);
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

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn rows_exact_512(kind: u8, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get_unchecked(r * rb..(r + 1) * rb);
        *o = match kind {
            0 => exact_row_q8_family_512::<0>(row, x),
            1 => exact_row_q8_family_512::<1>(row, x),
            2 => exact_row_q8_family_512::<2>(row, x),
            _ => exact_row_q8_family_512::<3>(row, x),
        };
    }
}

/// Exact-precision outputs of consecutive rows of a Q8_0-family matrix
/// (kind as in [`rows_vnni`]) against one f32 activation row.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_exact(kind: u8, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    if crate::has_avx512f() {
        return rows_exact_512(kind, w, rb, x, out);
    }
    rows_exact_avx2(kind, w, rb, x, out)
}

/// [`rows_exact`] on 256-bit registers only (what a CPU without AVX-512
/// runs; public for the tests that hold both to the same bits).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_exact_avx2(kind: u8, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get_unchecked(r * rb..(r + 1) * rb);
        *o = match kind {
            0 => exact_row_q8_family::<0>(row, x),
            1 => exact_row_q8_family::<1>(row, x),
            2 => exact_row_q8_family::<2>(row, x),
            _ => exact_row_q8_family::<3>(row, x),
        };
    }
}

// ---- Dequantizers: the same per-element float operations as the scalar
// references in plumb-quant (one multiply, then the min), so their output
// is bit-identical; no fused multiply-add.

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

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        store_i8x32_scaled(unpack_q8_0(b), d16([b[0], b[1]]), y.as_mut_ptr());
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        store_i8x32_scaled(unpack_q5_0(b), d16([b[0], b[1]]), y.as_mut_ptr());
    }
}

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
struct Sink {
    out: *mut f32,
    x: *const f32,
    acc: [__m256; 4],
}

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

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k_rows<const DOT: bool>(src: &[u8], s: &mut Sink) {
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

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_rows<const DOT: bool>(src: &[u8], s: &mut Sink) {
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

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    q4_k_rows::<false>(src, &mut Sink { out: dst.as_mut_ptr(), x: std::ptr::null(), acc: [_mm256_setzero_ps(); 4] });
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    q6_k_rows::<false>(src, &mut Sink { out: dst.as_mut_ptr(), x: std::ptr::null(), acc: [_mm256_setzero_ps(); 4] });
}

/// Exact-precision outputs of consecutive Q4_K (`q6` false) or Q6_K rows
/// against one f32 activation row, fused as [`rows_exact`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows_exact_k(q6: bool, w: &[u8], rb: usize, x: &[f32], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let row = w.get_unchecked(r * rb..(r + 1) * rb);
        let mut s = Sink { out: std::ptr::null_mut(), x: x.as_ptr(), acc: [_mm256_setzero_ps(); 4] };
        if q6 {
            q6_k_rows::<true>(row, &mut s);
        } else {
            q4_k_rows::<true>(row, &mut s);
        }
        let a = s.acc;
        *o = hsum_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    }
}

/// `out[k] = dot(row k of w, a)` for consecutive rows of `rb` bytes: the
/// per-row kernel inlined into one loop, so a short row (640 weights is 20
/// blocks) does not pay a call and its checks per row.
macro_rules! rows_kernel {
    ($name:ident, $dot:ident) => {
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
