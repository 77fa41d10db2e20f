//! Bounded writable space of a worker container: the root filesystem is read-only and the
//! only writable places are a size-limited tmpfs at `/tmp` (the worker's cwd, `TMPDIR` and
//! `HOME`) and the daemon's bind mounts (its socket and progress files).
//!
//! Why not a size on the writable layer: `--storage-opt size=` needs overlay2 on xfs with
//! project quotas, which most hosts lack, and without it a function could fill the engine's
//! disk. The tmpfs is made with the container (warm containers exist before their slot), so its
//! size is the node's setting, not the slot's: its pages count against the container's
//! memory limit, which is why the default (512 MiB) is half the smallest `func_ram` (1 GB).
//! A scratch set larger than half a slot's RAM can end in an OOM kill before ENOSPC.

use std::collections::HashMap;

use bollard::models::HostConfig;

use super::DockerOptions;
use crate::runtime::Scratch;

/// Where the scratch tmpfs is mounted inside a container.
pub const SCRATCH_IN_CONTAINER: &str = "/tmp";

/// Makes the container's root read-only and gives it the scratch tmpfs.
pub(super) fn bound(host: &mut HostConfig, opts: &DockerOptions) {
    host.readonly_rootfs = Some(true);
    host.tmpfs = Some(HashMap::from([(
        SCRATCH_IN_CONTAINER.to_string(),
        format!("rw,nosuid,nodev,size={},mode=1777", opts.scratch_bytes),
    )]));
}

/// Environment variables that point the function's writes at the scratch.
pub(super) fn env() -> Vec<String> {
    ["TMPDIR", "HOME"]
        .iter()
        .map(|name| format!("{name}={SCRATCH_IN_CONTAINER}"))
        .collect()
}

/// The scratch a container's worker finds (empty: the tmpfs is as new as the container).
pub(super) fn in_container(opts: &DockerOptions) -> Scratch {
    Scratch {
        path: SCRATCH_IN_CONTAINER.to_string(),
        bytes: opts.scratch_bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn the_root_is_read_only_and_tmp_a_sized_tmpfs() {
        let mut opts = DockerOptions::new(
            "n".into(),
            PathBuf::from("/var/lib/fleetmap"),
            "/fleetmap/n".into(),
            1,
        );
        opts.scratch_bytes = 64 << 20;
        let mut host = HostConfig::default();
        bound(&mut host, &opts);
        assert_eq!(host.readonly_rootfs, Some(true));
        let tmpfs = host.tmpfs.expect("tmpfs");
        assert_eq!(tmpfs["/tmp"], "rw,nosuid,nodev,size=67108864,mode=1777");
        assert_eq!(in_container(&opts).bytes, 64 << 20);
        assert!(env().contains(&"TMPDIR=/tmp".to_string()));
    }
}
