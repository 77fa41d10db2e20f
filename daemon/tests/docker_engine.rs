//! The Docker engine restarted under a running daemon, against a real engine of the test's
//! own: a job whose containers the engine's stop killed finishes with every result (its
//! inputs retried in containers of the engine's next run), the daemon serves throughout, a
//! job that finds the engine gone for good fails with one sentence naming the engine, and
//! the next job after the engine is back runs.
//!
//! The engine is a private `dockerd` (own data root, exec root, socket and config, `vfs`
//! storage) in a network namespace of its own, so it never touches the host's engine, its
//! containers or its bridge. The daemon reaches it through `DOCKER_HOST`, set once for this
//! test binary, which holds this one test. Skipped loudly without Docker, root or `ip netns`,
//! unless `FLEETMAP_REQUIRE_DOCKER=1`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_proto::{FailureKind, JobState};
use fleetmap_sandbox::CgroupMode;
use fleetmapd::RuntimeKind;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{function, run_job, spec, TestDaemon};

const IMAGE: &str = "fleetmap/base:1";

/// A `dockerd` of this test's own, in its own network namespace.
struct PrivateEngine {
    dir: tempfile::TempDir,
    netns: String,
    child: Option<Child>,
}

impl PrivateEngine {
    /// Creates the namespace and the engine's files; does not start it.
    fn create() -> Result<Self, String> {
        let netns = format!("fm-engine-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &netns])
            .status();
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        // Short paths: containerd's sockets live under the exec root (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("fme")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let config = serde_json::json!({
            "data-root": dir.path().join("data"),
            "exec-root": dir.path().join("x"),
            "pidfile": dir.path().join("dockerd.pid"),
            "hosts": [format!("unix://{}", dir.path().join("docker.sock").display())],
            "storage-driver": "vfs",
            "bridge": "none",
            "iptables": false,
            "ip-forward": false,
            "ip-masq": false,
            "live-restore": false,
            "shutdown-timeout": 3,
        });
        std::fs::write(dir.path().join("daemon.json"), config.to_string())
            .map_err(|e| format!("write daemon.json: {e}"))?;
        Ok(Self {
            dir,
            netns,
            child: None,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts the engine and waits until it answers.
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .expect("engine log");
        // `ip netns exec` would remount /sys and hide the cgroup mounts: enter the network
        // namespace only.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg("--config-file")
            .arg(self.dir.path().join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.docker(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the private engine did not answer: {}", self.log_tail());
    }

    /// Stops the engine as its service manager would (SIGTERM) and waits for it to exit.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if child.try_wait().expect("wait").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the private engine did not stop on SIGTERM");
    }

    /// Runs the docker CLI against this engine.
    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .expect("docker CLI")
    }

    /// Copies `image` from the host's engine into this one.
    fn load_from_host(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let stdout = save.stdout.take().expect("save's stdout");
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .arg("load")
            .stdin(stdout)
            .output()
            .expect("docker load");
        assert!(save.wait().expect("save").success(), "docker save {image}");
        assert!(
            load.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// Containers (running or not) whose node label is `node`.
    fn containers_of(&self, node: &str) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}={node}", fleetmapd::runtime::docker::LABEL_NODE),
        ]);
        assert!(out.status.success(), "docker ps");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(
                Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        // vfs layers and container state: leave nothing mounted under the temp dir.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("x"))
            .status();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// Whether the host has what the test needs; `Err` says why not.
async fn available() -> Result<(), String> {
    support::python_available()?;
    if !Path::new("/usr/sbin/dockerd").exists() && which("dockerd").is_none() {
        return Err("no dockerd binary".into());
    }
    let engine = fleetmap_base_image::Engine::connect()
        .await
        .map_err(|e| format!("no Docker engine: {e}"))?;
    match engine.inspect(IMAGE).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "the engine has no {IMAGE}; run `fleetmap-base-image ensure`"
            ))
        }
        Err(e) => return Err(format!("cannot inspect {IMAGE}: {e}")),
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (a private dockerd and a network namespace)".into());
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    })
}

