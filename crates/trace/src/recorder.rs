//! The recorder: the observer a traced forward pass reports to. It filters
//! by the plan, computes statistics, and keeps tensors when asked.

use crate::plan::{Positions, TracePlan};
use crate::spill::Spill;
use crate::stage::{Observer, Rows, Stage};
use crate::stats::{last_slice, Accumulator, TensorStats};

/// A stage recorded in the current step: key, shape, token axis, its stats
/// if already computed, and its data.
type Pending = (String, Vec<usize>, usize, Option<TensorStats>, Vec<f32>);

/// A stage taken in parts in the current step: key, whole shape, token
/// axis, and the statistics gathered so far of all of it and of its last
/// token.
type Parts = (String, Vec<usize>, usize, Accumulator, Accumulator);

/// Stages with at least this many values get their statistics at once.
const DEFER_BELOW: usize = 1 << 16;

pub struct Recorder {
    pub plan: TracePlan,
    /// Key → position in `stats` (and in `tensors` when kept), so a decode
    /// step replaces its earlier entry without a linear search.
    index: std::collections::HashMap<String, usize>,
    /// Stages recorded in the current step: key, shape, token axis, stats
    /// if already computed, and the data (kept for deferred stats or for
    /// saving the tensor).
    pending: Vec<Pending>,
    /// Stages taken in parts in the current step, in the order first seen,
    /// and where each is in that list.
    parts: Vec<Parts>,
    part_index: std::collections::HashMap<String, usize>,
    /// Stats in the order recorded (execution order), by trace key.
    pub stats: Vec<(String, TensorStats)>,
    /// Kept tensors: key, shape, data — in memory, or written to `spill`
    /// as they come where the recorder was made with one.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub spill: Option<Spill>,
    /// The first error writing to `spill` (recording cannot fail; the
    /// command reports it when the pass is over).
    pub spill_error: Option<std::io::Error>,
}

impl Recorder {
    pub fn new(plan: TracePlan) -> Recorder {
        Recorder {
            plan,
            index: std::collections::HashMap::new(),
            pending: Vec::new(),
            parts: Vec::new(),
            part_index: std::collections::HashMap::new(),
            stats: Vec::new(),
            tensors: Vec::new(),
            spill: None,
            spill_error: None,
        }
    }

    /// A recorder that writes the tensors it keeps to `spill` as they are
    /// recorded, instead of holding them.
    pub fn spilling(plan: TracePlan, spill: Spill) -> Recorder {
        Recorder { spill: Some(spill), ..Recorder::new(plan) }
    }

    /// Writes the kept part of a stage (`plan.positions`) to the spill.
    fn spill(&mut self, key: &str, shape: &[usize], axis: usize, data: &[f32]) {
        let Some(spill) = self.spill.as_mut() else { return };
        let done = match self.plan.positions {
            Positions::All => spill.put(key, shape, data),
            Positions::Last => {
                let (s, last) = last_only(shape, axis, data);
                spill.put(key, &s, &last)
            }
        };
        if let Err(e) = done {
            self.spill_error.get_or_insert(e);
        }
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.pending.clear();
        self.parts.clear();
        self.part_index.clear();
        self.stats.clear();
        self.tensors.clear();
    }
}

