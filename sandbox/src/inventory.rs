//! What the machine offers to instances: CPU ids and RAM, detected once at start.
//!
//! CPUs are the daemon's own allowed CPUs (`sched_getaffinity`), so a daemon started under
//! `taskset` or inside a cpuset only hands out what it may use. RAM is sysinfo's total memory,
//! or the memory limit of the daemon's own cgroup (and its ancestors) when that is lower.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sched::{sched_getaffinity, CpuSet};
use nix::unistd::Pid;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};
use tracing::{debug, info, warn};

use crate::error::SandboxError;
use crate::{DEFAULT_CGROUP_ROOT, DEFAULT_PROC_ROOT};

/// The CPUs and RAM the daemon may hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// CPU ids usable by instances (the daemon's own allowed CPUs), ascending.
    pub cpus: Vec<u32>,
    /// RAM in bytes usable by instances.
    pub ram_bytes: u64,
}

impl Inventory {
    /// Reads the host under the default roots (`/sys/fs/cgroup`, `/proc`).
    pub fn detect() -> Result<Self, SandboxError> {
        Self::detect_with_roots(Path::new(DEFAULT_CGROUP_ROOT), Path::new(DEFAULT_PROC_ROOT))
    }

    /// Reads the host: CPU ids from this process's affinity, RAM from sysinfo capped by the
    /// memory limit of this process's cgroup (found through `<proc_root>/self/cgroup` and read
    /// under `<cgroup_root>`). A missing or unreadable cgroup only means "no cgroup limit".
    pub fn detect_with_roots(cgroup_root: &Path, proc_root: &Path) -> Result<Self, SandboxError> {
        let cpus = allowed_cpus(proc_root)?;
        let total = total_memory();
        let limit = own_cgroup_memory_limit(cgroup_root, proc_root);
        let ram_bytes = limit.map_or(total, |limit| limit.min(total));
        info!(
            cpus = cpus.len(),
            total_memory = total,
            cgroup_limit = ?limit,
            ram_bytes,
            "inventory detected"
        );
        Ok(Self { cpus, ram_bytes })
    }

    /// Applies configured caps (e.g. to leave room for the system): at most `cpus` CPU ids
    /// (the lowest ones are kept) and at most `ram_bytes` of RAM. Overrides only ever
    /// reduce: a value above what was detected is ignored with a warning, since CPU ids that
    /// do not exist cannot be pinned and RAM that does not exist cannot be promised.
    pub fn with_overrides(mut self, cpus: Option<u32>, ram_bytes: Option<u64>) -> Self {
        if let Some(wanted) = cpus {
            let wanted = usize::try_from(wanted).unwrap_or(usize::MAX);
            if wanted > self.cpus.len() {
                warn!(
                    configured = wanted,
                    detected = self.cpus.len(),
                    "configured CPUs exceed the detected ones; keeping the detected ones"
                );
            } else {
                self.cpus.truncate(wanted);
            }
        }
        if let Some(wanted) = ram_bytes {
            if wanted > self.ram_bytes {
                warn!(
                    configured = wanted,
                    detected = self.ram_bytes,
                    "configured RAM exceeds the detected RAM; keeping the detected RAM"
                );
            } else {
                self.ram_bytes = wanted;
            }
        }
        self
    }

    /// Number of CPU ids.
    pub fn cpu_count(&self) -> u32 {
        u32::try_from(self.cpus.len()).unwrap_or(u32::MAX)
    }
}

/// The CPU ids this process may run on, ascending.
fn allowed_cpus(proc_root: &Path) -> Result<Vec<u32>, SandboxError> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|errno| {
        SandboxError::io(
            "sched_getaffinity",
            proc_root.join("self"),
            std::io::Error::from(errno),
        )
    })?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .filter_map(|cpu| u32::try_from(cpu).ok())
        .collect())
}

/// Physical RAM in bytes according to sysinfo (0 if it cannot tell).
fn total_memory() -> u64 {
    let sys = System::new_with_specifics(
        RefreshKind::new().with_memory(MemoryRefreshKind::new().with_ram()),
    );
    sys.total_memory()
}

/// The lowest memory limit on this process's cgroup and its ancestors, if any.
fn own_cgroup_memory_limit(cgroup_root: &Path, proc_root: &Path) -> Option<u64> {
    let self_cgroup = proc_root.join("self").join("cgroup");
    let content = match fs::read_to_string(&self_cgroup) {
        Ok(content) => content,
        Err(err) => {
            debug!(path = %self_cgroup.display(), cause = %err, "no cgroup membership to read");
            return None;
        }
    };
    let (base, relative, file) = memory_cgroup_of(&content, cgroup_root)?;
    lowest_limit_upwards(&base, &relative, file)
}

