//! The slot allocator: CPU ids, RAM and (for `func_gpu` jobs) one whole GPU handed to
//! instances and taken back, all three together under one lock.
//!
//! CPU ids are exclusive: no two live slots share one. A slot takes the lowest free ids, so
//! the same sequence of calls always gives the same answer. GPUs are exclusive too: a GPU slot
//! takes the lowest-index free GPU whose model matches the request ([`agent_proto::gpu`]) and
//! is not in MIG mode; releasing the slot frees it. The GPU list is replaced whenever the
//! daemon re-reads its inventory ([`SlotAllocator::set_gpus`]); a held GPU that vanished from
//! it stays held until its slot is released, and is then forgotten. The allocator is shared as
//! `&self` (e.g. inside the daemon's `Arc` state) and locks a std `Mutex` inside; nothing
//! awaits or blocks while it is held, every method is a few map operations.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use agent_proto::{describe_models, GpuInfo, GpuModel};

use crate::cgroup::SlotLimits;
use crate::error::SandboxError;
use crate::gpu::GpuDevice;
use crate::inventory::Inventory;

/// What one instance needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRequest {
    /// Whole CPUs.
    pub cpus: u32,
    /// RAM in bytes.
    pub ram_bytes: u64,
    /// One whole GPU of this model, if any.
    pub gpu: Option<GpuModel>,
}

/// The GPU a slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotGpu {
    /// The GPU.
    pub device: GpuDevice,
    /// Minor numbers of the node's other NVIDIA GPUs (`/dev/nvidia<minor>`), which the slot's
    /// device cgroup denies where the host allows it.
    pub other_minors: Vec<u32>,
}

/// An allocated slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Unique id (also the cgroup name suffix): `s1`, `s2`, … never reused by one allocator.
    pub id: String,
    /// CPU ids given to it, ascending.
    pub cpus: Vec<u32>,
    /// RAM given to it, in bytes.
    pub ram_bytes: u64,
    /// The GPU given to it, for a `func_gpu` request.
    pub gpu: Option<SlotGpu>,
}

impl Slot {
    /// The cgroup limits that enforce this slot.
    pub fn limits(&self) -> SlotLimits {
        SlotLimits {
            cpus: self.cpus.clone(),
            ram_bytes: self.ram_bytes,
        }
    }
}

/// Hands out slots from an inventory.
#[derive(Debug)]
pub struct SlotAllocator {
    inventory: Inventory,
    /// Only plain map operations happen under this lock: nothing awaits or blocks inside.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    free_cpus: BTreeSet<u32>,
    free_ram_bytes: u64,
    slots: HashMap<String, Slot>,
    next_id: u64,
    /// The GPUs of the latest inventory read, by ascending index.
    gpus: Vec<GpuDevice>,
    /// UUID of each held GPU → the slot holding it.
    gpu_holders: HashMap<String, String>,
}

impl State {
    /// The lowest-index GPU that matches `model`, is assignable and is not held.
    fn free_gpu(&self, model: &GpuModel) -> Option<&GpuDevice> {
        self.gpus.iter().find(|gpu| {
            gpu.assignable()
                && model.matches(&gpu.name, gpu.memory_bytes)
                && !self.gpu_holders.contains_key(&gpu.uuid)
        })
    }

    fn free_gpu_count(&self, model: &GpuModel) -> u64 {
        self.gpus
            .iter()
            .filter(|gpu| {
                gpu.assignable()
                    && model.matches(&gpu.name, gpu.memory_bytes)
                    && !self.gpu_holders.contains_key(&gpu.uuid)
            })
            .count() as u64
    }
}

impl SlotAllocator {
    /// An allocator with everything in `inventory` free (duplicate CPU ids count once).
    pub fn new(inventory: Inventory) -> Self {
        let free_cpus: BTreeSet<u32> = inventory.cpus.iter().copied().collect();
        let inventory = Inventory {
            cpus: free_cpus.iter().copied().collect(),
            ram_bytes: inventory.ram_bytes,
        };
        let state = State {
            free_cpus,
            free_ram_bytes: inventory.ram_bytes,
            slots: HashMap::new(),
            next_id: 1,
            gpus: Vec::new(),
            gpu_holders: HashMap::new(),
        };
        Self {
            inventory,
            state: Mutex::new(state),
        }
    }

