//! Registration and heartbeats against a recording coordinator endpoint (the real
//! coordinator is exercised by the cross-component tests in `tests/e2e`): the daemon waits
//! out an unreachable coordinator, heartbeats with its NodeInfo, and registers again on 404.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_proto::{NodeInfo, NodeRegistration};
use bytes::Bytes;
use fleetmap_sandbox::CgroupMode;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::TestDaemon;
use tokio::net::TcpListener;

#[derive(Default)]
struct Seen {
    registrations: Vec<NodeRegistration>,
    heartbeats: Vec<NodeInfo>,
    /// Heartbeats to answer 404 (the coordinator "forgot" the node).
    forget: usize,
}

async fn answer(
    seen: Arc<Mutex<Seen>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut seen = seen.lock().expect("lock");
    let (status, reply) = if path == "/v1/nodes" {
        seen.registrations
            .push(serde_json::from_slice(&body).expect("NodeRegistration"));
        (StatusCode::OK, r#"{"heartbeat_interval_ms":100}"#)
    } else if path.ends_with("/heartbeat") {
        seen.heartbeats
            .push(serde_json::from_slice(&body).expect("NodeInfo"));
        if seen.forget > 0 {
            seen.forget -= 1;
            (
                StatusCode::NOT_FOUND,
                r#"{"error":{"code":"not_found","message":"unknown node"}}"#,
            )
        } else {
            (StatusCode::NO_CONTENT, "")
        }
    } else {
        (StatusCode::NOT_FOUND, "")
    };
    let mut response = Response::new(Full::new(Bytes::from(reply)));
    *response.status_mut() = status;
    Ok(response)
}

async fn serve_coordinator(listener: TcpListener, seen: Arc<Mutex<Seen>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = seen.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |r| answer(seen.clone(), r)),
                )
                .await;
        });
    }
}

async fn wait_for(seen: &Arc<Mutex<Seen>>, what: &str, done: impl Fn(&Seen) -> bool) {
    let started = Instant::now();
    while !done(&seen.lock().expect("lock")) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "never saw {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registers_late_heartbeats_and_registers_again_when_forgotten() {
    require!(python);
    // Reserve an address, then close it: the coordinator is unreachable at first.
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let coordinator: SocketAddr = probe.local_addr().expect("addr");
    drop(probe);
    let daemon = TestDaemon::start_with("coord", CgroupMode::Auto, |config| {
        config.coordinator = Some(format!("http://{coordinator}/"));
        config.advertise = Some("http://node.example:7071".into());
    })
    .await;
    // The daemon serves while the coordinator is down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        support::get_json(daemon.addr, "/v1/health").await["status"],
        "ok"
    );

    let seen = Arc::new(Mutex::new(Seen {
        forget: 1,
        ..Seen::default()
    }));
    let listener = TcpListener::bind(coordinator)
        .await
        .expect("rebind the coordinator address");
    tokio::spawn(serve_coordinator(listener, seen.clone()));

    wait_for(&seen, "a registration", |s| !s.registrations.is_empty()).await;
    {
        let seen = seen.lock().expect("lock");
        let registration = &seen.registrations[0];
        assert_eq!(registration.node_id, daemon.node_id);
        assert_eq!(registration.address, "http://node.example:7071");
        assert_eq!(registration.info.node_id, daemon.node_id);
        assert_eq!(registration.info.runtime, "process");
    }
    // First heartbeat is answered 404: the daemon registers again, then keeps heartbeating.
    wait_for(&seen, "a second registration and heartbeats", |s| {
        s.registrations.len() >= 2 && s.heartbeats.len() >= 3
    })
    .await;
    let beat = seen
        .lock()
        .expect("lock")
        .heartbeats
        .last()
        .cloned()
        .expect("heartbeat");
    assert_eq!(beat.node_id, daemon.node_id);
    assert_eq!(beat.pool.target, 2);
    daemon.stop().await;
}
