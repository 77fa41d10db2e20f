//! Venvs of environments for the `process` runtime: `python -m venv` of the worker Python,
//! then the worker Python's pip installs the requirements into it (`pip --python`), trusting
//! the configured CA bundle. The worker needs cloudpickle; a venv that does not install it
//! itself finds the worker Python's own copy through a `.pth` file pointing at a support
//! directory holding only that package (after site-packages, so an installed one wins).
//!
//! A venv is built under `.building-<key>` and renamed into place when complete, so a
//! half-built venv is never used: a failed build removes it, and leftovers of an interrupted
//! build are removed at start. A build that runs out of disk says so (the node's disk, not the
//! requirements, is what to fix).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::build_log::BuildLog;
use super::cache::{Builder, Built};
use super::clone::{self, Installed};
use super::disk;
use super::index::IndexEntry;
use super::key::KeyBase;
use super::recipe::Recipe;
use super::{EnvError, EnvTarget};

/// Longest one build step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Builds that may drop uninstallable requirements of a clone and retry.
const CLONE_ATTEMPTS: usize = 3;

/// Builds venvs under a root directory.
#[derive(Debug)]
pub struct VenvBuilder {
    python: PathBuf,
    root: PathBuf,
    key_base: KeyBase,
    minor: String,
    ca_bundle: Option<PathBuf>,
    support: PathBuf,
    installed: Installed,
}

impl VenvBuilder {
    /// A builder of venvs of `python` (version `version`) under `root`; lists what `python`
    /// has installed (for the clone rule) and prepares the cloudpickle support directory.
    pub async fn new(
        python: PathBuf,
        root: PathBuf,
        worker_sha: String,
        ca_bundle: Option<PathBuf>,
    ) -> Result<Self, EnvError> {
        std::fs::create_dir_all(&root)
            .map_err(|e| EnvError::Node(format!("mkdir {}: {e}", root.display())))?;
        remove_leftovers(&root);
        let (installed, support) =
            tokio::join!(clone::installed(&python), prepare_support(&python, &root));
        let installed = installed.map_err(EnvError::Node)?;
        let (support, version) = support?;
        let minor = crate::job::admit::major_minor(&version).to_string();
        Ok(Self {
            key_base: KeyBase {
                runtime: "process".to_string(),
                base: python.display().to_string(),
                python: version,
                worker: worker_sha,
            },
            python,
            root,
            minor,
            ca_bundle,
            support,
            installed,
        })
    }

    fn dir(&self, key: &str) -> PathBuf {
        self.root
            .join(format!("venv-{}", &key[..key.len().min(32)]))
    }

    /// Runs one build step, its output going to `log`; the error carries the log's tail.
    async fn step(&self, what: &str, command: &mut Command, log: &BuildLog) -> Result<(), String> {
        log.push(&format!("$ {what}"));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1")
            .env_remove("PYTHONPATH");
        if let Some(ca) = &self.ca_bundle {
            command.env("PIP_CERT", ca);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        let out = child.stdout.take().map(|s| BufReader::new(s).lines());
        let err = child.stderr.take().map(|s| BufReader::new(s).lines());
        let pump = async {
            tokio::join!(forward(out, log), forward(err, log));
            child.wait().await
        };
        let status = tokio::time::timeout(STEP_TIMEOUT, pump)
            .await
            .map_err(|_| format!("{what} ran past {} minutes", STEP_TIMEOUT.as_secs() / 60))?
            .map_err(|e| format!("{what}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{what} failed ({status})"))
        }
    }

