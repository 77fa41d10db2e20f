//! A job's supervisor task: starts instances as work and slots allow, sends STATUS every
//! 200 ms, notices completion or a client that went away, and after the instances have left
//! sends END, the last frame of the result stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_proto::{Frame, FrameKind, JobState, Output, OutputStream, NO_INDEX};
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use super::instance::{self, Instance};
use super::registry::Registry;
use super::sink::ResultSink;
use super::Job;
use crate::capacity::Capacity;
use crate::env::{EnvCache, EnvLease};
use crate::runtime::Runtime;

/// Period of STATUS frames.
pub const STATUS_EVERY: Duration = Duration::from_millis(200);

/// What a supervisor needs from the daemon.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Where workers come from.
    pub runtime: Arc<dyn Runtime>,
    /// Where slots come from.
    pub capacity: Arc<Capacity>,
    /// Where the job is listed.
    pub registry: Arc<Registry>,
    /// Directory for progress files.
    pub progress_dir: PathBuf,
    /// Where environments come from.
    pub envs: EnvCache,
    /// This node's name (prefixes the warnings sent to clients).
    pub node_id: String,
}

/// Starts the instances `job` can use right away (so that they load the function while the
/// inputs arrive), then supervises it on a task of its own until END. A job whose
/// environment must be built first waits for the build (its log streamed to the client as
/// OUTPUT frames of stream `build`); a failed build ends the job before any input runs.
pub fn start(job: Job, ctx: JobContext, sink: ResultSink) {
    let ready = ctx
        .envs
        .resolve_ready(&job.spec().environment)
        .map(|resolved| {
            resolved.map_err(|err| err.to_string()).and_then(|lease| {
                super::admit::check_env_python(job.spec(), lease.python())
                    .map(|()| lease)
                    .map_err(|err| err.to_string())
            })
        });
    match ready {
        Some(Ok(lease)) => {
            let mut instances = JoinSet::new();
            start_instances(&job, &ctx, &sink, &mut instances, &lease);
            tokio::spawn(async move {
                announce_notes(&ctx, &sink, &lease).await;
                supervise(job, ctx, sink, instances, Some(lease)).await;
            });
        }
        Some(Err(err)) => {
            job.finish(JobState::Failed, err);
            tokio::spawn(supervise(job, ctx, sink, JoinSet::new(), None));
        }
        None => {
            tokio::spawn(async move {
                let lease = prepare(&job, &ctx, &sink).await;
                if let Some(lease) = &lease {
                    announce_notes(&ctx, &sink, lease).await;
                }
                supervise(job, ctx, sink, JoinSet::new(), lease).await;
            });
        }
    }
}

/// Waits for the job's environment to be built; `None` when the build failed or the job
/// ended meanwhile (its end is decided then).
async fn prepare(job: &Job, ctx: &JobContext, sink: &ResultSink) -> Option<EnvLease> {
    let stop = job.stop_token().clone();
    let span = tracing::info_span!("job", job = %job.id());
    let resolving = ctx.envs.resolve(&job.spec().environment, |line| {
        let mut text = line.into_bytes();
        text.push(b'\n');
        let output = Output {
            index: NO_INDEX,
            stream: OutputStream::Build,
            text: text.into(),
        };
        // A client that reads slowly loses build lines, never holds the build up.
        sink.try_send(&output.to_frame());
    });
    let detach = job.spec().detach;
    tokio::select! {
        resolved = resolving.instrument(span) => match resolved {
            Ok(lease) => match super::admit::check_env_python(job.spec(), lease.python()) {
                Ok(()) => Some(lease),
                Err(err) => {
                    warn!(job = %job.id(), cause = %err, "the job's environment runs another Python");
                    job.finish(JobState::Failed, err.to_string());
                    None
                }
            },
            Err(err) => {
                warn!(job = %job.id(), cause = %err, "the job's environment is not available");
                job.finish(JobState::Failed, err.to_string());
                None
            }
        },
        _ = stop.cancelled() => None,
        _ = sink.closed(), if !detach => {
            job.finish(
                JobState::Cancelled,
                "the client disconnected from the result stream".to_string(),
            );
            None
        }
    }
}

/// Sends the environment's build warnings to the client (stderr, not tied to an input).
async fn announce_notes(ctx: &JobContext, sink: &ResultSink, lease: &EnvLease) {
    for note in lease.notes() {
        let output = Output {
            index: NO_INDEX,
            stream: OutputStream::Stderr,
            text: format!("fleetmap: warning from node {}: {note}\n", ctx.node_id).into(),
        };
        sink.send(&output.to_frame()).await;
    }
}

/// Runs `job` to its end and closes its result stream with END.
async fn supervise(
    job: Job,
    ctx: JobContext,
    sink: ResultSink,
    mut instances: JoinSet<()>,
    lease: Option<EnvLease>,
) {
    let span = tracing::info_span!("job", job = %job.id());
    async move {
        let mut status = tokio::time::interval_at(
            tokio::time::Instant::now() + STATUS_EVERY,
            STATUS_EVERY,
        );
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = job.stop_token().clone();
        let detach = job.spec().detach;
        let mut client_gone = false;
        loop {
            if job.is_complete() {
                job.finish(JobState::Completed, None);
            }
            if stop.is_cancelled() {
                break;
            }
            let freed = ctx.capacity.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let short = match &lease {
                Some(lease) => start_instances(&job, &ctx, &sink, &mut instances, lease),
                None => false,
            };
            tokio::select! {
                _ = job.changed() => {}
                _ = stop.cancelled() => {}
                _ = status.tick() => {
                    sink.try_send(&Frame::json(FrameKind::Status, &job.progress()));
                }
                _ = sink.closed(), if !client_gone => {
                    client_gone = true;
                    if !detach {
                        job.finish(
                            JobState::Cancelled,
                            "the client disconnected from the result stream".to_string(),
                        );
                    }
                }
                _ = &mut freed, if short => {}
                Some(_) = instances.join_next() => job.set_instances(instances.len() as u64),
            }
        }
        while instances.join_next().await.is_some() {}
        job.set_instances(0);
        let end = job.end();
        info!(state = %end.state, done = end.done, failed = end.failed, reason = ?end.message, "job ended");
        sink.send_json(FrameKind::End, &end).await;
        drop(lease);
        ctx.registry.ended(&job);
    }
    .instrument(span)
    .await
}

/// Starts instances up to what the job wants; returns whether it wants more than fit now.
fn start_instances(
    job: &Job,
    ctx: &JobContext,
    sink: &ResultSink,
    instances: &mut JoinSet<()>,
    lease: &EnvLease,
) -> bool {
    let wanted = job.wanted_instances();
    let request = Capacity::request(job.spec());
    while (instances.len() as u64) < wanted {
        let Some(slot) = ctx.capacity.try_allocate(&request) else {
            return true;
        };
        instances.spawn(instance::run(Instance {
            job: job.clone(),
            slot,
            runtime: ctx.runtime.clone(),
            env: lease.target().clone(),
            capacity: ctx.capacity.clone(),
            sink: sink.clone(),
            progress_dir: ctx.progress_dir.clone(),
        }));
        job.set_instances(instances.len() as u64);
    }
    false
}
