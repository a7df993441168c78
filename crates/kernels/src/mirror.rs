//! The f32 arithmetic of llama.cpp's x86 CPU backend as built natively for
//! an AVX-512 CPU (the build on plumb's reference machine), reproduced for
//! the fast precision's attention: its f32 dot product and its softmax
//! with a polynomial exp. Each is written here as scalar code that makes
//! the same roundings lane by lane (fused multiply-adds as `mul_add`); its
//! AVX2 form, which keeps the 512-bit lanes in pairs of 256-bit registers,
//! is in `x86::lanes`, and the 512-bit attention tiles and softmax in
//! `x86::avx512`.
//! Tests hold them to the same bits. The functions here choose among them
//! by the active [`crate::KernelPath`].
//!
//! The order of operations is the whole point here, so each function says
//! which order it keeps. (An AVX2-only build of llama.cpp sums in another
//! order; there plumb fast and llama.cpp agree to the last bit or so, not
//! bit for bit.)

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use crate::active_path;
#[cfg(target_arch = "x86_64")]
use crate::x86::{avx512, lanes};

/// Lanes of the dot product's accumulators: four 512-bit registers.
pub(crate) const LANES: usize = 64;

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
    let mut r = if active_path().uses_avx2() {
        // SAFETY: the active path has AVX2 and FMA (checked when it was set
        // or detected); the kernel stops at the shorter slice.
        unsafe { lanes::avx2_dot_lanes(&x[..whole], &y[..whole]) }
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

/// Σ x·y of f16 values (given as f32) as llama.cpp's `ggml_vec_dot_f16`
/// sums it: the 64 lanes as [`dot_f32`] (f16 → f32 is exact), but the
/// elements past the last multiple of 64 added one at a time in f64, each
/// product rounded to f32 first, and the total rounded to f32 at the end.
pub fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let whole = n / LANES * LANES;
    let mut r = dot_f32(&x[..whole], &y[..whole]) as f64;
    for k in whole..n {
        r += (x[k] * y[k]) as f64;
    }
    r as f32
}

/// [`dot_f16`] with `x` given as f16 bits (`buf`: room for x widened, where
/// no kernel reads the bits directly): the same sums.
pub fn dot_f16_bits(x: &[u16], y: &[f32], buf: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx2() && x.len() == y.len() && x.len().is_multiple_of(LANES) {
        // SAFETY: the active path has AVX2, FMA and F16C (checked when it
        // was set or detected); the kernel stops at the shorter slice.
        return unsafe { lanes::avx2_dot_lanes_f16(x, y) };
    }
    crate::flash::widen(x, &mut buf[..x.len()]);
    dot_f16(&buf[..x.len()], y)
}

/// [`dot_f32`] of `x` against `out.len()` rows of `ys`, `stride` floats
/// apart: `out[r]` = Σ x·ys[r·stride..][..x.len()], each bit for bit as
/// [`dot_f32`] gives it; rows in pairs share the loads of `x`.
pub fn dot_f32_rows(x: &[f32], ys: &[f32], stride: usize, out: &mut [f32]) {
    let n = x.len();
    assert!(out.is_empty() || (out.len() - 1) * stride + n <= ys.len());
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx2() && n.is_multiple_of(LANES) {
        let mut r = 0;
        while r + 2 <= out.len() {
            let (y0, y1) = (&ys[r * stride..r * stride + n], &ys[(r + 1) * stride..(r + 1) * stride + n]);
            // SAFETY: the active path has AVX2 and FMA (checked when it was
            // set or detected); the kernel stops at the shortest slice.
            let v = unsafe { lanes::avx2_dot_lanes_x2(x, y0, y1) };
            out[r..r + 2].copy_from_slice(&v);
            r += 2;
        }
        if r < out.len() {
            // SAFETY: as above.
            out[r] = unsafe { lanes::avx2_dot_lanes(x, &ys[r * stride..r * stride + n]) };
        }
        return;
    }
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_f32(x, &ys[r * stride..r * stride + n]);
    }
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
    fold8(&std::array::from_fn(|l| w[8 + l] + w[l]))
}

/// 8 lanes to one, as [`fold16`] ends: 128-bit halves, then (0 + 2) + (1 + 3)
/// (also the whole reduction of llama.cpp's AVX2 loops).
pub(crate) fn fold8(v: &[f32; 8]) -> f32 {
    let x: [f32; 4] = std::array::from_fn(|l| v[4 + l] + v[l]);
    (x[0] + x[2]) + (x[1] + x[3])
}

/// Σ x·y as llama.cpp's f32 matmul sums it for two or more tokens
/// (tinyBLAS): one 16-lane fused multiply-add accumulator over the whole
/// length, folded as [`fold16`] does, lane by lane. The length must be a
/// multiple of 16 (llama.cpp pads its KV cache so; pad with zeros). The
/// SIMD forms are [`dot_f32_tiled_rows`] and [`dot_f32_tiled_blocked`].
pub fn scalar_dot_tiled(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (xc, yc) in x.chunks_exact(16).zip(y.chunks_exact(16)) {
        for (l, (a, b)) in xc.iter().zip(yc).enumerate() {
            acc[l] = a.mul_add(*b, acc[l]);
        }
    }
    fold16(&acc)
}

