//! No cgroups: a slot is a CPU affinity (`sched_setaffinity`) and a list of pids.
//!
//! Memory is not enforced and OOM kills cannot be told apart (`oom_kills` is always 0).
//! Only the processes moved in are tracked, not what they fork later. Each tracked pid is
//! remembered with its start time from `<proc>/<pid>/stat`, so a pid the kernel has since
//! given to another process is never signalled.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tracing::debug;

use super::files;
use super::kill::{kill_until_empty, sigkill_each};
use super::{CgroupFlavor, CleanupReport, SlotCgroups, SlotLimits};
use crate::error::SandboxError;

/// Slots enforced by CPU affinity only.
#[derive(Debug)]
pub struct NoneCgroups {
    proc_root: PathBuf,
    /// Slot id → its CPUs and tracked processes. Plain map operations only under the lock;
    /// nothing awaits inside it.
    slots: Mutex<HashMap<String, NoneSlot>>,
}

#[derive(Debug, Default)]
struct NoneSlot {
    cpus: Vec<u32>,
    processes: Vec<Tracked>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tracked {
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat` when it was moved in.
    start_time: u64,
}

impl NoneCgroups {
    /// No slots yet; processes are looked up under `proc_root` (`/proc` on a real host).
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NoneSlot>> {
        // Every update is a single map operation, so a poisoned lock still guards a
        // consistent map.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `(state, start time)` of a process from `<proc>/<pid>/stat`, `None` if it is gone.
    fn stat(&self, pid: u32) -> Option<(char, u64)> {
        let text = fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
        // The command name (field 2) may contain spaces and parentheses: split after it.
        let rest = &text[text.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        // `rest` starts at field 3 (state); start time is field 22.
        let start_time = fields.nth(18)?.parse().ok()?;
        Some((state, start_time))
    }

    /// Whether the tracked process still runs (not gone, not a zombie, not a reused pid).
    fn alive(&self, tracked: Tracked) -> bool {
        matches!(self.stat(tracked.pid), Some((state, start)) if start == tracked.start_time && state != 'Z' && state != 'X')
    }

    fn live_pids(&self, slot_id: &str) -> Option<Vec<u32>> {
        let processes = self.lock().get(slot_id)?.processes.clone();
        Some(
            processes
                .into_iter()
                .filter(|&t| self.alive(t))
                .map(|t| t.pid)
                .collect(),
        )
    }

    /// Sets the affinity of every thread of `pid` (a thread's affinity is its own).
    fn pin(&self, pid: u32, cpus: &[u32]) -> Result<(), SandboxError> {
        let mut set = CpuSet::new();
        for &cpu in cpus {
            set.set(cpu as usize).map_err(|errno| {
                SandboxError::io(
                    "sched_setaffinity",
                    self.proc_root.join(pid.to_string()),
                    std::io::Error::from(errno),
                )
            })?;
        }
        let task_dir = self.proc_root.join(pid.to_string()).join("task");
        let mut tids: Vec<u32> = fs::read_dir(&task_dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if tids.is_empty() {
            tids.push(pid);
        }
        for tid in tids {
            let raw = i32::try_from(tid).map_err(|_| {
                SandboxError::io(
                    "sched_setaffinity",
                    &task_dir,
                    std::io::Error::other("pid out of range"),
                )
            })?;
            sched_setaffinity(Pid::from_raw(raw), &set).map_err(|errno| {
                SandboxError::io(
                    "sched_setaffinity",
                    task_dir.join(tid.to_string()),
                    std::io::Error::from(errno),
                )
            })?;
        }
        Ok(())
    }
}

impl SlotCgroups for NoneCgroups {
    fn flavor(&self) -> CgroupFlavor {
        CgroupFlavor::None
    }

    fn enter_pool(&self, pid: u32) -> Result<(), SandboxError> {
        debug!(pid, "no cgroups: the pool is not a cgroup");
        Ok(())
    }

    fn create_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError> {
        files::slot_dir(slot_id)?;
        self.lock().entry(slot_id.to_owned()).or_default().cpus = limits.cpus.clone();
        Ok(())
    }

    fn set_slot_cpus(&self, slot_id: &str, cpus: &[u32]) -> Result<(), SandboxError> {
        files::slot_dir(slot_id)?;
        let mut slots = self.lock();
        let slot = slots
            .get_mut(slot_id)
            .ok_or_else(|| SandboxError::UnknownSlot(slot_id.to_owned()))?;
        slot.cpus = cpus.to_vec();
        Ok(())
    }

    fn move_into_slot(&self, slot_id: &str, pid: u32) -> Result<(), SandboxError> {
        let cpus = self
            .lock()
            .get(slot_id)
            .map(|slot| slot.cpus.clone())
            .ok_or_else(|| SandboxError::UnknownSlot(slot_id.to_owned()))?;
        let Some((_, start_time)) = self.stat(pid) else {
            return Err(SandboxError::io(
                "read",
                self.proc_root.join(pid.to_string()).join("stat"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        };
        self.pin(pid, &cpus)?;
        let mut slots = self.lock();
        let slot = slots
            .get_mut(slot_id)
            .ok_or_else(|| SandboxError::UnknownSlot(slot_id.to_owned()))?;
        let tracked = Tracked { pid, start_time };
        if !slot.processes.contains(&tracked) {
            slot.processes.push(tracked);
        }
        Ok(())
    }

    fn slot_processes(&self, slot_id: &str) -> Result<Vec<u32>, SandboxError> {
        self.live_pids(slot_id)
            .ok_or_else(|| SandboxError::UnknownSlot(slot_id.to_owned()))
    }

    fn kill_slot(&self, slot_id: &str) -> Result<usize, SandboxError> {
        let Some(_) = self.live_pids(slot_id) else {
            return Ok(0);
        };
        let killed = kill_until_empty(
            Path::new(slot_id),
            || Ok(self.live_pids(slot_id).unwrap_or_default()),
            sigkill_each,
        )?;
        if let Some(slot) = self.lock().get_mut(slot_id) {
            slot.processes.clear();
        }
        Ok(killed)
    }

    fn oom_kills(&self, slot_id: &str) -> Result<u64, SandboxError> {
        if self.lock().contains_key(slot_id) {
            Ok(0)
        } else {
            Err(SandboxError::UnknownSlot(slot_id.to_owned()))
        }
    }

    fn remove_slot(&self, slot_id: &str) -> Result<(), SandboxError> {
        self.kill_slot(slot_id)?;
        self.lock().remove(slot_id);
        Ok(())
    }

    fn cleanup_stale(&self) -> Result<CleanupReport, SandboxError> {
        // Nothing outlives a daemon here except processes it no longer knows; what this
        // instance tracks is killed and forgotten.
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let mut report = CleanupReport::default();
        for id in ids {
            report.processes_killed += self.kill_slot(&id)?;
            self.lock().remove(&id);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::DEFAULT_PROC_ROOT;

    fn status_field(pid: u32, key: &str) -> String {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
            .expect(key)
    }

    #[test]
    fn affinity_tracking_and_kill() {
        let cg = NoneCgroups::new(Path::new(DEFAULT_PROC_ROOT));
        assert_eq!(cg.flavor(), CgroupFlavor::None);
        let mut child = Command::new("sleep")
            .arg("100")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn");
        let pid = child.id();
        assert!(matches!(
            cg.move_into_slot("s1", pid),
            Err(SandboxError::UnknownSlot(_))
        ));
        let limits = SlotLimits {
            cpus: vec![0],
            ram_bytes: 1 << 30,
        };
        assert!(matches!(
            cg.set_slot_cpus("s1", &[0]),
            Err(SandboxError::UnknownSlot(_))
        ));
        cg.create_slot("s1", &limits).expect("create");
        cg.set_slot_cpus("s1", &[0])
            .expect("the CPUs later moves get");
        cg.enter_pool(pid).expect("pool is a no-op");
        cg.move_into_slot("s1", pid).expect("move");
        assert_eq!(status_field(pid, "Cpus_allowed_list:"), "0");
        assert_eq!(cg.slot_processes("s1").expect("procs"), vec![pid]);
        assert_eq!(cg.oom_kills("s1").expect("oom"), 0);
        let reaper = std::thread::spawn(move || child.wait().expect("wait"));
        assert_eq!(cg.kill_slot("s1").expect("kill"), 1);
        assert_eq!(reaper.join().expect("reaper").signal(), Some(9));
        assert!(cg.slot_processes("s1").expect("procs").is_empty());
        cg.remove_slot("s1").expect("remove");
        cg.remove_slot("s1").expect("remove twice");
        assert!(cg.oom_kills("s1").is_err());
        assert!(cg.create_slot("../x", &limits).is_err());
    }

    #[test]
    fn zombies_and_reused_pids_are_not_alive() {
        let cg = NoneCgroups::new(Path::new(DEFAULT_PROC_ROOT));
        let mut child = Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let (_, start_time) = cg.stat(pid).expect("stat while it may still run");
        // Let it exit without reaping: a zombie is not alive.
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!cg.alive(Tracked { pid, start_time }));
        child.wait().expect("wait");
        let me = std::process::id();
        let (_, my_start) = cg.stat(me).expect("own stat");
        assert!(cg.alive(Tracked {
            pid: me,
            start_time: my_start
        }));
        assert!(!cg.alive(Tracked {
            pid: me,
            start_time: my_start + 1
        }));
    }

    #[test]
    fn cleanup_kills_tracked_processes() {
        let cg = NoneCgroups::new(Path::new(DEFAULT_PROC_ROOT));
        let mut child = Command::new("sleep").arg("100").spawn().expect("spawn");
        let all_cpus = crate::Inventory::detect().expect("inventory").cpus;
        let limits = SlotLimits {
            cpus: all_cpus,
            ram_bytes: 1 << 30,
        };
        cg.create_slot("s7", &limits).expect("create");
        cg.move_into_slot("s7", child.id()).expect("move");
        let reaper = std::thread::spawn(move || child.wait().expect("wait"));
        let report = cg.cleanup_stale().expect("cleanup");
        assert_eq!(report.processes_killed, 1);
        assert_eq!(reaper.join().expect("reaper").signal(), Some(9));
        assert!(cg.slot_processes("s7").is_err());
    }

    #[test]
    fn stat_parses_odd_command_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc_dir = dir.path().join("42");
        fs::create_dir_all(&proc_dir).expect("mkdir");
        let fields: Vec<String> = (4..=52).map(|n| n.to_string()).collect();
        fs::write(
            proc_dir.join("stat"),
            format!("42 (we) ird (name) S {}\n", fields.join(" ")),
        )
        .expect("write");
        let cg = NoneCgroups::new(dir.path());
        // Field 22 is the 19th number after the state (fields 4..=21 come first).
        assert_eq!(cg.stat(42), Some(('S', 22)));
        assert_eq!(cg.stat(43), None);
    }
}
