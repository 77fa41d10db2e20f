//! Black-box API tests: routes, node info, and every kind of bad request answered with a 4xx
//! and the protocol's JSON error body, while the daemon keeps serving.

mod support;

use agent_proto::{EnvSpec, ErrorBody, ErrorCode, Frame, FrameKind, JobState, NodeInfo};
use bytes::Bytes;
use fleetmap_sandbox::CgroupMode;
use http::{Method, StatusCode};
use support::{call, frames, function, get_json, int_inputs, request, run_job, spec, TestDaemon};

/// Sends a request and checks the error answer's status, code and sentence.
async fn expect_error(
    daemon: &TestDaemon,
    method: Method,
    path: &str,
    body: Bytes,
    status: StatusCode,
    needle: &str,
) -> String {
    let (got, bytes) = call(daemon.addr, method.clone(), path, body).await;
    assert_eq!(
        got,
        status,
        "{method} {path}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let error: ErrorBody = serde_json::from_slice(&bytes).expect("JSON error body");
    assert_eq!(error.error.code.status(), status.as_u16());
    assert!(
        error.error.message.contains(needle),
        "{:?} lacks {needle:?}",
        error.error.message
    );
    // Still serving.
    let health = get_json(daemon.addr, "/v1/health").await;
    assert_eq!(health["status"], "ok");
    error.error.message
}

fn head(spec: &agent_proto::JobSpec) -> Vec<Frame> {
    vec![
        Frame::json(FrameKind::Spec, spec),
        Frame::new(FrameKind::Function, Bytes::from_static(b"fn")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_node_and_job_listing() {
    require!(python);
    let daemon = TestDaemon::start("info", CgroupMode::Auto).await;
    let health = get_json(daemon.addr, "/v1/health").await;
    assert_eq!(health["version"], agent_proto::SOFTWARE_VERSION);
    let node: NodeInfo =
        serde_json::from_value(get_json(daemon.addr, "/v1/node").await).expect("NodeInfo");
    assert_eq!(node.node_id, daemon.node_id);
    assert_eq!(node.runtime, "process");
    assert!(
        node.python_version.starts_with("3."),
        "{}",
        node.python_version
    );
    assert_eq!(node.pool.target, 2);
    assert_eq!(node.address, format!("http://{}", daemon.addr));
    assert!(node.cpus >= 1 && node.free_cpus == node.cpus);
    assert_eq!(node.jobs, 0);

    let out = run_job(
        daemon.addr,
        &spec("listed"),
        &function("double", None),
        0..3,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed);
    let status = get_json(daemon.addr, "/v1/jobs/listed").await;
    assert_eq!(status["state"], "completed");
    assert_eq!(status["done"], 3);
    let list = get_json(daemon.addr, "/v1/jobs").await;
    assert!(list
        .as_array()
        .expect("array")
        .iter()
        .any(|j| j["job_id"] == "listed"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_jobs_and_methods() {
    require!(python);
    let daemon = TestDaemon::start("routes", CgroupMode::Auto).await;
    expect_error(
        &daemon,
        Method::GET,
        "/v2/nothing",
        Bytes::new(),
        StatusCode::NOT_FOUND,
        "no route",
    )
    .await;
    expect_error(
        &daemon,
        Method::PUT,
        "/v1/jobs",
        Bytes::new(),
        StatusCode::METHOD_NOT_ALLOWED,
        "GET, POST",
    )
    .await;
    expect_error(
        &daemon,
        Method::GET,
        "/v1/jobs/nope",
        Bytes::new(),
        StatusCode::NOT_FOUND,
        "job nope does not exist",
    )
    .await;
    expect_error(
        &daemon,
        Method::DELETE,
        "/v1/jobs/nope",
        Bytes::new(),
        StatusCode::NOT_FOUND,
        "job nope",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        "/v1/jobs/nope/inputs",
        frames(&int_inputs(0..1, 1)),
        StatusCode::NOT_FOUND,
        "job nope",
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_submissions_are_400_or_413() {
    require!(python);
    let daemon = TestDaemon::start("malformed", CgroupMode::Auto).await;
    let jobs = "/v1/jobs";
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        Bytes::from_static(&[0x7f, 0, 0, 0, 0]),
        StatusCode::BAD_REQUEST,
        "unknown frame kind 0x7f",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        Bytes::from_static(&[0x01, 0, 0, 0, 0x10]),
        StatusCode::PAYLOAD_TOO_LARGE,
        "exceeds the limit",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        Bytes::from_static(&[0x01, 9, 0, 0, 0, b'{']),
        StatusCode::BAD_REQUEST,
        "stream ended inside a frame",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&int_inputs(0..1, 1)),
        StatusCode::BAD_REQUEST,
        "unexpected INPUTS frame: expected SPEC",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&[Frame::new(FrameKind::Spec, &b"{not json"[..])]),
        StatusCode::BAD_REQUEST,
        "malformed SPEC frame",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&[Frame::json(FrameKind::Spec, &spec("nofn"))]),
        StatusCode::BAD_REQUEST,
        "before its FUNCTION frame",
    )
    .await;
    let mut bad = spec("bad-cpu");
    bad.func_cpu = 0;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&bad)),
        StatusCode::BAD_REQUEST,
        "func_cpu=0 is out of range",
    )
    .await;
    let mut bad = spec("../x");
    bad.func_cpu = 1;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&bad)),
        StatusCode::BAD_REQUEST,
        "job_id",
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_this_node_cannot_run_are_422_with_one_sentence() {
    require!(python);
    let daemon = TestDaemon::start("refusals", CgroupMode::Auto).await;
    let jobs = "/v1/jobs";
    let mut env = spec("env");
    env.environment = EnvSpec::Dockerfile {
        content: "FROM fleetmap/base:1\n".into(),
        context: vec![],
    };
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&env)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "dockerfile= needs a node running the docker runtime",
    )
    .await;
    env.environment = EnvSpec::Packages {
        packages: vec!["--index-url=http://elsewhere".into()],
    };
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&env)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "no pip options",
    )
    .await;
    let mut py = spec("py");
    py.python_version = Some("2.7".into());
    let message = expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&py)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "Python 2.7",
    )
    .await;
    assert!(
        message.contains("this node's workers run Python 3."),
        "{message}"
    );
    let mut big = spec("big");
    big.func_cpu = 96;
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&big)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "func_cpu=96",
    )
    .await;
    let mut gpu = spec("gpu");
    // A model no real machine has, so the test means the same on a GPU node.
    gpu.func_gpu = Some("Z9000".into());
    expect_error(
        &daemon,
        Method::POST,
        jobs,
        frames(&head(&gpu)),
        StatusCode::UNPROCESSABLE_ENTITY,
        "no GPU on this node matches func_gpu=\"Z9000\"; this node has ",
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicate_ids_and_bad_input_streams_are_refused() {
    require!(python);
    let daemon = TestDaemon::start("dupes", CgroupMode::Auto).await;
    let out = run_job(daemon.addr, &spec("once"), &function("double", None), 0..2).await;
    assert_eq!(out.end().state, JobState::Completed);
    expect_error(
        &daemon,
        Method::POST,
        "/v1/jobs",
        frames(&head(&spec("once"))),
        StatusCode::CONFLICT,
        "already exists",
    )
    .await;

    // A live job (no INPUTS_END yet) refuses a malformed INPUTS frame with 400 and keeps going.
    let mut first = head(&spec("open"));
    first[1] = Frame::new(FrameKind::Function, function("double", None));
    first.extend(int_inputs(0..2, 2));
    let response = request(daemon.addr, Method::POST, "/v1/jobs", frames(&first))
        .await
        .expect("submit");
    assert_eq!(response.status(), StatusCode::OK);
    let inputs = "/v1/jobs/open/inputs";
    expect_error(
        &daemon,
        Method::POST,
        inputs,
        frames(&[Frame::new(FrameKind::Inputs, vec![5u8, 0, 0, 0])]),
        StatusCode::BAD_REQUEST,
        "malformed INPUTS frame",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        inputs,
        frames(&[Frame::empty(FrameKind::Results)]),
        StatusCode::BAD_REQUEST,
        "unexpected RESULTS frame",
    )
    .await;
    let mut rest = int_inputs(2..4, 2);
    rest.push(Frame::empty(FrameKind::InputsEnd));
    let (status, _) = call(daemon.addr, Method::POST, inputs, frames(&rest)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let out = support::collect(response).await;
    assert_eq!(out.end().state, JobState::Completed);
    assert_eq!(out.results.len(), 4);
    expect_error(
        &daemon,
        Method::POST,
        inputs,
        frames(&rest),
        StatusCode::CONFLICT,
        "has ended",
    )
    .await;
    let error: ErrorBody = serde_json::from_slice(
        &call(daemon.addr, Method::GET, "/v1/jobs/x", Bytes::new())
            .await
            .1,
    )
    .expect("json");
    assert_eq!(error.error.code, ErrorCode::NotFound);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_needs_a_count_and_a_draining_node_refuses_new_jobs() {
    require!(python);
    let daemon = TestDaemon::start("drain", CgroupMode::Auto).await;
    expect_error(
        &daemon,
        Method::POST,
        "/v1/jobs/none/release",
        Bytes::new(),
        StatusCode::BAD_REQUEST,
        "max_items",
    )
    .await;
    expect_error(
        &daemon,
        Method::POST,
        "/v1/jobs/none/release?max_items=5",
        Bytes::new(),
        StatusCode::NOT_FOUND,
        "does not exist",
    )
    .await;

    let (status, body) = call(daemon.addr, Method::POST, "/v1/drain", Bytes::new()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let info: NodeInfo = serde_json::from_slice(&body).expect("NodeInfo");
    assert!(info.draining);
    let node: NodeInfo =
        serde_json::from_value(get_json(daemon.addr, "/v1/node").await).expect("NodeInfo");
    assert!(node.draining, "heartbeats and /v1/node say so");
    expect_error(
        &daemon,
        Method::POST,
        "/v1/jobs",
        frames(&head(&spec("after-drain"))),
        StatusCode::SERVICE_UNAVAILABLE,
        "draining",
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_cluster_token_every_route_but_health_needs_it() {
    require!(python);
    let token = agent_proto::ClusterToken::new("daemon-test-token-0123456789").expect("valid");
    let daemon = TestDaemon::start_with("token", CgroupMode::Auto, move |config| {
        config.cluster_token = Some(token);
    })
    .await;
    let message = expect_error(
        &daemon,
        Method::GET,
        "/v1/node",
        Bytes::new(),
        StatusCode::UNAUTHORIZED,
        "cluster token",
    )
    .await;
    assert!(message.contains("Authorization: Bearer"), "{message}");
    expect_error(
        &daemon,
        Method::POST,
        "/v1/jobs",
        frames(&head(&spec("no-token"))),
        StatusCode::UNAUTHORIZED,
        "cluster token",
    )
    .await;
    daemon.stop().await;
}
