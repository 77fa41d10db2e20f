//! Per-input failures: the body of `FAILURE` frames and the kinds of failure.
//!
//! Layout: `index:u64 json_len:u32 json:FailureInfo exc:bytes(rest)`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{Frame, FrameError, FrameKind};

/// Why an input produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The function raised; the pickled exception travels with the failure.
    Exception,
    /// The instance was killed by the kernel for exceeding `func_ram`.
    Oom,
    /// The worker process exited while running the input.
    Exited,
    /// The worker process died from a signal while running the input.
    Killed,
    /// The input ran past the job's `timeout_s`.
    Timeout,
    /// The function's return value could not be pickled.
    UnpicklableResult,
    /// The function could not be unpickled on the node.
    FunctionLoad,
    /// The node holding the input disappeared and no node could re-run it.
    Lost,
}

impl FailureKind {
    /// Every kind, in declaration order.
    pub const ALL: [Self; 8] = [
        Self::Exception,
        Self::Oom,
        Self::Exited,
        Self::Killed,
        Self::Timeout,
        Self::UnpicklableResult,
        Self::FunctionLoad,
        Self::Lost,
    ];

    /// The kind as the wire spells it (`exception`, `oom`, `unpicklable_result`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exception => "exception",
            Self::Oom => "oom",
            Self::Exited => "exited",
            Self::Killed => "killed",
            Self::Timeout => "timeout",
            Self::UnpicklableResult => "unpicklable_result",
            Self::FunctionLoad => "function_load",
            Self::Lost => "lost",
        }
    }

    /// Whether this failure means the instance died (these are the ones `retries` re-run).
    pub fn is_instance_death(self) -> bool {
        matches!(
            self,
            Self::Oom | Self::Exited | Self::Killed | Self::Timeout
        )
    }

    /// Whether this failure ends a job that has `stop_on_exception` set.
    pub fn stops_job(self) -> bool {
        matches!(
            self,
            Self::Exception | Self::UnpicklableResult | Self::FunctionLoad
        )
    }
}

/// The JSON part of a failure: what happened, in one sentence, plus details for rebuilding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureInfo {
    /// What kind of failure this is.
    pub kind: FailureKind,
    /// One sentence naming the input and what to change.
    pub message: String,
    /// Exception type name (`ValueError`), for `exception` failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub type_name: Option<String>,
    /// Module of the exception type (`builtins`), for `exception` failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// The remote traceback, formatted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// How many times the input was run.
    #[serde(default = "one")]
    pub attempts: u32,
    /// Exit code of the worker, for `exited` failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that killed the worker, for `killed` failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Node the input ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn one() -> u32 {
    1
}

impl FailureInfo {
    /// A failure of `kind` with `message` and no other detail.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            type_name: None,
            module: None,
            traceback: None,
            attempts: 1,
            exit_code: None,
            signal: None,
            node: None,
        }
    }
}

/// A decoded `FAILURE` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The input that failed (`NO_INDEX` when not attributable).
    pub index: u64,
    /// What happened.
    pub info: FailureInfo,
    /// Pickled exception (may be empty): opaque, unpickled only by the client.
    pub exception: Bytes,
}

impl Failure {
    /// A failure without pickled exception.
    pub fn new(index: u64, info: FailureInfo) -> Self {
        Self {
            index,
            info,
            exception: Bytes::new(),
        }
    }

    /// Encodes as a `FAILURE` frame.
    pub fn to_frame(&self) -> Frame {
        let json = serde_json::to_vec(&self.info).unwrap_or_default();
        let mut body = BytesMut::with_capacity(12 + json.len() + self.exception.len());
        body.put_u64_le(self.index);
        body.put_u32_le(u32::try_from(json.len()).unwrap_or(u32::MAX));
        body.put_slice(&json);
        body.put_slice(&self.exception);
        Frame::new(FrameKind::Failure, body.freeze())
    }

    /// Decodes a `FAILURE` frame.
    pub fn from_frame(frame: &Frame) -> Result<Self, FrameError> {
        let malformed = |reason: String| FrameError::Malformed {
            kind: FrameKind::Failure,
            reason,
        };
        frame.expect_kind(FrameKind::Failure)?;
        let body = &frame.body;
        if body.len() < 12 {
            return Err(malformed(format!(
                "{} bytes is shorter than 12",
                body.len()
            )));
        }
        let mut index = [0u8; 8];
        index.copy_from_slice(&body[..8]);
        let json_len = u32::from_le_bytes([body[8], body[9], body[10], body[11]]) as usize;
        let json_end = 12usize
            .checked_add(json_len)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| malformed(format!("json length {json_len} runs past the body")))?;
        let info: FailureInfo = serde_json::from_slice(&body[12..json_end])
            .map_err(|e| malformed(format!("failure info: {e}")))?;
        Ok(Self {
            index: u64::from_le_bytes(index),
            info,
            exception: body.slice(json_end..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_wire_names() {
        for (i, kind) in FailureKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "ALL is in declaration order");
            let wire = serde_json::to_value(kind).expect("serializes");
            assert_eq!(wire, serde_json::Value::from(kind.as_str()));
        }
    }

    #[test]
    fn failure_round_trips() {
        let mut info = FailureInfo::new(FailureKind::Exception, "input 3 raised ValueError: x");
        info.type_name = Some("ValueError".into());
        info.traceback = Some("Traceback ...".into());
        let failure = Failure {
            index: 3,
            info,
            exception: Bytes::from_static(b"\x80\x05pickled"),
        };
        let decoded = Failure::from_frame(&failure.to_frame()).expect("valid failure");
        assert_eq!(decoded, failure);
    }

    #[test]
    fn python_json_with_missing_fields_takes_defaults() {
        let json = br#"{"kind":"oom","message":"input 1 was killed: out of memory"}"#;
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&(json.len() as u32).to_le_bytes());
        body.extend_from_slice(json);
        let decoded =
            Failure::from_frame(&Frame::new(FrameKind::Failure, body)).expect("valid failure");
        assert_eq!(decoded.info.kind, FailureKind::Oom);
        assert_eq!(decoded.info.attempts, 1);
        assert!(decoded.exception.is_empty());
    }

    #[test]
    fn json_length_past_the_body_is_refused() {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = Failure::from_frame(&Frame::new(FrameKind::Failure, body)).expect_err("bad");
        assert!(err.to_string().contains("runs past the body"), "{err}");
    }

    #[test]
    fn kinds_classify() {
        assert!(FailureKind::Oom.is_instance_death());
        assert!(!FailureKind::Exception.is_instance_death());
        assert!(FailureKind::Exception.stops_job());
        assert!(!FailureKind::Timeout.stops_job());
        assert_eq!(
            serde_json::to_string(&FailureKind::UnpicklableResult).expect("serializes"),
            "\"unpicklable_result\""
        );
    }
}
