//! Turns an HTTP request into a typed [`Command`]: the route, its parameters and its parsed body.
//! Nothing here acts on the coordinator's state (firecracker's `parsed_request.rs`).

use agent_proto::{ClusterToken, Frame, FrameKind, JobSpec, NodeInfo, NodeRegistration};
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::api::frames_in::{FrameReader, ReadError};
use crate::error::Error;
use crate::jobs::ClientInput;
use crate::keys::ApiKeys;

/// Default and largest `limit` of `GET /v1/jobs`.
const DEFAULT_LIST_LIMIT: usize = 100;
const MAX_LIST_LIMIT: usize = 10_000;

/// A frame stream read from a client's request body.
pub type ClientFrames = FrameReader<Incoming>;

/// A job submission: the first frames of `POST /v1/jobs`, and the rest of its body.
#[derive(Debug)]
pub struct Submission {
    /// The validated job specification.
    pub spec: JobSpec,
    /// The opaque pickled function.
    pub function: Bytes,
    /// Input frames that arrived with SPEC and FUNCTION (sent to nodes with the job).
    pub initial: Vec<ClientInput>,
    /// The rest of the body, read while the job runs.
    pub rest: ClientFrames,
}

/// What a request asks the coordinator to do.
#[derive(Debug)]
pub enum Command {
    /// `GET /v1/health`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `POST /v1/nodes`.
    RegisterNode(NodeRegistration),
    /// `POST /v1/nodes/{id}/heartbeat`.
    Heartbeat {
        /// The node.
        node_id: String,
        /// What it offers now.
        info: NodeInfo,
    },
    /// `GET /v1/nodes`.
    ListNodes,
    /// `DELETE /v1/nodes/{id}`: a drained node leaves the fleet.
    LeaveNode {
        /// The node.
        node_id: String,
    },
    /// `POST /v1/jobs`.
    SubmitJob(Box<Submission>),
    /// `POST /v1/jobs/{id}/inputs`.
    AddInputs {
        /// The job.
        job_id: String,
        /// The frames to queue.
        frames: ClientFrames,
    },
    /// `GET /v1/jobs`.
    ListJobs {
        /// Most records returned, newest first.
        limit: usize,
    },
    /// `GET /v1/jobs/{id}`.
    GetJob {
        /// The job.
        job_id: String,
    },
    /// `DELETE /v1/jobs/{id}`.
    CancelJob {
        /// The job.
        job_id: String,
    },
    /// `GET /v1/jobs/{id}/results`: a detached job's stored results.
    JobResults {
        /// The job.
        job_id: String,
    },
    /// `GET /v1/jobs/{id}/logs`: a page of a job's output log.
    JobLogs {
        /// The job.
        job_id: String,
        /// First sequence number wanted.
        from_seq: u64,
        /// Only this input's entries, when given.
        input: Option<u64>,
    },
    /// `DELETE /v1/jobs/{id}/results`: forget a detached job's stored results.
    DeleteResults {
        /// The job.
        job_id: String,
    },
}

/// Every (method, path template) the router serves; `tests/openapi.rs` checks it against
/// `agent-proto/openapi/coordinator.json` both ways, and the unit test below against [`Route`].
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/nodes"),
    ("POST", "/v1/nodes"),
    ("DELETE", "/v1/nodes/{node_id}"),
    ("POST", "/v1/nodes/{node_id}/heartbeat"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/inputs"),
    ("GET", "/v1/jobs/{job_id}/results"),
    ("DELETE", "/v1/jobs/{job_id}/results"),
    ("GET", "/v1/jobs/{job_id}/logs"),
];

/// The coordinator's routes, as documented in `coordinator.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v1/health`
    Health,
    /// `/metrics` (Prometheus)
    Metrics,
    /// `/v1/nodes`
    Nodes,
    /// `/v1/nodes/{id}`
    Node(String),
    /// `/v1/nodes/{id}/heartbeat`
    Heartbeat(String),
    /// `/v1/jobs`
    Jobs,
    /// `/v1/jobs/{id}`
    Job(String),
    /// `/v1/jobs/{id}/inputs`
    JobInputs(String),
    /// `/v1/jobs/{id}/results`
    JobResults(String),
    /// `/v1/jobs/{id}/logs`
    JobLogs(String),
}

impl Route {
    /// The route a path names, if any.
    pub fn parse(path: &str) -> Option<Self> {
        if path == "/metrics" {
            return Some(Self::Metrics);
        }
        let rest = path.strip_prefix("/v1/")?;
        let segments: Vec<&str> = rest.split('/').collect();
        Some(match segments.as_slice() {
            ["health"] => Self::Health,
            ["nodes"] => Self::Nodes,
            ["nodes", id] if !id.is_empty() => Self::Node((*id).to_owned()),
            ["nodes", id, "heartbeat"] if !id.is_empty() => Self::Heartbeat((*id).to_owned()),
            ["jobs"] => Self::Jobs,
            ["jobs", id] if !id.is_empty() => Self::Job((*id).to_owned()),
            ["jobs", id, "inputs"] if !id.is_empty() => Self::JobInputs((*id).to_owned()),
            ["jobs", id, "results"] if !id.is_empty() => Self::JobResults((*id).to_owned()),
            ["jobs", id, "logs"] if !id.is_empty() => Self::JobLogs((*id).to_owned()),
            _ => return None,
        })
    }

