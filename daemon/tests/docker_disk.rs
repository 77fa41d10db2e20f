//! The disk fills up during a Docker environment build, against a real engine of the test's
//! own whose data root is a small tmpfs: the job fails before any input runs with one
//! sentence naming the engine's data root, its free space and what to change; the failed
//! build's containers are gone (the space comes back), and the same daemon runs the next job.
//!
//! Skipped loudly without Docker, root or `ip netns`, unless `FLEETMAP_REQUIRE_DOCKER=1`.

mod private_engine;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use agent_proto::EnvSpec;
use fleetmap_sandbox::CgroupMode;
use fleetmapd::env::disk::free_bytes;
use fleetmapd::RuntimeKind;
use private_engine::{PrivateEngine, IMAGE};
use support::{spec, TestDaemon};

const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The engine's disk: the base image (about 145 MiB, copied whole per layer by `vfs`), one
/// warm container, the build's layers, and not much more.
const DISK_MIB: u32 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_docker_build_that_fills_the_disk_fails_with_what_to_do_and_gives_the_space_back() {
    let Some(engine) = PrivateEngine::ready_or_skip(
        "a_docker_build_that_fills_the_disk_fails_with_what_to_do_and_gives_the_space_back",
        Some(DISK_MIB),
    )
    .await
    else {
        return;
    };
    let daemon = TestDaemon::start_with("docker-disk", CgroupMode::Auto, |config| {
        config.runtime = RuntimeKind::Docker;
        config.docker_image = IMAGE.to_string();
        config.container_network = "none".to_string();
        config.pool_size = Some(1);
        config.env_pool_size = Some(1);
        if std::path::Path::new(SYSTEM_CA).exists() {
            config.build_ca_bundle = Some(PathBuf::from(SYSTEM_CA));
        }
    })
    .await;
    let data_root = engine.data_root();
    let free_before = free_bytes(&data_root).expect("statvfs");

    // A step that writes more than the disk holds.
    let fill = format!(
        "FROM {IMAGE}\nRUN dd if=/dev/zero of=/fill bs=1M count={}\n",
        DISK_MIB * 2
    );
    let mut job = spec("disk-full");
    job.environment = EnvSpec::Dockerfile {
        content: fill,
        context: Vec::new(),
    };
    let (out, message) =
        support::failed_job(daemon.addr, &job, 0..5, Duration::from_secs(300)).await;
    assert!(
        message.starts_with("the node's disk is full:"),
        "one sentence first: {message}"
    );
    assert!(
        message.contains(&data_root.display().to_string()),
        "names the data root: {message}"
    );
    assert!(
        message.contains("MiB free now") && message.contains("--env-disk-budget-gb"),
        "says what to change: {message}"
    );
    assert!(
        out.results.is_empty() && out.failures.is_empty(),
        "no input ran"
    );

    // The disk was full when the step failed; its container is gone, so what it wrote is
    // free again (the layers before the step stay, as build cache).
    let free_after = free_bytes(&data_root).expect("statvfs");
    eprintln!(
        "engine disk: {} MiB free before the build, {} MiB after it failed",
        free_before >> 20,
        free_after >> 20
    );
    assert!(
        free_after >= 200 << 20,
        "the failed build's writes were not removed: {} MiB free",
        free_after >> 20
    );

    // The same daemon runs the next job, on the same engine.
    support::run_doubles(daemon.addr, "after-disk-full", 20, Duration::from_secs(120)).await;
    daemon.stop().await;
    drop(engine);
}
