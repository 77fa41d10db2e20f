//! `fleetmapd check`: what this machine offers the daemon's configuration (CPUs and RAM, the
//! state directory, cgroups, the worker Python, Docker, GPUs, the build CA bundle, the TLS
//! files), each
//! probed for real the way serving would use it, without touching a running daemon's cgroups.
//! A finding that makes the configuration unservable here is a failure; the report says what
//! to change.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use fleetmap_sandbox::{detect, CgroupConfig, CgroupMode, Inventory, SlotLimits};
use serde::Serialize;

use crate::config::{Config, TlsFiles};
use crate::RuntimeKind;

/// Longest the worker Python may take to answer.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(30);

/// How one finding bears on serving this configuration here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Present and usable.
    Ok,
    /// Usable, with a limit worth knowing (e.g. cgroups missing under `--cgroups auto`).
    Warn,
    /// The daemon cannot serve this configuration here.
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One probed thing.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was probed (`cgroups`, `docker`, ...).
    pub name: &'static str,
    /// How it bears on serving.
    pub verdict: Verdict,
    /// What was found, and for a warning or failure what to change.
    pub detail: String,
}

/// Everything `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node the configuration names.
    pub node_id: String,
    /// `process` or `docker`.
    pub runtime: &'static str,
    /// The findings, in probing order.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether nothing failed.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.verdict != Verdict::Fail)
    }

    /// The report as aligned text lines, then a one-line verdict.
    pub fn render(&self) -> String {
        let mut out = format!(
            "fleetmapd check: node {}, runtime {}\n",
            self.node_id, self.runtime
        );
        let width = self
            .findings
            .iter()
            .map(|f| f.name.len())
            .max()
            .unwrap_or(0);
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  {:<4}  {:<width$}  {}",
                f.verdict.as_str(),
                f.name,
                f.detail
            );
        }
        let failed = self
            .findings
            .iter()
            .filter(|f| f.verdict == Verdict::Fail)
            .count();
        if failed == 0 {
            out.push_str("this machine can serve this configuration\n");
        } else {
            let _ = writeln!(
                out,
                "this machine cannot serve this configuration: {failed} problem{} above",
                if failed == 1 { "" } else { "s" }
            );
        }
        out
    }
}

