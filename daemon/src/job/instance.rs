//! One instance of a job: a slot that runs one worker at a time (`docs/protocol.md` §4.4–4.9).
//!
//! Per worker: ASSIGN + FUNCTION → READY, then chunks from the job's queue (≤ 2 in flight,
//! sized by [`ChunkSizer`]), RESULTS/FAILURE/OUTPUT forwarded to the result stream as they
//! came (RESULTS are validated and counted, never re-encoded). A worker that dies is
//! diagnosed from its progress file, the slot's OOM counter and its exit status; its
//! unfinished items go back to the front of the queue and the slot gets a fresh worker.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_proto::{
    Assignment, Failure, FailureKind, Frame, FrameKind, JobState, Output, WorkerReady,
};
use fleetmap_sandbox::Slot;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::chunk::{validate_batch, Chunk};
use super::death::Death;
use super::progress::{monotonic_ns, ProgressFile};
use super::sink::ResultSink;
use super::sizing::ChunkSizer;
use super::Job;
use crate::capacity::Capacity;
use crate::env::EnvTarget;
use crate::runtime::{ExitWatch, FrameReader, FrameWriter, Runtime, Worker};

/// Most chunks one worker holds at once (§4.6; see `ChunkSizer::in_flight_limit`).
const MAX_IN_FLIGHT: usize = 2;
/// How often progress files are checked when the job has a timeout.
const TIMEOUT_CHECK: Duration = Duration::from_millis(50);
/// How long to wait for the zygote's report of a dead worker's exit status.
const EXIT_REPORT_WAIT: Duration = Duration::from_secs(2);
/// How long a worker told to SHUTDOWN may take before its slot is removed (and it killed).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Workers in a row that may die before READY before the job fails.
const MAX_LOAD_DEATHS: u32 = 3;

/// What an instance runs with.
#[derive(Debug)]
pub struct Instance {
    /// The job.
    pub job: Job,
    /// Its slot (released when the instance ends).
    pub slot: Slot,
    /// Where workers come from.
    pub runtime: Arc<dyn Runtime>,
    /// The environment workers run in.
    pub env: EnvTarget,
    /// Where the slot goes back to.
    pub capacity: Arc<Capacity>,
    /// The job's result stream.
    pub sink: ResultSink,
    /// Directory for progress files.
    pub progress_dir: PathBuf,
}

/// How one worker's service ended.
enum Outcome {
    /// The job ended; the worker was told to leave (`exit` set: it exits by itself).
    Stopped { exit: Option<ExitWatch> },
    /// The worker died; `ready` says whether it had loaded the function.
    Died { ready: bool },
}

/// A chunk a worker holds.
struct InFlight {
    chunk: Arc<Chunk>,
    sent: Instant,
    /// Items answered (RESULTS entries and FAILUREs).
    answered: usize,
    /// Indices that got a FAILURE.
    failed: Vec<u64>,
    /// Indices that got a result, recorded only when a chunk's RESULTS came split.
    results: Vec<u64>,
}

impl InFlight {
    fn new(chunk: Arc<Chunk>) -> Self {
        Self {
            chunk,
            sent: Instant::now(),
            answered: 0,
            failed: Vec::new(),
            results: Vec::new(),
        }
    }

    fn is_answered(&self, index: u64) -> bool {
        self.failed.contains(&index) || self.results.contains(&index)
    }
}

enum WriterMsg {
    Chunk(Arc<Chunk>),
    Shutdown,
}

