//! Idle workers' home cgroups and scratch spaces, and their reuse. A worker that joins the
//! pool moves into a home of its own (named `h<daemon pid>-<n>`, cgroup `slot-h<…>`, scratch
//! `<state>/scratch/h<…>`: a restarted daemon never makes a name an earlier run used); a job
//! re-limits the home instead of moving the worker. When the
//! worker leaves (its job ended, or it died), the home is emptied and kept for the next worker
//! that joins: a job then costs no cgroup mkdir and rmdir and no tmpfs mount and unmount, and a
//! node that runs many short jobs does not pile up removed memory cgroups that the kernel
//! keeps while pages are still charged to them (cgroup v1).
//!
//! An emptied home gets the node's CPUs back but keeps the memory limit of the job that used
//! it last (an idle worker needs a few MiB of any limit): the next job only rewrites the
//! limits that differ, which for a job of the same size is one file instead of four.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use fleetmap_sandbox::{SlotCgroups, SlotLimits};
use tracing::{debug, warn};

use super::scratch::ScratchDirs;

/// The number of the next home, shared by every runtime of the daemon: an environment's
/// runtime shares the cgroup parent and the scratch root with the main one.
static NEXT_HOME: AtomicU64 = AtomicU64::new(1);

/// An idle worker's home.
#[derive(Debug)]
pub(crate) struct Home {
    /// Its slot-cgroup name (`h<daemon pid>-<n>`).
    pub name: String,
    /// Its OOM-kill count when the worker moved in, read then so that a job taking the worker
    /// does not read it on its way to the first input.
    pub oom_kills: u64,
    /// Whether it has a scratch (named like the cgroup), so that a job only resizes it
    /// instead of mounting one.
    pub scratch: bool,
}

/// An emptied home waiting for a worker.
#[derive(Debug)]
struct Vacant {
    name: String,
    scratch: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Homes of idle workers, by pid.
    occupied: HashMap<u32, Home>,
    /// Emptied homes (the node's CPUs, the last job's memory limit), most recently emptied
    /// last.
    vacant: Vec<Vacant>,
    /// The memory limit each home's cgroup has now, whoever holds it (an idle worker, a job,
    /// or nobody); a home whose limit is not known for sure is not listed.
    memory_limits: HashMap<String, u64>,
}

/// The homes of one process runtime. A std `Mutex`: map operations only, never held across
/// an await or a cgroup write.
#[derive(Debug)]
pub(crate) struct Homes {
    state: Mutex<State>,
    /// Most vacant homes kept (the pool's target: each job's worker is replaced by one).
    keep: usize,
}

impl Homes {
    /// Homes that keep at most `keep` vacant ones.
    pub fn new(keep: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            keep,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the slot-cgroup `name` is a home (and not a slot's own or a spare).
    pub fn is_home(name: &str) -> bool {
        let number = |n: &str| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
        name.strip_prefix('h')
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, n)| number(pid) && number(n))
    }

    /// The home of idle worker `pid`, taken out (a job takes the worker).
    pub fn take(&self, pid: u32) -> Option<Home> {
        self.lock().occupied.remove(&pid)
    }

    /// Limits home `name`, taken by a job, to `limits`: its CPU list always (an emptied home
    /// has the node's), its memory limit only when it differs from the one the home has
    /// (blocking: cgroup writes).
    pub fn fit(
        &self,
        cgroups: &dyn SlotCgroups,
        name: &str,
        limits: &SlotLimits,
    ) -> Result<(), fleetmap_sandbox::SandboxError> {
        let memory = self.lock().memory_limits.get(name).copied();
        if memory == Some(limits.ram_bytes) {
            return cgroups.set_slot_cpus(name, &limits.cpus);
        }
        self.set_memory_limit(name, None);
        cgroups.relimit_slot(name, limits)?;
        self.set_memory_limit(name, Some(limits.ram_bytes));
        Ok(())
    }

    /// Records that home `name`'s cgroup now has the memory limit `ram_bytes` (`None`: it
    /// may not, e.g. while or after a write).
    fn set_memory_limit(&self, name: &str, ram_bytes: Option<u64>) {
        let mut state = self.lock();
        match ram_bytes {
            Some(ram_bytes) => state.memory_limits.insert(name.to_owned(), ram_bytes),
            None => state.memory_limits.remove(name),
        };
    }

    /// The names of every home, occupied or vacant, taken out (the runtime stops).
    pub fn drain(&self) -> Vec<String> {
        let mut state = self.lock();
        state.memory_limits.clear();
        let vacant = std::mem::take(&mut state.vacant)
            .into_iter()
            .map(|v| v.name);
        state
            .occupied
            .drain()
            .map(|(_, home)| home.name)
            .chain(vacant)
            .collect()
    }

