//! Fault injection proves the bisect logic: on every tiny architecture, a
//! fault in any stage of any layer is named exactly — that stage, that
//! layer — and nothing earlier is ever named.

use std::path::PathBuf;

use plumb_diff::{diff, Gate};
use plumb_model::fault::Fault;
use plumb_model::kernels::kernels_for;
use plumb_model::{KvCache, Model, Precision};
use plumb_trace::stage::Stage;
use plumb_trace::{Recorder, Trace, TracePlan};

/// Every architecture with a tiny test model.
const ARCHS: [&str; 8] = ["llama", "qwen2", "qwen3", "gemma3", "gemma2", "llama3", "olmo2", "phi3"];

fn model(arch: &str) -> Model {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../testdata/tiny/{arch}/{arch}-f32.gguf"));
    Model::load(&p).unwrap()
}

const TOKENS: [u32; 7] = [1, 17, 255, 3, 400, 511, 42];

fn run(m: &Model) -> Trace {
    let k = kernels_for(Precision::Exact);
    let mut rec = Recorder::new(TracePlan { tensors: true, ..TracePlan::default() });
    let mut cache = KvCache::new(&m.cfg, TOKENS.len());
    m.forward(k.as_ref(), &TOKENS, &mut cache, true, &mut rec);
    let mut t = Trace { tokens: TOKENS.to_vec(), stats: rec.stats, ..Default::default() };
    t.tensors = rec.tensors.into_iter().map(|(k, s, d)| (k, (s, d))).collect();
    t.sort();
    t
}

fn first_named(m: &mut Model, reference: &Trace, spec: &str) -> Option<String> {
    m.fault = Some(Fault::parse(spec, m.cfg.head_dim).unwrap());
    let a = run(m);
    m.fault = None;
    let d = diff(&a, reference, &Gate::default(), 0.01);
    d.first.map(|i| d.stages[i].key.clone())
}

#[test]
fn every_stage_of_every_architecture_is_named_exactly() {
    for arch in ARCHS {
        let mut m = model(arch);
        let reference = run(&m);
        let keys: Vec<String> = reference.stats.iter().map(|(k, _)| k.clone()).collect();
        let mut checked = 0;
        for key in &keys {
            // Layer 1 of 3 and the global stages.
            let target = match key.strip_prefix("blk.") {
                Some(rest) if rest.starts_with("1.") => format!("{}@1", &rest[2..]),
                Some(_) => continue,
                None => key.clone(),
            };
            let got = first_named(&mut m, &reference, &format!("{target}:noise=0.5"));
            assert_eq!(got.as_deref(), Some(key.as_str()), "{arch}: noise in {key} was named as {got:?}");
            checked += 1;
        }
        assert!(checked >= 20, "{arch}: only {checked} stages checked");
    }
}

#[test]
fn every_fault_kind_is_named_exactly() {
    let kinds = ["scale=1.5", "noise=0.3", "zero-head=1", "swap-heads=0,2", "permute-rope", "off-by-one"];
    for arch in ARCHS {
        let mut m = model(arch);
        let reference = run(&m);
        for (stage, layer) in [(Stage::QProj, 2), (Stage::QRope, 0), (Stage::AttnContext, 1), (Stage::FfnMul, 2)] {
            for kind in kinds {
                let spec = format!("{}@{layer}:{kind}", stage.name());
                let got = first_named(&mut m, &reference, &spec);
                assert_eq!(got, Some(stage.key(Some(layer))), "{arch}: {spec}");
            }
        }
    }
}
