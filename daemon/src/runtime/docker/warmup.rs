//! When warm containers may be started: only on CPUs that no slot holds, unless a job waits.
//!
//! Starting a container costs the engine (dockerd, containerd, runc, the shim) and the new
//! interpreter a few hundred milliseconds of CPU, far more than a zygote fork. Replacing the
//! containers a job has just taken while that job runs on every CPU steals that CPU from the
//! job (measured on 2 CPUs: a 200,000-input trivial job went from ~0.35 s to ~0.65 s, with
//! 100-170 ms stalls while replacements started). So warm-up starts are limited to the CPUs
//! of the node that no docker slot holds; starts that a waiting acquirer needs are never held
//! back (see `Pool::claim_deficit_within`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// CPUs held by docker slots, shared by the node's main runtime and its environment runtimes
/// (they clone the same options), so none warms up on a CPU another one's job uses.
#[derive(Debug, Clone, Default)]
pub struct CpusInUse(Arc<AtomicUsize>);

impl CpusInUse {
    /// A slot took `cpus` CPUs.
    pub fn hold(&self, cpus: usize) {
        self.0.fetch_add(cpus, Ordering::SeqCst);
    }

    /// A slot gave back `cpus` CPUs.
    pub fn release(&self, cpus: usize) {
        // Saturating: a release never outnumbers its hold, but a wrap would stop all warm-up.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                Some(held.saturating_sub(cpus))
            });
    }

    /// How many warm-up starts may run at once on a node of `total` CPUs.
    pub fn warmup_budget(&self, total: usize) -> u32 {
        let free = total.saturating_sub(self.0.load(Ordering::SeqCst));
        u32::try_from(free).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_cpus_no_slot_holds() {
        let used = CpusInUse::default();
        assert_eq!(used.warmup_budget(4), 4);
        used.hold(1);
        used.clone().hold(2);
        assert_eq!(used.warmup_budget(4), 1, "clones share one count");
        used.hold(1);
        assert_eq!(used.warmup_budget(4), 0);
        used.release(3);
        assert_eq!(used.warmup_budget(4), 3);
        used.release(5);
        assert_eq!(used.warmup_budget(4), 4, "never below zero");
    }
}
