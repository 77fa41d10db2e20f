//! What a worker container looks like: its create body (mounts, limits, labels, command) and
//! the update body that applies a slot's limits to a warm container.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, ContainerUpdateBody, HostConfig, HostConfigLogConfig, Mount, MountType,
};
use fleetmap_sandbox::SlotLimits;

use super::{scratch, DockerOptions};

/// Label naming the node whose daemon created the container (stale cleanup matches it).
pub const LABEL_NODE: &str = "org.fleetmap.node";
/// Label naming the daemon run that created the container.
pub const LABEL_RUN: &str = "org.fleetmap.run";
/// Label saying what the container is (`worker`).
pub const LABEL_ROLE: &str = "org.fleetmap.role";

/// Where the daemon's worker socket appears inside a container.
pub const SOCKET_IN_CONTAINER: &str = "/run/fleetmap/worker.sock";
/// Where the worker module appears inside a container (read-only).
pub const WORKER_IN_CONTAINER: &str = "/opt/fleetmap/fleetmap_worker.py";
/// The interpreter the worker runs on inside the image.
pub const PYTHON_IN_CONTAINER: &str = "/usr/bin/python3";

/// Memory limit of a warm container before a slot takes it: an idle worker needs ~20 MB.
pub const IDLE_RAM_BYTES: i64 = 256 * 1024 * 1024;

/// CPU weight of a warm container while it starts and idles: starting Python must not slow
/// down the containers that are working (the process runtime runs its zygote at `SCHED_IDLE`
/// for the same reason).
pub const IDLE_CPU_SHARES: i64 = 64;
/// CPU weight of a container working for a slot (the engine's default).
pub const SLOT_CPU_SHARES: i64 = 1024;

/// The create body of a warm worker container of `image`, idle on `all_cpus`.
pub fn create_body(
    opts: &DockerOptions,
    image: &str,
    run_id: &str,
    all_cpus: &str,
) -> ContainerCreateBody {
    let labels = HashMap::from([
        (LABEL_NODE.to_string(), opts.node_id.clone()),
        (LABEL_RUN.to_string(), run_id.to_string()),
        (LABEL_ROLE.to_string(), "worker".to_string()),
    ]);
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let mut body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec![
            opts.python.clone(),
            "-u".to_string(),
            WORKER_IN_CONTAINER.to_string(),
            "worker".to_string(),
            "--socket".to_string(),
            SOCKET_IN_CONTAINER.to_string(),
            "--max-frame-bytes".to_string(),
            opts.max_frame_bytes.to_string(),
        ]),
        // The daemon's own uid: the socket (mode 0600) and the progress files are its.
        user: Some(format!("{uid}:{gid}")),
        working_dir: Some(scratch::SCRATCH_IN_CONTAINER.to_string()),
        env: Some(scratch::env()),
        labels: Some(labels),
        host_config: Some(HostConfig {
            mounts: Some(vec![
                bind(&opts.socket_path, SOCKET_IN_CONTAINER, false),
                bind(&opts.worker_file, WORKER_IN_CONTAINER, true),
                // Progress files are named by host path in ASSIGN, so the dir keeps its path.
                bind(
                    &opts.progress_dir,
                    &opts.progress_dir.display().to_string(),
                    false,
                ),
            ]),
            cpuset_cpus: Some(all_cpus.to_string()),
            cpu_shares: Some(IDLE_CPU_SHARES),
            memory: Some(IDLE_RAM_BYTES),
            // Equal to `memory`: no swap, so func_ram is a hard limit.
            memory_swap: Some(IDLE_RAM_BYTES),
            memory_swappiness: Some(0),
            pids_limit: Some(opts.pids_limit),
            cgroup_parent: Some(opts.cgroup_parent.clone()),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            network_mode: Some(opts.network.clone()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "1m".to_string()),
                    ("max-file".to_string(), "1".to_string()),
                ])),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(host) = body.host_config.as_mut() {
        scratch::bound(host, opts);
    }
    body
}

/// The update that puts a warm container into a slot's limits.
pub fn slot_update(limits: &SlotLimits) -> ContainerUpdateBody {
    let ram = i64::try_from(limits.ram_bytes).unwrap_or(i64::MAX);
    ContainerUpdateBody {
        cpuset_cpus: Some(cpu_list(&limits.cpus)),
        cpu_shares: Some(SLOT_CPU_SHARES),
        memory: Some(ram),
        memory_swap: Some(ram),
        ..Default::default()
    }
}

/// `0,2,3` for CPUs 0, 2 and 3 (the engine's cpuset syntax).
pub fn cpu_list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn bind(source: &Path, target: &str, read_only: bool) -> Mount {
    Mount {
        target: Some(target.to_string()),
        source: Some(source.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(read_only),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn opts() -> DockerOptions {
        DockerOptions::new(
            "node-a".into(),
            PathBuf::from("/var/lib/fleetmap"),
            "/fleetmap/node-a-containers".into(),
            2,
        )
    }

    #[test]
    fn warm_containers_are_unprivileged_swapless_and_labelled() {
        let body = create_body(&opts(), "fleetmap/base:1", "run1", "0,1");
        let host = body.host_config.expect("host config");
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.memory, host.memory_swap);
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
        assert_eq!(
            host.cgroup_parent.as_deref(),
            Some("/fleetmap/node-a-containers")
        );
        let mounts = host.mounts.expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m.target.as_deref() == Some(WORKER_IN_CONTAINER)
                    && m.read_only == Some(true))
        );
        let labels = body.labels.expect("labels");
        assert_eq!(labels[LABEL_NODE], "node-a");
        assert_eq!(labels[LABEL_RUN], "run1");
    }

    #[test]
    fn a_slot_update_sets_cpuset_and_swapless_memory() {
        let update = slot_update(&SlotLimits {
            cpus: vec![0, 3],
            ram_bytes: 1 << 30,
        });
        assert_eq!(update.cpuset_cpus.as_deref(), Some("0,3"));
        assert_eq!(update.memory, Some(1 << 30));
        assert_eq!(update.memory_swap, Some(1 << 30));
    }
}
