//! Cgroup v1: a `cpuset` and a `memory` cgroup per slot, in the legacy per-controller
//! hierarchies mounted at `<root>/cpuset` and `<root>/memory`; for GPU slots also a `devices`
//! cgroup at `<root>/devices` where that controller is mounted (see `devices.rs`).
//!
//! Everything lives at `<root>/<controller>/<parent>/…`, i.e. from the hierarchy's root,
//! not below the calling process's own cgroup. Cgroups are created, limited, joined and
//! removed through cgroups-rs on a rooted hierarchy (`hierarchy.rs`); the few reads where cgroups-rs would
//! hide a failure (process lists, `memory.oom_control`) are done directly.

use std::path::{Path, PathBuf};

use cgroups_rs::cpuset::CpuSetController;
use cgroups_rs::memory::MemController;
use cgroups_rs::{Cgroup, CgroupPid};
use tracing::{debug, info, warn};

use super::devices::{CharDevice, DevicesV1};
use super::files::{self, POOL_DIR};
use super::hierarchy::{no_controller, RootedHierarchy};
use super::kill::{kill_until_empty, sigkill_each};
use super::{CgroupConfig, CgroupFlavor, CleanupReport, SlotCgroups, SlotLimits};
use crate::error::SandboxError;

/// Slots as cgroup v1 cpuset + memory cgroups under `<root>/{cpuset,memory}/<parent>`.
#[derive(Debug)]
pub struct V1Cgroups {
    hier: RootedHierarchy,
    parent: PathBuf,
    /// The devices controller, when mounted under the root (GPU slots only).
    devices: Option<DevicesV1>,
    /// The parent's `cpuset.mems`, read once: every slot gets the same memory nodes.
    parent_mems: String,
    /// Whether swap is accounted (`memory.memsw.*` exists), checked once: a kernel-wide
    /// property.
    memsw: bool,
    /// The parent and its ancestors have CPUs and memory nodes (made so at construction).
    parent_ready: bool,
}

impl V1Cgroups {
    /// Checks that both hierarchies are mounted under `config.root` and creates `<parent>`
    /// in each (which also proves they are writable).
    pub fn new(config: &CgroupConfig) -> Result<Self, SandboxError> {
        files::check_parent(&config.parent)?;
        if config.root.to_str().is_none() {
            // cgroups-rs handles v1 paths as UTF-8 strings (and panics on others).
            return Err(SandboxError::Unsupported(format!(
                "cgroup root {} is not valid UTF-8",
                config.root.display()
            )));
        }
        for (controller, file) in [
            ("cpuset", "cpuset.cpus"),
            ("memory", "memory.limit_in_bytes"),
        ] {
            let probe = config.root.join(controller).join(file);
            if !probe.is_file() {
                return Err(SandboxError::Unsupported(format!(
                    "no cgroup v1 {controller} hierarchy: {} is missing",
                    probe.display()
                )));
            }
        }
        let mut this = Self {
            hier: RootedHierarchy::v1(&config.root),
            parent: PathBuf::from(&config.parent),
            devices: DevicesV1::find(&config.root, Path::new(&config.parent)),
            parent_mems: String::new(),
            memsw: false,
            parent_ready: false,
        };
        this.ensure(&this.parent)?;
        this.parent_ready = true;
        this.parent_mems = files::read(&this.hier.cpuset_dir(&this.parent).join("cpuset.mems"))?
            .trim()
            .to_owned();
        this.memsw = this
            .hier
            .memory_dir(&this.parent)
            .join("memory.memsw.limit_in_bytes")
            .is_file();
        info!(root = %config.root.display(), parent = %config.parent, "cgroup v1 parent ready");
        Ok(this)
    }

