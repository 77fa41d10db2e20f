//! Black-box: what the job API answers without a daemon — malformed submissions, no node,
//! nothing fits, unreachable nodes, records and the routes of jobs that are not running.
//! (Jobs that run go through the real fleetmapd in tests/e2e.)

mod support;

use std::time::{Duration, Instant};

use agent_proto::{EnvSpec, Frame, FrameKind, JobSpec};
use bytes::Bytes;
use http::{Method, StatusCode};
use support::{submission, TestCoordinator};

fn spec(job_id: &str, cpu: u32, ram: u32) -> JobSpec {
    let mut spec = JobSpec::new(job_id);
    spec.func_cpu = cpu;
    spec.func_ram_gb = ram;
    spec.expected_inputs = Some(1);
    spec
}

#[tokio::test]
async fn malformed_submissions_are_400_and_the_coordinator_keeps_serving() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    let garbage: &[(&str, Bytes)] = &[
        (
            "unknown frame kind",
            Bytes::from_static(&[0x7f, 0, 0, 0, 0]),
        ),
        ("truncated", Bytes::from_static(&[0x01, 9, 0, 0, 0, b'{'])),
        ("empty body", Bytes::new()),
        (
            "FUNCTION first",
            Frame::new(FrameKind::Function, &b"x"[..]).encode(),
        ),
        (
            "SPEC not JSON",
            Frame::new(FrameKind::Spec, &b"{nope"[..]).encode(),
        ),
        (
            "SPEC without FUNCTION",
            Frame::json(FrameKind::Spec, &spec("j1", 1, 1)).encode(),
        ),
    ];
    for (what, body) in garbage {
        let answer = coordinator
            .send(Method::POST, "/v1/jobs", body.clone())
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{what}: {:?}",
            answer.body
        );
        assert_eq!(answer.code(), "bad_request", "{what}");
        assert!(!answer.message().is_empty());
    }
    let mut bad = Vec::new();
    bad.extend_from_slice(&Frame::json(FrameKind::Spec, &spec("j2", 1, 1)).encode());
    bad.extend_from_slice(&Frame::new(FrameKind::Function, &b"f"[..]).encode());
    bad.extend_from_slice(&Frame::new(FrameKind::Inputs, &b"\x05\x00\x00\x00"[..]).encode());
    let answer = coordinator.send(Method::POST, "/v1/jobs", bad).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.message().contains("INPUTS"), "{}", answer.message());

    let oversized = Bytes::from_static(&[0x02, 0xff, 0xff, 0xff, 0x7f]);
    let mut body = Frame::json(FrameKind::Spec, &spec("j3", 1, 1))
        .encode()
        .to_vec();
    body.extend_from_slice(&oversized);
    let answer = coordinator.send(Method::POST, "/v1/jobs", body).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);

    let mut invalid = spec("j4", 97, 1);
    invalid.func_cpu = 97;
    let answer = coordinator
        .send(Method::POST, "/v1/jobs", submission(&invalid))
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.message().starts_with("func_cpu=97 is out of range"),
        "{}",
        answer.message()
    );

    assert_eq!(coordinator.get("/v1/health").await.status, StatusCode::OK);
    coordinator.shutdown().await;
}

#[tokio::test]
async fn no_node_is_503_after_the_node_wait() {
    let coordinator = TestCoordinator::start(|c| c.node_wait = Duration::from_millis(400)).await;
    let started = Instant::now();
    let answer = coordinator
        .send(Method::POST, "/v1/jobs", submission(&spec("lonely", 1, 1)))
        .await;
    let waited = started.elapsed();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.code(), "unavailable");
    assert!(
        answer.message().contains("no live node"),
        "{}",
        answer.message()
    );
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    coordinator.shutdown().await;
}

#[tokio::test]
async fn a_node_registering_during_the_wait_ends_the_wait() {
    let coordinator = TestCoordinator::start(|c| c.node_wait = Duration::from_secs(10)).await;
    let url = coordinator.url.clone();
    let submit = tokio::spawn({
        let body = submission(&spec("patient", 8, 1));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<Bytes>>();
        async move {
            let request = http::Request::post(format!("{url}/v1/jobs"))
                .body(http_body_util::Full::new(body))
                .expect("request");
            client.request(request).await.expect("answer").status()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    coordinator
        .register("small", "http://127.0.0.1:9", 2, 4)
        .await;
    let status = submit.await.expect("no panic");
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "placed at once, nothing fits"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    coordinator.shutdown().await;
}

#[tokio::test]
async fn nothing_fits_is_422_naming_the_largest_node() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    coordinator
        .register("small", "http://127.0.0.1:9", 2, 23)
        .await;
    coordinator
        .register("tiny", "http://127.0.0.1:10", 1, 4)
        .await;
    let answer = coordinator
        .send(Method::POST, "/v1/jobs", submission(&spec("huge", 96, 1)))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer.code(), "unprocessable");
    assert_eq!(
        answer.message(),
        "func_cpu=96 does not fit any node: the largest has 2 CPUs and 23 GB of RAM; lower func_cpu or add a larger node"
    );
    let answer = coordinator
        .send(Method::POST, "/v1/jobs", submission(&spec("fat", 1, 64)))
        .await;
    assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer
            .message()
            .starts_with("func_ram=64 does not fit any node"),
        "{}",
        answer.message()
    );
    coordinator.shutdown().await;
}

