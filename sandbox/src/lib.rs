//! Host resources for fleetmap function instances.
//!
//! - [`inventory`]: what the machine offers (CPU ids the daemon may use, RAM), read once at
//!   start from the daemon's own CPU affinity, sysinfo and the daemon's own memory cgroup.
//! - [`slots`]: the slot allocator: each instance gets `func_cpu` CPU ids (exclusive: no two
//!   live slots share a CPU id) and `func_ram` bytes; releasing returns them.
//! - [`gpu`]: the GPUs the machine offers, through NVML (loaded at run time) behind the narrow
//!   `GpuInventory` trait; the slot allocator hands each GPU slot one whole GPU, exclusively.
//! - [`cgroup`]: per-slot cgroups under a parent the daemon owns (cpuset + memory limit),
//!   one narrow trait with v1, v2 and "off" implementations chosen once by detection.
//!
//! Host roots (`/sys/fs/cgroup`, `/proc`) are parameters everywhere; the defaults below are
//! the only place they are spelled out.

pub mod cgroup;
pub mod error;
pub mod gpu;
pub mod inventory;
pub mod slots;

pub use cgroup::CharDevice;
pub use cgroup::{
    detect, detect_with_proc_root, CgroupConfig, CgroupFlavor, CgroupMode, CleanupReport,
    SlotCgroups, SlotLimits,
};
pub use error::SandboxError;
pub use gpu::{FakeGpuInventory, GpuDevice, GpuError, GpuInventory, NvmlInventory};
pub use inventory::Inventory;
pub use slots::{Slot, SlotAllocator, SlotGpu, SlotRequest};

/// Where cgroup filesystems are mounted on a real host (the default `CgroupConfig::root`).
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where procfs is mounted on a real host.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
