//! The `docker` runtime against the real engine: jobs run in warm containers, limits seen from
//! inside match the job's, an allocation past `func_ram` is an OOM failure of its input only,
//! and a SIGKILLed daemon's containers are gone once it restarts.
//!
//! Skipped loudly when the engine or the base image is missing, unless
//! `FLEETMAP_REQUIRE_DOCKER=1`, which turns the skip into a failure.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_proto::{FailureKind, JobState};
use bollard::query_parameters::ListContainersOptions;
use fleetmap_sandbox::CgroupMode;
use fleetmapd::runtime::docker::{LABEL_NODE, LABEL_RUN};
use fleetmapd::RuntimeKind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{function, run_job, spec, TestDaemon};

const IMAGE: &str = "fleetmap/base:1";

/// Whether the engine answers and has the base image; `Err` says why not.
async fn docker_available() -> Result<(), String> {
    support::python_available()?;
    let engine = fleetmap_base_image::Engine::connect()
        .await
        .map_err(|e| format!("no Docker engine: {e}"))?;
    match engine.inspect(IMAGE).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "the engine has no {IMAGE}; run `fleetmap-base-image ensure`"
        )),
        Err(e) => Err(format!("cannot inspect {IMAGE}: {e}")),
    }
}

macro_rules! require_docker {
    () => {
        if let Err(why) = docker_available().await {
            if std::env::var("FLEETMAP_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("FLEETMAP_REQUIRE_DOCKER=1 but {why}");
            }
            eprintln!("SKIPPED {}: needs Docker: {why}", module_path!());
            return;
        }
    };
}

async fn start(name: &str) -> TestDaemon {
    TestDaemon::start_with(name, CgroupMode::Auto, |config| {
        config.runtime = RuntimeKind::Docker;
        config.docker_image = IMAGE.to_string();
        config.container_network = "none".to_string();
    })
    .await
}

