//! Where instances run: the narrow [`Runtime`] trait jobs use, chosen once at start.
//!
//! A runtime hands out workers that are already connected (a framed Unix socket), placed in a
//! slot's limits, and whose end it can report; it kills a slot's processes and removes what it
//! created for a slot. The `process` runtime forks workers from a warm zygote into per-slot
//! cgroups; the `docker` runtime runs each worker in its own container from warm pools.

pub mod accept;
pub mod conn;
pub mod docker;
pub mod envs;
pub mod exit;
#[cfg(test)]
pub(crate) mod forking_shell;
pub mod process;
pub mod timer_slack;

use std::fmt::Debug;

use agent_proto::PoolInfo;
use fleetmap_sandbox::{CgroupFlavor, SandboxError, Slot};
use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::env::EnvTarget;

pub use conn::{ConnError, FrameReader, FrameWriter, WorkerConn};
pub use exit::{ExitStatus, ExitWatch};

/// A worker handed to an instance: connected, idle (no job yet), inside the slot's limits.
#[derive(Debug)]
pub struct Worker {
    /// Its process id.
    pub pid: u32,
    /// Its socket.
    pub conn: WorkerConn,
    /// Resolves once the runtime learns how the process ended.
    pub exit: ExitWatch,
    /// The worker's own empty scratch space (its working directory and `TMPDIR`), if the
    /// runtime gives it one.
    pub scratch: Option<Scratch>,
    /// The slot's OOM-kill count as the worker starts, when the runtime already knows it
    /// (`None`: the instance asks [`Runtime::oom_kills`]).
    pub oom_kills_before: Option<u64>,
}

/// A bounded, empty directory a worker writes into: its cwd and `TMPDIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// The directory as the worker sees it (a host path, or a path inside its container).
    pub path: String,
    /// Its size limit in bytes; 0 where it is bounded only by the filesystem it is on.
    pub bytes: u64,
}

/// What a runtime could not do.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A file of the runtime's state could not be written or read.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path concerned.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker Python could not be started or did not become ready.
    #[error("worker interpreter {python}: {reason}")]
    Interpreter {
        /// The interpreter path.
        python: String,
        /// What went wrong.
        reason: String,
    },
    /// A cgroup operation failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The container engine refused or failed a request.
    #[error("docker engine: {action}: {reason}")]
    Engine {
        /// What was asked of the engine.
        action: &'static str,
        /// What it answered.
        reason: String,
    },
    /// The environment asked for cannot be served (not built, or its workers do not start).
    #[error("{0}")]
    Environment(String),
    /// A slot's scratch space could not be made.
    #[error("scratch space: {0}")]
    Scratch(String),
    /// No worker has started for a while: every start failed, the latest for `reason`.
    #[error("no worker has started for {for_s} s: {reason}")]
    StartsFailing {
        /// How long starts have been failing.
        for_s: u64,
        /// Why the latest start failed, and what to do.
        reason: String,
    },
    /// The runtime is shutting down and hands out nothing more.
    #[error("the worker runtime is shutting down")]
    ShuttingDown,
}

/// The daemon's handle on where instances run. Methods are cheap to call concurrently.
pub trait Runtime: Send + Sync + Debug {
    /// `process` or `docker`, as reported in node info.
    fn kind(&self) -> &'static str;

    /// Version of the worker Python (`3.11.7`).
    fn python_version(&self) -> String;

    /// Which cgroup flavour enforces slot limits.
    fn cgroup_flavor(&self) -> CgroupFlavor;

    /// The warm pool's state.
    fn pool(&self) -> PoolInfo;

    /// A fresh worker of environment `env`, placed in `slot`'s limits (creating them if
    /// needed). Returns at once when the pool has an idle worker; otherwise waits for one to
    /// start.
    fn acquire<'a>(
        &'a self,
        slot: &'a Slot,
        env: &'a EnvTarget,
    ) -> BoxFuture<'a, Result<Worker, RuntimeError>>;

    /// How many OOM kills the kernel has made in the slot so far.
    fn oom_kills(&self, slot_id: &str) -> u64;

    /// SIGKILLs worker `pid` and everything else in the slot; resolves once they are gone.
    fn kill<'a>(&'a self, slot_id: &'a str, pid: u32) -> BoxFuture<'a, ()>;

    /// Removes what the runtime created for the slot (killing what is left in it).
    fn release(&self, slot_id: String) -> BoxFuture<'static, ()>;

    /// Stops handing out workers, kills every worker and removes every slot.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
