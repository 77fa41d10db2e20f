//! Prometheus metrics of the daemon (`GET /metrics`, OpenMetrics text): request latencies by
//! route, method and status, recorded as requests are answered; and what the node offers and
//! runs (CPUs, RAM, GPUs, instances, jobs and their inputs) and its environment cache's
//! counters, read from the daemon's state when scraped; and totals of what ended (jobs by final
//! state, inputs done, input failures by kind), also read from the state when scraped.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client (as the
//! coordinator's metrics are).

use std::sync::Mutex;

use fleetmap_service_metrics::RequestLatency;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Daemon;

pub use fleetmap_service_metrics::CONTENT_TYPE;

/// A `state` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// An `event` label of the environment cache.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: String,
}

/// A `kind` label (of input failures).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    // A std mutex: encoding is synchronous and nothing awaits while it is held.
    registry: Mutex<Registry>,
    requests: RequestLatency,
    cpus: Family<StateLabel, Gauge>,
    ram: Family<StateLabel, Gauge>,
    gpus: Family<StateLabel, Gauge>,
    instances: Gauge,
    jobs_running: Gauge,
    inputs: Family<StateLabel, Gauge>,
    env_events: Family<EventLabel, Counter>,
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
    /// Every metric, registered under the `fleetmap_daemon` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleetmap_daemon");
        let requests = RequestLatency::register(&mut registry);
        let cpus = Family::<StateLabel, Gauge>::default();
        registry.register("cpus", "CPUs: total, and in use by instances", cpus.clone());
        let ram = Family::<StateLabel, Gauge>::default();
        registry.register(
            "ram_bytes",
            "RAM: total, and reserved by instances",
            ram.clone(),
        );
        let gpus = Family::<StateLabel, Gauge>::default();
        registry.register("gpus", "GPUs: total, and in use by instances", gpus.clone());
        let instances = Gauge::default();
        registry.register("instances", "Function instances running", instances.clone());
        let jobs_running = Gauge::default();
        registry.register("jobs_running", "Jobs running", jobs_running.clone());
        let inputs = Family::<StateLabel, Gauge>::default();
        registry.register(
            "inputs",
            "Inputs of running jobs: queued, running, done, failed",
            inputs.clone(),
        );
        let env_events = Family::<EventLabel, Counter>::default();
        registry.register(
            "env_cache_events",
            "Environment cache: builds, hits, shared builds, failures, evictions, jobs in the node's own environment",
            env_events.clone(),
        );
        let jobs_finished = Family::<StateLabel, Counter>::default();
        registry.register(
            "jobs_finished",
            "Jobs ended on this node, by final state (completed, failed, cancelled)",
            jobs_finished.clone(),
        );
        let inputs_done = Counter::default();
        registry.register(
            "inputs_done",
            "Inputs that yielded a result on this node",
            inputs_done.clone(),
        );
        let input_failures = Family::<KindLabel, Counter>::default();
        registry.register(
            "input_failures",
            "Inputs that yielded a failure on this node, by kind (exception, oom, exited, killed, timeout, unpicklable_result, function_load, lost)",
            input_failures.clone(),
        );
        Self {
            jobs_finished,
            inputs_done,
            input_failures,
            registry: Mutex::new(registry),
            requests,
            cpus,
            ram,
            gpus,
            instances,
            jobs_running,
            inputs,
            env_events,
        }
    }

    /// Records one answered request.
    pub fn observe_request(&self, path: &str, method: &str, status: u16, seconds: f64) {
        let route = crate::api::route::template(path);
        self.requests.observe(route, method, status, seconds);
    }

    /// The exposition, with the node, job and cache values read from `daemon` now.
    pub fn render(&self, daemon: &Daemon) -> String {
        self.refresh(daemon);
        fleetmap_service_metrics::render(&self.registry)
    }

    fn refresh(&self, daemon: &Daemon) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        let set = |family: &Family<StateLabel, Gauge>, label: &str, value: u64| {
            family
                .get_or_create(&StateLabel {
                    state: label.to_owned(),
                })
                .set(gauge(value));
        };
        let info = crate::node::info(daemon);
        set(&self.cpus, "total", u64::from(info.cpus));
        set(
            &self.cpus,
            "in_use",
            u64::from(info.cpus.saturating_sub(info.free_cpus)),
        );
        set(&self.ram, "total", info.ram_bytes);
        set(
            &self.ram,
            "in_use",
            info.ram_bytes.saturating_sub(info.free_ram_bytes),
        );
        set(&self.gpus, "total", info.gpus.len() as u64);
        set(
            &self.gpus,
            "in_use",
            info.gpus.iter().filter(|g| g.in_use).count() as u64,
        );
        self.instances.set(gauge(u64::from(info.instances)));

        let (mut running, mut queued, mut busy, mut done, mut failed) = (0, 0, 0, 0, 0);
        for job in daemon.inner().registry.list() {
            if job.state.is_terminal() {
                continue;
            }
            running += 1;
            queued += job.queued;
            busy += job.running;
            done += job.done;
            failed += job.failed;
        }
        self.jobs_running.set(gauge(running));
        set(&self.inputs, "queued", queued);
        set(&self.inputs, "running", busy);
        set(&self.inputs, "done", done);
        set(&self.inputs, "failed", failed);

        // Totals only grow: mirror them into counters by their increase.
        let mirror = |counter: &Counter, value: u64| {
            let seen = counter.get();
            if value > seen {
                counter.inc_by(value - seen);
            }
        };
        let totals = daemon.inner().registry.totals();
        for (state, value) in [
            ("completed", totals.completed),
            ("failed", totals.failed),
            ("cancelled", totals.cancelled),
        ] {
            mirror(
                &self.jobs_finished.get_or_create(&StateLabel {
                    state: state.to_owned(),
                }),
                value,
            );
        }
        mirror(&self.inputs_done, totals.inputs_done);
        for (kind, value) in agent_proto::FailureKind::ALL
            .iter()
            .zip(totals.failures_by_kind)
        {
            mirror(
                &self.input_failures.get_or_create(&KindLabel {
                    kind: kind.as_str().to_owned(),
                }),
                value,
            );
        }

        let c = daemon.inner().envs.info().counters;
        for (event, value) in [
            ("builds", c.builds),
            ("hits", c.hits),
            ("shared", c.shared),
            ("failures", c.failures),
            ("evictions", c.evictions),
            ("node_default", c.node_default),
        ] {
            mirror(
                &self.env_events.get_or_create(&EventLabel {
                    event: event.to_owned(),
                }),
                value,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn requests_are_recorded_by_route_template_and_methods_stay_bounded() {
        let metrics = Metrics::new();
        metrics.observe_request("/v1/jobs/j-1/inputs", "POST", 204, 0.002);
        metrics.observe_request("/v1/nope", "BREW", 404, 0.001);
        let registry = metrics.registry.lock().expect("lock");
        let mut out = String::new();
        encode(&mut out, &registry).expect("encode");
        assert!(
            out.contains("fleetmap_daemon_request_duration_seconds_count{route=\"/v1/jobs/{id}/inputs\",method=\"POST\",status=\"204\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("route=\"unmatched\",method=\"other\""),
            "{out}"
        );
    }
}
