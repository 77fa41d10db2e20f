//! CPU/RAM/GPU slots for instances: the sandbox crate's allocator, plus a wake-up for jobs
//! that wait for a slot to be released (or for GPUs to appear in a re-read inventory).

use agent_proto::{GpuInfo, GpuModel, JobSpec};
use fleetmap_sandbox::{GpuDevice, Inventory, SandboxError, Slot, SlotAllocator, SlotRequest};
use tokio::sync::Notify;
use tracing::warn;

/// Slots handed out to instances. Shared through the daemon state.
#[derive(Debug)]
pub struct Capacity {
    allocator: SlotAllocator,
    freed: Notify,
}

impl Capacity {
    /// Everything in `inventory` free.
    pub fn new(inventory: Inventory) -> Self {
        Self {
            allocator: SlotAllocator::new(inventory),
            freed: Notify::new(),
        }
    }

    /// What one instance of `spec` needs. A `func_gpu` that names no model (which
    /// `JobSpec::validate` refuses before this is called) asks for no GPU.
    pub fn request(spec: &JobSpec) -> SlotRequest {
        SlotRequest {
            cpus: spec.func_cpu,
            ram_bytes: spec.ram_bytes(),
            gpu: spec
                .func_gpu
                .as_deref()
                .and_then(|model| GpuModel::parse(model).ok()),
        }
    }

    /// Whether one instance of this size could ever run here; the error is the allocator's
    /// sentence saying what to change.
    pub fn fits_ever(&self, request: &SlotRequest) -> Result<(), SandboxError> {
        self.allocator.fits_ever(request)
    }

    /// Replaces the GPU list with a fresh inventory read; wakes waiting jobs when it changed
    /// (a GPU may have come back).
    pub fn set_gpus(&self, gpus: Vec<GpuDevice>) -> bool {
        let changed = self.allocator.set_gpus(gpus);
        if changed {
            self.freed.notify_waiters();
        }
        changed
    }

    /// The node's GPUs and the slot holding each.
    pub fn gpus(&self) -> Vec<GpuInfo> {
        self.allocator.gpus()
    }

    /// A slot now, or `None` when the node is full.
    pub fn try_allocate(&self, request: &SlotRequest) -> Option<Slot> {
        match self.allocator.allocate(request) {
            Ok(slot) => slot,
            Err(err) => {
                warn!(cause = %err, "slot allocation refused");
                None
            }
        }
    }

    /// Returns a slot and wakes jobs waiting for one.
    pub fn release(&self, slot_id: &str) {
        if let Err(err) = self.allocator.release(slot_id) {
            warn!(slot = slot_id, cause = %err, "slot released twice");
        }
        self.freed.notify_waiters();
    }

    /// Resolves at the next release (create the future before checking for room).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// The inventory handed out.
    pub fn inventory(&self) -> &Inventory {
        self.allocator.inventory()
    }

    /// CPUs not held by a slot.
    pub fn free_cpus(&self) -> u32 {
        self.allocator.free_cpus()
    }

    /// RAM not held by a slot.
    pub fn free_ram_bytes(&self) -> u64 {
        self.allocator.free_ram_bytes()
    }

    /// Slots allocated now (= instances running).
    pub fn instances(&self) -> usize {
        self.allocator.allocated()
    }
}
