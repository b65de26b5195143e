//! Malformed and out-of-order frames over a raw socket: each must end in the reply code
//! RabbitMQ sends (rabbit_reader.erl, rabbit_command_assembler.erl, rabbit_channel.erl),
//! and the broker must go on serving new connections afterwards.

mod common;
mod raw;

use bytes::BytesMut;
use ferrymq_wire::{
    encode_frame_start, frame_type, BasicGet, BasicPublish, ChannelClose, ChannelOpen,
    ConnectionClose, Method, QueueDeclare, ShortStr, FRAME_END,
};
use raw::{ids, Login, RawClient};

use common::TestBroker;

const FRAME_ERROR: u16 = 501;
const COMMAND_INVALID: u16 = 503;
const CHANNEL_ERROR: u16 = 504;
const UNEXPECTED_FRAME: u16 = 505;
const NOT_IMPLEMENTED: u16 = 540;
const PRECONDITION_FAILED: u16 = 406;

const PUBLISH: (u16, u16) = (BasicPublish::CLASS_ID, BasicPublish::METHOD_ID);

/// An open connection with channel 1 open.
async fn open_with_channel(broker: &TestBroker) -> RawClient {
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    client
}

/// After a protocol violation on one connection the broker still serves a fresh one.
async fn assert_serves_fresh_connection(broker: &TestBroker) {
    let mut client = open_with_channel(broker).await;
    client
        .send(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: ShortStr::from("after-violation"),
                ..Default::default()
            }),
        )
        .await;
    match client.recv_method().await {
        (1, Method::QueueDeclareOk(_)) => {}
        other => panic!("fresh connection not served: {other:?}"),
    }
    client
        .send(
            0,
            Method::ConnectionClose(ConnectionClose {
                reply_code: 200,
                ..Default::default()
            }),
        )
        .await;
    match client.recv_method().await {
        (0, Method::ConnectionCloseOk(_)) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
}

fn publish(routing_key: &str) -> Method {
    Method::BasicPublish(BasicPublish {
        routing_key: ShortStr::from(routing_key),
        ..Default::default()
    })
}

fn declare(queue: &str) -> Method {
    Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::from(queue),
        ..Default::default()
    })
}

/// A frame with any type and payload (for types and payloads the encoders never write).
fn frame(kind: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame_start(&mut out, kind, channel, payload.len() as u32);
    out.extend_from_slice(payload);
    out.extend_from_slice(&[FRAME_END]);
    out
}

// rabbit_reader:handle_input: `fatal_frame_error({invalid_frame_end_marker, ..})`.
#[tokio::test]
async fn bad_frame_end_octet_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    let mut bytes = RawClient::method_bytes(1, &declare("q"));
    let last = bytes.len() - 1;
    bytes[last] = 0x00;
    client.write(&bytes).await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (FRAME_ERROR, 0, 0), "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_reader:handle_input: a payload above frame_max - 8 (+ 8 bytes of fudge) is
