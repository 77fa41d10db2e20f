//! Per-slot cgroups: the narrow trait the daemon uses, and detection of the host's flavour.
//!
//! Layout under the cgroup root (default `/sys/fs/cgroup`, always a parameter):
//! `<parent>/pool` holds the zygote and idle workers; `<parent>/slot-<id>` holds one instance.
//! `<parent>` (e.g. `fleetmap/node-a`) belongs to one daemon: at start everything below it is
//! killed and removed ([`SlotCgroups::cleanup_stale`]).

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::error::SandboxError;
use crate::DEFAULT_PROC_ROOT;

mod devices;
mod files;
mod hierarchy;
mod kill;
pub mod none;
pub mod v1;
pub mod v2;

pub use devices::CharDevice;
pub use files::{format_cpu_list, parse_cpu_list};
pub use none::NoneCgroups;
pub use v1::V1Cgroups;
pub use v2::V2Cgroups;

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
    /// Relative path of the daemon's own parent cgroup, e.g. `fleetmap/node-a`, taken from
    /// the hierarchy's root (not from the daemon's own cgroup).
    pub parent: String,
}

impl CgroupConfig {
    /// The cgroup path of a slot relative to the hierarchy root, as it appears in
    /// `/proc/<pid>/cgroup` (after its leading `/`): `<parent>/slot-<slot_id>`.
    pub fn slot_cgroup(&self, slot_id: &str) -> String {
        format!("{}/slot-{slot_id}", self.parent)
    }
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
/// and every method is synchronous (plain file writes). Most take microseconds; the ones
/// that wait for processes to die (`kill_slot`, `remove_slot`, `cleanup_stale`) usually take
/// a few milliseconds but may block for up to about 2 s, so async callers should run those
/// in `spawn_blocking`.
///
/// Slot ids must be plain names (letters, digits, `-`, `_`, `.`), as [`crate::SlotAllocator`]
/// makes them; any other id is refused with `UnknownSlot`. Reading or joining a slot that
/// does not exist is `UnknownSlot`; killing or removing one is a no-op.
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

    /// Re-limits an existing `<parent>/slot-<slot_id>` to `limits`: writes its CPU list and
    /// memory limit and nothing else (no directory made, no ancestor read), so a job that
    /// takes an idle worker's home cgroup pays a few writes. Fails on a slot cgroup that does
    /// not exist; the default is [`create_slot`](Self::create_slot).
    fn relimit_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError> {
        self.create_slot(slot_id, limits)
    }

    /// Rewrites only the CPU list of an existing `<parent>/slot-<slot_id>`; its memory limit
    /// stays. Between jobs an idle worker's home gets the node's CPUs back this way and keeps
    /// the last job's memory limit, so a next job of the same size writes one file instead of
    /// four (v1: the CPU list, and the memory limit between two writes of memory+swap). Fails
    /// on a slot cgroup that does not exist.
    fn set_slot_cpus(&self, slot_id: &str, cpus: &[u32]) -> Result<(), SandboxError>;

    /// Moves process `pid` into the slot's cgroup (its affinity becomes the slot's CPUs).
    /// With flavour `None`, sets its CPU affinity instead.
    fn move_into_slot(&self, slot_id: &str, pid: u32) -> Result<(), SandboxError>;

    /// Process ids in the slot's cgroup (with `None`: the ones moved in and still alive).
    fn slot_processes(&self, slot_id: &str) -> Result<Vec<u32>, SandboxError>;

    /// SIGKILLs every process in the slot and waits (≤ 1 s) until the cgroup is empty;
    /// returns how many were killed. Processes that outlive the wait (stuck in the kernel)
    /// are logged, not an error; `remove_slot` then reports the cgroup as busy.
    fn kill_slot(&self, slot_id: &str) -> Result<usize, SandboxError>;

    /// How many times the kernel's OOM killer has killed a process in this slot (v1:
    /// `memory.oom_control` `oom_kill`; v2: `memory.events` `oom_kill`; `None`: 0).
    fn oom_kills(&self, slot_id: &str) -> Result<u64, SandboxError>;

    /// Kills what is left in the slot and removes its cgroup(s).
    fn remove_slot(&self, slot_id: &str) -> Result<(), SandboxError>;

    /// Kills every process under `<parent>` (pool and slots, e.g. left by an earlier run that
    /// was killed) and removes every cgroup below it, keeping `<parent>` itself.
    fn cleanup_stale(&self) -> Result<CleanupReport, SandboxError>;

    /// For a graceful shutdown: what `cleanup_stale` does, then removes `<parent>` itself and
    /// whichever of its ancestors are left empty (those other daemons still use stay), so a
    /// daemon that stops cleanly leaves nothing on the host.
    fn remove_all(&self) -> Result<CleanupReport, SandboxError> {
        self.cleanup_stale()
    }

