//! Black-box job tests: a daemon from `fleetmapd::run` on `127.0.0.1:0`, a real zygote and
//! real Python workers in real cgroups, spoken to over HTTP with frames.

mod support;

use std::time::{Duration, Instant};

use agent_proto::{FailureKind, Frame, FrameKind, JobState, NO_INDEX};
use bytes::Bytes;
use fleetmap_sandbox::CgroupMode;
use http::{Method, StatusCode};
use support::{
    collect, frames, function, int_inputs, request, run_job, spec, submission, TestDaemon,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_inputs_come_back_exactly_once() {
    require!(cgroups);
    let daemon = TestDaemon::start("ten-k", CgroupMode::Required).await;
    let mut job = spec("ten-k");
    job.expected_inputs = Some(10_000);
    let out = run_job(daemon.addr, &job, &function("double", None), 0..10_000).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(out.end().done, 10_000);
    assert_eq!(out.results.len(), 10_000);
    for i in 0..10_000u64 {
        assert_eq!(out.int(i), Some(2 * i as i64), "input {i}");
    }
    assert!(out.failures.is_empty());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_can_follow_on_a_second_request() {
    require!(python);
    let daemon = TestDaemon::start("second-body", CgroupMode::Auto).await;
    let job = spec("second-body");
    let mut first = vec![
        Frame::json(FrameKind::Spec, &job),
        Frame::new(FrameKind::Function, function("double", None)),
    ];
    first.extend(int_inputs(0..100, 50));
    let response = request(daemon.addr, Method::POST, "/v1/jobs", frames(&first))
        .await
        .expect("submit");
    assert_eq!(response.status(), StatusCode::OK);
    let mut rest = int_inputs(100..250, 60);
    rest.push(Frame::empty(FrameKind::InputsEnd));
    let (status, body) = support::call(
        daemon.addr,
        Method::POST,
        "/v1/jobs/second-body/inputs",
        frames(&rest),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let out = collect(response).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.results.len(), 250, "{:?}", out.end());
    assert_eq!(out.int(249), Some(498));
    let (status, _) = support::call(
        daemon.addr,
        Method::POST,
        "/v1/jobs/second-body/inputs",
        frames(&int_inputs(250..251, 1)),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "an ended job takes no inputs");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_end_on_a_second_request_keeps_the_first_bodys_later_inputs() {
    require!(python);
    use futures_util::StreamExt;
    use http_body_util::StreamBody;

    let daemon = TestDaemon::start("late-first-body", CgroupMode::Auto).await;
    let job = spec("late-first-body");
    // The first body sends SPEC and FUNCTION and stays open.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let body = StreamBody::new(
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|chunk| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk))),
    );
    let stream = tokio::net::TcpStream::connect(daemon.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    tx.send(frames(&[
        Frame::json(FrameKind::Spec, &job),
        Frame::new(FrameKind::Function, function("double", None)),
    ]))
    .await
    .expect("first frames");
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/v1/jobs", daemon.addr))
        .header(http::header::CONTENT_TYPE, agent_proto::FRAMES_CONTENT_TYPE)
        .body(body)
        .expect("request");
    let response = sender.send_request(request).await.expect("submit");
    assert_eq!(response.status(), StatusCode::OK);
    // A second body brings inputs and INPUTS_END while the first is still open...
    let mut rest = int_inputs(100..250, 60);
    rest.push(Frame::empty(FrameKind::InputsEnd));
    let (status, answer) = support::call(
        daemon.addr,
        Method::POST,
        "/v1/jobs/late-first-body/inputs",
        frames(&rest),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // ...and the first body's inputs, sent after that INPUTS_END, still belong to the job.
    tx.send(frames(&int_inputs(0..100, 50)))
        .await
        .expect("first inputs");
    drop(tx);
    let out = collect(response).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.results.len(), 250, "{:?}", out.end());
    assert_eq!(out.int(0), Some(0));
    assert_eq!(out.int(249), Some(498));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prints_arrive_as_output_frames_tagged_with_their_input() {
    require!(python);
    let daemon = TestDaemon::start("printer", CgroupMode::Auto).await;
    let out = run_job(
        daemon.addr,
        &spec("printer"),
        &function("printer", None),
        0..5,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed);
    let mut seen: Vec<u64> = out.outputs.iter().map(|o| o.index).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    let text: String = out
        .outputs
        .iter()
        .filter(|o| o.index == 3)
        .map(|o| String::from_utf8_lossy(&o.text).into_owned())
        .collect();
    assert_eq!(text, "hello from 3\n");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exception_stops_the_job() {
    require!(python);
    let daemon = TestDaemon::start("exception", CgroupMode::Auto).await;
    let out = run_job(
        daemon.addr,
        &spec("exception"),
        &function("fail_on_7", None),
        0..2000,
    )
    .await;
    let end = out.end();
    assert_eq!(end.state, JobState::Failed);
    assert_eq!(out.failures.len(), 1);
    let failure = &out.failures[0];
    assert_eq!(failure.index, 7);
    assert_eq!(failure.info.kind, FailureKind::Exception);
    assert_eq!(failure.info.type_name.as_deref(), Some("ValueError"));
    assert!(
        failure.info.message.contains("bad value 7"),
        "{}",
        failure.info.message
    );
    assert_eq!(failure.info.node.as_deref(), Some(daemon.node_id.as_str()));
    assert!(
        !failure.exception.is_empty(),
        "the pickled exception travels"
    );
    assert_eq!(end.message.as_deref(), Some(failure.info.message.as_str()));
    assert!(out.results.len() < 2000, "the rest did not all run");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_stop_on_exception_the_others_complete() {
    require!(python);
    let daemon = TestDaemon::start("no-stop", CgroupMode::Auto).await;
    let mut job = spec("no-stop");
    job.stop_on_exception = false;
    let out = run_job(daemon.addr, &job, &function("fail_on_7", None), 0..50).await;
    assert_eq!(out.end().state, JobState::Completed);
    assert_eq!((out.end().done, out.end().failed), (49, 1));
    assert_eq!(out.results.len(), 49);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exiting_worker_fails_only_its_input() {
    require!(cgroups);
    let daemon = TestDaemon::start("exit", CgroupMode::Required).await;
    let out = run_job(
        daemon.addr,
        &spec("exit"),
        &function("exit_on_5", None),
        0..40,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    let failure = &out.failures[0];
    assert_eq!(failure.index, 5);
    assert_eq!(failure.info.kind, FailureKind::Exited);
    assert_eq!(failure.info.exit_code, Some(3));
    assert!(
        failure
            .info
            .message
            .starts_with("input 5 ended its worker with exit code 3 (os._exit"),
        "{}",
        failure.info.message
    );
    assert_eq!(out.results.len(), 39);
    assert!((0..40)
        .filter(|i| *i != 5)
        .all(|i| out.int(i) == Some(2 * i as i64)));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_memory_fails_only_its_input() {
    require!(cgroups);
    let daemon = TestDaemon::start("oom", CgroupMode::Required).await;
    let out = run_job(
        daemon.addr,
        &spec("oom"),
        &function("oom_on_3", None),
        0..20,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    let failure = &out.failures[0];
    assert_eq!(failure.index, 3);
    assert_eq!(failure.info.kind, FailureKind::Oom);
    assert_eq!(
        failure.info.message,
        "input 3 was killed: out of memory (func_ram=1 GB); raise func_ram or use less memory per input"
    );
    assert_eq!(out.results.len(), 19);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_input_times_out_and_the_rest_complete() {
    require!(cgroups);
    let daemon = TestDaemon::start("timeout", CgroupMode::Required).await;
    let mut job = spec("timeout");
    job.timeout_s = Some(0.5);
    let started = Instant::now();
    let out = run_job(daemon.addr, &job, &function("sleep_on_2", None), 0..10).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.end().state, JobState::Completed);
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].index, 2);
    assert_eq!(out.failures[0].info.kind, FailureKind::Timeout);
    assert!(out.failures[0].info.message.contains("timeout=0.5 s"));
    assert_eq!(out.results.len(), 9);
    assert!(
        out.statuses >= 1,
        "a job of over 200 ms sends STATUS frames"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_rerun_an_input_whose_worker_died() {
    require!(python);
    let daemon = TestDaemon::start("retries", CgroupMode::Auto).await;
    let marker = daemon.state.path().join("flaky-marker");
    let flaky = function("flaky_4", Some(marker.to_str().expect("utf-8")));
    let mut job = spec("retries");
    job.retries = 1;
    let out = run_job(daemon.addr, &job, &flaky, 0..10).await;
    assert_eq!(out.end().state, JobState::Completed);
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.int(4), Some(8));
    assert_eq!(out.results.len(), 10);

    std::fs::remove_file(&marker).expect("marker was made");
    let mut job = spec("no-retries");
    job.retries = 0;
    let out = run_job(daemon.addr, &job, &flaky, 0..10).await;
    assert_eq!(out.failures.len(), 1);
    assert_eq!(out.failures[0].info.kind, FailureKind::Killed);
    assert_eq!(out.failures[0].info.signal, Some(9));
    assert!(
        out.failures[0].info.message.contains("signal 9 (SIGKILL)"),
        "{}",
        out.failures[0].info.message
    );
    assert_eq!(out.results.len(), 9);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_that_cannot_load_fails_the_job() {
    require!(python);
    let daemon = TestDaemon::start("badfn", CgroupMode::Auto).await;
    let out = run_job(
        daemon.addr,
        &spec("badfn"),
        &Bytes::from_static(b"not a pickle"),
        0..3,
    )
    .await;
    assert_eq!(out.end().state, JobState::Failed);
    assert_eq!(out.failures[0].index, NO_INDEX);
    assert_eq!(out.failures[0].info.kind, FailureKind::FunctionLoad);
    assert!(out.results.is_empty());
    daemon.stop().await;
}

/// Waits until `dir` holds `n` pid files; returns the pids.
async fn wait_pids(dir: &std::path::Path, n: usize) -> Vec<u32> {
    for _ in 0..200 {
        let pids: Vec<u32> = std::fs::read_dir(dir)
            .expect("dir")
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if pids.len() >= n {
            return pids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("workers did not start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_kills_the_workers_within_a_second() {
    require!(cgroups);
    let daemon = TestDaemon::start("cancel", CgroupMode::Required).await;
    let pids_dir = tempfile::tempdir().expect("tempdir");
    let sleeper = function(
        "pid_then_sleep",
        Some(pids_dir.path().to_str().expect("utf-8")),
    );
    let mut job = spec("cancel");
    job.expected_inputs = Some(2);
    let response = request(
        daemon.addr,
        Method::POST,
        "/v1/jobs",
        submission(&job, &sleeper, 0..2),
    )
    .await
    .expect("submit");
    let pids = wait_pids(pids_dir.path(), 2).await;
    let started = Instant::now();
    let (status, body) =
        support::call(daemon.addr, Method::DELETE, "/v1/jobs/cancel", Bytes::new()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let status: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(status["state"], "cancelled");
    let out = collect(response).await;
    assert_eq!(out.end().state, JobState::Cancelled);
    while pids.iter().any(|p| support::alive(*p)) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "workers outlived the cancel"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_in = started.elapsed();
    eprintln!("workers gone {killed_in:?} after DELETE");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_disconnects_cancels_its_job() {
    require!(python);
    let daemon = TestDaemon::start("disconnect", CgroupMode::Auto).await;
    let pids_dir = tempfile::tempdir().expect("tempdir");
    let sleeper = function(
        "pid_then_sleep",
        Some(pids_dir.path().to_str().expect("utf-8")),
    );
    let mut job = spec("disconnect");
    job.expected_inputs = Some(1);
    let response = request(
        daemon.addr,
        Method::POST,
        "/v1/jobs",
        submission(&job, &sleeper, 0..1),
    )
    .await
    .expect("submit");
    let pids = wait_pids(pids_dir.path(), 1).await;
    drop(response);
    let started = Instant::now();
    loop {
        let status = support::get_json(daemon.addr, "/v1/jobs/disconnect").await;
        if status["state"] == "cancelled" && !support::alive(pids[0]) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "job still {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn homes_are_reused_with_the_next_jobs_limits() {
    require!(cgroups);
    let daemon = TestDaemon::start("reuse", CgroupMode::Required).await;
    let mut homes = std::collections::BTreeSet::new();
    for n in 0..8u32 {
        let mut job = spec(&format!("reuse-{n}"));
        job.func_ram_gb = 1 + n % 2;
        job.expected_inputs = Some(1);
        let out = run_job(daemon.addr, &job, &function("limits", None), 0..1).await;
        assert_eq!(out.end().state, JobState::Completed, "{:?}", out.failures);
        let seen = support::unpickle_str(&out.results[&0]).expect("a str");
        let seen: serde_json::Value = serde_json::from_str(&seen).expect("json");
        // Whichever job had the home before, this one sees its own limit.
        assert_eq!(
            seen["memory_limit"],
            (u64::from(job.func_ram_gb) << 30).to_string(),
            "{seen}"
        );
        assert_eq!(seen["affinity"].as_array().map(Vec::len), Some(1), "{seen}");
        let cgroup = seen["cgroup"].as_str().expect("cgroup");
        let home = cgroup
            .lines()
            .find(|l| l.contains(":memory:"))
            .and_then(|l| l.rsplit('/').next())
            .expect("memory line")
            .to_owned();
        assert!(home.starts_with("slot-h"), "{cgroup}");
        homes.insert(home);
        // The job's home is vacated in the background after END; the next job's workers
        // come from a full pool.
        let started = Instant::now();
        while support::get_json(daemon.addr, "/v1/node").await["pool"]["idle"] != 2
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Eight jobs, each on a fresh worker, lived in a handful of homes: at most the pool's
    // two idle workers', the working one's and the two kept vacant.
    assert!(homes.len() <= 5, "a new home per job: {homes:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_see_their_cpuset_and_memory_limit() {
    require!(cgroups);
    let daemon = TestDaemon::start("limits", CgroupMode::Required).await;
    let mut job = spec("limits");
    job.func_ram_gb = 1;
    job.expected_inputs = Some(1);
    let out = run_job(daemon.addr, &job, &function("limits", None), 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.failures);
    let seen = support::unpickle_str(&out.results[&0]).expect("a str");
    let seen: serde_json::Value = serde_json::from_str(&seen).expect("json");
    assert_eq!(seen["affinity"].as_array().map(Vec::len), Some(1), "{seen}");
    let cgroup = seen["cgroup"].as_str().expect("cgroup");
    // The worker was settled in a home cgroup of its own while idle, and the job re-limited
    // that cgroup instead of moving the process (a move can cost an RCU grace period).
    let slot_line = format!("{}/slot-h", daemon.cgroup_parent);
    assert!(
        cgroup
            .lines()
            .any(|l| l.contains(":memory:") && l.contains(&slot_line)),
        "{cgroup}"
    );
    assert!(
        cgroup
            .lines()
            .any(|l| l.contains(":cpuset:") && l.contains(&slot_line)),
        "{cgroup}"
    );
    assert_eq!(seen["memory_limit"], "1073741824");
    assert_eq!(
        seen["nice"], 0,
        "idle workers are niced, working ones are not"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_queue_applies_backpressure_and_loses_nothing() {
    require!(python);
    let daemon = TestDaemon::start_with("backpressure", CgroupMode::Auto, |config| {
        config.limits.queue_items = 50;
        config.limits.queue_bytes = 4096;
    })
    .await;
    let out = run_job(
        daemon.addr,
        &spec("backpressure"),
        &function("double", None),
        0..5000,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed);
    assert_eq!(out.results.len(), 5000);
    assert!((0..5000).all(|i| out.int(i) == Some(2 * i as i64)));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_job_gets_fresh_workers_and_jobs_share_the_node() {
    require!(python);
    let daemon = TestDaemon::start("fresh", CgroupMode::Auto).await;
    let getpid = function("getpid", None);
    let mut first = spec("fresh-1");
    first.parallelism = 1;
    let mut second = spec("fresh-2");
    second.parallelism = 1;
    let (a, b) = tokio::join!(
        run_job(daemon.addr, &first, &getpid, 0..500),
        run_job(daemon.addr, &second, &getpid, 0..500),
    );
    let c = run_job(daemon.addr, &spec("fresh-3"), &getpid, 0..500).await;
    let pids = |out: &support::Collected| -> std::collections::BTreeSet<i64> {
        assert_eq!(out.end().state, JobState::Completed);
        assert_eq!(out.results.len(), 500);
        (0..500).filter_map(|i| out.int(i)).collect()
    };
    let (a, b, c) = (pids(&a), pids(&b), pids(&c));
    assert!(
        a.is_disjoint(&b) && a.is_disjoint(&c) && b.is_disjoint(&c),
        "{a:?} {b:?} {c:?}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_detached_job_outlives_its_client() {
    require!(python);
    let daemon = TestDaemon::start("detach", CgroupMode::Auto).await;
    let mut job = spec("detach");
    job.detach = true;
    job.parallelism = 1;
    let response = request(
        daemon.addr,
        Method::POST,
        "/v1/jobs",
        submission(&job, &function("sleep_then_double", None), 0..3),
    )
    .await
    .expect("submit");
    drop(response);
    let started = Instant::now();
    loop {
        let status = support::get_json(daemon.addr, "/v1/jobs/detach").await;
        if status["state"] == "completed" {
            assert_eq!(status["done"], 3);
            break;
        }
        assert!(
            status["state"] == "running" || status["state"] == "starting",
            "{status}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await;
}

/// The zygote of a daemon started by this test process (its parent is this process).
/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every pid on the machine.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn zygote_pid(daemon: &TestDaemon) -> Option<u32> {
    let worker_file = std::fs::canonicalize(daemon.state.path())
        .ok()?
        .join("worker/fleetmap_worker.py");
    let needle = worker_file.as_os_str().as_encoded_bytes().to_vec();
    all_pids().into_iter().find(|&pid| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        cmdline.split(|b| *b == 0).any(|a| a == needle.as_slice())
            && parent_of(pid) == Some(std::process::id())
    })
}

/// Names of the home cgroups (`slot-h<pid>-<n>`) with no process in them, and of the scratch spaces
/// that belong to no home cgroup.
fn vacant_homes_and_stray_scratch(daemon: &TestDaemon) -> (Vec<String>, Vec<String>) {
    let mut homes = Vec::new();
    let mut vacant = Vec::new();
    for dir in support::child_cgroups(&daemon.cgroup_parent) {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(home) = name.strip_prefix("slot-h") else {
            continue;
        };
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if procs.trim().is_empty() && dir.to_string_lossy().contains("/memory/") {
            vacant.push(format!("h{home}"));
        }
        homes.push(format!("h{home}"));
    }
    let stray = std::fs::read_dir(daemon.state.path().join("scratch"))
        .map(|entries| entries.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| entry.file_name().to_str().map(str::to_owned))
        .filter(|name| !homes.contains(name))
        .collect();
    (vacant, stray)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_workers_cgroup_and_scratch_go_when_its_slot_gets_another() {
    require!(cgroups);
    let daemon = TestDaemon::start("regrow", CgroupMode::Required).await;
    // Three jobs, six deaths: each death's slot gets another worker while the job goes on.
    for run in 0..3 {
        let mut job = spec(&format!("regrow-{run}"));
        job.parallelism = 2;
        let out = run_job(
            daemon.addr,
            &job,
            &function("exits_on_3_and_20_else_sleeps", None),
            0..40,
        )
        .await;
        assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
        let mut failed: Vec<u64> = out.failures.iter().map(|f| f.index).collect();
        failed.sort_unstable();
        assert_eq!(failed, [3, 20]);
        assert_eq!(out.results.len(), 38);
    }
    // A dead worker's home is vacated for a later worker (at most the pool's 2 wait) or
    // removed with its scratch: a home lost track of would stay empty for good, one per death.
    let settled = || {
        let (vacant, stray) = vacant_homes_and_stray_scratch(&daemon);
        vacant.len() <= 2 && stray.is_empty()
    };
    let started = Instant::now();
    while !settled() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (vacant, stray) = vacant_homes_and_stray_scratch(&daemon);
    assert!(vacant.len() <= 2, "homes left empty: {vacant:?}");
    assert_eq!(stray, Vec::<String>::new(), "scratch spaces of no home");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_zygote_is_restarted() {
    require!(python);
    let daemon = TestDaemon::start("zygote", CgroupMode::Auto).await;
    let old = zygote_pid(&daemon).expect("zygote");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let started = Instant::now();
    loop {
        if zygote_pid(&daemon).is_some_and(|pid| pid != old) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no new zygote");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Enough jobs to need workers forked by the new zygote.
    for n in 0..4 {
        let out = run_job(
            daemon.addr,
            &spec(&format!("after-{n}")),
            &function("double", None),
            0..10,
        )
        .await;
        assert_eq!(out.end().state, JobState::Completed);
    }
    daemon.stop().await;
}

/// Pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zygote_that_cannot_restart_fails_waiting_jobs_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    require!(python);
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken");
    let wrapper = dir.path().join("python3-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'fleetmap test: this interpreter is broken' >&2; exit 3; fi\nexec python3 \"$@\"\n",
            broken.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let python = wrapper.clone();
    let daemon = TestDaemon::start_with("zyg-broken", CgroupMode::Auto, move |config| {
        config.worker_python = python;
    })
    .await;
    // The interpreter breaks; the zygote and its idle workers die.
    std::fs::write(&broken, b"").expect("flag");
    let broke = Instant::now();
    let zygote = zygote_pid(&daemon).expect("zygote");
    let kill = |pid: u32| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    };
    for worker in children_of(zygote) {
        kill(worker);
    }
    kill(zygote);

    // The job ends instead of waiting for a worker forever.
    let (_, message) = support::failed_job(
        daemon.addr,
        &spec("zyg-broken"),
        0..1,
        Duration::from_secs(90),
    )
    .await;
    assert!(
        message.contains("no worker has started for 30 s: the worker zygote")
            && message.contains("exits before it is ready")
            && message.contains("exit status: 3")
            && message.contains(&wrapper.display().to_string()),
        "{message}"
    );
    // Told once starts had failed for 30 s (counted from the first failed restart).
    assert!(
        broke.elapsed() >= Duration::from_secs(30),
        "{:?}",
        broke.elapsed()
    );

    // Fixed: the restarting zygote comes up again and the same daemon serves jobs.
    std::fs::remove_file(&broken).expect("unflag");
    support::run_doubles(daemon.addr, "zyg-fixed", 5, Duration::from_secs(60)).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_cgroups_off_instances_are_still_pinned() {
    require!(python);
    let daemon = TestDaemon::start("cg-off", CgroupMode::Off).await;
    let node = support::get_json(daemon.addr, "/v1/node").await;
    assert_eq!(node["cgroup"], "none");
    let mut job = spec("cg-off");
    job.expected_inputs = Some(1);
    let out = run_job(daemon.addr, &job, &function("limits", None), 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.failures);
    let seen = support::unpickle_str(&out.results[&0]).expect("a str");
    let seen: serde_json::Value = serde_json::from_str(&seen).expect("json");
    assert_eq!(seen["affinity"].as_array().map(Vec::len), Some(1), "{seen}");
    daemon.stop().await;
}
