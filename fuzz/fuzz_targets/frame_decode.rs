//! Feeds arbitrary bytes to `decode_frame` with a small frame-max, then
//! exercises everything a decoded frame can be asked for: lazy property
//! accessors, full property decode, field-table decode of body bytes, and
//! re-encoding. Decoding must never panic, whatever the input.

#![no_main]

use ferrymq_wire::{decode_frame, encode_method, FieldTable, Frame, Method};
use libfuzzer_sys::fuzz_target;

const FRAME_MAX_BYTES: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut src = bytes::BytesMut::from(data);
    loop {
        match decode_frame(&mut src, FRAME_MAX_BYTES) {
            Ok(Some(frame)) => exercise(frame),
            Ok(None) | Err(_) => break,
        }
    }
});

fn exercise(frame: Frame) {
    match frame {
        Frame::Method { channel, method } => {
            // Whatever decodes must re-encode and decode to the same method.
            let mut dst = bytes::BytesMut::new();
            encode_method(&mut dst, channel, &method);
            let again = decode_frame(&mut dst, 0).expect("re-encoded frame decodes");
            assert!(matches!(again, Some(Frame::Method { method: m, .. }) if m == method));
            let _ = Method::name_of(method.class_id(), method.method_id());
        }
        Frame::Header { header, .. } => {
            let p = &header.properties;
            let _ = (p.content_type(), p.content_encoding(), p.headers(), p.delivery_mode());
            let _ = (p.priority(), p.correlation_id(), p.reply_to(), p.expiration());
            let _ = (p.message_id(), p.timestamp(), p.kind(), p.user_id(), p.app_id());
            let _ = p.cluster_id();
            // validate() passed in decode_frame, so a full decode must succeed
            // and re-encode to a form that validates.
            let owned = p.decode().expect("validated properties decode");
            owned.encode().validate().expect("re-encoded properties validate");
        }
        Frame::Body { payload, .. } => {
            let _ = FieldTable::decode(payload);
        }
        Frame::Heartbeat { .. } => {}
    }
}