impl Observer for Recorder {
    fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.plan.wants(layer, stage)
    }

    /// In a decode step the stages are copied and their statistics done all
    /// together in `step_done`, in parallel, rather than one by one between
    /// the forward pass's parallel sections, which left the other cores idle.
    /// Prompt steps compute them at once (large tensors in parallel chunks).
    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        if !self.plan.wants(layer, stage) {
            return;
        }
        let (axis, key) = (stage.token_axis(), stage.key(layer));
        // A one-token step (decoding) defers; a prompt's large tensors do not,
        // so a traced prefill holds no second copy of every stage (and with
        // a spill, not even the first).
        let (stats, kept) = if shape.get(axis) != Some(&1) || data.len() >= DEFER_BELOW {
            let st = TensorStats::compute(data, shape, axis);
            if self.plan.tensors && self.spill.is_some() {
                self.spill(&key, shape, axis, data);
                (Some(st), Vec::new())
            } else {
                (Some(st), if self.plan.tensors { data.to_vec() } else { Vec::new() })
            }
        } else {
            (None, data.to_vec())
        };
        self.pending.push((key, shape.to_vec(), axis, stats, kept));
    }

    /// Statistics need no stage whole, nor does a spill: a recorder that
    /// keeps no tensors, or writes them as they come, takes long prompts
    /// in parts and holds a few sums per stage.
    fn takes_parts(&self) -> bool {
        !self.plan.tensors || self.spill.is_some()
    }

    fn record_part(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize], rows: Rows) {
        if !self.plan.wants(layer, stage) {
            return;
        }
        let axis = stage.token_axis();
        let key = stage.key(layer);
        let i = *self.part_index.entry(key.clone()).or_insert_with(|| {
            let mut whole = shape.to_vec();
            whole[axis] = rows.total;
            self.parts.push((key, whole, axis, Accumulator::default(), Accumulator::default()));
            self.parts.len() - 1
        });
        let (key, _, _, all, last) = &mut self.parts[i];
        all.add_slice(data);
        if rows.ends(shape[axis]) {
            last.add_each(last_slice(data, shape, axis));
        }
        let Some(spill) = self.spill.as_mut().filter(|_| self.plan.tensors) else { return };
        let done = match self.plan.positions {
            Positions::All => spill.put_part(key, shape, axis, rows.from, rows.total, data),
            Positions::Last if rows.ends(shape[axis]) => {
                let (s, d) = last_only(shape, axis, data);
                spill.put(key, &s, &d)
            }
            Positions::Last => Ok(()),
        };
        if let Err(e) = done {
            self.spill_error.get_or_insert(e);
        }
    }

    fn step_done(&mut self) {
        use rayon::prelude::*;
        // Stages taken in parts came before the whole ones of the same step
        // (a step's last rows are the only ones that go on alone).
        self.part_index.clear();
        let mut pending: Vec<Pending> = std::mem::take(&mut self.parts)
            .into_iter()
            .map(|(key, shape, axis, all, last)| {
                let all = all.finish();
                let last = if shape.get(axis) == Some(&1) { all } else { last.finish() };
                (key, shape.clone(), axis, Some(TensorStats { shape, all, last }), Vec::new())
            })
            .collect();
        pending.append(&mut self.pending);
        let computed: Vec<TensorStats> = pending
            .par_iter()
            .map(|(_, shape, axis, done, data)| {
                done.clone().unwrap_or_else(|| TensorStats::compute(data, shape, *axis))
            })
            .collect();
        for ((key, shape, axis, _, data), stats) in pending.into_iter().zip(computed) {
            if self.plan.tensors && self.spill.is_some() && !data.is_empty() {
                // Deferred (a decoding step's), not spilled yet.
                self.spill(&key, &shape, axis, &data);
            }
            let kept = (self.plan.tensors && self.spill.is_none()).then(|| match self.plan.positions {
                Positions::All => (shape.clone(), data),
                Positions::Last => last_only(&shape, axis, &data),
            });
            match self.index.get(&key) {
                Some(&i) => {
                    self.stats[i].1 = stats;
                    if let Some((s, d)) = kept {
                        self.tensors[i] = (key, s, d);
                    }
                }
                None => {
                    self.index.insert(key.clone(), self.stats.len());
                    self.stats.push((key.clone(), stats));
                    if let Some((s, d)) = kept {
                        self.tensors.push((key, s, d));
                    }
                }
            }
        }
    }
}

/// The last token's slice of a stage, with its shape (1 on the token axis).
fn last_only(shape: &[usize], axis: usize, data: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let mut s = shape.to_vec();
    if let Some(d) = s.get_mut(axis) {
        *d = 1;
    }
    (s, last_slice(data, shape, axis).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Trace;

    /// Records a prompt step (large and small stages) and a decoding step.
    fn feed(rec: &mut Recorder) {
        let big: Vec<f32> = (0..3 * 40_000).map(|i| (i as f32 * 0.37).sin()).collect();
        let small: Vec<f32> = (0..3 * 8).map(|i| i as f32 - 5.0).collect();
        rec.record(Some(0), Stage::FfnGate, &big, &[3, 40_000]);
        rec.record(Some(0), Stage::AttnNorm, &small, &[3, 8]);
        rec.record(None, Stage::Logits, &small, &[3, 8]);
        rec.step_done();
        rec.record(Some(0), Stage::AttnNorm, &small[..8], &[1, 8]);
        rec.step_done();
    }

    fn saved(rec: &mut Recorder) -> Vec<u8> {
        let trace = Trace {
            tokens: vec![1, 2, 3],
            stats: std::mem::take(&mut rec.stats),
            tensors: rec.tensors.drain(..).map(|(k, s, d)| (k, (s, d))).collect(),
            spilled: rec.spill.take().map(std::sync::Arc::new),
            ..Trace::default()
        };
        let path = std::env::temp_dir().join(format!("plumb-spill-{}-{:p}.safetensors", std::process::id(), rec));
        trace.save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(bytes, trace.to_bytes().unwrap());
        bytes
    }

    #[test]
    fn tensors_spilled_as_they_come_save_the_same_file_as_tensors_held() {
        for positions in [Positions::All, Positions::Last] {
            let plan = TracePlan { tensors: true, positions, ..TracePlan::default() };
            let mut held = Recorder::new(plan.clone());
            feed(&mut held);
            assert_eq!(held.tensors.len(), 3);
            let mut spilled = Recorder::spilling(plan, Spill::new_in(&std::env::temp_dir()).unwrap());
            feed(&mut spilled);
            assert!(spilled.tensors.is_empty() && spilled.spill_error.is_none());
            assert_eq!(spilled.spill.as_ref().map(|s| s.len()), Some(3));
            let (a, b) = (saved(&mut held), saved(&mut spilled));
            assert!(a == b, "{positions:?}: the files differ");
            let back = Trace::from_bytes(std::path::Path::new("t"), &b).unwrap();
            // The decoding step's one-token norm replaced the prompt's.
            assert_eq!(back.tensors["blk.0.attn_norm"].0, vec![1, 8]);
            let gate_rows = if positions == Positions::All { 3 } else { 1 };
            assert_eq!(back.tensors["blk.0.ffn_gate"].0, vec![gate_rows, 40_000]);
        }
    }
}
