//! The recorder: the observer a traced forward pass reports to. It filters
//! by the plan, computes statistics, and keeps tensors when asked.

use crate::plan::{Positions, TracePlan};
use crate::stage::{Observer, Stage};
use crate::stats::{last_slice, TensorStats};

pub struct Recorder {
    pub plan: TracePlan,
    /// Key → position in `stats` (and in `tensors` when kept), so a decode
    /// step replaces its earlier entry without a linear search.
    index: std::collections::HashMap<String, usize>,
    /// Stats in the order recorded (execution order), by trace key.
    pub stats: Vec<(String, TensorStats)>,
    /// Kept tensors: key, shape, data.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Recorder {
    pub fn new(plan: TracePlan) -> Recorder {
        Recorder { plan, index: std::collections::HashMap::new(), stats: Vec::new(), tensors: Vec::new() }
    }

    pub fn clear(&mut self) {
        self.index.clear();
        self.stats.clear();
        self.tensors.clear();
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
        let stats = TensorStats::compute(data, shape, axis);
        let kept = self.plan.tensors.then(|| match self.plan.positions {
            Positions::All => (shape.to_vec(), data.to_vec()),
            Positions::Last => {
                let mut s = shape.to_vec();
                if let Some(d) = s.get_mut(axis) {
                    *d = 1;
                }
                (s, last_slice(data, shape, axis).copied().collect())
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