/// [`scalar_dot_tiled`] as llama.cpp's AVX2 build sums it: one 8-lane
/// accumulator, its 128-bit halves added, then (0 + 2) + (1 + 3).
pub fn scalar_dot_tiled8(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    for (xc, yc) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        for (l, (a, b)) in xc.iter().zip(yc).enumerate() {
            acc[l] = a.mul_add(*b, acc[l]);
        }
    }
    fold8(&acc)
}

/// [`scalar_dot_tiled`] of `x` against `out.len()` rows of `ys`, `stride`
/// floats apart: `out[r]` = Σ x·ys[r·stride..][..x.len()], each bit for bit
/// as [`scalar_dot_tiled`] gives it. Several rows at a time share the loads of
/// `x` and keep enough accumulators in flight to hide the FMA latency.
pub fn dot_f32_tiled_rows(x: &[f32], ys: &[f32], stride: usize, out: &mut [f32]) {
    debug_assert!(x.len().is_multiple_of(16));
    assert!(out.is_empty() || (out.len() - 1) * stride + x.len() <= ys.len());
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx2() {
        let mut r = 0;
        while r + 8 <= out.len() {
            // SAFETY: the active path has AVX2 and FMA (checked when it was
            // set or detected); the assert above keeps rows r..r+8 inside
            // `ys` for x.len() floats each.
            let v = unsafe { lanes::avx2_dot_tiled_x8(x, ys[r * stride..].as_ptr(), stride) };
            out[r..r + 8].copy_from_slice(&v);
            r += 8;
        }
        for (k, o) in out.iter_mut().enumerate().skip(r) {
            // SAFETY: the features as above; the kernel stops at the shorter slice.
            *o = unsafe { lanes::avx2_dot_tiled(x, &ys[k * stride..k * stride + x.len()]) };
        }
        return;
    }
    for (k, o) in out.iter_mut().enumerate() {
        *o = scalar_dot_tiled(x, &ys[k * stride..k * stride + x.len()]);
    }
}

