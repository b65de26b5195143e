//! Sans-IO framing: split frames off a read buffer, write frames to a write buffer.
//!
//! ```text
//! +------+---------+-------------+----------------------+-----------+
//! | type | channel | size        | payload (size bytes) | frame-end |
//! | u8   | u16     | u32         |                      | 0xCE      |
//! +------+---------+-------------+----------------------+-----------+
//!  <-------- FRAME_HEADER_SIZE = 7 ------->
//!
//! method payload:    class-id u16 | method-id u16 | arguments
//! header payload:    class-id u16 | weight u16 | body-size u64 | properties
//! body payload:      opaque bytes
//! heartbeat payload: empty, channel 0
//! ```
//!
//! `decode_frame` returns `Ok(None)` until a whole frame is buffered ("incomplete"
//! is not an error), then `split_to(..).freeze()`s it off, so every payload is
//! a view into the read buffer and decoding a publish allocates nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::WireError;
use crate::method::{
    frame_type, BasicAck, BasicDeliver, BasicNack, BasicReject, Method, SPEC_FRAME_END,
    SPEC_FRAME_MIN_SIZE,
};
use crate::properties::Properties;
use crate::put::put_shortstr;
use crate::ShortStr;

pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
pub const FRAME_END: u8 = 0xCE;
/// Type, channel and size; the frame-end octet adds one more.
pub const FRAME_HEADER_SIZE: usize = 7;
/// Header plus frame-end: what frame-max counts on top of the payload.
pub const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_SIZE + 1;
/// The smallest frame-max a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// Class id, weight and body size in front of the properties.
pub const CONTENT_HEADER_FIXED_BYTES: usize = 12;

/// Payload bytes tolerated past `frame_max - 8`. Matches RabbitMQ's
/// `FRAME_SIZE_FUDGE` in rabbit_reader: "quite a few [clients] get it wrong
/// - off-by 1 or 8 (empty frame size) are typical", and they work with RabbitMQ.
pub const FRAME_SIZE_FUDGE_BYTES: u32 = FRAME_OVERHEAD_BYTES as u32;

const _: () = assert!(FRAME_END == SPEC_FRAME_END);
const _: () = assert!(FRAME_MIN_SIZE == SPEC_FRAME_MIN_SIZE);

/// Frames are moved by value from the decoder through the connection; at 128 bytes or
/// less a move is a few vector instructions, above that a call to `memcpy` (see
/// [`crate::FieldTable`] for what keeps it small).
const _: () = assert!(std::mem::size_of::<Frame>() <= 128);

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: Method },
    Header { channel: u16, header: ContentHeader },
    Body { channel: u16, payload: Bytes },
    Heartbeat { channel: u16 },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => *channel,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    /// Must be 0 in 0-9-1; RabbitMQ rejects other values as UNEXPECTED_FRAME
    /// in the command assembler (a broker-level check, not done here).
    pub weight: u16,
    pub body_size: u64,
    pub properties: Properties,
}

/// Largest body chunk per frame for a negotiated frame-max (0 = unlimited).
pub fn body_payload_max_bytes(frame_max_bytes: u32) -> usize {
    if frame_max_bytes == 0 {
        u32::MAX as usize
    } else {
        (frame_max_bytes as usize).saturating_sub(FRAME_OVERHEAD_BYTES)
    }
}

