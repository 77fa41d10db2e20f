//! A `dockerd` of a test's own: own data root, exec root, socket and config, `vfs` storage,
//! in a network namespace of its own, so it never touches the host's engine, its containers
//! or its bridge (a second engine in the host's namespace takes `docker0` down). Tests reach
//! it through `DOCKER_HOST`, so each binary that uses it holds one test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The base image every private engine gets from the host's.
pub const IMAGE: &str = "fleetmap/base:1";

/// A `dockerd` of this test's own, in its own network namespace.
pub struct PrivateEngine {
    dir: tempfile::TempDir,
    netns: String,
    child: Option<Child>,
}

impl PrivateEngine {
    /// Creates the namespace and the engine's files; does not start it.
    pub fn create() -> Result<Self, String> {
        Self::create_with_disk(None)
    }

    /// Like [`PrivateEngine::create`], with the engine's data root on a tmpfs of `disk_mib`
    /// MiB when given (a disk that fills up).
    pub fn create_with_disk(disk_mib: Option<u32>) -> Result<Self, String> {
        let netns = format!("fm-engine-{}", std::process::id());
        if Path::new("/var/run/netns").join(&netns).exists() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &netns])
                .status();
        }
        let made = Command::new("ip")
            .args(["netns", "add", &netns])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "ip netns add failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        // Short paths: containerd's sockets live under the exec root (108-byte limit).
        let dir = tempfile::Builder::new()
            .prefix("fme")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let config = serde_json::json!({
            "data-root": dir.path().join("data"),
            "exec-root": dir.path().join("x"),
            "pidfile": dir.path().join("dockerd.pid"),
            "hosts": [format!("unix://{}", dir.path().join("docker.sock").display())],
            "storage-driver": "vfs",
            "bridge": "none",
            "iptables": false,
            "ip-forward": false,
            "ip-masq": false,
            "live-restore": false,
            "shutdown-timeout": 3,
        });
        if let Some(mib) = disk_mib {
            let data = dir.path().join("data");
            std::fs::create_dir_all(&data).map_err(|e| format!("mkdir: {e}"))?;
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&data)
                .output()
                .map_err(|e| format!("cannot run mount: {e}"))?;
            if !mounted.status.success() {
                return Err(format!(
                    "cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&mounted.stderr).trim()
                ));
            }
        }
        std::fs::write(dir.path().join("daemon.json"), config.to_string())
            .map_err(|e| format!("write daemon.json: {e}"))?;
        Ok(Self {
            dir,
            netns,
            child: None,
        })
    }

    /// The engine's data root (images, layers, containers).
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `DOCKER_HOST` for this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Starts the engine and waits until it answers.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .expect("engine log");
        // `ip netns exec` would remount /sys and hide the cgroup mounts: enter the network
        // namespace only.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("dockerd")
            .arg("--config-file")
            .arg(self.dir.path().join("daemon.json"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.docker(&["version"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the private engine did not answer: {}", self.log_tail());
    }

    /// Stops the engine as its service manager would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if child.try_wait().expect("wait").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the private engine did not stop on SIGTERM");
    }

    /// Runs the docker CLI against this engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .expect("docker CLI")
    }

    /// Copies `image` from the host's engine into this one.
    pub fn load_from_host(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let stdout = save.stdout.take().expect("save's stdout");
        let load = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .arg("load")
            .stdin(stdout)
            .output()
            .expect("docker load");
        assert!(save.wait().expect("save").success(), "docker save {image}");
        assert!(
            load.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// Containers (running or not) whose node label is `node`.
    pub fn containers_of(&self, node: &str) -> Vec<String> {
        let out = self.docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={}={node}", fleetmapd::runtime::docker::LABEL_NODE),
        ]);
        assert!(out.status.success(), "docker ps");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl PrivateEngine {
    /// A started engine holding the base image, which this process's `DOCKER_HOST` now names;
    /// `None` after saying why when the host cannot run one (a failure instead under
    /// `FLEETMAP_REQUIRE_DOCKER=1`).
    pub async fn ready_or_skip(test: &str, disk_mib: Option<u32>) -> Option<Self> {
        let made = match available().await {
            Ok(()) => Self::create_with_disk(disk_mib),
            Err(why) => Err(why),
        };
        let mut engine = match made {
            Ok(engine) => engine,
            Err(why) => {
                if std::env::var("FLEETMAP_REQUIRE_DOCKER").as_deref() == Ok("1") {
                    panic!("FLEETMAP_REQUIRE_DOCKER=1 but {why}");
                }
                eprintln!("SKIPPED {test}: {why}");
                return None;
            }
        };
        engine.start();
        engine.load_from_host(IMAGE);
        // The only test of its binary: the daemon it starts connects through this.
        std::env::set_var("DOCKER_HOST", engine.host());
        Some(engine)
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(
                Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        // vfs layers and container state: leave nothing mounted under the temp dir.
        for dir in ["x", "data"] {
            let _ = Command::new("umount")
                .arg("-R")
                .arg(self.dir.path().join(dir))
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}

/// Whether the host has what the test needs; `Err` says why not.
pub async fn available() -> Result<(), String> {
    crate::support::python_available()?;
    if !Path::new("/usr/sbin/dockerd").exists() && which("dockerd").is_none() {
        return Err("no dockerd binary".into());
    }
    let engine = fleetmap_base_image::Engine::connect()
        .await
        .map_err(|e| format!("no Docker engine: {e}"))?;
    match engine.inspect(IMAGE).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(format!(
                "the engine has no {IMAGE}; run `fleetmap-base-image ensure`"
            ))
        }
        Err(e) => return Err(format!("cannot inspect {IMAGE}: {e}")),
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (a private dockerd and a network namespace)".into());
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.exists())
    })
}
