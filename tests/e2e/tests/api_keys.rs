//! Client API keys through the real binaries: keys made, listed and revoked with
//! `fleetmap-coordinator keys`, every route of both OpenAPI documents walked without, with a
//! wrong and with the right credential (the credential each operation's `security` names),
//! a job run with a key, a revoked key refused within a second while others keep working, and
//! no key or token ever written to a log (debug level).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_proto::ErrorBody;
use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use fleetmap_e2e::procs::binary;
use fleetmap_e2e::{job_id, run_whole_python_job, Coordinator, Daemon, Http};
use http::{Method, StatusCode};
use serde_json::Value;

const TOKEN: &str = "fleet-secret-0123456789abcdef";
/// Well-formed but never made.
const UNKNOWN_KEY: &str =
    "fmk_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000";

/// Runs `fleetmap-coordinator keys ARGS --db DB`; answers stdout.
fn keys(db: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(binary("fleetmap-coordinator")?)
        .arg("keys")
        .args(args)
        .arg("--db")
        .arg(db)
        .output()?;
    ensure!(
        output.status.success(),
        "keys {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The credential an operation needs, from its `security` (or the document's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    ApiKey,
    ClusterToken,
}

/// Every (method, path, credential) of an OpenAPI document.
fn operations(name: &str) -> Result<Vec<(Method, String, Needs)>> {
    let path = format!(
        "{}/../../agent-proto/openapi/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let default = doc.get("security").cloned().unwrap_or(Value::Array(vec![]));
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            if method == "parameters" {
                continue;
            }
            let method: Method = method.to_uppercase().parse()?;
            let security = op.get("security").unwrap_or(&default);
            let schemes: Vec<&str> = security
                .as_array()
                .context("security is a list")?
                .iter()
                .filter_map(|req| req.as_object())
                .flat_map(|req| req.keys().map(String::as_str))
                .collect();
            let needs = match schemes.as_slice() {
                [] => Needs::Nothing,
                ["apiKey"] => Needs::ApiKey,
                ["clusterToken"] => Needs::ClusterToken,
                other => bail!("{method} {path}: unexpected security {other:?}"),
            };
            out.push((method, path.clone(), needs));
        }
    }
    // Draining stops a daemon that runs nothing: walk it last.
    out.sort_by_key(|(_, path, _)| path.ends_with("/drain"));
    Ok(out)
}

fn concrete(template: &str) -> String {
    template
        .replace("{node_id}", "walk-node")
        .replace("{job_id}", "walk-job")
        .replace("{id}", "walk-job")
}

/// Asserts a 401 with the `unauthorized` code, `WWW-Authenticate` and a sentence naming `hint`.
async fn refused(http: &Http, method: &Method, url: &str, hint: &str) -> Result<()> {
    let response = http
        .request(method.clone(), url, {
            let (tx, rx) = fleetmap_e2e::http::body_channel();
            drop(tx);
            rx
        })
        .await?;
    let status = response.status();
    let challenge = response
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .cloned();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await?
        .to_bytes();
    ensure!(
        status == StatusCode::UNAUTHORIZED,
        "{method} {url}: {status}, want 401: {body:?}"
    );
    ensure!(challenge.is_some(), "{method} {url}: no WWW-Authenticate");
    let refusal: ErrorBody = serde_json::from_slice(&body)?;
    ensure!(
        refusal.error.message.contains(hint),
        "{method} {url}: {:?} lacks {hint:?}",
        refusal.error.message
    );
    Ok(())
}

