//! Fuzzes the JSON decoding of every control-plane type (job spec with its validation, node
//! registration, heartbeat, worker hello/ready/assignment, zygote lines, progress, end,
//! status, error bodies, failure info). The first byte picks the type, the rest is the JSON.
//! A decoded value must serialize and decode back to an equal value.

#![no_main]

use agent_proto::{
    Assignment, ErrorBody, FailureInfo, HeartbeatAnswer, JobEnd, JobProgress, JobSpec, JobStatus,
    NodeInfo, NodeRegistration, NodeView, WorkerHello, WorkerReady, ZygoteCommand, ZygoteEvent,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `json` as `T`; if it decodes, checks that it round-trips through JSON.
fn round_trip<T>(json: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let value: T = serde_json::from_slice(json).ok()?;
    let text = serde_json::to_vec(&value).expect("a decoded value serializes");
    let back: T = serde_json::from_slice(&text).expect("a serialized value decodes");
    assert_eq!(back, value, "JSON round trip");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    match selector % 15 {
        0 => {
            // f64 timeouts may move by an ulp through JSON, so JobSpec is compared by fields.
            if let Ok(spec) = serde_json::from_slice::<JobSpec>(json) {
                let valid = spec.validate();
                let cap = spec.instance_cap();
                assert!(cap >= 1, "a job may always run one instance");
                assert!(cap <= 4000);
                let _ = spec.ram_bytes();
                let text = serde_json::to_vec(&spec).expect("serializes");
                let back: JobSpec = serde_json::from_slice(&text).expect("decodes");
                assert_eq!(back.job_id, spec.job_id);
                assert_eq!(back.environment, spec.environment);
                assert_eq!(back.validate().is_ok(), valid.is_ok());
                if let Err(err) = valid {
                    assert!(!err.to_string().is_empty());
                }
            }
        }
        1 => {
            round_trip::<NodeRegistration>(json);
        }
        2 => {
            if let Some(info) = round_trip::<NodeInfo>(json) {
                let _ = info.could_fit(1, 1 << 30);
                let _ = info.free_instances(1, 1 << 30);
                let _ = info.free_instances(0, 0);
            }
        }
        3 => {
            round_trip::<NodeView>(json);
        }
        4 => {
            round_trip::<HeartbeatAnswer>(json);
        }
        5 => {
            round_trip::<WorkerHello>(json);
        }
        6 => {
            round_trip::<WorkerReady>(json);
        }
        7 => {
            round_trip::<Assignment>(json);
        }
        8 => {
            round_trip::<ZygoteEvent>(json);
        }
        9 => {
            round_trip::<ZygoteCommand>(json);
        }
        10 => {
            round_trip::<JobProgress>(json);
        }
        11 => {
            round_trip::<JobEnd>(json);
        }
        12 => {
            round_trip::<JobStatus>(json);
        }
        13 => {
            round_trip::<ErrorBody>(json);
        }
        _ => {
            round_trip::<FailureInfo>(json);
        }
    }
});
