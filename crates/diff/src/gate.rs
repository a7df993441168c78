//! Thresholds: when is a stage's difference a divergence? A default NMSE
//! bound (sensible for f32 against f32), overridable by `--tol` or by a TOML
//! gate file with bands per stage and layer:
//!
//! ```toml
//! nmse = 1e-5            # default bound on MSE / Var(reference)
//! stats = 1e-3           # bound for stats-only comparisons
//! [[band]]
//! stages = "ffn_*"       # globs, comma-separated
//! layers = "10-17"       # optional
//! nmse = 1e-3
//! cosine = 0.999         # optional lower bound on cosine
//! ```
//! Later bands override earlier ones.

use std::collections::BTreeSet;

use plumb_trace::plan::{glob_match, parse_layers};
use plumb_trace::stage::parse_key;
use serde::Deserialize;

/// Default NMSE bound: two f32 engines agree to ~1e-10 on healthy stages;
/// 1e-5 (cosine ≈ 0.999995) leaves room for accumulation-order noise and
/// still catches a wrong rope, norm or weight.
pub const DEFAULT_NMSE: f64 = 1e-5;
/// Default bound on the relative stats difference when only stats exist.
pub const DEFAULT_STATS: f64 = 1e-3;

#[derive(Debug, Clone, Deserialize)]
struct BandFile {
    stages: String,
    layers: Option<String>,
    nmse: Option<f64>,
    cosine: Option<f64>,
    stats: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateFile {
    nmse: Option<f64>,
    cosine: Option<f64>,
    stats: Option<f64>,
    #[serde(default)]
    band: Vec<BandFile>,
}

#[derive(Debug, Clone)]
struct Band {
    stages: Vec<String>,
    layers: Option<BTreeSet<usize>>,
    nmse: Option<f64>,
    cosine: Option<f64>,
    stats: Option<f64>,
}

/// The bounds that apply to one stage.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bounds {
    pub nmse: f64,
    pub cosine: Option<f64>,
    pub stats: f64,
}

#[derive(Debug, Clone)]
pub struct Gate {
    default: Bounds,
    bands: Vec<Band>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate { default: Bounds { nmse: DEFAULT_NMSE, cosine: None, stats: DEFAULT_STATS }, bands: Vec::new() }
    }
}

impl Gate {
    /// A gate with one NMSE bound for every stage.
    pub fn with_tol(nmse: f64) -> Gate {
        let mut g = Gate::default();
        g.default.nmse = nmse;
        g
    }

    pub fn parse_toml(text: &str) -> Result<Gate, String> {
        let f: GateFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut g = Gate::default();
        if let Some(n) = f.nmse {
            g.default.nmse = n;
        }
        g.default.cosine = f.cosine;
        if let Some(s) = f.stats {
            g.default.stats = s;
        }
        for b in f.band {
            let layers = b.layers.as_deref().map(parse_layers).transpose().map_err(|e| e.to_string())?;
            g.bands.push(Band {
                stages: b.stages.split(',').map(|s| s.trim().to_string()).collect(),
                layers,
                nmse: b.nmse,
                cosine: b.cosine,
                stats: b.stats,
            });
        }
        Ok(g)
    }

    pub fn bounds(&self, key: &str) -> Bounds {
        let (name, layer) = match parse_key(key) {
            Some((s, l)) => (s.name().to_string(), l),
            None => (key.to_string(), None),
        };
        let mut b = self.default;
        for band in &self.bands {
            let stage_ok = band.stages.iter().any(|p| glob_match(p, &name));
            let layer_ok = match (&band.layers, layer) {
                (None, _) => true,
                (Some(set), Some(l)) => set.contains(&l),
                (Some(_), None) => false,
            };
            if stage_ok && layer_ok {
                if let Some(n) = band.nmse {
                    b.nmse = n;
                }
                if band.cosine.is_some() {
                    b.cosine = band.cosine;
                }
                if let Some(s) = band.stats {
                    b.stats = s;
                }
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_override_by_stage_and_layer() {
        let g = Gate::parse_toml(
            "nmse = 1e-6\n[[band]]\nstages = \"ffn_*\"\nlayers = \"2-3\"\nnmse = 1e-2\ncosine = 0.99\n",
        )
        .unwrap();
        assert_eq!(g.bounds("blk.2.ffn_gate").nmse, 1e-2);
        assert_eq!(g.bounds("blk.2.ffn_gate").cosine, Some(0.99));
        assert_eq!(g.bounds("blk.4.ffn_gate").nmse, 1e-6);
        assert_eq!(g.bounds("blk.2.attn_out").nmse, 1e-6);
        assert_eq!(g.bounds("logits").nmse, 1e-6);
        assert!(Gate::parse_toml("nmse = \"x\"").is_err());
        assert!(Gate::parse_toml("unknown = 1").is_err());
    }
}