fn finding(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Finding {
    Finding {
        name,
        verdict,
        detail: detail.into(),
    }
}

/// Probes everything `config` needs.
pub async fn check(config: &Config) -> Report {
    let runtime = match config.runtime {
        RuntimeKind::Process => "process",
        RuntimeKind::Docker => "docker",
    };
    let mut findings = Vec::new();
    let inventory = Inventory::detect_with_roots(&config.cgroup_root, &config.proc_root);
    findings.push(match &inventory {
        Ok(inv) => finding(
            "cpus/ram",
            Verdict::Ok,
            format!(
                "{} CPUs ({}), {:.1} GiB RAM",
                inv.cpus.len(),
                fleetmap_sandbox::cgroup::format_cpu_list(&inv.cpus),
                inv.ram_bytes as f64 / f64::from(1u32 << 30)
            ),
        ),
        Err(err) => finding("cpus/ram", Verdict::Fail, err.to_string()),
    });
    findings.push(state_dir(&config.state_dir, config.env_disk_budget_bytes));
    let first_cpu = inventory
        .as_ref()
        .ok()
        .and_then(|inv| inv.cpus.first().copied());
    findings.push({
        let config = config.clone();
        tokio::task::spawn_blocking(move || cgroups(&config, first_cpu))
            .await
            .unwrap_or_else(|err| {
                finding(
                    "cgroups",
                    Verdict::Fail,
                    format!("probe task failed: {err}"),
                )
            })
    });
    findings.push(worker_python(config).await);
    findings.push(docker(config).await);
    findings.push(gpus(config).await);
    if let Some(path) = &config.build_ca_bundle {
        findings.push(ca_bundle(path));
    }
    if let Some(found) = tls(&config.tls_files) {
        findings.push(found);
    }
    Report {
        node_id: config.node_id.clone(),
        runtime,
        findings,
    }
}

fn state_dir(dir: &Path, budget: u64) -> Finding {
    const NAME: &str = "state dir";
    if let Err(err) = std::fs::create_dir_all(dir) {
        return finding(
            NAME,
            Verdict::Fail,
            format!(
                "cannot create {}: {err}; give --state-dir a directory this user may write",
                dir.display()
            ),
        );
    }
    let probe = dir.join(format!(".check-{}", std::process::id()));
    if let Err(err) = std::fs::write(&probe, b"probe") {
        return finding(
            NAME,
            Verdict::Fail,
            format!(
                "cannot write in {}: {err}; give --state-dir a directory this user may write",
                dir.display()
            ),
        );
    }
    let _ = std::fs::remove_file(&probe);
    match nix::sys::statvfs::statvfs(dir) {
        Ok(stat) => {
            // fsblkcnt_t and c_ulong are not u64 on every target.
            #[allow(clippy::unnecessary_cast)]
            let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
            if free < budget {
                finding(
                    NAME,
                    Verdict::Warn,
                    format!(
                        "{}: writable, {:.1} GiB free, less than --env-disk-budget-gb ({:.0}); environment builds may fill the disk: free space or lower the budget",
                        dir.display(),
                        gib(free),
                        gib(budget)
                    ),
                )
            } else {
                finding(
                    NAME,
                    Verdict::Ok,
                    format!("{}: writable, {:.1} GiB free", dir.display(), gib(free)),
                )
            }
        }
        Err(err) => finding(
            NAME,
            Verdict::Warn,
            format!("{}: writable; free space unknown ({err})", dir.display()),
        ),
    }
}

/// Creates a slot cgroup with limits under a parent of its own (never the daemon's, which a
/// running daemon may use), then removes everything it made.
fn cgroups(config: &Config, first_cpu: Option<u32>) -> Finding {
    const NAME: &str = "cgroups";
    if config.cgroup_mode == CgroupMode::Off {
        return finding(
            NAME,
            Verdict::Warn,
            "off (--cgroups off): instances get CPU affinity only and no memory limit",
        );
    }
    let probe = CgroupConfig {
        root: config.cgroup_root.clone(),
        parent: format!("fleetmap-check/{}", std::process::id()),
    };
    let outcome = detect(&probe, CgroupMode::Required).and_then(|cgroups| {
        let limits = SlotLimits {
            cpus: first_cpu.into_iter().collect(),
            ram_bytes: 64 << 20,
        };
        let created = cgroups.create_slot("check", &limits);
        let removed = cgroups.remove_all();
        created?;
        removed?;
        Ok(cgroups.flavor())
    });
    // `fleetmap-check` itself, once no other check uses it.
    let _ = std::fs::remove_dir(config.cgroup_root.join("fleetmap-check"));
    for controller in ["cpuset", "memory", "pids"] {
        let _ = std::fs::remove_dir(config.cgroup_root.join(controller).join("fleetmap-check"));
    }
    match outcome {
        Ok(flavor) => finding(
            NAME,
            Verdict::Ok,
            format!(
                "{} at {}: a slot with a cpuset and a memory limit was created and removed",
                flavor.as_str(),
                config.cgroup_root.display()
            ),
        ),
        Err(err) if config.cgroup_mode == CgroupMode::Required => finding(
            NAME,
            Verdict::Fail,
            format!("{err}; run as root with a writable cgroup filesystem (systemd: Delegate=yes), or use --cgroups auto"),
        ),
        Err(err) => finding(
            NAME,
            Verdict::Warn,
            format!("unusable ({err}): instances get CPU affinity only and no memory limit"),
        ),
    }
}

async fn worker_python(config: &Config) -> Finding {
    const NAME: &str = "worker python";
    // The docker runtime runs the image's Python; the node's own one still runs venv-less
    // tools, so a missing one only warns there.
    let missing = match config.runtime {
        RuntimeKind::Process => Verdict::Fail,
        RuntimeKind::Docker => Verdict::Warn,
    };
    let python = &config.worker_python;
    let run = tokio::process::Command::new(python)
        .args([
            "-c",
            "import sys, cloudpickle; print(sys.version.split()[0], cloudpickle.__version__)",
        ])
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(PYTHON_TIMEOUT, run).await {
        Ok(Ok(out)) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut words = text.split_whitespace();
            let (version, cloudpickle) = (words.next().unwrap_or("?"), words.next().unwrap_or("?"));
            finding(
                NAME,
                Verdict::Ok,
                format!(
                    "{}: Python {version}, cloudpickle {cloudpickle}",
                    python.display()
                ),
            )
        }
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("").trim().to_owned();
            finding(
                NAME,
                missing,
                format!(
                    "{} cannot import cloudpickle ({last}); install it there (python3 -m pip install cloudpickle) or point --worker-python at a Python that has it",
                    python.display()
                ),
            )
        }
        Ok(Err(err)) => finding(
            NAME,
            missing,
            format!(
                "cannot run {} ({err}); point --worker-python at a Python 3 interpreter",
                python.display()
            ),
        ),
        Err(_) => finding(
            NAME,
            missing,
            format!(
                "{} did not answer within {} s",
                python.display(),
                PYTHON_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn docker(config: &Config) -> Finding {
    const NAME: &str = "docker";
    let needed = config.runtime == RuntimeKind::Docker;
    let engine = match fleetmap_base_image::Engine::connect().await {
        Ok(engine) => engine,
        Err(err) if needed => {
            return finding(
                NAME,
                Verdict::Fail,
                format!("{err} (the docker runtime needs it)"),
            )
        }
        Err(err) => {
            return finding(
                NAME,
                Verdict::Ok,
                format!("not used by the process runtime ({err})"),
            )
        }
    };
    let version = engine
        .docker()
        .version()
        .await
        .ok()
        .and_then(|v| v.version)
        .unwrap_or_else(|| "?".to_owned());
    let image = &config.docker_image;
    let present = engine.inspect(image).await;
    match (needed, present) {
        (false, _) => finding(
            NAME,
            Verdict::Ok,
            format!(
                "engine {version} at {} (not used by the process runtime)",
                engine.address()
            ),
        ),
        (true, Ok(Some(_))) => finding(
            NAME,
            Verdict::Ok,
            format!("engine {version} at {}, image {image} present", engine.address()),
        ),
        (true, Ok(None)) if config.docker_pull => finding(
            NAME,
            Verdict::Warn,
            format!("engine {version} at {}; image {image} is missing and will be pulled at start (--docker-pull)", engine.address()),
        ),
        (true, Ok(None)) => finding(
            NAME,
            Verdict::Fail,
            format!("engine {version} at {}; image {image} is missing: build it here (fleetmap-base-image ensure) or give --docker-pull to pull it", engine.address()),
        ),
        (true, Err(err)) => finding(
            NAME,
            Verdict::Fail,
            format!("engine {version} at {}; cannot inspect image {image}: {err}", engine.address()),
        ),
    }
}

async fn gpus(config: &Config) -> Finding {
    const NAME: &str = "gpus";
    let inventory = match crate::gpus::open(&config.gpus, &config.node_id).await {
        Ok(inventory) => inventory,
        Err(err) => return finding(NAME, Verdict::Fail, err.to_string()),
    };
    let source = inventory.source();
    match tokio::task::spawn_blocking(move || inventory.read()).await {
        Ok(Ok(gpus)) if gpus.is_empty() => {
            let why = if source == "none" {
                "NVML is not loaded (no NVIDIA driver here)"
            } else {
                "NVML lists no GPU"
            };
            finding(
                NAME,
                Verdict::Ok,
                format!("none: {why}; jobs with func_gpu go to other nodes"),
            )
        }
        Ok(Ok(gpus)) => {
            let names: Vec<String> = gpus
                .iter()
                .map(|g| {
                    let info = g.info(None);
                    format!(
                        "{} {} ({} MiB, {})",
                        info.index,
                        info.name,
                        info.memory_bytes >> 20,
                        info.uuid
                    )
                })
                .collect();
            finding(
                NAME,
                Verdict::Ok,
                format!("{} ({source}): {}", gpus.len(), names.join(", ")),
            )
        }
        Ok(Err(err)) => finding(
            NAME,
            Verdict::Warn,
            format!("NVML loaded but cannot list GPUs ({err}); this node offers none"),
        ),
        Err(err) => finding(NAME, Verdict::Fail, format!("probe task failed: {err}")),
    }
}

fn ca_bundle(path: &Path) -> Finding {
    const NAME: &str = "build ca bundle";
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let certs = text.matches("-----BEGIN CERTIFICATE-----").count();
            if certs == 0 {
                finding(
                    NAME,
                    Verdict::Fail,
                    format!("{} holds no PEM certificate; give --build-ca-bundle a PEM bundle (e.g. /etc/ssl/certs/ca-certificates.crt)", path.display()),
                )
            } else {
                finding(
                    NAME,
                    Verdict::Ok,
                    format!("{}: {certs} certificates", path.display()),
                )
            }
        }
        Err(err) => finding(
            NAME,
            Verdict::Fail,
            format!(
                "cannot read {} ({err}); give --build-ca-bundle a readable PEM bundle",
                path.display()
            ),
        ),
    }
}

/// The TLS files loaded as serving would load them; `None` when no TLS setting is given.
fn tls(files: &TlsFiles) -> Option<Finding> {
    const NAME: &str = "tls";
    if files.cert.is_none() && files.key.is_none() && files.ca.is_none() {
        return None;
    }
    let mut said = Vec::new();
    match fleetmap_service_tls::server_config_from(files.cert.as_deref(), files.key.as_deref()) {
        Ok(Some(_)) => said.push(format!(
            "serves https with {}",
            files.cert.as_deref().unwrap_or(Path::new("")).display()
        )),
        Ok(None) => said.push("serves plain http".to_string()),
        Err(err) => return Some(finding(NAME, Verdict::Fail, err.to_string())),
    }
    match &files.ca {
        Some(ca) => match fleetmap_service_tls::client_config(Some(ca)) {
            Ok(_) => said.push(format!("trusts {} for an https coordinator", ca.display())),
            Err(err) => return Some(finding(NAME, Verdict::Fail, err.to_string())),
        },
        None => said.push("trusts the system's roots for an https coordinator".to_string()),
    }
    Some(finding(NAME, Verdict::Ok, said.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_fails_on_any_failure_and_says_how_many() {
        let mut report = Report {
            node_id: "n".into(),
            runtime: "process",
            findings: vec![finding("cpus/ram", Verdict::Ok, "2 CPUs")],
        };
        assert!(report.passed());
        assert!(report.render().contains("can serve"));
        report
            .findings
            .push(finding("docker", Verdict::Warn, "not used"));
        assert!(report.passed());
        report
            .findings
            .push(finding("cgroups", Verdict::Fail, "not writable"));
        assert!(!report.passed());
        let text = report.render();
        assert!(text.contains("  FAIL  cgroups   not writable"), "{text}");
        assert!(
            text.ends_with("cannot serve this configuration: 1 problem above\n"),
            "{text}"
        );
    }

    #[test]
    fn a_state_dir_that_cannot_be_written_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let f = state_dir(&file.join("below"), 0);
        assert_eq!(f.verdict, Verdict::Fail, "{f:?}");
        assert!(f.detail.contains("--state-dir"), "{f:?}");
        let ok = state_dir(dir.path(), 0);
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        let short = state_dir(dir.path(), u64::MAX);
        assert_eq!(short.verdict, Verdict::Warn, "{short:?}");
    }

    #[test]
    fn a_ca_bundle_without_certificates_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("write");
        assert_eq!(ca_bundle(&path).verdict, Verdict::Fail);
        assert_eq!(
            ca_bundle(&dir.path().join("missing")).verdict,
            Verdict::Fail
        );
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert_eq!(ca_bundle(&path).verdict, Verdict::Ok);
    }

    #[test]
    fn tls_files_are_probed_only_when_given_and_a_lone_certificate_fails() {
        assert!(tls(&TlsFiles::default()).is_none());
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not pem").expect("write");
        let lone = tls(&TlsFiles {
            cert: Some(cert.clone()),
            ..TlsFiles::default()
        })
        .expect("a finding");
        assert_eq!(lone.verdict, Verdict::Fail, "{lone:?}");
        assert!(lone.detail.contains("tls_key_file"), "{lone:?}");
        let garbage_ca = tls(&TlsFiles {
            ca: Some(cert),
            ..TlsFiles::default()
        })
        .expect("a finding");
        assert_eq!(garbage_ca.verdict, Verdict::Fail, "{garbage_ca:?}");
        assert!(
            garbage_ca.detail.contains("holds no PEM certificate"),
            "{garbage_ca:?}"
        );
    }
}
