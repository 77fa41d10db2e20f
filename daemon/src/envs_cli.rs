//! `fleetmapd envs`: asks a running daemon which runtime, base and built environments it has
//! (`GET /v1/environments`) and prints them; an `https://` daemon is verified against the CA
//! file given, or the system's roots.

use std::path::PathBuf;
use std::time::Duration;

use agent_proto::EnvironmentsInfo;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest the daemon may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches and prints the daemon's environments.
pub async fn show(
    url: Option<String>,
    addr_file: Option<PathBuf>,
    json: bool,
    ca_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let base = match (url, addr_file) {
        (Some(url), _) => url,
        (None, Some(file)) => std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read the daemon's address from {}", file.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("pass --url or --addr-file"),
    };
    let uri = format!("{}/v1/environments", base.trim_end_matches('/'));
    let tls = fleetmap_service_tls::client_config(ca_file.as_deref())?;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(
        fleetmap_service_tls::https_connector(HttpConnector::new(), &tls),
    );
    let response = tokio::time::timeout(TIMEOUT, client.get(uri.parse().context("bad --url")?))
        .await
        .with_context(|| format!("{uri} did not answer within {} s", TIMEOUT.as_secs()))?
        .map_err(|err| anyhow::Error::new(err).context(format!("cannot reach {uri}")))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{uri} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let info: EnvironmentsInfo = serde_json::from_slice(&body)
        .with_context(|| format!("{uri} sent an unreadable answer"))?;
    print!("{}", render(&info));
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The human-readable report.
fn render(info: &EnvironmentsInfo) -> String {
    let c = &info.counters;
    let mut out = format!(
        "runtime {}  base {}  python {}\nbuilds {}  hits {}  shared {}  failures {}  evictions {}  node_default {}\nused {} of {}\n",
        info.runtime,
        info.base,
        info.python_version,
        c.builds,
        c.hits,
        c.shared,
        c.failures,
        c.evictions,
        c.node_default,
        megabytes(info.used_bytes),
        megabytes(info.budget_bytes),
    );
    for key in &info.building {
        out.push_str(&format!("building {}\n", &key[..key.len().min(12)]));
    }
    if info.entries.is_empty() {
        out.push_str("no built environments\n");
        return out;
    }
    out.push_str(&format!(
        "{:<12}  {:<10}  {:>10}  {:>6}  {:<8}  {}\n",
        "KEY", "KIND", "SIZE", "IN USE", "PYTHON", "LOCATION"
    ));
    for e in &info.entries {
        out.push_str(&format!(
            "{:<12}  {:<10}  {:>10}  {:>6}  {:<8}  {}\n",
            &e.key[..e.key.len().min(12)],
            e.kind,
            megabytes(e.size_bytes),
            e.in_use,
            e.python,
            e.location
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use agent_proto::{EnvCounters, EnvEntryInfo};

    use super::*;

    #[test]
    fn the_report_lists_counters_and_entries() {
        let info = EnvironmentsInfo {
            runtime: "docker".into(),
            base: "fleetmap/base:1".into(),
            python_version: "3.11.2".into(),
            budget_bytes: 2_000_000,
            used_bytes: 1_000_000,
            building: vec![],
            counters: EnvCounters {
                builds: 2,
                hits: 5,
                ..Default::default()
            },
            entries: vec![EnvEntryInfo {
                key: "abcdef0123456789".into(),
                kind: "dockerfile".into(),
                location: "fleetmap-env:abcdef".into(),
                python: "3.11.2".into(),
                size_bytes: 1_000_000,
                last_used_unix: 0,
                in_use: 1,
                notes: vec![],
            }],
        };
        let text = render(&info);
        assert!(text.contains("builds 2  hits 5"), "{text}");
        assert!(text.contains("abcdef012345  dockerfile"), "{text}");
    }
}
