//! Quantize → dequantize error stays under a named bound per format.
//!
//! Inputs are Gaussian with a few large outliers, like real weights and
//! activations. The figure bounded is the normalized RMS error,
//! `rms(x - deq(q(x))) / rms(x)` over 64 blocks. Bounds sit about 1.5× above
//! what the quantizers reach on this data (measured when they were set), so a
//! regression in a quantizer or dequantizer trips them.

use plumb_quant::{dequantize, quantize, GgmlType};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn gaussian(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            // Box–Muller.
            let (u1, u2): (f32, f32) = (rng.gen_range(1e-7..1.0), rng.gen());
            let g = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
            if i % 97 == 13 {
                g * 8.0
            } else {
                g
            }
        })
        .collect()
}

fn nrmse(ty: GgmlType, x: &[f32]) -> f64 {
    let q = quantize(ty, x).unwrap();
    assert_eq!(q.len() as u64, ty.bytes_for(x.len() as u64).unwrap());
    let mut y = vec![0f32; x.len()];
    dequantize(ty, &q, &mut y).unwrap();
    let err: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

/// (format, bound on the normalized RMS error)
const BOUNDS: &[(GgmlType, f64)] = &[
    (GgmlType::F32, 0.0),
    (GgmlType::F16, 3e-4),
    (GgmlType::BF16, 2.7e-3),
    (GgmlType::Q8_0, 0.013),
    (GgmlType::Q8_1, 0.013),
    (GgmlType::Q8_K, 0.03),
    (GgmlType::Q6_K, 0.04),
    (GgmlType::Q5_0, 0.11),
    (GgmlType::Q5_1, 0.07),
    (GgmlType::Q4_0, 0.21),
    (GgmlType::Q4_1, 0.14),
    (GgmlType::Q4_K, 0.14),
];

#[test]
fn quantize_dequantize_error_is_bounded() {
    let mut rng = StdRng::seed_from_u64(7);
    let x = gaussian(&mut rng, 64 * 256);
    let mut report = String::new();
    for &(ty, bound) in BOUNDS {
        let e = nrmse(ty, &x);
        report.push_str(&format!("{ty}: {e:.5} (bound {bound})\n"));
        assert!(e <= bound, "{ty}: normalized RMS error {e} over bound {bound}\n{report}");
    }
    eprintln!("{report}");
}

#[test]
fn all_zero_and_constant_blocks_survive() {
    for &(ty, _) in BOUNDS {
        let n = ty.block_elems().max(256);
        for v in [0.0f32, 1.5, -3.0] {
            let x = vec![v; n];
            let q = quantize(ty, &x).unwrap();
            let mut y = vec![f32::NAN; n];
            dequantize(ty, &q, &mut y).unwrap();
            for (i, b) in y.iter().enumerate() {
                assert!(b.is_finite(), "{ty}: constant {v} gave non-finite {b} at {i}");
                assert!((b - v).abs() <= 0.1 * v.abs() + 1e-6, "{ty}: constant {v} came back as {b} at {i}");
            }
        }
    }
}

#[test]
fn q8_k_sums_match_quants() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = gaussian(&mut rng, 256);
    let b = plumb_quant::quantize::quantize_q8_k(&x);
    for j in 0..16 {
        let s: i32 = b.qs[j * 16..j * 16 + 16].iter().map(|&q| q as i32).sum();
        assert_eq!(s, b.bsums[j] as i32);
    }
}

#[test]
fn lengths_are_checked() {
    let mut out = vec![0f32; 33];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out).is_err());
    let mut out = vec![0f32; 32];
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out).is_err());
    assert!(dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut vec![0f32; 256]).is_err());
    assert!(quantize(GgmlType::Q4_K, &[0.0; 100]).is_err());
}
