//! End to end against the real Docker engine: `ensure` builds (or finds) the base image, is a
//! no-op the second time, imports under another tag from the cached root filesystem, and a
//! container made from the image runs Python with cloudpickle. The work directory is cached
//! under target/, so only the first run pays for debootstrap.
//!
//! Skips loudly when the engine, root or debootstrap is missing; with FLEETMAP_REQUIRE_DOCKER=1
//! it fails instead. A CA bundle for pip comes from FLEETMAP_BASE_CA_BUNDLE (empty: none), else
//! the host's own bundle when there is one.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, ensure as check, Context, Result};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder,
};
use bollard::Docker;
use fleetmap_base_image::recipe::{
    LABEL_CLOUDPICKLE_VERSION, LABEL_PYTHON_VERSION, LABEL_RECIPE_HASH,
};
use fleetmap_base_image::{ensure, Engine, EnsureOptions, Error};
use futures_util::StreamExt;

const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn required() -> bool {
    std::env::var("FLEETMAP_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// Skips the test loudly, or fails it when FLEETMAP_REQUIRE_DOCKER=1.
fn skip(test: &str, reason: &str) -> Result<()> {
    if required() {
        bail!("{test}: FLEETMAP_REQUIRE_DOCKER=1 but {reason}");
    }
    // Straight to stderr: the test harness hides eprintln! output of passing tests.
    let mut stderr = std::io::stderr();
    writeln!(
        stderr,
        "\n=== SKIPPED {test}: {reason} (set FLEETMAP_REQUIRE_DOCKER=1 to make this a failure) ===\n"
    )?;
    Ok(())
}

fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleetmap-base-image")
}

fn ca_bundle() -> Option<PathBuf> {
    match std::env::var_os("FLEETMAP_BASE_CA_BUNDLE") {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(PathBuf::from(HOST_CA_BUNDLE)).filter(|p| p.is_file()),
    }
}

fn options(tag: Option<String>) -> EnsureOptions {
    EnsureOptions {
        ca_bundle: ca_bundle(),
        tag,
        ..EnsureOptions::new(work_dir())
    }
}

/// Whether a failed `ensure` means "this host cannot build", which is a skip, not a failure.
fn host_lacks(err: &Error) -> bool {
    matches!(err, Error::NotRoot | Error::ToolMissing { .. })
}

#[tokio::test]
async fn ensure_is_idempotent_and_the_image_runs_python_with_cloudpickle() -> Result<()> {
    const TEST: &str = "ensure_is_idempotent_and_the_image_runs_python_with_cloudpickle";
    let engine = match Engine::connect().await {
        Ok(engine) => engine,
        Err(err) => return skip(TEST, &err.to_string()),
    };

    let first = match ensure(&engine, &options(None)).await {
        Ok(report) => report,
        Err(err) if host_lacks(&err) => return skip(TEST, &err.to_string()),
        Err(err) => return Err(err).context("first ensure"),
    };
    eprintln!(
        "first ensure: {} {} imported={} built_rootfs={} in {:?}",
        first.image, first.state.id, first.imported, first.built_rootfs, first.elapsed
    );
    let labels = &first.state.labels;
    check!(
        labels.get(LABEL_RECIPE_HASH) == Some(&first.recipe_hash),
        "hash label: {labels:?}"
    );
    check!(
        labels
            .get(LABEL_PYTHON_VERSION)
            .is_some_and(|v| v.starts_with("3.11.")),
        "python label: {labels:?}"
    );
    check!(
        labels.contains_key(LABEL_CLOUDPICKLE_VERSION),
        "cloudpickle label: {labels:?}"
    );

    let second = ensure(&engine, &options(None))
        .await
        .context("second ensure")?;
    check!(!second.imported, "the second ensure imported again");
    check!(
        second.state.id == first.state.id,
        "the image changed: {} vs {}",
        second.state.id,
        first.state.id
    );

    // Another tag: a real import every run, from the root filesystem cached in target/.
    let test_tag = format!("fleetmap/base-test:{}", std::process::id());
    let other = ensure(&engine, &options(Some(test_tag.clone())))
        .await
        .context("ensure under a test tag")?;
    let removed = engine
        .docker()
        .remove_image(
            &test_tag,
            Some(RemoveImageOptionsBuilder::default().force(true).build()),
            None,
        )
        .await;
    check!(other.imported, "a fresh tag must be imported");
    check!(other.state.labels.get(LABEL_RECIPE_HASH) == Some(&first.recipe_hash));
    removed.context("removing the test tag")?;
    if other.built_rootfs {
        // The image was already in the engine but this checkout's target/ had no root
        // filesystem yet (a clean CI checkout): the import above built it, so another import
        // must now reuse it.
        let again_tag = format!("fleetmap/base-test:{}-again", std::process::id());
        let again = ensure(&engine, &options(Some(again_tag.clone())))
            .await
            .context("ensure under a second test tag")?;
        engine
            .docker()
            .remove_image(
                &again_tag,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await
            .context("removing the second test tag")?;
        check!(
            again.imported && !again.built_rootfs,
            "the cached root filesystem must be reused"
        );
    }

    let output = run_in_container(
        engine.docker(),
        &first.image.to_string(),
        &[
            "python3",
            "-c",
            "import cloudpickle, sys; print(sys.version)",
        ],
    )
    .await?;
    check!(output.starts_with("3.11."), "unexpected output: {output:?}");
    Ok(())
}

/// Creates, starts and waits for a container running `cmd`; returns its output and removes it
/// whatever happened.
async fn run_in_container(docker: &Docker, image: &str, cmd: &[&str]) -> Result<String> {
    let name = format!("fleetmap-base-image-test-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .context("create container")?;
    let result = start_wait_and_read(docker, &name).await;
    let removed = docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await;
    let output = result?;
    removed.context("remove container")?;
    Ok(output)
}

async fn start_wait_and_read(docker: &Docker, name: &str) -> Result<String> {
    docker
        .start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .context("start container")?;
    let mut wait = docker.wait_container(name, None);
    let mut exit = None;
    while let Some(item) = wait.next().await {
        match item {
            Ok(response) => exit = Some(response.status_code),
            Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => exit = Some(code),
            Err(err) => return Err(err).context("wait for container"),
        }
    }
    let mut logs = docker.logs(
        name,
        Some(
            LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let mut output = String::new();
    while let Some(chunk) = logs.next().await {
        output.push_str(&chunk.context("read logs")?.to_string());
    }
    check!(exit == Some(0), "container exited with {exit:?}: {output}");
    Ok(output)
}

/// The CLI names the socket it could not reach and exits 4; no engine needed.
#[test]
fn cli_reports_an_unreachable_engine() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("no-docker.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmap-base-image"))
        .arg("status")
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check!(
        out.status.code() == Some(4),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    check!(
        stderr.contains(&socket.display().to_string()),
        "socket not named: {stderr}"
    );
    check!(
        stderr.lines().filter(|l| l.starts_with("error:")).count() == 1,
        "{stderr}"
    );
    Ok(())
}

/// `status` on a tag nobody built says so and exits 5.
#[tokio::test]
async fn cli_status_of_a_missing_tag_exits_5() -> Result<()> {
    if let Err(err) = Engine::connect().await {
        return skip("cli_status_of_a_missing_tag_exits_5", &err.to_string());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_fleetmap-base-image"))
        .args(["status", "--tag", "fleetmap/base-test:never-built"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check!(
        out.status.code() == Some(5),
        "exit {:?}: {stdout}",
        out.status.code()
    );
    check!(stdout.contains("present: no"), "{stdout}");
    Ok(())
}
