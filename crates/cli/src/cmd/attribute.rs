//! `plumb kld --attribute`: where A's divergence from B comes from. Each
//! unit of the forward pass — the embedding, every layer's attention and
//! feed-forward halves, the head — is run alone by A on B's own input to
//! it, inside B's pass ([`plumb_model::hybrid`]); the divergence of that
//! hybrid from B over the corpus is the damage the unit does by itself.
//! Units are ranked by it, and summed by layer and by kind. The units'
//! sum next to the whole divergence says how much is left to units acting
//! together.
//!
//! B runs in exact arithmetic here. In the fast one every matrix product
//! rounds its input to 8 bits first, so any change to one unit's output
//! re-draws the rounding of every product after it, and each unit alone
//! looks about as guilty as all of them together (a Q8_0 copy of Gemma 3
//! 270M against its original, both fast, on 64 tokens: blk.0.ffn alone
//! 0.0100, the whole 0.0087; with B exact the units add up to 103% of the
//! whole).

use indicatif::ProgressBar;
use plumb_model::hybrid::{checkpoints, Checkpoints, Side, Unit};
use plumb_model::{KvCache, Model};
use serde_json::json;

use crate::cmd::kld::{base_row, Kld};
use crate::cmd::ppl::scored_row;

/// The units' divergences so far, and B's checkpoints of the chunk being
/// scored.
pub struct Attribution {
    units: Vec<Unit>,
    scores: Vec<Kld>,
    cache: KvCache,
    cp: Option<Checkpoints>,
}

impl Attribution {
    pub fn new(b: &Model, ctx: usize) -> Attribution {
        let units = Unit::all(b.cfg.n_layer);
        let scores = units.iter().map(|_| Kld::default()).collect();
        Attribution { units, scores, cache: KvCache::new(&b.cfg, ctx), cp: None }
    }

    /// Units in a pass; each hybrid runs from its unit on, so a chunk costs
    /// about this many whole passes besides A's and B's.
    pub fn passes(&self) -> usize {
        self.units.len().div_ceil(2) + 1
    }

    /// B's pass over one chunk (`chunk` as run, `target` as scored), its
    /// base rows written into `rows` (`nv` u16 each), keeping its input to
    /// every unit for [`Attribution::score`].
    pub fn base(&mut self, b: Side, chunk: &[u32], target: &[u32], rows: &mut [u16], nv: usize) {
        self.cache.len = 0;
        self.cp = Some(checkpoints(b, chunk, &mut self.cache, chunk.len() / 2, &mut |i, logits| {
            if let Some((r, next)) = scored_row(target, i) {
                base_row(logits, next as usize, &mut rows[r * nv..(r + 1) * nv]);
            }
        }));
    }

    /// Every unit's hybrid over the chunk [`Attribution::base`] ran (the
    /// corpus's tokens `target`), scored against B's rows.
    pub fn score(&mut self, a: Side, b: Side, target: &[u32], rows: &[u16], nv: usize, progress: Option<&ProgressBar>) {
        let (ctx, n) = (target.len(), self.units.len());
        let cp = self.cp.take().expect("B's checkpoints of this chunk");
        for u in 0..n {
            let from_a: Vec<bool> = (0..n).map(|i| i == u).collect();
            let score = &mut self.scores[u];
            self.cache.len = 0;
            cp.hybrid(a, b, &from_a, &mut self.cache, &mut |i, logits| {
                if let Some((r, next)) = scored_row(target, i) {
                    score.add(logits, &rows[r * nv..(r + 1) * nv], next as usize);
                }
            });
            if let Some(bar) = progress {
                // Each hybrid runs the units from its own on.
                bar.inc(((n - u) * ctx).div_ceil(2) as u64);
            }
        }
    }

