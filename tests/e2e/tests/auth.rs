//! The cluster token, both directions: nodes without it (or with a wrong one) cannot register,
//! the daemon refuses callers without it, and a fleet that shares it runs jobs. Refusals are
//! 401 with a sentence that says what to change.

use std::time::Duration;

use agent_proto::{ErrorBody, JobState};
use bytes::Bytes;
use fleetmap_e2e::{job_id, python, spec, whole_job, Collected, Coordinator, Daemon, Http};
use http::Method;

const TOKEN: &str = "fleet-secret-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_coordinator_need_the_cluster_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.token");
    std::fs::write(&good, format!("{TOKEN}\n"))?;
    let bad = dir.path().join("bad.token");
    std::fs::write(&bad, "not-the-fleet-secret-at-all")?;
    let good_path = good.to_string_lossy().into_owned();
    let coordinator = Coordinator::start(dir.path(), &["--cluster-token-file", &good_path])?;
    let open = Http::new();
    let authed = Http::with_token(TOKEN);

    // Node routes refuse callers without the token, with the sentence saying what to send.
    let registration = br#"{"node_id":"x","address":"http://127.0.0.1:9","info":{}}"#;
    let (status, body) = open
        .call(
            Method::POST,
            &format!("{}/v1/nodes", coordinator.url),
            Bytes::from_static(registration),
        )
        .await?;
    assert_eq!(status.as_u16(), 401);
    let refusal: ErrorBody = serde_json::from_slice(&body)?;
    assert!(
        refusal.error.message.contains("cluster token"),
        "{}",
        refusal.error.message
    );
    let (status, _) = Http::with_token("wrong-token-0123456789")
        .call(
            Method::POST,
            &format!("{}/v1/nodes/x/heartbeat", coordinator.url),
            Bytes::from_static(b"{}"),
        )
        .await?;
    assert_eq!(status.as_u16(), 401);
    // Client routes are not node routes.
    let (status, _) = open
        .get_json(&format!("{}/v1/nodes", coordinator.url))
        .await?;
    assert!(status.is_success());

    // A daemon with the wrong token never joins.
    let mut impostor = Daemon::start_with(
        dir.path(),
        &coordinator.url,
        "impostor",
        &fleetmap_e2e::DaemonOptions {
            extra: vec![
                "--cluster-token-file".into(),
                bad.to_string_lossy().into_owned(),
            ],
            ..Default::default()
        },
    )?;
    // A daemon with the right one joins and runs a job the coordinator sends it.
    let member = Daemon::start_with(
        dir.path(),
        &coordinator.url,
        "member",
        &fleetmap_e2e::DaemonOptions {
            extra: vec!["--cluster-token-file".into(), good_path.clone()],
            ..Default::default()
        },
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, nodes) = open
            .get_json(&format!("{}/v1/nodes", coordinator.url))
            .await?;
        let ids: Vec<&str> = nodes
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["node_id"].as_str()).collect())
            .unwrap_or_default();
        assert!(!ids.contains(&"impostor"), "{nodes}");
        if ids.contains(&"member") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member never joined: {nodes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(impostor.proc.running(), "a refused daemon keeps retrying");
    let log = std::fs::read_to_string(dir.path().join("impostor/daemon.log"))?;
    assert!(log.contains("cluster token"), "{log}");
    impostor.proc.kill();

    // The daemon refuses callers without the token; health stays open for probes.
    let (status, body) = open.get_json(&format!("{}/v1/node", member.url)).await?;
    assert_eq!(status.as_u16(), 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = open.get_json(&format!("{}/v1/health", member.url)).await?;
    assert!(status.is_success());
    let (status, info) = authed.get_json(&format!("{}/v1/node", member.url)).await?;
    assert!(status.is_success(), "{info}");

    let payloads = python::payloads("def f(x):\n    return x * 2\n", "range(50)")?;
    let id = job_id("token");
    let first = whole_job(&spec(&id, 50), &payloads, 0..50, 10);
    let (_body, mut stream) = open.submit(&coordinator.url, &first).await?;
    let collected = Collected::from_frames(&stream.until_end(Duration::from_secs(60)).await?)?;
    assert_eq!(
        collected.end.as_ref().map(|e| e.state),
        Some(JobState::Completed)
    );
    assert_eq!(collected.each_index_once()?, 50);
    assert_eq!(python::check_results(&collected.results, "i * 2")?, 50);
    Ok(())
}
