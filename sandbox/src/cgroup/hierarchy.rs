//! A cgroups-rs `Hierarchy` rooted at a path we choose.
//!
//! cgroups-rs's own hierarchies find their mounts themselves: `V1` from
//! `/proc/self/mountinfo` (every controller it finds, mounted anywhere) and `V2` at a
//! hard-coded `/sys/fs/cgroup`. This one takes the root as a parameter and offers only the
//! two controllers fleetmap uses (memory and cpuset), laid out as `<root>/memory`,
//! `<root>/cpuset` (v1) or `<root>` itself (v2), so tests can point it at a temporary
//! directory and a daemon never touches controllers it does not own.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::memory::MemController;
use cgroups_rs::{Cgroup, Hierarchy, Subsystem};
use tracing::debug;

use super::files;
use super::kill::kill_until_empty;
use super::CleanupReport;
use crate::error::SandboxError;

/// How long a removal retries while the kernel still reports the cgroup busy (its last
/// processes are exiting).
const REMOVE_WAIT: Duration = Duration::from_secs(1);

/// The memory and cpuset controllers under a root of our choosing.
#[derive(Debug, Clone)]
pub(crate) struct RootedHierarchy {
    root: PathBuf,
    v2: bool,
}

impl RootedHierarchy {
    /// Legacy layout: one mount per controller at `<root>/memory` and `<root>/cpuset`.
    pub(crate) fn v1(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            v2: false,
        }
    }

    /// Unified layout: every controller in `<root>`.
    pub(crate) fn v2(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            v2: true,
        }
    }

    /// A handle on the cgroup at `relative` (which must be relative: cgroups-rs pushes it
    /// onto each controller's mount). Creating nothing.
    pub(crate) fn cgroup(&self, relative: &Path) -> Cgroup {
        Cgroup::load(Box::new(self.clone()), relative)
    }

    /// The directories that hold the cgroup at `relative`, one per controller mount
    /// (memory first, as cgroups-rs orders them for writeback accounting).
    pub(crate) fn dirs(&self, relative: &Path) -> Vec<PathBuf> {
        if self.v2 {
            vec![self.root.join(relative)]
        } else {
            vec![
                self.root.join("memory").join(relative),
                self.root.join("cpuset").join(relative),
            ]
        }
    }

    /// The memory controller's directory for `relative`.
    pub(crate) fn memory_dir(&self, relative: &Path) -> PathBuf {
        if self.v2 {
            self.root.join(relative)
        } else {
            self.root.join("memory").join(relative)
        }
    }

    /// The cpuset controller's directory for `relative`.
    pub(crate) fn cpuset_dir(&self, relative: &Path) -> PathBuf {
        if self.v2 {
            self.root.join(relative)
        } else {
            self.root.join("cpuset").join(relative)
        }
    }
}

/// Operations both flavours share: existence, listing, removal and the stale sweep.
impl RootedHierarchy {
    /// Whether the cgroup exists in every controller mount.
    pub(crate) fn exists(&self, relative: &Path) -> bool {
        self.dirs(relative).iter().all(|dir| dir.is_dir())
    }

