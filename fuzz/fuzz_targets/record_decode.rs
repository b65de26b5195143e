//! Arbitrary bytes as a segment file region: decoding one record and scanning for the
//! records that follow must never panic or over-allocate, whatever the size fields claim.
#![no_main]

use bytes::Bytes;
use ferrymq_store::record::{decode, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let mut at = 0;
    while at < data.len() {
        match decode(&data.slice(at..)) {
            Ok(Decoded::Record(record, len)) => {
                assert!(len >= record.body.len());
                at += len;
            }
            Ok(Decoded::Incomplete) => break,
            Err(_) => at += 1,
        }
    }
});
