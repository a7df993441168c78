//! Dot-product kernels, two kinds of test:
//! every scalar reference equals Σ dequant(w)·dequant(a) computed in f64,
//! and every SIMD variant equals its scalar reference, on random blocks and
//! odd block counts. The SIMD tests run on every path this CPU can force
//! ([`simd_paths`]), so an AVX-512 machine also checks what an AVX2-only
//! one runs.

use plumb_kernels::dot::{act_type, scalar_dot};
use plumb_kernels::fast::{dot_for, quantize_activations};
use plumb_kernels::KernelPath;
use plumb_quant::{dequantize, quantize, GgmlType};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Random but valid weight blocks: quantized from Gaussian data where plumb
/// has a quantizer, random bytes with sane scales otherwise.
fn random_weights(ty: GgmlType, n: usize, rng: &mut StdRng) -> Vec<u8> {
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0) * rng.gen_range(0.1f32..2.0)).collect();
    if let Ok(q) = quantize(ty, &x) {
        return q;
    }
    let (be, bb) = ty.geometry();
    let mut bytes: Vec<u8> = (0..n / be * bb).map(|_| rng.gen()).collect();
    // Overwrite the f16 scale fields with small finite values.
    let scale_offsets: &[usize] = match ty {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q5_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
        _ => &[],
    };
    for b in bytes.chunks_exact_mut(bb) {
        for &o in scale_offsets {
            let v = half::f16::from_f32(rng.gen_range(-0.05f32..0.05)).to_le_bytes();
            b[o..o + 2].copy_from_slice(&v);
        }
    }
    bytes
}

/// A weight of `rows` × `cols` random blocks ([`random_weights`]).
fn random_weight(ty: GgmlType, rows: usize, cols: usize, repacked: bool, rng: &mut StdRng) -> plumb_kernels::Weight {
    let bytes = random_weights(ty, rows * cols, rng);
    let bytes = plumb_formats::Bytes::Owned(std::sync::Arc::new(bytes));
    plumb_kernels::Weight { name: "w".into(), ty, rows, cols, bytes, repacked }
}

/// Every SIMD path this CPU supports (empty on a CPU with none).
fn simd_paths() -> Vec<KernelPath> {
    let paths: Vec<KernelPath> = KernelPath::available().into_iter().filter(|p| *p != KernelPath::Scalar).collect();
    if paths.is_empty() {
        eprintln!("no SIMD path on this CPU; nothing to compare");
    }
    paths
}

const TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

#[test]
fn scalar_references_equal_dequantized_dot_products() {
    let mut rng = StdRng::seed_from_u64(11);
    for ty in TYPES {
        for blocks in [1usize, 3, 7] {
            let n = blocks * ty.block_elems().max(32);
            let w = random_weights(ty, n, &mut rng);
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let act = quantize_activations(&x, 1, n, act_type(ty));
            let got = scalar_dot(ty).unwrap()(n, &w, act.row(0)) as f64;
            let mut wd = vec![0f32; n];
            dequantize(ty, &w, &mut wd).unwrap();
            let mut ad = vec![0f32; n];
            dequantize(act_type(ty), &act.row(0)[..ty_bytes(act_type(ty), n)], &mut ad).unwrap();
            let want: f64 = wd.iter().zip(&ad).map(|(a, b)| *a as f64 * *b as f64).sum();
            let scale: f64 = wd.iter().zip(&ad).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>().max(1e-30);
            // Q8_1 stores s = d·Σq as f16: the min term m·s carries that
            // rounding (half an f16 ulp, 2^-11 relative) by design.
            let s_err: f64 = if act_type(ty) == GgmlType::Q8_1 {
                let (wb, ab) = (ty.block_bytes(), 36);
                (0..n / 32)
                    .map(|i| {
                        let m = half::f16::from_le_bytes([w[i * wb + 2], w[i * wb + 3]]).to_f64();
                        let s = half::f16::from_le_bytes([act.row(0)[i * ab + 2], act.row(0)[i * ab + 3]]).to_f64();
                        (m * s).abs() * 2f64.powi(-11)
                    })
                    .sum()
            } else {
                0.0
            };
            assert!(
                (got - want).abs() <= 1e-5 * scale + s_err,
                "{ty} × {}: {got} vs {want} ({blocks} blocks)",
                act_type(ty)
            );
        }
    }
}

