//! CPU priority of pool processes: the zygote (and so every idle worker it forks, since the
//! policy is inherited across `fork`) runs under `SCHED_IDLE`, so that forking and warming
//! replacements only ever uses CPU time no job wants; a worker is put back to `SCHED_OTHER` at
//! nice 0 when a job takes it.
//!
//! Why `SCHED_IDLE` and not a nice value: a refill starts the moment a job takes its worker,
//! on the same few CPUs. At nice 10 the fork and the new interpreter's start still got CPU
//! slices ahead of the job's own worker (seen on a 2-CPU node: a 1 ms fork ran while the
//! job's runnable worker waited), so a one-input job paid for the refill. A `SCHED_IDLE` task
//! is preempted by any normal task that wakes on its CPU and gets the smallest share beside
//! runnable ones; it is a mitigation, not a guarantee (a later trace still showed one fork
//! picked ahead of a worker that was already runnable on its CPU). Idle CPUs still run it at
//! full speed, and a slot's CPUs are free whenever a slot is, so a job waiting for a worker is
//! not starved by other jobs.
//!
//! Only done as root: leaving `SCHED_IDLE` needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` that
//! allows it), and a worker must never run a job at idle priority.

use tracing::warn;

/// Whether this process may put workers back to normal priority (it is root).
pub fn can_renice() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Sets the scheduling policy of process `pid` (its main thread) at static priority 0.
#[allow(unsafe_code)]
fn set_policy(pid: u32, policy: libc::c_int) -> std::io::Result<()> {
    let who =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param that outlives the call, which only reads it.
    let rc = unsafe { libc::sched_setscheduler(who, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sets the nice value of process `pid`.
#[allow(unsafe_code)]
fn set_nice(pid: u32, nice: i32) -> std::io::Result<()> {
    let who = libc::id_t::from(pid);
    // SAFETY: setpriority takes plain integers and reads or writes no memory of this process.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, who, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Idle priority for a new zygote, if this process can undo it for workers.
pub fn lower(pid: u32) -> bool {
    if !can_renice() {
        return false;
    }
    match set_policy(pid, libc::SCHED_IDLE) {
        Ok(()) => true,
        Err(err) => {
            warn!(pid, cause = %err, "cannot put the zygote at idle priority");
            false
        }
    }
}

/// Normal priority for a worker taken from the pool.
pub fn raise(pid: u32) {
    if let Err(err) = set_policy(pid, libc::SCHED_OTHER).and_then(|()| set_nice(pid, 0)) {
        warn!(pid, cause = %err, "cannot restore a worker's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(pid: u32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        let rest = stat.rsplit_once(')').expect("comm").1;
        // Field 41 of stat is the policy; `rest` starts at field 3.
        rest.split_whitespace()
            .nth(38)
            .expect("policy")
            .parse()
            .expect("int")
    }

    #[test]
    fn lowered_to_idle_and_raised_again() {
        if !can_renice() {
            eprintln!(
                "SKIPPED lowered_to_idle_and_raised_again: not root, cannot raise priorities"
            );
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(lower(pid));
        assert_eq!(policy_of(pid), libc::SCHED_IDLE);
        raise(pid);
        assert_eq!(policy_of(pid), libc::SCHED_OTHER);
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn a_fork_inherits_idle_priority() {
        if !can_renice() {
            eprintln!("SKIPPED a_fork_inherits_idle_priority: not root, cannot raise priorities");
            return;
        }
        // A shell at idle priority forks `sleep`: the child is what a zygote's fork would be.
        let mut shell = crate::runtime::forking_shell::ForkingShell::start();
        assert!(lower(shell.pid()));
        let child = shell.fork_child();
        assert_eq!(policy_of(child), libc::SCHED_IDLE);
    }
}
