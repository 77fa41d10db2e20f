//! Black-box GPU tests: a daemon from `fleetmapd::run` on `127.0.0.1:0` given a test-only
//! GPU inventory (`GpuSource::TestOnlyFake`, what `fleetmapd --test-only-fake-gpus` sets), real
//! Python workers, jobs with `func_gpu` over HTTP. Each instance reports from inside what it
//! sees (`CUDA_VISIBLE_DEVICES`, the device nodes it may open); the checks are on that.
//!
//! The same flow on a real GPU, through NVML, is `gpu_real.rs`.

mod support;

use std::collections::{HashMap, HashSet};

use agent_proto::{JobSpec, JobState};
use fleetmap_sandbox::CgroupMode;
use fleetmapd::GpuSource;
use http::{Method, StatusCode};
use support::{call, frames, function, get_json, run_job, spec, TestDaemon};

const H100: &str = "NVIDIA H100 80GB HBM3:81559";
const A10G: &str = "NVIDIA A10G:23028";

/// What one input's instance saw.
#[derive(Debug, Clone)]
struct Seen {
    cuda: Option<String>,
    nvidia: Option<String>,
    pid: u64,
    start: f64,
    end: f64,
}

fn seen(out: &support::Collected) -> Vec<Seen> {
    let mut all = Vec::new();
    for payload in out.results.values() {
        let text = support::unpickle_str(payload).expect("a str result");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        all.push(Seen {
            cuda: v["cuda"].as_str().map(str::to_owned),
            nvidia: v["nvidia"].as_str().map(str::to_owned),
            pid: v["pid"].as_u64().expect("pid"),
            start: v["start"].as_f64().expect("start"),
            end: v["end"].as_f64().expect("end"),
        });
    }
    all
}

/// No two different workers ran at overlapping times on the same GPU.
fn assert_exclusive(all: &[Seen]) {
    for a in all {
        for b in all {
            if a.pid != b.pid && a.start < b.end && b.start < a.end {
                assert_ne!(
                    a.cuda, b.cuda,
                    "workers {} and {} ran at once on the same GPU",
                    a.pid, b.pid
                );
            }
        }
    }
}

async fn fake_daemon(name: &str, gpus: &[&str]) -> TestDaemon {
    let list = gpus.join(",");
    TestDaemon::start_with(name, CgroupMode::Auto, move |config| {
        config.gpus = GpuSource::TestOnlyFake(list);
        config.pool_size = Some(4);
    })
    .await
}