    /// The attribution as JSON: every unit in pass order, the sums by
    /// layer and by kind, against `whole`, A's mean divergence from B.
    pub fn doc(&self, whole: f64, tied: bool) -> serde_json::Value {
        let share = |v: f64| if whole > 0.0 { v / whole } else { 0.0 };
        let mut by_layer: Vec<f64> = Vec::new();
        let (mut attn, mut ffn, mut other) = (0f64, 0f64, 0f64);
        let units: Vec<serde_json::Value> = self
            .units
            .iter()
            .zip(&self.scores)
            .map(|(unit, k)| {
                let (mean, err) = k.kld_mean();
                match unit {
                    Unit::Attention(_) => attn += mean,
                    Unit::Ffn(_) => ffn += mean,
                    _ => other += mean,
                }
                if let Some(l) = unit.layer() {
                    by_layer.resize(by_layer.len().max(l + 1), 0.0);
                    by_layer[l] += mean;
                }
                json!({
                    "unit": unit.name(), "kld_mean": mean, "kld_mean_error": err,
                    "share": share(mean), "same_top": k.same_top(),
                })
            })
            .collect();
        let sum = attn + ffn + other;
        let first = |i: usize| units[i]["kld_mean"].as_f64().unwrap_or(0.0);
        json!({
            "method": "each unit of A alone, on B's input to it, inside B's pass; KL(B‖hybrid)",
            "units": units,
            "layers": by_layer.iter().enumerate()
                .map(|(l, &v)| json!({"layer": l, "kld_mean": v, "share": share(v)})).collect::<Vec<_>>(),
            "kinds": {
                "embedding": first(0), "attention": attn, "ffn": ffn, "head": first(self.units.len() - 1),
            },
            "sum": sum, "whole": whole,
            // The head's matrix is the embedding's: one tensor, two units.
            "tied_output": tied,
        })
    }
}

/// Units shown in the ranked table (every one is in the JSON).
const SHOWN: usize = 12;

/// The attribution as text: the ranked units, the layers, the kinds.
pub fn report(d: &serde_json::Value) -> String {
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut units: Vec<&serde_json::Value> = d["units"].as_array().into_iter().flatten().collect();
    units.sort_by(|x, y| f(y, "kld_mean").total_cmp(&f(x, "kld_mean")));
    let mut s = String::from("where the divergence comes from: each unit of A alone, on B's input, in B's pass\n");
    s += "  rank  unit            KLD mean ± error         share   same top\n";
    for (i, u) in units.iter().take(SHOWN).enumerate() {
        s += &format!(
            "  {:>4}  {:<14} {:10.6} ± {:<10.6} {:6.1}%   {:6.2}%\n",
            i + 1,
            u["unit"].as_str().unwrap_or(""),
            f(u, "kld_mean"),
            f(u, "kld_mean_error"),
            100.0 * f(u, "share"),
            100.0 * f(u, "same_top")
        );
    }
    if units.len() > SHOWN {
        s += &format!("  … {} more units in --json\n", units.len() - SHOWN);
    }
    let mut layers: Vec<&serde_json::Value> = d["layers"].as_array().into_iter().flatten().collect();
    layers.sort_by(|x, y| f(y, "kld_mean").total_cmp(&f(x, "kld_mean")));
    s += "  layers (attention + feed-forward):";
    for l in layers.iter().take(6) {
        s += &format!(" blk.{} {:.6} ({:.1}%),", l["layer"], f(l, "kld_mean"), 100.0 * f(l, "share"));
    }
    s.pop();
    s += "\n";
    let k = &d["kinds"];
    s += &format!(
        "  kinds: embedding {:.6}, attention {:.6}, feed-forward {:.6}, head {:.6}\n",
        f(k, "embedding"),
        f(k, "attention"),
        f(k, "ffn"),
        f(k, "head")
    );
    if d["tied_output"] == true {
        s += "  (token_embd and output are one tensor here: the output is tied to the embedding)\n";
    }
    let (sum, whole) = (f(d, "sum"), f(d, "whole"));
    s += &format!(
        "  the units' sum {sum:.6} is {:.1}% of A's whole divergence {whole:.6} (the difference: units acting together)\n",
        if whole > 0.0 { 100.0 * sum / whole } else { f64::NAN }
    );
    s
}
