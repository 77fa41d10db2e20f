//! The steps run in the fresh root filesystem after debootstrap: pip packages (trusting an extra
//! CA bundle for the build only), configuration for images derived from this one, and the check
//! that measures what Python and cloudpickle ended up inside.

use std::fs;
use std::io;
use std::path::Path;

use tokio::process::Command;
use tracing::info;

use crate::command::BuildLog;
use crate::debootstrap::clean_env;
use crate::error::Error;
use crate::recipe::{ImageFacts, Recipe};
use crate::slim::confined;

/// Where the extra CA bundle sits inside the root filesystem during pip's run (removed after).
pub const BUILD_CA_PATH: &str = "/tmp/fleetmap-build-ca.crt";

/// dpkg settings for derived images: no documentation, as in Debian's slim images.
pub const DPKG_NODOC: &str = "\
# fleetmap base image: packages installed on top of this image leave out documentation.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
";

/// apt settings for derived images: no recommends, no package cache kept.
pub const APT_SLIM: &str = "\
// fleetmap base image: keep images derived from this one small.
APT::Install-Recommends \"false\";
APT::Install-Suggests \"false\";
DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };
APT::Update::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true\"; };
Dir::Cache::pkgcache \"\";
Dir::Cache::srcpkgcache \"\";
";

/// Prints `sys.version` (up to the first space) and cloudpickle's version, one per line.
const MEASURE: &str =
    "import sys, cloudpickle; print(sys.version.split()[0]); print(cloudpickle.__version__)";

/// Checks that `path` is a readable PEM bundle, before any time is spent building.
pub fn check_ca_bundle(path: &Path) -> Result<(), Error> {
    let text = fs::read_to_string(path).map_err(|source| Error::CaBundle {
        path: path.to_owned(),
        source,
    })?;
    if text.contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err(Error::CaBundle {
            path: path.to_owned(),
            source: io::Error::other("it holds no PEM certificate"),
        })
    }
}

/// Installs the recipe's pip packages into the system Python of `rootfs`. With `ca_bundle`,
/// pip trusts it (`PIP_CERT`) for this run only; the bundle does not stay in the image. pip's
/// `--cert` replaces its trust store, so pass a complete bundle, like the host's own.
pub async fn install_pip_packages(
    chroot: &Path,
    rootfs: &Path,
    recipe: &Recipe,
    ca_bundle: Option<&Path>,
    log: &BuildLog,
) -> Result<(), Error> {
    if recipe.pip_packages.is_empty() {
        return Ok(());
    }
    let staged = confined(rootfs, BUILD_CA_PATH)?;
    if let Some(bundle) = ca_bundle {
        fs::copy(bundle, &staged).map_err(|source| Error::CaBundle {
            path: bundle.to_owned(),
            source,
        })?;
    }
    let mut command = Command::new(chroot);
    command.arg(rootfs).args([
        "/usr/bin/python3",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--break-system-packages",
        "--disable-pip-version-check",
        "--no-input",
        "--root-user-action=ignore",
    ]);
    command.args(&recipe.pip_packages);
    clean_env(&mut command);
    if ca_bundle.is_some() {
        command.env("PIP_CERT", BUILD_CA_PATH);
    }
    let ran = log.run_unchecked("pip install", &mut command).await;
    if ca_bundle.is_some() {
        fs::remove_file(&staged).map_err(Error::io("remove", &staged))?;
    }
    let (status, output) = ran?;
    if status.success() {
        info!(packages = ?recipe.pip_packages, "pip packages installed");
        Ok(())
    } else if output.text.contains("CERTIFICATE_VERIFY_FAILED") {
        Err(Error::UntrustedTls {
            log: log.path().to_owned(),
        })
    } else {
        Err(log.failure("pip install", status, &output))
    }
}

