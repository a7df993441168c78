//! Tracing only observes, and threads do not change numbers: logits are
//! bit-identical with tracing off, stats-only and full tensors, and for one
//! thread or two.

use std::path::PathBuf;

use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Model, NoTrace, Precision};
use plumb_trace::{Recorder, TracePlan};

fn real_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/gemma-3-270m-q4_k_m.gguf")
}

/// CI runs the real-model tests rather than ignoring them: without the
/// model there, this fails loudly.
#[cfg(not(has_real_model))]
#[test]
fn ci_has_the_real_model() {
    assert!(std::env::var("CI").is_err(), "CI must fetch the real model first (scripts/fetch-model.sh)");
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn tracing_and_threads_never_change_a_number() {
    let p = real_model();
    let model = Model::load(&p).unwrap();
    // Both precisions; a 6-token prompt and a 21-token one (the fast
    // precision's tiled kernels take 8 tokens and more, in tiles of 4 and 8
    // with a short last tile), then one decode step.
    let long: Vec<u32> = (0..21u32).map(|i| 2 + i * 977 % 30000).collect();
    for precision in [Precision::Exact, Precision::Fast] {
        for prompt in [&[2u32, 818, 5279, 529, 7001, 563][..], &long[..]] {
            check(&model, precision, prompt);
        }
    }
}

fn check(model: &Model, precision: Precision, prompt: &[u32]) {
    let k = kernels_for(precision);
    let what = format!("{precision:?}, {} tokens", prompt.len());
    let run = |obs: &mut dyn plumb_model::Observer| {
        let mut cache = KvCache::new(&model.cfg, prompt.len() + 1);
        let mut l = model.forward(k.as_ref(), prompt, &mut cache, true, obs);
        // One decode step too.
        l.extend(model.forward(k.as_ref(), &[506], &mut cache, true, obs));
        l
    };
    let plain = run(&mut NoTrace);
    let mut stats_only = Recorder::new(TracePlan::default());
    let with_stats = run(&mut stats_only);
    let mut full = Recorder::new(TracePlan { tensors: true, ..TracePlan::default() });
    let with_tensors = run(&mut full);
    assert_eq!(bits(&plain), bits(&with_stats), "{what}");
    assert_eq!(bits(&plain), bits(&with_tensors), "{what}");
    assert!(!full.tensors.is_empty() && !stats_only.stats.is_empty());
    // The decode step recorded T = 1 tensors.
    let (_, shape, _) = full.tensors.iter().find(|(k, _, _)| k == "blk.0.attn_norm").unwrap();
    assert_eq!(shape, &vec![1, 640]);
    let (_, shape, _) = full.tensors.iter().find(|(k, _, _)| k == "blk.0.attn_scores").unwrap();
    assert_eq!(shape, &vec![4, 1, prompt.len() + 1]);

    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(|| run(&mut NoTrace));
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| run(&mut NoTrace));
    let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap().install(|| run(&mut NoTrace));
    assert_eq!(bits(&one), bits(&plain), "{what}");
    assert_eq!(bits(&one), bits(&two), "{what}");
    assert_eq!(bits(&one), bits(&three), "{what}");
}
