//! CPU priority of pool processes: the zygote (and so every idle worker it forks) runs niced,
//! so that forking and warming replacements never slows a running job on a busy machine; a
//! worker is raised back to normal priority when a job takes it.
//!
//! Only done as root: raising a priority back needs `CAP_SYS_NICE`, and a worker must never
//! run a job niced.

use tracing::warn;

/// Nice value of the zygote and idle workers.
pub const POOL_NICE: i32 = 10;

/// Whether this process may lower nice values again (it is root).
pub fn can_renice() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sets the nice value of process `pid`.
#[allow(unsafe_code)]
pub fn set_nice(pid: u32, nice: i32) -> std::io::Result<()> {
    let who = libc::id_t::from(pid);
    // SAFETY: setpriority takes plain integers and reads or writes no memory of this process.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, who, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Niceness for a new zygote, if this process can undo it for workers.
pub fn lower(pid: u32) -> bool {
    if !can_renice() {
        return false;
    }
    match set_nice(pid, POOL_NICE) {
        Ok(()) => true,
        Err(err) => {
            warn!(pid, cause = %err, "cannot lower the zygote's priority");
            false
        }
    }
}

/// Normal priority for a worker taken from the pool.
pub fn raise(pid: u32) {
    if let Err(err) = set_nice(pid, 0) {
        warn!(pid, cause = %err, "cannot restore a worker's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice_of(pid: u32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let rest = stat.rsplit_once(')').expect("comm").1;
        rest.split_whitespace()
            .nth(16)
            .expect("nice")
            .parse()
            .expect("int")
    }

    #[test]
    fn lowered_and_raised_again() {
        if !can_renice() {
            eprintln!("SKIPPED lowered_and_raised_again: not root, cannot raise priorities");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(lower(pid));
        assert_eq!(nice_of(pid), POOL_NICE);
        raise(pid);
        assert_eq!(nice_of(pid), 0);
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}