#[tokio::test]
async fn other_environments_are_passed_on_to_the_nodes() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    let mut packaged = spec("packaged", 1, 1);
    packaged.environment = EnvSpec::Packages {
        packages: vec!["six".into()],
    };
    let answer = coordinator
        .send(Method::POST, "/v1/jobs", submission(&packaged))
        .await;
    // No node is registered: the job gets as far as placement (503), not a 422 refusal.
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.message()
    );
    coordinator.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_node_is_dead_at_once_and_the_job_is_503() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    // A port nothing listens on: the connection is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    coordinator.register("gone", &address, 2, 4).await;
    let answer = coordinator
        .send(Method::POST, "/v1/jobs", submission(&spec("doomed", 1, 1)))
        .await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert!(
        answer.message().contains("node gone"),
        "{}",
        answer.message()
    );
    let nodes = coordinator.get("/v1/nodes").await.json();
    assert_eq!(nodes[0]["alive"], false, "dead at once");
    let record = coordinator.get("/v1/jobs/doomed").await;
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(record.json()["state"], "failed");
    coordinator.shutdown().await;
}

#[tokio::test]
async fn refused_jobs_are_recorded_and_listed_newest_first() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    coordinator
        .register("small", "http://127.0.0.1:9", 2, 8)
        .await;
    for id in ["first", "second"] {
        let answer = coordinator
            .send(Method::POST, "/v1/jobs", submission(&spec(id, 4, 2)))
            .await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let list = coordinator.get("/v1/jobs").await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    let ids: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["job_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["second", "first"]);
    let record = &list[0];
    assert_eq!(record["state"], "failed");
    assert_eq!(record["func_cpu"], 4);
    assert_eq!(record["func_ram_gb"], 2);
    assert_eq!(record["inputs"], 0);
    assert!(record["created_at_ms"].as_u64().is_some());
    assert!(record["finished_at_ms"].as_u64().is_some());
    assert!(record["message"]
        .as_str()
        .unwrap_or("")
        .contains("func_cpu=4"));
    assert_eq!(
        coordinator
            .get("/v1/jobs?limit=1")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        coordinator.get("/v1/jobs?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );

    let answer = coordinator
        .send(Method::DELETE, "/v1/jobs/first", Bytes::new())
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert!(
        answer.message().contains("has ended (failed)"),
        "{}",
        answer.message()
    );
    let answer = coordinator
        .send(Method::POST, "/v1/jobs/first/inputs", Bytes::new())
        .await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    coordinator.shutdown().await;
}

#[tokio::test]
async fn unknown_jobs_are_404() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    for (method, path) in [
        (Method::GET, "/v1/jobs/nope"),
        (Method::DELETE, "/v1/jobs/nope"),
        (Method::POST, "/v1/jobs/nope/inputs"),
    ] {
        let answer = coordinator.send(method.clone(), path, Bytes::new()).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} {path}");
        assert!(
            answer.message().contains("job nope does not exist"),
            "{}",
            answer.message()
        );
    }
    coordinator.shutdown().await;
}

#[tokio::test]
async fn records_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobs.db");
    let coordinator = TestCoordinator::start(|c| c.db_path = db.clone()).await;
    coordinator
        .register("small", "http://127.0.0.1:9", 1, 1)
        .await;
    coordinator
        .send(Method::POST, "/v1/jobs", submission(&spec("kept", 2, 1)))
        .await;
    coordinator.shutdown().await;
    let again = TestCoordinator::start(|c| c.db_path = db.clone()).await;
    let record = again.get("/v1/jobs/kept").await;
    assert_eq!(record.status, StatusCode::OK);
    assert_eq!(record.json()["state"], "failed");
    assert_eq!(record.json()["func_cpu"], 2);
    again.shutdown().await;
}
