//! The f32 arithmetic of llama.cpp's x86 CPU backend as built natively for
//! an AVX-512 CPU (the build on plumb's reference machine), reproduced for
//! the fast precision's attention: its f32 dot product and its softmax
//! with a polynomial exp. Each has a scalar version that makes the same
//! roundings lane by lane (fused multiply-adds as `mul_add`), and an AVX2
//! version that keeps the 512-bit lanes in pairs of 256-bit registers;
//! tests hold the two to the same bits.
//!
//! The order of operations is the whole point here, so each function says
//! which order it keeps. (An AVX2-only build of llama.cpp sums in another
//! order; there plumb fast and llama.cpp agree to the last bit or so, not
//! bit for bit.)

#[cfg(target_arch = "x86_64")]
use crate::{active_path, KernelPath};

/// Lanes of the dot product's accumulators: four 512-bit registers.
const LANES: usize = 64;

/// Σ x·y as llama.cpp's `ggml_vec_dot_f32` sums it: 64 running fused
/// multiply-adds (lane l takes elements l, l+64, …); the four registers
/// added as (0+2)+(1+3), the halves of the result folded 256 → 128 → 64
/// bits, and the last two lanes added. Elements past the last multiple of
/// 64 are then added one at a time in f32: products rounded apart in runs
/// of 16 and of 8, fused for the last few (as the compiler built it).
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let n = x.len().min(y.len());
    let whole = n / LANES * LANES;
    #[cfg(target_arch = "x86_64")]
    let mut r = if active_path() == KernelPath::Avx2 {
        // SAFETY: Avx2 is only active after runtime detection.
        unsafe { avx2_dot_lanes(&x[..whole], &y[..whole]) }
    } else {
        scalar_dot_lanes(&x[..whole], &y[..whole])
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mut r = scalar_dot_lanes(&x[..whole], &y[..whole]);
    let mut i = whole;
    for run in [16, 8] {
        while n - i >= run {
            for k in i..i + run {
                r += x[k] * y[k];
            }
            i += run;
        }
    }
    for k in i..n {
        r = x[k].mul_add(y[k], r);
    }
    r
}

/// [`dot_f32`] of `x` against `out.len()` rows of `ys`, `stride` floats
/// apart: `out[r]` = Σ x·ys[r·stride..][..x.len()], each bit for bit as
/// [`dot_f32`] gives it; rows in pairs share the loads of `x`.
pub fn dot_f32_rows(x: &[f32], ys: &[f32], stride: usize, out: &mut [f32]) {
    let n = x.len();
    assert!(out.is_empty() || (out.len() - 1) * stride + n <= ys.len());
    #[cfg(target_arch = "x86_64")]
    if active_path() == KernelPath::Avx2 && n.is_multiple_of(LANES) {
        let mut r = 0;
        while r + 2 <= out.len() {
            let (y0, y1) = (&ys[r * stride..r * stride + n], &ys[(r + 1) * stride..(r + 1) * stride + n]);
            // SAFETY: Avx2 is only active after runtime detection.
            let v = unsafe { avx2_dot_lanes_x2(x, y0, y1) };
            out[r..r + 2].copy_from_slice(&v);
            r += 2;
        }
        if r < out.len() {
            out[r] = unsafe { avx2_dot_lanes(x, &ys[r * stride..r * stride + n]) };
        }
        return;
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_f32(x, &ys[r * stride..r * stride + n]);
    }
}

/// Two rows of [`avx2_dot_lanes`] at once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_lanes_x2(x: &[f32], y0: &[f32], y1: &[f32]) -> [f32; 2] {
    use std::arch::x86_64::*;
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

/// The 64-lane part of [`dot_f32`] (lengths a multiple of 64), lane by lane.
pub fn scalar_dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (xc, yc) in x.chunks_exact(LANES).zip(y.chunks_exact(LANES)) {
        for (l, (a, b)) in xc.iter().zip(yc).enumerate() {
            acc[l] = a.mul_add(*b, acc[l]);
        }
    }
    let mut w = [0f32; 16];
    for (l, w) in w.iter_mut().enumerate() {
        *w = (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]);
    }
    fold16(&w)
}

/// 16 lanes to one: 256-bit halves, 128-bit halves, 64-bit halves, then
/// lane 0 + lane 1 (the reduction both of llama.cpp's loops end with).
fn fold16(w: &[f32; 16]) -> f32 {
    let v: [f32; 8] = std::array::from_fn(|l| w[8 + l] + w[l]);
    let x: [f32; 4] = std::array::from_fn(|l| v[4 + l] + v[l]);
    (x[0] + x[2]) + (x[1] + x[3])
}

