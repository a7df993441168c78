//! The recorder: the observer a traced forward pass reports to. It filters
//! by the plan, computes statistics, and keeps tensors when asked.

use crate::plan::{Positions, TracePlan};
use crate::stage::{Observer, Stage};
use crate::stats::{last_slice, TensorStats};

/// A stage recorded in the current step: key, shape, token axis, its stats
/// if already computed, and its data.
type Pending = (String, Vec<usize>, usize, Option<TensorStats>, Vec<f32>);

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
    /// Stats in the order recorded (execution order), by trace key.
    pub stats: Vec<(String, TensorStats)>,
    /// Kept tensors: key, shape, data.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Recorder {
    pub fn new(plan: TracePlan) -> Recorder {
        Recorder {
            plan,
            index: std::collections::HashMap::new(),
            pending: Vec::new(),
            stats: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.pending.clear();
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
        let axis = stage.token_axis();
        // A one-token step (decoding) defers; a prompt's large tensors do not,
        // so a traced prefill holds no second copy of every stage.
        let (stats, kept) = if shape.get(axis) != Some(&1) || data.len() >= DEFER_BELOW {
            let st = TensorStats::compute(data, shape, axis);
            (Some(st), if self.plan.tensors { data.to_vec() } else { Vec::new() })
        } else {
            (None, data.to_vec())
        };
        self.pending.push((stage.key(layer), shape.to_vec(), axis, stats, kept));
    }

    fn step_done(&mut self) {
        use rayon::prelude::*;
        let pending = std::mem::take(&mut self.pending);
        let computed: Vec<TensorStats> = pending
            .par_iter()
            .map(|(_, shape, axis, done, data)| {
                done.clone().unwrap_or_else(|| TensorStats::compute(data, shape, *axis))
            })
            .collect();
        for ((key, shape, axis, _, data), stats) in pending.into_iter().zip(computed) {
            let kept = self.plan.tensors.then(|| match self.plan.positions {
                Positions::All => (shape.clone(), data),
                Positions::Last => {
                    let mut s = shape.clone();
                    if let Some(d) = s.get_mut(axis) {
                        *d = 1;
                    }
                    let last = last_slice(&data, &shape, axis).copied().collect();
                    (s, last)
                }
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
