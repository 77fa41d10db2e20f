//! What both services' `GET /metrics` share: the request-latency histogram family (labels kept
//! to a bounded set whatever clients send) and the OpenMetrics text exposition of a registry.

use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of a request latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's template (`/v1/jobs/{job_id}`), or `unmatched`.
    pub route: String,
    /// The HTTP method (`other` for anything unusual).
    pub method: String,
    /// The answer's status code.
    pub status: String,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~16 s: job submissions answer once admitted, control routes in microseconds.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Request latencies by route template, method and status.
#[derive(Debug, Clone)]
pub struct RequestLatency {
    family: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl RequestLatency {
    /// A family registered in `registry` as `request_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Self {
        let family: Family<RequestLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its answer's head, by route, method and status",
            family.clone(),
        );
        Self { family }
    }

    /// Records one answered request; `route` is its template (`None`: `unmatched`).
    pub fn observe(&self, route: Option<&str>, method: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        self.family
            .get_or_create(&RequestLabels {
                route: route.unwrap_or("unmatched").to_owned(),
                method: method.to_owned(),
                status: status.to_string(),
            })
            .observe(seconds);
    }
}

/// The OpenMetrics text of `registry` (a failure to encode is logged and leaves what was written).
pub fn render(registry: &Mutex<Registry>) -> String {
    let registry = registry
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut out = String::new();
    if let Err(err) = encode(&mut out, &registry) {
        tracing::warn!(cause = %err, "cannot encode the metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_stay_a_bounded_set_and_unmatched_routes_are_named() {
        let mut registry = Registry::default();
        let latency = RequestLatency::register(&mut registry);
        latency.observe(Some("/v1/jobs"), "POST", 200, 0.001);
        latency.observe(None, "BREW", 404, 0.001);
        let text = render(&Mutex::new(registry));
        assert!(
            text.contains(r#"route="/v1/jobs",method="POST",status="200""#),
            "{text}"
        );
        assert!(
            text.contains(r#"route="unmatched",method="other",status="404""#),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }
}
