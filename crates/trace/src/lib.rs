//! Tracing: the named stages of a forward pass, the plan of what to record,
//! statistics, the recorder, judging a trace on its own that a traced forward pass reports to, and trace
//! files (format 1, docs/TRACE_FORMAT.md).
//!
//! This crate knows nothing of models or kernels: the engine depends on it
//! for [`stage::Observer`], and diff tools read [`file::Trace`] without ever
//! seeing the engine.

pub mod aprt;
pub mod file;
pub mod judge;
pub mod paint;
pub mod plan;
pub mod recorder;
pub mod spill;
pub mod stage;
pub mod stats;
pub mod ubatch;

pub use file::{Trace, TraceError};
pub use plan::{Positions, TracePlan};
pub use recorder::Recorder;
pub use stage::{NoTrace, Observer, Rows, Stage};
pub use stats::{Stats, TensorStats};
pub use ubatch::Ubatched;
