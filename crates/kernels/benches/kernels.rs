//! Criterion benchmarks of the dot-product kernels and linear layers at the
//! shapes of Gemma 3 270M (d 640, ffn 2048, q 1024, vocab 262144), for the
//! formats its Q4_K_M file uses, scalar reference against SIMD.
//!
//! cargo bench -p plumb-kernels

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use plumb_formats::Bytes;
use plumb_kernels::dot::act_type;
use plumb_kernels::fast::{dot_for, quantize_activations};
use plumb_kernels::{kernels_with, KernelPath, Precision, Weight};
use plumb_quant::{quantize, GgmlType};

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed)) >> 8) as f32 / (1 << 24) as f32 - 0.5)
        .collect()
}

/// Bytes of a weight row of `n` in `ty` (random but valid blocks).
fn row(ty: GgmlType, n: usize) -> Vec<u8> {
    match quantize(ty, &data(n, 1)) {
        Ok(q) => q,
        Err(_) => {
            // Formats plumb cannot quantize: Q5_0's size stands in via Q4_K.
            quantize(GgmlType::Q4_K, &data(n, 1)).unwrap()
        }
    }
}

fn dots(c: &mut Criterion) {
    let mut g = c.benchmark_group("dot");
    for (ty, n) in [(GgmlType::Q8_0, 640), (GgmlType::Q5_0, 640), (GgmlType::Q4_K, 1024), (GgmlType::Q6_K, 2048)] {
        let w = row(ty, n);
        let act = quantize_activations(&data(n, 2), 1, n, act_type(ty));
        g.throughput(Throughput::Elements(n as u64));
        for path in [KernelPath::Scalar, KernelPath::detect()] {
            let f = dot_for(ty, path);
            g.bench_with_input(BenchmarkId::new(format!("{ty}/{}", path.name()), n), &n, |b, &n| {
                b.iter(|| f(n, &w, act.row(0)))
            });
        }
    }
    g.finish();
}

fn linear(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    g.sample_size(10);
    // ffn_gate of Gemma 3 270M: [2048, 640] Q5_0 — here Q4_0's layout family via Q5_0 quantizer.
    for (name, ty, rows, cols) in [("ffn_gate", GgmlType::Q5_0, 2048, 640), ("attn_output", GgmlType::Q4_K, 640, 1024)]
    {
        let bytes = quantize(ty, &data(rows * cols, 3)).unwrap();
        let w = Weight { name: name.into(), ty, rows, cols, bytes: Bytes::Owned(std::sync::Arc::new(bytes)) };
        for t in [1usize, 64] {
            let x = data(t * cols, 4);
            let mut y = vec![0f32; t * rows];
            g.throughput(Throughput::Elements((rows * cols * t) as u64));
            for p in [Precision::Fast, Precision::Exact] {
                let k = kernels_with(p, KernelPath::detect());
                g.bench_function(BenchmarkId::new(format!("{name}/{}", p.name()), t), |b| {
                    b.iter(|| k.linear(&w, &x, t, &mut y))
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, dots, linear);
criterion_main!(benches);
