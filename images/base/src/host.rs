//! What the build needs from the host, detected in one place: root, debootstrap and chroot.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Searched after PATH: sudo and cron often drop the sbin directories debootstrap lives in.
pub const EXTRA_TOOL_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The host programs a rootfs build runs.
#[derive(Debug, Clone)]
pub struct HostTools {
    /// `debootstrap` (Debian package `debootstrap`).
    pub debootstrap: PathBuf,
    /// `chroot` (Debian package `coreutils`).
    pub chroot: PathBuf,
}

impl HostTools {
    /// Finds the tools in PATH and [`EXTRA_TOOL_DIRS`], and checks that this process is root.
    pub fn detect() -> Result<Self, Error> {
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::NotRoot);
        }
        let path = env::var_os("PATH").unwrap_or_default();
        Self::detect_in(&path, EXTRA_TOOL_DIRS)
    }

    /// Finds the tools in the given PATH value and extra directories (no root check).
    pub fn detect_in(path: &OsStr, extra: &[&str]) -> Result<Self, Error> {
        let searched = extra.join(", ");
        let find = |tool: &'static str, package: &'static str| {
            find_program(tool, path, extra).ok_or_else(|| Error::ToolMissing {
                tool,
                package,
                searched: searched.clone(),
            })
        };
        Ok(Self {
            debootstrap: find("debootstrap", "debootstrap")?,
            chroot: find("chroot", "coreutils")?,
        })
    }
}

/// The first executable regular file called `name` in `path`'s directories, then in `extra`.
pub fn find_program(name: &str, path: &OsStr, extra: &[&str]) -> Option<PathBuf> {
    env::split_paths(path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn finds_executables_in_path_then_extra_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        let sbin = dir.path().join("sbin");
        fs::create_dir_all(&bin).expect("mkdir");
        fs::create_dir_all(&sbin).expect("mkdir");
        let plain = bin.join("debootstrap");
        fs::write(&plain, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).expect("chmod");
        let exe = sbin.join("debootstrap");
        fs::write(&exe, "#!/bin/sh\n").expect("write");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod");

        let sbin_str = sbin.to_str().expect("utf-8");
        let found = find_program("debootstrap", bin.as_os_str(), &[sbin_str]);
        assert_eq!(
            found,
            Some(exe),
            "a non-executable file must be passed over"
        );
        assert_eq!(find_program("nope", bin.as_os_str(), &[sbin_str]), None);
    }

    #[test]
    fn missing_tool_names_the_package() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = HostTools::detect_in(dir.path().as_os_str(), &[]).expect_err("nothing there");
        let msg = err.to_string();
        assert!(msg.contains("apt-get install debootstrap"), "{msg}");
    }
}
