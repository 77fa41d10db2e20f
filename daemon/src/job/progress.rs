//! The per-worker progress file (`docs/protocol.md` §4.4–4.5): 16 bytes the worker updates
//! through mmap before each input (`index+1` at offset 0, `time.monotonic_ns()` at offset 8)
//! and the daemon reads only when a worker dies or to check timeouts.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Size of the file.
pub const PROGRESS_LEN: usize = 16;

/// What a worker was doing when the file was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The input being run, `None` between inputs.
    pub index: Option<u64>,
    /// `CLOCK_MONOTONIC` nanoseconds when it started.
    pub started_ns: u64,
}

impl Progress {
    /// Parses the file's 16 bytes.
    pub fn parse(bytes: &[u8; PROGRESS_LEN]) -> Self {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[..8]);
        let raw = u64::from_le_bytes(word);
        word.copy_from_slice(&bytes[8..]);
        Self {
            index: raw.checked_sub(1),
            started_ns: u64::from_le_bytes(word),
        }
    }

    /// How long the current input has run at monotonic time `now_ns`.
    pub fn running_for(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.started_ns))
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock Python's `time.monotonic_ns` reads).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|ts| {
            u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(ts.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

/// One worker's progress file; removed when dropped.
#[derive(Debug)]
pub struct ProgressFile {
    path: PathBuf,
    file: File,
}

impl ProgressFile {
    /// Creates (or truncates) the file with 16 zero bytes.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.write_all_at(&[0u8; PROGRESS_LEN], 0)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Its path, for the ASSIGN frame.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the current state (one `pread`); all zeroes if the read fails.
    pub fn read(&self) -> Progress {
        let mut bytes = [0u8; PROGRESS_LEN];
        if self.file.read_exact_at(&mut bytes, 0).is_err() {
            bytes = [0u8; PROGRESS_LEN];
        }
        Progress::parse(&bytes)
    }
}

impl Drop for ProgressFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_between_inputs() {
        let p = Progress::parse(&[0u8; 16]);
        assert_eq!(p.index, None);
    }

    #[test]
    fn index_is_stored_plus_one() {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&18u64.to_le_bytes());
        bytes[8..].copy_from_slice(&5_000u64.to_le_bytes());
        let p = Progress::parse(&bytes);
        assert_eq!(p.index, Some(17));
        assert_eq!(p.running_for(7_000), Duration::from_nanos(2_000));
        assert_eq!(p.running_for(1_000), Duration::ZERO);
    }

    #[test]
    fn file_round_trip_and_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p");
        let file = ProgressFile::create(&path).expect("create");
        assert_eq!(std::fs::metadata(&path).expect("exists").len(), 16);
        assert_eq!(file.read().index, None);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(file.read().index, Some(u64::MAX - 1));
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        std::thread::sleep(Duration::from_millis(2));
        assert!(monotonic_ns() > a);
    }
}
