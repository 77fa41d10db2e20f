//! Host resources for fleetmap function instances.
//!
//! - [`inventory`]: what the machine offers (CPU ids the daemon may use, RAM), read once at
//!   start from sysinfo and the daemon's own cpuset.
//! - [`slots`]: the slot allocator: each instance gets `func_cpu` CPU ids (exclusive while
//!   the machine has enough) and `func_ram` bytes; freeing returns them.
//! - [`cgroup`]: per-slot cgroups under a parent the daemon owns (cpuset + memory limit),
//!   one narrow trait with v1, v2 and "off" implementations chosen once by detection.

pub mod cgroup;
pub mod error;
pub mod inventory;
pub mod slots;

pub use cgroup::{detect, CgroupConfig, CgroupFlavor, CgroupMode, CleanupReport, SlotCgroups, SlotLimits};
pub use error::SandboxError;
pub use inventory::Inventory;
pub use slots::{Slot, SlotAllocator, SlotRequest};
