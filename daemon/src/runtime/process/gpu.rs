//! A GPU slot's device cgroup in the `process` runtime: the worker may open its own GPU's
//! `/dev/nvidia<minor>` and the control devices, not the node's other GPUs (cgroup v1
//! `devices` controller). Which GPU CUDA uses is set by the worker's environment
//! (`CUDA_VISIBLE_DEVICES`, see `job::instance::gpu_env`); this is the fence behind it.

use std::sync::atomic::{AtomicBool, Ordering};

use fleetmap_sandbox::gpu::NVIDIA_MAJOR;
use fleetmap_sandbox::{CgroupFlavor, CharDevice, SandboxError, Slot, SlotCgroups};
use tracing::{debug, warn};

/// Whether the "devices not restricted" warning was logged (once per daemon).
static WARNED: AtomicBool = AtomicBool::new(false);

/// Denies worker `pid` the other GPUs of the node where the host's cgroups allow it. Blocking
/// (cgroup writes). A host that cannot restrict devices is logged once, not an error.
pub(super) fn fence(cgroups: &dyn SlotCgroups, slot: &Slot, pid: u32) -> Result<(), SandboxError> {
    let Some(gpu) = &slot.gpu else {
        return Ok(());
    };
    let deny: Vec<CharDevice> = gpu
        .other_minors
        .iter()
        .map(|&minor| CharDevice {
            major: NVIDIA_MAJOR,
            minor,
        })
        .collect();
    if cgroups.restrict_devices(&slot.id, pid, &deny)? {
        debug!(slot = %slot.id, pid, gpu = %gpu.device.uuid, denied = deny.len(), "GPU slot fenced");
        return Ok(());
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        let reason = match cgroups.flavor() {
            CgroupFlavor::V2 => "cgroup v2 restricts devices only through eBPF programs, which fleetmap does not load",
            CgroupFlavor::V1 => "the cgroup v1 devices controller is not mounted under the cgroup root",
            CgroupFlavor::None => "cgroups are off",
        };
        warn!(
            reason,
            "GPU instances see only their GPU through CUDA_VISIBLE_DEVICES; their device cgroup is not restricted"
        );
    }
    Ok(())
}
