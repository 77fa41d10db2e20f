//! Fuzzes item batch decoding: `batch::validate`, `BatchView` and `ItemBatch` must agree on
//! every body, and a valid body re-encodes to exactly itself (the layout is canonical).

#![no_main]

use agent_proto::batch::{encode_items, validate};
use agent_proto::{BatchView, ItemBatch};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let checked = validate(data);
    let view = BatchView::parse(body.clone());
    let batch = ItemBatch::decode(&body);
    match (checked, view, batch) {
        (Ok(count), Ok(view), Ok(batch)) => {
            assert_eq!(view.len(), count);
            assert_eq!(batch.len(), count);
            let items: Vec<_> = view.items().collect();
            assert_eq!(items, batch.items, "view and batch yield the same items");
            let mut offset = 4 + 12 * count;
            for (index, at, len) in view.iter() {
                assert_eq!(at, offset, "payloads are contiguous");
                assert!(at + len <= data.len());
                offset += len;
                let _ = index;
            }
            assert_eq!(offset, data.len(), "payloads end the body");
            assert_eq!(batch.encode(), body, "decode then encode is the identity");
            assert_eq!(encode_items(&batch.items), body);
            assert_eq!(batch.payload_bytes(), data.len() - 4 - 12 * count);
        }
        (Err(a), Err(b), Err(c)) => {
            assert_eq!(a, b);
            assert_eq!(b, c);
        }
        (a, b, c) => panic!(
            "validate, BatchView and ItemBatch disagree: {:?} {:?} {:?}",
            a,
            b.map(|v| v.len()),
            c.map(|b| b.len())
        ),
    }
});
