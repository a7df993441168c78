//! Criterion benchmarks of the dot-product kernels, linear layers and attention at the
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
        let w = Weight {
            name: name.into(),
            ty,
            rows,
            cols,
            bytes: Bytes::Owned(std::sync::Arc::new(bytes)),
            repacked: false,
        };
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

/// One attention call of a Gemma 3 270M prompt step (4 query heads on one
/// key head of 256, 64 query rows — a block of the model's at long
/// prompts — after `p` cached positions), global and through its window of
/// 512, each of its three steps.
fn attention(c: &mut Criterion) {
    use plumb_kernels::attention::{AttnShape, Values, VALUE_PAD};
    let mut g = c.benchmark_group("attention");
    g.sample_size(10);
    let (heads, kv_heads, hd, t) = (4usize, 1usize, 256usize, 64usize);
    for (p, window) in [(448usize, None), (4032, None), (4032, Some(512))] {
        let tkv = p + t;
        let s = AttnShape {
            t,
            p,
            heads,
            kv_heads,
            hd,
            window,
            scale: 1.0 / 16.0,
            softcap: None,
            scale_queries: true,
            full: false,
            future: 0,
            k_f16: false,
            v_f16: false,
        };
        let q = data(t * heads * hd, 5);
        let keys = data(tkv * kv_heads * hd, 6);
        let stride = tkv.div_ceil(VALUE_PAD) * VALUE_PAD;
        let vt = data(kv_heads * hd * stride, 7);
        let rows: Vec<f32> = data(tkv * kv_heads * hd, 7);
        let mut scores = vec![0f32; heads * t * tkv];
        let mut ctx = vec![0f32; t * heads * hd];
        let name = format!("p{p}{}", window.map_or(String::new(), |w| format!("/window{w}")));
        g.throughput(Throughput::Elements(t as u64));
        for prec in [Precision::Fast, Precision::Exact] {
            let k = kernels_with(prec, KernelPath::detect());
            let values = match prec {
                Precision::Fast => Values::Columns { data: &vt, stride },
                Precision::Exact => Values::Rows(&rows),
            };
            g.bench_function(BenchmarkId::new(format!("scores/{}", prec.name()), &name), |b| {
                b.iter(|| k.attn_scores(&s, &q, &keys, &mut scores))
            });
            k.attn_scores(&s, &q, &keys, &mut scores);
            let probs = scores.clone();
            g.bench_function(BenchmarkId::new(format!("softmax/{}", prec.name()), &name), |b| {
                b.iter(|| {
                    scores.copy_from_slice(&probs);
                    k.attn_softmax(&s, &mut scores)
                })
            });
            k.attn_softmax(&s, &mut scores);
            g.bench_function(BenchmarkId::new(format!("context/{}", prec.name()), &name), |b| {
                b.iter(|| k.attn_context(&s, &scores, values, &mut ctx))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, dots, linear, attention);
criterion_main!(benches);
