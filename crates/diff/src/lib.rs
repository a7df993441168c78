//! Comparing two traces: alignment by stage name in execution order,
//! element-wise metrics (or statistics where tensors are absent), the first
//! stage over its bound, local error growth that tells an error introduced
//! at a stage from one inherited, logit agreement, and the reports; and
//! the noise-aware judgement of two sides that differ by design ([`noise`]).
//!
//! This crate reads traces only; it never sees the engine.

pub mod compare;
pub mod gate;
pub mod html;
pub mod noise;
pub mod report;

pub use compare::{diff, Diff, StageDiff};
pub use gate::Gate;
