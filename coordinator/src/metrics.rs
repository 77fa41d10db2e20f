//! Prometheus metrics of the coordinator (`GET /metrics`, OpenMetrics text): request latencies
//! by route, method and status, recorded as requests are answered; and the fleet and its jobs
//! (nodes, CPUs, GPUs, running instances, running jobs and their inputs), read from the state
//! when scraped, so they are never stale and cost nothing between scrapes; and counters of
//! what ended (jobs by state, inputs done, input failures by kind), counted as it happens.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: typed metric
//! families with derived label sets, no global registry, text encoding without protobuf.

use std::sync::Mutex;

use agent_proto::{FailureKind, JobState};
use fleetmap_service_metrics::RequestLatency;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::request::Route;
use crate::state::State;

pub use fleetmap_service_metrics::CONTENT_TYPE;

/// A `state` or `kind` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// A `kind` label (of input failures).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The coordinator's metrics.
#[derive(Debug)]
pub struct Metrics {
    // A std mutex: encoding is synchronous and nothing awaits while it is held.
    registry: Mutex<Registry>,
    requests: RequestLatency,
    nodes: Family<StateLabel, Gauge>,
    cpus: Family<StateLabel, Gauge>,
    gpus: Family<StateLabel, Gauge>,
    instances: Gauge,
    jobs_running: Gauge,
    inputs: Family<StateLabel, Gauge>,
    jobs_finished: Family<StateLabel, Counter>,
    inputs_done: Counter,
    input_failures: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `fleetmap_coordinator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleetmap_coordinator");
        let requests = RequestLatency::register(&mut registry);
        let nodes = Family::<StateLabel, Gauge>::default();
        registry.register(
            "nodes",
            "Registered nodes by state (alive, draining, dead)",
            nodes.clone(),
        );
        let cpus = Family::<StateLabel, Gauge>::default();
        registry.register(
            "cpus",
            "CPUs of live nodes: total, and in use by instances",
            cpus.clone(),
        );
        let gpus = Family::<StateLabel, Gauge>::default();
        registry.register(
            "gpus",
            "GPUs of live nodes: total, and in use by instances",
            gpus.clone(),
        );
        let instances = Gauge::default();
        registry.register(
            "instances",
            "Function instances running on live nodes",
            instances.clone(),
        );
        let jobs_running = Gauge::default();
        registry.register("jobs_running", "Jobs running", jobs_running.clone());
        let inputs = Family::<StateLabel, Gauge>::default();
        registry.register(
            "inputs",
            "Inputs of running jobs: received, pending (queued or running), done, failed",
            inputs.clone(),
        );
        let jobs_finished = Family::<StateLabel, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs ended, by final state (completed, failed, cancelled)",
            jobs_finished.clone(),
        );
        let inputs_done = Counter::default();
        registry.register(
            "inputs_done",
            "Inputs that yielded a result",
            inputs_done.clone(),
        );
        let input_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "input_failures",
            "Inputs that yielded a failure, by kind (exception, oom, exited, killed, timeout, unpicklable_result, function_load, lost)",
            input_failures.clone(),
        );
        // Every series exists from the start, so a rate over them is defined before the first event.
        for state in [JobState::Completed, JobState::Failed, JobState::Cancelled] {
            drop(jobs_finished.get_or_create(&StateLabel {
                state: state.as_str().to_owned(),
            }));
        }
        for kind in FailureKind::ALL {
            drop(input_failures.get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            }));
        }
        Self {
            jobs_finished,
            inputs_done,
            input_failures,
            registry: Mutex::new(registry),
            requests,
            nodes,
            cpus,
            gpus,
            instances,
            jobs_running,
            inputs,
        }
    }

    /// Counts a job that ended in `state`.
    pub fn job_finished(&self, state: JobState) {
        self.jobs_finished
            .get_or_create(&StateLabel {
                state: state.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts `count` inputs that yielded a result.
    pub fn inputs_done(&self, count: u64) {
        self.inputs_done.inc_by(count);
    }

    /// Counts an input that failed with `kind`.
    pub fn input_failed(&self, kind: FailureKind) {
        self.input_failures
            .get_or_create(&KindLabel {
                kind: kind.as_str().to_owned(),
            })
            .inc();
    }

    /// Records one answered request.
    pub fn observe_request(&self, path: &str, method: &str, status: u16, seconds: f64) {
        let route = Route::parse(path).map(|route| route.template());
        self.requests.observe(route, method, status, seconds);
    }

    /// The exposition, with the fleet and job gauges read from `state` now.
    pub fn render(&self, state: &State) -> String {
        self.refresh(state);
        fleetmap_service_metrics::render(&self.registry)
    }

    fn refresh(&self, state: &State) {
        let set = |family: &Family<StateLabel, Gauge>, label: &str, value: u64| {
            family
                .get_or_create(&StateLabel {
                    state: label.to_owned(),
                })
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        let views = state.registry.views(tokio::time::Instant::now());
        let (mut alive, mut draining, mut dead) = (0, 0, 0);
        let (mut cpus, mut free_cpus, mut gpus, mut gpus_used, mut instances) = (0, 0, 0, 0, 0);
        for view in &views {
            match (view.alive, view.info.draining) {
                (false, _) => dead += 1,
                (true, true) => draining += 1,
                (true, false) => alive += 1,
            }
            if view.alive {
                cpus += u64::from(view.info.cpus);
                free_cpus += u64::from(view.info.free_cpus);
                instances += u64::from(view.info.instances);
                gpus += view.info.gpus.len() as u64;
                gpus_used += view.info.gpus.iter().filter(|g| g.in_use).count() as u64;
            }
        }
        set(&self.nodes, "alive", alive);
        set(&self.nodes, "draining", draining);
        set(&self.nodes, "dead", dead);
        set(&self.cpus, "total", cpus);
        set(&self.cpus, "in_use", cpus.saturating_sub(free_cpus));
        set(&self.gpus, "total", gpus);
        set(&self.gpus, "in_use", gpus_used);
        self.instances
            .set(i64::try_from(instances).unwrap_or(i64::MAX));

        let jobs = state.jobs.all();
        let (mut received, mut done, mut failed) = (0, 0, 0);
        for job in &jobs {
            let record = job.record();
            received += record.inputs;
            done += record.done;
            failed += record.failed;
        }
        self.jobs_running
            .set(i64::try_from(jobs.len()).unwrap_or(i64::MAX));
        set(&self.inputs, "received", received);
        set(
            &self.inputs,
            "pending",
            received.saturating_sub(done + failed),
        );
        set(&self.inputs, "done", done);
        set(&self.inputs, "failed", failed);
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn requests_are_recorded_by_route_template() {
        let metrics = Metrics::new();
        metrics.observe_request("/v1/jobs/abc", "GET", 404, 0.001);
        metrics.observe_request("/nowhere", "GET", 404, 0.001);
        let registry = metrics.registry.lock().expect("lock");
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        assert!(
            out.contains("fleetmap_coordinator_request_duration_seconds_count{route=\"/v1/jobs/{job_id}\",method=\"GET\",status=\"404\"} 1"),
            "{out}"
        );
        assert!(out.contains("route=\"unmatched\""), "{out}");
        assert!(out.ends_with("# EOF\n"), "{out}");
    }

    #[test]
    fn ends_are_counted_by_state_and_failures_by_kind() {
        let metrics = Metrics::new();
        metrics.job_finished(JobState::Failed);
        metrics.inputs_done(41);
        metrics.inputs_done(1);
        metrics.input_failed(FailureKind::Oom);
        let registry = metrics.registry.lock().expect("lock");
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        for line in [
            "fleetmap_coordinator_jobs_finished_total{state=\"failed\"} 1",
            "fleetmap_coordinator_jobs_finished_total{state=\"completed\"} 0",
            "fleetmap_coordinator_inputs_done_total 42",
            "fleetmap_coordinator_input_failures_total{kind=\"oom\"} 1",
            "fleetmap_coordinator_input_failures_total{kind=\"unpicklable_result\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing from {out}");
        }
    }
}