/// Splits one frame off the front of `src`.
///
/// Returns `Ok(None)` until a whole frame is buffered, then splits it off with
/// `split_to(..).freeze()` (no copy). `frame_max_bytes` counts the whole frame
/// including its 8 bytes of header and end (0 means no limit). An oversized
/// frame is rejected as soon as its header arrives, before it is buffered.
pub fn decode_frame(src: &mut BytesMut, frame_max_bytes: u32) -> Result<Option<Frame>, WireError> {
    if src.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let kind = src[0];
    let channel = u16::from_be_bytes([src[1], src[2]]);
    let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]);
    check_size(size, frame_max_bytes)?;
    // u64 so a 4 GiB size cannot overflow on 32-bit targets.
    let total = FRAME_HEADER_SIZE as u64 + u64::from(size) + 1;
    if (src.len() as u64) < total {
        return Ok(None);
    }
    let total = total as usize;
    let end = src[total - 1];
    if end != FRAME_END {
        return Err(WireError::frame_error(format!(
            "invalid frame end marker 0x{end:02x} (type {kind}, channel {channel})"
        )));
    }
    if kind == frame_type::METHOD && size as usize == SETTLE_PAYLOAD_BYTES {
        if let Some(method) = settle_in_place(&src[FRAME_HEADER_SIZE..total - 1]) {
            src.advance(total);
            return Ok(Some(Frame::Method { channel, method }));
        }
    }
    let mut payload = src.split_to(total).freeze();
    payload.advance(FRAME_HEADER_SIZE);
    payload.truncate(size as usize);
    decode_payload(kind, channel, payload).map(Some)
}

/// The payload of basic.ack, basic.reject and basic.nack.
const SETTLE_PAYLOAD_BYTES: usize = 2 + 2 + 8 + 1;

/// basic.ack, basic.reject and basic.nack, decoded where they lie in the read buffer.
///
/// A consumer that acks each message sends these more than anything else, and they hold
/// no strings: splitting a `Bytes` off the buffer for one would cost two reference-count
/// operations on the buffer that every publish in it shares. Any other size or method
/// (including a settle with trailing bytes) takes the generic decoder, which agrees with
/// this one wherever both apply (see the tests).
///
/// ```text
/// class-id u16 = 60 | method-id u16 (80 ack, 90 reject, 120 nack) | delivery-tag u64 | bits u8
/// ```
fn settle_in_place(payload: &[u8]) -> Option<Method> {
    let payload: &[u8; SETTLE_PAYLOAD_BYTES] = payload.try_into().ok()?;
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&payload[4..12]);
    let delivery_tag = u64::from_be_bytes(tag);
    let (first, second) = (payload[12] & 0x01 != 0, payload[12] & 0x02 != 0);
    Some(match (class_id, method_id) {
        (BasicAck::CLASS_ID, BasicAck::METHOD_ID) => Method::BasicAck(BasicAck {
            delivery_tag,
            multiple: first,
        }),
        (BasicReject::CLASS_ID, BasicReject::METHOD_ID) => Method::BasicReject(BasicReject {
            delivery_tag,
            requeue: first,
        }),
        (BasicNack::CLASS_ID, BasicNack::METHOD_ID) => Method::BasicNack(BasicNack {
            delivery_tag,
            multiple: first,
            requeue: second,
        }),
        _ => return None,
    })
}

fn check_size(size: u32, frame_max_bytes: u32) -> Result<(), WireError> {
    if frame_max_bytes == 0 {
        return Ok(());
    }
    let limit = frame_max_bytes.saturating_sub(FRAME_OVERHEAD_BYTES as u32);
    if size > limit.saturating_add(FRAME_SIZE_FUDGE_BYTES) {
        return Err(WireError::frame_error(format!(
            "frame_too_large: payload of {size} bytes, frame_max allows {limit}"
        )));
    }
    Ok(())
}

fn decode_payload(kind: u8, channel: u16, payload: Bytes) -> Result<Frame, WireError> {
    match kind {
        frame_type::METHOD => Ok(Frame::Method {
            channel,
            method: Method::decode(payload)?,
        }),
        frame_type::HEADER => Ok(Frame::Header {
            channel,
            header: decode_header(payload)?,
        }),
        frame_type::BODY => Ok(Frame::Body { channel, payload }),
        frame_type::HEARTBEAT => decode_heartbeat(channel, &payload),
        other => Err(WireError::frame_error(format!(
            "unknown frame type {other}"
        ))),
    }
}