    /// What this allocator hands out.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// A slot for `request`: `Ok(None)` when it does not fit now (wait for a release),
    /// `Err(DoesNotFit)` when it can never fit on this machine.
    pub fn allocate(&self, request: &SlotRequest) -> Result<Option<Slot>, SandboxError> {
        self.fits_ever(request)?;
        let mut state = self.lock();
        let wanted = usize::try_from(request.cpus).unwrap_or(usize::MAX);
        if state.free_cpus.len() < wanted || state.free_ram_bytes < request.ram_bytes {
            return Ok(None);
        }
        let gpu = match &request.gpu {
            None => None,
            Some(model) => {
                let Some(device) = state.free_gpu(model).cloned() else {
                    return Ok(None);
                };
                let other_minors = state
                    .gpus
                    .iter()
                    .filter(|gpu| gpu.uuid != device.uuid)
                    .filter_map(|gpu| gpu.minor)
                    .filter(|minor| Some(*minor) != device.minor)
                    .collect();
                Some(SlotGpu {
                    device,
                    other_minors,
                })
            }
        };
        let cpus: Vec<u32> = state.free_cpus.iter().take(wanted).copied().collect();
        for cpu in &cpus {
            state.free_cpus.remove(cpu);
        }
        state.free_ram_bytes -= request.ram_bytes;
        let slot = Slot {
            id: format!("s{}", state.next_id),
            cpus,
            ram_bytes: request.ram_bytes,
            gpu,
        };
        state.next_id += 1;
        if let Some(gpu) = &slot.gpu {
            state
                .gpu_holders
                .insert(gpu.device.uuid.clone(), slot.id.clone());
        }
        state.slots.insert(slot.id.clone(), slot.clone());
        Ok(Some(slot))
    }

    /// Replaces the GPU list with a fresh inventory read (sorted by index here). GPUs held by
    /// a slot stay held even if they are missing from `gpus`; returns whether the list changed.
    pub fn set_gpus(&self, mut gpus: Vec<GpuDevice>) -> bool {
        gpus.sort_by_key(|gpu| gpu.index);
        let mut state = self.lock();
        if state.gpus == gpus {
            return false;
        }
        state.gpus = gpus;
        true
    }

    /// The node's GPUs with the slot holding each, for node info.
    pub fn gpus(&self) -> Vec<GpuInfo> {
        let state = self.lock();
        state
            .gpus
            .iter()
            .map(|gpu| gpu.info(state.gpu_holders.get(&gpu.uuid).cloned()))
            .collect()
    }

    /// Returns a slot's CPUs and RAM; `UnknownSlot` if it is not allocated (e.g. released
    /// twice).
    pub fn release(&self, slot_id: &str) -> Result<(), SandboxError> {
        let mut state = self.lock();
        let slot = state
            .slots
            .remove(slot_id)
            .ok_or_else(|| SandboxError::UnknownSlot(slot_id.to_owned()))?;
        state.free_cpus.extend(slot.cpus);
        state.free_ram_bytes += slot.ram_bytes;
        if let Some(gpu) = slot.gpu {
            state.gpu_holders.remove(&gpu.device.uuid);
        }
        Ok(())
    }

    /// CPUs not held by a slot.
    pub fn free_cpus(&self) -> u32 {
        u32::try_from(self.lock().free_cpus.len()).unwrap_or(u32::MAX)
    }

    /// The ids of the CPUs not held by a slot, ascending.
    pub fn free_cpu_ids(&self) -> Vec<u32> {
        self.lock().free_cpus.iter().copied().collect()
    }

    /// RAM not held by a slot, in bytes.
    pub fn free_ram_bytes(&self) -> u64 {
        self.lock().free_ram_bytes
    }

    /// Slots allocated now.
    pub fn allocated(&self) -> usize {
        self.lock().slots.len()
    }

    /// The allocated slot with this id.
    pub fn slot(&self, slot_id: &str) -> Option<Slot> {
        self.lock().slots.get(slot_id).cloned()
    }

    /// How many more slots of this size fit now (0 for a request that can never fit).
    pub fn capacity_for(&self, request: &SlotRequest) -> u64 {
        if self.fits_ever(request).is_err() {
            return 0;
        }
        let state = self.lock();
        let free_cpus = u64::try_from(state.free_cpus.len()).unwrap_or(u64::MAX);
        let by_cpu = free_cpus / u64::from(request.cpus);
        let by_ram = state.free_ram_bytes / request.ram_bytes;
        let by_gpu = match &request.gpu {
            Some(model) => state.free_gpu_count(model),
            None => u64::MAX,
        };
        by_cpu.min(by_ram).min(by_gpu)
    }

