//! AVX-512 VNNI kernels of the fast precision: decoding rows of the Q8_0
//! family (`vpdpbusd` on 256-bit registers, which needs AVX512VL beside
//! AVX512VNNI), and register tiles for prefill on 512-bit ones (AVX512F),
//! of the Q8_0 family and of the K-quants in llama.cpp's tiled order. Every output is bit-identical
//! to the AVX2 kernel's in [`super::dot`] that it replaces: the same lane
//! integers, then the same float operations in the same order.
//!
//! Not here: anything a CPU without AVX512VNNI runs. The packing functions
//! that need no SIMD are safe and are used only by these kernels.

use std::arch::x86_64::*;

use plumb_quant::blocks::*;

use super::{d16, hsum_ps, KQuant, Q8Family, Q8Format};

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
///
/// # Safety
/// As [`rows_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn rows_q8_family_vnni<F: Q8Format>(w: &[u8], rb: usize, a: &[u8], aux: &[ActAux], out: &mut [f32]) {
    let bb = F::BLOCK_BYTES;
    let nb = rb / bb;
    let off = _mm256_set1_epi8(F::FORMAT.vnni_offset() as i8);
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
            let qx = F::unpack(blk);
            let ax = aux.get_unchecked(i);
            let qy = _mm256_loadu_si256(a.as_ptr().add(i * 34 + 2) as *const __m256i);
            let corr = _mm256_loadu_si256(ax.corr.as_ptr() as *const __m256i);
            let sum = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(corr, _mm256_add_epi8(qx, off), qy));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d16([blk[0], blk[1]]) * ax.d), sum, acc);
        }
        *o = hsum_ps(acc);
    }
}

/// The VNNI multi-row kernel: `out[r]` = row `r` of `w` (format `fmt`,
/// `rb` bytes of whole blocks each) against the Q8_0 activation row `a`,
/// whose blocks' [`ActAux`] (made with `fmt`'s offset) are `aux`.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX512VNNI and AVX512VL;
/// `w.len() >= out.len() * rb`, and `a` and `aux` cover `rb / block bytes`
/// blocks ([`check_rows_vnni`] asserts all three).
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn rows_vnni(fmt: Q8Family, w: &[u8], rb: usize, a: &[u8], aux: &[ActAux], out: &mut [f32]) {
    super::with_q8_format!(fmt, F => rows_q8_family_vnni::<F>(w, rb, a, aux, out))
}