    /// The route's path template, as in [`ROUTES`] (a metrics label: ids never become labels).
    pub fn template(&self) -> &'static str {
        match self {
            Self::Health => "/v1/health",
            Self::Metrics => "/metrics",
            Self::Nodes => "/v1/nodes",
            Self::Node(_) => "/v1/nodes/{node_id}",
            Self::Heartbeat(_) => "/v1/nodes/{node_id}/heartbeat",
            Self::Jobs => "/v1/jobs",
            Self::Job(_) => "/v1/jobs/{job_id}",
            Self::JobInputs(_) => "/v1/jobs/{job_id}/inputs",
            Self::JobResults(_) => "/v1/jobs/{job_id}/results",
            Self::JobLogs(_) => "/v1/jobs/{job_id}/logs",
        }
    }

    /// Methods the route takes, for 405 answers.
    pub fn allow(&self) -> &'static str {
        match self {
            Self::Health | Self::Metrics | Self::JobLogs(_) => "GET",
            Self::Nodes | Self::Jobs => "GET, POST",
            Self::Heartbeat(_) | Self::JobInputs(_) => "POST",
            Self::Job(_) | Self::JobResults(_) => "GET, DELETE",
            Self::Node(_) => "DELETE",
        }
    }

    /// Whether only holders of the cluster token may call it (the routes nodes call).
    pub fn for_nodes(&self, method: &Method) -> bool {
        match self {
            Self::Nodes => method == Method::POST,
            Self::Node(_) | Self::Heartbeat(_) => true,
            _ => false,
        }
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest JSON body.
    pub max_json_bytes: usize,
    /// Largest frame.
    pub max_frame_bytes: usize,
    /// How long a JSON body, or SPEC and FUNCTION, may take to arrive.
    pub head_timeout: std::time::Duration,
}

/// `future`, or 408 naming `what` when it takes longer than `limit`.
async fn within<T>(
    limit: std::time::Duration,
    what: &'static str,
    future: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or(Err(Error::RequestTimeout {
            what,
            secs: limit.as_secs(),
        }))
}

/// Parses a request into a command; the error says what is wrong with it. Before any body is
/// read, node routes need `token` (when the coordinator has one) and every other route but
/// health needs a key `keys` accepts (when the coordinator is keyed).
pub async fn parse(
    req: Request<Incoming>,
    limits: Limits,
    token: Option<&ClusterToken>,
    keys: Option<&ApiKeys>,
) -> Result<Command, Error> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let route = Route::parse(path).ok_or_else(|| Error::RouteNotFound {
        path: path.to_owned(),
    })?;
    let sent = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if route.for_nodes(&parts.method) {
        if let Some(token) = token {
            token.verify(sent)?;
        }
    } else if route != Route::Health {
        if let Some(keys) = keys {
            keys.verify(sent)?;
        }
    }
    match (route, &parts.method) {
        (Route::Health, &Method::GET) => Ok(Command::Health),
        (Route::Metrics, &Method::GET) => Ok(Command::Metrics),
        (Route::Nodes, &Method::GET) => Ok(Command::ListNodes),
        (Route::Nodes, &Method::POST) => Ok(Command::RegisterNode(
            within(
                limits.head_timeout,
                "NodeRegistration body",
                read_json(body, limits.max_json_bytes, "NodeRegistration"),
            )
            .await?,
        )),
        (Route::Node(node_id), &Method::DELETE) => Ok(Command::LeaveNode { node_id }),
        (Route::Heartbeat(node_id), &Method::POST) => Ok(Command::Heartbeat {
            node_id,
            info: within(
                limits.head_timeout,
                "NodeInfo body",
                read_json(body, limits.max_json_bytes, "NodeInfo"),
            )
            .await?,
        }),
        (Route::Jobs, &Method::GET) => Ok(Command::ListJobs {
            limit: list_limit(parts.uri.query())?,
        }),
        (Route::Jobs, &Method::POST) => Ok(Command::SubmitJob(Box::new(
            within(
                limits.head_timeout,
                "SPEC and FUNCTION frames",
                read_submission(FrameReader::new(body, limits.max_frame_bytes)),
            )
            .await?,
        ))),
        (Route::Job(job_id), &Method::GET) => Ok(Command::GetJob { job_id }),
        (Route::Job(job_id), &Method::DELETE) => Ok(Command::CancelJob { job_id }),
        (Route::JobResults(job_id), &Method::GET) => Ok(Command::JobResults { job_id }),
        (Route::JobResults(job_id), &Method::DELETE) => Ok(Command::DeleteResults { job_id }),
        (Route::JobLogs(job_id), &Method::GET) => {
            let (from_seq, input) = log_query(parts.uri.query())?;
            Ok(Command::JobLogs {
                job_id,
                from_seq,
                input,
            })
        }
        (Route::JobInputs(job_id), &Method::POST) => Ok(Command::AddInputs {
            job_id,
            frames: FrameReader::new(body, limits.max_frame_bytes),
        }),
        (route, method) => Err(Error::MethodNotAllowed {
            method: method.clone(),
            path: path.to_owned(),
            allow: route.allow(),
        }),
    }
}

