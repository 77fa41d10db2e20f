//! Fuzzes the FAILURE and OUTPUT frame bodies: no panic on any body, and a decoded value
//! survives encode then decode unchanged (OUTPUT bodies re-encode byte for byte).

#![no_main]

use agent_proto::{Failure, Frame, FrameKind, Output};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let failure_frame = Frame::new(FrameKind::Failure, body.clone());
    if let Ok(failure) = Failure::from_frame(&failure_frame) {
        let again = Failure::from_frame(&failure.to_frame()).expect("an encoded failure decodes");
        assert_eq!(again, failure);
        assert_eq!(
            &failure.exception[..],
            &data[data.len() - failure.exception.len()..]
        );
        let _ = failure.info.kind.stops_job();
        let _ = failure.info.kind.is_instance_death();
    }
    let output_frame = Frame::new(FrameKind::Output, body);
    if let Ok(output) = Output::from_frame(&output_frame) {
        assert_eq!(output.to_frame(), output_frame);
    }
    // The wrong kind is refused, never misread.
    assert!(Failure::from_frame(&Frame::new(FrameKind::Output, Bytes::new())).is_err());
});
