//! Real-hardware GPU test: reads the machine's GPUs through NVML, runs a job with `func_gpu`
//! set to the machine's model on the `process` runtime, and checks from inside each instance
//! through CUDA itself (`libcuda`: `cuDeviceGetCount`, `cuDeviceGetUuid`) that exactly one GPU
//! is visible and that it is the one the daemon assigned; concurrent instances get distinct
//! GPUs. `nvidia-smi -L` output from inside an instance is printed for the record.
//!
//! Where NVML or a GPU is missing it says so on stderr and passes; with
//! `FLEETMAP_REQUIRE_GPU=1` it fails instead. On a GPU machine:
//!
//! ```text
//! FLEETMAP_REQUIRE_GPU=1 cargo test -p fleetmapd --test gpu_real -- --nocapture
//! ```

mod support;

use std::collections::HashSet;

use agent_proto::JobState;
use fleetmap_sandbox::{CgroupMode, GpuInventory, NvmlInventory};
use support::{function, get_json, run_job, spec, TestDaemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_sees_exactly_its_assigned_gpu_through_cuda() {
    require!(python);
    let required = std::env::var("FLEETMAP_REQUIRE_GPU").as_deref() == Ok("1");
    let nvml = NvmlInventory::load();
    let gpus = match nvml.read() {
        Ok(gpus) if !gpus.is_empty() => gpus,
        Ok(_) | Err(_) => {
            let why = if nvml.loaded() {
                "NVML reports no GPU"
            } else {
                "NVML (libnvidia-ml.so.1) cannot be loaded: no NVIDIA driver"
            };
            assert!(!required, "FLEETMAP_REQUIRE_GPU=1 but {why}");
            eprintln!("SKIPPED an_instance_sees_exactly_its_assigned_gpu_through_cuda: {why}");
            return;
        }
    };
    let whole: Vec<_> = gpus.iter().filter(|g| g.assignable()).collect();
    assert!(!whole.is_empty(), "every GPU is in MIG mode: {gpus:?}");
    let model = whole[0].name.clone();
    let of_model: HashSet<String> = whole
        .iter()
        .filter(|g| g.name == model)
        .map(|g| g.uuid.clone())
        .collect();
    eprintln!(
        "NVML: {gpus:#?}\nfunc_gpu = {model:?} ({} of them)",
        of_model.len()
    );

    let daemon = TestDaemon::start("gpu-real", CgroupMode::Auto).await;
    let info = get_json(daemon.addr, "/v1/node").await;
    assert_eq!(
        info["gpus"].as_array().map(Vec::len),
        Some(gpus.len()),
        "node info lists NVML's GPUs: {info}"
    );
    let mut job = spec("gpu-real");
    job.func_gpu = Some(model.clone());
    job.parallelism = of_model.len() as i64;
    let inputs = 2 * of_model.len() as u64;
    let out = run_job(daemon.addr, &job, &function("cuda_view", None), 0..inputs).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    let mut used = HashSet::new();
    for (index, payload) in &out.results {
        let text = support::unpickle_str(payload).expect("a str result");
        eprintln!("input {index}: {text}");
        let view: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert!(
            view["error"].is_null(),
            "CUDA failed in the instance: {text}"
        );
        let assigned = view["env"]
            .as_str()
            .expect("CUDA_VISIBLE_DEVICES set")
            .to_owned();
        assert!(
            of_model.contains(&assigned),
            "assigned {assigned}, not a {model}"
        );
        assert_eq!(view["count"], 1, "exactly one GPU visible to CUDA: {text}");
        assert_eq!(view["uuids"][0].as_str(), Some(assigned.as_str()), "{text}");
        used.insert(assigned);
    }
    assert_eq!(out.results.len() as u64, inputs);
    if of_model.len() > 1 {
        assert!(
            used.len() > 1,
            "concurrent instances got distinct GPUs: {used:?}"
        );
    }
    daemon.stop().await;
}