    /// Whether one slot of this size fits on this machine when it is idle; if not, a
    /// `DoesNotFit` whose message is one sentence saying what to change.
    pub fn fits_ever(&self, request: &SlotRequest) -> Result<(), SandboxError> {
        if request.cpus == 0 {
            return Err(SandboxError::DoesNotFit(
                "func_cpu=0 does not fit: every instance needs at least 1 CPU; set func_cpu to 1 or more"
                    .to_owned(),
            ));
        }
        if request.ram_bytes == 0 {
            return Err(SandboxError::DoesNotFit(
                "func_ram=0 does not fit: every instance needs some RAM; set func_ram to 1 or more"
                    .to_owned(),
            ));
        }
        let cpus = self.inventory.cpu_count();
        if request.cpus > cpus {
            return Err(SandboxError::DoesNotFit(format!(
                "func_cpu={} does not fit: this node has {} CPU{}; lower func_cpu or add a larger node",
                request.cpus,
                cpus,
                if cpus == 1 { "" } else { "s" },
            )));
        }
        if request.ram_bytes > self.inventory.ram_bytes {
            return Err(SandboxError::DoesNotFit(format!(
                "func_ram={} GiB does not fit: this node has {} GiB of RAM for instances; lower func_ram or add a larger node",
                gib(request.ram_bytes),
                gib(self.inventory.ram_bytes),
            )));
        }
        if let Some(model) = &request.gpu {
            self.gpu_fits_ever(model)?;
        }
        Ok(())
    }

