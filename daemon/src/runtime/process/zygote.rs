//! The zygote: a Python process that has imported what workers need and forks them on
//! request (`docs/protocol.md` §4.1–4.2). This task starts it in the pool cgroup, turns its
//! stdout lines into pool and exit events, asks it for workers when the pool runs short, and
//! restarts it (with backoff) when it dies.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::{ZygoteCommand, ZygoteEvent};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::Inner;
use crate::runtime::{ExitStatus, RuntimeError};

/// Longest zygote line read; its lines are a few dozen bytes.
const MAX_LINE: u64 = 64 * 1024;
/// How often the deficit is re-checked without a wake-up (pending spawns expire).
const RECHECK: Duration = Duration::from_secs(1);
/// Longest pause between restarts of a zygote that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs zygotes until shutdown. `ready` learns the Python version of the first one, or why it
/// could not start.
pub(super) async fn supervise(
    inner: Arc<Inner>,
    mut ready: Option<oneshot::Sender<Result<String, RuntimeError>>>,
) {
    let mut backoff = Duration::from_millis(100);
    while !inner.shutdown.is_cancelled() {
        let attempted = std::time::Instant::now();
        let failure = match start(&inner) {
            Ok(child) => {
                let ended = run(&inner, child, &mut ready).await;
                if ended.became_ready {
                    // It served, then ended: a crash, not a failed start (its restart may be).
                    backoff = Duration::from_millis(100);
                    None
                } else {
                    Some(format!(
                        "the worker zygote ({}) exits before it is ready ({}); fleetmapd keeps \
                         restarting it: see the node log for its error and check that the \
                         interpreter runs and imports cloudpickle",
                        inner.opts.python.display(),
                        ended.status
                    ))
                }
            }
            Err(err) => {
                error!(cause = %err, "cannot start the zygote");
                if let Some(tx) = ready.take() {
                    let _ = tx.send(Err(err));
                    return;
                }
                Some(format!(
                    "{err}; fix the interpreter (it must run and import cloudpickle) or restart \
                     fleetmapd with a working --python"
                ))
            }
        };
        if inner.shutdown.is_cancelled() {
            break;
        }
        // Waiting acquirers learn of a zygote that cannot come up instead of waiting on.
        if let Some(failure) = failure {
            inner.pool.start_failed(attempted, failure);
        }
        inner.pool.spawns_lost();
        inner.exits.clear();
        warn!(
            retry_in_ms = backoff.as_millis() as u64,
            "zygote ended; restarting it"
        );
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = inner.shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn start(inner: &Inner) -> Result<Child, RuntimeError> {
    let interpreter = |reason: String| RuntimeError::Interpreter {
        python: inner.opts.python.display().to_string(),
        reason,
    };
    let mut command = Command::new(&inner.opts.python);
    command
        .arg("-u")
        .arg(&inner.opts.worker_file)
        .arg("zygote")
        .arg("--socket")
        .arg(&inner.opts.socket_path)
        .arg("--max-frame-bytes")
        .arg(inner.opts.max_frame_bytes.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| interpreter(format!("cannot start it: {e}")))?;
    let pid = child.id().unwrap_or(0);
    if let Err(err) = inner.cgroups.enter_pool(pid) {
        warn!(pid, cause = %err, "cannot move the zygote into the pool cgroup");
    }
    inner.idle_priority.store(
        super::priority::lower(pid),
        std::sync::atomic::Ordering::Relaxed,
    );
    crate::runtime::timer_slack::tighten(pid);
    info!(pid, "zygote started");
    Ok(child)
}

/// Serves one zygote until it dies or shutdown; returns whether it became ready.
/// How a zygote's service ended.
struct Ended {
    /// It had said `ready`.
    became_ready: bool,
    /// Its exit status, as words.
    status: String,
}

async fn run(
    inner: &Inner,
    mut child: Child,
    ready: &mut Option<oneshot::Sender<Result<String, RuntimeError>>>,
) -> Ended {
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        error!("zygote started without pipes");
        return Ended {
            became_ready: false,
            status: "started without pipes".to_string(),
        };
    };
    let mut lines = BufReader::new(stdout);
    let mut line = Vec::with_capacity(256);
    let mut became_ready = false;
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        tokio::select! {
            read = read_line(&mut lines, &mut line) => match read {
                Ok(true) => {
                    match serde_json::from_slice::<ZygoteEvent>(&line) {
                        Ok(event) => {
                            if let ZygoteEvent::Ready { pid, python } = &event {
                                info!(pid, python = %python, "zygote ready");
                                inner.set_python(python.clone());
                                became_ready = true;
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(Ok(python.clone()));
                                }
                            }
                            on_event(inner, event);
                        }
                        Err(err) => warn!(cause = %err, line = %String::from_utf8_lossy(&line), "ignoring a zygote line"),
                    }
                    line.clear();
                    if became_ready {
                        spawn_deficit(inner, &mut stdin).await;
                    }
                }
                Ok(false) | Err(_) => break,
            },
            _ = inner.pool.replenish_wanted(), if became_ready => spawn_deficit(inner, &mut stdin).await,
            _ = recheck.tick(), if became_ready => spawn_deficit(inner, &mut stdin).await,
            _ = inner.shutdown.cancelled() => {
                drop(stdin);
                stop(child).await;
                return Ended { became_ready, status: "stopped for the shutdown".to_string() };
            }
        }
    }
    let status = child.wait().await.ok();
    error!(status = ?status, "zygote exited");
    if let Some(tx) = ready.take() {
        let _ = tx.send(Err(RuntimeError::Interpreter {
            python: inner.opts.python.display().to_string(),
            reason: format!("the zygote exited before it was ready ({status:?}); see the log above for its error"),
        }));
    }
    Ended {
        became_ready,
        status: status.map_or_else(|| "status unknown".to_string(), |s| s.to_string()),
    }
}

