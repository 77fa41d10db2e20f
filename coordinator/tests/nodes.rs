//! Black-box: node registration, heartbeats and the node list over real HTTP.

mod support;

use http::{Method, StatusCode};
use support::{node_info, TestCoordinator};

#[tokio::test]
async fn registration_heartbeat_and_listing() {
    let coordinator =
        TestCoordinator::start(|c| c.heartbeat_interval = std::time::Duration::from_millis(250))
            .await;
    let answer = coordinator
        .register("node-a", "http://127.0.0.1:7071/", 2, 23)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["heartbeat_interval_ms"], 250);

    let mut info = node_info("node-a", "http://ignored", 2, 23);
    info.free_cpus = 1;
    let answer = coordinator
        .post_json("/v1/nodes/node-a/heartbeat", &info)
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert!(answer.body.is_empty());

    let nodes = coordinator.get("/v1/nodes").await;
    assert_eq!(nodes.status, StatusCode::OK);
    let nodes = nodes.json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
    assert_eq!(nodes[0]["node_id"], "node-a");
    assert_eq!(
        nodes[0]["address"], "http://127.0.0.1:7071",
        "registered address kept"
    );
    assert_eq!(nodes[0]["free_cpus"], 1, "heartbeat info kept");
    assert_eq!(nodes[0]["alive"], true);
    assert!(nodes[0]["last_seen_ms"].as_u64().is_some());
    coordinator.shutdown().await;
}

#[tokio::test]
async fn heartbeat_of_an_unknown_node_is_404_so_it_registers_again() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    let answer = coordinator
        .post_json(
            "/v1/nodes/ghost/heartbeat",
            &node_info("ghost", "http://x:1", 1, 1),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "not_found");
    assert!(
        answer.message().contains("register it again"),
        "{}",
        answer.message()
    );
    coordinator.shutdown().await;
}

#[tokio::test]
async fn a_silent_node_is_listed_dead_after_the_timeout() {
    let coordinator =
        TestCoordinator::start(|c| c.node_timeout = std::time::Duration::from_millis(200)).await;
    coordinator
        .register("quiet", "http://127.0.0.1:9", 1, 1)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let nodes = coordinator.get("/v1/nodes").await.json();
    assert_eq!(nodes[0]["alive"], false);
    coordinator.shutdown().await;
}

#[tokio::test]
async fn bad_registrations_are_400_with_a_sentence() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    let answer = coordinator
        .send(Method::POST, "/v1/nodes", &b"{not json"[..])
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.message().contains("NodeRegistration"),
        "{}",
        answer.message()
    );

    let answer = coordinator
        .register("a b", "http://127.0.0.1:1", 1, 1)
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.message().contains("node_id"), "{}", answer.message());

    let answer = coordinator.register("a", "unix:/tmp/sock", 1, 1).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(
        answer.message().contains("http://HOST:PORT"),
        "{}",
        answer.message()
    );

    let huge = vec![b' '; 2 * 1024 * 1024];
    let answer = coordinator.send(Method::POST, "/v1/nodes", huge).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(coordinator.get("/v1/health").await.status, StatusCode::OK);
    coordinator.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let coordinator = TestCoordinator::start(|_| {}).await;
    let answer = coordinator.get("/v1/nope").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(
        answer.message().contains("coordinator.json"),
        "{}",
        answer.message()
    );
    let answer = coordinator
        .send(Method::PUT, "/v1/nodes", bytes::Bytes::new())
        .await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(
        answer.message().contains("GET, POST"),
        "{}",
        answer.message()
    );
    let health = coordinator.get("/v1/health").await;
    assert_eq!(health.json()["status"], "ok");
    coordinator.shutdown().await;
}

#[tokio::test]
async fn node_routes_need_the_cluster_token_and_a_drained_node_leaves() {
    let token = agent_proto::ClusterToken::new("0123456789abcdef-fleet").expect("valid");
    let header = token.header_value().to_owned();
    let coordinator = TestCoordinator::start(move |c| c.cluster_token = Some(token)).await;
    let registration = serde_json::to_vec(&support::registration(
        "node-a",
        "http://127.0.0.1:7071",
        2,
        4,
    ))
    .expect("serializes");

    let refused = coordinator
        .send(Method::POST, "/v1/nodes", registration.clone())
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.code(), "unauthorized");
    assert!(
        refused.message().contains("--cluster-token-file"),
        "{}",
        refused.message()
    );
    let wrong = coordinator
        .send_authorized(
            Method::POST,
            "/v1/nodes",
            registration.clone(),
            Some("Bearer 0123456789abcdef-fleeT"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.message().contains("wrong"), "{}", wrong.message());

    let accepted = coordinator
        .send_authorized(Method::POST, "/v1/nodes", registration, Some(&header))
        .await;
    assert_eq!(accepted.status, StatusCode::OK);
    let info = serde_json::to_vec(&node_info("node-a", "http://x", 2, 4)).expect("serializes");
    let beat = coordinator
        .send(Method::POST, "/v1/nodes/node-a/heartbeat", info.clone())
        .await;
    assert_eq!(beat.status, StatusCode::UNAUTHORIZED, "heartbeats too");
    let leave = coordinator
        .send(Method::DELETE, "/v1/nodes/node-a", Vec::new())
        .await;
    assert_eq!(leave.status, StatusCode::UNAUTHORIZED, "leaving too");

    // Client routes are not node routes.
    let nodes = coordinator.get("/v1/nodes").await;
    assert_eq!(nodes.status, StatusCode::OK);
    assert_eq!(nodes.json()[0]["draining"], false);
    assert_eq!(nodes.json()[0]["jobs_running"], serde_json::json!([]));

    let mut draining = node_info("node-a", "http://x", 2, 4);
    draining.draining = true;
    let beat = coordinator
        .send_authorized(
            Method::POST,
            "/v1/nodes/node-a/heartbeat",
            serde_json::to_vec(&draining).expect("serializes"),
            Some(&header),
        )
        .await;
    assert_eq!(beat.status, StatusCode::NO_CONTENT);
    assert_eq!(
        coordinator.get("/v1/nodes").await.json()[0]["draining"],
        true
    );
    let leave = coordinator
        .send_authorized(
            Method::DELETE,
            "/v1/nodes/node-a",
            Vec::new(),
            Some(&header),
        )
        .await;
    assert_eq!(leave.status, StatusCode::NO_CONTENT);
    assert_eq!(
        coordinator.get("/v1/nodes").await.json(),
        serde_json::json!([])
    );
    let again = coordinator
        .send_authorized(
            Method::DELETE,
            "/v1/nodes/node-a",
            Vec::new(),
            Some(&header),
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    coordinator.shutdown().await;
}