    /// Denies the slot's processes the character devices in `deny` (a GPU slot: the node's
    /// other GPUs), moving `pid` into the slot's device cgroup. `Ok(false)` when this flavour
    /// cannot restrict devices (v2 needs an eBPF program, `None` has no cgroups): the caller
    /// then relies on `CUDA_VISIBLE_DEVICES` alone. See `devices.rs` for the rules written.
    fn restrict_devices(
        &self,
        slot_id: &str,
        pid: u32,
        deny: &[CharDevice],
    ) -> Result<bool, SandboxError> {
        let _ = (slot_id, pid, deny);
        Ok(false)
    }

    /// Removes the slot's device cgroup made by [`SlotCgroups::restrict_devices`], if any.
    fn remove_devices(&self, slot_id: &str) -> Result<(), SandboxError> {
        let _ = slot_id;
        Ok(())
    }
}

/// Chooses the implementation for this host: v2 when `<root>/cgroup.controllers` exists and
/// the cpuset and memory controllers can be enabled under the parent, v1 when the `cpuset`
/// and `memory` hierarchies are mounted under `<root>` and writable, else `None` (allowed only
/// with `CgroupMode::Auto`; `Required` turns it into an error naming what is missing).
///
/// Creates `<parent>` (that is the writability check). A malformed `parent` is an error in
/// every mode except `Off`.
pub fn detect(
    config: &CgroupConfig,
    mode: CgroupMode,
) -> Result<Box<dyn SlotCgroups>, SandboxError> {
    detect_with_proc_root(config, mode, Path::new(DEFAULT_PROC_ROOT))
}

/// [`detect`], with procfs at `proc_root` (used by the `None` flavour to check the
/// processes it tracks).
pub fn detect_with_proc_root(
    config: &CgroupConfig,
    mode: CgroupMode,
    proc_root: &Path,
) -> Result<Box<dyn SlotCgroups>, SandboxError> {
    let none = || Box::new(NoneCgroups::new(proc_root)) as Box<dyn SlotCgroups>;
    if mode == CgroupMode::Off {
        info!("cgroups off: instances get CPU affinity only and no memory limit");
        return Ok(none());
    }
    files::check_parent(&config.parent)?;
    let attempt: Result<Box<dyn SlotCgroups>, SandboxError> = if config
        .root
        .join("cgroup.controllers")
        .is_file()
    {
        V2Cgroups::new(config).map(|cg| Box::new(cg) as Box<dyn SlotCgroups>)
    } else if config.root.join("cpuset").is_dir() || config.root.join("memory").is_dir() {
        V1Cgroups::new(config).map(|cg| Box::new(cg) as Box<dyn SlotCgroups>)
    } else {
        Err(SandboxError::Unsupported(format!(
                "{} holds neither a cgroup v2 hierarchy (cgroup.controllers) nor cgroup v1 cpuset and memory hierarchies",
                config.root.display()
            )))
    };
    match attempt {
        Ok(cgroups) => {
            info!(
                flavor = cgroups.flavor().as_str(),
                root = %config.root.display(),
                parent = %config.parent,
                "cgroups in use"
            );
            Ok(cgroups)
        }
        Err(err) if mode == CgroupMode::Required => Err(err),
        Err(err) => {
            warn!(
                cause = %err,
                "cgroups unusable: instances get CPU affinity only and no memory limit"
            );
            Ok(none())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(root: &Path) -> CgroupConfig {
        CgroupConfig {
            root: root.to_path_buf(),
            parent: "fleetmap/node-a".to_owned(),
        }
    }

    #[test]
    fn nothing_mounted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path());
        let err = detect(&cfg, CgroupMode::Required).expect_err("required");
        assert!(matches!(err, SandboxError::Unsupported(_)));
        assert!(err.to_string().contains("neither"), "{err}");
        let cg = detect(&cfg, CgroupMode::Auto).expect("auto falls back");
        assert_eq!(cg.flavor(), CgroupFlavor::None);
        let cg = detect(&cfg, CgroupMode::Off).expect("off");
        assert_eq!(cg.flavor(), CgroupFlavor::None);
    }

    #[test]
    fn half_a_v1_layout_names_the_missing_hierarchy() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("cpuset")).expect("mkdir");
        std::fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-1\n").expect("write");
        let err = detect(&config(dir.path()), CgroupMode::Required).expect_err("required");
        assert!(err.to_string().contains("memory.limit_in_bytes"), "{err}");
    }

    #[test]
    fn bad_parent_is_an_error_unless_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = CgroupConfig {
            root: dir.path().to_path_buf(),
            parent: "../escape".to_owned(),
        };
        assert!(detect(&cfg, CgroupMode::Auto).is_err());
        assert!(detect(&cfg, CgroupMode::Off).is_ok());
    }

    #[test]
    fn slot_cgroup_path() {
        let cfg = config(Path::new("/sys/fs/cgroup"));
        assert_eq!(cfg.slot_cgroup("s3"), "fleetmap/node-a/slot-s3");
        assert_eq!(CgroupFlavor::V1.as_str(), "v1");
    }
}