/// The slice lengths [`rows_vnni`] reads within, asserted once per call.
pub fn check_rows_vnni(fmt: Q8Family, w: &[u8], rb: usize, a: &[u8], aux: &[ActAux], rows: usize) {
    let nb = rb / fmt.block_bytes();
    assert!(w.len() >= rows * rb && a.len() >= nb * 34 && aux.len() >= nb, "rows_vnni: short slices");
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

/// Packs the weight rows of `w` (format `fmt`, `rb` bytes each, `nb`
/// blocks) for [`tile_vnni`], in groups of four; a short last group is
/// padded with zero rows.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX512VNNI and AVX512VL (the lengths are
/// asserted here).
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
pub unsafe fn pack_weights_vnni(fmt: Q8Family, w: &[u8], rb: usize, nb: usize, out: &mut Vec<Chunk>) {
    super::with_q8_format!(fmt, F => pack_weights::<F>(w, rb, nb, out))
}

/// [`pack_weights_vnni`] for one format.
///
/// # Safety
/// As [`pack_weights_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn pack_weights<F: Q8Format>(w: &[u8], rb: usize, nb: usize, out: &mut Vec<Chunk>) {
    let rows = w.len() / rb;
    let bb = F::BLOCK_BYTES;
    // Every block read below lies inside row r < rows of w.
    assert_eq!(bb * nb, rb, "pack_weights_vnni: row bytes");
    let groups = rows.div_ceil(4);
    out.clear();
    out.resize(groups * nb * W_CHUNKS, Chunk::default());
    let off = _mm256_set1_epi8(F::FORMAT.vnni_offset() as i8);
    for r in 0..rows {
        let (g, k) = (r / 4, r % 4);
        for i in 0..nb {
            let blk = w.get_unchecked(r * rb + i * bb..r * rb + (i + 1) * bb);
            let qx = F::unpack(blk);
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
/// [`tile_vnni`] with the lane corrections of `fmt`, in groups of four; a
/// short last group is padded with zero tokens.
pub fn pack_acts_vnni<'a>(fmt: Q8Family, t: usize, nb: usize, row: impl Fn(usize) -> &'a [u8], out: &mut Vec<Chunk>) {
    let offset = fmt.vnni_offset();
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

/// One group of four packed weight rows against one group of four packed
/// tokens over `nb` blocks: `[token][row]`.
///
/// Each 512-bit register holds two weight rows' eight lanes for one token
/// (rows 0 and 1, or 2 and 3, side by side as they lie in the pack): every
/// lane sees the same `vpdpbusd`, conversion, scale product and fused
/// multiply-add as on 256 bits, and each half is summed as [`hsum_ps`]
/// sums, so the results are those bits; the two halves share each
/// instruction.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX512F, AVX512VNNI and AVX512VL;
/// `w.len() >= nb * W_CHUNKS` and `a.len() >= nb * A_CHUNKS` (the callers
/// slice them so: see `fast::linear_vnni`).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
pub unsafe fn tile_vnni(w: &[Chunk], a: &[Chunk], nb: usize) -> [[f32; 4]; 4] {
    debug_assert!(w.len() >= nb * W_CHUNKS && a.len() >= nb * A_CHUNKS);
    // acc[k][p]: token k against rows 2p and 2p + 1.
    let mut acc = [[_mm512_setzero_ps(); 2]; 4];
    // The row scales (chunk 4: d0 d1 d2 d3 twice) spread to a pair's halves.
    let spread = [
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2),
    ];
    let (mut wp, mut ap) = (w.as_ptr(), a.as_ptr());
    for _ in 0..nb {
        let wq = [_mm512_loadu_si512(wp as *const __m512i), _mm512_loadu_si512(wp.add(2) as *const __m512i)];
        let da = _mm512_castps256_ps512(_mm256_load_ps(wp.add(4) as *const f32));
        let dw = [_mm512_permutexvar_ps(spread[0], da), _mm512_permutexvar_ps(spread[1], da)];
        for (k, acc) in acc.iter_mut().enumerate() {
            let qy = _mm512_broadcast_i64x4(_mm256_load_si256(ap.add(k) as *const __m256i));
            let corr = _mm512_broadcast_i64x4(_mm256_load_si256(ap.add(4 + k) as *const __m256i));
            let dy = _mm512_set1_ps(*(ap.add(8) as *const f32).add(k));
            for (p, acc) in acc.iter_mut().enumerate() {
                let sum = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr, wq[p], qy));
                *acc = _mm512_fmadd_ps(_mm512_mul_ps(dw[p], dy), sum, *acc);
            }
        }
        wp = wp.add(W_CHUNKS);
        ap = ap.add(A_CHUNKS);
    }
    let mut out = [[0f32; 4]; 4];
    for k in 0..4 {
        for p in 0..2 {
            let v = _mm512_castps_pd(acc[k][p]);
            out[k][2 * p] = hsum_ps(_mm256_castpd_ps(_mm512_castpd512_pd256(v)));
            out[k][2 * p + 1] = hsum_ps(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(v)));
        }
    }
    out
}

// ---- VNNI register tiles for the K-quants in llama.cpp's tiled order:
// eight weight rows × eight tokens. The weights are repacked once per task
// so that one 32-byte load holds four consecutive quants of each of the
// eight rows, and the tokens once per product so that one 8-byte load
// holds four matching quants of each of two tokens; one `vpdpbusd` on 512
// bits advances the eight rows against two tokens. The integer sums per
// superblock are exact whatever the order, and the float steps after them
// are the one-token kernel's, lane by lane: the results are identical to
// [`q4_k_q8_k_tiled`] and [`q6_k_q8_k_tiled`].

/// Chunks per (group of eight K-quant rows, superblock): 64 of quants
/// (unsigned; chunk s holds elements 4s..4s+4 of each row), 16 of
/// per-sub-block scales (i32 lanes), 8 of i16 pairs taken against pairs of
/// the activations' 16-element sums, then the scale d and −dmin (f32).
pub const K_CHUNKS: usize = 90;
const K_SCALES: usize = 64;
const K_PAIRS: usize = 80;
const K_D: usize = 88;
const K_NEG_DMIN: usize = 89;