/// Runs the instance until its job ends, then gives the slot back.
pub async fn run(instance: Instance) {
    let span = tracing::info_span!("instance", job = %instance.job.id(), slot = %instance.slot.id);
    async move {
        let mut sizer = ChunkSizer::new();
        let mut load_deaths = 0;
        let mut leaving = None;
        let stop = instance.job.stop_token().clone();
        while !stop.is_cancelled() {
            let acquired = tokio::select! {
                worker = instance.runtime.acquire(&instance.slot, &instance.env) => worker,
                _ = stop.cancelled() => break,
            };
            let worker = match acquired {
                Ok(worker) => worker,
                Err(err) => {
                    instance.job.finish(
                        JobState::Failed,
                        format!("no worker could be started for this job: {err}"),
                    );
                    break;
                }
            };
            match serve(&instance, worker, &mut sizer).await {
                Outcome::Stopped { exit } => {
                    leaving = exit;
                    break;
                }
                Outcome::Died { ready: true } => load_deaths = 0,
                Outcome::Died { ready: false } => {
                    load_deaths += 1;
                    if load_deaths >= MAX_LOAD_DEATHS {
                        instance.job.finish(
                            JobState::Failed,
                            format!("{load_deaths} workers in a row died while loading the function; make sure it can be unpickled and imported without crashing the interpreter"),
                        );
                    }
                }
            }
            sizer.restart();
        }
        instance.capacity.release(&instance.slot.id);
        let release = instance.runtime.release(instance.slot.id.clone());
        tokio::spawn(async move {
            if let Some(exit) = leaving {
                exit.wait(SHUTDOWN_GRACE).await;
            }
            release.await;
        });
    }
    .instrument(span)
    .await
}

/// Serves the job with one worker until the job ends or the worker dies.
async fn serve(instance: &Instance, worker: Worker, sizer: &mut ChunkSizer) -> Outcome {
    let Worker {
        pid,
        conn,
        exit,
        scratch,
        oom_kills_before,
    } = worker;
    let job = &instance.job;
    let slot = &instance.slot;
    let path = instance
        .progress_dir
        .join(format!("{}-{}-{pid}", job.id(), slot.id));
    let progress = match ProgressFile::create(&path) {
        Ok(progress) => progress,
        Err(err) => {
            instance.runtime.kill(&slot.id, pid).await;
            job.finish(
                JobState::Failed,
                format!("cannot create the progress file {}: {err}", path.display()),
            );
            return Outcome::Stopped { exit: None };
        }
    };
    let oom_before = oom_kills_before.unwrap_or_else(|| instance.runtime.oom_kills(&slot.id));
    let (mut reader, mut writer) = conn.split();
    let mut w = WorkerCtx {
        instance,
        pid,
        exit,
        progress,
        oom_before,
    };

    // ASSIGN + FUNCTION, and the first chunk when inputs are queued already, in one vectored
    // write: the worker loads the function and goes on to the chunk without waiting for a
    // round trip after READY (it reads frames in order, so this is the protocol's order).
    let assign = Frame::json(
        FrameKind::Assign,
        &Assignment {
            job_id: job.id().to_string(),
            slot_id: slot.id.clone(),
            cpus: slot.cpus.clone(),
            ram_bytes: slot.ram_bytes,
            progress_path: w.progress.path().display().to_string(),
            env: gpu_env(slot),
            scratch: scratch.as_ref().map(|s| s.path.clone()),
            scratch_bytes: scratch.as_ref().map_or(0, |s| s.bytes),
        },
    );
    let function = Frame::new(FrameKind::Function, job.function().clone());
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(MAX_IN_FLIGHT);
    let first = job
        .queue()
        .pop(sizer.next_size_within(|| job.chunk_share()))
        .map(Arc::new);
    let (assign_header, function_header) = (assign.header(), function.header());
    let mut parts: Vec<&[u8]> = vec![
        &assign_header,
        &assign.body,
        &function_header,
        &function.body,
    ];
    if let Some(chunk) = &first {
        parts.extend(chunk.parts());
    }
    let sent = writer.send_parts(&parts).await;
    drop(parts);
    if let Some(chunk) = first {
        in_flight.push_back(InFlight::new(chunk));
    }
    if sent.is_err() {
        return w.died(in_flight, None, false).await;
    }
    match w.wait_ready(&mut reader).await {
        Ok(Some(_ready)) => {
            debug!(pid, "worker ready");
            job.instance_ready();
            // The pipelined chunk starts now, not when the function started loading.
            if let Some(first) = in_flight.front_mut() {
                first.sent = Instant::now();
            }
        }
        Ok(None) => return Outcome::Stopped { exit: Some(w.exit) },
        Err(Stop::Died) => return w.died(in_flight, None, false).await,
        Err(Stop::Job) => return w.leave(None, None).await,
    }

    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT + 1);
    let writer_task = tokio::spawn(write_chunks(writer, rx));
    w.run(reader, tx, writer_task, in_flight, sizer).await
}

