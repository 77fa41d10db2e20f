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

mod private_engine;
mod support;

use std::time::{Duration, Instant};

use agent_proto::{FailureKind, JobState};
use fleetmap_sandbox::CgroupMode;
use fleetmapd::RuntimeKind;
use private_engine::{PrivateEngine, IMAGE};
use support::{function, run_job, spec, TestDaemon};

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
    let Some(mut engine) =
        PrivateEngine::ready_or_skip("the_docker_engine_restarted_under_the_daemon", None).await
    else {
        return;
    };

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
    let (_, message) = support::failed_job(
        daemon.addr,
        &spec("engine-gone"),
        0..4,
        Duration::from_secs(120),
    )
    .await;
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
    support::run_doubles(daemon.addr, "engine-back", 50, Duration::from_secs(120)).await;

    let node = daemon.node_id.clone();
    daemon.stop().await;
    let left = engine.containers_of(&node);
    assert!(left.is_empty(), "containers left after shutdown: {left:?}");
    engine.stop();
}
