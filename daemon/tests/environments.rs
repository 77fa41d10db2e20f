//! The environment cache against real builds: Dockerfiles and package lists become images on
//! the real Docker engine (bollard's build API), venvs on the process runtime; keys are reused
//! with no build (asserted through `GET /v1/environments`), one changed byte builds again,
//! concurrent jobs share one build, a failed build fails its job before any input with the
//! log's tail while the daemon keeps serving, clones resolve or warn, the index survives a
//! restart and the disk budget evicts the least recently used.
//!
//! Docker tests skip loudly when the engine or the base image is missing, unless
//! `FLEETMAP_REQUIRE_DOCKER=1`. Builds that install packages reach PyPI; where TLS is
//! intercepted, `/etc/ssl/certs/ca-certificates.crt` is configured as the build CA bundle.

mod support;

use std::path::{Path, PathBuf};

use agent_proto::{
    ContextFile, EnvSpec, EnvironmentsInfo, JobSpec, JobState, OutputStream, NO_INDEX,
};
use base64::Engine as _;
use fleetmap_sandbox::CgroupMode;
use fleetmapd::env::docker_build::LABEL_ENV_NODE;
use fleetmapd::{Config, RuntimeKind};
use support::{function, run_job, spec, TestDaemon};

const IMAGE: &str = "fleetmap/base:1";
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

async fn docker_available() -> Result<(), String> {
    support::python_available()?;
    let engine = fleetmap_base_image::Engine::connect()
        .await
        .map_err(|e| format!("no Docker engine: {e}"))?;
    match engine.inspect(IMAGE).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!(
            "the engine has no {IMAGE}; run `fleetmap-base-image ensure`"
        )),
        Err(e) => Err(format!("cannot inspect {IMAGE}: {e}")),
    }
}

macro_rules! require_docker {
    () => {
        if let Err(why) = docker_available().await {
            if std::env::var("FLEETMAP_REQUIRE_DOCKER").as_deref() == Ok("1") {
                panic!("FLEETMAP_REQUIRE_DOCKER=1 but {why}");
            }
            eprintln!("SKIPPED {}: needs Docker: {why}", module_path!());
            return;
        }
    };
}

macro_rules! require_python {
    () => {
        if let Err(why) = support::python_available() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

fn with_ca(config: &mut Config) {
    if Path::new(SYSTEM_CA).exists() {
        config.build_ca_bundle = Some(PathBuf::from(SYSTEM_CA));
    }
}

async fn start_docker(name: &str) -> TestDaemon {
    TestDaemon::start_with(name, CgroupMode::Auto, |config| {
        config.runtime = RuntimeKind::Docker;
        config.docker_image = IMAGE.to_string();
        config.container_network = "none".to_string();
        config.env_pool_size = Some(1);
        with_ca(config);
    })
    .await
}

async fn envs(daemon: &TestDaemon) -> EnvironmentsInfo {
    let value = support::get_json(daemon.addr, "/v1/environments").await;
    serde_json::from_value(value).expect("EnvironmentsInfo")
}

fn job(id: &str, environment: EnvSpec) -> JobSpec {
    let mut job = spec(id);
    job.environment = environment;
    job
}

fn dockerfile(content: &str, files: &[(&str, &[u8])]) -> EnvSpec {
    EnvSpec::Dockerfile {
        content: content.to_string(),
        context: files
            .iter()
            .map(|(path, data)| ContextFile {
                path: path.to_string(),
                data_b64: base64::engine::general_purpose::STANDARD.encode(data),
                mode: None,
            })
            .collect(),
    }
}

/// Stops the daemon and removes the images it built (they outlive it by design).
async fn stop_docker(daemon: TestDaemon) {
    let node = daemon.node_id.clone();
    daemon.stop().await;
    let engine = fleetmap_base_image::Engine::connect()
        .await
        .expect("engine");
    let docker = engine.docker();
    let options = bollard::query_parameters::ListImagesOptions {
        filters: Some(std::collections::HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_ENV_NODE}={node}")],
        )])),
        ..Default::default()
    };
    for image in docker
        .list_images(Some(options))
        .await
        .expect("list images")
    {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        let _ = docker.remove_image(&image.id, Some(options), None).await;
    }
}