/// Walks every operation of `doc` on `base`: open ones answer without a credential, the others
/// refuse a missing, a malformed, a wrong and the other kind of credential, and take the right one.
async fn walk(
    doc: &str,
    base: &str,
    api_key: Option<&str>,
    walked: &mut BTreeMap<String, usize>,
) -> Result<()> {
    let none = Http::new();
    let garbage = Http::with_token("not-a-credential");
    let unknown = Http::with_token(UNKNOWN_KEY);
    let wrong_token = Http::with_token("wrong-fleet-secret-0123456789");
    let token = Http::with_token(TOKEN);
    let key = api_key.map(Http::with_token);
    for (method, template, needs) in operations(doc)? {
        let url = format!("{base}{}", concrete(&template));
        let (right, others): (&Http, Vec<&Http>) = match needs {
            Needs::Nothing => {
                let (status, _) = none.call(method.clone(), &url, Bytes::new()).await?;
                ensure!(status.is_success(), "{method} {url} is open: {status}");
                *walked.entry(doc.to_owned()).or_default() += 1;
                continue;
            }
            Needs::ApiKey => (
                key.as_ref().context("an API key route on a keyless walk")?,
                vec![&garbage, &unknown, &token],
            ),
            Needs::ClusterToken => {
                let mut others = vec![&garbage, &wrong_token];
                others.extend(key.as_ref());
                (&token, others)
            }
        };
        let hint = match needs {
            Needs::ApiKey => "API key",
            _ => "cluster token",
        };
        refused(&none, &method, &url, hint).await?;
        for other in others {
            refused(other, &method, &url, hint).await?;
        }
        let (status, body) = right.call(method.clone(), &url, Bytes::new()).await?;
        ensure!(
            status != StatusCode::UNAUTHORIZED,
            "{method} {url} refused the right credential: {body:?}"
        );
        *walked.entry(doc.to_owned()).or_default() += 1;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_its_credential_and_keys_are_revocable_and_never_logged() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("coordinator.db");
    let token_file = dir.path().join("cluster.token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let token_path = token_file.to_string_lossy().into_owned();

    // Keys made before the coordinator first starts, and one made while it runs.
    let alice = keys(&db, &["create", "--name", "alice"])?.trim().to_owned();
    ensure!(alice.starts_with("fmk_"), "{alice}");
    let coordinator = Coordinator::start_env(
        dir.path(),
        "127.0.0.1:0",
        &["--cluster-token-file", &token_path, "--require-api-keys"],
        &[("FLEETMAP_LOG", "debug")],
    )?;
    let bob = keys(&db, &["create", "--name", "bob"])?.trim().to_owned();
    let listed = keys(&db, &["list"])?;
    ensure!(
        listed.contains("alice") && listed.contains("bob") && !listed.contains(&alice[17..]),
        "{listed}"
    );
    let alice_http = Http::with_token(&alice);
    let bob_http = Http::with_token(&bob);
    // A key made after the start is accepted at once.
    let (status, _) = bob_http
        .get_json(&format!("{}/v1/jobs", coordinator.url))
        .await?;
    ensure!(status.is_success(), "bob's fresh key: {status}");

    let member = Daemon::start_with(
        dir.path(),
        &coordinator.url,
        "member",
        &fleetmap_e2e::DaemonOptions {
            extra: vec!["--cluster-token-file".into(), token_path.clone()],
            ..Default::default()
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, nodes) = alice_http
            .get_json(&format!("{}/v1/nodes", coordinator.url))
            .await?;
        if nodes.as_array().is_some_and(|n| {
            n.iter()
                .any(|n| n["node_id"] == "member" && n["alive"] == true)
        }) {
            break;
        }
        ensure!(Instant::now() < deadline, "member never joined: {nodes}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut walked = BTreeMap::new();
    walk("coordinator", &coordinator.url, Some(&alice), &mut walked).await?;

    // A job runs with a key (and its results are those of the function).
    let id = job_id("keyed");
    run_whole_python_job(
        &alice_http,
        &coordinator.url,
        &id,
        "def f(x):\n    return x * 2\n",
        40,
        10,
        "i * 2",
    )
    .await?;

    // Revoked while the coordinator runs: refused within a second or so; bob is unaffected.
    let revoked = keys(&db, &["revoke", "alice"])?;
    ensure!(revoked.contains("alice"), "{revoked}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, body) = alice_http
            .get_json(&format!("{}/v1/jobs", coordinator.url))
            .await?;
        if status == StatusCode::UNAUTHORIZED {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            ensure!(message.contains("revoked"), "{message}");
            break;
        }
        ensure!(Instant::now() < deadline, "alice's revoked key still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, jobs) = bob_http
        .get_json(&format!("{}/v1/jobs", coordinator.url))
        .await?;
    ensure!(status.is_success(), "{jobs}");
    ensure!(
        jobs.as_array()
            .is_some_and(|j| j.iter().any(|j| j["job_id"] == id.as_str())),
        "{jobs}"
    );
    let listed = keys(&db, &["list"])?;
    ensure!(listed.contains("revoked"), "{listed}");

    // The daemon's routes need the cluster token (walked last: it includes POST /v1/drain).
    walk("daemon", &member.url, None, &mut walked).await?;
    ensure!(
        walked.get("coordinator").copied().unwrap_or(0) >= 12
            && walked.get("daemon").copied().unwrap_or(0) >= 8,
        "walked {walked:?}"
    );

    // Nothing secret reached a log, at debug level, where the refusals above were logged.
    let logs = [
        std::fs::read_to_string(dir.path().join("coordinator.log"))?,
        std::fs::read_to_string(dir.path().join("member/daemon.log"))?,
    ];
    ensure!(
        logs[0].contains("request refused"),
        "the log is at debug level"
    );
    for log in &logs {
        for secret in [&alice[17..], &bob[17..], TOKEN, &UNKNOWN_KEY[17..]] {
            ensure!(!log.contains(secret), "a secret reached a log:\n{log}");
        }
    }
    Ok(())
}

#[test]
fn keyed_mode_needs_a_cluster_token_and_keys_commands_explain_mistakes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("c.db");
    let output = Command::new(binary("fleetmap-coordinator")?)
        .args(["--require-api-keys", "--db"])
        .arg(&db)
        .env_remove("FLEETMAP_CLUSTER_TOKEN")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "{stderr}");
    ensure!(stderr.contains("needs a cluster token"), "{stderr}");

    let output = Command::new(binary("fleetmap-coordinator")?)
        .args(["keys", "list", "--db"])
        .arg(&db)
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "{stderr}");
    ensure!(stderr.contains("no coordinator database"), "{stderr}");

    keys(&db, &["create", "--name", "ci"])?;
    for (args, expected) in [
        (&["create", "--name", "ci"][..], "already named ci"),
        (&["create", "--name", "two words"][..], "must be 1 to 64"),
        (&["revoke", "nobody"][..], "no active key"),
    ] {
        let output = Command::new(binary("fleetmap-coordinator")?)
            .arg("keys")
            .args(args)
            .arg("--db")
            .arg(&db)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(output.status.code() == Some(1), "{args:?}: {stderr}");
        ensure!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // The database comes from the coordinator's own settings when --db is not given.
    let output = Command::new(binary("fleetmap-coordinator")?)
        .args(["keys", "list"])
        .env("FLEETMAP_COORDINATOR_DB", &db)
        .output()?;
    ensure!(
        String::from_utf8_lossy(&output.stdout).contains("ci"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
