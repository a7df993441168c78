//! A prompt computed in parts (llama.cpp's ubatches) seen as one step: the
//! observer of the whole prompt receives each stage once, over every
//! position, as if the prompt had been one forward pass.
//!
//! Each part is a forward pass of its own over rows `from..from + n` of the
//! prompt. [`Ubatched`] stands between those passes and the observer:
//! - an observer that takes stages in row blocks
//!   ([`Observer::takes_parts`]: a statistics-only recorder, or one that
//!   spills its tensors) gets each part's rows at their place in the
//!   whole;
//! - any other gets each stage whole, gathered from the parts, when the last
//!   part is done.
//!
//! Substitution (stage isolation) hands the observer a whole-sized buffer
//! and copies this part's rows of it back: the observer overwrites a stage
//! with the reference's, whose rows are the same wherever they were
//! computed.
//!
//! attn_scores and attn_probs are not taken: a part attends to the cells
//! the earlier parts filled and its own, so its key axis is not the whole
//! prompt's and the parts do not make the whole's [H, T, Tkv].

use std::collections::HashMap;

use crate::stage::{Observer, Rows, Stage};

/// A stage gathered from the parts: layer, stage, whole shape, data.
type Gathered = (Option<usize>, Stage, Vec<usize>, Vec<f32>);

pub struct Ubatched<'a> {
    inner: &'a mut dyn Observer,
    /// Rows of the whole prompt.
    total: usize,
    /// This part: its first row and its number of rows.
    from: usize,
    rows: usize,
    last: bool,
    gathered: Vec<Gathered>,
    index: HashMap<(Option<usize>, Stage), usize>,
}

impl<'a> Ubatched<'a> {
    /// An adapter for a prompt of `total` rows, reporting to `inner`.
    pub fn new(inner: &'a mut dyn Observer, total: usize) -> Ubatched<'a> {
        Ubatched { inner, total, from: 0, rows: 0, last: false, gathered: Vec::new(), index: HashMap::new() }
    }

    /// The next part: `rows` rows from row `from`; `last` for the last.
    pub fn part(&mut self, from: usize, rows: usize, last: bool) {
        assert!(from + rows <= self.total, "a part past the prompt's end");
        (self.from, self.rows, self.last) = (from, rows, last);
    }

    fn taken(stage: Stage) -> bool {
        !matches!(stage, Stage::AttnScores | Stage::AttnProbs)
    }

    /// The whole's shape for a part's `shape` (its token axis the whole
    /// prompt), if the part holds this part's rows.
    fn whole_shape(&self, stage: Stage, shape: &[usize]) -> Option<Vec<usize>> {
        let axis = stage.token_axis();
        (shape.get(axis) == Some(&self.rows)).then(|| {
            let mut whole = shape.to_vec();
            whole[axis] = self.total;
            whole
        })
    }
}

/// Copies a part's rows (`shape`, token axis `axis`) into or out of the
/// whole (token axis of `total` rows), at row `from`.
fn rows_between(
    whole: &mut [f32],
    part: &mut [f32],
    shape: &[usize],
    axis: usize,
    from: usize,
    total: usize,
    into: bool,
) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let n = shape[axis] * inner;
    for o in 0..outer {
        let w = &mut whole[(o * total + from) * inner..][..n];
        let p = &mut part[o * n..][..n];
        if into {
            w.copy_from_slice(p);
        } else {
            p.copy_from_slice(w);
        }
    }
}

