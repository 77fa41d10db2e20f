//! Per-connection HTTP limits: how every connection's hyper builder is configured (head size,
//! head read timeout) and the one 503 answer a connection beyond the limit gets (after its TLS
//! handshake, when TLS is on).

use std::sync::Arc;
use std::time::Duration;

use agent_proto::{ErrorBody, ErrorCode};
use fleetmap_service_tls::{serve_refusal, Acceptor};
use http::{header, Response, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::api::body::{full, ResponseBody};
use crate::config::Limits;

/// Smallest read buffer hyper accepts (its `MINIMUM_MAX_BUFFER_SIZE`).
const MIN_BUF_BYTES: usize = 8 * 1024;
/// How long a refused connection may take to send its request head and read the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Refusals answered at once; connections beyond them are closed without an answer.
pub const MAX_REFUSALS: usize = 64;

/// A hyper HTTP/1 builder with the daemon's limits on request heads applied.
pub fn builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF_BYTES));
    builder
}

/// Answers one request on `stream` with 503 (the connection limit is reached) and closes it;
/// with TLS on, the handshake comes first, within the same short time. At most
/// [`MAX_REFUSALS`] run at once (`refusals`); beyond that the stream is just closed.
pub fn refuse_busy(
    stream: TcpStream,
    acceptor: &Acceptor,
    limits: &Limits,
    refusals: &Arc<Semaphore>,
) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    let max = limits.max_connections;
    let builder = builder(limits);
    let acceptor = acceptor.clone();
    tokio::spawn(async move {
        let answer = move || busy_answer(max);
        serve_refusal(&acceptor, stream, builder, REFUSAL_TIME, answer).await;
        drop(permit);
    });
}

/// The 503 a connection beyond the limit gets: one sentence, and when to retry.
fn busy_answer(max_connections: usize) -> Response<ResponseBody> {
    let body = ErrorBody::new(
        ErrorCode::Unavailable,
        format!(
            "this node already serves {max_connections} connections, its limit; retry in a moment or reuse a connection"
        ),
    );
    let mut response = Response::new(full(serde_json::to_vec(&body).unwrap_or_default()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}