/// Labels of the containers (running or not) whose node label is `node`.
async fn containers_of(node: &str) -> Vec<HashMap<String, String>> {
    let engine = fleetmap_base_image::Engine::connect()
        .await
        .expect("engine");
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_NODE}={node}")],
        )])),
        ..Default::default()
    };
    engine
        .docker()
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| c.labels.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_runs_in_warm_containers() {
    require_docker!();
    let daemon = start("dk-job").await;
    let node = support::get_json(daemon.addr, "/v1/node").await;
    assert_eq!(node["runtime"], "docker", "{node}");
    assert_eq!(node["pool"]["idle"], 2, "warm containers: {node}");
    let started = Instant::now();
    let out = run_job(
        daemon.addr,
        &spec("dk-job"),
        &function("double", None),
        0..50,
    )
    .await;
    eprintln!(
        "docker runtime: 50 inputs in {:?} with warm containers",
        started.elapsed()
    );
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.failures);
    assert!((0..50).all(|i| out.int(i) == Some(2 * i as i64)));
    let node_id = daemon.node_id.clone();
    daemon.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        containers_of(&node_id).await.is_empty(),
        "a graceful stop removes every container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_sees_its_cpuset_and_memory_limit() {
    require_docker!();
    let daemon = start("dk-limits").await;
    let mut job = spec("dk-limits");
    job.func_cpu = 1;
    job.func_ram_gb = 1;
    job.expected_inputs = Some(1);
    let out = run_job(daemon.addr, &job, &function("container_limits", None), 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.failures);
    let seen = support::unpickle_str(&out.results[&0]).expect("a str");
    let seen: serde_json::Value = serde_json::from_str(&seen).expect("json");
    let affinity = seen["affinity"].as_array().expect("affinity");
    assert_eq!(affinity.len(), 1, "func_cpu=1: {seen}");
    assert_eq!(
        seen["cpuset"].as_str(),
        Some(affinity[0].to_string().as_str()),
        "{seen}"
    );
    assert_eq!(seen["memory_limit"], "1073741824", "{seen}");
    if seen["memsw_limit"] != "" {
        assert_eq!(seen["memsw_limit"], "1073741824", "swap off: {seen}");
    }
    assert_eq!(seen["pid"], 1, "the worker is the container's init: {seen}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allocation_past_func_ram_is_an_oom_of_its_input_only() {
    require_docker!();
    let daemon = start("dk-oom").await;
    let out = run_job(
        daemon.addr,
        &spec("dk-oom"),
        &function("oom_on_3", None),
        0..20,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    let failure = &out.failures[0];
    assert_eq!(failure.index, 3);
    assert_eq!(failure.info.kind, FailureKind::Oom, "{:?}", failure.info);
    assert_eq!(
        failure.info.message,
        "input 3 was killed: out of memory (func_ram=1 GB); raise func_ram or use less memory per input"
    );
    assert_eq!(out.results.len(), 19);
    daemon.stop().await;
}

struct Binary {
    child: Child,
    addr_file: PathBuf,
}

fn start_binary(state: &Path, node: &str) -> Binary {
    let addr_file = state.with_extension("addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(env!("CARGO_BIN_EXE_fleetmapd"))
        .args(["--listen", "127.0.0.1:0", "--node-id", node])
        .args(["--worker-python", "python3", "--pool-size", "2"])
        .args(["--runtime", "docker", "--container-network", "none"])
        .args(["--cgroup-parent", &format!("fleetmap-test/{node}")])
        .arg("--state-dir")
        .arg(state)
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("FLEETMAP_TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("fleetmapd starts");
    Binary { child, addr_file }
}

impl Binary {
    async fn wait_serving(&self) {
        let started = Instant::now();
        while !self.addr_file.exists() {
            assert!(started.elapsed() < Duration::from_secs(60), "no addr-file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal");
    }

    fn wait(&mut self) {
        let started = Instant::now();
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_removes_the_containers_of_a_killed_run() {
    require_docker!();
    let node = support::node_id("dk-restart");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut first = start_binary(&state, &node);
    first.wait_serving().await;
    first.signal(Signal::SIGKILL);
    first.wait();
    let left: HashSet<String> = containers_of(&node)
        .await
        .into_iter()
        .filter_map(|l| l.get(LABEL_RUN).cloned())
        .collect();
    assert_eq!(left.len(), 1, "the killed run left its warm containers");

    let mut second = start_binary(&state, &node);
    second.wait_serving().await;
    let now = containers_of(&node).await;
    assert!(!now.is_empty(), "the new run has warm containers");
    assert!(
        now.iter()
            .all(|l| l.get(LABEL_RUN).is_some_and(|r| !left.contains(r))),
        "no container of the killed run is left: {now:?}"
    );
    second.signal(Signal::SIGTERM);
    second.wait();
    assert!(
        containers_of(&node).await.is_empty(),
        "SIGTERM removes every container"
    );
    let parent = format!("memory/fleetmap-test/{node}-containers");
    assert!(
        !Path::new(fleetmap_sandbox::DEFAULT_CGROUP_ROOT)
            .join(&parent)
            .exists(),
        "SIGTERM removes the containers' cgroup parent {parent}"
    );
}

/// A GPU slot does not take a warm container: one is created for it with a device request for
/// its GPU's UUID. The GPUs here come from the test-only inventory, so there is no device
/// behind them: the engine refuses the request (no NVIDIA Container Toolkit here, or an
/// unknown device where it is installed), which shows the request reached the engine, and the
/// job fails with one sentence saying what the node needs, while the daemon keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gpu_slot_asks_the_engine_for_its_gpu_and_says_what_is_missing() {
    require_docker!();
    let daemon = TestDaemon::start_with("docker-gpu", CgroupMode::Auto, |config| {
        config.runtime = RuntimeKind::Docker;
        config.docker_image = IMAGE.to_string();
        config.container_network = "none".to_string();
        config.gpus = fleetmapd::GpuSource::TestOnlyFake("NVIDIA H100 80GB HBM3:81559".into());
    })
    .await;
    let mut job = spec("docker-gpu");
    job.func_gpu = Some("H100".into());
    let out = run_job(daemon.addr, &job, &function("double", None), 0..2).await;
    let end = out.end();
    assert_eq!(end.state, JobState::Failed, "{end:?}");
    let message = end.message.clone().unwrap_or_default();
    eprintln!("the GPU job ended with: {message}");
    assert!(
        message.contains("a GPU container needs the NVIDIA Container Toolkit on this node"),
        "{message}"
    );
    assert!(message.to_lowercase().contains("nvidia"), "{message}");
    // CPU jobs still run in warm containers.
    let out = run_job(
        daemon.addr,
        &spec("docker-cpu"),
        &function("double", None),
        0..3,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    daemon.stop().await;
}

/// Serves `IMAGE` (saved with `docker save`) from a registry on 127.0.0.1 as `name:tag`; the
/// returned child is the registry, the string the image's full name there.
fn serve_base_image(dir: &Path, name: &str, tag: &str) -> (Child, String) {
    let saved = dir.join("base.tar");
    let status = Command::new("docker")
        .args(["save", IMAGE, "-o"])
        .arg(&saved)
        .status()
        .expect("docker save");
    assert!(status.success(), "docker save {IMAGE}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/registry.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(&saved)
        .args([name, tag])
        .stdout(Stdio::piped())
        .spawn()
        .expect("registry");
    let mut port = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut port).expect("port");
    (child, format!("127.0.0.1:{}/{name}:{tag}", port.trim()))
}

async fn remove_image(image: &str) {
    let docker = bollard::Docker::connect_with_local_defaults().expect("engine");
    let _ = docker
        .remove_image(
            image,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_base_image_is_pulled_only_when_the_node_is_told_to() {
    require_docker!();
    let dir = tempfile::tempdir().expect("dir");
    let tag = format!("t{}", std::process::id());
    let (mut registry, image) = serve_base_image(dir.path(), "fleetmap-test/pulled", &tag);
    remove_image(&image).await;

    // Without --docker-pull a missing image is one sentence naming both ways to get it.
    let state = tempfile::tempdir().expect("state");
    let mut config = fleetmapd::Config::new("dk-nopull", state.path(), "python3");
    config.runtime = RuntimeKind::Docker;
    config.docker_image = image.clone();
    config.cgroup_mode = CgroupMode::Off;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        fleetmapd::run(config, listener, std::future::pending::<()>()),
    )
    .await
    .expect("the daemon refuses at once");
    let text = format!("{:#}", refused.expect_err("no image, no pull"));
    assert!(
        text.contains(&image)
            && text.contains("--docker-pull")
            && text.contains("fleetmap-base-image ensure"),
        "{text}"
    );

    // With it, the daemon pulls the image from the registry and runs jobs in it.
    let daemon = TestDaemon::start_with("dk-pull", CgroupMode::Auto, |config| {
        config.runtime = RuntimeKind::Docker;
        config.docker_image = image.clone();
        config.docker_pull = true;
        config.container_network = "none".to_string();
    })
    .await;
    let out = run_job(
        daemon.addr,
        &spec("dk-pull"),
        &function("double", None),
        0..5,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.failures);
    assert!((0..5).all(|i| out.int(i) == Some(2 * i as i64)));
    daemon.stop().await;
    let _ = registry.kill();
    let _ = registry.wait();
    remove_image(&image).await;
}