// `frame_too_large`, refused from the header alone.
#[tokio::test]
async fn frame_over_negotiated_frame_max_closes_with_501() {
    let broker = TestBroker::start().await;
    let login = Login {
        frame_max: Some(4096),
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    client.open_channel(1).await;
    client.send(1, publish("q")).await;
    client.send_header(1, 10_000).await;
    // 4097 payload bytes: one more than frame_max - 8 + RabbitMQ's 8-byte fudge.
    client
        .write_lossy(&frame(frame_type::BODY, 1, &[7u8; 4097]))
        .await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, FRAME_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// The header alone decides: a 4 GiB size is refused without waiting for the payload.
#[tokio::test]
async fn absurd_frame_size_is_refused_before_the_payload_arrives() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    let mut header = BytesMut::new();
    encode_frame_start(&mut header, frame_type::BODY, 1, u32::MAX);
    client.write(&header).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, FRAME_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// RabbitMQ tolerates frames up to 8 bytes over frame_max (FRAME_SIZE_FUDGE: "off-by 1
// or 8 are typical" client bugs); such a frame must be accepted.
#[tokio::test]
async fn frame_exactly_at_the_fudged_limit_is_accepted() {
    let broker = TestBroker::start().await;
    let login = Login {
        frame_max: Some(4096),
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    client.open_channel(1).await;
    client.send(1, declare("fudge")).await;
    assert!(matches!(
        client.recv_method().await,
        (1, Method::QueueDeclareOk(_))
    ));
    client.send(1, publish("fudge")).await;
    client.send_header(1, 4096).await;
    client.send_body(1, &[1u8; 4096]).await;
    client
        .send(
            1,
            Method::BasicGet(BasicGet {
                queue: ShortStr::from("fudge"),
                no_ack: true,
                ..Default::default()
            }),
        )
        .await;
    match client.recv_method().await {
        (1, Method::BasicGetOk(_)) => {}
        other => panic!("expected get-ok, got {other:?}"),
    }
}

// rabbit_command_assembler:analyze_frame returns `error` for an unknown type, and
// rabbit_reader answers frame_error(unknown_frame, ..).
#[tokio::test]
async fn unknown_frame_type_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.write(&frame(5, 1, b"hello")).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, FRAME_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// RabbitMQ's reader dies on an unknown method id (it closes TCP without a reply); the
// wire crate documents that we answer 540 NOT_IMPLEMENTED naming the ids instead.
#[tokio::test]
async fn unknown_class_and_method_close_with_540() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client
        .write(&frame(frame_type::METHOD, 1, &[0, 99, 0, 1]))
        .await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (NOT_IMPLEMENTED, 99, 1), "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_framing decode_method_fields fails -> rabbit_misc:frame_error: 501 "cannot
// decode", naming the method.
#[tokio::test]
async fn truncated_method_arguments_close_with_501_naming_the_method() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    let whole = RawClient::method_bytes(1, &declare("truncated"));
    // Payload: class, method, ticket, then the queue name cut after 3 of its 9 bytes.
    let payload = &whole[7..7 + 4 + 2 + 1 + 3];
    client.write(&frame(frame_type::METHOD, 1, payload)).await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (FRAME_ERROR, 50, 10), "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// A method payload too short to hold class and method ids is a frame error.
#[tokio::test]
async fn method_frame_without_ids_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.write(&frame(frame_type::METHOD, 1, &[0, 50])).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, FRAME_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_command_assembler:process(_Frame, method): "expected method frame, got non
// method frame instead" -> 505.
#[tokio::test]
async fn content_header_without_publish_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.send_header(1, 5).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, UNEXPECTED_FRAME, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

#[tokio::test]
async fn body_without_publish_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.send_body(1, b"stray").await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, UNEXPECTED_FRAME, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_command_assembler: "expected content header for class 60, got non content
// header frame instead", reported against basic.publish.
#[tokio::test]
async fn method_instead_of_content_header_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.send(1, publish("q")).await;
    client.send(1, declare("q")).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, UNEXPECTED_FRAME, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_command_assembler: "content body frame exceeds remaining content size" is a
// frame_error (501) against basic.publish.
#[tokio::test]
async fn body_longer_than_declared_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.send(1, publish("q")).await;
    client.send_header(1, 5).await;
    client.send_body(1, b"0123456789").await;
    let close = client.expect_close().await;
    assert_eq!(
        ids(&close),
        (FRAME_ERROR, PUBLISH.0, PUBLISH.1),
        "{close:?}"
    );
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_channel in state `starting`: "expected 'channel.open'" -> 504 CHANNEL_ERROR.
#[tokio::test]
async fn method_on_a_channel_never_opened_closes_with_504() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.send(7, declare("q")).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, CHANNEL_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// After channel.close / close-ok the number is free; anything but channel.open on it is
// again "expected 'channel.open'" (504).
#[tokio::test]
async fn method_on_a_closed_channel_closes_with_504() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client
        .send(
            1,
            Method::ChannelClose(ChannelClose {
                reply_code: 200,
                ..Default::default()
            }),
        )
        .await;
    assert!(matches!(
        client.recv_method().await,
        (1, Method::ChannelCloseOk(_))
    ));
    client.send(1, declare("q")).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, CHANNEL_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_channel: "second 'channel.open' seen" -> 504, naming channel.open.
#[tokio::test]
async fn second_channel_open_closes_with_504() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client
        .send(1, Method::ChannelOpen(ChannelOpen::default()))
        .await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (CHANNEL_ERROR, 20, 10), "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_reader:handle_method0 catch-all: "unexpected method in connection state
// running" -> 504 CHANNEL_ERROR, naming the method.
#[tokio::test]
async fn channel_method_on_channel_zero_closes_with_504() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client
        .send(0, Method::ChannelOpen(ChannelOpen::default()))
        .await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (CHANNEL_ERROR, 20, 10), "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_reader:handle_frame on a channel: `heartbeat -> unexpected_frame(..)` (505;
// the wire crate's table agrees).
#[tokio::test]
async fn heartbeat_on_a_channel_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.write(&frame(frame_type::HEARTBEAT, 1, &[])).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, UNEXPECTED_FRAME, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// A heartbeat with a payload is malformed: analyze_frame -> error -> 501.
#[tokio::test]
async fn heartbeat_with_a_payload_closes_with_501() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.write(&frame(frame_type::HEARTBEAT, 0, b"x")).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, FRAME_ERROR, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// Content frames on channel 0 are unexpected_frame (rabbit_reader:handle_frame, channel 0).
#[tokio::test]
async fn content_header_on_channel_zero_closes_with_505() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.send_header(0, 1).await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, UNEXPECTED_FRAME, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_channel:check_msg_size: "message size N is larger than configured max size M"
// is 406 PRECONDITION_FAILED on the channel; the connection and other channels live on.
#[tokio::test]
async fn publish_over_message_size_max_closes_only_the_channel_with_406() {
    let broker = TestBroker::start_with(|c| c.message_size_max_bytes = 1000).await;
    let mut client = open_with_channel(&broker).await;
    client.open_channel(2).await;
    client.send(1, publish("big")).await;
    client.send_header(1, 2000).await;
    client.send_body(1, &[0u8; 2000]).await;
    let close = match client.recv_method().await {
        (1, Method::ChannelClose(close)) => close,
        other => panic!("expected channel.close on 1, got {other:?}"),
    };
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (PRECONDITION_FAILED, PUBLISH.0, PUBLISH.1),
        "{close:?}"
    );
    assert!(
        close.reply_text.as_str().starts_with("PRECONDITION_FAILED"),
        "{close:?}"
    );
    client
        .send(1, Method::ChannelCloseOk(ferrymq_wire::ChannelCloseOk))
        .await;
    // Channel 2 is untouched, and channel 1 can be opened again.
    client.send(2, declare("small")).await;
    assert!(matches!(
        client.recv_method().await,
        (2, Method::QueueDeclareOk(_))
    ));
    client.open_channel(1).await;
    client.send(1, publish("small")).await;
    client.send_header(1, 3).await;
    client.send_body(1, b"abc").await;
    client
        .send(
            1,
            Method::BasicGet(BasicGet {
                queue: ShortStr::from("small"),
                no_ack: true,
                ..Default::default()
            }),
        )
        .await;
    match client.recv_method().await {
        (1, Method::BasicGetOk(ok)) => assert_eq!(ok.message_count, 0),
        other => panic!("expected get-ok, got {other:?}"),
    }
}

// Anything on channel 0 that is not a connection method after open: 504 as above; a
// stray connection.tune-ok is one such method.
#[tokio::test]
async fn connection_method_out_of_sequence_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client
        .send(0, Method::ConnectionTuneOk(Default::default()))
        .await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (CHANNEL_ERROR, 10, 31), "{close:?}");
    assert_ne!(close.reply_code, COMMAND_INVALID);
    assert_serves_fresh_connection(&broker).await;
}

// Garbage where a frame should be: whatever it decodes to, it ends in a connection error
// and never a panic (the broker keeps serving).
#[tokio::test]
async fn garbage_after_the_handshake_closes_the_connection() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client
        .write_lossy(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let close = client.expect_close().await;
    assert!(close.reply_code >= 500, "{close:?}");
    assert_serves_fresh_connection(&broker).await;
}

// rabbit_channel fills in the offending method when it raises ("expected
// 'channel.open'" against queue.declare), so connection.close names it.
#[tokio::test]
async fn close_for_an_unopened_channel_names_the_offending_method() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.send(7, declare("q")).await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (CHANNEL_ERROR, 50, 10), "{close:?}");
}

// rabbit_command_assembler reports an interrupted publish against the method whose
// content was expected (basic.publish), not the method that interrupted it.
#[tokio::test]
async fn interrupted_content_is_reported_against_basic_publish() {
    let broker = TestBroker::start().await;
    let mut client = open_with_channel(&broker).await;
    client.send(1, publish("q")).await;
    client.send(1, declare("q")).await;
    let close = client.expect_close().await;
    assert_eq!(
        ids(&close),
        (UNEXPECTED_FRAME, PUBLISH.0, PUBLISH.1),
        "{close:?}"
    );
}