fn ty_bytes(ty: GgmlType, n: usize) -> usize {
    ty.bytes_for(n as u64).unwrap() as usize
}

#[test]
#[cfg_attr(not(has_avx2), ignore = "no SIMD path on this CPU (needs AVX2, FMA and F16C); nothing to compare")]
fn simd_equals_scalar_reference() {
    for path in simd_paths() {
        simd_equals_scalar_reference_on(path);
    }
}

fn simd_equals_scalar_reference_on(path: KernelPath) {
    let mut rng = StdRng::seed_from_u64(5);
    for ty in TYPES {
        for blocks in [1usize, 2, 5, 9, 40] {
            let n = blocks * ty.block_elems().max(32);
            let w = random_weights(ty, n, &mut rng);
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let act = quantize_activations(&x, 1, n, act_type(ty));
            let r = scalar_dot(ty).unwrap()(n, &w, act.row(0));
            let s = dot_for(ty, path)(n, &w, act.row(0));
            // Same integer sums; only the float accumulation order differs.
            let tol = 1e-5 * r.abs().max(1.0);
            assert!((r - s).abs() <= tol, "{ty} ({path:?}): SIMD {s} vs scalar {r} ({blocks} blocks)");
        }
    }
}

#[test]
fn f32_dot_handles_odd_lengths() {
    let mut rng = StdRng::seed_from_u64(2);
    for n in [1usize, 7, 31, 33, 100] {
        let a: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let wb: &[u8] = bytemuck::cast_slice(&a);
        let ab: &[u8] = bytemuck::cast_slice(&b);
        for path in KernelPath::available() {
            let got = dot_for(GgmlType::F32, path)(n, wb, ab) as f64;
            assert!((got - want).abs() < 1e-5, "n={n} {path:?}: {got} vs {want}");
        }
    }
}

#[test]
fn simd_dequantizers_are_bit_identical_to_the_references() {
    for path in simd_paths() {
        simd_dequantizers_are_bit_identical_on(path);
    }
}