/// The variables that show the slot's GPU, and only it, to CUDA and to NVIDIA's container
/// tooling: both name it by UUID (stable, unlike indices, which CUDA may order differently
/// from NVML). The worker sets them after its fork from the zygote and before it loads the
/// function, so CUDA (initialised lazily) never sees another GPU.
pub fn gpu_env(slot: &Slot) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::new();
    if let Some(gpu) = &slot.gpu {
        for name in ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"] {
            env.insert(name.to_owned(), gpu.device.uuid.clone());
        }
    }
    env
}

/// Why waiting for READY ended without it.
enum Stop {
    /// The worker died or broke the protocol.
    Died,
    /// The job ended.
    Job,
}

/// Writes chunks (and the final SHUTDOWN) to the worker, so that reading its answers never
/// waits behind a large write.
async fn write_chunks(mut writer: FrameWriter, mut rx: mpsc::Receiver<WriterMsg>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            WriterMsg::Chunk(chunk) => {
                if writer.send_parts(&chunk.parts()).await.is_err() {
                    return;
                }
            }
            WriterMsg::Shutdown => {
                writer.shutdown_worker().await;
                return;
            }
        }
    }
}

/// One worker in the instance's slot.
struct WorkerCtx<'a> {
    instance: &'a Instance,
    pid: u32,
    exit: ExitWatch,
    progress: ProgressFile,
    oom_before: u64,
}