/// Packs Q4_K or Q6_K rows (`rb` bytes each, `nsb` superblocks) for
/// [`tile_k_vnni`], in groups of eight; a short last group is padded with
/// zero rows.
pub fn pack_k_rows(fmt: KQuant, w: &[u8], rb: usize, nsb: usize, out: &mut Vec<Chunk>) {
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
            if fmt == KQuant::Q6K {
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

/// Two tokens' Q8_K superblocks interleaved for [`tile_k_vnni`]: each
/// quant step's four bytes of the first token, then the second's; the
/// same for each pair of 16-element sums; then the two scales.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct PairQ8K {
    qs: [[i8; 8]; 64],
    bsums: [[i16; 4]; 8],
    d: [f32; 2],
}

impl PairQ8K {
    const ZERO: PairQ8K = PairQ8K { qs: [[0; 8]; 64], bsums: [[0; 4]; 8], d: [0.0; 2] };
}

/// Packs `t` tokens' Q8_K rows (`row(i)`, `nsb` superblocks each) for
/// [`tile_k_vnni`]: groups of eight tokens, each four pairs per
/// superblock (`[group][superblock][pair]`); a short last group is padded
/// with zero tokens.
pub fn pack_k_acts<'a>(t: usize, nsb: usize, row: impl Fn(usize) -> &'a [BlockQ8K] + Sync, out: &mut Vec<PairQ8K>) {
    use rayon::prelude::*;
    out.clear();
    out.resize(t.div_ceil(8) * nsb * 4, PairQ8K::ZERO);
    out.par_chunks_mut(nsb * 4).enumerate().for_each(|(g, group)| {
        for k in 0..8.min(t - 8 * g) {
            let (pair, half) = (k / 2, k % 2);
            for (s, y) in row(8 * g + k)[..nsb].iter().enumerate() {
                let p = &mut group[s * 4 + pair];
                for (step, q) in p.qs.iter_mut().enumerate() {
                    q[4 * half..4 * half + 4].copy_from_slice(&y.qs[4 * step..4 * step + 4]);
                }
                for (c, b) in p.bsums.iter_mut().enumerate() {
                    b[2 * half..2 * half + 2].copy_from_slice(&y.bsums[2 * c..2 * c + 2]);
                }
                p.d[half] = y.d;
            }
        }
    });
}

/// One group of eight packed K-quant rows (format `fmt`, as packed by
/// [`pack_k_rows`]) against one group of eight tokens (as packed by
/// [`pack_k_acts`]) over `nsb` superblocks: `[token][row]`.
///
/// # Safety
/// The CPU has AVX2, FMA, F16C, AVX512F, AVX512VNNI and AVX512VL;
/// `a` holds one group (`4 * nsb` pairs; `w`'s and `a`'s lengths are
/// asserted here).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
pub unsafe fn tile_k_vnni(fmt: KQuant, w: &[Chunk], a: &[PairQ8K], nsb: usize, repacked: bool) -> [[f32; 8]; 8] {
    match (fmt, repacked) {
        (KQuant::Q4K, false) => tile_k::<false, false>(w, a, nsb),
        (KQuant::Q4K, true) => tile_k::<false, true>(w, a, nsb),
        (KQuant::Q6K, _) => tile_k::<true, false>(w, a, nsb),
    }
}

/// Lane `r` of an eight-lane chunk in lanes `2r` and `2r + 1`.
///
/// # Safety
/// Called only from functions compiled with AVX512F.
#[inline(always)]
unsafe fn spread(c: *const __m256i) -> __m512i {
    let dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    _mm512_permutexvar_epi32(dup, _mm512_castsi256_si512(_mm256_load_si256(c)))
}

