//! `fleetmapd`, the fleetmap node daemon, as a library: [`run`] serves the HTTP API of
//! `docs/protocol.md` §3 on a listener until a shutdown future resolves.
//!
//! - [`api`]: routes parsed into typed requests, one error-to-status mapping, frame bodies;
//! - [`job`]: per-job input queues, chunking, instances, failure classification, result streams;
//! - [`runtime`]: the narrow `Runtime` trait instances run on, its `process` implementation
//!   (a zygote forking warm Python workers into per-slot cgroups) and its `docker` one (warm
//!   worker containers);
//! - [`env`]: the environment cache (images and venvs by content hash, single-flight builds);
//! - [`capacity`]: CPU/RAM/GPU slots from the sandbox crate's allocator;
//! - [`gpus`]: the GPU inventory (NVML, or a test-only list) read into the allocator;
//! - [`coordinator`]: registration and heartbeats (with the cluster token), leaving after a drain;
//! - [`drain`]: draining (no new work, finish what runs, leave);
//! - [`server`]: the accept loop (TLS when configured), startup and graceful shutdown.
//!
//! The daemon never unpickles anything: payloads stay opaque `Bytes`.

pub mod api;
pub mod capacity;
pub mod check;
pub mod config;
pub mod conn;
pub mod coordinator;
pub mod drain;
pub mod env;
pub mod error;
pub mod gpus;
pub mod job;
pub mod metrics;
pub mod node;
pub mod runtime;
pub mod server;
pub mod simulated;
pub mod state;

pub use config::{Config, GpuSource, Limits, RuntimeKind, TlsFiles};
pub use drain::Drain;
pub use error::DaemonError;
pub use server::run;
