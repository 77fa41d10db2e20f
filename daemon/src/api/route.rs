//! The daemon's routes (`docs/protocol.md` §3): one table, matched against method and path.
//! The OpenAPI document is tested against [`ROUTES`] in both directions.

use http::Method;

/// Every route: method and path template (`{id}` is a job id).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/node"),
    ("GET", "/v1/environments"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/inputs"),
    ("POST", "/v1/jobs/{id}/release"),
    ("POST", "/v1/drain"),
];

/// A matched route, with its path parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/health`.
    Health,
    /// `GET /metrics` (Prometheus).
    Metrics,
    /// `GET /v1/node`.
    Node,
    /// `GET /v1/environments`.
    Environments,
    /// `GET /v1/jobs`.
    ListJobs,
    /// `POST /v1/jobs`.
    SubmitJob,
    /// `GET /v1/jobs/{id}`.
    GetJob(String),
    /// `DELETE /v1/jobs/{id}`.
    CancelJob(String),
    /// `POST /v1/jobs/{id}/inputs`.
    JobInputs(String),
    /// `POST /v1/jobs/{id}/release`.
    ReleaseInputs(String),
    /// `POST /v1/drain`.
    Drain,
}

/// Why no route matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No template matches the path.
    NotFound,
    /// The path exists with other methods.
    MethodNotAllowed(Vec<&'static str>),
}

/// Matches `path` against a template; returns the `{id}` segment, if any.
fn matches(template: &str, path: &str) -> Option<Option<String>> {
    let mut id = None;
    let mut want = template.split('/');
    let mut have = path.split('/');
    loop {
        match (want.next(), have.next()) {
            (None, None) => return Some(id),
            (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg.to_string()),
            (Some(w), Some(h)) if w == h => {}
            _ => return None,
        }
    }
}

/// The template of the route `path` names (a metrics label: ids never become labels).
pub fn template(path: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(_, template)| matches(template, path).is_some())
        .map(|(_, template)| *template)
}

/// Finds the route for a request.
pub fn route(method: &Method, path: &str) -> Result<Route, NoRoute> {
    let mut allowed = Vec::new();
    for (m, template) in ROUTES {
        let Some(id) = matches(template, path) else {
            continue;
        };
        if method.as_str() != *m {
            allowed.push(*m);
            continue;
        }
        let id = id.unwrap_or_default();
        return Ok(match *template {
            "/v1/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/v1/node" => Route::Node,
            "/v1/environments" => Route::Environments,
            "/v1/drain" => Route::Drain,
            "/v1/jobs" if *m == "GET" => Route::ListJobs,
            "/v1/jobs" => Route::SubmitJob,
            "/v1/jobs/{id}" if *m == "GET" => Route::GetJob(id),
            "/v1/jobs/{id}" => Route::CancelJob(id),
            "/v1/jobs/{id}/release" => Route::ReleaseInputs(id),
            _ => Route::JobInputs(id),
        });
    }
    if allowed.is_empty() {
        Err(NoRoute::NotFound)
    } else {
        Err(NoRoute::MethodNotAllowed(allowed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_entry_routes_to_a_distinct_variant() {
        let mut seen = Vec::new();
        for (method, template) in ROUTES {
            let path = template.replace("{id}", "job-1");
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            let route = route(&method, &path).expect("routes");
            assert!(!seen.contains(&route), "{route:?} twice");
            seen.push(route);
        }
        assert_eq!(
            route(&Method::DELETE, "/v1/jobs/abc"),
            Ok(Route::CancelJob("abc".into()))
        );
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(route(&Method::GET, "/v2/health"), Err(NoRoute::NotFound));
        assert_eq!(route(&Method::GET, "/v1/jobs/"), Err(NoRoute::NotFound));
        assert_eq!(
            route(&Method::GET, "/v1/jobs/a/inputs/x"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(
            route(&Method::PUT, "/v1/jobs"),
            Err(NoRoute::MethodNotAllowed(vec!["GET", "POST"]))
        );
        assert_eq!(
            route(&Method::GET, "/v1/jobs/a/inputs"),
            Err(NoRoute::MethodNotAllowed(vec!["POST"]))
        );
    }
}
