//! Slimming of the finished root filesystem (package lists, caches, documentation, logs,
//! host-specific files), and [`confined`], which every write or removal inside the root
//! filesystem goes through so that a symlink in it (many point at absolute host-looking paths,
//! like `/var/run -> /run`) never leads the build into the host's own files.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use tracing::debug;

use crate::error::Error;

/// One slimming step; paths are absolute paths inside the image.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// Remove every entry of the directory except the names listed.
    Clear(&'static str, &'static [&'static str]),
    /// Remove the entries of the directory (not recursively) whose names end with the suffix.
    RemoveSuffix(&'static str, &'static str),
    /// Remove, recursively, every non-directory but those with the given name, then the
    /// directories left empty.
    KeepOnly(&'static str, &'static str),
    /// Remove, recursively, every non-directory, keeping the directories.
    EmptyFiles(&'static str),
    /// Remove the path (file, symlink or tree), if present.
    Remove(&'static str),
}

/// What the base image drops after the build: ~150 MB of the ~300 MB debootstrap leaves.
pub const STEPS: &[Step] = &[
    Step::Clear("/var/lib/apt/lists", &["partial"]),
    Step::RemoveSuffix("/var/cache/apt", ".bin"),
    Step::RemoveSuffix("/var/cache/apt/archives", ".deb"),
    Step::KeepOnly("/usr/share/doc", "copyright"),
    Step::Clear("/usr/share/man", &[]),
    Step::Clear("/usr/share/info", &[]),
    Step::Clear("/usr/share/locale", &["locale.alias"]),
    Step::Remove("/usr/share/lintian"),
    Step::EmptyFiles("/var/log"),
    Step::RemoveSuffix("/var/cache/debconf", "-old"),
    Step::RemoveSuffix("/var/lib/dpkg", "-old"),
    Step::Remove("/var/cache/ldconfig/aux-cache"),
    Step::Clear("/tmp", &[]),
    Step::Clear("/var/tmp", &[]),
    Step::Remove("/root/.cache"),
    // The build host's; Docker provides both to every container.
    Step::Remove("/etc/resolv.conf"),
    Step::Remove("/etc/hostname"),
];

/// `path` (absolute inside the image) under `rootfs`, refusing any symlink on the way,
/// including the last component. A missing tail is fine.
pub fn confined(rootfs: &Path, path: &str) -> Result<PathBuf, Error> {
    let mut resolved = rootfs.to_path_buf();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Normal(name) => resolved.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::io(
                    "refuse to resolve",
                    rootfs.join(path.trim_start_matches('/')),
                )(io::Error::other(
                    "'..' inside the root filesystem",
                )))
            }
        }
        match fs::symlink_metadata(&resolved) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(Error::io("refuse to follow symlink", &resolved)(
                    io::Error::other("a symlink in the root filesystem could lead outside it"),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("inspect", &resolved)(e)),
        }
    }
    Ok(resolved)
}

/// Applies every step of [`STEPS`] to `rootfs`.
pub fn slim(rootfs: &Path) -> Result<(), Error> {
    for step in STEPS {
        debug!(?step, "slimming");
        apply(rootfs, *step)?;
    }
    Ok(())
}

/// Applies one step to `rootfs`.
pub fn apply(rootfs: &Path, step: Step) -> Result<(), Error> {
    match step {
        Step::Clear(dir, keep) => {
            for entry in entries(&confined(rootfs, dir)?)? {
                let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
                if !name.is_some_and(|n| keep.contains(&n.as_str())) {
                    remove_any(&entry)?;
                }
            }
        }
        Step::RemoveSuffix(dir, suffix) => {
            for entry in entries(&confined(rootfs, dir)?)? {
                let is_file = fs::symlink_metadata(&entry).is_ok_and(|m| !m.is_dir());
                let matches = entry
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with(suffix));
                if is_file && matches {
                    remove_any(&entry)?;
                }
            }
        }
        Step::KeepOnly(dir, name) => {
            prune(&confined(rootfs, dir)?, Some(name))?;
        }
        Step::EmptyFiles(dir) => {
            prune(&confined(rootfs, dir)?, None)?;
        }
        Step::Remove(path) => remove_any(&confined(rootfs, path)?)?,
    }
    Ok(())
}