    async fn build_venv(
        &self,
        key: &str,
        requirements: &[String],
        clone: bool,
        log: &BuildLog,
    ) -> Result<Built, EnvError> {
        let final_dir = self.dir(key);
        let tmp = self
            .root
            .join(format!(".building-{}", &key[..key.len().min(32)]));
        let _ = std::fs::remove_dir_all(&tmp);
        // Removes the half-built venv on every way out but the rename into place.
        let building = Building(Some(tmp.clone()));
        let root = self.root.clone();
        let failed = |message: String| {
            let tail = log.tail();
            if let Some(full) = disk_full(&root, &message, &tail) {
                return EnvError::BuildFailed(format!(
                    "{full}\n--- last lines of the build log ---\n{tail}"
                ));
            }
            EnvError::BuildFailed(format!(
                "the environment venv failed to build: {message}; fix the requirements (verbose=True streams the build log)\n--- last lines of the build log ---\n{tail}"
            ))
        };
        let mut venv = Command::new(&self.python);
        venv.arg("-m").arg("venv").arg("--without-pip").arg(&tmp);
        self.step("python -m venv", &mut venv, log)
            .await
            .map_err(&failed)?;
        let site = tmp
            .join("lib")
            .join(format!("python{}", self.minor))
            .join("site-packages");
        std::fs::write(
            site.join("_fleetmap_support.pth"),
            format!("{}\n", self.support.display()),
        )
        .map_err(|e| failed(format!("write {}: {e}", site.display())))?;
        let venv_python = tmp.join("bin").join("python");
        let mut requirements = requirements.to_vec();
        let mut notes = Vec::new();
        let mut attempt = 0;
        while !requirements.is_empty() {
            attempt += 1;
            let mut pip = Command::new(&self.python);
            pip.arg("-m")
                .arg("pip")
                .arg("--python")
                .arg(&venv_python)
                .arg("install")
                .arg("--no-cache-dir")
                .arg("--progress-bar")
                .arg("off")
                .args(&requirements);
            match self.step("pip install", &mut pip, log).await {
                Ok(()) => break,
                Err(message) if clone && attempt < CLONE_ATTEMPTS => {
                    let dropped = clone::uninstallable(&log.tail(), &requirements);
                    if dropped.is_empty() {
                        return Err(failed(message));
                    }
                    let note = format!(
                        "the node could not install {} from the package index, so the cloned environment lacks it; install it from an index the nodes reach, or pass packages= explicitly",
                        dropped.join(", ")
                    );
                    log.push(&format!("warning: {note}"));
                    notes.push(note);
                    requirements.retain(|r| !dropped.contains(r));
                }
                Err(message) => return Err(failed(message)),
            }
        }
        let mut probe = Command::new(&venv_python);
        probe.arg("-c").arg("import cloudpickle");
        if let Err(message) = self.step("import cloudpickle", &mut probe, log).await {
            return Err(failed(message));
        }
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(|e| {
            EnvError::Node(format!(
                "rename {} to {}: {e}",
                tmp.display(),
                final_dir.display()
            ))
        })?;
        building.keep();
        Ok(Built {
            location: final_dir.display().to_string(),
            image_id: None,
            python: self.key_base.python.clone(),
            size_bytes: dir_size(&final_dir),
            notes,
        })
    }
}

/// A venv being built: removed when dropped (the build failed or was abandoned).
struct Building(Option<PathBuf>);

impl Building {
    /// The build is complete (renamed into place): nothing to remove.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The sentence for a build that ran out of disk (ENOSPC in the error or the log's tail).
fn disk_full(root: &Path, message: &str, tail: &str) -> Option<String> {
    if !disk::mentions_no_space(message) && !disk::mentions_no_space(tail) {
        return None;
    }
    let free = disk::free_now(root);
    Some(format!(
        "the node's disk is full: the environment build ran out of space in {} ({free}); the half-built environment was removed. Free space on the node, or lower fleetmapd --env-disk-budget-gb so fewer environments are kept, then run the job again",
        root.display()
    ))
}

async fn forward<R: tokio::io::AsyncRead + Unpin>(
    lines: Option<tokio::io::Lines<BufReader<R>>>,
    log: &BuildLog,
) {
    if let Some(mut lines) = lines {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push(&line);
        }
    }
}

/// Removes half-built venvs an interrupted run left.
fn remove_leftovers(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".building-")
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Copies the worker Python's cloudpickle package into `<root>/support/cloudpickle-<version>`
/// (once) and returns that directory and the interpreter's full version.
async fn prepare_support(python: &Path, root: &Path) -> Result<(PathBuf, String), EnvError> {
    let output = Command::new(python)
        .arg("-c")
        .arg("import cloudpickle, os, sys; print(cloudpickle.__version__); print(os.path.dirname(cloudpickle.__file__)); print(sys.version.split()[0])")
        .env_remove("PYTHONPATH")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| EnvError::Node(format!("cannot run {}: {e}", python.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(package), Some(python_version)) =
        (lines.next(), lines.next(), lines.next())
    else {
        return Err(EnvError::Node(format!(
            "the worker Python {} cannot import cloudpickle; install cloudpickle for it",
            python.display()
        )));
    };
    let support = root
        .join("support")
        .join(format!("cloudpickle-{}", version.trim()));
    let target = support.join("cloudpickle");
    if !target.join("__init__.py").exists() {
        let tmp = support.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        copy_tree(Path::new(package.trim()), &tmp.join("cloudpickle"))
            .map_err(|e| EnvError::Node(format!("copy cloudpickle from {package}: {e}")))?;
        let _ = std::fs::remove_dir_all(&support);
        std::fs::rename(&tmp, &support)
            .map_err(|e| EnvError::Node(format!("rename {}: {e}", support.display())))?;
    }
    Ok((support, python_version.trim().to_string()))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(&name))?;
        }
    }
    Ok(())
}

