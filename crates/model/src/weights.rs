//! The tensors each architecture needs, under their GGUF names, with the
//! shapes the configuration implies; the mapping to HuggingFace names; and
//! the validation that `plumb inspect` reports.

use crate::arch::{EMBEDDING, LAYER_TENSORS, OUTPUT, OUTPUT_NORM};
use crate::config::RopeScaling;
use crate::{Arch, ModelConfig, ModelSource};

/// One tensor the model needs.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    /// Row-major shape ([out, in] for matrices).
    pub shape: Vec<usize>,
}

/// Every tensor the forward pass reads, in load order (from the layer
/// table in crate::arch).
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let spec = |name: String, shape: Vec<usize>| TensorSpec { name, shape };
    let mut v = vec![spec(EMBEDDING.0.into(), vec![cfg.vocab, cfg.d])];
    for l in 0..cfg.n_layer {
        v.extend(LAYER_TENSORS.iter().filter(|t| t.present(cfg)).map(|t| spec(t.gguf_name(l), t.shape(cfg))));
    }
    v.push(spec(OUTPUT_NORM.0.into(), vec![cfg.d]));
    if !cfg.tied_output {
        v.push(spec(OUTPUT.0.into(), vec![cfg.vocab, cfg.d]));
    }
    v
}

/// The HuggingFace name of a GGUF-named tensor (transformers' naming).
pub fn hf_name(arch: Arch, gguf: &str) -> Option<String> {
    arch.spec().hf_name(gguf)
}

/// One finding of [`validate`].
#[derive(Debug, Clone)]
pub enum Problem {
    Missing { name: String, shape: Vec<usize> },
    Shape { name: String, expected: Vec<usize>, actual: Vec<usize> },
    NoDequantizer { name: String, ty: plumb_quant::GgmlType },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing { name, shape } => {
                write!(f, "{name}: missing (expected shape {shape:?})")
            }
            Problem::Shape { name, expected, actual } => {
                write!(f, "{name}: shape {actual:?}, expected {expected:?}")
            }
            Problem::NoDequantizer { name, ty } => {
                write!(f, "{name}: type {ty} cannot be computed with yet")
            }
        }
    }
}

/// Checks that every tensor the architecture needs is present, with the
/// shape the configuration implies and a type plumb can compute with.
pub fn validate(src: &ModelSource, cfg: &ModelConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let experts = cfg.moe.as_ref().map_or(0, |m| m.experts);
    for spec in expected_tensors(cfg) {
        // HF folders keep a stack of experts as one tensor per expert.
        let parts: Vec<(String, Vec<usize>)> = match src {
            ModelSource::Hf(_) if spec.shape.len() == 3 => cfg
                .arch
                .spec()
                .hf_names(&spec.name, experts)
                .into_iter()
                .map(|n| (n, spec.shape[1..].to_vec()))
                .collect(),
            _ => vec![(spec.name.clone(), spec.shape.clone())],
        };
        for (name, shape) in parts {
            let found = match src {
                ModelSource::Hf(h) if name != spec.name => h.tensor(&name),
                _ => src.tensor(cfg.arch, &name),
            };
            match found {
                None => problems.push(Problem::Missing { name, shape }),
                Some(t) if !same_shape(t.shape, &shape) => {
                    problems.push(Problem::Shape { name, expected: shape, actual: t.shape.to_vec() })
                }
                Some(t) if !t.ty.can_dequantize() => problems.push(Problem::NoDequantizer { name, ty: t.ty }),
                Some(_) => {}
            }
        }
    }
    problems
}

/// Shapes equal but for leading 1s: llama.cpp writes the shared expert's
/// gate [1, d] as [d].
fn same_shape(actual: &[usize], expected: &[usize]) -> bool {
    let trim = |s: &[usize]| s.iter().position(|&n| n != 1).map_or(0, |i| i);
    let (a, e) = (&actual[trim(actual)..], &expected[trim(expected)..]);
    a == e
}

/// The metadata keys of a GGUF file that plumb neither reads nor knows to
/// be irrelevant to the numbers ([`crate::config::GGUF_KEYS_IRRELEVANT`]):
/// reported like unread tensors, since a converter that wrote one may have
/// meant something plumb does not do (a sliding window in a llama file, an
/// expert count). HF folders: none (config.json is read by name).
pub fn unused_metadata(src: &ModelSource, cfg: &ModelConfig) -> Vec<String> {
    let ModelSource::Gguf(g) = src else { return Vec::new() };
    let (prefixes, suffixes) = crate::config::GGUF_KEYS_IRRELEVANT;
    let arch = g.arch().unwrap_or(cfg.arch.name());
    let known = |key: &str| {
        if prefixes.iter().any(|p| key.starts_with(p)) {
            return true;
        }
        let Some(rest) = key.strip_prefix(arch).and_then(|r| r.strip_prefix('.')) else { return false };
        let read = crate::config::GGUF_KEYS.iter().chain(cfg.arch.spec().gguf_keys);
        read.chain(suffixes.iter()).any(|k| *k == rest)
    };
    g.metadata().iter().map(|(k, _)| k).filter(|k| !known(k)).cloned().collect()
}

/// The tensors in the file that the forward pass never reads (under the
/// file's own names), besides those [`validate`] refuses: reported, since a
/// converter that wrote them may have meant something plumb does not do.
pub fn unused_tensors(src: &ModelSource, cfg: &ModelConfig) -> Vec<String> {
    let experts = cfg.moe.as_ref().map_or(0, |m| m.experts);
    let read: std::collections::HashSet<String> = expected_tensors(cfg)
        .into_iter()
        .flat_map(|t| match src {
            ModelSource::Gguf(_) => vec![t.name],
            ModelSource::Hf(_) => cfg.arch.spec().hf_names(&t.name, experts),
            // Under either naming.
            ModelSource::Apr(_) => {
                let mut names = cfg.arch.spec().hf_names(&t.name, experts);
                names.push(t.name);
                names
            }
        })
        .collect();
    // Rope factors (llama 3's, longrope's) are read with the configuration.
    let rope = |n: &str| match cfg.rope_scaling {
        RopeScaling::PerPair { .. } => n == crate::config::ROPE_FREQS,
        RopeScaling::LongRope { .. } => crate::config::LONGROPE_FACTORS.contains(&n),
        _ => false,
    };
    src.tensor_names().into_iter().filter(|n| !read.contains(n) && !rope(n)).collect()
}
