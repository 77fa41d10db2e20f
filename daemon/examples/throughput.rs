//! Benchmark of the daemon alone: items/s of `x * 2` over N inputs with 2 instances, and the
//! median latency of a one-input job, through `fleetmapd::run` on loopback with a Rust client.
//!
//! ```text
//! cargo run --release -p fleetmapd --example throughput -- [INPUTS] [LATENCY_RUNS] [PAUSE_MS]
//! ```
//!
//! One-input jobs are spaced by PAUSE_MS (default 10) so that each finds a warm pool: every
//! job takes fresh workers, and the zygote forks replacements in the background.
//! `RUNTIME=docker` runs the same on the `docker` runtime (warm containers of
//! `fleetmap/base:1`; space one-input jobs by ~1000 ms so replacements are warm again).

use std::time::Instant;

use agent_proto::{Frame, FrameKind, Item, ItemBatch, JobEnd, JobSpec};
use bytes::{Bytes, BytesMut};
use fleetmapd::api::body::BodyFrames;
use fleetmapd::Config;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn function() -> Bytes {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, cloudpickle; sys.stdout.buffer.write(cloudpickle.dumps(lambda x: x * 2))",
        ])
        .output()
        .expect("python3 with cloudpickle");
    Bytes::from(out.stdout)
}

fn pickle_int(v: u64) -> Vec<u8> {
    let mut p = vec![0x80, 5, b'J'];
    p.extend_from_slice(&(v as i32).to_le_bytes());
    p.push(b'.');
    p
}

fn body(id: &str, function: &Bytes, n: u64) -> Bytes {
    let mut spec = JobSpec::new(id);
    spec.expected_inputs = Some(n);
    spec.parallelism = 2;
    let mut wire = BytesMut::new();
    Frame::json(FrameKind::Spec, &spec).encode_into(&mut wire);
    Frame::new(FrameKind::Function, function.clone()).encode_into(&mut wire);
    let items: Vec<u64> = (0..n).collect();
    for chunk in items.chunks(10_000) {
        let batch = ItemBatch::new(
            chunk
                .iter()
                .map(|i| Item::new(*i, pickle_int(*i)))
                .collect(),
        );
        batch.into_frame(FrameKind::Inputs).encode_into(&mut wire);
    }
    Frame::empty(FrameKind::InputsEnd).encode_into(&mut wire);
    wire.freeze()
}

/// Runs one job; returns the results counted and the END.
async fn run_job(addr: std::net::SocketAddr, body: Bytes) -> (u64, JobEnd) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let request = Request::post(format!("http://{addr}/v1/jobs"))
        .body(Full::new(body))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");

    let mut frames = BodyFrames::new(response.into_body(), 1 << 30);
    let mut results = 0u64;
    while let Some(frame) = frames.next().await.expect("frames") {
        match frame.kind {
            FrameKind::Results => {
                results += u64::from(u32::from_le_bytes([
                    frame.body[0],
                    frame.body[1],
                    frame.body[2],
                    frame.body[3],
                ]))
            }
            FrameKind::End => return (results, frame.parse_json().expect("END")),
            _ => {}
        }
    }
    panic!("stream ended without END");
}

#[tokio::main]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300);
    let pause: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let state = tempfile::tempdir().expect("state dir");
    let mut config = Config::new("bench", state.path(), "python3");
    config.cgroup_parent = Some(format!("fleetmap-bench/{}", std::process::id()));
    config.pool_size = Some(
        std::env::var("POOL")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(2),
    );
    if std::env::var("RUNTIME").as_deref() == Ok("docker") {
        config.runtime = fleetmapd::RuntimeKind::Docker;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(fleetmapd::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let function = function();

    // Warm up, then time the throughput run.
    run_job(addr, body("warm", &function, 1000)).await;
    for round in 0..3 {
        let job = body(&format!("tp{round}"), &function, n);
        let started = Instant::now();
        let (results, end) = run_job(addr, job).await;
        let took = started.elapsed();
        assert_eq!(results, n, "{end:?}");
        println!(
            "throughput: {n} inputs of x*2 in {:.1} ms = {:.0} inputs/s (2 instances)",
            took.as_secs_f64() * 1e3,
            n as f64 / took.as_secs_f64()
        );
    }

    let mut latencies = Vec::with_capacity(runs);
    for i in 0..runs {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        let job = body(&format!("lat{i}"), &function, 1);
        let started = Instant::now();
        let (results, _) = run_job(addr, job).await;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        assert_eq!(results, 1);
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "one-input job: median {:.3} ms, p90 {:.3} ms, min {:.3} ms over {runs} runs {pause} ms apart",
        latencies[runs / 2],
        latencies[runs * 9 / 10],
        latencies[0]
    );
    let _ = stop.send(());
    let _ = daemon.await;
    for controller in ["cpuset", "memory"] {
        let dir = std::path::Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(format!("fleetmap-bench/{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(dir.parent().unwrap_or(&dir));
    }
}
