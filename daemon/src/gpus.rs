//! The node's GPUs: the inventory chosen at start (NVML, or the test-only fake list), read
//! once before serving and again every `Config::gpu_refresh` into the slot allocator.

use std::sync::Arc;
use std::time::Duration;

use fleetmap_sandbox::{FakeGpuInventory, GpuInventory, NvmlInventory};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capacity::Capacity;
use crate::config::GpuSource;
use crate::error::DaemonError;

/// Opens the configured inventory (loading NVML may block: done off the async threads).
pub async fn open(source: &GpuSource, node_id: &str) -> Result<Arc<dyn GpuInventory>, DaemonError> {
    match source {
        GpuSource::Nvml => {
            let nvml = tokio::task::spawn_blocking(NvmlInventory::load)
                .await
                .map_err(|err| DaemonError::Gpu(format!("NVML loading task failed: {err}")))?;
            Ok(Arc::new(nvml))
        }
        GpuSource::TestOnlyFake(spec) => {
            let fake = FakeGpuInventory::parse(spec, node_id)
                .map_err(|err| DaemonError::Gpu(err.to_string()))?;
            warn!(
                gpus = %spec,
                "TEST ONLY: using a fake GPU inventory (--test-only-fake-gpus); instances get GPU variables but no device"
            );
            Ok(Arc::new(fake))
        }
    }
}

/// Reads the inventory into `capacity`; a failed read keeps the previous list.
pub async fn refresh(inventory: &Arc<dyn GpuInventory>, capacity: &Capacity) {
    let reading = inventory.clone();
    match tokio::task::spawn_blocking(move || reading.read()).await {
        Ok(Ok(gpus)) => {
            let count = gpus.len();
            if capacity.set_gpus(gpus) {
                info!(
                    source = inventory.source(),
                    gpus = count,
                    "GPU inventory read"
                );
            }
        }
        Ok(Err(err)) => warn!(cause = %err, "cannot read the GPU inventory; keeping the last one"),
        Err(err) => warn!(cause = %err, "GPU inventory task failed"),
    }
}

/// Re-reads the inventory every `every` until `shutdown`.
pub async fn keep_fresh(
    inventory: Arc<dyn GpuInventory>,
    capacity: Arc<Capacity>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => refresh(&inventory, &capacity).await,
            _ = shutdown.cancelled() => return,
        }
    }
}