fn gpu_spec(id: &str, model: &str, parallelism: i64) -> JobSpec {
    let mut job = spec(id);
    job.func_gpu = Some(model.into());
    job.parallelism = parallelism;
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_instance_sees_exactly_its_own_gpu_of_the_model() {
    require!(python);
    let daemon = fake_daemon("gpu-env", &[H100, A10G, H100]).await;
    let node = &daemon.node_id;
    let h100s: HashSet<String> = [0, 2]
        .iter()
        .map(|i| format!("GPU-fake-{node}-{i}"))
        .collect();

    let info = get_json(daemon.addr, "/v1/node").await;
    let gpus = info["gpus"].as_array().expect("gpus listed");
    assert_eq!(gpus.len(), 3, "{info}");
    assert_eq!(gpus[1]["name"], "NVIDIA A10G");
    assert_eq!(gpus[1]["memory_bytes"], 23028u64 << 20);
    assert_eq!(gpus[0]["mig"], "disabled");
    assert!(gpus.iter().all(|g| g["in_use"] == false));

    let out = run_job(
        daemon.addr,
        &gpu_spec("gpu-env", "H100", 2),
        &function("gpu_env", None),
        0..12,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    let all = seen(&out);
    assert_eq!(all.len(), 12);
    for s in &all {
        let uuid = s.cuda.clone().expect("CUDA_VISIBLE_DEVICES set");
        assert!(h100s.contains(&uuid), "{uuid} is not one of the H100s");
        assert_eq!(
            s.nvidia, s.cuda,
            "NVIDIA_VISIBLE_DEVICES names the same GPU"
        );
        assert!(!uuid.contains(','), "exactly one GPU visible: {uuid}");
    }
    // Two instances ran at once, on the two H100s; neither ever saw the A10G.
    let used: HashSet<String> = all.iter().filter_map(|s| s.cuda.clone()).collect();
    assert_eq!(used, h100s);
    assert_exclusive(&all);
    // Released with their slots.
    let info = get_json(daemon.addr, "/v1/node").await;
    assert!(
        info["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .all(|g| g["in_use"] == false),
        "{info}"
    );

    // A job without func_gpu gets no GPU variables.
    let out = run_job(
        daemon.addr,
        &spec("no-gpu"),
        &function("gpu_env", None),
        0..2,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed);
    assert!(seen(&out)
        .iter()
        .all(|s| s.cuda.is_none() && s.nvidia.is_none()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_gpu_jobs_never_share_a_gpu() {
    require!(python);
    // One H100 (and an A10G no job asks for): with more CPUs than H100s, the GPU is what
    // the jobs must take turns on.
    let daemon = fake_daemon("gpu-share", &[A10G, H100]).await;
    let addr = daemon.addr;
    let f = function("gpu_env", None);
    let jobs: Vec<_> = (0..3)
        .map(|j| {
            let f = f.clone();
            tokio::spawn(async move {
                run_job(addr, &gpu_spec(&format!("share-{j}"), "h100", 2), &f, 0..8).await
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut by_job: HashMap<usize, usize> = HashMap::new();
    for (j, job) in jobs.into_iter().enumerate() {
        let out = job.await.expect("job task");
        assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
        let s = seen(&out);
        by_job.insert(j, s.len());
        all.extend(s);
    }
    assert_eq!(by_job.values().sum::<usize>(), 24);
    let h100 = format!("GPU-fake-{}-1", daemon.node_id);
    assert!(all.iter().all(|s| s.cuda.as_deref() == Some(h100.as_str())));
    assert_exclusive(&all);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_refusals_name_what_the_node_has() {
    require!(python);
    let daemon = fake_daemon("gpu-refuse", &[H100, H100, &format!("{A10G}:mig")]).await;
    let body = |job: &JobSpec| {
        frames(&[
            agent_proto::Frame::json(agent_proto::FrameKind::Spec, job),
            agent_proto::Frame::new(agent_proto::FrameKind::Function, function("double", None)),
        ])
    };
    let cases = [
        (
            gpu_spec("unknown", "A100", -1),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no GPU on this node matches func_gpu=\"A100\"; this node has NVIDIA H100 80GB HBM3 (×2), NVIDIA A10G (×1); change func_gpu or add a node with that GPU",
        ),
        (
            // "A10" is not "A10G": whole tokens only.
            gpu_spec("a10", "A10", -1),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no GPU on this node matches func_gpu=\"A10\"",
        ),
        (
            gpu_spec("mig", "A10G", -1),
            StatusCode::UNPROCESSABLE_ENTITY,
            "is in MIG mode and cannot be handed out whole",
        ),
        (
            gpu_spec("narrow", "H100_40G", -1),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no GPU on this node matches func_gpu=\"H100_40G\"",
        ),
        (
            gpu_spec("only-memory", "80GB", -1),
            StatusCode::BAD_REQUEST,
            "names only a memory size",
        ),
    ];
    for (job, status, needle) in cases {
        let (got, bytes) = call(daemon.addr, Method::POST, "/v1/jobs", body(&job)).await;
        let error: agent_proto::ErrorBody = serde_json::from_slice(&bytes).expect("JSON error");
        let text = error.error.message;
        assert_eq!(got, status, "{}: {text}", job.job_id);
        assert!(
            text.contains(needle),
            "{}: {text} lacks {needle:?}",
            job.job_id
        );
    }
    // Still serving, and the right model still runs.
    let out = run_job(
        daemon.addr,
        &gpu_spec("fits", "H100_80G", -1),
        &function("gpu_env", None),
        0..3,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    daemon.stop().await;
}

/// cgroup v1 hosts: a GPU instance may open its own `/dev/nvidia<minor>` but not another
/// GPU's. Device nodes with the NVIDIA major are made with mknod in a temporary directory:
/// with no driver behind them, opening an allowed one fails with ENXIO/ENODEV (the kernel
/// looked for a driver), a denied one with EPERM (the device cgroup said no).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_device_cgroup_fences_off_the_other_gpus() {
    require!(cgroups);
    if !std::path::Path::new("/sys/fs/cgroup/devices/devices.deny").is_file() {
        if std::env::var("FLEETMAP_REQUIRE_CGROUPS").as_deref() == Ok("1") {
            panic!("FLEETMAP_REQUIRE_CGROUPS=1 but no cgroup v1 devices controller at /sys/fs/cgroup/devices");
        }
        eprintln!("SKIPPED the_device_cgroup_fences_off_the_other_gpus: no cgroup v1 devices controller (cgroup v2 would need eBPF device programs)");
        return;
    }
    let nodes = tempfile::tempdir().expect("tempdir");
    for minor in 0..3u64 {
        let path = nodes.path().join(format!("nvidia{minor}"));
        let dev = nix::sys::stat::makedev(195, minor);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            dev,
        )
        .expect("mknod");
    }
    let daemon = TestDaemon::start_with("gpu-fence", CgroupMode::Required, |config| {
        config.gpus = GpuSource::TestOnlyFake([H100, H100, H100].join(","));
    })
    .await;
    let dir = nodes.path().display().to_string();
    let mut job = gpu_spec("fence", "H100", 1);
    job.expected_inputs = Some(1);
    let out = run_job(
        daemon.addr,
        &job,
        &function("open_devices", Some(&dir)),
        0..1,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    let text = support::unpickle_str(out.results.get(&0).expect("result")).expect("str");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let own = v["CUDA_VISIBLE_DEVICES"].as_str().expect("gpu").to_owned();
    let own_minor: u64 = own
        .rsplit('-')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("minor");
    for minor in 0..3u64 {
        let got = v[format!("nvidia{minor}")]
            .as_str()
            .expect("errno")
            .to_owned();
        if minor == own_minor {
            assert!(
                got == "ENXIO" || got == "ENODEV",
                "own GPU node: {got} ({text})"
            );
        } else {
            assert_eq!(got, "EPERM", "GPU {minor} must be fenced off ({text})");
        }
    }
    let devices = std::path::Path::new("/sys/fs/cgroup/devices").join(&daemon.cgroup_parent);
    assert!(
        devices.is_dir(),
        "the slot device cgroups live under {}",
        devices.display()
    );
    // The instance's device cgroup goes with its slot, once the job has ended.
    let slots = || {
        std::fs::read_dir(&devices)
            .map(|dir| dir.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while slots() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "slot device cgroups left in {}",
            devices.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    daemon.stop().await;
    assert!(
        !devices.exists(),
        "{} outlived the daemon",
        devices.display()
    );
}
