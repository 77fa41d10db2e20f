//! The real binaries as child processes: a coordinator and node daemons, each in a temporary
//! directory, stopped with SIGTERM (then SIGKILL) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the binaries are: `FLEETMAP_BIN_DIR`, else the `target/debug` this test was built in.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETMAP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // target/debug/deps/<test binary> -> target/debug
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

/// Path of binary `name`, or an error saying how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} is missing; build the binaries first: cargo build -p fleetmapd -p fleetmap-coordinator",
            path.display()
        );
    }
    Ok(path)
}

/// A unique name for a node in this test process (cgroup parents must not collide between
/// tests running at once).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A child process stopped on drop.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` as `name`, its stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
            log,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Fails if it exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
        }
        Ok(())
    }

    /// Waits for it to exit on its own, up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let Some(child) = &mut self.child else {
            bail!("{} was already stopped", self.name);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still runs after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self
            .pid()
            .and_then(|pid| i32::try_from(pid).ok())
            .context("the process was already stopped")?;
        kill(Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// Whether it is still running (false once it exited or was stopped).
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Waits for `path` to hold a URL written by a starting process.
pub fn wait_addr(proc: &mut Proc, path: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(url) = std::fs::read_to_string(path) {
            if url.starts_with("http://") || url.starts_with("https://") {
                return Ok(url.trim().to_owned());
            }
        }
        proc.check_running()?;
        if Instant::now() > deadline {
            bail!(
                "{} wrote no address to {} within {timeout:?}:\n{}",
                proc.name,
                path.display(),
                proc.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `fleetmap-coordinator`.
#[derive(Debug)]
pub struct Coordinator {
    /// Its process.
    pub proc: Proc,
    /// Its base URL.
    pub url: String,
}

impl Coordinator {
    /// Starts one with its database and log in `dir`, plus `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_on(dir, "127.0.0.1:0", extra)
    }

    /// Like [`Coordinator::start`], listening on `listen`. An address file an earlier
    /// coordinator of `dir` left (killed) is removed first.
    pub fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> Result<Self> {
        Self::start_env(dir, listen, extra, &[])
    }

    /// Like [`Coordinator::start_on`], with extra environment variables.
    pub fn start_env(
        dir: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let addr = dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&addr);
        let mut command = Command::new(binary("fleetmap-coordinator")?);
        command
            .args(["--listen", listen, "--addr-file"])
            .arg(&addr)
            .arg("--db")
            .arg(dir.join("coordinator.db"))
            .args(extra)
            .envs(env.iter().copied());
        let mut proc = Proc::spawn("fleetmap-coordinator", command, dir.join("coordinator.log"))?;
        let url = wait_addr(&mut proc, &addr, Duration::from_secs(10))?;
        Ok(Self { proc, url })
    }
}

/// How to start a daemon beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Program and arguments the daemon runs under (they must `exec` it, keeping its pid).
    pub wrapper: Vec<String>,
    /// Listen address (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// Extra flags.
    pub extra: Vec<String>,
}

/// A running `fleetmapd` registered with a coordinator.
#[derive(Debug)]
pub struct Daemon {
    /// Its process.
    pub proc: Proc,
    /// Its base URL.
    pub url: String,
    /// Its node id.
    pub node_id: String,
}

impl Daemon {
    /// Starts one named `node_id`, with its state in `dir/<node_id>`, registering with
    /// `coordinator`.
    pub fn start(dir: &Path, coordinator: &str, node_id: &str) -> Result<Self> {
        Self::start_with(dir, coordinator, node_id, &DaemonOptions::default())
    }

    /// Like [`Daemon::start`], run through `options.wrapper` (e.g. `ip netns exec NS`), listening
    /// on `options.listen`, with `options.extra` flags.
    pub fn start_with(
        dir: &Path,
        coordinator: &str,
        node_id: &str,
        options: &DaemonOptions,
    ) -> Result<Self> {
        let state = dir.join(node_id);
        std::fs::create_dir_all(&state)?;
        let addr = state.join("daemon.addr");
        let fleetmapd = binary("fleetmapd")?;
        let mut command = match options.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&fleetmapd);
                command
            }
            None => Command::new(&fleetmapd),
        };
        let listen = options.listen.as_deref().unwrap_or("127.0.0.1:0");
        command
            .args(["--listen", listen, "--addr-file"])
            .arg(&addr)
            .args(["--coordinator", coordinator, "--node-id", node_id])
            .arg("--state-dir")
            .arg(state.join("state"))
            .args(["--worker-python", "python3"])
            .args(&options.extra);
        let mut proc = Proc::spawn("fleetmapd", command, state.join("daemon.log"))?;
        let url = wait_addr(&mut proc, &addr, Duration::from_secs(20))?;
        Ok(Self {
            proc,
            url,
            node_id: node_id.to_owned(),
        })
    }
}
