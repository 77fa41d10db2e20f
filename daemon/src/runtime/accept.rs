//! The worker-socket accept loop both runtimes share: handshakes run concurrently (bounded),
//! each must say HELLO before a deadline, and the loop ends at shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A new connection must say HELLO within this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in their HELLO at once.
pub const MAX_HANDSHAKES: usize = 64;

/// Accepts connections on `listener` until `shutdown`; each one is checked by `hello` (within
/// [`HELLO_TIMEOUT`]) in its own task, and what it yields is handed to `deliver`.
pub async fn accept_workers<T, H, HFut, D, DFut>(
    listener: UnixListener,
    shutdown: CancellationToken,
    hello: H,
    deliver: D,
) where
    T: Send + 'static,
    H: Fn(UnixStream) -> HFut + Clone + Send + 'static,
    HFut: Future<Output = Result<T, String>> + Send + 'static,
    D: Fn(T) -> DFut + Clone + Send + 'static,
    DFut: Future<Output = ()> + Send + 'static,
{
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(cause = %err, "accept on the worker socket failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (hello, deliver) = (hello.clone(), deliver.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HELLO_TIMEOUT, hello(stream)).await {
                Ok(Ok(worker)) => deliver(worker).await,
                Ok(Err(reason)) => warn!(reason = %reason, "refused a worker connection"),
                Err(_) => warn!("a worker connection sent no HELLO in time"),
            }
        });
    }
}