fn simd_dequantizers_are_bit_identical_on(path: KernelPath) {
    let mut rng = StdRng::seed_from_u64(9);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        for blocks in [1usize, 3, 8] {
            let n = blocks * ty.block_elems();
            let w = random_weights(ty, n, &mut rng);
            let mut want = vec![0f32; n];
            dequantize(ty, &w, &mut want).unwrap();
            let mut got = vec![f32::NAN; n];
            plumb_kernels::dequantize_row(ty, &w, &mut got, path);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty} ({path:?}) element {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn four_token_and_multi_row_kernels_equal_the_single_kernel_bit_for_bit() {
    for path in KernelPath::available() {
        four_token_and_multi_row_kernels_on(path);
    }
}

fn four_token_and_multi_row_kernels_on(path: KernelPath) {
    use plumb_kernels::fast::{dot4_for, rows_for};
    let mut rng = StdRng::seed_from_u64(21);
    for ty in TYPES {
        let n = 5 * ty.block_elems().max(32);
        let rows = 3;
        let w: Vec<u8> = (0..rows).flat_map(|_| random_weights(ty, n, &mut rng)).collect();
        let rb = w.len() / rows;
        let x: Vec<f32> = (0..4 * n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let act = quantize_activations(&x, 4, n, act_type(ty));
        let one = dot_for(ty, path);
        if let Some(d4) = dot4_for(ty, path) {
            let got = d4(&w[..rb], [act.row(0), act.row(1), act.row(2), act.row(3)]);
            for (t, g) in got.iter().enumerate() {
                assert_eq!(g.to_bits(), one(n, &w[..rb], act.row(t)).to_bits(), "{ty} dot4 token {t}");
            }
        }
        if let Some(rf) = rows_for(ty, path) {
            let mut out = vec![0f32; rows];
            rf(&w, rb, n, act.row(0), &mut out);
            for (r, g) in out.iter().enumerate() {
                assert_eq!(g.to_bits(), one(n, &w[r * rb..(r + 1) * rb], act.row(0)).to_bits(), "{ty} rows row {r}");
            }
        }
    }
}

#[test]
fn tiled_order_kernels_are_bit_identical_across_paths_and_close_to_the_unit_order() {
    for path in simd_paths() {
        tiled_order_kernels_on(path);
    }
}

fn tiled_order_kernels_on(path: KernelPath) {
    use plumb_kernels::fast::tiled_dot_for;
    let mut rng = StdRng::seed_from_u64(11);
    for ty in [GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K] {
        for blocks in [1usize, 3, 8] {
            let n = blocks * 256;
            let w = random_weights(ty, n, &mut rng);
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let act = quantize_activations(&x, 1, n, act_type(ty));
            // Exact integer sums per superblock, then the same float steps.
            let scalar = tiled_dot_for(ty, KernelPath::Scalar).unwrap()(n, &w, act.row(0));
            let simd = tiled_dot_for(ty, path).unwrap()(n, &w, act.row(0));
            assert_eq!(scalar.to_bits(), simd.to_bits(), "{ty}: {blocks} blocks");
            let unit = scalar_dot(ty).unwrap()(n, &w, act.row(0));
            assert!((unit - scalar).abs() <= 1e-5 * unit.abs().max(1.0), "{ty}: {unit} vs {scalar}");
        }
    }
}

/// A repacked weight (Q4_K, Q4_0, IQ4_NL, Q2_K): the one-row and four-row
/// orders are the same bits on every path, close to the unrepacked order
/// and not always its bits, and a T-token linear takes its rows in whole
/// fours through the four-row order and the rest through the one-row
/// order (llama.cpp's gemm and gemv split; Q4_0's and IQ4_NL's two orders
/// are one).
#[test]
fn repacked_kernels_are_bit_identical_across_paths_and_split_by_fours() {
    for path in KernelPath::available() {
        for ty in [GgmlType::Q4_K, GgmlType::Q4_0, GgmlType::IQ4_NL, GgmlType::Q2_K] {
            // Q2_K is repacked where the CPU has AVX-512 only.
            if plumb_kernels::fast::repacks(ty, 64) {
                repacked_kernels_on(path, ty);
            }
        }
    }
}

fn repacked_kernels_on(path: KernelPath, ty: GgmlType) {
    use plumb_kernels::fast::{repacked_dots_for, repacks, FastKernels};
    use plumb_kernels::Kernels;
    let mut rng = StdRng::seed_from_u64(17);
    let (one, four) = repacked_dots_for(ty, path).unwrap();
    let (one_ref, four_ref) = repacked_dots_for(ty, KernelPath::Scalar).unwrap();
    let mut unlike_plain = false;
    for blocks in [1usize, 3, 8, 21] {
        let n = blocks * ty.block_elems();
        let w = random_weights(ty, n, &mut rng);
        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let act = quantize_activations(&x, 1, n, act_type(ty));
        let (a, b) = (one(n, &w, act.row(0)), four(n, &w, act.row(0)));
        assert_eq!(a.to_bits(), one_ref(n, &w, act.row(0)).to_bits(), "{ty} {path:?}: one-row, {blocks} blocks");
        assert_eq!(b.to_bits(), four_ref(n, &w, act.row(0)).to_bits(), "{ty} {path:?}: four-row, {blocks} blocks");
        let unit = scalar_dot(ty).unwrap()(n, &w, act.row(0));
        let plain = dot_for(ty, path)(n, &w, act.row(0));
        for v in [a, b] {
            assert!((unit - v).abs() <= 1e-5 * unit.abs().max(1.0), "{ty}: {unit} vs {v}");
            unlike_plain |= v.to_bits() != plain.to_bits();
        }
    }
    assert!(unlike_plain, "{ty} {path:?}: the repacked order always gave the plain kernel's bits");
    assert!(repacks(ty, 64) && !repacks(ty, 60) && !repacks(GgmlType::Q6_K, 64) && !repacks(GgmlType::Q8_0, 64));
    let k = FastKernels { path };
    let cols = 512;
    let mut split = false;
    for (rows, t) in [(8usize, 1usize), (16, 3), (40, 6), (64, 13), (136, 20)] {
        let w = random_weight(ty, rows, cols, true, &mut rng);
        let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut y = vec![0f32; t * rows];
        k.linear(&w, &x, t, &mut y);
        let act = quantize_activations(&x, t, cols, act_type(ty));
        let rb = w.row_bytes();
        let whole = if t > 3 { t - t % 4 } else { 0 };
        for ti in 0..t {
            for r in 0..rows {
                let dot = if ti < whole { four } else { one };
                let want = dot(cols, &w.bytes[r * rb..(r + 1) * rb], act.row(ti));
                assert_eq!(
                    want.to_bits(),
                    y[ti * rows + r].to_bits(),
                    "{ty} {path:?}: {rows} rows × {t} tokens, ({r}, {ti})"
                );
                let other = if ti < whole { one } else { four };
                split |= other(cols, &w.bytes[r * rb..(r + 1) * rb], act.row(ti)).to_bits() != want.to_bits();
            }
        }
    }
    if matches!(ty, GgmlType::Q4_K | GgmlType::Q2_K) {
        assert!(split, "the two orders never differed: the test cannot tell them apart");
    }
}

/// IQ4_NL against one activation row on AVX2 (llama.cpp's `vec_dot`
/// order, `one_token_dot_for`): even and odd blocks in two accumulators of
/// eight lanes (lane k: elements 4k..4k+3), added lane by lane, folded
/// (lanes k and k+4, then 0+2 and 1+3, then the two), an odd last block
/// fused on after; a one-token linear takes it, and it is not always the
/// many-token order's bits.
#[test]
fn the_one_token_iq4_nl_kernel_sums_in_vec_dots_order() {
    use plumb_kernels::fast::{one_token_dot_for, FastKernels};
    use plumb_kernels::Kernels;
    use plumb_quant::blocks::{f16_to_f32, KVALUES_IQ4NL};
    let ty = GgmlType::IQ4_NL;
    let mut rng = StdRng::seed_from_u64(23);
    for path in simd_paths() {
        let one = one_token_dot_for(ty, path).expect("IQ4_NL has a one-token order on SIMD paths");
        assert!(one_token_dot_for(GgmlType::Q4_0, path).is_none());
        let mut unlike = false;
        for blocks in [1usize, 2, 3, 7, 20] {
            let n = blocks * 32;
            let w = random_weights(ty, n, &mut rng);
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let act = quantize_activations(&x, 1, n, act_type(ty));
            let a = act.row(0);
            let mut acc = [[0f32; 8]; 2];
            let mut tail = None;
            for b in 0..blocks {
                let (wb, ab) = (&w[b * 18..(b + 1) * 18], &a[b * 34..(b + 1) * 34]);
                let d = f16_to_f32([ab[0], ab[1]]) * f16_to_f32([wb[0], wb[1]]);
                let v = |e: usize| {
                    let q = if e < 16 { wb[2 + e] & 0xF } else { wb[2 + e - 16] >> 4 };
                    KVALUES_IQ4NL[q as usize] as i32 * ab[2 + e] as i8 as i32
                };
                let lanes: Vec<i32> = (0..8).map(|k| (4 * k..4 * k + 4).map(v).sum()).collect();
                if b + 1 == blocks && blocks % 2 == 1 {
                    tail = Some((d, lanes.iter().sum::<i32>()));
                } else {
                    for k in 0..8 {
                        acc[b % 2][k] = d.mul_add(lanes[k] as f32, acc[b % 2][k]);
                    }
                }
            }
            let s: Vec<f32> = (0..8).map(|k| acc[0][k] + acc[1][k]).collect();
            let h: Vec<f32> = (0..4).map(|k| s[k] + s[k + 4]).collect();
            let mut want = (h[0] + h[2]) + (h[1] + h[3]);
            if let Some((d, sumi)) = tail {
                want = d.mul_add(sumi as f32, want);
            }
            let got = one(n, &w, a);
            assert_eq!(got.to_bits(), want.to_bits(), "{path:?}: {blocks} blocks");
            unlike |= got.to_bits() != dot_for(ty, path)(n, &w, a).to_bits();
        }
        assert!(unlike, "{path:?}: the one-token order always gave the many-token order's bits");
        // A one-token linear takes it.
        let (rows, cols) = (24usize, 7 * 32);
        let w = random_weight(ty, rows, cols, false, &mut rng);
        let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut y = vec![0f32; rows];
        FastKernels { path }.linear(&w, &x, 1, &mut y);
        let act = quantize_activations(&x, 1, cols, act_type(ty));
        let rb = w.row_bytes();
        for (r, got) in y.iter().enumerate() {
            let want = one(cols, &w.bytes[r * rb..(r + 1) * rb], act.row(0));
            assert_eq!(got.to_bits(), want.to_bits(), "{path:?}: row {r}");
        }
    }
}

#[test]
fn fast_linear_over_many_tokens_equals_the_one_token_kernel_bit_for_bit() {
    // Whatever the tile shape (VNNI 4×4 register tiles, four-token kernels,
    // padding of short row and token groups), each output of a T-token
    // linear is the one-token kernel's on that row and token.
    for path in KernelPath::available() {
        fast_linear_over_many_tokens_on(path);
    }
}

fn fast_linear_over_many_tokens_on(path: KernelPath) {
    use plumb_kernels::fast::{tiled_dot_for, FastKernels, TILED_MIN_TOKENS};
    use plumb_kernels::Kernels;
    let k = FastKernels { path };
    let mut rng = StdRng::seed_from_u64(13);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::IQ4_NL, GgmlType::Q4_K, GgmlType::Q6_K] {
        let cols = if ty.block_elems() == 256 { 512 } else { 7 * 32 };
        for (rows, t) in [(5usize, 2usize), (37, 7), (70, 13), (129, 9)] {
            let w = random_weight(ty, rows, cols, false, &mut rng);
            let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
            let mut y = vec![0f32; t * rows];
            k.linear(&w, &x, t, &mut y);
            let act = quantize_activations(&x, t, cols, act_type(ty));
            let one = if t >= TILED_MIN_TOKENS { tiled_dot_for(ty, path) } else { None };
            let one = one.unwrap_or_else(|| dot_for(ty, path));
            let rb = w.row_bytes();
            for ti in 0..t {
                for r in 0..rows {
                    let want = one(cols, &w.bytes[r * rb..(r + 1) * rb], act.row(ti));
                    assert_eq!(
                        want.to_bits(),
                        y[ti * rows + r].to_bits(),
                        "{ty} ({path:?}): {rows} rows × {t} tokens, ({r}, {ti})"
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(not(has_avx512vnni), ignore = "needs AVX-512 VNNI (with AVX512VL)")]
fn vnni_multi_row_kernels_equal_the_single_kernel_bit_for_bit() {
    use plumb_kernels::fast::vnni_format;
    use plumb_kernels::x86::vnni;
    let path = KernelPath::Avx512Vnni;
    assert!(path.supported(), "the build script saw AVX-512 VNNI");
    let mut rng = StdRng::seed_from_u64(17);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::IQ4_NL] {
        let fmt = vnni_format(ty, path).unwrap();
        let n = 20 * 32;
        let rows = 11;
        let rb = ty_bytes(ty, n);
        let w = random_weights(ty, n * rows, &mut rng);
        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let act = quantize_activations(&x, 1, n, act_type(ty));
        let mut aux = Vec::new();
        vnni::act_aux(act.row(0), fmt.vnni_offset(), &mut aux);
        let mut got = vec![0f32; rows];
        vnni::check_rows_vnni(fmt, &w, rb, act.row(0), &aux, rows);
        // SAFETY: the CPU has the VNNI path's features (checked above); the
        // lengths were checked just above.
        unsafe { vnni::rows_vnni(fmt, &w, rb, act.row(0), &aux, &mut got) };
        for (r, g) in got.iter().enumerate() {
            // The AVX2 kernel: the same bits, by another instruction.
            let want = dot_for(ty, KernelPath::Avx2)(n, &w[r * rb..(r + 1) * rb], act.row(0));
            assert_eq!(want.to_bits(), g.to_bits(), "{ty} row {r}");
        }
    }
}

#[test]
fn tiled_four_token_kernels_equal_the_one_token_ones_bit_for_bit() {
    for path in KernelPath::available() {
        tiled_four_token_kernels_on(path);
    }
}

fn tiled_four_token_kernels_on(path: KernelPath) {
    use plumb_kernels::fast::{tiled_dot4_for, tiled_dot_for};
    let mut rng = StdRng::seed_from_u64(19);
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let Some(d4) = tiled_dot4_for(ty, path) else { return };
        let n = 4 * 256;
        let w = random_weights(ty, n, &mut rng);
        let x: Vec<f32> = (0..4 * n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let act = quantize_activations(&x, 4, n, act_type(ty));
        let got = d4(&w, [act.row(0), act.row(1), act.row(2), act.row(3)]);
        for (k, g) in got.iter().enumerate() {
            let want = tiled_dot_for(ty, path).unwrap()(n, &w, act.row(k));
            assert_eq!(want.to_bits(), g.to_bits(), "{ty} token {k}");
        }
    }
}

/// Each of `got` is row r of `w` dequantized, then dotted with `x` by the
/// exact precision's f32 dot on the SIMD paths, bit for bit.
#[cfg(target_arch = "x86_64")]
fn assert_dequantize_then_dot(ty: GgmlType, w: &[u8], rb: usize, x: &[f32], got: &[f32], path: KernelPath) {
    for (r, g) in got.iter().enumerate() {
        let mut row = vec![0f32; x.len()];
        plumb_kernels::dequantize_row(ty, &w[r * rb..(r + 1) * rb], &mut row, path);
        let want = dot_for(GgmlType::F32, path)(x.len(), bytemuck::cast_slice(&row), bytemuck::cast_slice(x));
        assert_eq!(want.to_bits(), g.to_bits(), "{ty} ({path:?}) row {r}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(not(has_avx2), ignore = "needs the AVX2 path (AVX2, FMA and F16C)")]
fn fused_exact_rows_equal_dequantize_then_dot_bit_for_bit() {
    use plumb_kernels::x86::{avx512, exact, Q8Family};
    assert!(KernelPath::Avx2.supported(), "the build script saw the AVX2 path");
    let wide = KernelPath::Avx512.supported();
    if !wide {
        eprintln!("no AVX512F on this CPU; its rows not run");
    }
    let mut rng = StdRng::seed_from_u64(23);
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::IQ4_NL] {
        let fmt = Q8Family::of(ty).unwrap();
        let (n, rows) = (20 * 32, 5);
        let rb = ty_bytes(ty, n);
        let w = random_weights(ty, n * rows, &mut rng);
        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        exact::check_rows_exact(&w, rb, n, &x, rows);
        let mut got = vec![0f32; rows];
        // SAFETY: AVX2, FMA and F16C (checked above); lengths checked above.
        unsafe { exact::rows_exact(fmt, &w, rb, &x, &mut got) };
        assert_dequantize_then_dot(ty, &w, rb, &x, &got, KernelPath::Avx2);
        if wide {
            let mut got512 = vec![0f32; rows];
            // SAFETY: AVX512F as well (checked above).
            unsafe { avx512::rows_exact(fmt, &w, rb, &x, &mut got512) };
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got512.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{ty}: 512-bit rows"
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(not(has_avx2), ignore = "needs the AVX2 path (AVX2, FMA and F16C)")]
fn fused_exact_k_quant_rows_equal_dequantize_then_dot_bit_for_bit() {
    use plumb_kernels::x86::{exact, KQuant};
    assert!(KernelPath::Avx2.supported(), "the build script saw the AVX2 path");
    let mut rng = StdRng::seed_from_u64(29);
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        let (n, rows) = (3 * 256, 4);
        let rb = ty_bytes(ty, n);
        let w = random_weights(ty, n * rows, &mut rng);
        let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        exact::check_rows_exact(&w, rb, n, &x, rows);
        let mut got = vec![0f32; rows];
        // SAFETY: AVX2, FMA and F16C (checked above); lengths checked above.
        unsafe { exact::rows_exact_k(KQuant::of(ty).unwrap(), &w, rb, &x, &mut got) };
        assert_dequantize_then_dot(ty, &w, rb, &x, &got, KernelPath::Avx2);
    }
}

#[test]
fn linears_on_a_shared_input_equal_one_linear_each_bit_for_bit() {
    for path in KernelPath::available() {
        linears_on_a_shared_input_on(path);
    }
}

fn linears_on_a_shared_input_on(path: KernelPath) {
    use plumb_kernels::fast::FastKernels;
    use plumb_kernels::{Kernels, Weight};
    let k = FastKernels { path };
    let mut rng = StdRng::seed_from_u64(29);
    let cols = 512;
    let ws: Vec<Weight> = [(GgmlType::Q5_0, 33), (GgmlType::Q4_K, 17), (GgmlType::Q8_0, 8), (GgmlType::Q6_K, 9)]
        .into_iter()
        .map(|(ty, rows)| random_weight(ty, rows, cols, false, &mut rng))
        .collect();
    for t in [1usize, 5, 12] {
        let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; t * w.rows]).collect();
        let refs: Vec<&Weight> = ws.iter().collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
        k.linears(&refs, &x, t, &mut ys);
        for (w, got) in ws.iter().zip(&outs) {
            let mut want = vec![0f32; t * w.rows];
            k.linear(w, &x, t, &mut want);
            assert_eq!(
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{} with {t} tokens",
                w.ty
            );
        }
    }
}

#[test]
fn simd_activation_quantizers_equal_the_scalar_ones_byte_for_byte() {
    use plumb_quant::quantize::{quantize_q8_0_act, quantize_q8_k};
    let mut rng = StdRng::seed_from_u64(31);
    let cols = 512;
    let mut rows: Vec<Vec<f32>> = (0..40).map(|_| (0..cols).map(|_| rng.gen_range(-4.0f32..4.0)).collect()).collect();
    // Edge cases: all zeros; exact halves (round half to even); the largest
    // magnitude both positive and negative (the first one sets Q8_K's sign);
    // one tiny value; NaN and ±Inf (the scalar path's saturating casts).
    rows.push(vec![0.0; cols]);
    rows.push((0..cols).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect());
    rows.push(
        (0..cols)
            .map(|i| {
                if i % 32 == 3 {
                    -2.0
                } else if i % 32 == 9 {
                    2.0
                } else {
                    0.25
                }
            })
            .collect(),
    );
    rows.push((0..cols).map(|i| if i == 40 { 1e-30 } else { 0.0 }).collect());
    let mut special: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    special[5] = f32::NAN;
    special[300] = f32::INFINITY;
    special[301] = f32::NEG_INFINITY;
    rows.push(special);
    let t = rows.len();
    let flat = rows.concat();
    let q0 = quantize_activations(&flat, t, cols, GgmlType::Q8_0);
    let qk = quantize_activations(&flat, t, cols, GgmlType::Q8_K);
    for (i, row) in rows.iter().enumerate() {
        let want0: Vec<u8> = row.chunks(32).flat_map(|b| bytemuck::bytes_of(&quantize_q8_0_act(b)).to_vec()).collect();
        assert_eq!(q0.row(i), &want0[..], "Q8_0 row {i}");
        let wantk: Vec<u8> = row.chunks(256).flat_map(|b| bytemuck::bytes_of(&quantize_q8_k(b)).to_vec()).collect();
        assert_eq!(qk.row(i), &wantk[..], "Q8_K row {i}");
    }
}

#[test]
fn exact_linear_over_many_tokens_equals_one_token_at_a_time_bit_for_bit() {
    // Four-token f32 tiles (where the CPU has AVX-512), the one-token fused
    // kernels and the generic rows all give each (row, token) the same bits.
    for path in KernelPath::available() {
        exact_linear_over_many_tokens_on(path);
    }
}

fn exact_linear_over_many_tokens_on(path: KernelPath) {
    use plumb_kernels::{kernels_with, Precision};
    let k = kernels_with(Precision::Exact, path);
    let mut rng = StdRng::seed_from_u64(37);
    for (ty, cols) in [(GgmlType::Q5_0, 7 * 32), (GgmlType::Q8_0, 640), (GgmlType::Q4_K, 512), (GgmlType::F32, 37)] {
        let rows = 19;
        let w = random_weight(ty, rows, cols, false, &mut rng);
        let t = 11;
        let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut y = vec![0f32; t * rows];
        k.linear(&w, &x, t, &mut y);
        for ti in 0..t {
            let mut one = vec![0f32; rows];
            k.linear(&w, &x[ti * cols..(ti + 1) * cols], 1, &mut one);
            let got: Vec<u32> = y[ti * rows..(ti + 1) * rows].iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{ty} ({path:?}), token {ti}");
        }
    }
}

#[test]
fn kernel_paths_parse_by_flag_and_name_where_the_cpu_has_them() {
    assert_eq!(KernelPath::parse("auto"), Some(KernelPath::detect()));
    assert_eq!(KernelPath::parse("avx9"), None);
    for p in KernelPath::ALL {
        let want = p.supported().then_some(p);
        assert_eq!(KernelPath::parse(p.flag()), want, "{}", p.flag());
        assert_eq!(KernelPath::parse(p.name()), want, "{}", p.name());
    }
    // Each path's features include the narrower one's: a CPU that has a
    // path has every path before it.
    let n = KernelPath::available().len();
    assert_eq!(KernelPath::available(), KernelPath::ALL[..n].to_vec());
    assert_eq!(KernelPath::detect(), KernelPath::ALL[n - 1]);
}
