//! The checked-in OpenAPI document (`agent-proto/openapi/daemon.json`) against the real
//! router, in both directions: every route the router knows is documented, and every
//! documented route answers a live daemon with a documented status other than 404/405.

mod support;

use std::collections::BTreeSet;

use agent_proto::{Frame, FrameKind};
use bytes::Bytes;
use fleetmap_sandbox::CgroupMode;
use fleetmapd::api::route::ROUTES;
use http::{Method, StatusCode};
use serde_json::Value;
use support::{frames, function, int_inputs, request, spec, TestDaemon};

fn document() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent-proto/openapi/daemon.json"
    );
    let text = std::fs::read_to_string(path).expect("daemon.json");
    serde_json::from_str(&text).expect("daemon.json is JSON")
}

/// `(METHOD, template)` of every documented operation.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "post", "put", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "$ref" {
                    refs.push(v.as_str().expect("string $ref").to_string());
                }
                collect_refs(v, refs);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

#[test]
fn the_document_and_the_router_list_the_same_routes() {
    let doc = document();
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.0"));
    let documented = documented(&doc);
    let routed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from daemon.json: {undocumented:?}"
    );
    assert!(
        unrouted.is_empty(),
        "documented routes the router lacks: {unrouted:?}"
    );
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .expect("local schema ref");
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling {reference}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_route_answers_a_live_daemon() {
    require!(python);
    let doc = document();
    let daemon = TestDaemon::start("openapi", CgroupMode::Auto).await;
    let double = function("double", None);
    // A job left open (no INPUTS_END) for the `{id}` routes, on one instance so that the
    // job submitted by the probe of `POST /v1/jobs` finds a free slot.
    let mut probe = spec("probe");
    probe.parallelism = 1;
    let mut open = vec![
        Frame::json(FrameKind::Spec, &probe),
        Frame::new(FrameKind::Function, double.clone()),
    ];
    open.extend(int_inputs(0..2, 2));
    let stream = request(daemon.addr, Method::POST, "/v1/jobs", frames(&open))
        .await
        .expect("submit");
    assert_eq!(stream.status(), StatusCode::OK);

    let mut ops: Vec<(String, String)> = documented(&doc).into_iter().collect();
    // DELETE last: it ends the probe job the other `{id}` routes use.
    ops.sort_by_key(|(method, _)| method == "DELETE");
    for (method, template) in ops {
        let path = template.replace("{id}", "probe");
        let body = match (method.as_str(), template.as_str()) {
            ("POST", "/v1/jobs") => support::submission(&spec("probe-2"), &double, 0..1),
            ("POST", _) => frames(&int_inputs(2..3, 1)),
            _ => Bytes::new(),
        };
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let response = request(daemon.addr, m, &path, body).await.expect("request");
        let status = response.status();
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} answered {status}"
        );
        let documented_statuses = doc["paths"][&template][method.to_lowercase()]["responses"]
            .as_object()
            .expect("responses");
        assert!(
            documented_statuses.contains_key(status.as_str()),
            "{method} {template} answered undocumented {status}"
        );
        if status == StatusCode::OK && template == "/v1/jobs" && method == "POST" {
            let out = support::collect(response).await;
            assert_eq!(out.end().state, agent_proto::JobState::Completed);
        }
    }
    let out = support::collect(stream).await;
    assert_eq!(out.end().state, agent_proto::JobState::Cancelled);
    daemon.stop().await;
}
