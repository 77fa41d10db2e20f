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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use agent_proto::MigMode;
    use fleetmap_sandbox::{GpuDevice, GpuError, Inventory};

    use super::*;

    /// An inventory whose answers the test scripts: each read pops the next one (the last
    /// stays), and reads are counted.
    #[derive(Debug)]
    struct Scripted {
        answers: Mutex<Vec<Result<Vec<GpuDevice>, String>>>,
        reads: Mutex<u32>,
    }

    impl GpuInventory for Scripted {
        fn source(&self) -> &'static str {
            "scripted"
        }

        fn read(&self) -> Result<Vec<GpuDevice>, GpuError> {
            *self.reads.lock().expect("lock") += 1;
            let mut answers = self.answers.lock().expect("lock");
            let answer = if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers[0].clone()
            };
            answer.map_err(|reason| GpuError::Nvml {
                query: "device count",
                reason,
            })
        }
    }

    fn gpu(index: u32) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: 81559 << 20,
            mig: MigMode::Disabled,
            minor: Some(index),
        }
    }

    /// Polls `done` until it holds (or fails the test after 10 s).
    async fn until(mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_inventory_is_read_again_and_a_failed_read_keeps_the_last_list() {
        let scripted = Arc::new(Scripted {
            answers: Mutex::new(vec![
                Ok(vec![gpu(0), gpu(1)]),
                Err("GPU is lost".into()),
                Err("GPU is lost".into()),
                Ok(vec![gpu(1)]),
            ]),
            reads: Mutex::new(0),
        });
        let inventory: Arc<dyn GpuInventory> = scripted.clone();
        let capacity = Arc::new(Capacity::new(Inventory {
            cpus: vec![0, 1],
            ram_bytes: 4 << 30,
        }));
        refresh(&inventory, &capacity).await;
        assert_eq!(capacity.gpus().len(), 2);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(keep_fresh(
            inventory,
            capacity.clone(),
            Duration::from_millis(20),
            shutdown.clone(),
        ));
        // Two failed reads in between kept the two GPUs; the next read drops GPU 0.
        until(|| *scripted.reads.lock().expect("lock") >= 3).await;
        assert!(capacity.gpus().len() == 2 || *scripted.reads.lock().expect("lock") > 3);
        until(|| capacity.gpus().len() == 1).await;
        let uuids: Vec<String> = capacity.gpus().into_iter().map(|g| g.uuid).collect();
        assert_eq!(uuids, vec!["GPU-1".to_string()]);
        shutdown.cancel();
        task.await.expect("task ends at shutdown");
    }
}
