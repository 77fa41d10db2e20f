//! `fleetmapd check` on this machine, for real: it reads the same settings as serving (file,
//! environment, flags), probes CPUs/RAM, the state dir, cgroups (creating and removing a slot
//! under a parent of its own), the worker Python, Docker and GPUs, and exits 0 when the
//! configuration can be served here, 1 with a line saying what to change when not.

use std::process::{Command, Output};

use anyhow::{ensure, Result};
use fleetmap_e2e::procs::binary;

fn check(args: &[&str]) -> Result<Output> {
    Ok(Command::new(binary("fleetmapd")?)
        .arg("check")
        .args(args)
        .output()?)
}

fn line<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find(|l| {
        l.split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
            .starts_with(name)
    })
}

#[test]
fn a_servable_configuration_passes_and_each_probe_reports() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state").display().to_string();
    let settings = dir.path().join("fleetmapd.toml");
    std::fs::write(
        &settings,
        format!("node_id = \"check-n\"\nstate_dir = \"{state}\"\nworker_python = \"python3\"\n"),
    )?;
    let required = std::env::var("FLEETMAP_REQUIRE_CGROUPS").as_deref() == Ok("1");
    let mode = if required { "required" } else { "auto" };
    let out = check(&[
        "--config",
        &settings.display().to_string(),
        "--cgroups",
        mode,
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "cpus/ram",
        "state dir",
        "cgroups",
        "worker python",
        "docker",
        "gpus",
    ] {
        ensure!(
            line(&stdout, name).is_some(),
            "no {name} line in:\n{stdout}"
        );
    }
    let python = line(&stdout, "worker python").unwrap_or("");
    ensure!(
        python.trim_start().starts_with("ok") && python.contains("cloudpickle"),
        "{stdout}"
    );
    let cgroups = line(&stdout, "cgroups").unwrap_or("");
    if required {
        ensure!(cgroups.trim_start().starts_with("ok"), "{stdout}");
        ensure!(cgroups.contains("created and removed"), "{stdout}");
    }
    ensure!(
        out.status.code() == Some(0),
        "exit {:?}:\n{stdout}",
        out.status.code()
    );
    ensure!(
        stdout.contains("this machine can serve this configuration"),
        "{stdout}"
    );
    ensure!(
        std::path::Path::new(&state).is_dir(),
        "the state dir was made"
    );
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/memory",
    ] {
        let left = std::path::Path::new(root).join("fleetmap-check");
        ensure!(!left.exists(), "check left {} behind", left.display());
    }
    Ok(())
}

#[test]
fn what_the_machine_lacks_for_the_configuration_fails_with_what_to_change() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state").display().to_string();
    let base = ["--node-id", "check-n", "--state-dir", &state];

    let no_python = check(&[&base[..], &["--worker-python", "/nonexistent/python3"]].concat())?;
    let stdout = String::from_utf8_lossy(&no_python.stdout);
    ensure!(no_python.status.code() == Some(1), "{stdout}");
    let python = line(&stdout, "worker python").unwrap_or("");
    ensure!(
        python.contains("FAIL") && python.contains("--worker-python"),
        "{stdout}"
    );
    ensure!(
        stdout.contains("cannot serve this configuration: 1 problem above"),
        "{stdout}"
    );

    let no_image = check(
        &[
            &base[..],
            &[
                "--worker-python",
                "python3",
                "--runtime",
                "docker",
                "--docker-image",
                "fleetmap/never-built:0",
            ],
        ]
        .concat(),
    )?;
    let stdout = String::from_utf8_lossy(&no_image.stdout);
    ensure!(no_image.status.code() == Some(1), "{stdout}");
    let docker = line(&stdout, "docker").unwrap_or("");
    // With an engine: the image is missing; without one: the engine is.
    ensure!(
        docker.contains("FAIL")
            && (docker.contains("fleetmap-base-image ensure")
                || docker.contains("docker runtime needs it")),
        "{stdout}"
    );

    let file = dir.path().join("a-file");
    std::fs::write(&file, "x")?;
    let below = file.join("state").display().to_string();
    let bad_dir = check(&[
        "--node-id",
        "n",
        "--state-dir",
        &below,
        "--worker-python",
        "python3",
    ])?;
    let stdout = String::from_utf8_lossy(&bad_dir.stdout);
    ensure!(bad_dir.status.code() == Some(1), "{stdout}");
    ensure!(
        line(&stdout, "state dir").unwrap_or("").contains("FAIL"),
        "{stdout}"
    );
    Ok(())
}
