//! Timer slack of function instances: the process runtime's zygote (and so every worker it
//! forks, since the slack is inherited across `fork`) and each warm container's worker get the
//! smallest slack Linux allows, so that a function's sleeps, timeouts and polls end when they
//! ask to, not up to 50 µs later.
//!
//! Linux lets the timer of a normal task fire up to its slack late (50 µs by default) so that
//! wake-ups on a shared machine can be batched. A function instance owns its CPUs, so there is
//! nothing to batch with; on the 2-CPU VM a `time.sleep(0.01)` overshot by 160–190 µs at the
//! default slack and by 110 µs at 1 ns, which is 5 ms per 100 such sleeps (see
//! docs/benchmarks.md, 200 × 10 ms). Realtime tasks already get no slack; a value of 0 would
//! mean "back to the default", hence 1 ns.
//!
//! Setting another process's slack (`/proc/<pid>/timerslack_ns`) needs `CAP_SYS_NICE`: as an
//! unprivileged daemon this is skipped and logged (once per zygote, or per container).

use tracing::{debug, warn};

/// The slack given to workers (and the zygote that forks them), in nanoseconds.
pub const WORKER_TIMER_SLACK_NS: u64 = 1;

/// Gives process `pid` the workers' timer slack; whether it took.
pub fn tighten(pid: u32) -> bool {
    let path = format!("/proc/{pid}/timerslack_ns");
    match std::fs::write(&path, WORKER_TIMER_SLACK_NS.to_string()) {
        Ok(()) => {
            debug!(pid, slack_ns = WORKER_TIMER_SLACK_NS, "timer slack set");
            true
        }
        Err(err) => {
            warn!(pid, cause = %err, "cannot tighten a worker's timer slack; it keeps the default (up to 50 µs late wake-ups)");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pid: u32) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/timerslack_ns"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn tightened_and_inherited_by_a_fork() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED tightened_and_inherited_by_a_fork: not root, cannot set another process's timer slack");
            return;
        }
        // A shell whose slack is tightened forks `sleep`: the child is what a zygote's fork is.
        let mut shell = crate::runtime::forking_shell::ForkingShell::start();
        let default = of(shell.pid()).expect("readable");
        assert_ne!(
            default, WORKER_TIMER_SLACK_NS,
            "the test needs a default slack to change"
        );
        assert!(tighten(shell.pid()));
        assert_eq!(of(shell.pid()), Some(WORKER_TIMER_SLACK_NS));
        let child = shell.fork_child();
        assert_eq!(of(child), Some(WORKER_TIMER_SLACK_NS));
    }

    #[test]
    fn a_missing_process_is_reported_not_fatal() {
        assert!(!tighten(u32::MAX));
        assert_eq!(of(u32::MAX), None);
    }
}