    /// Whether this node has a GPU of `model` that can be handed out whole.
    fn gpu_fits_ever(&self, model: &GpuModel) -> Result<(), SandboxError> {
        let state = self.lock();
        let matching: Vec<&GpuDevice> = state
            .gpus
            .iter()
            .filter(|gpu| model.matches(&gpu.name, gpu.memory_bytes))
            .collect();
        if matching.iter().any(|gpu| gpu.assignable()) {
            return Ok(());
        }
        let have = describe_models(state.gpus.iter().map(|gpu| gpu.name.as_str()));
        Err(SandboxError::DoesNotFit(if matching.is_empty() {
            format!(
                "no GPU on this node matches func_gpu={:?}; this node has {have}; change func_gpu or add a node with that GPU",
                model.as_str()
            )
        } else {
            format!(
                "every GPU on this node matching func_gpu={:?} is in MIG mode and cannot be handed out whole; disable MIG on it (nvidia-smi -mig 0) or add a node with that GPU",
                model.as_str()
            )
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock with the state half-updated, so a
        // poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bytes as GiB for messages: whole numbers plainly, else with up to two decimals.
fn gib(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    let (whole, rest) = (bytes / GIB, bytes % GIB);
    if rest == 0 {
        return whole.to_string();
    }
    // Hundredths of a GiB, rounded down so a limit is never overstated.
    let hundredths = u128::from(bytes) * 100 / u128::from(GIB);
    let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    const GIB: u64 = 1 << 30;

    fn allocator(cpus: u32, ram_gib: u64) -> SlotAllocator {
        SlotAllocator::new(Inventory {
            cpus: (0..cpus).collect(),
            ram_bytes: ram_gib * GIB,
        })
    }

    fn req(cpus: u32, ram_gib: u64) -> SlotRequest {
        SlotRequest {
            cpus,
            ram_bytes: ram_gib * GIB,
            gpu: None,
        }
    }

    fn message(err: SandboxError) -> String {
        match err {
            SandboxError::DoesNotFit(text) => text,
            other => panic!("expected DoesNotFit, got {other:?}"),
        }
    }

    #[test]
    fn lowest_free_ids_first_and_exclusive() {
        let alloc = allocator(8, 32);
        let a = alloc.allocate(&req(2, 1)).expect("ok").expect("fits");
        let b = alloc.allocate(&req(3, 1)).expect("ok").expect("fits");
        assert_eq!((a.id.as_str(), a.cpus.as_slice()), ("s1", &[0, 1][..]));
        assert_eq!((b.id.as_str(), b.cpus.as_slice()), ("s2", &[2, 3, 4][..]));
        alloc.release(&a.id).expect("release");
        let c = alloc.allocate(&req(3, 1)).expect("ok").expect("fits");
        assert_eq!((c.id.as_str(), c.cpus.as_slice()), ("s3", &[0, 1, 5][..]));
        assert_eq!(alloc.free_cpu_ids(), vec![6, 7]);
        assert_eq!(alloc.slot("s3"), Some(c));
        assert_eq!(alloc.allocated(), 2);
    }

    #[test]
    fn does_not_fit_now_is_none() {
        let alloc = allocator(2, 4);
        let a = alloc.allocate(&req(2, 1)).expect("ok").expect("fits");
        assert_eq!(alloc.allocate(&req(1, 1)).expect("ok"), None);
        assert_eq!(alloc.free_cpus(), 0);
        alloc.release(&a.id).expect("release");
        assert!(alloc.allocate(&req(1, 1)).expect("ok").is_some());
    }

    #[test]
    fn ram_bounds_allocation() {
        let alloc = allocator(16, 4);
        let slots: Vec<Slot> = (0..4)
            .map(|_| alloc.allocate(&req(1, 1)).expect("ok").expect("fits"))
            .collect();
        assert_eq!(alloc.free_ram_bytes(), 0);
        assert_eq!(alloc.free_cpus(), 12);
        assert_eq!(alloc.allocate(&req(1, 1)).expect("ok"), None);
        assert_eq!(alloc.capacity_for(&req(1, 1)), 0);
        alloc.release(&slots[2].id).expect("release");
        assert_eq!(alloc.free_ram_bytes(), GIB);
        assert_eq!(alloc.capacity_for(&req(1, 1)), 1);
        let odd = SlotRequest {
            cpus: 1,
            ram_bytes: GIB / 2 + 1,
            gpu: None,
        };
        assert_eq!(alloc.capacity_for(&odd), 1);
    }

    #[test]
    fn release_twice_is_unknown() {
        let alloc = allocator(2, 2);
        let a = alloc.allocate(&req(1, 1)).expect("ok").expect("fits");
        alloc.release(&a.id).expect("release");
        let err = alloc.release(&a.id).expect_err("second release");
        assert!(matches!(err, SandboxError::UnknownSlot(ref id) if id == "s1"));
        assert_eq!(err.to_string(), "unknown slot s1");
        assert!(alloc.release("nope").is_err());
        assert_eq!((alloc.free_cpus(), alloc.free_ram_bytes()), (2, 2 * GIB));
    }

    #[test]
    fn never_fits_sentences() {
        let alloc = allocator(2, 4);
        assert_eq!(
            message(alloc.fits_ever(&req(4, 1)).expect_err("too many cpus")),
            "func_cpu=4 does not fit: this node has 2 CPUs; lower func_cpu or add a larger node"
        );
        assert_eq!(
            message(alloc.allocate(&req(1, 8)).expect_err("too much ram")),
            "func_ram=8 GiB does not fit: this node has 4 GiB of RAM for instances; lower func_ram or add a larger node"
        );
        assert!(message(alloc.fits_ever(&req(0, 1)).expect_err("zero cpus")).contains("func_cpu"));
        assert!(message(alloc.fits_ever(&req(1, 0)).expect_err("zero ram")).contains("func_ram"));
        assert_eq!(alloc.capacity_for(&req(4, 1)), 0);
        assert_eq!(alloc.capacity_for(&req(0, 1)), 0);
        let one = allocator(1, 1);
        assert_eq!(
            message(one.fits_ever(&req(2, 1)).expect_err("too many cpus")),
            "func_cpu=2 does not fit: this node has 1 CPU; lower func_cpu or add a larger node"
        );
        let fractional = SlotAllocator::new(Inventory {
            cpus: vec![0],
            ram_bytes: 3 * GIB / 2,
        });
        assert!(message(fractional.fits_ever(&req(1, 2)).expect_err("ram"))
            .contains("this node has 1.5 GiB of RAM"));
        let empty = SlotAllocator::new(Inventory {
            cpus: vec![],
            ram_bytes: 0,
        });
        assert!(message(empty.fits_ever(&req(1, 1)).expect_err("empty")).contains("0 CPUs"));
    }

    #[test]
    fn gib_formatting() {
        assert_eq!(gib(0), "0");
        assert_eq!(gib(4 * GIB), "4");
        assert_eq!(gib(GIB / 2), "0.5");
        assert_eq!(gib(GIB / 4), "0.25");
        assert_eq!(gib(GIB + GIB / 2 + GIB / 4), "1.75");
        // Rounded down: never overstates what a node has.
        assert_eq!(gib(GIB + GIB / 10), "1.09");
        assert_eq!(gib(25_276_510_208), "23.54");
    }

    #[test]
    fn capacity_counts_cpu_and_ram() {
        let alloc = allocator(8, 10);
        assert_eq!(alloc.capacity_for(&req(1, 1)), 8);
        assert_eq!(alloc.capacity_for(&req(2, 1)), 4);
        assert_eq!(alloc.capacity_for(&req(1, 3)), 3);
        assert_eq!(alloc.capacity_for(&req(3, 2)), 2);
    }

    #[test]
    fn duplicate_and_sparse_inventory_ids() {
        let alloc = SlotAllocator::new(Inventory {
            cpus: vec![7, 3, 3, 12],
            ram_bytes: 8 * GIB,
        });
        assert_eq!(alloc.inventory().cpus, vec![3, 7, 12]);
        let a = alloc.allocate(&req(2, 1)).expect("ok").expect("fits");
        assert_eq!(a.cpus, vec![3, 7]);
        assert_eq!(
            a.limits(),
            SlotLimits {
                cpus: vec![3, 7],
                ram_bytes: GIB
            }
        );
    }

    /// A small deterministic generator so the property loops need no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    #[test]
    fn random_allocate_release_keeps_invariants() {
        for seed in 1..=50u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let cpus = 1 + u32::try_from(rng.next(16)).expect("small");
            let ram = 1 + rng.next(32);
            let alloc = allocator(cpus, ram);
            let mut live: Vec<Slot> = Vec::new();
            let mut ids = HashSet::new();
            for _ in 0..300 {
                if live.is_empty() || rng.next(3) > 0 {
                    let r = req(
                        1 + u32::try_from(rng.next(u64::from(cpus) + 1)).expect("small"),
                        1 + rng.next(ram + 1),
                    );
                    let expected_ever = r.cpus <= cpus && r.ram_bytes <= ram * GIB;
                    let capacity = alloc.capacity_for(&r);
                    match alloc.allocate(&r) {
                        Err(SandboxError::DoesNotFit(_)) => assert!(!expected_ever),
                        Err(other) => panic!("unexpected {other:?}"),
                        Ok(None) => assert!(expected_ever && capacity == 0),
                        Ok(Some(slot)) => {
                            assert!(capacity >= 1);
                            assert_eq!(slot.cpus.len(), r.cpus as usize);
                            assert!(ids.insert(slot.id.clone()), "slot id reused");
                            live.push(slot);
                        }
                    }
                } else {
                    let index = usize::try_from(rng.next(live.len() as u64)).expect("small");
                    let slot = live.swap_remove(index);
                    alloc.release(&slot.id).expect("release live slot");
                }
                // No CPU id is held twice, and held + free = inventory, for CPUs and RAM.
                let mut held = HashSet::new();
                for slot in &live {
                    for cpu in &slot.cpus {
                        assert!(held.insert(*cpu), "cpu {cpu} held twice");
                    }
                }
                let free: HashSet<u32> = alloc.free_cpu_ids().into_iter().collect();
                assert!(held.is_disjoint(&free));
                assert_eq!(held.len() + free.len(), cpus as usize);
                let held_ram: u64 = live.iter().map(|s| s.ram_bytes).sum();
                assert_eq!(held_ram + alloc.free_ram_bytes(), ram * GIB);
                assert_eq!(alloc.allocated(), live.len());
            }
            for slot in live.drain(..) {
                alloc.release(&slot.id).expect("release");
            }
            assert_eq!(alloc.free_cpus(), cpus);
            assert_eq!(alloc.free_ram_bytes(), ram * GIB);
        }
    }

    #[test]
    fn concurrent_allocations_never_share_cpus() {
        let alloc = Arc::new(allocator(64, 1024));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let alloc = Arc::clone(&alloc);
                std::thread::spawn(move || {
                    let mut mine = Vec::new();
                    for round in 0..200 {
                        if let Some(slot) = alloc.allocate(&req(2, 1)).expect("ok") {
                            mine.push(slot);
                        }
                        if round % 3 == 0 {
                            if let Some(slot) = mine.pop() {
                                alloc.release(&slot.id).expect("release");
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut held = HashSet::new();
        let mut ids = HashSet::new();
        for handle in handles {
            for slot in handle.join().expect("thread") {
                assert!(ids.insert(slot.id.clone()));
                for cpu in slot.cpus {
                    assert!(held.insert(cpu), "cpu {cpu} held twice");
                }
            }
        }
        assert_eq!(alloc.free_cpus() as usize + held.len(), 64);
    }

    fn gpu(index: u32, name: &str, mib: u64) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            name: name.to_owned(),
            memory_bytes: mib << 20,
            mig: agent_proto::MigMode::Disabled,
            minor: Some(index),
        }
    }

    fn gpu_req(cpus: u32, model: &str) -> SlotRequest {
        SlotRequest {
            cpus,
            ram_bytes: GIB,
            gpu: Some(GpuModel::parse(model).expect("model")),
        }
    }

    const H100: &str = "NVIDIA H100 80GB HBM3";
    const A100_40: &str = "NVIDIA A100-SXM4-40GB";

    #[test]
    fn gpu_slots_take_whole_matching_gpus_exclusively() {
        let alloc = allocator(16, 64);
        assert!(alloc.set_gpus(vec![
            gpu(2, A100_40, 40960),
            gpu(0, H100, 81559),
            gpu(1, H100, 81559),
        ]));
        assert!(!alloc.set_gpus(vec![
            gpu(0, H100, 81559),
            gpu(1, H100, 81559),
            gpu(2, A100_40, 40960),
        ]));
        assert_eq!(alloc.capacity_for(&gpu_req(1, "H100")), 2);
        let a = alloc
            .allocate(&gpu_req(2, "h100"))
            .expect("ok")
            .expect("fits");
        let b = alloc
            .allocate(&gpu_req(1, "H100"))
            .expect("ok")
            .expect("fits");
        let (ga, gb) = (a.gpu.clone().expect("gpu"), b.gpu.clone().expect("gpu"));
        assert_eq!(
            (ga.device.uuid.as_str(), gb.device.uuid.as_str()),
            ("GPU-0", "GPU-1")
        );
        assert_eq!(ga.other_minors, vec![1, 2]);
        assert_eq!(gb.other_minors, vec![0, 2]);
        assert_eq!(a.cpus, vec![0, 1]);
        // Both H100s held: a third H100 slot waits, an A100 slot and a CPU slot do not.
        assert_eq!(alloc.allocate(&gpu_req(1, "H100")).expect("ok"), None);
        assert_eq!(alloc.capacity_for(&gpu_req(1, "H100")), 0);
        let c = alloc
            .allocate(&gpu_req(1, "A100_40G"))
            .expect("ok")
            .expect("fits");
        assert_eq!(c.gpu.expect("gpu").device.uuid, "GPU-2");
        assert!(alloc
            .allocate(&req(1, 1))
            .expect("ok")
            .expect("fits")
            .gpu
            .is_none());
        let listed = alloc.gpus();
        assert_eq!(
            listed
                .iter()
                .map(|g| (g.in_use, g.slot_id.clone()))
                .collect::<Vec<_>>(),
            vec![
                (true, Some(a.id.clone())),
                (true, Some(b.id.clone())),
                (true, Some(c.id.clone()))
            ]
        );
        // Released together with its CPUs and RAM.
        let free_cpus = alloc.free_cpus();
        alloc.release(&a.id).expect("release");
        assert_eq!(alloc.free_cpus(), free_cpus + 2);
        assert!(!alloc.gpus()[0].in_use);
        let d = alloc
            .allocate(&gpu_req(1, "H100"))
            .expect("ok")
            .expect("fits");
        assert_eq!(d.gpu.clone().expect("gpu").device.uuid, "GPU-0");
        assert_eq!(alloc.gpus()[0].slot_id, Some(d.id));
    }

    #[test]
    fn gpu_requests_that_never_fit_name_the_node_gpus() {
        let alloc = allocator(4, 8);
        assert_eq!(
            message(alloc.fits_ever(&gpu_req(1, "A100")).expect_err("no gpus")),
            "no GPU on this node matches func_gpu=\"A100\"; this node has no GPUs; change func_gpu or add a node with that GPU"
        );
        alloc.set_gpus(vec![gpu(0, H100, 81559), gpu(1, H100, 81559)]);
        assert_eq!(
            message(alloc.allocate(&gpu_req(1, "A10")).expect_err("other model")),
            "no GPU on this node matches func_gpu=\"A10\"; this node has NVIDIA H100 80GB HBM3 (×2); change func_gpu or add a node with that GPU"
        );
        assert!(alloc.fits_ever(&gpu_req(1, "H100_80G")).is_ok());
        assert!(alloc.fits_ever(&gpu_req(1, "H100_40G")).is_err());
        // CPU and RAM are still checked first.
        assert!(
            message(alloc.fits_ever(&gpu_req(8, "H100")).expect_err("cpus")).contains("func_cpu=8")
        );
        assert_eq!(alloc.capacity_for(&gpu_req(1, "A10")), 0);
    }

    #[test]
    fn mig_gpus_are_listed_but_never_handed_out() {
        let alloc = allocator(4, 8);
        let mut mig = gpu(0, H100, 81559);
        mig.mig = agent_proto::MigMode::Enabled;
        alloc.set_gpus(vec![mig, gpu(1, A100_40, 40960)]);
        let text = message(alloc.fits_ever(&gpu_req(1, "H100")).expect_err("mig"));
        assert!(text.contains("MIG mode"), "{text}");
        assert_eq!(alloc.gpus().len(), 2);
        let slot = alloc
            .allocate(&gpu_req(1, "A100"))
            .expect("ok")
            .expect("fits");
        // The MIG GPU's device node is still one the slot must not reach.
        assert_eq!(slot.gpu.expect("gpu").other_minors, vec![0]);
    }

    #[test]
    fn a_held_gpu_that_vanishes_stays_held_until_released() {
        let alloc = allocator(4, 8);
        alloc.set_gpus(vec![gpu(0, H100, 81559), gpu(1, H100, 81559)]);
        let a = alloc
            .allocate(&gpu_req(1, "H100"))
            .expect("ok")
            .expect("fits");
        // GPU 0 fell off the bus: the re-read inventory lists only GPU 1.
        alloc.set_gpus(vec![gpu(1, H100, 81559)]);
        let b = alloc
            .allocate(&gpu_req(1, "H100"))
            .expect("ok")
            .expect("fits");
        assert_eq!(b.gpu.expect("gpu").device.uuid, "GPU-1");
        assert_eq!(alloc.allocate(&gpu_req(1, "H100")).expect("ok"), None);
        alloc.release(&a.id).expect("release");
        // GPU 0 is gone for good: nothing to hand out until GPU 1 comes back.
        assert_eq!(alloc.allocate(&gpu_req(1, "H100")).expect("ok"), None);
        assert_eq!(alloc.gpus().len(), 1);
    }

    #[test]
    fn concurrent_gpu_allocations_never_share_a_gpu() {
        let alloc = Arc::new(allocator(64, 1024));
        alloc.set_gpus((0..8).map(|i| gpu(i, H100, 81559)).collect());
        // UUIDs held right now, as the threads see them: taken out before a release, put in
        // after an allocation, so a GPU handed out twice shows as a failed insert.
        let claimed = Arc::new(Mutex::new(HashSet::new()));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let alloc = Arc::clone(&alloc);
                let claimed = Arc::clone(&claimed);
                std::thread::spawn(move || {
                    let mut mine: Vec<Slot> = Vec::new();
                    let mut got = 0;
                    for round in 0..500 {
                        if let Some(slot) = alloc.allocate(&gpu_req(1, "H100")).expect("ok") {
                            let uuid = slot.gpu.clone().expect("gpu").device.uuid;
                            assert!(
                                claimed.lock().expect("lock").insert(uuid.clone()),
                                "{uuid} handed out twice"
                            );
                            mine.push(slot);
                            got += 1;
                        }
                        if (round + t) % 2 == 0 {
                            if let Some(slot) = mine.pop() {
                                let uuid = slot.gpu.clone().expect("gpu").device.uuid;
                                claimed.lock().expect("lock").remove(&uuid);
                                alloc.release(&slot.id).expect("release");
                            }
                        }
                    }
                    (mine, got)
                })
            })
            .collect();
        let mut total = 0;
        let mut left = 0;
        for handle in handles {
            let (mine, got) = handle.join().expect("thread");
            total += got;
            left += mine.len();
        }
        assert!(total > 8, "the GPUs were reused across threads");
        let in_use = alloc.gpus().iter().filter(|g| g.in_use).count();
        assert_eq!(in_use, left);
        assert_eq!(claimed.lock().expect("lock").len(), left);
    }
}
