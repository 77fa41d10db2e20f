//! SIGKILL and "wait until gone", shared by every flavour.

use std::collections::BTreeSet;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::error::SandboxError;

/// How long a kill waits for the processes to be gone.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(1);

/// Pause between two looks at a dying cgroup.
const POLL: Duration = Duration::from_millis(5);

/// A signalable pid: 1..=i32::MAX and not this process. Anything else (0, values that turn
/// negative as `pid_t`) would signal a process group, so it is never signalled.
fn target(pid: u32) -> Option<Pid> {
    let raw = i32::try_from(pid).ok().filter(|&raw| raw > 0)?;
    (pid != std::process::id()).then(|| Pid::from_raw(raw))
}

/// Sends SIGKILL; a process that is already gone is not an error.
pub(crate) fn sigkill(pid: u32) {
    let Some(target) = target(pid) else {
        warn!(pid, "refusing to signal this pid");
        return;
    };
    match kill(target, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => warn!(pid, cause = %errno, "SIGKILL failed"),
    }
}

/// Whether a process with this pid exists (zombies included).
pub(crate) fn exists(pid: u32) -> bool {
    match target(pid) {
        Some(target) => !matches!(kill(target, None), Err(Errno::ESRCH)),
        None => false,
    }
}

/// Kills the processes `list` reports until it reports none (or [`KILL_WAIT`] has passed),
/// calling `kill_round` with the live pids each round (processes may fork while dying).
/// Returns how many distinct processes were seen and killed. Pids that `list` still names
/// but that no longer exist count as gone. `what` names the cgroup in logs.
pub(crate) fn kill_until_empty(
    what: &Path,
    mut list: impl FnMut() -> Result<Vec<u32>, SandboxError>,
    mut kill_round: impl FnMut(&[u32]) -> Result<(), SandboxError>,
) -> Result<usize, SandboxError> {
    let deadline = Instant::now() + KILL_WAIT;
    let mut seen = BTreeSet::new();
    loop {
        let live: Vec<u32> = list()?.into_iter().filter(|&pid| exists(pid)).collect();
        if live.is_empty() {
            debug!(cgroup = %what.display(), killed = seen.len(), "cgroup empty");
            return Ok(seen.len());
        }
        seen.extend(live.iter().copied());
        if Instant::now() >= deadline {
            warn!(
                cgroup = %what.display(),
                left = live.len(),
                "processes still present after SIGKILL and {KILL_WAIT:?}"
            );
            return Ok(seen.len());
        }
        kill_round(&live)?;
        thread::sleep(POLL);
    }
}

/// A kill round that SIGKILLs each pid.
pub(crate) fn sigkill_each(pids: &[u32]) -> Result<(), SandboxError> {
    pids.iter().copied().for_each(sigkill);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn never_targets_groups_or_self() {
        assert!(target(0).is_none());
        assert!(target(u32::MAX).is_none());
        assert!(target(std::process::id()).is_none());
        assert!(!exists(0));
        assert!(target(1).is_some());
    }

    #[test]
    fn kills_a_real_child_and_counts_it() {
        let mut child = Command::new("sleep")
            .arg("100")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Reap in the background so the pid disappears once killed, as in a real cgroup
        // (where a zombie is no longer listed).
        let reaper = thread::spawn(move || child.wait().expect("wait"));
        let killed =
            kill_until_empty(Path::new("test"), || Ok(vec![pid]), sigkill_each).expect("kill");
        assert_eq!(killed, 1);
        let status = reaper.join().expect("reaper");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
        assert!(!exists(pid));
    }

    #[test]
    fn empty_list_kills_nothing() {
        let killed =
            kill_until_empty(Path::new("test"), || Ok(vec![]), sigkill_each).expect("kill");
        assert_eq!(killed, 0);
    }
}
