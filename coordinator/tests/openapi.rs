//! The checked-in OpenAPI document against the real router, both ways: every documented
//! operation answers something other than 404/405 on a live coordinator, every route of the
//! router is documented, and undocumented methods on documented paths are 405.

mod support;

use std::collections::BTreeSet;

use agent_proto::JobSpec;
use bytes::Bytes;
use fleetmap_coordinator::api::request::ROUTES;
use http::{Method, StatusCode};
use serde_json::Value;
use support::{node_info, registration, submission, TestCoordinator};

fn document() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agent-proto/openapi/coordinator.json"
    );
    let text = std::fs::read_to_string(path).expect("coordinator.json is checked in");
    serde_json::from_str(&text).expect("coordinator.json is JSON")
}

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

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                if key == "$ref" {
                    out.push(inner.as_str().expect("ref is a string").to_owned());
                } else {
                    refs(inner, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|inner| refs(inner, out)),
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_and_every_ref_resolves() {
    let doc = document();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.0.")));
    assert!(doc["info"]["title"].is_string());
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for reference in all {
        let pointer = reference.strip_prefix('#').expect("local ref");
        assert!(doc.pointer(pointer).is_some(), "{reference} resolves");
    }
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        assert!(op["responses"].is_object(), "{method} {path} has responses");
        assert!(
            op["operationId"].is_string(),
            "{method} {path} has an operationId"
        );
    }
}

#[test]
fn every_router_route_is_documented_and_nothing_else() {
    let router: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented(&document()), router);
}

#[tokio::test]
async fn every_documented_operation_is_served() {
    let doc = document();
    let coordinator = TestCoordinator::start(|_| {}).await;
    // Resources for the path parameters: a node and a (refused, hence recorded) job.
    coordinator.register("n1", "http://127.0.0.1:9", 1, 1).await;
    let mut spec = JobSpec::new("j1");
    spec.func_cpu = 2;
    coordinator
        .send(Method::POST, "/v1/jobs", submission(&spec))
        .await;

    for (method, template) in documented(&doc) {
        let path = template
            .replace("{node_id}", "n1")
            .replace("{job_id}", "j1");
        let body: Bytes = match (method.as_str(), template.as_str()) {
            ("POST", "/v1/nodes") => {
                serde_json::to_vec(&registration("n1", "http://127.0.0.1:9", 1, 1))
                    .expect("json")
                    .into()
            }
            ("POST", "/v1/nodes/{node_id}/heartbeat") => {
                serde_json::to_vec(&node_info("n1", "http://127.0.0.1:9", 1, 1))
                    .expect("json")
                    .into()
            }
            ("POST", "/v1/jobs") => {
                let mut spec = JobSpec::new("j2");
                spec.func_cpu = 2;
                submission(&spec)
            }
            _ => Bytes::new(),
        };
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let answer = coordinator.send(method.clone(), &path, body).await;
        assert_ne!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{method} {path}: {:?}",
            answer.body
        );
        assert_ne!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        let documented_statuses =
            &doc["paths"][&template][method.as_str().to_lowercase()]["responses"];
        assert!(
            documented_statuses[answer.status.as_str()].is_object(),
            "{method} {path} answered {} which is not documented",
            answer.status
        );
    }

    for (_, template) in documented(&doc) {
        let path = template
            .replace("{node_id}", "n1")
            .replace("{job_id}", "j1");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
        ] {
            let op = &doc["paths"][&template][method.as_str().to_lowercase()];
            if op.is_object() {
                continue;
            }
            let answer = coordinator.send(method.clone(), &path, Bytes::new()).await;
            assert_eq!(
                answer.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "undocumented {method} {path} must not be served"
            );
        }
    }
    coordinator.shutdown().await;
}
