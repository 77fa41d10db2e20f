//! Disk facts for the sentences of builds that ran out of space: whether a build's text
//! reports ENOSPC, and how much room a filesystem has left.

use std::path::Path;

/// Whether an engine's or a build step's text reports ENOSPC (`dd`, `cp`, pip and the Docker
/// engine's own layer copies all say it this way, in either case).
pub fn mentions_no_space(text: &str) -> bool {
    text.to_ascii_lowercase()
        .contains("no space left on device")
        || text.contains("[Errno 28]")
}

/// Bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    // fsblkcnt_t and c_ulong are not u64 on every target.
    #[allow(clippy::unnecessary_cast)]
    let bytes = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    Some(bytes)
}

/// "N MiB free now" for the filesystem holding `path`, for a message.
pub fn free_now(path: &Path) -> String {
    match free_bytes(path) {
        Some(bytes) => format!("{} MiB free now", bytes >> 20),
        None => "free space unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_recognised_however_a_step_says_it() {
        assert!(mentions_no_space(
            "dd: error writing '/fill': No space left on device"
        ));
        assert!(mentions_no_space(
            "failed to copy files: write /var/lib/docker/vfs/dir/x: no space left on device"
        ));
        assert!(mentions_no_space("OSError: [Errno 28] while installing"));
        assert!(!mentions_no_space(
            "The command '/bin/sh -c false' returned a non-zero code: 1"
        ));
    }

    #[test]
    fn free_space_is_read_from_the_filesystem() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
        assert!(free_now(dir.path()).ends_with("MiB free now"));
        assert_eq!(free_now(&dir.path().join("missing")), "free space unknown");
    }
}