/// Waits up to `limit` for `job` to have answered a few inputs.
async fn wait_running(addr: std::net::SocketAddr, job: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok((code, body)) = support::get(addr, &format!("/v1/jobs/{job}")).await {
            let status: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if code.is_success() && status["done"].as_u64().unwrap_or(0) >= 2 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {job} did not get going");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_docker_engine_restarted_under_the_daemon() {
    if let Err(why) = available().await {
        if std::env::var("FLEETMAP_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("FLEETMAP_REQUIRE_DOCKER=1 but {why}");
        }
        eprintln!("SKIPPED the_docker_engine_restarted_under_the_daemon: {why}");
        return;
    }
    let mut engine = match PrivateEngine::create() {
        Ok(engine) => engine,
        Err(why) => {
            if std::env::var("FLEETMAP_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("FLEETMAP_REQUIRE_DOCKER=1 but {why}");
            }
            eprintln!("SKIPPED the_docker_engine_restarted_under_the_daemon: {why}");
            return;
        }
    };
    engine.start();
    engine.load_from_host(IMAGE);
    // The only test of this binary: the daemon below connects through it.
    std::env::set_var("DOCKER_HOST", engine.host());

    let daemon = TestDaemon::start_with("engine", CgroupMode::Auto, |config| {
        config.runtime = RuntimeKind::Docker;
        config.docker_image = IMAGE.to_string();
        config.container_network = "none".to_string();
    })
    .await;

    // 1. The engine stops while a job runs and comes back: every input gets its result.
    let mut job = spec("engine-restart");
    job.retries = 3;
    let slow = function("sleep_then_host", None);
    let running = {
        let (addr, job, slow) = (daemon.addr, job.clone(), slow.clone());
        tokio::spawn(async move { run_job(addr, &job, &slow, 0..120).await })
    };
    wait_running(daemon.addr, "engine-restart", Duration::from_secs(60)).await;
    engine.stop();
    let (health, _) = support::get(daemon.addr, "/v1/health")
        .await
        .expect("the daemon answers while the engine is down");
    assert!(health.is_success(), "health {health} with the engine down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.start();
    let out = tokio::time::timeout(Duration::from_secs(120), running)
        .await
        .expect("the job ends after the engine is back")
        .expect("job task");
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    let mut hosts = std::collections::HashSet::new();
    for i in 0..120u64 {
        let answer = out
            .results
            .get(&i)
            .and_then(|p| support::unpickle_str(p))
            .unwrap_or_else(|| panic!("input {i} has no result"));
        let (index, host) = answer.split_once('@').expect("x@host");
        assert_eq!(index, i.to_string());
        hosts.insert(host.to_owned());
    }
    // Two slots keep their containers for the whole job unless they die: more hosts than
    // slots means the engine's stop really killed the job's containers.
    assert!(
        hosts.len() > 2,
        "the engine stop killed no container of the job: {hosts:?}"
    );

    // 2. The engine stops and stays away: a new job fails with the engine named, in bounded
    //    time, and the daemon keeps serving.
    engine.stop();
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        run_job(
            daemon.addr,
            &spec("engine-gone"),
            &function("double", None),
            0..4,
        ),
    )
    .await
    .expect("a job on a gone engine ends");
    let end = out.end();
    assert_eq!(end.state, JobState::Failed, "{end:?}");
    let message = end.message.clone().unwrap_or_default();
    assert!(
        message.contains("Docker engine") && message.contains(&engine.host()),
        "the failure names the engine: {message}"
    );
    assert!(
        out.failures
            .iter()
            .all(|f| f.info.kind != FailureKind::Exception),
        "{:?}",
        out.failures
    );
    eprintln!(
        "a job on a gone engine failed after {:?}: {message}",
        started.elapsed()
    );
    let (health, _) = support::get(daemon.addr, "/v1/health")
        .await
        .expect("the daemon answers");
    assert!(health.is_success());

    // 3. The engine is back: the next job runs.
    engine.start();
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        run_job(
            daemon.addr,
            &spec("engine-back"),
            &function("double", None),
            0..50,
        ),
    )
    .await
    .expect("a job after the engine is back ends");
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    for i in 0..50u64 {
        assert_eq!(out.int(i), Some(2 * i as i64), "input {i}");
    }

    let node = daemon.node_id.clone();
    daemon.stop().await;
    let left = engine.containers_of(&node);
    assert!(left.is_empty(), "containers left after shutdown: {left:?}");
    engine.stop();
}