/// A fresh tag so that no earlier test run's image is reused.
fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn build_lines(out: &support::Collected) -> Vec<String> {
    out.outputs
        .iter()
        .filter(|o| o.stream == OutputStream::Build)
        .map(|o| {
            assert_eq!(o.index, NO_INDEX);
            String::from_utf8_lossy(&o.text).into_owned()
        })
        .collect()
}

fn results_str(out: &support::Collected, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| support::unpickle_str(&out.results[&i]).expect("a str"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dockerfile_is_built_once_per_content_hash() {
    require_docker!();
    let daemon = start_docker("env-df").await;
    let tag = unique();
    let text = format!("FROM {IMAGE}\nLABEL test={tag}\nCOPY marker.txt /opt/marker.txt\n");
    let env = dockerfile(&text, &[("marker.txt", b"one")]);
    let read = function("read_file", Some("/opt/marker.txt"));

    let first = run_job(daemon.addr, &job("df-1", env.clone()), &read, 0..3).await;
    assert_eq!(first.end().state, JobState::Completed, "{:?}", first.end());
    assert_eq!(results_str(&first, 3), vec!["one"; 3]);
    let log = build_lines(&first).join("");
    assert!(
        log.contains("COPY marker.txt"),
        "the build log streams: {log}"
    );
    let after_first = envs(&daemon).await;
    assert_eq!(after_first.counters.builds, 1, "{after_first:?}");
    assert_eq!(after_first.entries.len(), 1);
    assert_eq!(after_first.entries[0].kind, "dockerfile");
    assert!(
        after_first.entries[0].python.starts_with("3."),
        "{after_first:?}"
    );

    let second = run_job(daemon.addr, &job("df-2", env), &read, 0..3).await;
    assert_eq!(
        second.end().state,
        JobState::Completed,
        "{:?}",
        second.end()
    );
    assert!(build_lines(&second).is_empty(), "no build, no build log");
    let after_second = envs(&daemon).await;
    assert_eq!(
        after_second.counters.builds, 1,
        "the second job did no build"
    );
    assert_eq!(after_second.counters.hits, 1);

    // One byte more in the Dockerfile, then one byte changed in a context file: new keys.
    let changed = dockerfile(&format!("{text}\n"), &[("marker.txt", b"one")]);
    let third = run_job(daemon.addr, &job("df-3", changed), &read, 0..1).await;
    assert_eq!(third.end().state, JobState::Completed, "{:?}", third.end());
    let context = dockerfile(&text, &[("marker.txt", b"onf")]);
    let fourth = run_job(daemon.addr, &job("df-4", context), &read, 0..1).await;
    assert_eq!(results_str(&fourth, 1), vec!["onf"]);
    let after = envs(&daemon).await;
    assert_eq!(after.counters.builds, 3, "{after:?}");
    assert_eq!(after.entries.len(), 3);
    stop_docker(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_jobs_with_the_same_new_dockerfile_share_one_build() {
    require_docker!();
    let daemon = start_docker("env-share").await;
    let text = format!(
        "FROM {IMAGE}\nLABEL test={}\nRUN sleep 2 && echo built > /opt/built\n",
        unique()
    );
    let read = function("read_file", Some("/opt/built"));
    let (job_a, job_b) = (
        job("share-a", dockerfile(&text, &[])),
        job("share-b", dockerfile(&text, &[])),
    );
    let (a, b) = tokio::join!(
        run_job(daemon.addr, &job_a, &read, 0..2),
        run_job(daemon.addr, &job_b, &read, 0..2),
    );
    for out in [&a, &b] {
        assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
        assert_eq!(results_str(out, 2), vec!["built\n"; 2]);
    }
    let info = envs(&daemon).await;
    assert_eq!(info.counters.builds, 1, "one build for both: {info:?}");
    assert_eq!(info.counters.shared, 1, "{info:?}");
    stop_docker(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_dockerfile_fails_its_job_before_any_input_and_the_daemon_keeps_serving() {
    require_docker!();
    let daemon = start_docker("env-fail").await;
    let text = format!(
        "FROM {IMAGE}\nLABEL test={}\nRUN echo about-to-fail && exit 3\n",
        unique()
    );
    let out = run_job(
        daemon.addr,
        &job("fail-1", dockerfile(&text, &[])),
        &function("double", None),
        0..5,
    )
    .await;
    let end = out.end();
    assert_eq!(end.state, JobState::Failed);
    let message = end.message.clone().unwrap_or_default();
    assert!(
        message.starts_with("the environment image failed to build:"),
        "{message}"
    );
    assert!(
        message.contains("about-to-fail"),
        "the log's tail: {message}"
    );
    assert!(
        out.results.is_empty() && out.failures.is_empty(),
        "no input ran"
    );
    assert_eq!(envs(&daemon).await.counters.failures, 1);

    // The same daemon runs the next job.
    let ok = run_job(
        daemon.addr,
        &spec("fail-2"),
        &function("double", None),
        0..5,
    )
    .await;
    assert_eq!(ok.end().state, JobState::Completed, "{:?}", ok.end());

    // An image without cloudpickle is refused by the probe with a sentence saying so.
    let no_worker = "FROM fleetmap/base:1\nRUN python3 -m pip uninstall -y cloudpickle\n";
    let out = run_job(
        daemon.addr,
        &job("fail-3", dockerfile(no_worker, &[])),
        &function("double", None),
        0..1,
    )
    .await;
    let message = out.end().message.clone().unwrap_or_default();
    assert!(
        message.contains("cannot import cloudpickle")
            || message.contains("no python3 that can import cloudpickle"),
        "{message}"
    );
    stop_docker(daemon).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packages_install_exactly_the_list_in_an_image() {
    require_docker!();
    let daemon = start_docker("env-pkg").await;
    let version = function("module_version", Some("six"));
    let six = EnvSpec::Packages {
        packages: vec!["six==1.16.0".into()],
    };
    let out = run_job(daemon.addr, &job("pkg-six", six), &version, 0..2).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(results_str(&out, 2), vec!["1.16.0"; 2]);
    let bare = EnvSpec::Packages { packages: vec![] };
    let out = run_job(daemon.addr, &job("pkg-bare", bare), &version, 0..1).await;
    assert_eq!(
        results_str(&out, 1),
        vec!["missing"],
        "packages=[] is the bare base"
    );
    let info = envs(&daemon).await;
    assert_eq!(info.counters.builds, 1, "{info:?}");
    assert_eq!(info.entries[0].kind, "packages");
    stop_docker(daemon).await;
}

async fn start_process(name: &str, tweak: impl FnOnce(&mut Config)) -> TestDaemon {
    TestDaemon::start_with(name, CgroupMode::Auto, |config| {
        config.env_pool_size = Some(1);
        with_ca(config);
        tweak(config);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn venvs_on_the_process_runtime_and_the_clone_rule() {
    require_python!();
    let daemon = start_process("env-venv", |_| {}).await;
    let version = function("module_version", Some("six"));
    let host_six = std::process::Command::new("python3")
        .args(["-c", "import six; print(six.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());

    let bare = EnvSpec::Packages { packages: vec![] };
    let bare_digest = bare.recipe_digest().expect("a digest");
    let out = run_job(daemon.addr, &job("venv-bare", bare), &version, 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(
        results_str(&out, 1),
        vec!["missing"],
        "a venv holds nothing else"
    );

    let pinned = EnvSpec::Packages {
        packages: vec!["six==1.15.0".into()],
    };
    let out = run_job(
        daemon.addr,
        &job("venv-six", pinned.clone()),
        &version,
        0..3,
    )
    .await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(results_str(&out, 3), vec!["1.15.0"; 3]);
    assert!(build_lines(&out).iter().any(|l| l.contains("pip install")));
    let out = run_job(daemon.addr, &job("venv-six-2", pinned), &version, 0..1).await;
    assert_eq!(results_str(&out, 1), vec!["1.15.0"]);
    let info = envs(&daemon).await;
    assert_eq!(
        (info.counters.builds, info.counters.hits),
        (2, 1),
        "{info:?}"
    );
    // The node reports what it holds (registration and heartbeats carry the same info).
    let node: agent_proto::NodeInfo =
        serde_json::from_value(support::get_json(daemon.addr, "/v1/node").await).expect("node");
    let mut want = vec![
        bare_digest.clone(),
        EnvSpec::Packages {
            packages: vec!["six==1.15.0".into()],
        }
        .recipe_digest()
        .expect("a digest"),
    ];
    want.sort();
    assert_eq!(node.environments, want, "{node:?}");

    // A clone the worker interpreter satisfies runs there with no build.
    if let Some(host) = &host_six {
        let clone = EnvSpec::Clone {
            distributions: vec![format!("six=={host}")],
        };
        let before = envs(&daemon).await.counters;
        let out = run_job(daemon.addr, &job("clone-same", clone), &version, 0..1).await;
        assert_eq!(results_str(&out, 1), vec![host.clone()]);
        let after = envs(&daemon).await.counters;
        assert_eq!(after.builds, before.builds, "satisfied: no build");
        assert_eq!(after.node_default, before.node_default + 1);
    }

    // A clone it does not satisfy is built; what the index lacks is dropped with a warning.
    let clone = EnvSpec::Clone {
        distributions: vec![
            "six==1.14.0".into(),
            "fleetmap-no-such-distribution==0.0.1".into(),
        ],
    };
    let out = run_job(daemon.addr, &job("clone-other", clone), &version, 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(results_str(&out, 1), vec!["1.14.0"]);
    let warning: String = out
        .outputs
        .iter()
        .filter(|o| o.stream == OutputStream::Stderr && o.index == NO_INDEX)
        .map(|o| String::from_utf8_lossy(&o.text).into_owned())
        .collect();
    assert!(
        warning.contains("fleetmap-no-such-distribution==0.0.1"),
        "a warning names what could not be installed: {warning}"
    );

    // A package list that cannot be installed fails the job with the log's tail.
    let broken = EnvSpec::Packages {
        packages: vec!["fleetmap-no-such-distribution==0.0.1".into()],
    };
    let out = run_job(daemon.addr, &job("venv-broken", broken), &version, 0..1).await;
    let message = out.end().message.clone().unwrap_or_default();
    assert!(
        message.starts_with("the environment venv failed to build:")
            && message.contains("fleetmap-no-such-distribution"),
        "{message}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_survives_a_restart_and_the_budget_evicts_the_least_recently_used() {
    require_python!();
    let state = tempfile::tempdir().expect("state");
    let path = state.path().to_path_buf();
    let version = function("module_version", Some("six"));
    let first_env = EnvSpec::Packages { packages: vec![] };
    let daemon = start_process("env-restart", |c| c.state_dir = path.clone()).await;
    let out = run_job(daemon.addr, &job("r-1", first_env.clone()), &version, 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    let built = envs(&daemon).await;
    assert_eq!(built.entries.len(), 1);
    let venv = PathBuf::from(&built.entries[0].location);
    daemon.stop().await;

    // Restarted with a budget that fits one venv of this size only.
    let budget = built.entries[0].size_bytes + 1;
    let daemon = start_process("env-restart", |c| {
        c.state_dir = path.clone();
        c.env_disk_budget_bytes = budget;
    })
    .await;
    let known = envs(&daemon).await;
    assert_eq!(
        known.entries.len(),
        1,
        "the restarted daemon knows its venv"
    );
    let out = run_job(daemon.addr, &job("r-2", first_env), &version, 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(
        envs(&daemon).await.counters.builds,
        0,
        "reused after restart"
    );

    let second_env = EnvSpec::Packages {
        packages: vec!["six==1.16.0".into()],
    };
    let out = run_job(daemon.addr, &job("r-3", second_env), &version, 0..1).await;
    assert_eq!(results_str(&out, 1), vec!["1.16.0"]);
    let after = envs(&daemon).await;
    assert_eq!(after.counters.evictions, 1, "{after:?}");
    assert_eq!(after.entries.len(), 1);
    assert_ne!(PathBuf::from(&after.entries[0].location), venv);
    assert!(!venv.exists(), "the evicted venv is removed from disk");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleetmapd_envs_prints_the_cache() {
    require_python!();
    let daemon = start_process("env-cli", |_| {}).await;
    let url = format!("http://{}", daemon.addr);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetmapd"))
        .args(["envs", "--url", &url])
        .output()
        .await
        .expect("fleetmapd envs runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("runtime process  base python3"), "{text}");
    assert!(text.contains("builds 0  hits 0"), "{text}");
    assert!(text.contains("no built environments"), "{text}");
    let json = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetmapd"))
        .args(["envs", "--json", "--url", &url])
        .output()
        .await
        .expect("fleetmapd envs --json runs");
    let info: EnvironmentsInfo = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(info.runtime, "process");
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetmapd"))
        .args(["envs", "--url", "http://127.0.0.1:1"])
        .output()
        .await
        .expect("runs");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("cannot reach http://127.0.0.1:1/v1/environments"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    daemon.stop().await;
}

/// Writes a wheel of distribution `name` holding `mib` MiB of incompressible data into `dir`;
/// its path.
fn big_wheel(dir: &Path, name: &str, mib: u32) -> PathBuf {
    let script = r#"
import base64, hashlib, os, sys, zipfile
out, name, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
wheel = os.path.join(out, f"{name}-1.0-py3-none-any.whl")
files = {
    f"{name}/__init__.py": b"",
    f"{name}/blob.bin": os.urandom(mib << 20),
    f"{name}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
    f"{name}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: fleetmap-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
    for path, data in files.items():
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-1.0.dist-info/RECORD,,")
    z.writestr(f"{name}-1.0.dist-info/RECORD", "\n".join(record) + "\n")
print(wheel)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(name)
        .arg(mib.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}); it needs root"));
        }
        Ok(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_that_fills_the_disk_fails_with_what_to_do_and_leaves_nothing() {
    require_python!();
    let disk = match SmallDisk::mount(48) {
        Ok(disk) => disk,
        Err(why) => {
            if std::env::var("FLEETMAP_REQUIRE_CGROUPS").as_deref() == Ok("1") {
                panic!("FLEETMAP_REQUIRE_CGROUPS=1 (root) but {why}");
            }
            eprintln!("SKIPPED {}: needs a small tmpfs: {why}", module_path!());
            return;
        }
    };
    let wheels = tempfile::tempdir().expect("wheels");
    let wheel = big_wheel(wheels.path(), "fleetmap_test_big", 64);
    let state = disk.dir.path().join("state");
    let daemon = start_process("env-full", |config| {
        config.state_dir = state.clone();
    })
    .await;
    let version = function("module_version", Some("six"));
    let big = EnvSpec::Packages {
        packages: vec![format!("fleetmap_test_big @ file://{}", wheel.display())],
    };
    let out = run_job(daemon.addr, &job("env-full", big), &version, 0..2).await;
    assert_eq!(out.end().state, JobState::Failed, "{:?}", out.end());
    let message = out.end().message.clone().unwrap_or_default();
    assert!(
        message.starts_with("the node's disk is full")
            && message.contains(&state.join("envs").display().to_string())
            && message.contains("--env-disk-budget-gb"),
        "{message}"
    );
    assert!(out.results.is_empty(), "no input ran");
    let leftovers: Vec<String> = std::fs::read_dir(state.join("envs"))
        .expect("envs dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".building-") || name.starts_with("venv-"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "half-built environments left: {leftovers:?}"
    );
    let info = envs(&daemon).await;
    assert_eq!(info.counters.failures, 1, "{info:?}");

    // The daemon goes on serving, and a build that fits succeeds on the same disk.
    let bare = EnvSpec::Packages { packages: vec![] };
    let out = run_job(daemon.addr, &job("env-after-full", bare), &version, 0..1).await;
    assert_eq!(out.end().state, JobState::Completed, "{:?}", out.end());
    assert_eq!(results_str(&out, 1), vec!["missing"]);
    daemon.stop().await;
    drop(disk);
}