/// Where this process's memory limit lives: the hierarchy's mount, the cgroup's path in it
/// and the limit file's name. v1 (`N:memory:/path`) wins over v2 (`0::/path`), which only
/// counts when `<cgroup_root>` is a unified mount (has `cgroup.controllers`).
fn memory_cgroup_of(
    self_cgroup: &str,
    cgroup_root: &Path,
) -> Option<(PathBuf, PathBuf, &'static str)> {
    let mut unified = None;
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let relative = PathBuf::from(path.trim_start_matches('/'));
        if controllers.split(',').any(|c| c == "memory") {
            return Some((
                cgroup_root.join("memory"),
                relative,
                "memory.limit_in_bytes",
            ));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(relative);
        }
    }
    let relative = unified?;
    cgroup_root
        .join("cgroup.controllers")
        .exists()
        .then(|| (cgroup_root.to_path_buf(), relative, "memory.max"))
}

/// Reads `file` in `base/relative` and every ancestor up to `base`, returning the lowest
/// numeric limit ("max" and unreadable files are no limit).
fn lowest_limit_upwards(base: &Path, relative: &Path, file: &str) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    let mut current = Some(relative);
    while let Some(rel) = current {
        let path = base.join(rel).join(file);
        if let Ok(text) = fs::read_to_string(&path) {
            if let Ok(value) = text.trim().parse::<u64>() {
                lowest = Some(lowest.map_or(value, |l| l.min(value)));
            }
        }
        current = rel.parent();
    }
    lowest
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn overrides_only_reduce() {
        let inv = Inventory {
            cpus: vec![0, 1, 2, 3],
            ram_bytes: 8 * GIB,
        };
        let capped = inv.clone().with_overrides(Some(2), Some(4 * GIB));
        assert_eq!(capped.cpus, vec![0, 1]);
        assert_eq!(capped.ram_bytes, 4 * GIB);
        let same = inv.clone().with_overrides(None, None);
        assert_eq!(same, inv);
        let too_big = inv.clone().with_overrides(Some(64), Some(64 * GIB));
        assert_eq!(too_big, inv);
        let zero = inv.with_overrides(Some(0), Some(0));
        assert!(zero.cpus.is_empty());
        assert_eq!(zero.ram_bytes, 0);
    }

    #[test]
    fn detect_reports_this_process() {
        let inv = Inventory::detect().expect("detect");
        let affinity = sched_getaffinity(Pid::from_raw(0)).expect("affinity");
        let expected: Vec<u32> = (0..CpuSet::count())
            .filter(|&c| affinity.is_set(c).unwrap_or(false))
            .map(|c| u32::try_from(c).expect("cpu id fits"))
            .collect();
        assert_eq!(inv.cpus, expected);
        assert!(!inv.cpus.is_empty());
        assert!(inv.ram_bytes > 0);
        assert!(inv.ram_bytes <= total_memory());
        assert!(inv.cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn v1_limit_is_lowest_on_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cg, proc) = (dir.path().join("cg"), dir.path().join("proc"));
        write(
            &proc.join("self/cgroup"),
            "9:name=systemd:/\n4:memory:/outer/inner\n3:cpuset:/\n0::/\n",
        );
        write(
            &cg.join("memory/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(
            &cg.join("memory/outer/memory.limit_in_bytes"),
            "1073741824\n",
        );
        write(
            &cg.join("memory/outer/inner/memory.limit_in_bytes"),
            "2147483648\n",
        );
        assert_eq!(own_cgroup_memory_limit(&cg, &proc), Some(GIB));
        let inv = Inventory::detect_with_roots(&cg, &proc).expect("detect");
        assert_eq!(inv.ram_bytes, GIB.min(total_memory()));
    }

    #[test]
    fn v2_limit_needs_a_unified_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cg, proc) = (dir.path().join("cg"), dir.path().join("proc"));
        write(
            &proc.join("self/cgroup"),
            "0::/system.slice/fleetmapd.service\n",
        );
        write(&cg.join("system.slice/memory.max"), "max\n");
        write(
            &cg.join("system.slice/fleetmapd.service/memory.max"),
            "536870912\n",
        );
        // Hybrid host: the root is no cgroup2 mount, so the v2 line says nothing about memory.
        assert_eq!(own_cgroup_memory_limit(&cg, &proc), None);
        write(&cg.join("cgroup.controllers"), "cpuset cpu memory pids\n");
        assert_eq!(own_cgroup_memory_limit(&cg, &proc), Some(512 << 20));
    }

    #[test]
    fn no_cgroup_information_means_no_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cg, proc) = (dir.path().join("cg"), dir.path().join("proc"));
        assert_eq!(own_cgroup_memory_limit(&cg, &proc), None);
        write(&proc.join("self/cgroup"), "4:memory:/gone\n");
        assert_eq!(own_cgroup_memory_limit(&cg, &proc), None);
        write(&cg.join("memory/memory.limit_in_bytes"), "garbage\n");
        assert_eq!(own_cgroup_memory_limit(&cg, &proc), None);
        let inv = Inventory::detect_with_roots(&cg, &proc).expect("detect");
        assert_eq!(inv.ram_bytes, total_memory());
    }
}