fn decode_header(payload: Bytes) -> Result<ContentHeader, WireError> {
    // Class, weight and body size, then at least the 2-byte flags word.
    if payload.len() < CONTENT_HEADER_FIXED_BYTES + 2 {
        return Err(WireError::frame_error(format!(
            "content header of {} bytes is truncated",
            payload.len()
        )));
    }
    // Read in place: a Cursor would cost a reference-count round trip.
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let weight = u16::from_be_bytes([payload[2], payload[3]]);
    let mut body_size = [0u8; 8];
    body_size.copy_from_slice(&payload[4..CONTENT_HEADER_FIXED_BYTES]);
    let body_size = u64::from_be_bytes(body_size);
    let properties = Properties::from_bytes(payload.slice(CONTENT_HEADER_FIXED_BYTES..));
    properties.validate()?;
    Ok(ContentHeader {
        class_id,
        weight,
        body_size,
        properties,
    })
}

fn decode_heartbeat(channel: u16, payload: &[u8]) -> Result<Frame, WireError> {
    // Order as in rabbit_reader: a payload makes the frame malformed (501,
    // analyze_frame -> error); a heartbeat on a channel is UNEXPECTED_FRAME (505).
    if !payload.is_empty() {
        return Err(WireError::frame_error("heartbeat frame with a payload"));
    }
    if channel != 0 {
        return Err(WireError::unexpected_frame(format!(
            "heartbeat on channel {channel}"
        )));
    }
    Ok(Frame::Heartbeat { channel })
}

/// Writes the 7-byte header of a frame whose payload the caller appends (or
/// hands to writev) itself, followed later by [`FRAME_END`].
pub fn encode_frame_start(dst: &mut BytesMut, frame_type: u8, channel: u16, payload_size: u32) {
    dst.put_u8(frame_type);
    dst.put_u16(channel);
    dst.put_u32(payload_size);
}

pub fn encode_method(dst: &mut BytesMut, channel: u16, method: &Method) {
    encode_frame_start(dst, frame_type::METHOD, channel, 0);
    let start = dst.len();
    method.encode(dst);
    let size = u32::try_from(dst.len() - start).expect("method frame of 4 GiB or more");
    dst[start - 4..start].copy_from_slice(&size.to_be_bytes());
    dst.put_u8(FRAME_END);
}

/// A `basic.deliver` frame from borrowed fields: the same bytes as [`encode_method`] with a
/// [`Method::BasicDeliver`], without building one. Building one takes clones of the
/// message's exchange and routing key, two reference counts per delivery on the buffer the
/// publisher's frame was read into, a cache line the publishing connection's thread is
/// writing too.
pub fn encode_basic_deliver(
    dst: &mut BytesMut,
    channel: u16,
    consumer_tag: &ShortStr,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &ShortStr,
    routing_key: &ShortStr,
) {
    // class and method ids, three shortstrs with their lengths, the tag, the flag octet
    let size = 2 + 2 + 3 + consumer_tag.len() + 8 + 1 + exchange.len() + routing_key.len();
    encode_frame_start(dst, frame_type::METHOD, channel, size as u32);
    dst.put_u16(BasicDeliver::CLASS_ID);
    dst.put_u16(BasicDeliver::METHOD_ID);
    put_shortstr(dst, consumer_tag);
    dst.put_u64(delivery_tag);
    dst.put_u8(u8::from(redelivered));
    put_shortstr(dst, exchange);
    put_shortstr(dst, routing_key);
    dst.put_u8(FRAME_END);
}

pub fn encode_header(dst: &mut BytesMut, channel: u16, header: &ContentHeader) {
    encode_header_parts(
        dst,
        channel,
        header.class_id,
        header.weight,
        header.body_size,
        &header.properties,
    );
}

