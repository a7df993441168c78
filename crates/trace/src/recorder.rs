//! The recorder: the observer a traced forward pass reports to. It filters
//! by the plan, computes statistics, and keeps tensors when asked.

use crate::plan::{Positions, TracePlan};
use crate::stage::{Observer, Stage};
use crate::stats::{last_slice, TensorStats};

pub struct Recorder {
    pub plan: TracePlan,
    /// Stats in the order recorded (execution order), by trace key.
    pub stats: Vec<(String, TensorStats)>,
    /// Kept tensors: key, shape, data.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Recorder {
    pub fn new(plan: TracePlan) -> Recorder {
        Recorder { plan, stats: Vec::new(), tensors: Vec::new() }
    }

    pub fn clear(&mut self) {
        self.stats.clear();
        self.tensors.clear();
    }
}

fn upsert<T>(v: &mut Vec<(String, T)>, key: String, value: T) {
    match v.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => v.push((key, value)),
    }
}

impl Observer for Recorder {
    fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.plan.wants(layer, stage)
    }

    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        if !self.plan.wants(layer, stage) {
            return;
        }
        let key = stage.key(layer);
        let axis = stage.token_axis();
        upsert(&mut self.stats, key.clone(), TensorStats::compute(data, shape, axis));
        if self.plan.tensors {
            let (shape, data) = match self.plan.positions {
                Positions::All => (shape.to_vec(), data.to_vec()),
                Positions::Last => {
                    let mut s = shape.to_vec();
                    if let Some(d) = s.get_mut(axis) {
                        *d = 1;
                    }
                    (s, last_slice(data, shape, axis).copied().collect())
                }
            };
            match self.tensors.iter_mut().find(|(k, _, _)| *k == key) {
                Some(slot) => *slot = (key, shape, data),
                None => self.tensors.push((key, shape, data)),
            }
        }
    }
}