    /// How many emptied homes wait for a worker.
    pub fn vacant(&self) -> usize {
        self.lock().vacant.len()
    }

    /// Moves worker `pid`, which just said HELLO, into a vacant home, else into a new one
    /// limited to `limits` (blocking: cgroup writes). False when it stays in the pool cgroup
    /// (it is then moved at job time).
    pub fn settle(
        &self,
        cgroups: &dyn SlotCgroups,
        scratch: &ScratchDirs,
        pid: u32,
        limits: &SlotLimits,
    ) -> bool {
        let vacant = self.lock().vacant.pop();
        let reused = vacant.is_some();
        let (name, has_scratch) = match vacant {
            Some(Vacant { name, scratch }) => (name, scratch),
            None => {
                let n = NEXT_HOME.fetch_add(1, Ordering::Relaxed);
                let name = format!("h{}-{n}", std::process::id());
                if let Err(err) = cgroups.create_slot(&name, limits) {
                    warn!(pid, cause = %err, "cannot give an idle worker its own cgroup");
                    let _ = cgroups.remove_slot(&name);
                    return false;
                }
                self.set_memory_limit(&name, Some(limits.ram_bytes));
                (name, false)
            }
        };
        if let Err(err) = cgroups.move_into_slot(&name, pid) {
            warn!(pid, home = %name, cause = %err, "cannot move an idle worker into its home cgroup");
            self.remove(cgroups, scratch, &name);
            return false;
        }
        let oom_kills = cgroups.oom_kills(&name).unwrap_or(0);
        let scratch = has_scratch
            || match scratch.prepare_home(&name) {
                Ok(()) => true,
                Err(err) => {
                    warn!(pid, cause = %err, "cannot prepare an idle worker's scratch; its job makes one");
                    false
                }
            };
        debug!(pid, home = %name, reused, "worker settled in its home");
        self.lock().occupied.insert(
            pid,
            Home {
                name,
                oom_kills,
                scratch,
            },
        );
        true
    }

    /// The worker of home `name` has left: its processes are killed, its scratch emptied and
    /// its CPUs put back to `limits`' (its memory limit stays the last job's), and it waits
    /// for the next worker; a home that cannot be reset, or one more than are kept, is removed
    /// (blocking: cgroup writes).
    pub fn vacate(
        &self,
        cgroups: &dyn SlotCgroups,
        scratch: &ScratchDirs,
        name: &str,
        limits: &SlotLimits,
    ) {
        if self.vacant() < self.keep {
            match Self::reset(cgroups, scratch, name, limits) {
                Ok(has_scratch) => {
                    let mut state = self.lock();
                    if state.vacant.len() < self.keep {
                        state.vacant.push(Vacant {
                            name: name.to_owned(),
                            scratch: has_scratch,
                        });
                        return;
                    }
                }
                Err(err) => debug!(home = name, cause = %err, "cannot reset a home; removing it"),
            }
        }
        self.remove(cgroups, scratch, name);
    }

    /// Removes home `name`: its scratch, its cgroup, what is known of its limits (blocking).
    pub fn remove(&self, cgroups: &dyn SlotCgroups, scratch: &ScratchDirs, name: &str) {
        self.set_memory_limit(name, None);
        scratch.remove(name);
        if let Err(err) = cgroups.remove_slot(name) {
            warn!(home = name, cause = %err, "cannot remove a home cgroup");
        }
    }

    /// Empties home `name` for another worker; returns whether its scratch was kept.
    fn reset(
        cgroups: &dyn SlotCgroups,
        scratch: &ScratchDirs,
        name: &str,
        limits: &SlotLimits,
    ) -> Result<bool, fleetmap_sandbox::SandboxError> {
        cgroups.kill_slot(name)?;
        cgroups.set_slot_cpus(name, &limits.cpus)?;
        Ok(match scratch.reset_home(name) {
            Ok(kept) => kept,
            Err(err) => {
                debug!(home = name, cause = %err, "cannot empty a home's scratch; the next worker gets a new one");
                scratch.remove(name);
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homes_are_named_h_the_daemon_pid_and_a_number() {
        assert!(Homes::is_home("h812-1"));
        assert!(Homes::is_home("h812-204"));
        assert!(!Homes::is_home("h812"));
        assert!(!Homes::is_home("h-1"));
        assert!(!Homes::is_home("h812-"));
        assert!(!Homes::is_home("s3"));
        assert!(!Homes::is_home("x7"));
        assert!(!Homes::is_home("hx-1"));
    }
}
