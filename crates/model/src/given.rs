//! What two models are given before any activation: hyperparameters and
//! weights, compared in canonical layout, each difference named with the
//! stages it changes.
//!
//! Weights are compared row by row, streamed (one row of each side at a
//! time per thread), against what the two storage types imply: B's row
//! quantized to A's type is what A's row should look like, give or take the
//! quantizer. A tensor whose error is far above that is a finding, and its
//! kind (swapped, scaled, offset, zeroed, rows shifted or permuted,
//! transposed, damaged blocks) is named when the data says so.
//!
//! The calibration model of a noisy comparison ([`weights_as`]) comes from
//! here too: B's weights in A's storage types.

use plumb_kernels::Weight;
use plumb_quant::GgmlType;
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::model::Model;

/// One difference in what the two sides were given.
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    /// "config" or "weights".
    pub kind: &'static str,
    pub subject: String,
    pub what: String,
    /// Stage keys (or bare stage names, for every layer) it changes.
    pub stages: Vec<String>,
}

/// Every hyperparameter the forward pass reads, with the stages it touches.
fn config_fields(c: &ModelConfig) -> Vec<(&'static str, String, &'static [&'static str])> {
    const NORMS: &[&str] =
        &["attn_norm", "ffn_norm", "q_norm", "k_norm", "attn_post_norm", "ffn_post_norm", "final_norm"];
    const ROPE: &[&str] = &["q_rope", "k_rope"];
    let sliding: Vec<String> =
        c.layer_sliding.iter().enumerate().filter(|(_, s)| **s).map(|(i, _)| i.to_string()).collect();
    vec![
        ("arch", c.arch.name().to_string(), &["*"]),
        ("n_layer", c.n_layer.to_string(), &["*"]),
        ("d (model width)", c.d.to_string(), &["*"]),
        ("n_head", c.n_head.to_string(), &["q_proj", "attn_scores"]),
        ("n_head_kv", c.n_head_kv.to_string(), &["k_proj", "v_proj", "attn_scores"]),
        ("head_dim", c.head_dim.to_string(), &["q_proj", "k_proj", "v_proj", "q_rope", "k_rope"]),
        ("ff (FFN width)", c.ff.to_string(), &["ffn_gate", "ffn_up"]),
        ("vocab", c.vocab.to_string(), &["embedding", "logits"]),
        ("rms_eps", format!("{:e}", c.rms_eps), NORMS),
        ("rope_theta (global layers)", c.rope_theta.to_string(), ROPE),
        ("rope_theta_local (sliding layers)", c.rope_theta_local.to_string(), ROPE),
        ("sliding_window", format!("{:?}", c.sliding_window), &["attn_probs"]),
        ("sliding layers", format!("[{}]", sliding.join(",")), &["attn_probs", "q_rope", "k_rope"]),
        ("qkv_bias", c.qkv_bias.to_string(), &["q_proj", "k_proj", "v_proj"]),
        ("qk_norm", c.qk_norm.to_string(), &["q_norm", "k_norm"]),
        ("post_norms", c.post_norms.to_string(), &["attn_post_norm", "ffn_post_norm"]),
        ("embed_scale", c.embed_scale.to_string(), &["embedding"]),
        ("activation", format!("{:?}", c.act), &["ffn_act"]),
        ("attn_scale", c.attn_scale.to_string(), &["attn_scores"]),
        ("attn_softcap", format!("{:?}", c.attn_softcap), &["attn_scores"]),
        ("final_softcap", format!("{:?}", c.final_softcap), &["logits"]),
        ("tied_output", c.tied_output.to_string(), &["logits"]),
        ("norm_plus_one", c.norm_plus_one.to_string(), NORMS),
        ("unpermute_qk", c.unpermute_qk.to_string(), &["q_proj", "k_proj"]),
    ]
}

/// Every hyperparameter side by side: name, A's value, B's value, and the
/// stages it touches.
pub fn config_side_by_side(a: &ModelConfig, b: &ModelConfig) -> Vec<(String, String, String, Vec<String>)> {
    config_fields(a)
        .into_iter()
        .zip(config_fields(b))
        .map(|((name, va, stages), (_, vb, _))| {
            (name.to_string(), va, vb, stages.iter().map(|s| s.to_string()).collect())
        })
        .collect()
}

/// Hyperparameters that differ, A against B. A side under flash attention
/// has no attn_scores or attn_probs: what they would show first shows in
/// its fused attn_context.
pub fn compare_config(a: &ModelConfig, b: &ModelConfig) -> Vec<Given> {
    config_fields(a)
        .into_iter()
        .zip(config_fields(b))
        .filter(|(x, y)| x.1 != y.1)
        .map(|((name, va, stages), (_, vb, _))| {
            let mut touched: Vec<String> = stages.iter().map(|s| s.to_string()).collect();
            let fused =
                (a.flash_attn || b.flash_attn) && stages.iter().any(|s| matches!(*s, "attn_scores" | "attn_probs"));
            if fused && !touched.iter().any(|s| s == "attn_context") {
                touched.push("attn_context".to_string());
            }
            Given { kind: "config", subject: name.to_string(), what: format!("A {va}, B {vb}"), stages: touched }
        })
        .collect()
}

/// A model's weights by canonical (GGUF) name, with the stage each feeds.
fn matrices(m: &Model) -> Vec<(String, &Weight, String)> {
    // A tied output matrix is the embedding: its findings reach the logits too
    // (the stage list is split on '|' by compare_weights).
    let embed_stages = if m.cfg.tied_output { "embedding|logits" } else { "embedding" };
    let mut v = vec![("token_embd.weight".to_string(), &m.embed, embed_stages.to_string())];
    for (l, w) in m.layers.iter().enumerate() {
        for (name, wt, stage) in [
            ("attn_q", &w.wq, "q_proj"),
            ("attn_k", &w.wk, "k_proj"),
            ("attn_v", &w.wv, "v_proj"),
            ("attn_output", &w.wo, "attn_out"),
        ] {
            v.push((format!("blk.{l}.{name}.weight"), wt, format!("blk.{l}.{stage}")));
        }
        for (name, wt, stage) in w.ffn.matrices() {
            v.push((format!("blk.{l}.{name}"), wt, stage.key(Some(l))));
        }
    }
    if !m.cfg.tied_output {
        v.push(("output.weight".to_string(), &m.output, "logits".to_string()));
    }
    v
}

/// Vectors (norms with any +1 applied, biases), with the stage each feeds.
fn vectors(m: &Model) -> Vec<(String, &[f32], String)> {
    let mut v: Vec<(String, &[f32], String)> = Vec::new();
    for (l, w) in m.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{l}.{s}");
        let opts: [(&str, &Option<Vec<f32>>, &str); 9] = [
            ("attn_norm.weight", &w.attn_norm, "attn_norm"),
            ("ffn_norm.weight", &w.ffn_norm, "ffn_norm"),
            ("attn_q.bias", &w.bq, "q_proj"),
            ("attn_k.bias", &w.bk, "k_proj"),
            ("attn_v.bias", &w.bv, "v_proj"),
            ("attn_q_norm.weight", &w.q_norm, "q_norm"),
            ("attn_k_norm.weight", &w.k_norm, "k_norm"),
            ("post_attention_norm.weight", &w.attn_post_norm, "attn_post_norm"),
            ("post_ffw_norm.weight", &w.ffn_post_norm, "ffn_post_norm"),
        ];
        for (name, x, stage) in opts {
            if let Some(x) = x {
                v.push((n(name), x, n(stage)));
            }
        }
    }
    v.push(("output_norm.weight".to_string(), &m.final_norm, "final_norm".to_string()));
    v
}