/// The entries of `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let list = match fs::read_dir(dir) {
        Ok(list) => list,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir)(e)),
    };
    let mut paths = list
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::io("list", dir))?;
    paths.sort();
    Ok(paths)
}

/// Removes a file, symlink or directory tree (never following symlinks); missing is fine.
fn remove_any(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path)(e)),
    };
    if meta.is_dir() {
        fs::remove_dir_all(path).map_err(Error::io("remove", path))
    } else {
        fs::remove_file(path).map_err(Error::io("remove", path))
    }
}

/// Below `dir`, removes every non-directory except those named `keep`; with `keep` set, also
/// removes the directories left empty. Returns whether `dir` itself is now empty.
fn prune(dir: &Path, keep: Option<&str>) -> Result<bool, Error> {
    let mut empty = true;
    for entry in entries(dir)? {
        let meta = fs::symlink_metadata(&entry).map_err(Error::io("inspect", &entry))?;
        if meta.is_dir() {
            if prune(&entry, keep)? && keep.is_some() {
                fs::remove_dir(&entry).map_err(Error::io("remove", &entry))?;
            } else {
                empty = false;
            }
        } else if keep.is_some()
            && entry
                .file_name()
                .is_some_and(|n| Some(&*n.to_string_lossy()) == keep)
        {
            empty = false;
        } else {
            fs::remove_file(&entry).map_err(Error::io("remove", &entry))?;
        }
    }
    Ok(empty)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, "x").expect("write");
    }

    #[test]
    fn confined_refuses_symlinks_and_dotdot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        symlink("/run", root.join("run-link")).expect("symlink");
        symlink("usr/lib", root.join("lib")).expect("symlink");
        assert_eq!(
            confined(root, "/usr/lib").expect("ok"),
            root.join("usr/lib")
        );
        assert_eq!(
            confined(root, "/usr/nope/x").expect("ok"),
            root.join("usr/nope/x")
        );
        assert!(confined(root, "/run-link/x").is_err());
        assert!(confined(root, "/lib").is_err());
        assert!(confined(root, "/usr/../etc").is_err());
    }

    #[test]
    fn slims_a_fake_rootfs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for f in [
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "var/lib/apt/lists/partial/.keep",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/bash_5.2_amd64.deb",
            "usr/share/doc/bash/copyright",
            "usr/share/doc/bash/README.gz",
            "usr/share/doc/gone/changelog.gz",
            "usr/share/man/man1/ls.1.gz",
            "usr/share/locale/locale.alias",
            "usr/share/locale/de/LC_MESSAGES/x.mo",
            "var/log/dpkg.log",
            "var/log/apt/history.log",
            "var/lib/dpkg/status",
            "var/lib/dpkg/status-old",
            "etc/resolv.conf",
            "etc/hostname",
            "tmp/junk",
            "usr/bin/python3",
        ] {
            touch(root, f);
        }
        // A symlink into the host must be removed as a link, never followed.
        let outside = tempfile::tempdir().expect("tempdir");
        touch(outside.path(), "precious");
        symlink(outside.path(), root.join("tmp/escape")).expect("symlink");

        slim(root).expect("slimmed");

        for gone in [
            "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/bash_5.2_amd64.deb",
            "usr/share/doc/bash/README.gz",
            "usr/share/doc/gone",
            "usr/share/man/man1",
            "usr/share/locale/de",
            "var/log/dpkg.log",
            "var/log/apt/history.log",
            "var/lib/dpkg/status-old",
            "etc/resolv.conf",
            "etc/hostname",
            "tmp/junk",
            "tmp/escape",
        ] {
            assert!(
                fs::symlink_metadata(root.join(gone)).is_err(),
                "{gone} survived"
            );
        }
        for kept in [
            "var/lib/apt/lists/partial",
            "usr/share/doc/bash/copyright",
            "usr/share/locale/locale.alias",
            "usr/share/man",
            "var/log/apt",
            "var/lib/dpkg/status",
            "usr/bin/python3",
        ] {
            assert!(root.join(kept).exists(), "{kept} was removed");
        }
        assert!(
            outside.path().join("precious").exists(),
            "slimming followed a symlink"
        );
    }
}
