//! A long prompt traced in parts (a statistics-only recorder takes each
//! stage block by block, `Model::in_parts`) gives the statistics of the
//! same trace taken whole: the same stages, the same
//! shapes, counts and extremes exactly (the values are the same bits), sums
//! within the rounding of adding them in pieces; and the same logits.

use std::path::PathBuf;

use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Model, Observer, Precision, Stage};
use plumb_trace::{Recorder, Stats, TracePlan};

/// Longer than a batch (512 rows), not a multiple of 16, so the parts, the
/// query blocks and the logits blocks all end ragged.
const LONG: usize = 601;

/// The recorder, made to take every stage whole.
struct Whole(Recorder);

impl Observer for Whole {
    fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.0.wants(layer, stage)
    }
    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        self.0.record(layer, stage, data, shape)
    }
    fn step_done(&mut self) {
        self.0.step_done()
    }
}

fn close(key: &str, what: &str, a: Option<f64>, b: Option<f64>) {
    match (a, b) {
        (Some(a), Some(b)) => {
            let tol = 1e-9 * a.abs().max(b.abs()).max(1e-30);
            assert!((a - b).abs() <= tol, "{key} {what}: parts {a} vs whole {b}");
        }
        _ => assert_eq!(a, b, "{key} {what}"),
    }
}

fn same(key: &str, parts: &Stats, whole: &Stats) {
    assert_eq!((parts.count, parts.nan, parts.inf), (whole.count, whole.nan, whole.inf), "{key}");
    assert_eq!((parts.min, parts.max, parts.abs_max), (whole.min, whole.max, whole.abs_max), "{key}");
    close(key, "mean", parts.mean, whole.mean);
    close(key, "std", parts.std, whole.std);
    close(key, "l2", parts.l2, whole.l2);
}

/// Traces `tokens` in parts and whole with `plan` and compares.
fn check(model: &Model, precision: Precision, tokens: &[u32], plan: &TracePlan, all_logits: bool) {
    let k = kernels_for(precision);
    let run = |obs: &mut dyn Observer| {
        let mut cache = KvCache::new(&model.cfg, tokens.len());
        let logits = model.forward(k.as_ref(), tokens, &mut cache, all_logits, obs);
        logits[logits.len() - model.cfg.vocab..].to_vec()
    };
    let mut parts = Recorder::new(plan.clone());
    assert!(model.in_parts(tokens.len(), &parts));
    let got = run(&mut parts);
    let mut whole = Whole(Recorder::new(plan.clone()));
    assert!(!model.in_parts(tokens.len(), &whole));
    let want = run(&mut whole);
    let name = format!("{:?} {precision:?} all_logits={all_logits}", model.cfg.arch);
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: last logits differ");
    // In the order a trace file lists them (taken in parts, a layer's
    // keys are made before its queries).
    for r in [&mut parts, &mut whole.0] {
        r.stats.sort_by_key(|(k, _)| plumb_trace::stage::order_key(k));
    }
    let keys = |r: &Recorder| r.stats.iter().map(|(k, s)| (k.clone(), s.shape.clone())).collect::<Vec<_>>();
    assert_eq!(keys(&parts), keys(&whole.0), "{name}: stages or shapes differ");
    assert!(!parts.stats.is_empty());
    for ((key, p), (_, w)) in parts.stats.iter().zip(&whole.0.stats) {
        same(&format!("{name} {key}"), &p.all, &w.all);
        same(&format!("{name} {key} (last)"), &p.last, &w.last);
    }
}

fn tokens(vocab: usize) -> Vec<u32> {
    // A fixed pseudo-random walk over the vocabulary.
    let mut x = 0x2545_f491_u64;
    (0..LONG)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

#[test]
fn every_tiny_model_traced_in_parts_gives_the_whole_trace_statistics() {
    let only_probs = TracePlan {
        stages: [Stage::AttnProbs, Stage::AttnContext, Stage::LayerOut, Stage::Logits].into_iter().collect(),
        ..TracePlan::default()
    };
    for arch in include!("../../tiny_archs.rs") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(arch);
        let model = Model::load(&dir.join(format!("{arch}-f32.gguf"))).unwrap();
        let ids = tokens(model.cfg.vocab);
        for precision in [Precision::Exact, Precision::Fast] {
            check(&model, precision, &ids, &TracePlan::default(), true);
            check(&model, precision, &ids, &TracePlan::default(), false);
            // Probabilities without the pre-mask scores: future positions
            // are not scored, and still counted as the zeros they are.
            check(&model, precision, &ids, &only_probs, true);
        }
    }
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "the real model is not in models/ (scripts/fetch-model.sh)")]
fn the_real_model_traced_in_parts_gives_the_whole_trace_statistics() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf");
    let model = Model::load(&path).unwrap();
    let ids = tokens(model.cfg.vocab);
    // Layers 0 and 5 (a window layer and a global one), to keep it quick.
    let plan = TracePlan { layers: Some([0, 5].into_iter().collect()), ..TracePlan::default() };
    for precision in [Precision::Exact, Precision::Fast] {
        check(&model, precision, &ids, &plan, true);
    }
}

/// Saves `rec`'s tensors and reads them back.
fn tensors_of(rec: &mut Recorder) -> std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let trace = plumb_trace::Trace {
        tensors: rec.tensors.drain(..).map(|(k, s, d)| (k, (s, d))).collect(),
        spilled: rec.spill.take().map(std::sync::Arc::new),
        ..Default::default()
    };
    let bytes = trace.to_bytes().unwrap();
    plumb_trace::Trace::from_bytes(std::path::Path::new("parts"), &bytes).unwrap().tensors
}

#[test]
fn tensors_spilled_in_parts_are_the_whole_traces_tensors() {
    use plumb_trace::spill::Spill;
    use plumb_trace::Positions;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny/gemma3");
    let model = Model::load(&dir.join("gemma3-f32.gguf")).unwrap();
    let ids = tokens(model.cfg.vocab);
    let k = kernels_for(Precision::Fast);
    for positions in [Positions::All, Positions::Last] {
        let plan =
            TracePlan { tensors: true, positions, layers: Some([0, 1].into_iter().collect()), ..TracePlan::default() };
        let mut spilled = Recorder::spilling(plan.clone(), Spill::new_in(&std::env::temp_dir()).unwrap());
        assert!(model.in_parts(ids.len(), &spilled));
        let mut whole = Recorder::new(plan);
        assert!(!model.in_parts(ids.len(), &whole));
        for rec in [&mut spilled, &mut whole] {
            let mut cache = KvCache::new(&model.cfg, ids.len());
            model.forward(k.as_ref(), &ids, &mut cache, true, rec);
        }
        assert!(spilled.spill_error.is_none());
        let (a, b) = (tensors_of(&mut spilled), tensors_of(&mut whole));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        assert!(a.contains_key("blk.1.attn_scores") && a.contains_key("logits"));
        for (key, (shape, data)) in &a {
            assert_eq!(shape, &b[key].0, "{positions:?} {key}");
            assert!(data.iter().zip(&b[key].1).all(|(x, y)| x.to_bits() == y.to_bits()), "{positions:?} {key} differs");
        }
    }
}
