//! Traced runs of a model for bisecting: every stage recorded with its
//! tensors, each layer run on a reference's inputs (stage isolation), a
//! probe comparing stage by stage as the pass runs, and the metadata that
//! names the run in its trace file.
//!
//! These are single prefill passes over the prompt; generating tokens is
//! plumb-model's [`plumb_model::generate`].

use std::collections::BTreeMap;
use std::path::Path;

use plumb_diff::noise::Probe;
use plumb_model::generate::Generator;
use plumb_model::kernels::kernels_for;
use plumb_model::{Kernels, KvCache, Precision};
use plumb_trace::{Observer, Positions, Recorder, Trace, TracePlan};

use crate::{file_name, Error, Loaded, Result};

/// Metadata of a plumb trace of `model_path` run at `precision`, with the
/// model file's SHA-256 when the caller computed it.
pub fn trace_meta(
    model_path: &Path,
    loaded: &Loaded,
    precision: Precision,
    kernels: &dyn Kernels,
    prompt: Option<&str>,
    ids: &[u32],
    sha256: Option<String>,
) -> Result<BTreeMap<String, String>> {
    let mut meta = BTreeMap::new();
    let run = loaded.model.cfg.run_settings();
    meta.insert("plumb.engine".into(), format!("plumb {} ({})", env!("CARGO_PKG_VERSION"), settings(precision, run)));
    meta.insert("plumb.model".into(), file_name(model_path));
    if let Some(h) = sha256 {
        meta.insert("plumb.model_sha256".into(), h);
    }
    meta.insert("plumb.arch".into(), loaded.model.cfg.arch.name().into());
    if let Some(p) = prompt {
        meta.insert("plumb.prompt".into(), p.to_string());
    }
    meta.insert("plumb.precision".into(), precision.name().into());
    meta.insert("plumb.kv_type".into(), run.kv_type.name());
    meta.insert("plumb.flash_attn".into(), if run.flash_attn { "on" } else { "off" }.into());
    meta.insert("plumb.repack".into(), if run.repack { "on" } else { "off" }.into());
    meta.insert("plumb.f16_math".into(), run.f16_math.name().into());

    meta.insert("plumb.kernels".into(), kernels.describe());
    let piece = |id: u32| -> String { loaded.tokenizer.as_ref().and_then(|t| t.piece(id)).unwrap_or("").to_string() };
    meta.insert("plumb.token_text".into(), serde_json::to_string(&ids.iter().map(|&i| piece(i)).collect::<Vec<_>>())?);
    note_ubatch(&mut meta, run.ubatch, ids.len());
    Ok(meta)
}

/// Records in `meta` the ubatches a prompt of `tokens` was computed in:
/// `plumb.ubatch` (`all`, or the rows of each forward pass where they cut
/// the prompt) and `…, ubatch N)` at the end of `plumb.engine`.
pub fn note_ubatch(meta: &mut BTreeMap<String, String>, ubatch: Option<usize>, tokens: usize) {
    let cut = ubatch.filter(|&u| u < tokens);
    meta.insert("plumb.ubatch".into(), cut.map_or("all".into(), |u| u.to_string()));
    if let (Some(u), Some(engine)) = (cut, meta.get_mut("plumb.engine")) {
        if let Some(open) = engine.strip_suffix(')') {
            *engine = format!("{open}, ubatch {u})");
        }
    }
}

/// A run's settings as engine names show them: the precision, the KV
/// cache's type where it is not f32, flash attention, repacked weights and
/// native f16 arithmetic where they are on ("fast", "fast, KV f16", "fast,
/// KV f16, flash attention, repacked, f16 arithmetic"). A trace adds its
/// ubatches ([`note_ubatch`]).
pub fn settings(precision: Precision, run: plumb_model::RunSettings) -> String {
    let mut s = precision.name().to_string();
    if run.kv_type != plumb_model::KvTypes::default() {
        s += &format!(", KV {}", run.kv_type.name());
    }
    if run.flash_attn {
        s += ", flash attention";
    }
    if run.repack {
        s += ", repacked";
    }
    if run.f16_math == plumb_model::F16Math::Native {
        s += ", f16 arithmetic";
    }
    s
}