impl Observer for Ubatched<'_> {
    fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        Self::taken(stage) && self.inner.wants(layer, stage)
    }

    fn record(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
        if !Self::taken(stage) {
            return;
        }
        let Some(whole) = self.whole_shape(stage, shape) else { return };
        if self.inner.takes_parts() {
            let rows = Rows { from: self.from, total: self.total };
            return self.inner.record_part(layer, stage, data, shape, rows);
        }
        let i = *self.index.entry((layer, stage)).or_insert_with(|| {
            let n = whole.iter().product();
            self.gathered.push((layer, stage, whole, vec![0.0; n]));
            self.gathered.len() - 1
        });
        let mut part = data.to_vec();
        let (from, total) = (self.from, self.total);
        rows_between(&mut self.gathered[i].3, &mut part, shape, stage.token_axis(), from, total, true);
    }

    fn step_done(&mut self) {
        if !self.last {
            return;
        }
        for (layer, stage, shape, data) in std::mem::take(&mut self.gathered) {
            self.inner.record(layer, stage, &data, &shape);
        }
        self.index.clear();
        self.inner.step_done();
    }

    fn substitute(&mut self, layer: Option<usize>, stage: Stage, data: &mut [f32], shape: &[usize]) {
        if !Self::taken(stage) || !self.inner.substitutes() {
            return;
        }
        let Some(whole) = self.whole_shape(stage, shape) else { return };
        // The part in place, so that what the observer leaves is kept.
        let mut buf = vec![0f32; whole.iter().product()];
        let (axis, from, total) = (stage.token_axis(), self.from, self.total);
        rows_between(&mut buf, data, shape, axis, from, total, true);
        self.inner.substitute(layer, stage, &mut buf, &whole);
        rows_between(&mut buf, data, shape, axis, from, total, false);
    }

    fn substitutes(&self) -> bool {
        self.inner.substitutes()
    }

    fn takes_parts(&self) -> bool {
        self.inner.takes_parts()
    }

    fn record_part(&mut self, layer: Option<usize>, stage: Stage, data: &[f32], shape: &[usize], rows: Rows) {
        if Self::taken(stage) {
            let rows = Rows { from: self.from + rows.from, total: self.total };
            self.inner.record_part(layer, stage, data, shape, rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps whatever it is given, whole or in parts, and substitutes a
    /// stage with its row numbers.
    #[derive(Default)]
    struct Keep {
        parts: bool,
        whole: Vec<(Stage, Vec<usize>, Vec<f32>)>,
        blocks: Vec<(Stage, Vec<usize>, Rows)>,
        steps: usize,
    }

    impl Observer for Keep {
        fn wants(&self, _: Option<usize>, _: Stage) -> bool {
            true
        }
        fn record(&mut self, _: Option<usize>, stage: Stage, data: &[f32], shape: &[usize]) {
            self.whole.push((stage, shape.to_vec(), data.to_vec()));
        }
        fn step_done(&mut self) {
            self.steps += 1;
        }
        fn substitute(&mut self, _: Option<usize>, _: Stage, data: &mut [f32], shape: &[usize]) {
            let d = shape[1];
            for (i, v) in data.iter_mut().enumerate() {
                *v = (i / d) as f32 * 100.0;
            }
        }
        fn substitutes(&self) -> bool {
            true
        }
        fn takes_parts(&self) -> bool {
            self.parts
        }
        fn record_part(&mut self, _: Option<usize>, stage: Stage, _: &[f32], shape: &[usize], rows: Rows) {
            self.blocks.push((stage, shape.to_vec(), rows));
        }
    }

    /// Rows of `d` values, row r holding r·10 + column.
    fn rows(from: usize, n: usize, d: usize) -> Vec<f32> {
        (from..from + n).flat_map(|r| (0..d).map(move |c| (r * 10 + c) as f32)).collect()
    }

    #[test]
    fn parts_are_gathered_into_the_whole_stage_once() {
        let mut keep = Keep::default();
        let mut u = Ubatched::new(&mut keep, 7);
        for (from, n) in [(0, 3), (3, 3), (6, 1)] {
            u.part(from, n, from + n == 7);
            u.record(Some(0), Stage::QProj, &rows(from, n, 2), &[n, 2]);
            u.record(Some(0), Stage::AttnScores, &[0.0; 4], &[1, n, 4]);
            u.step_done();
        }
        assert_eq!(keep.steps, 1, "one step for the whole prompt");
        assert_eq!(keep.whole.len(), 1, "attn_scores is not taken: {:?}", keep.whole);
        let (stage, shape, data) = &keep.whole[0];
        assert_eq!((*stage, shape.as_slice()), (Stage::QProj, &[7, 2][..]));
        assert_eq!(data, &rows(0, 7, 2));
    }

    #[test]
    fn an_observer_of_row_blocks_gets_each_parts_rows_in_place() {
        let mut keep = Keep { parts: true, ..Keep::default() };
        let mut u = Ubatched::new(&mut keep, 7);
        u.part(3, 4, true);
        u.record(Some(1), Stage::FfnDown, &rows(3, 4, 2), &[4, 2]);
        u.record_part(Some(1), Stage::FfnUp, &rows(5, 2, 2), &[2, 2], Rows { from: 2, total: 4 });
        u.step_done();
        assert_eq!(keep.blocks.len(), 2);
        assert_eq!(keep.blocks[0].2, Rows { from: 3, total: 7 });
        assert_eq!(keep.blocks[1].2, Rows { from: 5, total: 7 });
        assert_eq!(keep.steps, 1);
    }

    #[test]
    fn substitution_hands_back_this_parts_rows_of_the_whole() {
        let mut keep = Keep::default();
        let mut u = Ubatched::new(&mut keep, 5);
        u.part(2, 3, true);
        let mut data = vec![-1.0; 6];
        u.substitute(Some(0), Stage::VProj, &mut data, &[3, 2]);
        assert_eq!(data, vec![200.0, 200.0, 300.0, 300.0, 400.0, 400.0]);
    }

    #[test]
    fn rows_move_between_part_and_whole_on_any_token_axis() {
        // [H = 2, T = 3, D = 1], the part rows 1..3.
        let mut whole = vec![0.0; 6];
        let mut part = vec![1.0, 2.0, 11.0, 12.0];
        rows_between(&mut whole, &mut part, &[2, 2, 1], 1, 1, 3, true);
        assert_eq!(whole, vec![0.0, 1.0, 2.0, 0.0, 11.0, 12.0]);
        let mut back = vec![0.0; 4];
        rows_between(&mut whole, &mut back, &[2, 2, 1], 1, 1, 3, false);
        assert_eq!(back, part);
    }
}