/// Relative mean squared error of quantizing to `ty`, measured with plumb's
/// quantizer on a fixed Gaussian sample: the nominal cost of a storage type
/// when the two sides hold the same type but different bytes.
fn nominal_nmse(ty: GgmlType) -> f64 {
    use rand::{Rng, SeedableRng};
    let n = 4096;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x: Vec<f32> = (0..n)
        .map(|_| {
            // Box–Muller.
            let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    match plumb_quant::quantize(ty, &x) {
        Ok(q) => {
            let mut y = vec![0f32; n];
            if plumb_quant::dequantize(ty, &q, &mut y).is_err() {
                return 2f64.powf(-2.0 * ty.bits_per_weight());
            }
            let se: f64 = x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let ss: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
            se / ss
        }
        // No quantizer for this type: about one step of a uniform grid of
        // its bits per weight.
        Err(_) => 2f64.powf(-2.0 * ty.bits_per_weight()),
    }
}

/// B's row as A's storage type would hold it: quantized and back.
fn as_type(ty: GgmlType, row: &[f32]) -> Option<Vec<f32>> {
    let q = plumb_quant::quantize(ty, row).ok()?;
    let mut y = vec![0f32; row.len()];
    plumb_quant::dequantize(ty, &q, &mut y).ok()?;
    Some(y)
}

/// Per-row error of A against B and what the storage types imply.
struct RowErr {
    err: f64,
    expected: f64,
    norm: f64,
    /// The block with the largest error: (index, its error).
    worst_block: (usize, f64),
}

/// Ratio above which a tensor (or a row, ×4 again) is a finding.
const WEIGHT_BAND: f64 = 4.0;
/// Relative floor: f32 storage against f32 storage.
const WEIGHT_FLOOR: f64 = 1e-12;

fn dequantized(w: &Weight) -> Vec<f32> {
    let mut out = vec![0f32; w.rows * w.cols];
    out.par_chunks_mut(w.cols).enumerate().for_each(|(r, o)| w.row_into(r, o));
    out
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut se, mut ss) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        se += ((x - y) as f64).powi(2);
        ss += (*y as f64).powi(2);
    }
    if ss > 0.0 {
        se / ss
    } else if se == 0.0 {
        0.0
    } else {
        f64::INFINITY
    }
}