/// [`fold16`] of the 16 lanes `lo` (0–7) and `hi` (8–15), in registers:
/// the same additions in the same order.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_fold16(lo: std::arch::x86_64::__m256, hi: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let v = _mm256_add_ps(hi, lo);
    let x = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let y = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(y, _mm_movehdup_ps(y)))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_lanes(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
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

/// Σ x·y as llama.cpp's f32 matmul sums it for two or more tokens
/// (tinyBLAS): one 16-lane fused multiply-add accumulator over the whole
/// length, folded as [`fold16`] does, lane by lane. The length must be a
/// multiple of 16 (llama.cpp pads its KV cache so; pad with zeros). The
/// SIMD forms are [`dot_f32_tiled_rows`] and [`dot_f32_tiled_grid`].
pub fn scalar_dot_tiled(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (xc, yc) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for (l, (a, b)) in xc.iter().zip(yc).enumerate() {
            acc[l] = a.mul_add(*b, acc[l]);
        }
    }
    fold16(&acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_tiled(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
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

/// [`scalar_dot_tiled`] of `x` against `out.len()` rows of `ys`, `stride`
/// floats apart: `out[r]` = Σ x·ys[r·stride..][..x.len()], each bit for bit
/// as [`scalar_dot_tiled`] gives it. Several rows at a time share the loads of
/// `x` and keep enough accumulators in flight to hide the FMA latency.
pub fn dot_f32_tiled_rows(x: &[f32], ys: &[f32], stride: usize, out: &mut [f32]) {
    debug_assert!(x.len().is_multiple_of(16));
    assert!(out.is_empty() || (out.len() - 1) * stride + x.len() <= ys.len());
    #[cfg(target_arch = "x86_64")]
    if active_path() == KernelPath::Avx2 {
        let mut r = 0;
        while r + 8 <= out.len() {
            // SAFETY: Avx2 is only active after runtime detection; the
            // assert above keeps every row inside `ys`.
            let v = unsafe { avx2_dot_tiled_x8(x, ys.as_ptr().add(r * stride), stride) };
            out[r..r + 8].copy_from_slice(&v);
            r += 8;
        }
        for (k, o) in out.iter_mut().enumerate().skip(r) {
            *o = unsafe { avx2_dot_tiled(x, &ys[k * stride..k * stride + x.len()]) };
        }
        return;
    }
    for (k, o) in out.iter_mut().enumerate() {
        *o = scalar_dot_tiled(x, &ys[k * stride..k * stride + x.len()]);
    }
}

/// Eight rows of [`dot_f32_tiled_rows`]: the caller keeps rows `ys`,
/// `ys + stride`, … `ys + 7·stride` readable for `x.len()` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_dot_tiled_x8(x: &[f32], ys: *const f32, stride: usize) -> [f32; 8] {
    use std::arch::x86_64::*;
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

/// cos θ and sin θ for `t` positions from `p0`, `hd / 2` pairs each, as
/// llama.cpp's NeoX RoPE makes them: θ starts at the position and is
/// multiplied by base^(−2/hd) pair after pair (rounding at each step).
pub fn rope_neox_table(t: usize, p0: usize, hd: usize, base: f32) -> Vec<(f32, f32)> {
    use rayon::prelude::*;
    let half = hd / 2;
    let theta_scale = base.powf(-2.0 / hd as f32);
    let mut cs = vec![(0f32, 0f32); t * half];
    let row = |(ti, r): (usize, &mut [(f32, f32)])| {
        let mut theta = (p0 + ti) as f32;
        for c in r.iter_mut() {
            *c = (theta.cos(), theta.sin());
            theta *= theta_scale;
        }
    };
    if t < 16 {
        cs.chunks_mut(half.max(1)).enumerate().for_each(row);
    } else {
        cs.par_chunks_mut(half.max(1)).enumerate().for_each(row);
    }
    cs
}

/// NeoX RoPE of every head of `x` (rows of `width`, heads of `hd`) with
/// row `i`'s pairs from `cs` ([`rope_neox_table`]): element i and i + hd/2
/// turn into a·cos − b·sin and a·sin + b·cos, each one fused multiply-add
/// over a rounded product (as llama.cpp's compiled loop does).
pub fn rope_neox(x: &mut [f32], width: usize, hd: usize, cs: &[(f32, f32)]) {
    use rayon::prelude::*;
    let half = hd / 2;
    let row = |(row, cs): (&mut [f32], &[(f32, f32)])| {
        #[cfg(target_arch = "x86_64")]
        if active_path() == KernelPath::Avx2 {
            // SAFETY: Avx2 (with fma) is only active after runtime detection.
            return unsafe { rope_row_fma(row, hd, cs) };
        }
        rope_row(row, hd, cs)
    };
    if x.len() < 1 << 14 {
        x.chunks_exact_mut(width).zip(cs.chunks(half.max(1))).for_each(row);
    } else {
        x.par_chunks_exact_mut(width).zip(cs.par_chunks(half.max(1))).for_each(row);
    }
}

#[inline(always)]
fn rope_row(row: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    let half = hd / 2;
    for head in row.chunks_exact_mut(hd) {
        let (lo, hi) = head.split_at_mut(half);
        for ((a, b), &(cos, sin)) in lo.iter_mut().zip(hi.iter_mut()).zip(cs) {
            let (x0, x1) = (*a, *b);
            *a = x0.mul_add(cos, -(x1 * sin));
            *b = x0.mul_add(sin, x1 * cos);
        }
    }
}

/// [`rope_row`] with `mul_add` as the FMA instruction rather than a call.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rope_row_fma(row: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
    rope_row(row, hd, cs)
}

/// llama.cpp's table GELU over `xs`: x ≤ −10 → 0, x ≥ 10 → x, otherwise
/// `table[f16 bits of x]` (x rounded to f16, to nearest even). `table` has
/// one entry per f16 bit pattern.
pub fn gelu_by_f16_table(table: &[f32], xs: &mut [f32]) {
    assert_eq!(table.len(), 1 << 16);
    #[cfg(target_arch = "x86_64")]
    if active_path() == KernelPath::Avx2 {
        // SAFETY: Avx2 (with f16c) is only active after runtime detection;
        // every f16 bit pattern indexes the 65536-entry table.
        return unsafe { avx2_gelu_by_f16_table(table, xs) };
    }
    xs.iter_mut().for_each(|x| *x = gelu_by_f16_table_one(table, *x));
}

fn gelu_by_f16_table_one(table: &[f32], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[half::f16::from_f32(x).to_bits() as usize]
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn avx2_gelu_by_f16_table(table: &[f32], xs: &mut [f32]) {
    use std::arch::x86_64::*;
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

/// Attention scores as [`dot_f32`] sums each pair: `out[i·os + j]` =
/// dot_f32(q_i, k_j) for i < `lens.len()` and j < `lens[i]`, with q_i =
/// `q[i·qs..][..n]` and k_j = `k[j·ks..][..n]`; the rest of `out` is left as
/// it is. Where the CPU has AVX-512, tiles of four queries × four keys in
/// 512-bit registers, each pair's 64 lanes as [`dot_f32`] has them.
#[allow(clippy::too_many_arguments)]
pub fn dot_f32_grid(q: &[f32], qs: usize, k: &[f32], ks: usize, n: usize, lens: &[usize], out: &mut [f32], os: usize) {
    let nq = lens.len();
    let kmax = lens.iter().copied().max().unwrap_or(0);
    if nq == 0 || kmax == 0 {
        return;
    }
    assert!((nq - 1) * qs + n <= q.len() && (kmax - 1) * ks + n <= k.len());
    assert!(lens.iter().enumerate().all(|(i, &l)| l == 0 || i * os + l <= out.len()));
    #[cfg(target_arch = "x86_64")]
    if active_path() == KernelPath::Avx2 && crate::has_avx512f() && n.is_multiple_of(LANES) {
        for i0 in (0..nq).step_by(4) {
            let qi: [usize; 4] = [i0, (i0 + 1).min(nq - 1), (i0 + 2).min(nq - 1), (i0 + 3).min(nq - 1)];
            let jmax = qi.iter().map(|&i| lens[i]).max().unwrap_or(0);
            for j0 in (0..jmax).step_by(4) {
                let kj = [j0, (j0 + 1).min(jmax - 1), (j0 + 2).min(jmax - 1), (j0 + 3).min(jmax - 1)];
                // SAFETY: avx512f detected (and the Avx2 path's avx2, fma);
                // the asserts above keep every row inside q and k.
                let v = unsafe {
                    avx512_dot_lanes_4x4(
                        [0, 1, 2, 3].map(|a| q.as_ptr().add(qi[a] * qs)),
                        [0, 1, 2, 3].map(|b| k.as_ptr().add(kj[b] * ks)),
                        n,
                    )
                };
                for (a, row) in v.iter().enumerate().take(nq - i0) {
                    let i = i0 + a;
                    for (b, &val) in row.iter().enumerate() {
                        if j0 + b < lens[i] {
                            out[i * os + j0 + b] = val;
                        }
                    }
                }
            }
        }
        return;
    }
    for (i, &l) in lens.iter().enumerate() {
        if l > 0 {
            dot_f32_rows(&q[i * qs..i * qs + n], k, ks, &mut out[i * os..i * os + l]);
        }
    }
}

/// Four queries × four keys of [`dot_f32_grid`]; `n` a multiple of 64 and
/// every pointer readable for `n` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512_dot_lanes_4x4(q: [*const f32; 4], k: [*const f32; 4], n: usize) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
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

/// Attention context as [`scalar_dot_tiled`] sums each output: `out[i·os + e]`
/// = scalar_dot_tiled(p_i[..lens[i]], v_e[..lens[i]]) for i < `lens.len()`
/// and e < `ne`, with p_i = `p[i·ps..]` and v_e = `v[e·vs..]`. Each
/// `lens[i]` is a multiple of 16 and they do not decrease. Where the CPU
/// has AVX-512, tiles of four queries × four outputs, the 16 lanes in one
/// 512-bit register; each query's lanes stop at its own length.
#[allow(clippy::too_many_arguments)]
pub fn dot_f32_tiled_grid(
    p: &[f32],
    ps: usize,
    lens: &[usize],
    v: &[f32],
    vs: usize,
    ne: usize,
    out: &mut [f32],
    os: usize,
) {
    let nq = lens.len();
    let lmax = lens.iter().copied().max().unwrap_or(0);
    if nq == 0 || ne == 0 {
        return;
    }
    assert!(lens.iter().all(|l| l.is_multiple_of(16)) && lens.windows(2).all(|w| w[0] <= w[1]));
    assert!(lens.iter().enumerate().all(|(i, &l)| i * ps + l <= p.len()));
    assert!((ne - 1) * vs + lmax <= v.len() && (nq - 1) * os + ne <= out.len());
    #[cfg(target_arch = "x86_64")]
    if active_path() == KernelPath::Avx2 && crate::has_avx512f() {
        for i0 in (0..nq).step_by(4) {
            let qi: [usize; 4] = [i0, (i0 + 1).min(nq - 1), (i0 + 2).min(nq - 1), (i0 + 3).min(nq - 1)];
            for e0 in (0..ne).step_by(4) {
                let ei = [e0, (e0 + 1).min(ne - 1), (e0 + 2).min(ne - 1), (e0 + 3).min(ne - 1)];
                // SAFETY: avx512f detected (and the Avx2 path's avx2, fma); the
                // asserts above keep each query's length inside p and v.
                let r = unsafe {
                    avx512_dot_tiled_4x4(
                        [0, 1, 2, 3].map(|a| p.as_ptr().add(qi[a] * ps)),
                        qi.map(|i| lens[i]),
                        [0, 1, 2, 3].map(|b| v.as_ptr().add(ei[b] * vs)),
                    )
                };
                for (a, row) in r.iter().enumerate().take(nq - i0) {
                    let n = (ne - e0).min(4);
                    out[(i0 + a) * os + e0..(i0 + a) * os + e0 + n].copy_from_slice(&row[..n]);
                }
            }
        }
        return;
    }
    for (i, &l) in lens.iter().enumerate() {
        dot_f32_tiled_rows(&p[i * ps..i * ps + l], v, vs, &mut out[i * os..i * os + ne]);
    }
}

/// Four queries × four outputs of [`dot_f32_tiled_grid`]: query a's lanes
/// take positions 0..lens[a] (non-decreasing multiples of 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn avx512_dot_tiled_4x4(p: [*const f32; 4], lens: [usize; 4], v: [*const f32; 4]) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
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

/// The polynomial constants of [`exp_approx`], as f32 bit patterns.
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const SHIFTER: u32 = 0x4b40_0000; // 0x1.8p23
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const C: [u32; 5] = [0x3f7f_fff6, 0x3eff_fedb, 0x3e2a_af33, 0x3d2b_9f17, 0x3c07_2010];

/// eˣ by llama.cpp's AVX-512 approximation (`ggml_v_expf`): x = n·ln2 + b
/// with n rounded by the 1.5·2²³ trick, 1 + a degree-5 polynomial in b,
/// scaled by 2ⁿ with one rounding (`vscalefps`); |n| > 192 gives 0 below
/// and ∞ above.
pub fn exp_approx(x: f32) -> f32 {
    let f = f32::from_bits;
    let z = x.mul_add(f(LOG2E), f(SHIFTER));
    let n = z - f(SHIFTER);
    let b = (-n).mul_add(f(LN2_LO), (-n).mul_add(f(LN2_HI), x));
    let u = b * b;
    let j = f(C[4]).mul_add(b, f(C[3])).mul_add(u, f(C[2]).mul_add(b, f(C[1])));
    let j = j.mul_add(u, f(C[0]).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // 2ⁿ in two normal factors: the first product is exact, the second
    // rounds once, as scalef does.
    let ni = n as i32;
    let a = ni >> 1;
    let pow2 = |e: i32| f(((e + 127) as u32) << 23);
    (j * pow2(a)) * pow2(ni - a)
}

/// Softmax of one row in place, as llama.cpp's `ggml_vec_soft_max_f32` and
/// the op around it compute it: the maximum, then eˣ⁻ᵐᵃˣ by [`exp_approx`]
/// in groups of 16 (the row padded with −∞, as its KV cache is padded to
/// a multiple of 256), each group folded in f32 as [`fold16`] does and
/// added to an f64 total, and last every value times (f32)(1 / total).
/// Hidden positions must hold −∞; they become 0.
pub fn softmax(row: &mut [f32]) {
    let n = row.len();
    softmax_visible(row, n)
}

/// [`softmax`] of a row whose positions from `visible` on are all hidden
/// (−∞): the groups of 16 past the last visible position would add e^−∞ = 0
/// to the total, so they are set to 0 without being computed (the same
/// values, bit for bit).
pub fn softmax_visible(row: &mut [f32], visible: usize) {
    let end = visible.div_ceil(16).saturating_mul(16).min(row.len());
    let (row, hidden) = row.split_at_mut(end);
    debug_assert!(hidden.iter().all(|v| *v == f32::NEG_INFINITY));
    hidden.fill(0.0);
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0f64;
    for g in row.chunks_mut(16) {
        let mut w = [0f32; 16];
        #[cfg(target_arch = "x86_64")]
        if active_path() == KernelPath::Avx2 {
            // SAFETY: Avx2 is only active after runtime detection.
            unsafe { avx2_exp16(g, max, &mut w) };
        } else {
            scalar_exp16(g, max, &mut w);
        }
        #[cfg(not(target_arch = "x86_64"))]
        scalar_exp16(g, max, &mut w);
        g.copy_from_slice(&w[..g.len()]);
        sum += fold16(&w) as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// eˣ⁻ᵐᵃˣ of up to 16 values into `out`, the rest of `out` 0 (e^−∞).
pub fn scalar_exp16(g: &[f32], max: f32, out: &mut [f32; 16]) {
    for (o, x) in out.iter_mut().zip(g) {
        *o = exp_approx(x - max);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_exp16(g: &[f32], max: f32, out: &mut [f32; 16]) {
    use std::arch::x86_64::*;
    let mut buf = [f32::NEG_INFINITY; 16];
    buf[..g.len()].copy_from_slice(g);
    let vmax = _mm256_set1_ps(max);
    for h in 0..2 {
        let x = _mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr().add(8 * h)), vmax);
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * h), avx2_exp8(x));
    }
}

/// Eight lanes of [`exp_approx`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 250.0 - 4.0).collect()
    }

    #[test]
    fn dot_lanes_scalar_and_avx2_agree_bit_for_bit() {
        for n in [64usize, 128, 256, 320] {
            let (x, y) = (values(n, 1), values(n, 7));
            let s = scalar_dot_lanes(&x, &y);
            let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((s as f64 - exact).abs() <= 1e-5 * exact.abs().max(1.0), "n {n}: {s} vs {exact}");
            #[cfg(target_arch = "x86_64")]
            if KernelPath::detect() == KernelPath::Avx2 {
                assert_eq!(s.to_bits(), unsafe { avx2_dot_lanes(&x, &y) }.to_bits(), "n {n}");
                let t = scalar_dot_tiled(&x, &y);
                assert_eq!(t.to_bits(), unsafe { avx2_dot_tiled(&x, &y) }.to_bits(), "n {n}");
                assert!((t as f64 - exact).abs() <= 1e-5 * exact.abs().max(1.0));
            }
        }
        for n in [1usize, 7, 8, 31, 63, 65, 90, 300] {
            let (x, y) = (values(n, 3), values(n, 5));
            let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!((dot_f32(&x, &y) as f64 - exact).abs() <= 1e-5 * exact.abs().max(1.0), "n {n}");
        }
    }

    #[test]
    fn many_row_dots_equal_their_one_row_dot_bit_for_bit() {
        type Rows = fn(&[f32], &[f32], usize, &mut [f32]);
        type One = fn(&[f32], &[f32]) -> f32;
        type Shapes = [(usize, usize, usize); 4];
        let cases: [(Rows, One, Shapes); 2] = [
            (dot_f32_rows, dot_f32, [(64, 1, 64), (256, 7, 256), (256, 6, 320), (90, 5, 100)]),
            (dot_f32_tiled_rows, scalar_dot_tiled, [(16, 1, 16), (48, 8, 64), (320, 19, 336), (512, 17, 512)]),
        ];
        for (rows_fn, one, shapes) in cases {
            for (n, rows, stride) in shapes {
                let x = values(n, 11);
                let ys = values(stride * rows, 13);
                let mut out = vec![0f32; rows];
                rows_fn(&x, &ys, stride, &mut out);
                for (r, o) in out.iter().enumerate() {
                    let want = one(&x, &ys[r * stride..r * stride + n]);
                    assert_eq!(want.to_bits(), o.to_bits(), "n {n}, row {r} of {rows}");
                }
            }
        }
    }

    #[test]
    fn table_gelu_simd_equals_scalar_bit_for_bit() {
        // Any table will do: the entry's index is what is being checked.
        let table: Vec<f32> = (0..1u32 << 16).map(|i| i as f32 * 0.25 - 7.0).collect();
        let mut xs: Vec<f32> = (0..4001).map(|i| -12.0 + i as f32 * 0.006).collect();
        xs.extend([-10.0, 10.0, 9.999, -9.999, 0.0, -0.0, 65504.0, 1e-8, 3.0e-5, f32::NAN]);
        let want: Vec<f32> = xs.iter().map(|&x| gelu_by_f16_table_one(&table, x)).collect();
        let mut got = xs.clone();
        gelu_by_f16_table(&table, &mut got);
        for ((x, w), g) in xs.iter().zip(&want).zip(&got) {
            assert!(w.to_bits() == g.to_bits() || (w.is_nan() && g.is_nan()), "{x}: {w} vs {g}");
        }
    }

    #[test]
    fn softmax_of_the_visible_part_equals_the_whole_row() {
        for (n, visible) in [(64usize, 1usize), (64, 17), (100, 33), (512, 300), (512, 512)] {
            let mut row: Vec<f32> = values(n, 23);
            row[visible..].fill(f32::NEG_INFINITY);
            let mut part = row.clone();
            softmax(&mut row);
            softmax_visible(&mut part, visible);
            assert_eq!(
                row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                part.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn exp_approximation_is_close_and_its_lanes_agree() {
        let xs: Vec<f32> =
            (0..4000).map(|i| -200.0 + i as f32 * 0.0513).chain([0.0, -0.0, f32::NEG_INFINITY]).collect();
        for &x in &xs {
            let (got, want) = (exp_approx(x), (x as f64).exp());
            assert!((got as f64 - want).abs() <= 4e-7 * want + 1e-45, "{x}: {got} vs {want}");
        }
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        #[cfg(target_arch = "x86_64")]
        if KernelPath::detect() == KernelPath::Avx2 {
            for g in xs.chunks(16) {
                let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
                scalar_exp16(g, 0.0, &mut a);
                unsafe { avx2_exp16(g, 0.0, &mut b) };
                assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "{g:?}");
            }
        }
    }

    #[test]
    fn softmax_sums_to_one_and_hides_minus_infinity() {
        let mut row = values(37, 3);
        row[5] = f32::NEG_INFINITY;
        softmax(&mut row);
        assert_eq!(row[5], 0.0);
        let total: f64 = row.iter().map(|v| *v as f64).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
