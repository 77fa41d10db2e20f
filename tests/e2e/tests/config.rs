//! Settings of the real binaries: a TOML file starts both services, the environment and flags
//! override it in that order, and each kind of bad setting stops the service at once with its
//! one sentence and exit code 2.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use fleetmap_e2e::procs::{binary, unique, wait_addr, Proc};
use fleetmap_e2e::Http;

/// Runs `binary` with `args` and `env`, expecting a refusal: exit code 2 and `expected` in stderr.
fn refused(name: &str, args: &[&str], env: &[(&str, &str)], expected: &str) -> Result<()> {
    let output = Command::new(binary(name)?)
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2),
        "{name} {args:?}: exit {:?}, want 2; stderr:\n{stderr}",
        output.status.code()
    );
    ensure!(
        stderr.contains(expected),
        "{name} {args:?}: stderr lacks {expected:?}:\n{stderr}"
    );
    ensure!(
        stderr.trim().lines().count() <= 3,
        "{name} {args:?}: a refusal is one sentence, not a log:\n{stderr}"
    );
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

#[test]
fn each_kind_of_bad_setting_is_refused_with_its_sentence_and_exit_code_2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state").display().to_string();
    let base = format!("node_id = \"n\"\nstate_dir = \"{state}\"\nworker_python = \"python3\"\n");

    let unknown = write(
        dir.path(),
        "unknown.toml",
        &format!("{base}pool_sise = 3\n"),
    )?;
    refused(
        "fleetmapd",
        &["--config", &unknown],
        &[],
        "unknown key `pool_sise` (did you mean `pool_size`?)",
    )?;
    let bad_listen = write(
        dir.path(),
        "listen.toml",
        &format!("{base}listen = \"0.0.0.0\"\n"),
    )?;
    refused(
        "fleetmapd",
        &["--config", &bad_listen],
        &[],
        "`listen` = \"0.0.0.0\"",
    )?;
    let bad_url = write(
        dir.path(),
        "url.toml",
        &format!("{base}coordinator = \"coordinator.internal:8080\"\n"),
    )?;
    refused(
        "fleetmapd",
        &["--config", &bad_url],
        &[],
        "http://host:port",
    )?;
    let wrong_type = write(
        dir.path(),
        "type.toml",
        &format!("{base}pool_size = \"many\"\n"),
    )?;
    refused(
        "fleetmapd",
        &["--config", &wrong_type],
        &[],
        "`pool_size` = \"many\"",
    )?;
    let syntax = write(dir.path(), "syntax.toml", "node_id = \n")?;
    refused(
        "fleetmapd",
        &["--config", &syntax],
        &[],
        "is not valid TOML",
    )?;
    refused(
        "fleetmapd",
        &["--config", "/nonexistent/fleetmapd.toml"],
        &[],
        "cannot read the settings file /nonexistent/fleetmapd.toml",
    )?;
    refused(
        "fleetmapd",
        &["--config", &write(dir.path(), "ok.toml", &base)?],
        &[("FLEETMAPD_RUNTIME", "kubernetes")],
        "FLEETMAPD_RUNTIME",
    )?;

    refused(
        "fleetmap-coordinator",
        &["--db", "x.db"],
        &[("FLEETMAP_COORDINATOR_NODE_TIMEOUT_MS", "5s")],
        "FLEETMAP_COORDINATOR_NODE_TIMEOUT_MS",
    )?;
    let coordinator_unknown = write(dir.path(), "coordinator.toml", "db = \"x.db\"\nport = 80\n")?;
    refused(
        "fleetmap-coordinator",
        &["--config", &coordinator_unknown],
        &[],
        "unknown key `port`",
    )?;

    // TLS: one file without the other, a file that is not PEM, one that cannot be read.
    let garbage = write(dir.path(), "garbage.pem", "not a certificate\n")?;
    let lone_cert = write(
        dir.path(),
        "lone-cert.toml",
        &format!("{base}tls_cert_file = \"{garbage}\"\n"),
    )?;
    refused(
        "fleetmapd",
        &["--config", &lone_cert],
        &[],
        "tls_key_file is not: set both to serve HTTPS, or neither",
    )?;
    refused(
        "fleetmap-coordinator",
        &["--db", "x.db"],
        &[("FLEETMAP_COORDINATOR_TLS_KEY_FILE", &garbage)],
        "tls_cert_file is not",
    )?;
    refused(
        "fleetmap-coordinator",
        &[
            "--db",
            "x.db",
            "--tls-cert-file",
            &garbage,
            "--tls-key-file",
            &garbage,
        ],
        &[],
        &format!("tls_cert_file {garbage} holds no PEM certificate: point it at the server's certificate chain"),
    )?;
    refused(
        "fleetmapd",
        &["--config", &write(dir.path(), "ok-tls.toml", &base)?],
        &[("FLEETMAPD_TLS_CA_FILE", "/nonexistent/ca.pem")],
        "cannot read tls_ca_file /nonexistent/ca.pem",
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_files_start_both_services_and_environment_and_flags_override_them() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let coordinator_addr = dir.path().join("coordinator.addr");
    let coordinator_config = write(
        dir.path(),
        "coordinator.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\naddr_file = \"{}\"\ndb = \"{}\"\nheartbeat_interval_ms = 200\n",
            coordinator_addr.display(),
            dir.path().join("coordinator.db").display()
        ),
    )?;
    let mut command = Command::new(binary("fleetmap-coordinator")?);
    command.args(["--config", &coordinator_config]);
    let mut coordinator = Proc::spawn(
        "fleetmap-coordinator",
        command,
        dir.path().join("coordinator.log"),
    )?;
    let coordinator_url = wait_addr(&mut coordinator, &coordinator_addr, Duration::from_secs(10))?;

    let from_file = unique("cfg-file");
    let from_env = unique("cfg-env");
    let daemon_addr = dir.path().join("daemon.addr");
    let daemon_config = write(
        dir.path(),
        "fleetmapd.toml",
        &format!(
            "node_id = \"{from_file}\"\nstate_dir = \"{}\"\nworker_python = \"python3\"\n\
             coordinator = \"{coordinator_url}\"\naddr_file = \"{}\"\npool_size = 1\n\
             listen = \"127.0.0.1:1\"\n",
            dir.path().join("state").display(),
            daemon_addr.display()
        ),
    )?;
    let mut command = Command::new(binary("fleetmapd")?);
    command
        .env("FLEETMAPD_CONFIG", &daemon_config)
        .env("FLEETMAPD_NODE_ID", &from_env)
        .env("FLEETMAPD_LISTEN", "127.0.0.1:2")
        .args(["--listen", "127.0.0.1:0"]);
    let mut daemon = Proc::spawn("fleetmapd", command, dir.path().join("daemon.log"))?;
    let daemon_url = wait_addr(&mut daemon, &daemon_addr, Duration::from_secs(20))?;
    ensure!(
        !daemon_url.ends_with(":1") && !daemon_url.ends_with(":2"),
        "the --listen flag must win over the environment and the file: {daemon_url}"
    );

    let http = Http::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, nodes) = http
            .get_json(&format!("{coordinator_url}/v1/nodes"))
            .await?;
        ensure!(status.is_success(), "GET /v1/nodes: {status}");
        let text = nodes.to_string();
        ensure!(
            !text.contains(&from_file),
            "the environment must win over the file: {text}"
        );
        if text.contains(&from_env) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "node {from_env} never registered: {text}\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
