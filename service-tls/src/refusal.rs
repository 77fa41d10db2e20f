//! A connection beyond a service's limit: its TLS handshake (when TLS is on) and its one
//! canned answer (a 503 saying when to retry), all within a short time, then it closes.

use std::convert::Infallible;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::Acceptor;

/// Serves `answer()` to the requests of one refused connection with keep-alive off: the
/// handshake and the exchange together take at most `within`.
pub async fn serve_refusal<B, F>(
    acceptor: &Acceptor,
    stream: TcpStream,
    mut builder: http1::Builder,
    within: Duration,
    answer: F,
) where
    F: Fn() -> http::Response<B> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = tokio::time::Instant::now();
    let stream = match acceptor.accept_within(stream, within).await {
        Ok(stream) => stream,
        Err(err) => {
            debug!(cause = %err, "refused connection's TLS handshake failed");
            return;
        }
    };
    builder.keep_alive(false);
    let conn = builder.serve_connection(
        TokioIo::new(stream),
        service_fn(move |_request| {
            let response = answer();
            async move { Ok::<_, Infallible>(response) }
        }),
    );
    let left = within.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, conn).await {
        Ok(Err(err)) => debug!(cause = %err, "refused connection ended with an error"),
        Err(_) => debug!("refused connection timed out"),
        Ok(Ok(())) => {}
    }
}
