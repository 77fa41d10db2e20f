//! Safe removal of a half-built root filesystem: a debootstrap that was killed can leave /proc
//! and /sys mounted inside it, and removing the tree without detaching them first would reach
//! into the host's.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};
use tracing::warn;

use crate::error::Error;

/// The mount table of this process, as the kernel exposes it.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points (from mountinfo text) at or below `root`, deepest first.
pub fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|mount_point| mount_point.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the directory tree at `path` after lazily detaching every mount below it, reading the
/// mount table from `mountinfo`. A missing `path` is not an error.
pub fn remove_tree(path: &Path, mountinfo: &Path) -> Result<(), Error> {
    let root = match path.canonicalize() {
        Ok(root) => root,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("resolve", path)(e)),
    };
    let table = fs::read_to_string(mountinfo).map_err(Error::io("read", mountinfo))?;
    for mount_point in mounts_under(&table, &root) {
        warn!(mount = %mount_point.display(), "detaching a mount left inside a half-built root filesystem");
        umount2(&mount_point, MntFlags::MNT_DETACH)
            .map_err(|errno| Error::io("unmount", &mount_point)(io::Error::from(errno)))?;
    }
    let table = fs::read_to_string(mountinfo).map_err(Error::io("read", mountinfo))?;
    if let Some(still) = mounts_under(&table, &root).first() {
        return Err(Error::io("remove (still mounted)", still)(
            io::Error::other("a mount could not be detached"),
        ));
    }
    fs::remove_dir_all(&root).map_err(Error::io("remove", &root))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:5 / /work/b/rootfs.partial/proc rw,nosuid shared:2 - proc proc rw
41 22 0:6 / /work/b/rootfs.partial/sys rw - sysfs sysfs rw
42 41 0:7 / /work/b/rootfs.partial/sys/fs/cgroup rw - cgroup2 cgroup2 rw
43 22 0:8 / /work/b/rootfs.partial2/proc rw - proc proc rw
44 22 0:9 / /work/b/with\\040space/proc rw - proc proc rw
";

    #[test]
    fn finds_mounts_below_a_root_deepest_first() {
        let found = mounts_under(TABLE, Path::new("/work/b/rootfs.partial"));
        assert_eq!(
            found,
            vec![
                PathBuf::from("/work/b/rootfs.partial/sys/fs/cgroup"),
                PathBuf::from("/work/b/rootfs.partial/proc"),
                PathBuf::from("/work/b/rootfs.partial/sys"),
            ]
        );
    }

    #[test]
    fn unescapes_mount_points() {
        let found = mounts_under(TABLE, Path::new("/work/b/with space"));
        assert_eq!(found, vec![PathBuf::from("/work/b/with space/proc")]);
    }

    #[test]
    fn removes_an_unmounted_tree_and_tolerates_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("rootfs.partial");
        fs::create_dir_all(tree.join("usr/bin")).expect("mkdir");
        fs::write(tree.join("usr/bin/x"), "x").expect("write");
        std::os::unix::fs::symlink("/etc", tree.join("etc")).expect("symlink");
        let table = dir.path().join("mountinfo");
        fs::write(&table, TABLE).expect("write");
        remove_tree(&tree, &table).expect("removed");
        assert!(!tree.exists());
        assert!(Path::new("/etc").exists(), "symlinks are not followed");
        remove_tree(&tree, &table).expect("missing is fine");
    }
}
