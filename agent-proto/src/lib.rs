//! The wire contract between fleetmap's client, coordinator, node daemon and worker.
//!
//! Two planes, both described in `docs/protocol.md`:
//! - the control plane: serde types carried as JSON ([`job`], [`node`], [`worker`], [`error`]),
//!   and what `func_gpu` means ([`gpu`]: the model-name matching rules daemon and coordinator share);
//! - the data plane: length-prefixed binary frames ([`frame`]) whose bodies carry item batches
//!   ([`batch`]), failures ([`failure`]) and captured output ([`output`]).
//!
//! Payload bytes (pickled functions, inputs, results, exceptions) are opaque here: this crate
//! never interprets them. It does no I/O.

pub mod auth;
pub mod batch;
pub mod env;
pub mod error;
pub mod failure;
pub mod frame;
pub mod gpu;
pub mod job;
pub mod node;
pub mod output;
pub mod recipe_digest;
pub mod worker;

pub use auth::{AuthError, ClusterToken, CLUSTER_TOKEN_ENV};
pub use batch::{BatchError, BatchView, Item, ItemBatch};
pub use env::{EnvCounters, EnvEntryInfo, EnvironmentsInfo};
pub use error::{ApiError, ErrorBody, ErrorCode};
pub use failure::{Failure, FailureInfo, FailureKind};
pub use frame::{Frame, FrameDecoder, FrameError, FrameKind, DEFAULT_MAX_FRAME_BYTES};
pub use gpu::{describe_models, GpuModel, GpuModelError};
pub use job::{ContextFile, EnvSpec, JobEnd, JobProgress, JobSpec, JobState, JobStatus, SpecError};
pub use node::{GpuInfo, HeartbeatAnswer, MigMode, NodeInfo, NodeRegistration, NodeView, PoolInfo};
pub use output::{Output, OutputStream};
pub use worker::{Assignment, WorkerHello, WorkerReady, ZygoteCommand, ZygoteEvent};

/// Version of the wire protocol this crate speaks; carried in `JobSpec` and `WorkerHello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Index meaning "not attributed to any input" (output printed while the function loads,
/// a failure to load the function).
pub const NO_INDEX: u64 = u64::MAX;

/// HTTP content type of frame-stream bodies.
pub const FRAMES_CONTENT_TYPE: &str = "application/vnd.fleetmap.frames";

/// Version of the software, reported by health and node-info routes.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
