//! The accept loop and graceful shutdown (mini-redis `server.rs`): connections are served
//! concurrently up to a limit (a TLS handshake, when TLS is on, counts toward it and is bounded
//! by the head read timeout); on shutdown the listener closes, running jobs are cancelled (their
//! clients get END), connections finish their current request, and the store is flushed.

use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleetmap_service_tls::{Acceptor, ServerStream};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::conn::{self, ClientJobs};
use crate::error::Error;
use crate::keys::ApiKeys;
use crate::registry;
use crate::state::State;
use crate::store::Store;

/// Runs a coordinator on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let store = Store::open_with_budget(&config.db_path, config.results_budget_bytes)?;
    let addr = listener.local_addr().map_err(Error::Listener)?;
    let acceptor = Acceptor::new(config.tls.clone(), config.header_read_timeout);
    let url = format!("{}://{addr}", acceptor.scheme());
    if let Some(path) = &config.addr_file {
        write_addr_file(path, &url)?;
    }
    let api_keys = if config.require_api_keys {
        Some(ApiKeys::open(&config.db_path)?)
    } else {
        None
    };
    let state = State::with_api_keys(config, store, api_keys);
    info!(%url, db = %state.config.db_path.display(), api_keys = state.api_keys.is_some(), tls = acceptor.is_tls(), "coordinator listening");
    let reaper = tokio::spawn(registry::run_reaper(
        state.registry.clone(),
        state.config.reap_interval(),
        state.shutdown.clone(),
    ));

    crate::jobs::resume_all(&state);

    tokio::select! {
        result = accept_loop(&listener, &acceptor, &state) => {
            if let Err(err) = &result {
                error!(cause = %err, "accept loop failed");
            }
        }
        _ = shutdown => info!("shutting down"),
    }
    drop(listener);

    // Shutdown first: a detached job cancelled by it stays resumable (see `jobs::finish`).
    state.shutdown.cancel();
    state.jobs.cancel_all("the coordinator is shutting down");
    state.tasks.close();
    if tokio::time::timeout(state.config.shutdown_grace, state.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            left = state.tasks.len(),
            "connections or jobs still running after the shutdown grace period"
        );
    }
    let _ = reaper.await;
    state.store.clone().close().await;
    info!("coordinator stopped");
    Ok(())
}

async fn accept_loop(
    listener: &TcpListener,
    acceptor: &Acceptor,
    state: &State,
) -> Result<(), Error> {
    let limit = Arc::new(Semaphore::new(state.config.max_connections));
    let refusals = Arc::new(Semaphore::new(conn::MAX_REFUSALS));
    let client_jobs = ClientJobs::default();
    let mut backoff = Duration::from_millis(1);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = Duration::from_millis(1);
                accepted
            }
            Err(err) => {
                // Out of file descriptors and similar: back off instead of spinning.
                warn!(cause = %err, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // At the connection limit, answer 503 instead of serving.
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "connection limit reached; refusing with 503");
            conn::refuse_busy(stream, acceptor, &state.config, &refusals);
            continue;
        };
        let state = state.clone();
        let jobs = client_jobs.clone();
        let acceptor = acceptor.clone();
        state.tasks.clone().spawn(async move {
            if let Err(err) = stream.set_nodelay(true) {
                debug!(cause = %err, "cannot disable Nagle on a connection");
            }
            // The handshake holds the connection's permit: it counts toward the limit.
            match acceptor.accept(stream).await {
                Ok(stream) => serve_connection(stream, peer.ip(), state, jobs).await,
                Err(err) => debug!(%peer, cause = %err, "TLS handshake failed; connection dropped"),
            }
            drop(permit);
        });
    }
}

async fn serve_connection(stream: ServerStream, client: IpAddr, state: State, jobs: ClientJobs) {
    let service_state = state.clone();
    let service =
        service_fn(move |req| conn::serve(service_state.clone(), jobs.clone(), client, req));
    let connection = conn::builder(&state.config)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                debug!(cause = %err, "connection ended with an error");
            }
        }
        _ = state.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            if let Err(err) = connection.await {
                debug!(cause = %err, "connection ended with an error during shutdown");
            }
        }
    }
}

/// Writes `url` to `path` atomically: a reader sees no file or the whole URL.
fn write_addr_file(path: &Path, url: &str) -> Result<(), Error> {
    let wrap = |source| Error::AddrFile {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, url).map_err(wrap)?;
    std::fs::rename(&tmp, path).map_err(wrap)
}
