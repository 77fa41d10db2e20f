//! Cgroup v2: one cgroup per slot in the unified hierarchy mounted at `<root>`, with the
//! `cpuset` and `memory` controllers enabled from the root down to `<parent>`.
//!
//! cgroups-rs creates v2 cgroups by reading the controller list at a hard-coded
//! `/sys/fs/cgroup` and ignoring failed `cgroup.subtree_control` writes, so directories and
//! `+cpuset +memory` are written here directly, with errors that name the file. Limits,
//! joining, `cgroup.kill` and removal go through cgroups-rs on a rooted hierarchy
//! (`hierarchy.rs`).

use std::path::{Path, PathBuf};

use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::memory::MemController;
use cgroups_rs::{Cgroup, CgroupPid};
use tracing::{debug, info};

use super::files::{self, POOL_DIR};
use super::hierarchy::{no_controller, RootedHierarchy};
use super::kill::{kill_until_empty, sigkill_each};
use super::{CgroupConfig, CgroupFlavor, CleanupReport, SlotCgroups, SlotLimits};
use crate::error::SandboxError;

/// What is enabled for the children of every cgroup from the root to `<parent>`.
const SUBTREE: &str = "+cpuset +memory";

/// Slots as cgroup v2 cgroups under `<root>/<parent>`.
#[derive(Debug)]
pub struct V2Cgroups {
    hier: RootedHierarchy,
    root: PathBuf,
    parent: PathBuf,
}

impl V2Cgroups {
    /// Checks that `<root>` is a unified hierarchy offering cpuset and memory, creates
    /// `<parent>` and enables both controllers for the children of the root, of every cgroup
    /// on the way and of `<parent>` itself.
    pub fn new(config: &CgroupConfig) -> Result<Self, SandboxError> {
        files::check_parent(&config.parent)?;
        let listed = config.root.join("cgroup.controllers");
        let controllers = files::read(&listed)?;
        for wanted in ["cpuset", "memory"] {
            if !controllers.split_whitespace().any(|c| c == wanted) {
                return Err(SandboxError::Unsupported(format!(
                    "cgroup v2 at {} does not offer the {wanted} controller ({} lists \"{}\")",
                    config.root.display(),
                    listed.display(),
                    controllers.trim()
                )));
            }
        }
        let mut dir = config.root.clone();
        files::write(&dir.join("cgroup.subtree_control"), SUBTREE)?;
        for part in Path::new(&config.parent).components() {
            dir.push(part);
            if !dir.is_dir() {
                files::mkdir_all(&dir)?;
            }
            files::write(&dir.join("cgroup.subtree_control"), SUBTREE)?;
        }
        info!(root = %config.root.display(), parent = %config.parent, "cgroup v2 parent ready");
        Ok(Self::at(config))
    }

    /// A handle on `config` without checking or preparing anything.
    fn at(config: &CgroupConfig) -> Self {
        Self {
            hier: RootedHierarchy::v2(&config.root),
            root: config.root.clone(),
            parent: PathBuf::from(&config.parent),
        }
    }

    fn slot(&self, slot_id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.parent.join(files::slot_dir(slot_id)?))
    }

    fn existing_slot(&self, slot_id: &str) -> Result<PathBuf, SandboxError> {
        let rel = self.slot(slot_id)?;
        if self.hier.exists(&rel) {
            Ok(rel)
        } else {
            Err(SandboxError::UnknownSlot(slot_id.to_owned()))
        }
    }

    fn ensure(&self, rel: &Path) -> Result<Cgroup, SandboxError> {
        let dir = self.root.join(rel);
        if !dir.is_dir() {
            files::mkdir_all(&dir)?;
        }
        Ok(self.hier.cgroup(rel))
    }

    /// The memory nodes `<parent>` may use: its effective set, else the nearest ancestor's.
    fn parent_mems(&self) -> Result<String, SandboxError> {
        let mut rel = Some(self.parent.as_path());
        while let Some(here) = rel {
            for file in ["cpuset.mems.effective", "cpuset.mems"] {
                let path = self.root.join(here).join(file);
                if path.is_file() {
                    let mems = files::read(&path)?;
                    if !mems.trim().is_empty() {
                        return Ok(mems.trim().to_owned());
                    }
                }
            }
            rel = here.parent();
        }
        Err(SandboxError::Unsupported(format!(
            "no cpuset.mems.effective with memory nodes at or above {}",
            self.root.join(&self.parent).display()
        )))
    }

    /// The slot's CPU list and hard memory limit, swap off where swap is accounted.
    fn limit(&self, rel: &Path, cgroup: &Cgroup, limits: &SlotLimits) -> Result<(), SandboxError> {
        let dir = self.root.join(rel);
        let at = |file: &str| dir.join(file);
        self.set_cpus(rel, cgroup, &limits.cpus)?;
        let memory: &MemController = cgroup
            .controller_of()
            .ok_or_else(|| no_controller("memory", dir.clone()))?;
        let limit = i64::try_from(limits.ram_bytes).map_err(|_| {
            SandboxError::DoesNotFit(format!(
                "memory limit of {} bytes is too large",
                limits.ram_bytes
            ))
        })?;
        memory
            .set_limit(limit)
            .map_err(|err| SandboxError::cgroups("write", at("memory.max"), err))?;
        // v2 accounts swap separately: 0 means no swap. Absent without swap accounting.
        if at("memory.swap.max").is_file() {
            memory
                .set_memswap_limit(0)
                .map_err(|err| SandboxError::cgroups("write", at("memory.swap.max"), err))?;
        }
        Ok(())
    }

    /// Writes `cpuset.cpus` of `rel`.
    fn set_cpus(&self, rel: &Path, cgroup: &Cgroup, cpus: &[u32]) -> Result<(), SandboxError> {
        let dir = self.root.join(rel);
        let cpuset: &CpuSetController = cgroup
            .controller_of()
            .ok_or_else(|| no_controller("cpuset", dir.clone()))?;
        cpuset
            .set_cpus(&files::format_cpu_list(cpus))
            .map_err(|err| SandboxError::cgroups("write", dir.join("cpuset.cpus"), err))
    }

    fn join(&self, rel: &Path, cgroup: &Cgroup, pid: u32) -> Result<(), SandboxError> {
        cgroup
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|err| {
                SandboxError::cgroups("write", self.root.join(rel).join("cgroup.procs"), err)
            })
    }

    /// One kill round for the cgroup at `rel`: `cgroup.kill` (Linux 5.14+) kills it and
    /// everything below atomically; without it, SIGKILL each listed pid.
    fn kill_round(&self, rel: &Path, pids: &[u32]) -> Result<(), SandboxError> {
        let file = self.root.join(rel).join("cgroup.kill");
        if file.is_file() {
            self.hier
                .cgroup(rel)
                .kill()
                .map_err(|err| SandboxError::cgroups("write", file, err))
        } else {
            sigkill_each(pids)
        }
    }

    /// A kill round over every stale cgroup below the parent: the top-level children's
    /// `cgroup.kill` covers everything beneath them; without it, SIGKILL each pid.
    fn sweep_round(&self, below: &[PathBuf], pids: &[u32]) -> Result<(), SandboxError> {
        let top: Vec<&PathBuf> = below
            .iter()
            .filter(|rel| rel.parent() == Some(self.parent.as_path()))
            .collect();
        if top
            .iter()
            .all(|rel| self.root.join(rel).join("cgroup.kill").is_file())
        {
            for rel in top {
                self.kill_round(rel, pids)?;
            }
            Ok(())
        } else {
            sigkill_each(pids)
        }
    }
}