/// [`tile_k_vnni`] for Q6_K (`Q6`) or Q4_K, the format a constant so each
/// is compiled without the other's branches.
///
/// Each 512-bit register holds a pair of tokens against the eight rows,
/// (row r, token t) in lane 2r + t: the rows' quants and scales are
/// spread to both lanes of their row, the tokens' interleaved in the pack,
/// and every lane sees the integers and float operations of the 256-bit
/// order (one row per lane, one token per register), so the results are
/// the same bits.
///
/// # Safety
/// As [`tile_k_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
unsafe fn tile_k<const Q6: bool, const REPACKED: bool>(w: &[Chunk], a: &[PairQ8K], nsb: usize) -> [[f32; 8]; 8] {
    assert!(w.len() >= nsb * K_CHUNKS && a.len() >= nsb * 4, "tile_k_vnni: short packs");
    let (nsub, steps) = if Q6 { (16, 4) } else { (8, 8) };
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); 4];
    // Repacked Q4_K: the mins' products in totals of their own.
    let mut acc_min = [_mm512_setzero_ps(); 4];
    for s in 0..nsb {
        let wp = w.as_ptr().add(s * K_CHUNKS) as *const __m256i;
        let ap = a.as_ptr().add(s * 4);
        // Both tokens' scales of each pair, in alternate lanes.
        let mut yd = [_mm512_setzero_ps(); 4];
        for (k, v) in yd.iter_mut().enumerate() {
            *v = _mm512_castpd_ps(_mm512_set1_pd(std::ptr::read_unaligned((*ap.add(k)).d.as_ptr() as *const f64)));
        }
        let mut isum = [zero; 4];
        for j in 0..nsub {
            let mut p = [zero; 4];
            for st in j * steps..(j + 1) * steps {
                let wq = spread(wp.add(st));
                for (k, p) in p.iter_mut().enumerate() {
                    let q = std::ptr::read_unaligned((*ap.add(k)).qs.as_ptr().add(st) as *const i64);
                    *p = _mm512_dpbusd_epi32(*p, wq, _mm512_set1_epi64(q));
                }
            }
            let sc = spread(wp.add(K_SCALES + j));
            for k in 0..4 {
                isum[k] = _mm512_add_epi32(isum[k], _mm512_mullo_epi32(p[k], sc));
            }
            if REPACKED && j % 2 == 1 {
                // llama.cpp's repacked four-row kernel: each pair of
                // sub-blocks fused into the totals, Σscale·q·y · (d·d_y)
                // (here) and Σmin·Σy · (dmin·d_y) (below).
                let d = _mm512_castsi512_ps(spread(wp.add(K_D)));
                for k in 0..4 {
                    acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_mul_ps(d, yd[k]), acc[k]);
                    isum[k] = zero;
                }
            }
        }
        let mut pairs = [zero; 8];
        for (c, v) in pairs.iter_mut().enumerate() {
            *v = spread(wp.add(K_PAIRS + c));
        }
        let bsums = |k: usize, c: usize| {
            _mm512_set1_epi64(std::ptr::read_unaligned((*ap.add(k)).bsums.as_ptr().add(c) as *const i64))
        };
        let neg_dmin = _mm512_castsi512_ps(spread(wp.add(K_NEG_DMIN)));
        if REPACKED {
            // The mins' totals are a running sum of their own, fed pair by
            // pair in the same order: taken after the scales' loop (which
            // never touches them), every sum is the same, and the loop
            // above keeps fewer registers live.
            let dmin = _mm512_sub_ps(_mm512_setzero_ps(), neg_dmin);
            for k in 0..4 {
                let dy = _mm512_mul_ps(dmin, yd[k]);
                for pair in 0..4 {
                    let mut m = zero;
                    for (c, pc) in pairs.iter().enumerate().skip(2 * pair).take(2) {
                        m = _mm512_dpwssd_epi32(m, *pc, bsums(k, c));
                    }
                    acc_min[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(m), dy, acc_min[k]);
                }
            }
            continue;
        }
        let d = _mm512_castsi512_ps(spread(wp.add(K_D)));
        for k in 0..4 {
            let mut m = zero;
            for (c, pc) in pairs.iter().enumerate() {
                m = _mm512_dpwssd_epi32(m, *pc, bsums(k, c));
            }
            acc[k] = if Q6 {
                // Σ scale·(q − 32)·y = Σ scale·q·y − 32·Σ scale·Σy.
                let total = _mm512_sub_epi32(isum[k], _mm512_slli_epi32::<5>(m));
                _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(total), d), yd[k], acc[k])
            } else {
                let isd = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[k]), d);
                _mm512_fmadd_ps(_mm512_fmadd_ps(neg_dmin, _mm512_cvtepi32_ps(m), isd), yd[k], acc[k])
            };
        }
    }
    let mut out = [[0f32; 8]; 8];
    for k in 0..4 {
        let v = if REPACKED { _mm512_sub_ps(acc[k], acc_min[k]) } else { acc[k] };
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), v);
        for r in 0..8 {
            out[2 * k][r] = lanes[2 * r];
            out[2 * k + 1][r] = lanes[2 * r + 1];
        }
    }
    out
}
