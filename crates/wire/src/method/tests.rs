//! Round trips of every method, bit packing, decode errors, and the
//! amq-protocol oracle in both directions.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{gen_class, parse_class, AMQPClass};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::arbitrary::{method, samples};
use super::oracle::{from_oracle, to_oracle};
use super::*;
use crate::short_str::ShortStr;

fn encoded(m: &Method) -> Bytes {
    let mut dst = BytesMut::new();
    m.encode(&mut dst);
    dst.freeze()
}

fn oracle_encoded(c: &AMQPClass) -> Bytes {
    let ctx = gen_class(c)(WriteContext::from(Vec::new())).expect("amq-protocol encodes");
    Bytes::from(ctx.write)
}

fn oracle_parsed(bytes: &[u8]) -> AMQPClass {
    let (rest, class) = parse_class(bytes).expect("amq-protocol parses our bytes");
    assert!(rest.is_empty(), "amq-protocol left {} bytes", rest.len());
    class
}

#[test]
fn samples_cover_every_method_once() {
    let samples = samples();
    assert_eq!(samples.len(), METHOD_COUNT);
    let mut names: Vec<&str> = samples.iter().map(Method::name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), METHOD_COUNT);
    for m in &samples {
        assert_eq!(Method::name_of(m.class_id(), m.method_id()), Some(m.name()));
    }
}

#[test]
fn every_sample_round_trips() {
    for m in samples() {
        assert_eq!(Method::decode(encoded(&m)).unwrap(), m, "{}", m.name());
    }
}

#[test]
fn every_sample_parses_with_amq_protocol() {
    for m in samples() {
        assert_eq!(oracle_parsed(&encoded(&m)), to_oracle(&m), "{}", m.name());
    }
}

#[test]
fn every_amq_protocol_sample_decodes_with_ours() {
    for m in samples() {
        let expected = from_oracle(&to_oracle(&m));
        let bytes = oracle_encoded(&to_oracle(&m));
        assert_eq!(Method::decode(bytes).unwrap(), expected, "{}", m.name());
    }
}

#[test]
fn consecutive_bits_pack_into_one_octet() {
    let m = Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::from_static("q"),
        durable: true,
        nowait: true,
        ..Default::default()
    });
    // class 50, method 10, ticket 0, "q", bits (durable=0x02 | nowait=0x10), empty table
    let expected: &[u8] = &[0, 50, 0, 10, 0, 0, 1, b'q', 0x12, 0, 0, 0, 0];
    assert_eq!(&encoded(&m)[..], expected);
}

#[test]
fn bit_runs_restart_after_a_non_bit_argument() {
    // basic.deliver: consumer-tag, delivery-tag, redelivered (bit), exchange, routing-key
    let m = Method::BasicDeliver(BasicDeliver {
        consumer_tag: ShortStr::from_static("c"),
        delivery_tag: 7,
        redelivered: true,
        exchange: ShortStr::from_static("e"),
        routing_key: ShortStr::from_static("k"),
    });
    let expected: &[u8] = &[
        0, 60, 0, 60, 1, b'c', 0, 0, 0, 0, 0, 0, 0, 7, 1, 1, b'e', 1, b'k',
    ];
    assert_eq!(&encoded(&m)[..], expected);
}

#[test]
fn unknown_method_is_not_implemented() {
    let e = Method::decode(Bytes::from_static(&[0, 60, 0, 200])).unwrap_err();
    assert_eq!((e.code, e.class_id, e.method_id), (540, 60, 200));
    let e = Method::decode(Bytes::from_static(&[0, 99, 0, 10])).unwrap_err();
    assert_eq!(e.code, 540);
}

#[test]
fn truncated_arguments_are_frame_error_naming_the_method() {
    let bytes = encoded(&Method::BasicAck(BasicAck {
        delivery_tag: 1,
        multiple: true,
    }));
    for cut in 4..bytes.len() {
        let e = Method::decode(bytes.slice(..cut)).unwrap_err();
        assert_eq!(
            (e.code, e.class_id, e.method_id),
            (501, 60, 80),
            "cut at {cut}"
        );
        assert!(e.text.contains("basic.ack"), "{}", e.text);
    }
}

#[test]
fn trailing_garbage_is_frame_error() {
    let mut bytes = BytesMut::from(&encoded(&Method::TxSelect(TxSelect))[..]);
    bytes.extend_from_slice(&[0]);
    let e = Method::decode(bytes.freeze()).unwrap_err();
    assert_eq!((e.code, e.class_id, e.method_id), (501, 90, 10));
}

#[test]
fn payload_shorter_than_ids_is_frame_error() {
    let e = Method::decode(Bytes::from_static(&[0, 60, 0])).unwrap_err();
    assert_eq!((e.code, e.class_id, e.method_id), (501, 0, 0));
}

#[test]
fn publish_strings_are_slices_of_the_payload() {
    let bytes = encoded(&Method::BasicPublish(BasicPublish {
        exchange: ShortStr::from_static("amq.direct"),
        routing_key: ShortStr::from_static("rk"),
        ..Default::default()
    }));
    let Method::BasicPublish(p) = Method::decode(bytes.clone()).unwrap() else {
        panic!()
    };
    let range = bytes.as_ptr_range();
    assert!(range.contains(&p.exchange.as_bytes().as_ptr()));
    assert!(range.contains(&p.routing_key.as_bytes().as_ptr()));
}

#[test]
fn method_enum_stays_small() {
    // Publish, deliver and ack are moved through channels per message; keep
    // the enum near the size of BasicDeliver rather than boxing variants.
    assert!(
        std::mem::size_of::<Method>() <= 136,
        "{}",
        std::mem::size_of::<Method>()
    );
}

#[test]
fn reply_code_classes_follow_the_spec() {
    assert!(reply_code::is_hard_error(reply_code::FRAME_ERROR));
    assert!(!reply_code::is_hard_error(reply_code::NOT_FOUND));
    assert_eq!(class_id::BASIC, 60);
    assert_eq!(frame_type::HEARTBEAT, 8);
}

proptest! {
    #[test]
    fn every_method_round_trips(m in method()) {
        prop_assert_eq!(Method::decode(encoded(&m)).unwrap(), m);
    }

    #[test]
    fn amq_protocol_parses_what_we_encode(m in method()) {
        prop_assert_eq!(oracle_parsed(&encoded(&m)), to_oracle(&m));
    }

    #[test]
    fn we_decode_what_amq_protocol_encodes(m in method()) {
        let class = to_oracle(&m);
        let decoded = Method::decode(oracle_encoded(&class)).unwrap();
        prop_assert_eq!(to_oracle(&decoded), class.clone());
        prop_assert_eq!(decoded, from_oracle(&class));
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Method::decode(Bytes::from(bytes));
    }
}
