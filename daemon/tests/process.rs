//! Process-level behaviour through the real `fleetmapd` binary: graceful SIGTERM, and the
//! cleanup at start of what a SIGKILLed run left behind (workers and cgroups).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_proto::JobState;
use http::Method;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{child_cgroups, function, request, spec, submission};

struct Binary {
    child: Child,
    addr_file: PathBuf,
}

fn start(state: &Path, node: &str, parent: &str) -> Binary {
    let addr_file = state.with_extension("addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(env!("CARGO_BIN_EXE_fleetmapd"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            node,
            "--worker-python",
            "python3",
        ])
        .args([
            "--pool-size",
            "2",
            "--cgroups",
            "required",
            "--cgroup-parent",
            parent,
        ])
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
    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal");
    }

    async fn addr(&self) -> SocketAddr {
        let started = Instant::now();
        loop {
            if let Ok(url) = std::fs::read_to_string(&self.addr_file) {
                let addr = url.trim().trim_start_matches("http://");
                return addr.parse().expect("addr-file holds http://HOST:PORT");
            }
            assert!(started.elapsed() < Duration::from_secs(60), "no addr-file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "fleetmapd did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a job of `n` inputs that each write their pid and sleep; returns the stream and
/// the workers' pids once they all run.
async fn sleeping_job(
    addr: SocketAddr,
    id: &str,
    n: u64,
    pids: &Path,
) -> (hyper::Response<hyper::body::Incoming>, Vec<u32>) {
    let sleeper = function("pid_then_sleep", Some(pids.to_str().expect("utf-8")));
    let mut job = spec(id);
    job.expected_inputs = Some(n);
    let response = request(
        addr,
        Method::POST,
        "/v1/jobs",
        submission(&job, &sleeper, 0..n),
    )
    .await
    .expect("submit");
    let started = Instant::now();
    loop {
        let found: Vec<u32> = std::fs::read_dir(pids)
            .expect("dir")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if found.len() as u64 >= n {
            return (response, found);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "workers did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_sigint_cancels_jobs_kills_workers_and_removes_cgroups() {
    require!(cgroups);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let node = support::node_id("sigterm");
    let parent = format!("fleetmap-test/{node}");
    let mut daemon = start(&state, &node, &parent);
    let addr = daemon.addr().await;
    let pids_dir = dir.path().join("pids");
    std::fs::create_dir(&pids_dir).expect("mkdir");
    let (stream, pids) = sleeping_job(addr, "term", 2, &pids_dir).await;
    assert!(!child_cgroups(&parent).is_empty());

    // SIGTERM drains: the running job goes on (its inputs sleep 60 s)...
    daemon.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for pid in &pids {
        assert!(
            support::alive(*pid),
            "worker {pid} was stopped by a draining SIGTERM"
        );
    }
    // ...and SIGINT (or a second SIGTERM) stops the daemon at once.
    daemon.signal(Signal::SIGINT);
    let out = support::collect(stream).await;
    assert_eq!(out.end().state, JobState::Cancelled);
    assert_eq!(
        out.end().message.as_deref(),
        Some("the node is shutting down")
    );
    let status = daemon.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    for pid in pids {
        assert!(!support::alive(pid), "worker {pid} outlived the daemon");
    }
    assert!(
        child_cgroups(&parent).is_empty(),
        "{:?}",
        child_cgroups(&parent)
    );
    assert!(!state.join("worker.sock").exists(), "socket left behind");
    assert!(!daemon.addr_file.exists(), "addr-file left behind");
    support::remove_cgroup_parent(&parent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_removes_what_a_killed_run_left() {
    require!(cgroups);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let node = support::node_id("restart");
    let parent = format!("fleetmap-test/{node}");
    let mut first = start(&state, &node, &parent);
    let addr = first.addr().await;
    let pids_dir = dir.path().join("pids");
    std::fs::create_dir(&pids_dir).expect("mkdir");
    let (stream, old_workers) = sleeping_job(addr, "left", 2, &pids_dir).await;
    let old_slots: Vec<PathBuf> = child_cgroups(&parent)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("slot-"))
        })
        .collect();
    assert!(!old_slots.is_empty());

    first.signal(Signal::SIGKILL);
    first.wait(Duration::from_secs(5));
    drop(stream);
    assert!(
        old_workers.iter().any(|p| support::alive(*p)),
        "the killed run should have left its busy workers"
    );

    let second = start(&state, &node, &parent);
    let addr = second.addr().await;
    for pid in &old_workers {
        assert!(
            !support::alive(*pid),
            "worker {pid} of the killed run survived the restart"
        );
    }
    for slot in &old_slots {
        assert!(!slot.exists(), "{} survived the restart", slot.display());
    }
    // The restarted daemon works.
    let out = support::run_job(addr, &spec("after"), &function("double", None), 0..10).await;
    assert_eq!(out.end().state, JobState::Completed);
    second.signal(Signal::SIGTERM);
    let mut second = second;
    assert!(second.wait(Duration::from_secs(20)).success());
    assert!(child_cgroups(&parent).is_empty());
    support::remove_cgroup_parent(&parent);
}