impl SlotCgroups for V2Cgroups {
    fn flavor(&self) -> CgroupFlavor {
        CgroupFlavor::V2
    }

    fn enter_pool(&self, pid: u32) -> Result<(), SandboxError> {
        let rel = self.parent.join(POOL_DIR);
        let cgroup = self.ensure(&rel)?;
        self.join(&rel, &cgroup, pid)?;
        debug!(pid, "entered pool cgroup");
        Ok(())
    }

    fn create_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        let cgroup = self.ensure(&rel)?;
        let cpuset: &CpuSetController = cgroup
            .controller_of()
            .ok_or_else(|| no_controller("cpuset", self.root.join(&rel)))?;
        let mems = self.parent_mems()?;
        cpuset.set_mems(&mems).map_err(|err| {
            SandboxError::cgroups("write", self.root.join(&rel).join("cpuset.mems"), err)
        })?;
        self.limit(&rel, &cgroup, limits)?;
        debug!(slot = slot_id, cpus = ?limits.cpus, ram_bytes = limits.ram_bytes, "slot cgroup ready");
        Ok(())
    }

    fn relimit_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        self.limit(&rel, &self.hier.cgroup(&rel), limits)?;
        debug!(slot = slot_id, cpus = ?limits.cpus, ram_bytes = limits.ram_bytes, "slot cgroup re-limited");
        Ok(())
    }

    fn set_slot_cpus(&self, slot_id: &str, cpus: &[u32]) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        self.set_cpus(&rel, &self.hier.cgroup(&rel), cpus)?;
        debug!(slot = slot_id, cpus = ?cpus, "slot cgroup's CPUs rewritten");
        Ok(())
    }

    fn move_into_slot(&self, slot_id: &str, pid: u32) -> Result<(), SandboxError> {
        let rel = self.existing_slot(slot_id)?;
        self.join(&rel, &self.hier.cgroup(&rel), pid)
    }

    fn slot_processes(&self, slot_id: &str) -> Result<Vec<u32>, SandboxError> {
        self.hier.procs(&self.existing_slot(slot_id)?)
    }

    fn kill_slot(&self, slot_id: &str) -> Result<usize, SandboxError> {
        let rel = self.slot(slot_id)?;
        if !self.hier.exists(&rel) {
            return Ok(0);
        }
        kill_until_empty(
            &self.root.join(&rel),
            || self.hier.procs(&rel),
            |pids| self.kill_round(&rel, pids),
        )
    }

    fn oom_kills(&self, slot_id: &str) -> Result<u64, SandboxError> {
        let rel = self.existing_slot(slot_id)?;
        let content = files::read(&self.root.join(&rel).join("memory.events"))?;
        Ok(files::keyed_value(&content, "oom_kill").unwrap_or(0))
    }

    fn remove_slot(&self, slot_id: &str) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        self.kill_slot(slot_id)?;
        self.hier.delete(&rel)?;
        Ok(())
    }

    fn remove_all(&self) -> Result<CleanupReport, SandboxError> {
        let report = self
            .hier
            .remove_all(&self.parent, |below, pids| self.sweep_round(below, pids))?;
        info!(parent = %self.parent.display(), "cgroups removed");
        Ok(report)
    }

    fn cleanup_stale(&self) -> Result<CleanupReport, SandboxError> {
        let report = self
            .hier
            .cleanup_below(&self.parent, |below, pids| self.sweep_round(below, pids))?;
        if report != CleanupReport::default() {
            info!(
                cgroups_removed = report.cgroups_removed,
                processes_killed = report.processes_killed,
                "removed stale cgroups"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
#[path = "v2_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "v2_real_tests.rs"]
mod real_tests;
