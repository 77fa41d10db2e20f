//! Cgroup v1 `devices` controller: keeps a GPU slot's processes away from the node's other
//! GPUs.
//!
//! A slot's device cgroup is `<root>/devices/<parent>/slot-<id>`; it inherits the parent's
//! rules (normally "allow all") and adds one deny rule per *other* NVIDIA GPU
//! (`c 195:<minor> rwm`), so `/dev/nvidia<own minor>`, `/dev/nvidiactl`, `/dev/nvidia-uvm`
//! and every non-GPU device stay usable while the other GPUs' device nodes cannot be opened
//! (`EPERM`). Denying the others rather than allowing a list keeps the function's ordinary
//! devices (`/dev/null`, `/dev/urandom`, ptys, …) working without enumerating them.
//!
//! cgroup v2 has no `devices` files: device access there is an eBPF program attached to the
//! cgroup (`BPF_CGROUP_DEVICE`), which fleetmap does not load; on v2 the GPU is chosen by
//! `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` only (the docker runtime's device
//! requests do restrict devices, through the engine).

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tracing::debug;

use super::files;
use super::kill::{kill_until_empty, sigkill_each};
use crate::error::SandboxError;

/// How long a removal retries while the kernel still reports the cgroup busy.
const REMOVE_WAIT: Duration = Duration::from_secs(1);

/// A character device, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharDevice {
    /// Major number (195 for NVIDIA GPUs).
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

/// The v1 devices hierarchy below the daemon's parent.
#[derive(Debug, Clone)]
pub(crate) struct DevicesV1 {
    /// `<root>/devices`.
    mount: PathBuf,
    /// `<root>/devices/<parent>`.
    dir: PathBuf,
}

impl DevicesV1 {
    /// The controller under `<root>/devices`, if it is mounted there.
    pub(crate) fn find(root: &Path, parent: &Path) -> Option<Self> {
        let mount = root.join("devices");
        mount.join("devices.deny").is_file().then(|| Self {
            dir: mount.join(parent),
            mount,
        })
    }

    fn slot_dir(&self, slot_id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.dir.join(files::slot_dir(slot_id)?))
    }

    /// Creates the slot's device cgroup (idempotent), denies `deny` in it and moves `pid` in.
    pub(crate) fn restrict(
        &self,
        slot_id: &str,
        pid: u32,
        deny: &[CharDevice],
    ) -> Result<(), SandboxError> {
        let dir = self.slot_dir(slot_id)?;
        files::mkdir_all(&dir)?;
        for device in deny {
            files::write(
                &dir.join("devices.deny"),
                &format!("c {}:{} rwm", device.major, device.minor),
            )?;
        }
        files::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        debug!(
            slot = slot_id,
            pid,
            denied = deny.len(),
            "slot device cgroup ready"
        );
        Ok(())
    }

    /// Kills what is left in the slot's device cgroup and removes it (no-op if absent).
    pub(crate) fn remove(&self, slot_id: &str) -> Result<(), SandboxError> {
        remove_dir(&self.slot_dir(slot_id)?)
    }

    /// Removes every slot device cgroup below the parent; with `itself`, the parent too.
    pub(crate) fn remove_below(&self, itself: bool) -> Result<usize, SandboxError> {
        let mut removed = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().is_dir() {
                    remove_dir(&entry.path())?;
                    removed += 1;
                }
            }
        }
        if itself && self.dir.is_dir() {
            remove_dir(&self.dir)?;
            // Ancestors other daemons do not use (empty ones) go too; busy ones stay.
            let mut above = self.dir.parent();
            while let Some(dir) = above.filter(|dir| *dir != self.mount.as_path()) {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
                above = dir.parent();
            }
        }
        Ok(removed)
    }
}

/// Kills the processes of a device cgroup and removes it, retrying while it is busy.
fn remove_dir(dir: &Path) -> Result<(), SandboxError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let procs = dir.join("cgroup.procs");
    kill_until_empty(dir, || files::read_pids(&procs), sigkill_each)?;
    let deadline = Instant::now() + REMOVE_WAIT;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(ref err)
                if Instant::now() < deadline && err.raw_os_error() == Some(libc::EBUSY) =>
            {
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(SandboxError::io("rmdir", dir, err)),
        }
    }
}
