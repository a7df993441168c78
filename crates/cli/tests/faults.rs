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

mod common;
use common::TINY_ARCHS as ARCHS;

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
        // The FFN's inner product: act(gate) · up, or a mixture's sum.
        let ffn = if m.cfg.moe.is_some() { Stage::FfnMoeOut } else { Stage::FfnMul };
        for (stage, layer) in [(Stage::QProj, 2), (Stage::QRope, 0), (Stage::AttnContext, 1), (ffn, 2)] {
            for kind in kinds {
                let spec = format!("{}@{layer}:{kind}", stage.name());
                let got = first_named(&mut m, &reference, &spec);
                assert_eq!(got, Some(stage.key(Some(layer))), "{arch}: {spec}");
            }
        }
    }
}

/// A router pushed towards another expert for one token is named where it
/// was pushed, and the diff names the token it sent elsewhere: that layer,
/// that token, the expert it took instead; no layer before it parts.
#[test]
fn a_router_perturbation_is_named_as_a_router_flip_at_its_layer_and_token() {
    for arch in ["mixtral", "qwen2moe", "qwen3moe"] {
        let mut m = model(arch);
        let reference = run(&m);
        let key = Stage::FfnExperts.key(Some(1));
        let (shape, ids) = &reference.tensors[&key];
        let (k, e) = (shape[1], m.cfg.moe.as_ref().unwrap().experts);
        // Token 4's least likely expert at layer 1, made the most likely.
        let token = 4;
        let chosen = &ids[token * k..(token + 1) * k];
        let outsider = (0..e).rev().find(|i| !chosen.contains(&(*i as f32))).unwrap();
        m.fault = Some(Fault::parse(&format!("ffn_router@1:bump={token},{outsider},30"), m.cfg.head_dim).unwrap());
        let a = run(&m);
        let d = diff(&a, &reference, &Gate::default(), 0.01);
        let first = d.first.map(|i| d.stages[i].key.as_str());
        assert_eq!(first, Some("blk.1.ffn_router"), "{arch}");
        assert!(d.routers.iter().filter(|r| r.layer == 0).all(|r| r.flips.is_empty()), "{arch}: {:?}", d.routers);
        let at1 = d.routers.iter().find(|r| r.layer == 1).expect("layer 1's router is compared");
        let flip = at1.flips.iter().find(|f| f.token == token).unwrap_or_else(|| panic!("{arch}: {:?}", at1.flips));
        assert_eq!(flip.experts_a[0], outsider as f32, "{arch}: the pushed expert comes first");
        assert!(!flip.experts_b.contains(&(outsider as f32)) && !flip.near_tie, "{arch}: {flip:?}");
        // Only that token's selection moved at the pushed layer.
        assert_eq!(at1.flips.len(), 1, "{arch}: {:?}", at1.flips);
        let experts = d.stages.iter().find(|s| s.key == key).unwrap();
        assert!(experts.over && experts.origin == plumb_diff::compare::Origin::Inherited, "{arch}: {experts:?}");
        let text = plumb_diff::report::verdict(&d, plumb_diff::report::Paint(false));
        assert!(text.contains(&format!("blk.1 token {token}: experts A [{outsider}, ")), "{arch}: {text}");
    }
}

/// The noise-aware verdict (bisect's default) reports the routers end to
/// end: the pushed router is the anomaly, and the token it sent elsewhere is
/// listed with the reference's margin; fast against exact, nothing parts but
/// near ties.
#[test]
fn bisect_reports_router_agreement_end_to_end() {
    let m = common::root().join("testdata/tiny/qwen3moe/qwen3moe-q8_0.gguf");
    let m = m.to_str().unwrap();
    let tokens = "1,17,255,3,400,511,42,7,99,128,300,5";
    let (code, out, err) =
        common::plumb(&["bisect", m, m, "--tokens", tokens, "--inject", "ffn_router@1:bump=4,2,3", "--color", "never"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("ANOMALY at blk.1.ffn_router"), "{out}");
    assert!(out.contains("routers: same experts for 35/36 token-layers over 3 layers"), "{out}");
    assert!(out.contains("blk.1 token 4: experts A [2, 1, 7] vs B [1, 7, 6]"), "{out}");
    let (code, out, err) =
        common::plumb(&["bisect", m, "--tokens", tokens, "--a-precision", "fast", "--color", "never", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let routers = v["routers"].as_array().unwrap();
    assert_eq!(routers.len(), 3);
    // In llama.cpp's default configuration (f16 cache, flash attention) a
    // router may pick otherwise where its scores all but tie, and only there.
    let flips: Vec<&serde_json::Value> = routers.iter().flat_map(|r| r["flips"].as_array().unwrap()).collect();
    assert!(flips.iter().all(|f| f["near_tie"] == true), "{v}");
    assert!(routers.iter().all(|r| r["tokens"].as_u64().unwrap() - r["agree"].as_u64().unwrap() <= 1), "{v}");
    // And the reference configuration's cache and attention leave no flip.
    let (code, out, err) = common::plumb(
        &[
            &["bisect", m, "--tokens", tokens, "--a-precision", "fast", "--color", "never", "--json"][..],
            &["--a-kv-type", "f32", "--a-flash-attn", "off", "--a-repack", "off"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let routers = v["routers"].as_array().unwrap();
    assert!(routers.iter().all(|r| r["agree"] == r["tokens"] && r["flips"].as_array().unwrap().is_empty()), "{v}");
}