/// Every stage, every layer, the tensors of every position.
pub fn full_plan() -> TracePlan {
    TracePlan { tensors: true, positions: Positions::All, ..TracePlan::default() }
}

/// A trace from a recorder's findings, in key order.
fn into_trace(meta: BTreeMap<String, String>, ids: &[u32], rec: Recorder) -> Trace {
    let mut t = Trace { meta, tokens: ids.to_vec(), stats: rec.stats, tensors: Default::default(), spilled: None };
    t.tensors = rec.tensors.into_iter().map(|(k, s, d)| (k, (s, d))).collect();
    t.sort();
    t
}

/// Runs `loaded` on `ids` with every stage traced.
pub fn traced(path: &Path, loaded: &Loaded, precision: Precision, ids: &[u32], prompt: Option<&str>) -> Result<Trace> {
    let kernels = kernels_for(precision);
    let mut rec = Recorder::new(full_plan());
    Generator::new(&loaded.model, kernels.as_ref(), ids.len()).prefill(ids, true, &mut rec);
    let meta = trace_meta(path, loaded, precision, kernels.as_ref(), prompt, ids, None)?;
    Ok(into_trace(meta, ids, rec))
}

/// Runs each layer of A on B's input to that layer (B's embedding for
/// layer 0, B's previous layer_out after), and the head on B's last output:
/// each layer's error is its own.
pub fn isolated(path: &Path, a: &Loaded, precision: Precision, b: &Trace, prompt: Option<&str>) -> Result<Trace> {
    let m = &a.model;
    let kernels = kernels_for(precision);
    let ids = &b.tokens;
    let t = ids.len();
    if let Some(u) = m.cfg.ubatch.filter(|&u| u < t) {
        return Err(Error::IsolateUbatch { ubatch: u, tokens: t });
    }
    let get = |key: &str| -> Result<Vec<f32>> {
        let (shape, data) = b.tensors.get(key).ok_or_else(|| Error::IsolateMissing { key: key.into() })?;
        if shape != &vec![t, m.cfg.d] {
            return Err(Error::IsolateShape { key: key.into(), shape: shape.clone(), tokens: t, d: m.cfg.d });
        }
        Ok(data.clone())
    };
    let mut rec = Recorder::new(full_plan());
    m.embed(ids, &mut rec);
    let mut cache = KvCache::new(&m.cfg, t);
    for l in 0..m.cfg.n_layer {
        let mut x = if l == 0 { get("embedding")? } else { get(&format!("blk.{}.layer_out", l - 1))? };
        m.layer(kernels.as_ref(), l, &mut x, &mut cache, false, &mut rec);
    }
    let x = get(&format!("blk.{}.layer_out", m.cfg.n_layer - 1))?;
    m.head(kernels.as_ref(), &x, t, true, &mut rec);
    rec.step_done();
    let mut meta = trace_meta(path, a, precision, kernels.as_ref(), prompt, ids, None)?;
    meta.insert("plumb.isolated".into(), "each layer on the reference's input".into());
    Ok(into_trace(meta, ids, rec))
}

/// A saved reference trace: its token ids must fit A's vocabulary (they
/// replace the prompt, which is not re-tokenized).
pub fn reference_trace(path: &Path, a: &Loaded) -> Result<Trace> {
    let t = Trace::load(path)?;
    if t.tokens.is_empty() {
        return Err(Error::ReferenceNoTokens { path: path.into() });
    }
    if let Some(&id) = t.tokens.iter().find(|&&i| i as usize >= a.model.cfg.vocab) {
        return Err(Error::ReferenceToken { path: path.into(), id, vocab: a.model.cfg.vocab });
    }
    Ok(t)
}

/// Runs `m` on `ids` with `probe` observing (and, isolating, feeding).
pub fn probe_run(m: &Loaded, precision: Precision, ids: &[u32], probe: &mut Probe) {
    let kernels = kernels_for(precision);
    Generator::new(&m.model, kernels.as_ref(), ids.len()).prefill(ids, true, probe);
}