impl WorkerCtx<'_> {
    /// Forwards a frame to the result stream; gives up when the job stops.
    async fn forward(&self, frame: &Frame) {
        let stop = self.instance.job.stop_token();
        tokio::select! {
            _ = self.instance.sink.send(frame) => {}
            _ = stop.cancelled() => {}
        }
    }

    /// Waits for READY, forwarding OUTPUT. `Ok(None)`: the function could not be loaded (the
    /// job failed; the worker exits by itself).
    async fn wait_ready(&self, reader: &mut FrameReader) -> Result<Option<WorkerReady>, Stop> {
        let job = &self.instance.job;
        loop {
            let frame = tokio::select! {
                frame = reader.next_frame() => frame,
                _ = job.stop_token().cancelled() => return Err(Stop::Job),
            };
            let frame = match frame {
                Ok(Some(frame)) => frame,
                Ok(None) => return Err(Stop::Died),
                Err(err) => {
                    warn!(pid = self.pid, cause = %err, "worker broke the protocol before READY");
                    return Err(Stop::Died);
                }
            };
            match frame.kind {
                FrameKind::Ready => {
                    return frame.parse_json().map(Some).map_err(|err| {
                        warn!(pid = self.pid, cause = %err, "bad READY");
                        Stop::Died
                    })
                }
                FrameKind::Output if Output::from_frame(&frame).is_ok() => {
                    self.forward(&frame).await
                }
                FrameKind::Failure => {
                    let Ok(mut failure) = Failure::from_frame(&frame) else {
                        return Err(Stop::Died);
                    };
                    if failure.info.kind != FailureKind::FunctionLoad {
                        warn!(pid = self.pid, kind = ?failure.info.kind, "unexpected FAILURE before READY");
                        return Err(Stop::Died);
                    }
                    failure.info.node = Some(job.node_id().to_string());
                    self.forward(&failure.to_frame()).await;
                    info!(reason = %failure.info.message, "the function could not be loaded");
                    job.finish(JobState::Failed, failure.info.message);
                    return Ok(None);
                }
                other => {
                    warn!(pid = self.pid, kind = %other, "unexpected frame before READY");
                    return Err(Stop::Died);
                }
            }
        }
    }

    /// The main loop: feed chunks, forward answers, watch timeouts, until the job ends or the
    /// worker dies.
    async fn run(
        &mut self,
        mut reader: FrameReader,
        tx: mpsc::Sender<WriterMsg>,
        writer_task: JoinHandle<()>,
        mut in_flight: VecDeque<InFlight>,
        sizer: &mut ChunkSizer,
    ) -> Outcome {
        let job = self.instance.job.clone();
        let stop = job.stop_token().clone();
        let timeout = job
            .spec()
            .timeout_s
            .map(Duration::from_secs_f64)
            .filter(|t| !t.is_zero());
        let mut ticker = tokio::time::interval(TIMEOUT_CHECK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen: Option<(u64, u64)> = None;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return self.leave(Some(tx), Some(writer_task)).await,
                frame = reader.next_frame() => {
                    let handled = match frame {
                        Ok(Some(frame)) => self.on_frame(frame, &mut in_flight, sizer).await,
                        Ok(None) => Err(None),
                        Err(err) => Err(Some(err.to_string())),
                    };
                    if let Err(reason) = handled {
                        if let Some(reason) = reason {
                            warn!(pid = self.pid, reason = %reason, "worker broke the protocol; replacing it");
                        }
                        writer_task.abort();
                        return self.died(in_flight, None, true).await;
                    }
                }
                chunk = job.queue().next_chunk(sizer.next_size_within(|| job.chunk_share())), if in_flight.len() < sizer.in_flight_limit(job.has_spare_work()) => {
                    let Some(chunk) = chunk else { continue };
                    let chunk = Arc::new(chunk);
                    in_flight.push_back(InFlight::new(chunk.clone()));
                    if tx.send(WriterMsg::Chunk(chunk)).await.is_err() {
                        return self.died(in_flight, None, true).await;
                    }
                }
                _ = ticker.tick(), if timeout.is_some() && !in_flight.is_empty() => {
                    let now = monotonic_ns();
                    let progress = self.progress.read();
                    let Some(index) = progress.index else {
                        last_seen = None;
                        continue;
                    };
                    let seen = (index, progress.started_ns);
                    // Two reads 50 ms apart that agree rule out a torn read of the pair.
                    let over = timeout.is_some_and(|t| progress.running_for(now) > t);
                    if last_seen == Some(seen) && over {
                        info!(pid = self.pid, index, "input ran past its timeout; killing its worker");
                        writer_task.abort();
                        return self.died(in_flight, Some(index), true).await;
                    }
                    last_seen = Some(seen);
                }
            }
        }
    }

    /// Handles one frame from a ready worker; `Err` means the worker broke the protocol
    /// (`None`: it simply ended).
    async fn on_frame(
        &self,
        frame: Frame,
        in_flight: &mut VecDeque<InFlight>,
        sizer: &mut ChunkSizer,
    ) -> Result<(), Option<String>> {
        let job = &self.instance.job;
        match frame.kind {
            FrameKind::Results => {
                let count = validate_batch(&frame.body).map_err(|e| Some(e.to_string()))?;
                let front = in_flight
                    .front_mut()
                    .ok_or_else(|| Some("RESULTS with no chunk in flight".to_string()))?;
                let len = front.chunk.len();
                if front.answered + count > len {
                    return Err(Some(format!(
                        "RESULTS answer {} items of a {len}-item chunk",
                        front.answered + count
                    )));
                }
                self.forward(&frame).await;
                front.answered += count;
                if front.answered < len {
                    // A split RESULTS (results over the frame limit): remember which items
                    // are answered in case the worker dies before the rest.
                    let body = &frame.body;
                    front.results.extend((0..count).map(|i| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&body[4 + 8 * i..12 + 8 * i]);
                        u64::from_le_bytes(b)
                    }));
                }
                job.answered(count as u64);
                complete_front(in_flight, sizer);
            }
            FrameKind::Failure => {
                let mut failure = Failure::from_frame(&frame).map_err(|e| Some(e.to_string()))?;
                let front = in_flight
                    .front_mut()
                    .ok_or_else(|| Some("FAILURE with no chunk in flight".to_string()))?;
                if front.answered >= front.chunk.len() {
                    return Err(Some("FAILURE beyond the chunk's items".to_string()));
                }
                failure.info.node = Some(job.node_id().to_string());
                failure.info.attempts = job.attempts(failure.index);
                self.forward(&failure.to_frame()).await;
                front.answered += 1;
                front.failed.push(failure.index);
                job.failed(failure.info.kind);
                let stops = failure.info.kind.stops_job()
                    && (job.spec().stop_on_exception
                        || failure.info.kind == FailureKind::FunctionLoad);
                if stops {
                    info!(index = failure.index, kind = ?failure.info.kind, "failure stops the job");
                    job.finish(JobState::Failed, failure.info.message);
                }
                complete_front(in_flight, sizer);
            }
            FrameKind::Output => {
                Output::from_frame(&frame).map_err(|e| Some(e.to_string()))?;
                self.forward(&frame).await;
            }
            other => {
                return Err(Some(format!(
                    "unexpected {other} frame from a ready worker"
                )))
            }
        }
        Ok(())
    }

    /// The job ended: SHUTDOWN (completed) or SIGKILL (failed, cancelled).
    async fn leave(
        &self,
        tx: Option<mpsc::Sender<WriterMsg>>,
        writer_task: Option<JoinHandle<()>>,
    ) -> Outcome {
        match (self.instance.job.stop_mode(), tx, writer_task) {
            (super::StopMode::Shutdown, Some(tx), Some(task)) => {
                let _ = tx.send(WriterMsg::Shutdown).await;
                drop(tx);
                let _ = task.await;
                Outcome::Stopped {
                    exit: Some(self.exit.clone()),
                }
            }
            (_, _, task) => {
                if let Some(task) = task {
                    task.abort();
                }
                self.instance
                    .runtime
                    .kill(&self.instance.slot.id, self.pid)
                    .await;
                Outcome::Stopped { exit: None }
            }
        }
    }

    /// The worker died (or was killed for a timeout on `timed_out`): blame the input its
    /// progress file names, re-queue the rest of its chunks, and clear the slot.
    async fn died(
        &self,
        in_flight: VecDeque<InFlight>,
        timed_out: Option<u64>,
        ready: bool,
    ) -> Outcome {
        let instance = self.instance;
        let job = &instance.job;
        let slot_id = &instance.slot.id;
        let progress = self.progress.read();
        instance.runtime.kill(slot_id, self.pid).await;
        if in_flight.is_empty() {
            debug!(pid = self.pid, ready, "worker ended with nothing in flight");
            return Outcome::Died { ready };
        }
        let status = self.exit.wait(EXIT_REPORT_WAIT).await;
        let oom_rose = instance.runtime.oom_kills(slot_id) > self.oom_before;
        let blamed = timed_out.or(progress.index).filter(|i| {
            in_flight
                .iter()
                .any(|f| f.chunk.contains(*i) && !f.is_answered(*i))
        });
        let mut retry_blamed = false;
        if let Some(index) = blamed {
            let death = Death::classify(timed_out.is_some(), oom_rose, status);
            if job.retry(index) {
                info!(
                    index,
                    ?death,
                    attempts = job.attempts(index),
                    "input's worker died; retrying it"
                );
                retry_blamed = true;
            } else {
                let spec = job.spec();
                let info = death.failure(
                    index,
                    job.attempts(index),
                    spec.func_ram_gb,
                    spec.timeout_s,
                    job.node_id(),
                );
                info!(index, ?death, reason = %info.message, "input's worker died");
                let kind = info.kind;
                self.forward(&Failure::new(index, info).to_frame()).await;
                job.failed(kind);
            }
        } else {
            warn!(
                pid = self.pid,
                ?status,
                oom_rose,
                "worker died between inputs; re-queueing its chunks"
            );
            job.unattributed_death();
        }
        for flight in in_flight.iter().rev() {
            let keep = |i: u64| !flight.is_answered(i) && (Some(i) != blamed || retry_blamed);
            if let Some(segment) = flight.chunk.subset(keep) {
                job.queue().push_front(segment);
            }
        }
        Outcome::Died { ready }
    }
}

/// Pops the oldest chunk once all its items are answered, timing it for the sizer.
fn complete_front(in_flight: &mut VecDeque<InFlight>, sizer: &mut ChunkSizer) {
    if in_flight
        .front()
        .is_some_and(|f| f.answered == f.chunk.len())
    {
        if let Some(done) = in_flight.pop_front() {
            sizer.observe(done.chunk.len(), done.sent, Instant::now());
        }
    }
}