/// [`encode_header`] from borrowed parts: a delivery's properties are the message's, shared,
/// and a clone of them per delivery would be a reference count on a shared buffer.
pub fn encode_header_parts(
    dst: &mut BytesMut,
    channel: u16,
    class_id: u16,
    weight: u16,
    body_size: u64,
    properties: &Properties,
) {
    let size = CONTENT_HEADER_FIXED_BYTES + properties.len();
    let size = u32::try_from(size).expect("content header of 4 GiB or more");
    encode_frame_start(dst, frame_type::HEADER, channel, size);
    dst.put_u16(class_id);
    dst.put_u16(weight);
    dst.put_u64(body_size);
    dst.put_slice(properties.as_bytes());
    dst.put_u8(FRAME_END);
}

/// Writes one body frame; splitting a body to fit frame-max is the caller's
/// job (see [`body_payload_max_bytes`]).
pub fn encode_body(dst: &mut BytesMut, channel: u16, payload: &[u8]) {
    let size = u32::try_from(payload.len()).expect("body frame of 4 GiB or more");
    encode_frame_start(dst, frame_type::BODY, channel, size);
    dst.put_slice(payload);
    dst.put_u8(FRAME_END);
}

pub fn encode_heartbeat(dst: &mut BytesMut) {
    encode_frame_start(dst, frame_type::HEARTBEAT, 0, 0);
    dst.put_u8(FRAME_END);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basic_properties::BasicProperties;
    use crate::method::{BasicAck, BasicPublish, ConnectionTune};
    use crate::short_str::ShortStr;

    fn publish_frames() -> BytesMut {
        let mut dst = BytesMut::new();
        let publish = Method::BasicPublish(BasicPublish {
            exchange: ShortStr::from_static("amq.direct"),
            routing_key: ShortStr::from_static("orders"),
            ..Default::default()
        });
        encode_method(&mut dst, 1, &publish);
        let properties = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        }
        .encode();
        encode_header(
            &mut dst,
            1,
            &ContentHeader {
                class_id: 60,
                weight: 0,
                body_size: 5,
                properties,
            },
        );
        encode_body(&mut dst, 1, b"hello");
        dst
    }

    fn decode_all(src: &mut BytesMut, frame_max: u32) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = decode_frame(src, frame_max).unwrap() {
            out.push(f);
        }
        out
    }

    /// Settle frames of every flag combination, of the exact size and with a trailing byte
    /// (which must fall to the generic decoder): the in-place decoder agrees with it.
    #[test]
    fn settles_decoded_in_place_agree_with_the_generic_decoder() {
        for (class_id, method_id) in [(60u16, 80u16), (60, 90), (60, 120), (60, 40), (10, 80)] {
            for bits in 0..=u8::MAX {
                for trailing in [&[][..], &[0u8][..]] {
                    let mut payload = BytesMut::new();
                    payload.put_u16(class_id);
                    payload.put_u16(method_id);
                    payload.put_u64(0x0102_0304_0506_0708 ^ u64::from(bits));
                    payload.put_u8(bits);
                    payload.extend_from_slice(trailing);
                    let expected = Method::decode(payload.clone().freeze())
                        .map(|method| Frame::Method { channel: 3, method });
                    let mut src = BytesMut::new();
                    src.put_u8(frame_type::METHOD);
                    src.put_u16(3);
                    src.put_u32(payload.len() as u32);
                    src.extend_from_slice(&payload);
                    src.put_u8(FRAME_END);
                    src.extend_from_slice(b"next");
                    let decoded = decode_frame(&mut src, FRAME_MIN_SIZE).map(Option::unwrap);
                    match (&decoded, &expected) {
                        (Ok(a), Ok(b)) => assert_eq!(a, b),
                        (Err(_), Err(_)) => {}
                        _ => panic!(
                            "{class_id}.{method_id} bits {bits}: {decoded:?} vs {expected:?}"
                        ),
                    }
                    if decoded.is_ok() {
                        assert_eq!(&src[..], b"next", "exactly one frame consumed");
                    }
                }
            }
        }
    }

    #[test]
    fn publish_sequence_round_trips() {
        let mut src = publish_frames();
        let frames = decode_all(&mut src, FRAME_MIN_SIZE);
        assert!(src.is_empty());
        assert_eq!(frames.len(), 3);
        let Frame::Method {
            channel: 1,
            method: Method::BasicPublish(p),
        } = &frames[0]
        else {
            panic!("{:?}", frames[0])
        };
        assert_eq!(p.routing_key, "orders");
        let Frame::Header { channel: 1, header } = &frames[1] else {
            panic!()
        };
        assert_eq!(header.body_size, 5);
        assert_eq!(header.properties.delivery_mode(), Some(2));
        assert_eq!(
            frames[2],
            Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"hello")
            }
        );
    }

    #[test]
    fn truncated_frame_is_incomplete_not_error() {
        let whole = publish_frames();
        for split in 0..whole.len() {
            let mut src = BytesMut::from(&whole[..split]);
            let mut frames = decode_all(&mut src, FRAME_MIN_SIZE);
            src.extend_from_slice(&whole[split..]);
            frames.extend(decode_all(&mut src, FRAME_MIN_SIZE));
            assert_eq!(frames.len(), 3, "split at {split}");
            assert!(src.is_empty());
        }
    }

    #[test]
    fn two_frames_in_one_buffer_decode_one_at_a_time() {
        let mut src = BytesMut::new();
        encode_heartbeat(&mut src);
        encode_method(
            &mut src,
            0,
            &Method::ConnectionTune(ConnectionTune {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 60,
            }),
        );
        assert_eq!(
            decode_frame(&mut src, 0).unwrap(),
            Some(Frame::Heartbeat { channel: 0 })
        );
        let Some(Frame::Method {
            method: Method::ConnectionTune(t),
            ..
        }) = decode_frame(&mut src, 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(t.frame_max, 131072);
        assert_eq!(decode_frame(&mut src, 0).unwrap(), None);
    }

    #[test]
    fn wrong_frame_end_is_frame_error() {
        let mut src = BytesMut::new();
        encode_heartbeat(&mut src);
        src[7] = 0xCD;
        assert_eq!(decode_frame(&mut src, 0).unwrap_err().code, 501);
    }

    #[test]
    fn oversized_frame_is_frame_error_before_its_payload_arrives() {
        let mut src = BytesMut::new();
        encode_frame_start(&mut src, frame_type::BODY, 1, 4097);
        let e = decode_frame(&mut src, 4096).unwrap_err();
        assert_eq!(e.code, 501);
        assert!(e.text.contains("frame_too_large"), "{}", e.text);
    }

    #[test]
    fn payload_up_to_frame_max_is_tolerated_like_rabbitmq() {
        // frame_max 4096 means 4088 payload bytes; RabbitMQ accepts 8 more.
        for size in [4088usize, 4096] {
            let mut src = BytesMut::new();
            encode_body(&mut src, 1, &vec![0; size]);
            assert!(decode_frame(&mut src, 4096).unwrap().is_some(), "{size}");
        }
    }

    #[test]
    fn zero_frame_max_means_no_limit() {
        let mut src = BytesMut::new();
        encode_body(&mut src, 1, &vec![7; 100_000]);
        assert!(decode_frame(&mut src, 0).unwrap().is_some());
    }

    #[test]
    fn unknown_frame_type_is_frame_error() {
        let mut src = BytesMut::from(&[4u8, 0, 1, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(decode_frame(&mut src, 0).unwrap_err().code, 501);
    }

    #[test]
    fn heartbeat_on_a_channel_is_unexpected_frame() {
        let mut src = BytesMut::from(&[8u8, 0, 1, 0, 0, 0, 0, FRAME_END][..]);
        assert_eq!(decode_frame(&mut src, 0).unwrap_err().code, 505);
    }

    #[test]
    fn heartbeat_with_payload_is_frame_error() {
        let mut src = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 1, 0, FRAME_END][..]);
        assert_eq!(decode_frame(&mut src, 0).unwrap_err().code, 501);
    }

    #[test]
    fn truncated_content_header_is_frame_error() {
        let mut src = BytesMut::new();
        encode_frame_start(&mut src, frame_type::HEADER, 1, 13);
        src.extend_from_slice(&[0; 13]);
        src.put_u8(FRAME_END);
        assert_eq!(decode_frame(&mut src, 0).unwrap_err().code, 501);
    }

    #[test]
    fn malformed_properties_are_rejected_when_the_header_arrives() {
        let mut src = BytesMut::new();
        encode_frame_start(&mut src, frame_type::HEADER, 1, 15);
        src.extend_from_slice(&[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        src.extend_from_slice(&[0x80, 0x00, 9]); // content-type of 9 bytes, none present
        src.put_u8(FRAME_END);
        assert_eq!(decode_frame(&mut src, 0).unwrap_err().code, 501);
    }

    #[test]
    fn method_errors_pass_through_with_their_ids() {
        let mut src = BytesMut::new();
        encode_method(
            &mut src,
            1,
            &Method::BasicAck(BasicAck {
                delivery_tag: 1,
                multiple: false,
            }),
        );
        // Claim one byte less: the ack's bit octet is lost, and the frame end moves.
        let mut bad = BytesMut::from(&src[..src.len() - 2]);
        bad[6] -= 1;
        bad.put_u8(FRAME_END);
        let e = decode_frame(&mut bad, 0).unwrap_err();
        assert_eq!((e.code, e.class_id, e.method_id), (501, 60, 80));
    }

    #[test]
    fn encode_frame_start_writes_the_seven_byte_header() {
        let mut dst = BytesMut::new();
        encode_frame_start(&mut dst, frame_type::BODY, 0x0102, 0x03040506);
        assert_eq!(&dst[..], &[3, 1, 2, 3, 4, 5, 6]);
        assert_eq!(body_payload_max_bytes(4096), 4088);
    }

    #[test]
    fn basic_deliver_from_borrowed_fields_encodes_as_the_method_does() {
        for (tag, exchange, key) in [("ctag-1", "amq.direct", "rk"), ("", "", ""), ("t", "", "k")] {
            let deliver = BasicDeliver {
                consumer_tag: ShortStr::from(tag),
                delivery_tag: 0x0102_0304_0506_0708,
                redelivered: true,
                exchange: ShortStr::from(exchange),
                routing_key: ShortStr::from(key),
            };
            let mut expected = BytesMut::new();
            encode_method(&mut expected, 7, &Method::BasicDeliver(deliver.clone()));
            let mut got = BytesMut::new();
            encode_basic_deliver(
                &mut got,
                7,
                &deliver.consumer_tag,
                deliver.delivery_tag,
                deliver.redelivered,
                &deliver.exchange,
                &deliver.routing_key,
            );
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn decoding_a_publish_does_not_allocate() {
        let mut src = publish_frames();
        // The first split promotes the buffer to shared storage (one
        // allocation per buffer, not per frame); do it before counting.
        let mut warm = BytesMut::new();
        encode_heartbeat(&mut warm);
        src.unsplit(warm);
        let _ = decode_frame(&mut src, 0).unwrap();
        let (frames, allocations) = crate::testing::count_allocations(|| {
            let method = decode_frame(&mut src, 0).unwrap();
            let header = decode_frame(&mut src, 0).unwrap();
            let body = decode_frame(&mut src, 0).unwrap();
            if let Some(Frame::Header { header, .. }) = &header {
                assert_eq!(
                    header.properties.content_type().as_deref(),
                    Some("text/plain")
                );
            }
            (method, header, body)
        });
        assert!(frames.2.is_some());
        assert_eq!(allocations, 0);
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut src = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_frame(&mut src, 4096) {}
        }
    }
}
