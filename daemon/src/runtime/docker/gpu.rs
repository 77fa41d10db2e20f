//! GPU slots in the docker runtime. Docker gives a container a GPU only through a device
//! request at create time (the NVIDIA Container Toolkit then mounts that GPU's device node
//! and driver libraries), and warm containers are created before anyone knows which GPU their
//! slot gets. So a GPU slot does not take a warm container: one is created for it when the
//! slot is acquired, already in the slot's cpuset and memory limit, with
//! `DeviceRequests = [{Driver: "nvidia", DeviceIDs: [<uuid>], Capabilities: [["gpu"]]}]`.
//! That costs a container start (about a second) per GPU instance, which a GPU job's work
//! dwarfs; CPU slots keep the warm pool.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, DeviceRequest};
use fleetmap_sandbox::{Slot, SlotGpu};
use tracing::info;

use super::spec::{self, SLOT_CPU_SHARES};
use super::{launch, DockerOptions, Inner};
use crate::runtime::{RuntimeError, Worker};

/// The device request for one GPU by UUID.
pub(super) fn device_request(uuid: &str) -> DeviceRequest {
    DeviceRequest {
        driver: Some("nvidia".to_string()),
        device_ids: Some(vec![uuid.to_string()]),
        capabilities: Some(vec![vec!["gpu".to_string()]]),
        ..Default::default()
    }
}

/// The create body of a container for a GPU slot: the warm body with the slot's limits and
/// its GPU's device request.
pub(super) fn create_body(
    opts: &DockerOptions,
    run_id: &str,
    slot: &Slot,
    gpu: &SlotGpu,
) -> ContainerCreateBody {
    let mut body = spec::create_body(opts, &opts.image, run_id, &spec::cpu_list(&slot.cpus));
    let ram = i64::try_from(slot.ram_bytes).unwrap_or(i64::MAX);
    if let Some(host) = body.host_config.as_mut() {
        host.cpu_shares = Some(SLOT_CPU_SHARES);
        host.memory = Some(ram);
        host.memory_swap = Some(ram);
        host.device_requests = Some(vec![device_request(&gpu.device.uuid)]);
    }
    body
}

/// A worker in a container created now for `slot`, holding its GPU.
pub(super) async fn acquire(
    inner: &Arc<Inner>,
    slot: &Slot,
    gpu: &SlotGpu,
) -> Result<Worker, RuntimeError> {
    let n = inner.names.fetch_add(1, Ordering::Relaxed);
    let name = format!("fleetmap-{}-{}-{n}", inner.opts.node_id, slot.id);
    let body = create_body(&inner.opts, &inner.run_id, slot, gpu);
    let (id, worker) = launch(inner, name, body).await.map_err(|err| match err {
        RuntimeError::Engine { action, reason } => RuntimeError::Engine {
            action,
            reason: format!(
                "{reason} (a GPU container needs the NVIDIA Container Toolkit on this node; install it or run the node with --runtime process)"
            ),
        },
        other => other,
    })?;
    {
        let mut books = inner.books();
        if let Some(live) = books.by_pid.get_mut(&worker.pid) {
            live.slot = Some(slot.id.clone());
        }
        books.slots.insert(slot.id.clone(), worker.pid);
        inner.hold_cpus(&mut books, &slot.id, slot.cpus.len());
    }
    info!(container = %id, slot = %slot.id, gpu = %gpu.device.uuid, "GPU container started for the slot");
    Ok(Worker {
        pid: worker.pid,
        conn: worker.conn,
        exit: worker.exit,
        scratch: Some(super::scratch::in_container(&inner.opts)),
        oom_kills_before: None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use agent_proto::MigMode;
    use fleetmap_sandbox::GpuDevice;

    use super::*;

    #[test]
    fn a_gpu_container_requests_its_gpu_by_uuid_within_the_slot_limits() {
        let opts = DockerOptions::new(
            "n1".into(),
            PathBuf::from("/var/lib/fleetmap"),
            "/fleetmap-n1-containers".into(),
            2,
        );
        let gpu = SlotGpu {
            device: GpuDevice {
                index: 3,
                uuid: "GPU-3f1c7a2e-0000-4000-8000-000000000003".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                memory_bytes: 81559 << 20,
                mig: MigMode::Disabled,
                minor: Some(3),
            },
            other_minors: vec![0, 1, 2],
        };
        let slot = Slot {
            id: "s7".into(),
            cpus: vec![4, 5],
            ram_bytes: 2 << 30,
            gpu: Some(gpu.clone()),
        };
        let body = create_body(&opts, "run1", &slot, &gpu);
        let host = body.host_config.expect("host config");
        let requests = host.device_requests.expect("device requests");
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(
            requests[0].device_ids,
            Some(vec!["GPU-3f1c7a2e-0000-4000-8000-000000000003".to_string()])
        );
        assert_eq!(requests[0].count, None, "by UUID, never by count");
        assert_eq!(
            requests[0].capabilities,
            Some(vec![vec!["gpu".to_string()]])
        );
        assert_eq!(host.cpuset_cpus.as_deref(), Some("4,5"));
        assert_eq!(host.memory, Some(2 << 30));
        assert_eq!(host.memory_swap, Some(2 << 30));
        assert_eq!(host.cpu_shares, Some(SLOT_CPU_SHARES));
        // Still as locked down as a warm container.
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
    }
}
