//! TEST ONLY (`--test-only-simulated-slots`): a daemon advertising more one-CPU slots than the
//! machine has, for coordinator scale benchmarks. The slot allocator hands out simulated CPU
//! ids `0..N`; this adapter maps each onto a real CPU (`id mod real CPUs`) before the slot's
//! affinity or cpuset is applied, so instances share the real CPUs. Never for real work.

use std::sync::Arc;

use fleetmap_sandbox::{CgroupFlavor, CleanupReport, SandboxError, SlotCgroups, SlotLimits};

/// [`SlotCgroups`] with simulated CPU ids mapped onto real ones.
#[derive(Debug)]
pub struct SimulatedCpus {
    inner: Arc<dyn SlotCgroups>,
    real: Vec<u32>,
}

impl SimulatedCpus {
    /// Wraps `inner`; `real` are the machine's usable CPU ids (at least one).
    pub fn new(inner: Arc<dyn SlotCgroups>, real: Vec<u32>) -> Self {
        let real = if real.is_empty() { vec![0] } else { real };
        Self { inner, real }
    }

    fn map(&self, limits: &SlotLimits) -> SlotLimits {
        let mut cpus: Vec<u32> = limits
            .cpus
            .iter()
            .map(|id| self.real[*id as usize % self.real.len()])
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        SlotLimits {
            cpus,
            ram_bytes: limits.ram_bytes,
        }
    }
}

impl SlotCgroups for SimulatedCpus {
    fn flavor(&self) -> CgroupFlavor {
        self.inner.flavor()
    }

    fn enter_pool(&self, pid: u32) -> Result<(), SandboxError> {
        self.inner.enter_pool(pid)
    }

    fn create_slot(&self, slot_id: &str, limits: &SlotLimits) -> Result<(), SandboxError> {
        self.inner.create_slot(slot_id, &self.map(limits))
    }

    fn set_slot_cpus(&self, slot_id: &str, cpus: &[u32]) -> Result<(), SandboxError> {
        let mapped = self.map(&SlotLimits {
            cpus: cpus.to_vec(),
            ram_bytes: 0,
        });
        self.inner.set_slot_cpus(slot_id, &mapped.cpus)
    }

    fn move_into_slot(&self, slot_id: &str, pid: u32) -> Result<(), SandboxError> {
        self.inner.move_into_slot(slot_id, pid)
    }

    fn slot_processes(&self, slot_id: &str) -> Result<Vec<u32>, SandboxError> {
        self.inner.slot_processes(slot_id)
    }

    fn kill_slot(&self, slot_id: &str) -> Result<usize, SandboxError> {
        self.inner.kill_slot(slot_id)
    }

    fn oom_kills(&self, slot_id: &str) -> Result<u64, SandboxError> {
        self.inner.oom_kills(slot_id)
    }

    fn remove_slot(&self, slot_id: &str) -> Result<(), SandboxError> {
        self.inner.remove_slot(slot_id)
    }

    fn cleanup_stale(&self) -> Result<CleanupReport, SandboxError> {
        self.inner.cleanup_stale()
    }

    fn remove_all(&self) -> Result<CleanupReport, SandboxError> {
        self.inner.remove_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_ids_land_on_real_cpus() {
        let none = fleetmap_sandbox::detect(
            &fleetmap_sandbox::CgroupConfig {
                root: std::path::PathBuf::from("/nonexistent"),
                parent: "fleetmap/sim-test".into(),
            },
            fleetmap_sandbox::CgroupMode::Off,
        )
        .expect("off always works");
        let sim = SimulatedCpus::new(Arc::from(none), vec![2, 5]);
        let mapped = sim.map(&SlotLimits {
            cpus: vec![0, 1, 2, 7],
            ram_bytes: 1 << 30,
        });
        assert_eq!(mapped.cpus, vec![2, 5]);
        assert_eq!(mapped.ram_bytes, 1 << 30);
        assert_eq!(
            sim.map(&SlotLimits {
                cpus: vec![48],
                ram_bytes: 1
            })
            .cpus,
            vec![2]
        );
    }
}
