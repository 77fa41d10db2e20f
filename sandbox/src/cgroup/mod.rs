//! Per-slot cgroups: the narrow trait the daemon uses, and detection of the host's flavour.
//!
//! Layout under the cgroup root (default `/sys/fs/cgroup`, always a parameter):
//! `<parent>/pool` holds the zygote and idle workers; `<parent>/slot-<id>` holds one instance.
//! `<parent>` (e.g. `fleetmap/node-a`) belongs to one daemon: at start everything below it is
//! killed and removed ([`SlotCgroups::cleanup_stale`]).

use std::path::PathBuf;

use crate::error::SandboxError;

/// Which cgroup implementation enforces limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupFlavor {
    /// Legacy hierarchies (one mount per controller: cpuset, memory, pids, …).
    V1,
    /// The unified hierarchy with the cpuset and memory controllers enabled.
    V2,
    /// No cgroups: CPU affinity only (sched_setaffinity), memory not enforced.
    None,
}

impl CgroupFlavor {
    /// `v1`, `v2` or `none`, as reported in node info.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::None => "none",
        }
    }
}

/// Whether cgroups are required, used when available, or not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Fail at start when cgroups cannot be written.
    Required,
    /// Use them when writable, else warn and fall back to `None`.
    Auto,
    /// Never use them.
    Off,
}

/// Where the daemon's cgroups live.
#[derive(Debug, Clone)]
pub struct CgroupConfig {
    /// Mount root of the cgroup filesystem(s), `/sys/fs/cgroup` on real hosts.
    pub root: PathBuf,
    /// Relative path of the daemon's own parent cgroup, e.g. `fleetmap/node-a`.
    pub parent: String,
}

/// Limits of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLimits {
    /// CPU ids the instance may run on (its cpuset).
    pub cpus: Vec<u32>,
    /// Memory limit in bytes (swap disabled where the host allows).
    pub ram_bytes: u64,
}

/// What `cleanup_stale` found and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Cgroups removed.
    pub cgroups_removed: usize,
    /// Processes killed in them.
    pub processes_killed: usize,
}

/// The daemon's handle on its cgroups. Implementations are cheap to share (`Send + Sync`),
/// and every method is synchronous (plain file writes); callers on a runtime use them from
/// blocking-safe contexts or accept the microseconds they take.
pub trait SlotCgroups: Send + Sync + std::fmt::Debug {
    /// Which flavour this is.
    fn flavor(&self) -> CgroupFlavor;

    /// Creates `<parent>/pool` (idempotent) and moves `pid` (the zygote) into it; children it
    /// forks start there.
    fn enter_pool(&self, pid: u32) -> Result<(), SandboxError>;

    /// Creates `<parent>/slot-<slot_id>` with `limits` (cpuset.cpus = limits.cpus, cpuset.mems
    /// from the parent, memory limit, swap off) — idempotent: an existing slot cgroup is
    /// re-limited.
    fn create_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError>;

    /// Moves process `pid` into the slot's cgroup (its affinity becomes the slot's CPUs).
    /// With flavour `None`, sets its CPU affinity instead.
    fn move_into_slot(&self, slot_id: &str, pid: u32) -> Result<(), SandboxError>;

    /// Process ids in the slot's cgroup (with `None`: the ones moved in and still alive).
    fn slot_processes(&self, slot_id: &str) -> Result<Vec<u32>, SandboxError>;

    /// SIGKILLs every process in the slot and waits (≤ 1 s) until the cgroup is empty;
    /// returns how many were killed.
    fn kill_slot(&self, slot_id: &str) -> Result<usize, SandboxError>;

    /// How many times the kernel's OOM killer has killed a process in this slot (v1:
    /// `memory.oom_control` `oom_kill`; v2: `memory.events` `oom_kill`; `None`: 0).
    fn oom_kills(&self, slot_id: &str) -> Result<u64, SandboxError>;

    /// Kills what is left in the slot and removes its cgroup(s).
    fn remove_slot(&self, slot_id: &str) -> Result<(), SandboxError>;

    /// Kills every process under `<parent>` (pool and slots, e.g. left by an earlier run that
    /// was killed) and removes every cgroup below it, keeping `<parent>` itself.
    fn cleanup_stale(&self) -> Result<CleanupReport, SandboxError>;
}

/// Chooses the implementation for this host: v2 when `<root>/cgroup.controllers` exists and
/// the cpuset and memory controllers can be enabled under the parent, v1 when the `cpuset`
/// and `memory` hierarchies are mounted under `<root>` and writable, else `None` (allowed only
/// with `CgroupMode::Auto`; `Required` turns it into an error naming what is missing).
pub fn detect(
    config: &CgroupConfig,
    mode: CgroupMode,
) -> Result<Box<dyn SlotCgroups>, SandboxError> {
    let _ = (config, mode);
    Err(SandboxError::Unsupported("not implemented yet".into()))
}
