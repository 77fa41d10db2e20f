//! Fuzzes the frame decoder with arbitrary byte streams fed in arbitrary chunk sizes.
//!
//! Properties beyond "no panic": the frames decoded from a stream re-encode to exactly the
//! bytes they were read from; feeding the stream in small chunks gives the same frames and the
//! same error as feeding it at once; and every frame body goes through its kind's decoder
//! (`BatchView`, `Failure`, `Output`, the JSON types) without panicking.

#![no_main]

use agent_proto::{
    BatchView, Failure, Frame, FrameDecoder, FrameError, FrameKind, ItemBatch, JobEnd, JobProgress,
    JobSpec, Output, WorkerHello, WorkerReady,
};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Decodes `wire` fed `chunk` bytes at a time: the frames, and the error that stopped it.
fn decode(wire: &[u8], chunk: usize, max: usize) -> (Vec<Frame>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for piece in wire.chunks(chunk.max(1)) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return (frames, Some(err)),
            }
        }
    }
    let end = decoder.finish().err();
    (frames, end)
}

/// Runs the kind-specific decoder over one frame body, checking round trips where cheap.
fn parse_body(frame: &Frame) {
    match frame.kind {
        FrameKind::Inputs | FrameKind::Results => {
            if let Ok(view) = BatchView::from_frame(frame) {
                let batch = ItemBatch::from_frame(frame).expect("view and batch agree");
                assert_eq!(view.len(), batch.len());
                assert_eq!(batch.encode(), frame.body, "batch re-encodes to its body");
            } else {
                assert!(
                    ItemBatch::from_frame(frame).is_err(),
                    "view and batch agree"
                );
            }
        }
        FrameKind::Failure => {
            if let Ok(failure) = Failure::from_frame(frame) {
                let again = Failure::from_frame(&failure.to_frame()).expect("re-encoded failure");
                assert_eq!(again, failure);
            }
        }
        FrameKind::Output => {
            if let Ok(output) = Output::from_frame(frame) {
                assert_eq!(output.to_frame(), *frame, "output re-encodes to its frame");
            }
        }
        FrameKind::Spec => {
            if let Ok(spec) = frame.parse_json::<JobSpec>() {
                let _ = spec.validate();
                let _ = spec.instance_cap();
            }
        }
        FrameKind::Status => {
            let _ = frame.parse_json::<JobProgress>();
        }
        FrameKind::End => {
            let _ = frame.parse_json::<JobEnd>();
        }
        FrameKind::Hello => {
            let _ = frame.parse_json::<WorkerHello>();
        }
        FrameKind::Ready => {
            let _ = frame.parse_json::<WorkerReady>();
        }
        FrameKind::Assign => {
            let _ = frame.parse_json::<agent_proto::Assignment>();
        }
        FrameKind::Function | FrameKind::InputsEnd | FrameKind::Shutdown => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&[chunk, limit], wire)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Small limits so that FrameTooLarge is reached often; 0 means "default".
    let max = if limit == 0 {
        agent_proto::DEFAULT_MAX_FRAME_BYTES
    } else {
        usize::from(limit) * 16
    };
    let (whole, whole_err) = decode(wire, wire.len(), max);
    let (pieces, pieces_err) = decode(wire, usize::from(chunk % 64) + 1, max);
    assert_eq!(whole, pieces, "chunking does not change the frames");
    assert_eq!(whole_err, pieces_err, "chunking does not change the error");

    let mut encoded = BytesMut::new();
    for frame in &whole {
        frame.encode_into(&mut encoded);
        parse_body(frame);
    }
    assert_eq!(
        &encoded[..],
        &wire[..encoded.len()],
        "frames re-encode to their bytes"
    );
    if whole_err.is_none() {
        assert_eq!(encoded.len(), wire.len(), "a clean stream is all frames");
    }
});
