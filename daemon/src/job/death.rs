//! Why a worker died during an input (`docs/protocol.md` §4.7–4.8), and the one-sentence
//! failure that names the input and what to change.

use agent_proto::{FailureInfo, FailureKind};
use nix::sys::signal::Signal;

use crate::runtime::ExitStatus;

/// How a worker running an input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// The kernel's OOM killer killed it (the slot's OOM-kill counter rose).
    Oom,
    /// The process exited with this code.
    Exited(i32),
    /// A signal killed it (`None`: the status never arrived).
    Killed(Option<i32>),
    /// The daemon killed it because the input ran past `timeout_s`.
    Timeout,
}

impl Death {
    /// Classifies a death. The daemon's own timeout kill explains a SIGKILL best; an OOM kill
    /// also shows as SIGKILL, so the OOM counter comes before the exit status.
    pub fn classify(timed_out: bool, oom_rose: bool, status: Option<ExitStatus>) -> Self {
        if timed_out {
            return Self::Timeout;
        }
        if oom_rose {
            return Self::Oom;
        }
        match status {
            Some(ExitStatus {
                code: Some(code), ..
            }) => Self::Exited(code),
            Some(ExitStatus { signal, .. }) => Self::Killed(signal),
            None => Self::Killed(None),
        }
    }

    /// The failure kind reported.
    pub fn kind(self) -> FailureKind {
        match self {
            Self::Oom => FailureKind::Oom,
            Self::Exited(_) => FailureKind::Exited,
            Self::Killed(_) => FailureKind::Killed,
            Self::Timeout => FailureKind::Timeout,
        }
    }

    /// The failure for `index` after `attempts` runs, with its sentence.
    pub fn failure(
        self,
        index: u64,
        attempts: u32,
        func_ram_gb: u32,
        timeout_s: Option<f64>,
        node: &str,
    ) -> FailureInfo {
        let tries = if attempts > 1 {
            format!(" on each of {attempts} attempts")
        } else {
            String::new()
        };
        let message = match self {
            Self::Oom => format!(
                "input {index} was killed: out of memory (func_ram={func_ram_gb} GB){tries}; raise func_ram or use less memory per input"
            ),
            Self::Exited(code) => format!(
                "input {index} ended its worker with exit code {code} (os._exit, sys.exit or a crash){tries}; do not exit the process from the function, or set retries to run such inputs again"
            ),
            Self::Killed(Some(signal)) => format!(
                "input {index} was killed by signal {signal} ({}){tries}; fix the crash in the function, or set retries to run such inputs again",
                signal_name(signal)
            ),
            Self::Killed(None) => format!(
                "input {index} ended its worker unexpectedly{tries}; fix the crash in the function, or set retries to run such inputs again"
            ),
            Self::Timeout => format!(
                "input {index} ran longer than timeout={} s and was stopped{tries}; raise timeout or make the function faster on this input",
                timeout_s.unwrap_or_default()
            ),
        };
        let mut info = FailureInfo::new(self.kind(), message);
        info.attempts = attempts;
        info.node = Some(node.to_string());
        if let Self::Exited(code) = self {
            info.exit_code = Some(code);
        }
        if let Self::Killed(signal) = self {
            info.signal = signal;
        }
        info
    }
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map_or("unknown signal", Signal::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> Option<ExitStatus> {
        Some(ExitStatus {
            code: Some(code),
            signal: None,
        })
    }

    fn signalled(signal: i32) -> Option<ExitStatus> {
        Some(ExitStatus {
            code: None,
            signal: Some(signal),
        })
    }

    #[test]
    fn classification_precedence() {
        assert_eq!(Death::classify(true, true, signalled(9)), Death::Timeout);
        assert_eq!(Death::classify(false, true, signalled(9)), Death::Oom);
        assert_eq!(Death::classify(false, false, exited(3)), Death::Exited(3));
        assert_eq!(
            Death::classify(false, false, signalled(11)),
            Death::Killed(Some(11))
        );
        assert_eq!(Death::classify(false, false, None), Death::Killed(None));
    }

    #[test]
    fn sentences_name_the_input_and_what_to_change() {
        let oom = Death::Oom.failure(17, 1, 1, None, "node-a");
        assert_eq!(oom.kind, FailureKind::Oom);
        assert_eq!(
            oom.message,
            "input 17 was killed: out of memory (func_ram=1 GB); raise func_ram or use less memory per input"
        );
        assert_eq!(oom.node.as_deref(), Some("node-a"));
        let exit = Death::Exited(3).failure(5, 1, 1, None, "n");
        assert!(exit
            .message
            .starts_with("input 5 ended its worker with exit code 3 (os._exit"));
        assert_eq!(exit.exit_code, Some(3));
        let segv = Death::Killed(Some(11)).failure(2, 3, 1, None, "n");
        assert!(
            segv.message
                .contains("signal 11 (SIGSEGV) on each of 3 attempts"),
            "{}",
            segv.message
        );
        assert_eq!(segv.signal, Some(11));
        assert_eq!(segv.attempts, 3);
        let slow = Death::Timeout.failure(8, 1, 1, Some(0.5), "n");
        assert!(slow.message.contains("timeout=0.5 s"), "{}", slow.message);
        assert_eq!(slow.kind, FailureKind::Timeout);
        for info in [oom, exit, segv, slow] {
            assert_eq!(info.message.matches(';').count(), 1, "{}", info.message);
            assert!(!info.message.ends_with('.'));
        }
    }
}
