//! TLS through the real binaries: a coordinator and a daemon serving HTTPS with a certificate
//! signed by a test CA; the node registers and heartbeats over HTTPS, a job runs end to end
//! over HTTPS both hops; plain HTTP to a TLS port gets no answer and leaves the service serving;
//! a client that does not trust the CA is refused; the open-connection limit, which TLS
//! handshakes count toward, still answers 503.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleetmap_e2e::{
    job_id, procs, run_whole_python_job, Cluster, Coordinator, Daemon, DaemonOptions, Http,
};

/// A CA, and a certificate for `localhost` and 127.0.0.1 it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Another CA, which signed nothing here.
    stranger: PathBuf,
}

fn ca(name: &str) -> Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok((params.self_signed(&key)?, key))
}

fn pki(dir: &Path) -> Result<Pki> {
    let (ca_cert, ca_key) = ca("fleetmap e2e CA")?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .signed_by(&key, &ca_cert, &ca_key)?;
    let (stranger, _) = ca("some other CA")?;
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    Ok(Pki {
        ca: write("ca.pem", ca_cert.pem())?,
        cert: write("cert.pem", cert.pem())?,
        key: write("key.pem", key.serialize_pem())?,
        stranger: write("stranger.pem", stranger.pem())?,
    })
}

fn tls_flags(pki: &Pki) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--tls-cert-file".into(),
        path(&pki.cert),
        "--tls-key-file".into(),
        path(&pki.key),
        "--tls-ca-file".into(),
        path(&pki.ca),
    ]
}

/// The error and its causes in one line.
fn chain(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_over_tls_registers_and_runs_a_job_and_refuses_plain_http_and_strangers(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let flags = tls_flags(&pki);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let coordinator = Coordinator::start(dir.path(), &flag_refs)?;
    ensure!(
        coordinator.url.starts_with("https://127.0.0.1:"),
        "{}",
        coordinator.url
    );
    let node_id = procs::unique("tls-node");
    let daemon = Daemon::start_with(
        dir.path(),
        &coordinator.url,
        &node_id,
        &DaemonOptions {
            extra: flags.clone(),
            ..DaemonOptions::default()
        },
    )?;
    ensure!(daemon.url.starts_with("https://"), "{}", daemon.url);
    let cluster = Cluster {
        daemons: vec![daemon],
        coordinator,
        http: Http::trusting(&pki.ca)?,
        dir,
    };
    // Registration and heartbeats went over HTTPS, and the coordinator lists the node by the
    // https:// address it will send inputs to.
    if let Err(err) = cluster.wait_alive(&node_id, Duration::from_secs(20)).await {
        anyhow::bail!(
            "{err:#}\ndaemon:\n{}\ncoordinator:\n{}",
            cluster.daemons[0].proc.log_tail(),
            cluster.coordinator.proc.log_tail()
        );
    }
    let nodes = cluster.get("/v1/nodes").await?;
    ensure!(
        nodes.to_string().contains("\"https://127.0.0.1:"),
        "{nodes}"
    );

    // A job, client → coordinator → daemon, each hop HTTPS.
    run_whole_python_job(
        &cluster.http,
        &cluster.coordinator.url,
        &job_id("tls"),
        "def f(x):\n    return x + 1\n",
        40,
        8,
        "i + 1",
    )
    .await?;

    // Plain HTTP to either TLS port gets no HTTP answer.
    for url in [&cluster.coordinator.url, &cluster.daemons[0].url] {
        let plain = url.replacen("https://", "http://", 1);
        let answer = Http::new().get_json(&format!("{plain}/v1/health")).await;
        ensure!(
            answer.is_err(),
            "plain HTTP to {plain} was answered: {answer:?}"
        );
    }

    // A client trusting the system's roots, or another CA, is refused by its own side.
    for (who, client) in [
        ("system roots", Http::new()),
        ("another CA", Http::trusting(&pki.stranger)?),
    ] {
        let err = client
            .get_json(&format!("{}/v1/nodes", cluster.coordinator.url))
            .await
            .expect_err("an untrusted certificate is refused");
        let text = chain(&err);
        ensure!(
            text.contains("certificate") || text.contains("UnknownIssuer"),
            "{who}: {text}"
        );
    }

    // The failed handshakes dropped only their connections.
    let health = cluster.get("/v1/health").await?;
    ensure!(!health.is_null());
    let (status, _) = cluster
        .http
        .get_json(&format!("{}/v1/health", cluster.daemons[0].url))
        .await?;
    ensure!(status.is_success(), "daemon health over https: {status}");
    let log = cluster.coordinator.proc.log_text();
    ensure!(log.contains("tls=true"), "{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_count_toward_the_connection_limit_and_the_503_still_comes_over_tls(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = pki(dir.path())?;
    let mut flags = tls_flags(&pki);
    flags.extend(["--max-connections".to_string(), "2".to_string()]);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let coordinator = Coordinator::start(dir.path(), &flag_refs)?;
    let addr = coordinator.url.trim_start_matches("https://").to_string();
    let http = Http::trusting(&pki.ca)?;

    // Two clients that connect and never say hello hold both places while they handshake.
    let silent = [
        tokio::net::TcpStream::connect(&addr).await?,
        tokio::net::TcpStream::connect(&addr).await?,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = http
        .get_json(&format!("{}/v1/health", coordinator.url))
        .await?;
    ensure!(status.as_u16() == 503, "{status}: {body}");
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("connections")),
        "{body}"
    );

    // Once they leave, there is room again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = Http::trusting(&pki.ca)?
            .get_json(&format!("{}/v1/health", coordinator.url))
            .await?;
        if status.is_success() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no room after the silent clients left: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
