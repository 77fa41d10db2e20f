//! Black-box tests of the coordinator's HTTP limits over raw TCP: oversized request heads get
//! 431, a trickled head (slowloris) is cut off, a stalled JSON body or job head gets 408, a
//! connection beyond the limit gets 503, and the coordinator keeps serving.

mod support;

use std::time::{Duration, Instant};

use agent_proto::{ErrorBody, ErrorCode, Frame, FrameKind, JobSpec};
use support::TestCoordinator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(coordinator: &TestCoordinator) -> String {
    coordinator.url.trim_start_matches("http://").to_owned()
}

/// Reads until the peer closes or `limit` passes; what arrived, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// Status code and body of a raw HTTP/1.1 answer (`Content-Length` bodies only).
fn parse_answer(raw: &[u8]) -> (u16, Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| raw[at + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

/// Opens connections until `n` of them have been served a keep-alive answer: they then hold
/// every place of a server whose limit is `n` (earlier connections may still be closing).
async fn hold_served(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..100 {
        if held.len() == n {
            return held;
        }
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !(got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}")) {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        if got.starts_with(b"HTTP/1.1 200") {
            held.push(stream);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("could not hold {n} served connections");
}

fn error_body(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {}", String::from_utf8_lossy(body)))
}

async fn still_serving(coordinator: &TestCoordinator) {
    assert_eq!(coordinator.get("/v1/health").await.json()["status"], "ok");
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let coordinator = TestCoordinator::start(|c| c.max_header_bytes = 16 * 1024).await;
    let mut stream = TcpStream::connect(addr(&coordinator))
        .await
        .expect("connect");
    let big = "a".repeat(64 * 1024);
    let head = format!("GET /v1/health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let (raw, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed);
    assert_eq!(parse_answer(&raw).0, 431);
    still_serving(&coordinator).await;
    coordinator.shutdown().await;
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_off() {
    let coordinator =
        TestCoordinator::start(|c| c.header_read_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(addr(&coordinator))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut cut_off = false;
    for byte in b"GET /v1/health HTTP/1.1\r\nx-slow: "
        .iter()
        .cycle()
        .take(200)
    {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await
        {
            cut_off = true;
            break;
        }
    }
    let waited = started.elapsed();
    assert!(cut_off, "a head trickled for {waited:?} was never cut off");
    assert!(
        waited < Duration::from_secs(10),
        "cut off only after {waited:?}"
    );
    still_serving(&coordinator).await;
    coordinator.shutdown().await;
}

/// Sends `head` and the first half of `body` (chunked), then stalls; returns the answer.
async fn stall_halfway(coordinator: &TestCoordinator, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr(coordinator))
        .await
        .expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let half = &body[..body.len() / 2];
    let chunk = [format!("{:x}\r\n", half.len()).as_bytes(), half, b"\r\n"].concat();
    stream.write_all(&chunk).await.expect("half a body");
    let (raw, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    parse_answer(&raw)
}

#[tokio::test]
async fn stalled_json_bodies_and_job_heads_get_408() {
    let coordinator =
        TestCoordinator::start(|c| c.request_head_timeout = Duration::from_secs(1)).await;
    let registration =
        serde_json::to_vec(&support::registration("n1", "http://127.0.0.1:9", 2, 4)).expect("json");
    let started = Instant::now();
    let (status, body) = stall_halfway(&coordinator, "/v1/nodes", &registration).await;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(8));
    let error = error_body(&body);
    assert_eq!(error.error.code, ErrorCode::RequestTimeout);
    assert!(
        error
            .error
            .message
            .contains("NodeRegistration body did not arrive within 1 s"),
        "{}",
        error.error.message
    );

    let spec = Frame::json(FrameKind::Spec, &JobSpec::new("stalled")).encode();
    let (status, body) = stall_halfway(&coordinator, "/v1/jobs", &spec).await;
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(error_body(&body)
        .error
        .message
        .contains("SPEC and FUNCTION frames did not arrive"));
    still_serving(&coordinator).await;
    coordinator.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_room_comes_back() {
    let coordinator = TestCoordinator::start(|c| c.max_connections = 2).await;
    // Two served keep-alive connections hold both places (the test client's pooled
    // connection, if any, is refused or closed meanwhile).
    let held = hold_served(&addr(&coordinator), 2).await;
    let mut third = TcpStream::connect(addr(&coordinator))
        .await
        .expect("connect");
    third
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let (raw, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed, "a refused connection is closed");
    let (status, body) = parse_answer(&raw);
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&raw));
    let error = error_body(&body);
    assert_eq!(error.error.code, ErrorCode::Unavailable);
    assert!(error.error.message.contains("2 connections, its limit"));
    drop(held);
    let mut served = false;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr(&coordinator))
            .await
            .expect("connect");
        stream
            .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("request");
        let (raw, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        if parse_answer(&raw).0 == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "connections are served again below the limit");
    coordinator.shutdown().await;
}
