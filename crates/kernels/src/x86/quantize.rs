//! AVX2 activation quantizers of the fast precision: the same roundings as
//! `plumb_quant::quantize::quantize_q8_0_act` and `quantize_q8_k` (multiply,
//! round half to even, convert), eight lanes at a time, so the bytes are the
//! scalar quantizers' (tests hold them so). A block holding NaN or ±Inf
//! takes the scalar code, whose float-to-int conversions saturate where
//! these would not.
//!
//! Not here: the other activation formats (Q8_1, F16, BF16, F32), which
//! take the scalar code compiled with these target features.

use std::arch::x86_64::*;

use plumb_quant::blocks::*;
use plumb_quant::GgmlType;

/// 32 i32 lanes (four registers, in order) to 32 bytes in order.
///
/// # Safety
/// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them); `out` is
/// writable for 32 bytes.
#[inline(always)]
unsafe fn pack_i32x32(v: [__m256i; 4], out: *mut u8) {
    let ab = _mm256_packs_epi32(v[0], v[1]);
    let cd = _mm256_packs_epi32(v[2], v[3]);
    let x = _mm256_packs_epi16(ab, cd);
    let x = _mm256_permutevar8x32_epi32(x, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(out as *mut __m256i, x);
}

/// max |x| over 8·n lanes from `p`, and whether every lane is finite.
///
/// # Safety
/// Called only from functions compiled with AVX2, FMA and F16C (its intrinsics need them); `p` is
/// readable for `8 * n` floats.
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
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
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
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
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

/// One activation row of `ty` into `out`: the AVX2 quantizers for Q8_0 and
/// Q8_K, `fast`'s scalar code compiled with AVX2 (rounding one instruction
/// rather than a call into libm) for the rest.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row(xr: &[f32], out: &mut [u8], ty: GgmlType) {
    match ty {
        GgmlType::Q8_0 => quantize_q8_0_act_avx2(xr, out),
        GgmlType::Q8_K => quantize_q8_k_avx2(xr, out),
        _ => crate::fast::quantize_row(xr, out, ty),
    }
}