    fn slot(&self, slot_id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.parent.join(files::slot_dir(slot_id)?))
    }

    /// An existing slot's cgroup path, or `UnknownSlot`.
    fn existing_slot(&self, slot_id: &str) -> Result<PathBuf, SandboxError> {
        let rel = self.slot(slot_id)?;
        if self.hier.exists(&rel) {
            Ok(rel)
        } else {
            Err(SandboxError::UnknownSlot(slot_id.to_owned()))
        }
    }

    /// Creates the cgroup at `rel` in both hierarchies (idempotent) and makes sure it and
    /// every ancestor up to the hierarchy root has CPUs and memory nodes: a new v1 cpuset
    /// starts with none, and a process cannot join an empty cpuset.
    fn ensure(&self, rel: &Path) -> Result<Cgroup, SandboxError> {
        let cgroup = self.hier.cgroup(rel);
        // cgroups-rs creates the directories and copies cpus/mems down from the nearest
        // ancestor that has them, but only logs failures; the checks below surface them.
        cgroup
            .create()
            .map_err(|err| SandboxError::cgroups("mkdir", self.hier.cpuset_dir(rel), err))?;
        for dir in self.hier.dirs(rel) {
            if !dir.is_dir() {
                files::mkdir_all(&dir)?;
            }
        }
        let mut prefix = PathBuf::new();
        for part in rel.components() {
            prefix.push(part);
            // The parent and its ancestors were made whole when this was constructed.
            if self.parent_ready && prefix != rel && self.parent.starts_with(&prefix) {
                continue;
            }
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let here = self.hier.cpuset_dir(&prefix).join(file);
                if files::read(&here)?.trim().is_empty() {
                    let above = prefix.parent().unwrap_or_else(|| Path::new(""));
                    let value = files::read(&self.hier.cpuset_dir(above).join(file))?;
                    self.set_cpuset(&prefix, file, value.trim())?;
                }
            }
        }
        Ok(cgroup)
    }

    /// Writes `cpuset.cpus` or `cpuset.mems` of `rel` through cgroups-rs.
    fn set_cpuset(&self, rel: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
        let cgroup = self.hier.cgroup(rel);
        let cpuset: &CpuSetController = cgroup
            .controller_of()
            .ok_or_else(|| no_controller("cpuset", self.hier.cpuset_dir(rel)))?;
        let result = if file == "cpuset.cpus" {
            cpuset.set_cpus(value)
        } else {
            cpuset.set_mems(value)
        };
        result.map_err(|err| {
            SandboxError::cgroups("write", self.hier.cpuset_dir(rel).join(file), err)
        })
    }

    /// Hard memory limit with swap off: `memory.memsw.limit_in_bytes` (memory + swap) equal
    /// to the limit where swap accounting exists, else swappiness 0 as the best available.
    fn set_memory(&self, rel: &Path, cgroup: &Cgroup, ram_bytes: u64) -> Result<(), SandboxError> {
        let dir = self.hier.memory_dir(rel);
        let memory: &MemController = cgroup
            .controller_of()
            .ok_or_else(|| no_controller("memory", dir.clone()))?;
        let limit = i64::try_from(ram_bytes).map_err(|_| {
            SandboxError::DoesNotFit(format!("memory limit of {ram_bytes} bytes is too large"))
        })?;
        let at = |file: &str| dir.join(file);
        let memsw = at("memory.memsw.limit_in_bytes");
        if self.memsw {
            // memsw must stay >= the limit at every step: lift it, set the limit, pin it.
            memory
                .set_memswap_limit(-1)
                .map_err(|err| SandboxError::cgroups("write", &memsw, err))?;
            memory
                .set_limit(limit)
                .map_err(|err| SandboxError::cgroups("write", at("memory.limit_in_bytes"), err))?;
            memory
                .set_memswap_limit(limit)
                .map_err(|err| SandboxError::cgroups("write", &memsw, err))?;
        } else {
            memory
                .set_limit(limit)
                .map_err(|err| SandboxError::cgroups("write", at("memory.limit_in_bytes"), err))?;
            if let Err(err) = memory.set_swappiness(0) {
                warn!(cgroup = %dir.display(), cause = %err, "no swap accounting and swappiness not settable; swap may be used");
            }
        }
        Ok(())
    }

    fn join(&self, rel: &Path, cgroup: &Cgroup, pid: u32) -> Result<(), SandboxError> {
        cgroup
            .add_task_by_tgid(CgroupPid::from(u64::from(pid)))
            .map_err(|err| {
                SandboxError::cgroups("write", self.hier.memory_dir(rel).join("cgroup.procs"), err)
            })
    }
}