/// Bytes of regular files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

impl Builder for VenvBuilder {
    fn key_base(&self) -> &KeyBase {
        &self.key_base
    }

    fn base_name(&self) -> String {
        self.python.display().to_string()
    }

    fn default_satisfies(&self, recipe: &Recipe) -> bool {
        match recipe {
            Recipe::NodeDefault => true,
            Recipe::Requirements {
                requirements,
                clone: true,
            } => clone::satisfied(requirements, &self.installed),
            _ => false,
        }
    }

    fn build<'a>(
        &'a self,
        key: &'a str,
        recipe: &'a Recipe,
        log: &'a BuildLog,
    ) -> BoxFuture<'a, Result<Built, EnvError>> {
        async move {
            match recipe {
                Recipe::Requirements {
                    requirements,
                    clone,
                } => self.build_venv(key, requirements, *clone, log).await,
                Recipe::NodeDefault => {
                    Err(EnvError::Node("the node default needs no build".into()))
                }
                Recipe::Dockerfile { .. } => Err(EnvError::Unsupported(
                    "dockerfile= needs a node running the docker runtime".into(),
                )),
            }
        }
        .boxed()
    }

    fn exists<'a>(&'a self, entry: &'a IndexEntry) -> BoxFuture<'a, bool> {
        let python = Path::new(&entry.location).join("bin").join("python");
        async move { python.exists() }.boxed()
    }

    fn remove<'a>(&'a self, entry: &'a IndexEntry) -> BoxFuture<'a, ()> {
        let dir = PathBuf::from(&entry.location);
        async move {
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
            if let Ok(Err(err)) = removed {
                tracing::warn!(venv = %entry.location, cause = %err, "cannot remove an environment venv");
            }
        }
        .boxed()
    }

    fn remove_unindexed<'a>(&'a self, indexed: &'a [IndexEntry]) -> BoxFuture<'a, usize> {
        async move {
            let mut removed = 0;
            let Ok(entries) = std::fs::read_dir(&self.root) else {
                return 0;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                if !name.to_string_lossy().starts_with("venv-") {
                    continue;
                }
                if indexed.iter().any(|e| Path::new(&e.location) == path) {
                    continue;
                }
                if std::fs::remove_dir_all(&path).is_ok() {
                    removed += 1;
                }
            }
            removed
        }
        .boxed()
    }

    fn target(&self, entry: &IndexEntry) -> EnvTarget {
        EnvTarget::Venv {
            key: entry.key.clone(),
            python: Path::new(&entry.location).join("bin").join("python"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_in_the_log_is_the_nodes_disk_not_the_requirements() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tail = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device";
        let said =
            disk_full(dir.path(), "pip install failed (exit status: 1)", tail).expect("full");
        assert!(said.starts_with("the node's disk is full"), "{said}");
        assert!(said.contains(&dir.path().display().to_string()), "{said}");
        assert!(
            said.contains("--env-disk-budget-gb") && said.contains("MiB free"),
            "{said}"
        );
        assert!(disk_full(dir.path(), "pip install failed", "No matching distribution").is_none());
    }

    #[test]
    fn a_failed_build_leaves_no_half_built_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".building-x");
        std::fs::create_dir_all(path.join("lib")).expect("mkdir");
        drop(Building(Some(path.clone())));
        assert!(!path.exists());
        let kept = dir.path().join("venv-x");
        std::fs::create_dir_all(&kept).expect("mkdir");
        Building(Some(kept.clone())).keep();
        assert!(kept.exists());
    }

    #[test]
    fn dir_size_counts_files_below() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("a")).expect("mkdir");
        std::fs::write(dir.path().join("a/b"), b"12345").expect("write");
        std::fs::write(dir.path().join("c"), b"12").expect("write");
        assert_eq!(dir_size(dir.path()), 7);
    }
}
