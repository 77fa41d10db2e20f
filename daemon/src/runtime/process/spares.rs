//! Slot cgroups prepared ahead of need. Creating and limiting a slot cgroup costs a few
//! hundred microseconds on cgroup v1, on the path of every new instance; so after a worker is
//! placed in a slot of some shape (CPU ids and RAM), an empty cgroup of the same shape is
//! created in the background, and the next slot of that shape (the allocator hands out the
//! lowest free CPUs, so a repeated job shape gets the same ones) only moves its worker in.
//!
//! A slot's cgroup is then named after the spare (`slot-x7`) rather than the slot (`slot-s9`):
//! this map translates slot ids to cgroup names.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use fleetmap_sandbox::SlotLimits;

/// Most spares kept ready at once.
pub const MAX_SPARES: usize = 4;

#[derive(Debug, Default)]
struct State {
    /// Spares ready, oldest first.
    ready: VecDeque<(SlotLimits, String)>,
    /// Shapes whose spare is being created.
    pending: Vec<SlotLimits>,
    /// Cgroup name of each slot that uses a spare.
    names: HashMap<String, String>,
    next: u64,
}

/// Spare cgroups and the slot-to-cgroup names. A std `Mutex`: a few map operations per call,
/// never held across an await or a cgroup write.
#[derive(Debug, Default)]
pub struct Spares {
    state: Mutex<State>,
}

/// A spare to create now, and one to remove to make room for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Planned {
    /// Name of the spare to create.
    pub name: String,
    /// Name of an old spare to remove first, if the ready set is full.
    pub evict: Option<String>,
}

impl Spares {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives `slot_id` a ready spare of exactly `limits`, if there is one; returns its name.
    pub fn take(&self, slot_id: &str, limits: &SlotLimits) -> Option<String> {
        let mut state = self.lock();
        let at = state.ready.iter().position(|(l, _)| l == limits)?;
        let (_, name) = state.ready.remove(at)?;
        state.names.insert(slot_id.to_string(), name.clone());
        Some(name)
    }

    /// Records that `slot_id` uses the cgroup `name` (a worker's home cgroup).
    pub fn bind(&self, slot_id: &str, name: String) {
        self.lock().names.insert(slot_id.to_string(), name);
    }

    /// The cgroup name of `slot_id`.
    pub fn name(&self, slot_id: &str) -> String {
        self.lock()
            .names
            .get(slot_id)
            .cloned()
            .unwrap_or_else(|| slot_id.to_string())
    }

    /// Forgets the cgroup `slot_id` was given (a spare or a worker's home), if any: the slot is
    /// about to get another worker's.
    pub fn rebind(&self, slot_id: &str) -> Option<String> {
        self.lock().names.remove(slot_id)
    }

    /// Forgets `slot_id`; returns its cgroup name.
    pub fn unbind(&self, slot_id: &str) -> String {
        self.lock()
            .names
            .remove(slot_id)
            .unwrap_or_else(|| slot_id.to_string())
    }

    /// A spare of `limits` to create, unless one is ready or on its way.
    pub fn plan(&self, limits: &SlotLimits) -> Option<Planned> {
        let mut state = self.lock();
        if state.pending.contains(limits) || state.ready.iter().any(|(l, _)| l == limits) {
            return None;
        }
        let evict = if state.ready.len() + state.pending.len() >= MAX_SPARES {
            Some(state.ready.pop_front()?.1)
        } else {
            None
        };
        state.next += 1;
        let name = format!("x{}", state.next);
        state.pending.push(limits.clone());
        Some(Planned { name, evict })
    }

    /// The planned spare of `limits` exists now (`created`) or could not be made.
    pub fn done(&self, limits: &SlotLimits, name: String, created: bool) {
        let mut state = self.lock();
        if let Some(at) = state.pending.iter().position(|l| l == limits) {
            state.pending.remove(at);
        }
        if created {
            state.ready.push_back((limits.clone(), name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cpu: u32, gb: u64) -> SlotLimits {
        SlotLimits {
            cpus: vec![cpu],
            ram_bytes: gb << 30,
        }
    }

    #[test]
    fn a_spare_serves_the_next_slot_of_its_shape_only() {
        let spares = Spares::default();
        assert_eq!(spares.take("s1", &limits(0, 1)), None);
        assert_eq!(spares.name("s1"), "s1");
        let plan = spares.plan(&limits(0, 1)).expect("nothing ready");
        assert_eq!(spares.plan(&limits(0, 1)), None, "already on its way");
        spares.done(&limits(0, 1), plan.name.clone(), true);
        assert_eq!(spares.take("s2", &limits(1, 1)), None, "other CPUs");
        assert_eq!(spares.take("s2", &limits(0, 2)), None, "other RAM");
        assert_eq!(spares.take("s2", &limits(0, 1)), Some(plan.name.clone()));
        assert_eq!(spares.name("s2"), plan.name);
        assert_eq!(spares.unbind("s2"), plan.name);
        assert_eq!(spares.name("s2"), "s2");
        assert_eq!(spares.take("s3", &limits(0, 1)), None, "used up");
    }

    #[test]
    fn the_oldest_spare_makes_room_and_failures_are_forgotten() {
        let spares = Spares::default();
        let mut names = Vec::new();
        for cpu in 0..MAX_SPARES as u32 {
            let plan = spares.plan(&limits(cpu, 1)).expect("room");
            assert_eq!(plan.evict, None);
            spares.done(&limits(cpu, 1), plan.name.clone(), true);
            names.push(plan.name);
        }
        let plan = spares.plan(&limits(9, 1)).expect("evicts");
        assert_eq!(plan.evict.as_ref(), Some(&names[0]));
        spares.done(&limits(9, 1), plan.name, false);
        assert!(
            spares.plan(&limits(9, 1)).is_some(),
            "a failed spare can be planned again"
        );
    }
}