/// cos θ and sin θ for `t` positions from `p0`, `hd / 2` pairs each, as
/// llama.cpp's NeoX RoPE makes them: θ starts at the position and is
/// multiplied by base^(−2/hd) pair after pair (rounding at each step); the
/// angle used is freq_scale · (θ / pair factor), freq_scale = 1/factor of
/// a linear scaling; cos and sin are multiplied by the attention factor
/// (LongRoPE's, with its `long` or short factors as the pair factors).
pub fn rope_neox_table(t: usize, p0: usize, rot: &crate::ops::Rotary, long: bool) -> Vec<(f32, f32)> {
    use crate::ops::RopeScaling;
    use rayon::prelude::*;
    let (hd, half) = (rot.hd, rot.hd / 2);
    let theta_scale = rot.base.powf(-2.0 / hd as f32);
    let (freq_scale, factors) = match &rot.scaling {
        RopeScaling::None => (1.0, None),
        RopeScaling::Linear { factor } => (1.0 / factor, None),
        RopeScaling::PerPair { factors } => (1.0, Some(factors.as_slice())),
        RopeScaling::Yarn { factor, .. } => (1.0 / factor, None),
        RopeScaling::LongRope { short, long: l, .. } => (1.0, Some(if long { l } else { short }.as_slice())),
    };
    let mscale = rot.mscale;
    // YaRN blends the angles (llama.cpp's rope_yarn): interpolated ·
    // (1 − e) + extrapolated · e, and scales cos and sin by
    // 1 + 0.1·ln(1 / freq_scale).
    let yarn = match rot.scaling {
        RopeScaling::Yarn { orig_ctx, beta_fast, beta_slow, .. } => {
            let ramp = RopeScaling::yarn_ramp(hd, rot.base, orig_ctx, beta_fast, beta_slow);
            // llama.cpp's context sets the attention factor to transformers'
            // 1 + 0.1·ln(factor) divided by the same figure, which its rope
            // multiplies back: each rounded in f32 as it does.
            let factor = 1.0 / freq_scale;
            let attn = (0.1 * factor.ln() + 1.0) * (1.0 / (1.0 + 0.1 * factor.ln()));
            Some((ramp, attn * (1.0 + 0.1 * (1.0 / freq_scale).ln())))
        }
        _ => None,
    };
    let mut cs = vec![(0f32, 0f32); t * half];
    let row = |(ti, r): (usize, &mut [(f32, f32)])| {
        let mut theta = (p0 + ti) as f32;
        for (i, c) in r.iter_mut().enumerate() {
            *c = match yarn {
                Some((ramp, mscale)) => {
                    let interp = freq_scale * theta;
                    let mix = RopeScaling::yarn_extrapolated(i, ramp);
                    let angle = interp.mul_add(1.0 - mix, theta * mix);
                    (angle.cos() * mscale, angle.sin() * mscale)
                }
                None => {
                    let ff = factors.map_or(1.0, |f| f[i]);
                    let angle = freq_scale * (theta / ff);
                    (angle.cos() * mscale, angle.sin() * mscale)
                }
            };
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
        if active_path().uses_avx2() {
            // SAFETY: the active path has AVX2 and FMA (checked when it was
            // set or detected); the kernel is the safe scalar code.
            return unsafe { lanes::rope_row_fma(row, hd, cs) };
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
pub(crate) fn rope_row(row: &mut [f32], hd: usize, cs: &[(f32, f32)]) {
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

/// llama.cpp's table GELU over `xs`: x ≤ −10 → 0, x ≥ 10 → x, otherwise
/// `table[f16 bits of x]` (x rounded to f16, to nearest even). `table` has
/// one entry per f16 bit pattern.
pub fn gelu_by_f16_table(table: &[f32], xs: &mut [f32]) {
    assert_eq!(table.len(), 1 << 16);
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx2() {
        // SAFETY: the active path has AVX2, FMA and F16C (checked when it
        // was set or detected); every f16 bit pattern indexes the
        // 65536-entry table (asserted above).
        return unsafe { lanes::avx2_gelu_by_f16_table(table, xs) };
    }
    xs.iter_mut().for_each(|x| *x = gelu_by_f16_table_one(table, *x));
}

pub(crate) fn gelu_by_f16_table_one(table: &[f32], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[half::f16::from_f32(x).to_bits() as usize]
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
    // Fewer than four queries would repeat one in the tiles: pairs of keys
    // per query then (the same sums).
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx512f() && n.is_multiple_of(LANES) && nq >= 4 {
        for i0 in (0..nq).step_by(4) {
            let qi: [usize; 4] = [i0, (i0 + 1).min(nq - 1), (i0 + 2).min(nq - 1), (i0 + 3).min(nq - 1)];
            let jmax = qi.iter().map(|&i| lens[i]).max().unwrap_or(0);
            for j0 in (0..jmax).step_by(4) {
                let kj = [j0, (j0 + 1).min(jmax - 1), (j0 + 2).min(jmax - 1), (j0 + 3).min(jmax - 1)];
                // SAFETY: the active path has AVX512F, AVX2 and FMA (checked
                // when it was set or detected); the asserts above keep every
                // row inside q and k for n floats.
                let v = unsafe {
                    avx512::avx512_dot_lanes_4x4(
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

/// Keys per block of [`dot_f32_blocked`]: a block is read from memory once
/// for all the rows and stays in L1 while they pass (16 keys of a 256-wide
/// head are 16 KiB of a 48 KiB L1d).
const KEY_BLOCK: usize = 16;

/// Attention scores of many query rows against the keys they share, as
/// [`dot_f32`] sums each pair: `out[r][j]` = dot_f32(q_r[..n], k_j) for j in
/// `ranges[r]`, with k_j = `k[j·ks..][..n]`; the rest of `out` is left as it
/// is. The keys go in blocks of [`KEY_BLOCK`], each used by every row
/// before the next is read, so a long cache is read once per call rather
/// than once per tile of queries. Where the CPU has AVX-512, four rows in a
/// row are a tile (rows of equal ranges waste nothing) against four keys at
/// a time, each pair's 64 lanes as [`dot_f32`] has them.
pub fn dot_f32_blocked(q: &[&[f32]], k: &[f32], ks: usize, n: usize, ranges: &[Range<usize>], out: &mut [&mut [f32]]) {
    let nq = q.len();
    assert!(ranges.len() == nq && out.len() == nq);
    let live = |r: &&Range<usize>| !r.is_empty();
    let (Some(lo), Some(hi)) =
        (ranges.iter().filter(live).map(|r| r.start).min(), ranges.iter().filter(live).map(|r| r.end).max())
    else {
        return;
    };
    assert!(q.iter().all(|r| r.len() >= n) && (hi - 1) * ks + n <= k.len());
    assert!(ranges.iter().zip(out.iter()).all(|(r, o)| r.is_empty() || r.end <= o.len()));
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx512f() && n.is_multiple_of(LANES) && nq >= 4 {
        // Each tile's rows (the last repeated to fill it) and the keys any
        // of them scores.
        let tiles: Vec<([usize; 4], Range<usize>)> = (0..nq)
            .step_by(4)
            .filter_map(|r0| {
                let rows = [r0, (r0 + 1).min(nq - 1), (r0 + 2).min(nq - 1), (r0 + 3).min(nq - 1)];
                let spans = || rows.iter().map(|&r| &ranges[r]).filter(live);
                Some((rows, spans().map(|r| r.start).min()?..spans().map(|r| r.end).max()?))
            })
            .collect();
        // Each row's address, taken once: the tiles write through them.
        let rows_out: Vec<*mut f32> = out.iter_mut().map(|o| o.as_mut_ptr()).collect();
        for b0 in (lo..hi).step_by(KEY_BLOCK) {
            let b1 = (b0 + KEY_BLOCK).min(hi);
            for (rows, span) in &tiles {
                let (from, to) = (span.start.max(b0), span.end.min(b1));
                if from >= to {
                    continue;
                }
                // Each row's part of the block, from `from`.
                let keep = rows.map(|r| {
                    let range = &ranges[r];
                    (range.start.clamp(from, to) - from, range.end.clamp(from, to) - from)
                });
                // SAFETY: the active path has AVX512F, AVX2 and FMA (checked
                // when it was set or detected); the asserts above keep every
                // query row and every key up to `hi` readable for n floats
                // and each row's range inside its row of `out`, whose
                // addresses alone are used until the loop ends.
                unsafe {
                    avx512::avx512_dot_lanes_4xn(
                        rows.map(|r| q[r].as_ptr()),
                        k.as_ptr().add(from * ks),
                        ks,
                        to - from,
                        n,
                        rows.map(|r| rows_out[r].add(from)),
                        keep,
                    )
                };
            }
        }
        return;
    }
    dot_f32_blocked_rows(q, k, ks, n, ranges, out, lo..hi)
}

/// [`dot_f32_blocked`] a row at a time within each block of keys
/// (`keys` covers every range), by [`dot_f32_rows`].
fn dot_f32_blocked_rows(
    q: &[&[f32]],
    k: &[f32],
    ks: usize,
    n: usize,
    ranges: &[Range<usize>],
    out: &mut [&mut [f32]],
    keys: Range<usize>,
) {
    for b0 in keys.clone().step_by(KEY_BLOCK) {
        let b1 = (b0 + KEY_BLOCK).min(keys.end);
        for ((qr, range), o) in q.iter().zip(ranges).zip(out.iter_mut()) {
            let (from, to) = (range.start.max(b0), range.end.min(b1));
            if from < to {
                dot_f32_rows(&qr[..n], &k[from * ks..], ks, &mut o[from..to]);
            }
        }
    }
}

/// Value columns per block of [`dot_f32_tiled_blocked`]: a block stays in
/// L2 while every row passes over it.
const COLUMN_BLOCK: usize = 16;

/// Attention context as [`scalar_dot_tiled`] sums each output, for many
/// rows of probabilities against the value columns they share:
/// `out[r][e]` = scalar_dot_tiled(x, v_e[a..b]) for e < `ne`, with v_e =
/// `v[e·vs..]`, `spans[r]` = a..c (a a multiple of 16), b = c rounded up to
/// a multiple of 16 and x = `p[r][a..c]` followed by zeros up to b (the
/// positions past c are not read). Each `v_e` must be readable up to the
/// largest b. The columns go in blocks of [`COLUMN_BLOCK`], each used by
/// every row before the next; where the CPU has AVX-512, four rows in a row
/// are a tile against four columns, the 16 lanes in one 512-bit register.
pub fn dot_f32_tiled_blocked(
    p: &[&[f32]],
    spans: &[Range<usize>],
    v: &[f32],
    vs: usize,
    ne: usize,
    out: &mut [&mut [f32]],
) {
    let nq = p.len();
    assert!(spans.len() == nq && out.len() == nq);
    let vmax = spans.iter().map(|r| r.end.div_ceil(16) * 16).max().unwrap_or(0);
    if nq == 0 || ne == 0 {
        return;
    }
    assert!(spans.iter().zip(p).all(|(r, p)| r.start.is_multiple_of(16) && r.start <= r.end && r.end <= p.len()));
    assert!((ne - 1) * vs + vmax <= v.len() && out.iter().all(|o| o.len() >= ne));
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx512f() {
        // Each row's address, taken once: the tiles write through them.
        let rows_out: Vec<*mut f32> = out.iter_mut().map(|o| o.as_mut_ptr()).collect();
        for e0 in (0..ne).step_by(COLUMN_BLOCK) {
            let e1 = (e0 + COLUMN_BLOCK).min(ne);
            for r0 in (0..nq).step_by(4) {
                let rows = [r0, (r0 + 1).min(nq - 1), (r0 + 2).min(nq - 1), (r0 + 3).min(nq - 1)];
                // SAFETY: the active path has AVX512F, AVX2 and FMA (checked
                // when it was set or detected); the asserts above keep each
                // row's span inside its row, every column readable up to
                // the spans' largest end rounded up to 16 and every row of
                // `out` ne long, whose addresses alone are used until the
                // loop ends.
                unsafe {
                    avx512::avx512_dot_tiled_4xn(
                        rows.map(|r| p[r].as_ptr()),
                        rows.map(|r| (spans[r].start, spans[r].end)),
                        v.as_ptr().add(e0 * vs),
                        vs,
                        e1 - e0,
                        rows.map(|r| rows_out[r].add(e0)),
                    )
                };
            }
        }
        return;
    }
    dot_f32_tiled_blocked_rows(p, spans, v, vs, ne, out)
}

/// [`dot_f32_tiled_blocked`] a row at a time within each block of columns,
/// by [`dot_f32_tiled_rows`].
fn dot_f32_tiled_blocked_rows(
    p: &[&[f32]],
    spans: &[Range<usize>],
    v: &[f32],
    vs: usize,
    ne: usize,
    out: &mut [&mut [f32]],
) {
    // Each row's span, padded with zeros where it does not end on a
    // multiple of 16.
    let xs: Vec<std::borrow::Cow<[f32]>> = p
        .iter()
        .zip(spans)
        .map(|(pr, span)| {
            let b = span.end.div_ceil(16) * 16;
            if span.end == b {
                pr[span.clone()].into()
            } else {
                pr[span.clone()].iter().copied().chain(std::iter::repeat(0.0)).take(b - span.start).collect()
            }
        })
        .collect();
    for e_blk in (0..ne).step_by(COLUMN_BLOCK) {
        let e_end = (e_blk + COLUMN_BLOCK).min(ne);
        for ((x, span), o) in xs.iter().zip(spans).zip(out.iter_mut()) {
            dot_f32_tiled_rows(x, &v[e_blk * vs + span.start..], vs, &mut o[e_blk..e_end]);
        }
    }
}

/// The polynomial constants of [`exp_approx`], as f32 bit patterns.
pub(crate) const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
pub(crate) const SHIFTER: u32 = 0x4b40_0000; // 0x1.8p23
pub(crate) const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
pub(crate) const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
pub(crate) const C: [u32; 5] = [0x3f7f_fff6, 0x3eff_fedb, 0x3e2a_af33, 0x3d2b_9f17, 0x3c07_2010];

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
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx512f() {
        // SAFETY: the active path has AVX512F, AVX2 and FMA (checked when
        // it was set or detected); the kernel stays inside `row`.
        return unsafe { avx512::avx512_softmax(row) };
    }
    softmax_groups(row)
}

/// [`softmax`] of a row whose every position takes part, group by group of
/// 16 (the last one padded with −∞): the plain form of `avx512_softmax`.
fn softmax_groups(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0f64;
    for g in row.chunks_mut(16) {
        sum += exp_sum16(g, max) as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// eˣ⁻ᵐᵃˣ of a group of up to 16 values in place (by [`exp_approx`]), and
/// their sum in f32 as llama.cpp's softmax folds a 512-bit register
/// ([`fold16`]).
pub fn exp_sum16(g: &mut [f32], max: f32) -> f32 {
    let mut w = [0f32; 16];
    #[cfg(target_arch = "x86_64")]
    if active_path().uses_avx2() {
        // SAFETY: the active path has AVX2 and FMA (checked when it was
        // set or detected); the kernel copies `g` (≤ 16) into a buffer.
        unsafe { lanes::avx2_exp16(g, max, &mut w) };
    } else {
        scalar_exp16(g, max, &mut w);
    }
    #[cfg(not(target_arch = "x86_64"))]
    scalar_exp16(g, max, &mut w);
    g.copy_from_slice(&w[..g.len()]);
    fold16(&w)
}

/// eˣ⁻ᵐᵃˣ of up to 16 values into `out`, the rest of `out` 0 (e^−∞).
pub fn scalar_exp16(g: &[f32], max: f32, out: &mut [f32; 16]) {
    for (o, x) in out.iter_mut().zip(g) {
        *o = exp_approx(x - max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both builds' e^x stay within 2 f32 epsilons (relative) of the true
    /// value across f32's normal range, flush to 0 and
    /// ∞ where llama.cpp's do, and are not the C library's (else the mirror
    /// would mirror nothing); SiLU rows take the tail from the C library.
    #[test]
    fn the_vector_exps_are_accurate_and_flush_where_llama_cpp_does() {
        let mut differs_from_libm = [0usize; 2];
        let mut x = -110.0f32;
        while x < 95.0 {
            let want = (x as f64).exp();
            for (i, got) in [expf_lanes8(x), expf_lanes16(x)].into_iter().enumerate() {
                if want > f32::MAX as f64 {
                    assert_eq!(got, f32::INFINITY, "lanes {i}: e^{x}");
                } else if want >= f32::MIN_POSITIVE as f64 {
                    let rel = (got as f64 - want).abs() / want;
                    assert!(rel <= 2.0 * f32::EPSILON as f64, "lanes {i}: e^{x} = {got}, want {want} ({rel:e})");
                }
                differs_from_libm[i] += (got != x.exp()) as usize;
            }
            x += 0.0137;
        }
        assert!(differs_from_libm.iter().all(|&n| n > 100), "{differs_from_libm:?}");
        assert_eq!(expf_lanes16(-200.0), 0.0);
        assert_eq!(expf_lanes8(-200.0), 0.0);
        assert_eq!(expf_lanes16(200.0), f32::INFINITY);
        assert_eq!(expf_lanes8(200.0), f32::INFINITY);

        // A row of 21: 16 + 5 or 2·8 + 5 vector lanes, the last five by libm.
        let row: Vec<f32> = (0..21).map(|i| i as f32 * 0.37 - 3.0).collect();
        for lanes in [SiluLanes::Eight, SiluLanes::Sixteen] {
            let mut got = row.clone();
            silu_row(lanes, &mut got);
            for (i, (&g, &x)) in got.iter().zip(&row).enumerate().skip(16) {
                assert_eq!(g.to_bits(), crate::ops::silu(x).to_bits(), "{lanes:?} tail element {i}");
            }
        }
    }

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
            if crate::KernelPath::Avx2.supported() {
                // SAFETY: AVX2 and FMA, checked just above.
                assert_eq!(s.to_bits(), unsafe { lanes::avx2_dot_lanes(&x, &y) }.to_bits(), "n {n}");
                let t = scalar_dot_tiled(&x, &y);
                // SAFETY: as above.
                assert_eq!(t.to_bits(), unsafe { lanes::avx2_dot_tiled(&x, &y) }.to_bits(), "n {n}");
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
        if crate::KernelPath::Avx2.supported() {
            for g in xs.chunks(16) {
                let (mut a, mut b) = ([0f32; 16], [0f32; 16]);
                scalar_exp16(g, 0.0, &mut a);
                // SAFETY: AVX2 and FMA, checked just above.
                unsafe { lanes::avx2_exp16(g, 0.0, &mut b) };
                assert_eq!(a.map(f32::to_bits), b.map(f32::to_bits), "{g:?}");
            }
        }
    }

    /// Query rows r < `rows` and their ranges of keys: ragged ends, later
    /// starts (windows), empty rows, some rows sharing a range.
    fn score_ranges(rows: usize, keys: usize) -> Vec<Range<usize>> {
        (0..rows)
            .map(|r| match r % 7 {
                0..=3 => (r / 4 * 3).min(keys)..keys.saturating_sub(r / 4),
                4 => 0..keys.min(r + 1),
                5 => (keys / 2)..(keys / 2),
                _ => (r % keys.max(1))..keys,
            })
            .collect()
    }

    #[test]
    fn blocked_scores_equal_one_dot_per_pair_bit_for_bit() {
        const UNTOUCHED: f32 = 1234.5;
        for (rows, keys, n, ks) in [
            (1, 5, 64, 64),
            (3, 40, 256, 256),
            (4, 17, 256, 300),
            (9, 70, 64, 64),
            (17, 33, 128, 128),
            (8, 50, 90, 100),
            (6, 1, 256, 256),
        ] {
            let q: Vec<Vec<f32>> = (0..rows).map(|r| values(n, 100 + r as u32)).collect();
            let qs: Vec<&[f32]> = q.iter().map(|r| r.as_slice()).collect();
            let k = values((keys - 1) * ks + n, 7);
            let ranges = score_ranges(rows, keys);
            for by_rows in [false, true] {
                let mut buf = vec![UNTOUCHED; rows * (keys + 3)];
                let mut out: Vec<&mut [f32]> = buf.chunks_exact_mut(keys + 3).collect();
                if by_rows {
                    dot_f32_blocked_rows(&qs, &k, ks, n, &ranges, &mut out, 0..keys);
                } else {
                    dot_f32_blocked(&qs, &k, ks, n, &ranges, &mut out);
                }
                for (r, (row, range)) in out.iter().zip(&ranges).enumerate() {
                    for (j, &got) in row.iter().enumerate() {
                        let want = if range.contains(&j) { dot_f32(&q[r], &k[j * ks..j * ks + n]) } else { UNTOUCHED };
                        assert_eq!(want.to_bits(), got.to_bits(), "{rows} rows of {n}, row {r}, key {j} of {range:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_context_equals_one_tiled_dot_per_output_bit_for_bit() {
        // Rows of probabilities longer than their spans (what lies beyond is
        // never read: it is NaN here), spans from multiples of 16 ending
        // anywhere, columns `vs` apart readable up to the largest end
        // rounded up to 16.
        for (rows, ne, len, vs) in
            [(1, 3, 40, 48), (4, 16, 64, 64), (5, 17, 100, 112), (11, 33, 300, 320), (8, 4, 16, 16)]
        {
            let spans: Vec<Range<usize>> = (0..rows)
                .map(|r| {
                    let end = len - (r * 7) % (len / 2);
                    let start = ((r * 5) % (end / 2 + 1)) / 16 * 16;
                    if r % 6 == 5 {
                        start..start
                    } else {
                        start..end
                    }
                })
                .collect();
            let p: Vec<Vec<f32>> = (0..rows)
                .map(|r| {
                    let mut row = values(len + 16, 30 + r as u32);
                    row[spans[r].end..].fill(f32::NAN);
                    row
                })
                .collect();
            let ps: Vec<&[f32]> = p.iter().zip(&spans).map(|(row, s)| &row[..s.end]).collect();
            let v = values((ne - 1) * vs + len.div_ceil(16) * 16, 9);
            for by_rows in [false, true] {
                let mut buf = vec![0f32; rows * ne];
                let mut out: Vec<&mut [f32]> = buf.chunks_exact_mut(ne).collect();
                if by_rows {
                    dot_f32_tiled_blocked_rows(&ps, &spans, &v, vs, ne, &mut out);
                } else {
                    dot_f32_tiled_blocked(&ps, &spans, &v, vs, ne, &mut out);
                }
                for (r, row) in out.iter().enumerate() {
                    let (a, c) = (spans[r].start, spans[r].end);
                    let b = c.div_ceil(16) * 16;
                    let mut x = p[r][a..c].to_vec();
                    x.resize(b - a, 0.0);
                    for (e, &got) in row.iter().enumerate() {
                        let want = scalar_dot_tiled(&x, &v[e * vs + a..e * vs + b]);
                        assert_eq!(want.to_bits(), got.to_bits(), "{rows} rows, row {r} {a}..{c}, column {e}");
                    }
                }
            }
        }
    }

    #[test]
    fn softmax_of_each_path_is_the_scalar_one_bit_for_bit() {
        for n in [1usize, 5, 16, 17, 40, 64, 100, 513] {
            let mut row: Vec<f32> = values(n, 41).iter().map(|v| v * 3.0).collect();
            row[n / 3] = f32::NEG_INFINITY;
            if n > 20 {
                row[n - 2] = -0.0;
                row[7] = f32::NEG_INFINITY;
            }
            // The plain form, made of the scalar parts alone.
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let mut want = row.clone();
            let mut sum = 0f64;
            for g in want.chunks_mut(16) {
                let mut w = [0f32; 16];
                scalar_exp16(g, max, &mut w);
                g.copy_from_slice(&w[..g.len()]);
                sum += fold16(&w) as f64;
            }
            let inv = (1.0 / sum) as f32;
            want.iter_mut().for_each(|v| *v *= inv);
            let mut got = row.clone();
            softmax_groups(&mut got);
            assert_eq!(
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n {n}"
            );
            #[cfg(target_arch = "x86_64")]
            if crate::KernelPath::Avx512.supported() {
                let mut got = row.clone();
                // SAFETY: AVX512F, AVX2 and FMA, checked just above.
                unsafe { avx512::avx512_softmax(&mut got) };
                assert_eq!(
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "n {n}"
                );
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

/// Which of llama.cpp's vectorized SiLU loops the fast precision mirrors:
/// its CPU backend computes SiLU (in `ggml_vec_swiglu_f32`) 16 lanes at a
/// time where built with AVX-512 and 8 where built with AVX2, each with its
/// own e^x polynomial, and the last elements of a row (fewer than a vector)
/// with the C library's e^x.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiluLanes {
    /// 8 lanes, e^x as k + k·p(b) (the AVX2 build; also plumb's scalar path).
    Eight,
    /// 16 lanes, e^x as (1 + p(b))·2ⁿ (the AVX-512 build).
    Sixteen,
}

impl SiluLanes {
    pub fn of(path: crate::KernelPath) -> SiluLanes {
        if path.uses_avx512f() {
            SiluLanes::Sixteen
        } else {
            SiluLanes::Eight
        }
    }
}

/// SiLU of one FFN row in place, as llama.cpp's CPU backend computes it:
/// whole vectors of lanes by x / (1 + e^(0 − x)) with the vector e^x of the
/// build, the rest by the C library's e^x. Each lane is computed here one
/// at a time, every fused multiply-add where the vector code has one.
pub fn silu_row(lanes: SiluLanes, row: &mut [f32]) {
    let n = match lanes {
        SiluLanes::Eight => 8,
        SiluLanes::Sixteen => 16,
    };
    let whole = row.len() / n * n;
    let (vectors, tail) = row.split_at_mut(whole);
    for x in vectors.iter_mut() {
        let e = match lanes {
            SiluLanes::Eight => expf_lanes8(0.0 - *x),
            SiluLanes::Sixteen => expf_lanes16(0.0 - *x),
        };
        *x /= 1.0 + e;
    }
    tail.iter_mut().for_each(|x| *x = crate::ops::silu(*x));
}

/// Softmax of one row in place, as llama.cpp's CPU soft_max op computes a
/// row with no mask (a router's): the maximum; e^(x − max) by the build's
/// vector e^x over whole vectors of lanes, each vector's sum folded in f32
/// and added to an f64 total, the rest by the C library's e^x added one
/// by one; then every value times (f32)(1 / total).
pub fn softmax_row(lanes: SiluLanes, row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let n = match lanes {
        SiluLanes::Eight => 8,
        SiluLanes::Sixteen => 16,
    };
    let whole = row.len() / n * n;
    let (vectors, tail) = row.split_at_mut(whole);
    let mut sum = 0f64;
    for v in vectors.chunks_exact_mut(n) {
        for x in v.iter_mut() {
            *x = match lanes {
                SiluLanes::Eight => expf_lanes8(*x - max),
                SiluLanes::Sixteen => expf_lanes16(*x - max),
            };
        }
        sum += match lanes {
            SiluLanes::Sixteen => fold16(&<[f32; 16]>::try_from(&*v).expect("16 lanes")),
            SiluLanes::Eight => fold8(&<[f32; 8]>::try_from(&*v).expect("8 lanes")),
        } as f64;
    }
    for x in tail.iter_mut() {
        *x = (*x - max).exp();
        sum += *x as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

// The vector e^x of llama.cpp's CPU backend (an Arm optimized-routines
// polynomial): n = round(x / ln 2) by the 1.5·2²³ shift, b = x − n·ln 2 in
// two parts, p(b) a degree-5 polynomial in b.
const EXP_SHIFT: f32 = 12_582_912.0; // 0x1.8p23
const EXP_LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const EXP_LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const EXP_LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const EXP_C: [f32; 5] = [
    f32::from_bits(0x3f7f_fff6), // 0x1.ffffecp-1 (b)
    f32::from_bits(0x3eff_fedb), // 0x1.fffdb6p-2 (b²)
    f32::from_bits(0x3e2a_af33), // 0x1.555e66p-3 (b³)
    f32::from_bits(0x3d2b_9f17), // 0x1.573e2ep-5 (b⁴)
    f32::from_bits(0x3c07_2010), // 0x1.0e4020p-7 (b⁵)
];

/// What both builds share: (z, n, b, b², hi), z the shifted n, hi the
/// polynomial's part in b² (the b⁵…b² terms before the last multiply).
#[inline(always)]
fn exp_reduce(x: f32) -> (f32, f32, f32, f32, f32) {
    let z = x.mul_add(EXP_LOG2E, EXP_SHIFT);
    let n = z - EXP_SHIFT;
    let b = (-n).mul_add(EXP_LN2_LO, (-n).mul_add(EXP_LN2_HI, x));
    let u = b * b;
    let hi = EXP_C[4].mul_add(b, EXP_C[3]).mul_add(u, EXP_C[2].mul_add(b, EXP_C[1]));
    (z, n, b, u, hi)
}

/// The AVX-512 build's e^x: (1 + p(b))·2ⁿ in one scaling, 0 or ∞ past
/// |n| > 192.
fn expf_lanes16(x: f32) -> f32 {
    let (_, n, b, u, hi) = exp_reduce(x);
    let j = hi.mul_add(u, EXP_C[0].mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // j·2ⁿ rounded once, as the scaling instruction does (exact in f64).
    (j as f64 * 2f64.powi(n as i32)) as f32
}

/// The AVX2 build's e^x: k + k·p(b) with k = 2ⁿ built in the exponent
/// bits, and two scale factors where |n| > 126.
fn expf_lanes8(x: f32) -> f32 {
    let (z, n, b, u, hi) = exp_reduce(x);
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let j = hi.mul_add(u, EXP_C[0] * b);
    if n.abs() <= 126.0 {
        return k.mul_add(j, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// Q2_K, Q3_K and IQ4_XS weights · Q8_K activations in the order of
/// llama.cpp's AVX2 `vec_dot` for them (which it takes for any number of
/// rows): per superblock, exact integer sums in eight lanes — lane k holds,
/// of every 32-element chunk the kernel loads, elements 4k..4k+4, each
/// sub-block's sum times its scale — converted and fused into eight running
/// lanes by the superblock's scale (Q2_K first fuses its mins' products,
/// lane k holding sub-blocks 2k and 2k+1, by −dmin), the lanes folded at
/// the end ([`fold8`]).
pub mod kquant_lanes {
    use plumb_quant::blocks::*;

    use super::fold8;
    use crate::dot;

    fn lanes8(each: impl FnMut(usize) -> i32) -> [i32; 8] {
        std::array::from_fn(each)
    }

    fn fma8(acc: &mut [f32; 8], d: f32, v: &[i32; 8]) {
        for (a, &x) in acc.iter_mut().zip(v) {
            *a = d.mul_add(x as f32, *a);
        }
    }

    /// Lane k of a superblock whose chunks are (half h, shift s), as
    /// [`crate::dot::q2_k_quant`] lays them out: Σ over the chunks of the
    /// sub-block's scale times Σ quant·y over elements 4k..4k+4.
    fn chunk_lanes(y: &BlockQ8K, scale: impl Fn(usize) -> i32, quant: impl Fn(usize, usize, usize) -> i32) -> [i32; 8] {
        lanes8(|k| {
            let chunks = (0..2).flat_map(|h| (0..4).map(move |s| (h, s)));
            chunks
                .map(|(h, s)| {
                    let q: i32 = (4 * k..4 * k + 4).map(|e| quant(h, s, e) * y.qs[128 * h + 32 * s + e] as i32).sum();
                    scale(8 * h + 2 * s + k / 4) * q
                })
                .sum()
        })
    }

    pub fn q2_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
        let xs: &[BlockQ2K] = bytemuck::cast_slice(w);
        let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
        let mut acc = [0f32; 8];
        for (x, y) in xs.iter().zip(ys) {
            let d = y.d * f16_to_f32(x.d);
            let dmin = -y.d * f16_to_f32(x.dmin);
            let m = |j: usize| (x.scales[j] >> 4) as i32 * y.bsums[j] as i32;
            fma8(&mut acc, dmin, &lanes8(|k| m(2 * k) + m(2 * k + 1)));
            let sums = chunk_lanes(y, |sub| dot::q2_k_scale(x, sub), |h, s, e| dot::q2_k_quant(x, h, s, e));
            fma8(&mut acc, d, &sums);
        }
        fold8(&acc)
    }

    pub fn q3_k_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
        let xs: &[BlockQ3K] = bytemuck::cast_slice(w);
        let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
        let mut acc = [0f32; 8];
        for (x, y) in xs.iter().zip(ys) {
            let d = y.d * f16_to_f32(x.d);
            let scales = q3k_scales(&x.scales);
            let sums = chunk_lanes(y, |sub| scales[sub] as i32 - 32, |h, s, e| dot::q3_k_quant(x, h, s, e));
            fma8(&mut acc, d, &sums);
        }
        fold8(&acc)
    }

    pub fn iq4_xs_q8_k(_n: usize, w: &[u8], a: &[u8]) -> f32 {
        let xs: &[BlockIQ4XS] = bytemuck::cast_slice(w);
        let ys: &[BlockQ8K] = bytemuck::cast_slice(a);
        let mut acc = [0f32; 8];
        for (x, y) in xs.iter().zip(ys) {
            let sums = lanes8(|k| {
                let lane = |b: usize| -> i32 {
                    (4 * k..4 * k + 4).map(|e| dot::iq4_xs_quant(x, b, e) * y.qs[32 * b + e] as i32).sum()
                };
                (0..8).map(|b| dot::iq4_xs_scale(x, b) * lane(b)).sum()
            });
            fma8(&mut acc, f16_to_f32(x.d) * y.d, &sums);
        }
        fold8(&acc)
    }
}