/// Names what happened to a matrix whose error is beyond its types: the
/// kinds a converter or a quantizer actually produces.
fn classify(a: &Weight, b: &Weight, others: &[(&str, &Weight)], head_dim: usize, expected: f64) -> Option<String> {
    let (da, db) = (dequantized(a), dequantized(b));
    let close = |e: f64| e <= (WEIGHT_BAND * expected).max(1e-6);
    let na: f64 = da.iter().map(|x| (*x as f64).powi(2)).sum();
    if na == 0.0 {
        return Some("zeroed (every value is 0)".into());
    }
    for (name, o) in others {
        if o.rows == a.rows && o.cols == a.cols && close(rel_err(&da, &dequantized(o))) {
            return Some(format!("holds B's {name} (swapped or copied)"));
        }
    }
    let dot: f64 = da.iter().zip(&db).map(|(x, y)| *x as f64 * *y as f64).sum();
    let nb: f64 = db.iter().map(|y| (*y as f64).powi(2)).sum();
    let c = dot / nb.max(f64::MIN_POSITIVE);
    let scaled: Vec<f32> = db.iter().map(|y| (*y as f64 * c) as f32).collect();
    if (c - 1.0).abs() > 1e-3 && close(rel_err(&da, &scaled)) {
        return Some(format!("scaled by {c:.4}"));
    }
    let (rows, cols) = (a.rows, a.cols);
    let row = |d: &[f32], r: usize| d[r * cols..(r + 1) * cols].to_vec();
    for (shift, word) in [(1isize, "next"), (-1, "previous")] {
        let mut se = 0f64;
        let mut ss = 0f64;
        for r in 1..rows - 1 {
            let src = (r as isize + shift) as usize;
            let (x, y) = (row(&da, r), row(&db, src));
            for (p, q) in x.iter().zip(&y) {
                se += ((p - q) as f64).powi(2);
                ss += (*q as f64).powi(2);
            }
        }
        if close(se / ss.max(f64::MIN_POSITIVE)) {
            return Some(format!("rows shifted by one: each row holds B's {word} row"));
        }
    }
    // B's matrix transposed, written with B's shape: the flat data of Bᵀ.
    let t: Vec<f32> = (0..rows * cols).map(|i| db[(i % rows) * cols + i / rows]).collect();
    if close(rel_err(&da, &t)) {
        return Some(if rows == cols {
            "transposed".into()
        } else {
            "holds B's data transposed, under B's shape".into()
        });
    }
    // Rotary pairs laid out interleaved instead of in halves, per head (the
    // classic Q/K conversion mistake), or the reverse.
    if head_dim > 1 && rows.is_multiple_of(head_dim) {
        for (dir, word) in
            [(0, "interleaved rotary pairs where B has halves"), (1, "rotary halves where B interleaves")]
        {
            let mut p = vec![0f32; da.len()];
            for r in 0..rows {
                let (h, i) = (r / head_dim, r % head_dim);
                let half = head_dim / 2;
                // dir 0: A row i of a head = B row perm(i) with interleaving.
                let src = if dir == 0 {
                    if i % 2 == 0 {
                        i / 2
                    } else {
                        half + i / 2
                    }
                } else if i < half {
                    2 * i
                } else {
                    2 * (i - half) + 1
                };
                p[r * cols..(r + 1) * cols].copy_from_slice(&db[(h * head_dim + src) * cols..][..cols]);
            }
            if close(rel_err(&da, &p)) {
                return Some(format!("rows permuted within each head: {word}"));
            }
        }
    }
    // Same rows in another order: the multisets of row norms agree.
    let norms = |d: &[f32]| -> Vec<f64> {
        let mut v: Vec<f64> =
            (0..rows).map(|r| d[r * cols..(r + 1) * cols].iter().map(|x| (*x as f64).powi(2)).sum()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (sa, sb) = (norms(&da), norms(&db));
    let norm_err: f64 = sa.iter().zip(&sb).map(|(x, y)| (x - y).abs()).sum::<f64>() / sb.iter().sum::<f64>().max(1e-30);
    if norm_err < 1e-3 {
        return Some("rows permuted (the same rows in another order)".into());
    }
    None
}

/// The tensors whose values are beyond what their storage types explain.
pub fn compare_weights(a: &Model, b: &Model) -> Vec<Given> {
    let mut out = Vec::new();
    let (ma, mb) = (matrices(a), matrices(b));
    for ((name, wa, stage), (_, wb, _)) in ma.iter().zip(&mb) {
        if wa.rows != wb.rows || wa.cols != wb.cols {
            out.push(Given {
                kind: "weights",
                subject: name.clone(),
                what: format!("shape A [{}, {}], B [{}, {}]", wa.rows, wa.cols, wb.rows, wb.cols),
                stages: stage.split('|').map(str::to_string).collect(),
            });
            continue;
        }
        if wa.ty == wb.ty && *wa.bytes == *wb.bytes {
            continue;
        }
        let nominal = if wa.ty == wb.ty { nominal_nmse(wa.ty) } else { 0.0 };
        let block = wa.ty.block_elems().max(1);
        let rows: Vec<RowErr> = (0..wa.rows)
            .into_par_iter()
            .map_init(
                || (vec![0f32; wa.cols], vec![0f32; wa.cols]),
                |(ra, rb), r| {
                    wa.row_into(r, ra);
                    wb.row_into(r, rb);
                    let norm: f64 = rb.iter().map(|y| (*y as f64).powi(2)).sum();
                    let expect_row = if wa.ty == wb.ty { None } else { as_type(wa.ty, rb) };
                    let expected = match &expect_row {
                        Some(q) => q.iter().zip(rb.iter()).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>(),
                        None if wa.ty == wb.ty => nominal * norm,
                        None => 2f64.powf(-2.0 * wa.ty.bits_per_weight()) * norm,
                    };
                    let mut err = 0f64;
                    let mut worst_block = (0, 0f64);
                    for (bi, (xa, xb)) in ra.chunks(block).zip(rb.chunks(block)).enumerate() {
                        let e: f64 = xa.iter().zip(xb).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                        err += e;
                        if e > worst_block.1 {
                            worst_block = (bi, e);
                        }
                    }
                    RowErr { err, expected, norm, worst_block }
                },
            )
            .collect();
        let err: f64 = rows.iter().map(|r| r.err).sum();
        let expected: f64 = rows.iter().map(|r| r.expected).sum();
        let norm: f64 = rows.iter().map(|r| r.norm).sum();
        let limit = |e: f64, n: f64, band: f64| band * e + WEIGHT_FLOOR * n;
        let row_ratio =
            |r: &RowErr| r.err / limit(r.expected, r.norm, WEIGHT_BAND * WEIGHT_BAND).max(f64::MIN_POSITIVE);
        let (worst_r, worst) = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (i, row_ratio(r)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
            .unwrap_or((0, 0.0));
        if !err.is_finite() {
            let r = rows.iter().position(|r| !r.err.is_finite()).unwrap_or(0);
            out.push(Given {
                kind: "weights",
                subject: name.clone(),
                what: format!("holds NaN or Inf values (first in row {r})"),
                stages: stage.split('|').map(str::to_string).collect(),
            });
            continue;
        }
        let nmse = err / norm.max(f64::MIN_POSITIVE);
        let exp_nmse = expected / norm.max(f64::MIN_POSITIVE);
        if err > limit(expected, norm, WEIGHT_BAND) {
            let others: Vec<(&str, &Weight)> = mb
                .iter()
                .filter(|(n, _, _)| n != name && same_layer(n, name))
                .map(|(n, w, _)| (n.as_str(), *w))
                .collect();
            let kind = classify(wa, wb, &others, a.cfg.head_dim, exp_nmse);
            let damaged = rows.iter().filter(|r| row_ratio(r) > 1.0).count();
            let what = match kind {
                Some(k) => format!("{k} (NMSE {nmse:.3e} against B; its types explain {exp_nmse:.1e})"),
                None if damaged * 10 < rows.len() => {
                    let r = &rows[worst_r];
                    format!(
                        "{damaged} of {} rows damaged; worst row {worst_r}, block {} (elements {}..{}) holds {:.0}% of that row's error: a corrupted block or block scale (NMSE {nmse:.3e}; its types explain {exp_nmse:.1e})",
                        rows.len(),
                        r.worst_block.0,
                        r.worst_block.0 * block,
                        (r.worst_block.0 + 1) * block,
                        100.0 * r.worst_block.1 / r.err.max(f64::MIN_POSITIVE)
                    )
                }
                None => format!("differs beyond its storage types: NMSE {nmse:.3e}, expected {exp_nmse:.1e}"),
            };
            out.push(Given {
                kind: "weights",
                subject: name.clone(),
                what,
                stages: stage.split('|').map(str::to_string).collect(),
            });
        } else if worst > 1.0 {
            let r = &rows[worst_r];
            out.push(Given {
                kind: "weights",
                subject: name.clone(),
                what: format!(
                    "row {worst_r} is {:.0}× its expected error, {:.0}% of it in block {} (elements {}..{}): a corrupted block or block scale",
                    r.err / r.expected.max(WEIGHT_FLOOR * r.norm).max(f64::MIN_POSITIVE),
                    100.0 * r.worst_block.1 / r.err.max(f64::MIN_POSITIVE),
                    r.worst_block.0,
                    r.worst_block.0 * block,
                    (r.worst_block.0 + 1) * block
                ),
                stages: stage.split('|').map(str::to_string).collect(),
            });
        }
    }
    let (va, vb) = (vectors(a), vectors(b));
    for ((name, xa, stage), (_, xb, _)) in va.iter().zip(&vb) {
        if xa.len() != xb.len() {
            out.push(Given {
                kind: "weights",
                subject: name.clone(),
                what: format!("length A {}, B {}", xa.len(), xb.len()),
                stages: stage.split('|').map(str::to_string).collect(),
            });
            continue;
        }
        let e = rel_err(xa, xb);
        // Vectors are stored as floats; F16 storage rounds at 2⁻¹¹.
        if e <= 1e-6 {
            continue;
        }
        let swapped = vb
            .iter()
            .find(|(n, x, _)| n != name && same_layer(n, name) && x.len() == xa.len() && rel_err(xa, x) <= 1e-6);
        if let Some((other, _, _)) = swapped {
            out.push(Given {
                kind: "weights",
                subject: name.clone(),
                what: format!("holds B's {other} (swapped or copied)"),
                stages: stage.split('|').map(str::to_string).collect(),
            });
            continue;
        }
        let diff: Vec<f64> = xa.iter().zip(xb.iter()).map(|(x, y)| (*x - *y) as f64).collect();
        let mean = diff.iter().sum::<f64>() / diff.len() as f64;
        let spread = diff.iter().map(|d| (d - mean).abs()).fold(0.0, f64::max);
        let na: f64 = xa.iter().map(|x| (*x as f64).powi(2)).sum();
        let what = if na == 0.0 {
            "zeroed (every value is 0)".to_string()
        } else if spread < 1e-4 * mean.abs().max(1e-30) || spread < 1e-6 {
            format!("offset by {mean:+.4} everywhere (a norm's +1 dropped or applied twice?)")
        } else {
            let dot: f64 = xa.iter().zip(xb.iter()).map(|(x, y)| *x as f64 * *y as f64).sum();
            let nb: f64 = xb.iter().map(|y| (*y as f64).powi(2)).sum();
            let c = dot / nb.max(f64::MIN_POSITIVE);
            let resid: f64 =
                xa.iter().zip(xb.iter()).map(|(x, y)| (*x as f64 - c * *y as f64).powi(2)).sum::<f64>() / nb;
            if resid < 1e-8 {
                format!("scaled by {c:.4}")
            } else {
                format!("differs: NMSE {e:.3e}")
            }
        };
        out.push(Given {
            kind: "weights",
            subject: name.clone(),
            what,
            stages: stage.split('|').map(str::to_string).collect(),
        });
    }
    out
}

fn same_layer(x: &str, y: &str) -> bool {
    let layer = |s: &str| s.strip_prefix("blk.").and_then(|r| r.split('.').next()).map(str::to_string);
    layer(x) == layer(y)
}

/// B's weights converted to the storage types A holds them in, row by row,
/// for the calibration model. Tensors whose type A shares are kept as they
/// are; types plumb cannot write are kept in B's type and listed.
pub fn weights_as(b: &mut Model, a: &Model) -> Vec<String> {
    let mut kept = Vec::new();
    let types: Vec<GgmlType> = matrices(a).iter().map(|(_, w, _)| w.ty).collect();
    if types.len() != matrices(b).len() {
        return vec!["every tensor (the two models have different layouts), kept in B's types".into()];
    }
    let convert = |w: &Weight, ty: GgmlType, kept: &mut Vec<String>| -> Weight {
        if w.ty == ty {
            return w.clone();
        }
        let bytes: Result<Vec<Vec<u8>>, _> = (0..w.rows)
            .into_par_iter()
            .map_init(
                || vec![0f32; w.cols],
                |row, r| {
                    w.row_into(r, row);
                    plumb_quant::quantize(ty, row)
                },
            )
            .collect();
        match bytes {
            Ok(rows) => Weight {
                name: w.name.clone(),
                ty,
                rows: w.rows,
                cols: w.cols,
                bytes: plumb_formats::Bytes::Owned(std::sync::Arc::new(rows.concat())),
                repacked: false,
            },
            Err(_) => {
                kept.push(format!("{} ({} kept, A has {ty})", w.name, w.ty));
                w.clone()
            }
        }
    };
    let mut i = 0;
    let mut next = || {
        i += 1;
        types[i - 1]
    };
    b.embed = convert(&b.embed, next(), &mut kept);
    for l in 0..b.layers.len() {
        let w = &mut b.layers[l];
        w.wq = convert(&w.wq, next(), &mut kept);
        w.wk = convert(&w.wk, next(), &mut kept);
        w.wv = convert(&w.wv, next(), &mut kept);
        w.wo = convert(&w.wo, next(), &mut kept);
        for m in w.ffn.matrices_mut() {
            *m = convert(m, next(), &mut kept);
        }
    }
    if b.cfg.tied_output {
        b.output = b.embed.clone();
    } else {
        b.output = convert(&b.output, next(), &mut kept);
    }
    kept
}