/// Reads one line into `line` (without the newline); `Ok(false)` at end of stream. Cancel-safe:
/// a partial line stays in `line` and the next call appends to it; the caller clears `line`
/// after handling a whole one.
async fn read_line(
    reader: &mut BufReader<ChildStdout>,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    let n = reader.take(MAX_LINE).read_until(b'\n', line).await?;
    if n == 0 && line.is_empty() {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Ok(true)
}

fn on_event(inner: &Inner, event: ZygoteEvent) {
    match event {
        ZygoteEvent::Ready { .. } => inner.pool.request_replenish(),
        ZygoteEvent::Spawned { pid } => {
            debug!(pid, "worker spawned");
            inner.exits.spawned(pid);
        }
        ZygoteEvent::Exited {
            pid,
            exit_code,
            signal,
        } => {
            debug!(pid, exit_code, signal, "worker exited");
            let status = ExitStatus {
                code: exit_code,
                signal,
            };
            if !inner.exits.exited(pid, status) {
                // A child that ends before its HELLO is a start that failed.
                inner.pool.start_failed(
                    std::time::Instant::now(),
                    format!(
                        "workers forked by the zygote ({}) exit before they connect ({status}); \
                         see the node log for their error",
                        inner.opts.python.display()
                    ),
                );
            }
        }
    }
}

async fn spawn_deficit(inner: &Inner, stdin: &mut ChildStdin) {
    let count = inner.pool.claim_deficit();
    if count == 0 {
        return;
    }
    let mut command = serde_json::to_vec(&ZygoteCommand::Spawn { count }).unwrap_or_default();
    command.push(b'\n');
    if let Err(err) = stdin.write_all(&command).await {
        warn!(cause = %err, "cannot ask the zygote for workers");
        inner.pool.spawns_lost();
    } else {
        debug!(count, "asked the zygote for workers");
    }
}

/// Ends a zygote: stdin is closed (it exits by itself), killed if it lingers.
async fn stop(mut child: Child) {
    if tokio::time::timeout(Duration::from_millis(500), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
