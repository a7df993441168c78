//! diff on hand-made traces: every comparison basis, the first divergence,
//! introduced vs inherited, and logits metrics.

use plumb_diff::compare::{logits_metrics, Basis, Origin};
use plumb_diff::{diff, Gate};
use plumb_trace::{TensorStats, Trace};

fn trace(tokens: Vec<u32>, tensors: &[(&str, Vec<usize>, Vec<f32>)], keep_tensors: bool) -> Trace {
    let mut t = Trace { tokens, ..Default::default() };
    t.meta.insert("plumb.engine".into(), "test".into());
    t.meta.insert("plumb.arch".into(), "llama".into());
    for (k, shape, data) in tensors {
        let axis = if k.ends_with("attn_scores") || k.ends_with("attn_probs") { 1 } else { 0 };
        t.stats.push((k.to_string(), TensorStats::compute(data, shape, axis)));
        if keep_tensors {
            t.tensors.insert(k.to_string(), (shape.clone(), data.clone()));
        }
    }
    t.sort();
    t
}

fn ramp(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32) * 0.37 + k).sin()).collect()
}

#[test]
fn identical_traces_are_parity() {
    let t = trace(
        vec![1, 2],
        &[("embedding", vec![2, 4], ramp(8, 0.0)), ("blk.0.attn_norm", vec![2, 4], ramp(8, 1.0))],
        true,
    );
    let d = diff(&t, &t, &Gate::default(), 0.01);
    assert!(!d.diverged());
    assert!(d.stages.iter().all(|s| s.nmse == Some(0.0) && s.basis == Basis::Tensors));
}

#[test]
fn first_divergence_is_introduced_then_inherited() {
    let emb = ramp(8, 0.0);
    let norm = ramp(8, 1.0);
    let q = ramp(8, 2.0);
    let mut norm_bad = norm.clone();
    norm_bad[5] += 0.5;
    let mut q_bad = q.clone();
    q_bad[1] += 0.5;
    let b = trace(
        vec![1, 2],
        &[
            ("embedding", vec![2, 4], emb.clone()),
            ("blk.0.attn_norm", vec![2, 4], norm),
            ("blk.0.q_proj", vec![2, 4], q),
        ],
        true,
    );
    let a = trace(
        vec![1, 2],
        &[
            ("embedding", vec![2, 4], emb),
            ("blk.0.attn_norm", vec![2, 4], norm_bad),
            ("blk.0.q_proj", vec![2, 4], q_bad),
        ],
        true,
    );
    let d = diff(&a, &b, &Gate::default(), 0.01);
    assert!(d.diverged());
    let first = &d.stages[d.first.unwrap()];
    assert_eq!(first.key, "blk.0.attn_norm");
    assert_eq!(first.origin, Origin::Introduced);
    assert_eq!(first.max_at, Some((1, 1)), "element 5 of [2,4] is token 1, feature 1");
    let q = d.stages.iter().find(|s| s.key == "blk.0.q_proj").unwrap();
    assert_eq!(q.origin, Origin::Inherited);
    assert_eq!(q.inputs, vec!["blk.0.attn_norm".to_string()]);
    // A looser bound makes it parity.
    assert!(!diff(&a, &b, &Gate::with_tol(10.0), 0.01).diverged());
}

#[test]
fn stats_only_and_last_token_and_missing_stages() {
    let b = trace(
        vec![1, 2],
        &[("embedding", vec![2, 4], ramp(8, 0.0)), ("blk.0.attn_norm", vec![2, 4], ramp(8, 1.0))],
        false,
    );
    let a = trace(vec![1, 2], &[("embedding", vec![2, 4], ramp(8, 0.0))], false);
    let d = diff(&a, &b, &Gate::default(), 0.01);
    assert_eq!(d.stages[0].basis, Basis::Stats);
    assert_eq!(d.stages[1].basis, Basis::OnlyB);
    assert!(!d.diverged(), "a stage present on one side only is reported, not a divergence");
    // Different token counts: the last token's stats are compared, and said so.
    let long = trace(vec![1, 2, 3], &[("embedding", vec![3, 4], ramp(12, 0.0))], false);
    let d = diff(&long, &b, &Gate::default(), 0.01);
    assert_eq!(d.stages[0].basis, Basis::LastTokenStats);
    assert!(d.notes.iter().any(|n| n.contains("token ids differ")));
    assert!(d.notes.iter().any(|n| n.contains("last-token")));
}

#[test]
fn nan_on_one_side_is_a_divergence() {
    let b = trace(vec![1], &[("embedding", vec![1, 4], vec![1.0, 2.0, 3.0, 4.0])], true);
    let a = trace(vec![1], &[("embedding", vec![1, 4], vec![1.0, f32::NAN, 3.0, 4.0])], true);
    assert!(diff(&a, &b, &Gate::default(), 0.01).diverged());
    let (a, b) = (trace(vec![1], &[("embedding", vec![1, 4], vec![1.0, f32::NAN, 3.0, 4.0])], false), b);
    let b = trace(b.tokens.clone(), &[("embedding", vec![1, 4], vec![1.0, 2.0, 3.0, 4.0])], false);
    assert!(diff(&a, &b, &Gate::default(), 0.01).diverged(), "stats-only: NaN counts differ");
}

#[test]
fn logits_metrics_flag_near_ties() {
    // Position 0: B prefers 1 over 0 by 0.001 (a near-tie), A prefers 0.
    // Position 1: B prefers 2 by a wide margin, A agrees.
    let b = vec![1.0, 1.001, 0.0, -1.0, -2.0, -3.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0];
    let a = vec![1.002, 1.0, 0.0, -1.0, -2.0, -3.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0];
    let m = logits_metrics(&a, &b, 6, 0.01);
    assert!(!m[0].top1_agree && m[0].near_tie);
    assert!(m[1].top1_agree && !m[1].near_tie);
    assert!(m[0].kl > 0.0 && m[1].kl == 0.0);
    assert_eq!(m[1].top5_overlap, 1.0);
}