    /// Process ids in the cgroup, from every controller mount that has it. Read directly
    /// rather than through cgroups-rs, whose `procs()` turns any failed read into "none";
    /// here only a cgroup that is gone (removed meanwhile) has none.
    pub(crate) fn procs(&self, relative: &Path) -> Result<Vec<u32>, SandboxError> {
        let mut pids = BTreeSet::new();
        for dir in self.dirs(relative) {
            match files::read_pids(&dir.join("cgroup.procs")) {
                Ok(found) => pids.extend(found),
                Err(SandboxError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(pids.into_iter().collect())
    }

    /// Removes the cgroup (its children must be gone already) through cgroups-rs, retrying
    /// for up to [`REMOVE_WAIT`] while the kernel still reports it busy. Returns whether
    /// there was anything to remove. A directory that is no cgroup (`rmdir` says it is not
    /// empty) is never emptied: only cgroupfs may drop its control files.
    pub(crate) fn delete(&self, relative: &Path) -> Result<bool, SandboxError> {
        let dirs = self.dirs(relative);
        if !dirs.iter().any(|dir| dir.is_dir()) {
            return Ok(false);
        }
        let cgroup = self.cgroup(relative);
        let deadline = Instant::now() + REMOVE_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let result = cgroup.delete();
            let left = dirs.iter().find(|dir| dir.is_dir());
            match (result, left) {
                (Ok(()), None) => {
                    debug!(cgroup = %dirs[0].display(), "cgroup removed");
                    return Ok(true);
                }
                (Err(err), _) if is_not_empty(&err) => {
                    // cgroupfs answers EBUSY, never ENOTEMPTY: this directory is no cgroup.
                    return Err(SandboxError::io(
                        "rmdir",
                        left.unwrap_or(&dirs[0]).clone(),
                        std::io::Error::other("holds files, so it is no cgroup; left as is"),
                    ));
                }
                (result, left) if Instant::now() >= deadline => {
                    let path = left.unwrap_or(&dirs[0]).clone();
                    return Err(match result {
                        Err(err) => SandboxError::cgroups("rmdir", path, err),
                        Ok(()) => SandboxError::io(
                            "rmdir",
                            path,
                            std::io::Error::other("still present after removal"),
                        ),
                    });
                }
                _ => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
            }
        }
    }

    /// Kills every process in the cgroups below `parent` (each round through `kill_round`)
    /// and removes those cgroups, deepest first, keeping `parent`.
    pub(crate) fn cleanup_below(
        &self,
        parent: &Path,
        mut kill_round: impl FnMut(&[PathBuf], &[u32]) -> Result<(), SandboxError>,
    ) -> Result<CleanupReport, SandboxError> {
        let mut found = BTreeSet::new();
        for dir in self.dirs(parent) {
            found.extend(files::descendants(&dir)?);
        }
        let mut below: Vec<PathBuf> = found.into_iter().map(|rel| parent.join(rel)).collect();
        // Deepest first; the sort is stable so siblings keep their name order.
        below.sort_by_key(|rel| std::cmp::Reverse(rel.components().count()));
        if below.is_empty() {
            return Ok(CleanupReport::default());
        }
        let what = self.dirs(parent).swap_remove(0);
        let processes_killed = kill_until_empty(
            &what,
            || {
                let mut pids = BTreeSet::new();
                for rel in &below {
                    pids.extend(self.procs(rel)?);
                }
                Ok(pids.into_iter().collect())
            },
            |pids| kill_round(&below, pids),
        )?;
        let mut cgroups_removed = 0;
        for rel in &below {
            if self.delete(rel)? {
                cgroups_removed += 1;
            }
        }
        Ok(CleanupReport {
            cgroups_removed,
            processes_killed,
        })
    }

    /// Kills and removes everything below `parent`, then `parent`, then each ancestor that
    /// is empty (one still holding another daemon's cgroups is left, silently).
    pub(crate) fn remove_all(
        &self,
        parent: &Path,
        kill_round: impl FnMut(&[PathBuf], &[u32]) -> Result<(), SandboxError>,
    ) -> Result<CleanupReport, SandboxError> {
        let mut report = self.cleanup_below(parent, kill_round)?;
        if self.delete(parent)? {
            report.cgroups_removed += 1;
        }
        let mut above = parent.parent();
        while let Some(rel) = above.filter(|rel| !rel.as_os_str().is_empty()) {
            for dir in self.dirs(rel) {
                if let Err(err) = std::fs::remove_dir(&dir) {
                    debug!(cgroup = %dir.display(), cause = %err, "ancestor kept");
                }
            }
            above = rel.parent();
        }
        Ok(report)
    }
}

fn is_not_empty(err: &cgroups_rs::error::Error) -> bool {
    use std::error::Error as _;
    err.source()
        .and_then(|cause| cause.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
        == Some(libc::ENOTEMPTY)
}

/// The error for a controller missing from a [`RootedHierarchy`] handle (cannot happen: it
/// always offers memory and cpuset, but cgroups-rs's lookup is fallible).
pub(crate) fn no_controller(controller: &str, path: PathBuf) -> SandboxError {
    SandboxError::io(
        "open",
        path,
        std::io::Error::other(format!("no {controller} controller in the hierarchy")),
    )
}

impl Hierarchy for RootedHierarchy {
    fn subsystems(&self) -> Vec<Subsystem> {
        let (memory, cpuset) = if self.v2 {
            (self.root.clone(), self.root.clone())
        } else {
            (self.root.join("memory"), self.root.join("cpuset"))
        };
        vec![
            Subsystem::Mem(MemController::new(memory, self.v2)),
            Subsystem::CpuSet(CpuSetController::new(cpuset, self.v2)),
        ]
    }

    fn root(&self) -> PathBuf {
        self.root.clone()
    }

    fn root_control_group(&self) -> Cgroup {
        self.cgroup(Path::new(""))
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().unwrap_or_else(|| Path::new(""));
        self.cgroup(parent)
    }

    fn v2(&self) -> bool {
        self.v2
    }
}