impl SlotCgroups for V1Cgroups {
    fn flavor(&self) -> CgroupFlavor {
        CgroupFlavor::V1
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
        self.set_cpuset(&rel, "cpuset.mems", &self.parent_mems)?;
        self.set_cpuset(&rel, "cpuset.cpus", &files::format_cpu_list(&limits.cpus))?;
        self.set_memory(&rel, &cgroup, limits.ram_bytes)?;
        debug!(slot = slot_id, cpus = ?limits.cpus, ram_bytes = limits.ram_bytes, "slot cgroup ready");
        Ok(())
    }

    fn relimit_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        // cpuset.mems was set when the cgroup was made and stays the parent's.
        self.set_cpuset(&rel, "cpuset.cpus", &files::format_cpu_list(&limits.cpus))?;
        self.set_memory(&rel, &self.hier.cgroup(&rel), limits.ram_bytes)?;
        debug!(slot = slot_id, cpus = ?limits.cpus, ram_bytes = limits.ram_bytes, "slot cgroup re-limited");
        Ok(())
    }

    fn set_slot_cpus(&self, slot_id: &str, cpus: &[u32]) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        self.set_cpuset(&rel, "cpuset.cpus", &files::format_cpu_list(cpus))?;
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
        if !self.hier.dirs(&rel).iter().any(|dir| dir.is_dir()) {
            return Ok(0);
        }
        kill_until_empty(
            &self.hier.memory_dir(&rel),
            || self.hier.procs(&rel),
            sigkill_each,
        )
    }

    fn oom_kills(&self, slot_id: &str) -> Result<u64, SandboxError> {
        let rel = self.existing_slot(slot_id)?;
        let path = self.hier.memory_dir(&rel).join("memory.oom_control");
        let content = files::read(&path)?;
        // `oom_kill` exists since Linux 4.13; older kernels cannot tell, so 0.
        Ok(files::keyed_value(&content, "oom_kill").unwrap_or(0))
    }

    fn remove_slot(&self, slot_id: &str) -> Result<(), SandboxError> {
        let rel = self.slot(slot_id)?;
        self.kill_slot(slot_id)?;
        self.hier.delete(&rel)?;
        Ok(())
    }

    fn restrict_devices(
        &self,
        slot_id: &str,
        pid: u32,
        deny: &[CharDevice],
    ) -> Result<bool, SandboxError> {
        match &self.devices {
            Some(devices) => devices.restrict(slot_id, pid, deny).map(|()| true),
            None => Ok(false),
        }
    }

    fn remove_devices(&self, slot_id: &str) -> Result<(), SandboxError> {
        match &self.devices {
            Some(devices) => devices.remove(slot_id),
            None => Ok(()),
        }
    }

    fn remove_all(&self) -> Result<CleanupReport, SandboxError> {
        if let Some(devices) = &self.devices {
            devices.remove_below(true)?;
        }
        let report = self
            .hier
            .remove_all(&self.parent, |_, pids| sigkill_each(pids))?;
        info!(parent = %self.parent.display(), "cgroups removed");
        Ok(report)
    }

    fn cleanup_stale(&self) -> Result<CleanupReport, SandboxError> {
        if let Some(devices) = &self.devices {
            devices.remove_below(false)?;
        }
        let report = self
            .hier
            .cleanup_below(&self.parent, |_, pids| sigkill_each(pids))?;
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
