//! Jobs: admission and placement, the per-job task that streams inputs to nodes and merges their
//! answers, re-dispatch of a lost node's inputs, and the live table other requests reach jobs by.
//!
//! Data flow of one job:
//! ```text
//! client body ──pump──▶ input queue ──▶ job task ──▶ node stream bodies (credit-bounded)
//! client response ◀── result queue ◀── job task ◀── node events ◀── relay task per node stream
//! ```

mod admit;
mod dispatch;
mod finish;
pub mod gpu;
mod handle;
pub mod inflight;
mod inputs;
mod keep_inputs;
mod merge;
pub mod node_stream;
pub mod plan;
mod rebalance;
mod resume;
mod run;
mod streams;

pub use admit::submit;
pub use handle::{JobHandle, Jobs};
pub use inputs::{push_inputs, ClientInput};
pub use resume::resume_all;
pub use run::Outcome;
pub use streams::{Loss, StreamState};
