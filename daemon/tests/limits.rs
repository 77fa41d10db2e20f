//! Black-box tests of the daemon's HTTP limits over raw TCP: oversized request heads get 431,
//! a head trickled byte by byte (slowloris) is cut off, a submission whose SPEC and FUNCTION
//! stall gets 408, a connection beyond the limit gets 503, and the daemon keeps serving.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agent_proto::{ErrorBody, ErrorCode, Frame, FrameKind};
use fleetmap_sandbox::CgroupMode;
use support::{get_json, spec, TestDaemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

async fn still_serving(addr: SocketAddr) {
    assert_eq!(get_json(addr, "/v1/health").await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_heads_get_431() {
    require!(python);
    let daemon = TestDaemon::start_with("bighead", CgroupMode::Off, |c| {
        c.limits.max_header_bytes = 16 * 1024;
    })
    .await;
    let mut stream = TcpStream::connect(daemon.addr).await.expect("connect");
    let big = "a".repeat(64 * 1024);
    let head = format!("GET /v1/health HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    // The daemon may answer and close before everything is written.
    let _ = stream.write_all(head.as_bytes()).await;
    let (raw, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "the connection is closed after the 431");
    assert_eq!(parse_answer(&raw).0, 431);
    still_serving(daemon.addr).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trickled_request_head_is_cut_off() {
    require!(python);
    let daemon = TestDaemon::start_with("slowloris", CgroupMode::Off, |c| {
        c.limits.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(daemon.addr).await.expect("connect");
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
    still_serving(daemon.addr).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_whose_spec_stalls_gets_408() {
    require!(python);
    let daemon = TestDaemon::start_with("stall", CgroupMode::Off, |c| {
        c.limits.request_head_timeout = Duration::from_secs(1);
    })
    .await;
    let mut stream = TcpStream::connect(daemon.addr).await.expect("connect");
    let spec = Frame::json(FrameKind::Spec, &spec("stalled")).encode();
    let head = "POST /v1/jobs HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    // Half of the SPEC frame, then nothing.
    let half = &spec[..spec.len() / 2];
    let chunk = [format!("{:x}\r\n", half.len()).as_bytes(), half, b"\r\n"].concat();
    stream.write_all(&chunk).await.expect("half a frame");
    let started = Instant::now();
    let (raw, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(8));
    let (status, body) = parse_answer(&raw);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&raw));
    let error = error_body(&body);
    assert_eq!(error.error.code, ErrorCode::RequestTimeout);
    assert!(
        error.error.message.contains("did not arrive within 1 s"),
        "{}",
        error.error.message
    );
    still_serving(daemon.addr).await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_the_limit_get_503_and_room_comes_back() {
    require!(python);
    let daemon = TestDaemon::start_with("connlimit", CgroupMode::Off, |c| {
        c.limits.max_connections = 2;
    })
    .await;
    // Two served keep-alive connections hold both places.
    let held = hold_served(&daemon.addr.to_string(), 2).await;
    let mut third = TcpStream::connect(daemon.addr).await.expect("connect");
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
    assert!(
        error.error.message.contains("2 connections, its limit"),
        "{}",
        error.error.message
    );
    drop(held);
    // Once the held connections are gone, new ones are served again.
    let mut served = false;
    for _ in 0..50 {
        if let Ok((status, _)) = support::get(daemon.addr, "/v1/health").await {
            if status == http::StatusCode::OK {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "connections are served again below the limit");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_announcing_4_gib_is_413_before_its_body() {
    require!(python);
    let daemon = TestDaemon::start("hugeframe", CgroupMode::Off).await;
    let mut stream = TcpStream::connect(daemon.addr).await.expect("connect");
    // The header announces u32::MAX bytes; only the header is ever sent.
    let head = "POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-length: 4294967300\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&[0x01, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("frame header");
    let (raw, _) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    let (status, body) = parse_answer(&raw);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(error_body(&body).error.code, ErrorCode::PayloadTooLarge);
    still_serving(daemon.addr).await;
    daemon.stop().await;
}