/// Reads SPEC and FUNCTION, and whatever input frames arrived with them.
async fn read_submission(mut frames: ClientFrames) -> Result<Submission, Error> {
    let spec_frame = next_required(&mut frames, "SPEC").await?;
    spec_frame.expect_kind(FrameKind::Spec)?;
    let spec: JobSpec = spec_frame.parse_json()?;
    spec.validate()?;
    let function = next_required(&mut frames, "FUNCTION").await?;
    function.expect_kind(FrameKind::Function)?;
    let mut initial = Vec::new();
    while let Some(frame) = frames.next_buffered()? {
        let input = ClientInput::from_frame(frame)?;
        let end = matches!(input, ClientInput::End);
        initial.push(input);
        if end {
            break;
        }
    }
    Ok(Submission {
        spec,
        function: function.body,
        initial,
        rest: frames,
    })
}

async fn next_required(frames: &mut ClientFrames, expected: &'static str) -> Result<Frame, Error> {
    match frames.next().await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(Error::MissingFrame { expected }),
        Err(ReadError::Frame(err)) => Err(Error::Frames(err)),
        Err(ReadError::Body(err)) => Err(Error::BodyRead(err)),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    body: Incoming,
    limit: usize,
    what: &'static str,
) -> Result<T, Error> {
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return Err(Error::BodyTooLarge { limit })
        }
        Err(err) => return Err(Error::BodyRead(err.to_string())),
    };
    serde_json::from_slice(&bytes).map_err(|err| Error::BadJson {
        what,
        reason: err.to_string(),
    })
}

fn list_limit(query: Option<&str>) -> Result<usize, Error> {
    let Some(query) = query else {
        return Ok(DEFAULT_LIST_LIMIT);
    };
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("limit=") {
            return match value.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => Ok(n),
                _ => Err(Error::BadJson {
                    what: "limit",
                    reason: format!(
                        "limit={value} must be a whole number from 1 to {MAX_LIST_LIMIT}"
                    ),
                }),
            };
        }
    }
    Ok(DEFAULT_LIST_LIMIT)
}

/// `from_seq` (default 0) and `input` (default all) of `GET /v1/jobs/{id}/logs`.
fn log_query(query: Option<&str>) -> Result<(u64, Option<u64>), Error> {
    let mut from_seq = 0;
    let mut input = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                Error::BadQuery(format!("{name}={value} must be a whole number from 0"))
            })
        };
        match name {
            "from_seq" => from_seq = number()?,
            "input" => input = Some(number()?),
            _ => {
                return Err(Error::BadQuery(format!(
                    "{name} is not one of from_seq and input"
                )))
            }
        }
    }
    Ok((from_seq, input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_query_is_checked() {
        assert_eq!(log_query(None).expect("default"), (0, None));
        assert_eq!(
            log_query(Some("from_seq=5&input=3")).expect("valid"),
            (5, Some(3))
        );
        assert!(log_query(Some("from_seq=-1")).is_err());
        assert!(log_query(Some("tail=3")).is_err());
    }

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse("/v1/health"), Some(Route::Health));
        assert_eq!(
            Route::parse("/v1/nodes/a/heartbeat"),
            Some(Route::Heartbeat("a".into()))
        );
        assert_eq!(Route::parse("/v1/jobs/j1"), Some(Route::Job("j1".into())));
        assert_eq!(
            Route::parse("/v1/jobs/j1/inputs"),
            Some(Route::JobInputs("j1".into()))
        );
        assert_eq!(Route::parse("/v1/jobs/"), None);
        assert_eq!(Route::parse("/v2/jobs"), None);
        assert_eq!(Route::parse("/v1/nodes//heartbeat"), None);
    }

    #[test]
    fn route_table_matches_the_router() {
        let mut by_template: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (method, template) in ROUTES {
            by_template.entry(template).or_default().push(method);
        }
        for (template, mut methods) in by_template {
            let path = template
                .replace("{node_id}", "n1")
                .replace("{job_id}", "j1");
            let route = Route::parse(&path).unwrap_or_else(|| panic!("{template} is routed"));
            assert_eq!(route.template(), template);
            let mut allowed: Vec<&str> = route.allow().split(", ").collect();
            allowed.sort_unstable();
            methods.sort_unstable();
            assert_eq!(allowed, methods, "{template}");
        }
    }

    #[test]
    fn list_limit_is_checked() {
        assert_eq!(list_limit(None).expect("default"), DEFAULT_LIST_LIMIT);
        assert_eq!(list_limit(Some("limit=5")).expect("valid"), 5);
        assert!(list_limit(Some("limit=0")).is_err());
        assert!(list_limit(Some("limit=x")).is_err());
    }
}