/// Writes the configuration for derived images and lets pip install into the system Python
/// (Debian marks it externally managed; in a single-purpose container that only gets in the
/// way of installing a job's packages).
pub fn configure(rootfs: &Path) -> Result<(), Error> {
    let lib = confined(rootfs, "/usr/lib")?;
    for entry in fs::read_dir(&lib).map_err(Error::io("list", &lib))? {
        let entry = entry.map_err(Error::io("list", &lib))?;
        if entry.file_name().to_string_lossy().starts_with("python3.") {
            let marker = entry.path().join("EXTERNALLY-MANAGED");
            match fs::remove_file(&marker) {
                Ok(()) => info!(path = %marker.display(), "removed the externally-managed marker"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", &marker)(e)),
            }
        }
    }
    for (path, text) in [
        ("/etc/dpkg/dpkg.cfg.d/fleetmap-nodoc", DPKG_NODOC),
        ("/etc/apt/apt.conf.d/fleetmap-slim", APT_SLIM),
    ] {
        let target = confined(rootfs, path)?;
        fs::write(&target, text).map_err(Error::io("write", &target))?;
    }
    Ok(())
}

/// Runs the image's Python to check that cloudpickle imports, and reports both versions.
pub async fn measure(chroot: &Path, rootfs: &Path) -> Result<ImageFacts, Error> {
    let broken = |detail: String| Error::BrokenRootfs {
        rootfs: rootfs.to_owned(),
        detail,
    };
    let mut command = Command::new(chroot);
    command
        .arg(rootfs)
        .args(["/usr/bin/python3", "-c", MEASURE]);
    clean_env(&mut command);
    let output = command.output().await.map_err(Error::io("run", chroot))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(broken(format!(
            "python3 exited with {}: {}",
            output.status,
            crate::command::error_line(&stderr)
        )));
    }
    parse_facts(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
        broken(format!(
            "unexpected output from python3: {:?}",
            String::from_utf8_lossy(&output.stdout)
        ))
    })
}

/// Parses [`MEASURE`]'s output.
fn parse_facts(stdout: &str) -> Option<ImageFacts> {
    let mut lines = stdout.lines().map(str::trim).filter(|l| !l.is_empty());
    let python_version = lines.next()?.to_owned();
    let cloudpickle_version = lines.next()?.to_owned();
    let looks_like_version = |v: &str| v.starts_with(|c: char| c.is_ascii_digit());
    (looks_like_version(&python_version) && looks_like_version(&cloudpickle_version)).then_some(
        ImageFacts {
            python_version,
            cloudpickle_version,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_measured_versions() {
        let facts = parse_facts("3.11.2\n3.1.3\n").expect("parsed");
        assert_eq!(facts.python_version, "3.11.2");
        assert_eq!(facts.cloudpickle_version, "3.1.3");
        assert!(parse_facts("3.11.2\n").is_none());
        assert!(parse_facts("Traceback\nboom\n").is_none());
    }

    #[test]
    fn ca_bundle_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.crt");
        fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        check_ca_bundle(&good).expect("valid");
        let empty = dir.path().join("empty.crt");
        fs::write(&empty, "").expect("write");
        assert!(matches!(
            check_ca_bundle(&empty),
            Err(Error::CaBundle { .. })
        ));
        let missing = dir.path().join("missing.crt");
        let msg = check_ca_bundle(&missing).expect_err("missing").to_string();
        assert!(msg.contains("missing.crt"), "{msg}");
    }

    #[test]
    fn configure_writes_settings_and_drops_the_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in [
            "usr/lib/python3.11",
            "etc/dpkg/dpkg.cfg.d",
            "etc/apt/apt.conf.d",
        ] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        fs::write(root.join("usr/lib/python3.11/EXTERNALLY-MANAGED"), "x").expect("write");
        configure(root).expect("configured");
        assert!(!root.join("usr/lib/python3.11/EXTERNALLY-MANAGED").exists());
        let nodoc =
            fs::read_to_string(root.join("etc/dpkg/dpkg.cfg.d/fleetmap-nodoc")).expect("written");
        assert!(nodoc.contains("path-exclude /usr/share/doc/*"));
        assert!(root.join("etc/apt/apt.conf.d/fleetmap-slim").is_file());
    }
}
