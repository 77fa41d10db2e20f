//! Who is alive among the zygote's children: one [`ExitWatch`] per worker pid, filled in when
//! the zygote reports the child's exit.
//!
//! The zygote's `spawned`/`exited` lines and the worker's HELLO on the socket race each other,
//! so an entry is created by whichever comes first and removed by `exited`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::runtime::{ExitStatus, ExitWatch};

#[derive(Debug)]
struct Entry {
    watch: ExitWatch,
    helloed: bool,
}

/// Exit watches by pid. A std `Mutex`: held for a map operation only, never across an await.
#[derive(Debug, Default)]
pub struct Exits {
    entries: Mutex<HashMap<u32, Entry>>,
}

impl Exits {
    /// The watch for `pid`, created if the zygote's `spawned` line comes first.
    pub fn spawned(&self, pid: u32) -> ExitWatch {
        self.lock()
            .entry(pid)
            .or_insert_with(|| Entry {
                watch: ExitWatch::new(),
                helloed: false,
            })
            .watch
            .clone()
    }

    /// The watch for `pid` after its HELLO, marking it as one that reached the pool.
    pub fn helloed(&self, pid: u32) -> ExitWatch {
        let mut entries = self.lock();
        let entry = entries.entry(pid).or_insert_with(|| Entry {
            watch: ExitWatch::new(),
            helloed: false,
        });
        entry.helloed = true;
        entry.watch.clone()
    }

    /// Records `pid`'s end; returns whether that worker had sent HELLO (false also for a pid
    /// never seen).
    pub fn exited(&self, pid: u32, status: ExitStatus) -> bool {
        match self.lock().remove(&pid) {
            Some(entry) => {
                entry.watch.set(status);
                entry.helloed
            }
            None => false,
        }
    }

    /// Drops the entry of a worker the daemon gave up on, if it is still `watch`'s.
    pub fn forget(&self, pid: u32, watch: &ExitWatch) {
        let mut entries = self.lock();
        if entries.get(&pid).is_some_and(|e| e.watch.same(watch)) {
            entries.remove(&pid);
        }
    }

    /// Every pid not yet reported dead (for the final kill at shutdown).
    pub fn live_pids(&self) -> Vec<u32> {
        self.lock().keys().copied().collect()
    }

    /// Drops everything (the zygote died: its children are orphans that will be killed).
    pub fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_and_spawned_share_one_watch_whatever_the_order() {
        let exits = Exits::default();
        let from_hello = exits.helloed(7);
        let from_spawn = exits.spawned(7);
        assert!(from_hello.same(&from_spawn));
        let status = ExitStatus {
            code: Some(3),
            signal: None,
        };
        assert!(exits.exited(7, status));
        assert_eq!(from_hello.get(), Some(status));
        assert!(!exits.exited(8, status), "unknown pid never helloed");
        assert!(exits.live_pids().is_empty());
    }

    #[test]
    fn forget_only_removes_its_own_entry() {
        let exits = Exits::default();
        let old = exits.spawned(9);
        exits.exited(
            9,
            ExitStatus {
                code: Some(0),
                signal: None,
            },
        );
        let new = exits.spawned(9);
        exits.forget(9, &old);
        assert_eq!(exits.live_pids(), vec![9]);
        exits.forget(9, &new);
        assert!(exits.live_pids().is_empty());
    }
}
