//! A minimal AMQP client over `ferrymq_wire` for the basic and confirm/tx tests: exact
//! frames in and out (every ack frame of a confirm stream, class and method ids of errors),
//! and a socket the test can stop reading. Shared by `basic.rs` and `confirms_tx.rs`.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use ferrymq_wire::{
    decode_frame, encode_body, encode_header, encode_method, BasicProperties, BasicPublish,
    ChannelClose, ChannelCloseOk, ChannelOpen, ConnectionClose, ConnectionCloseOk, ConnectionOpen,
    ConnectionStartOk, ConnectionTuneOk, ContentHeader, FieldTable, FieldValue, Frame, Method,
    Properties, QueueDeclare, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::TestBroker;

/// The longest one step may take before the test fails instead of hanging.
const STEP: std::time::Duration = std::time::Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: std::time::Duration = std::time::Duration::from_millis(200);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("step timed out")
}

const FRAME_MAX_BYTES: u32 = 131_072;

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects as guest, with consumer_cancel_notify, and opens channel 1.
    pub async fn open(broker: &TestBroker) -> Raw {
        let stream = within(TcpStream::connect(broker.addr)).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.stream.write_all(&PROTOCOL_HEADER).await.unwrap();
        raw.expect(0, |m| matches!(m, Method::ConnectionStart(_)))
            .await;
        let mut capabilities = FieldTable::new();
        capabilities.insert("consumer_cancel_notify", FieldValue::Bool(true));
        capabilities.insert("basic.nack", FieldValue::Bool(true));
        capabilities.insert("publisher_confirms", FieldValue::Bool(true));
        let mut client_properties = FieldTable::new();
        client_properties.insert("capabilities", FieldValue::Table(capabilities));
        let start_ok = ConnectionStartOk {
            client_properties,
            mechanism: "PLAIN".to_string().into(),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".to_string().into(),
        };
        raw.send(0, Method::ConnectionStartOk(start_ok)).await;
        let tune = match raw.recv_method().await {
            (0, Method::ConnectionTune(tune)) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        let tune_ok = ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: FRAME_MAX_BYTES,
            heartbeat: 0,
        };
        raw.send(0, Method::ConnectionTuneOk(tune_ok)).await;
        let open = ConnectionOpen {
            virtual_host: "/".to_string().into(),
            ..Default::default()
        };
        raw.send(0, Method::ConnectionOpen(open)).await;
        raw.expect(0, |m| matches!(m, Method::ConnectionOpenOk(_)))
            .await;
        raw.open_channel(1).await;
        raw
    }

    pub async fn open_channel(&mut self, channel: u16) {
        self.send(channel, Method::ChannelOpen(ChannelOpen::default()))
            .await;
        self.expect(channel, |m| matches!(m, Method::ChannelOpenOk(_)))
            .await;
    }

    pub async fn send(&mut self, channel: u16, method: Method) {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, &method);
        within(self.stream.write_all(&out)).await.unwrap();
    }

    pub async fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
    ) {
        let properties = BasicProperties::default().encode();
        self.publish_with(channel, exchange, routing_key, mandatory, properties, body)
            .await;
    }

    pub async fn publish_with(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        properties: Properties,
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        let publish = publish_method(exchange, routing_key, mandatory);
        publish_frames(&mut out, channel, publish, properties, body);
        self.write(&out).await;
    }

    /// Writes prepared frames in one go, so the broker finds them in one read.
    pub async fn write(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes)).await.unwrap();
    }

    /// The next frame, skipping heartbeats; `None` when the broker closed the socket.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, 0).expect("valid frame") {
                if matches!(frame, Frame::Heartbeat { .. }) {
                    continue;
                }
                return Some(frame);
            }
            self.buf.reserve(64 * 1024);
            match within(self.stream.read_buf(&mut self.buf)).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn recv_method(&mut self) -> (u16, Method) {
        match self.recv().await {
            Some(Frame::Method { channel, method }) => (channel, method),
            other => panic!("expected a method frame, got {other:?}"),
        }
    }

    async fn expect(&mut self, channel: u16, is: impl Fn(&Method) -> bool) -> Method {
        let (got_channel, method) = self.recv_method().await;
        assert!(
            got_channel == channel && is(&method),
            "unexpected {method:?} on channel {got_channel}"
        );
        method
    }

    pub async fn declare_queue(&mut self, channel: u16, queue: &str) {
        let declare = QueueDeclare {
            queue: queue.to_string().into(),
            ..Default::default()
        };
        self.send(channel, Method::QueueDeclare(declare)).await;
        self.expect(channel, |m| matches!(m, Method::QueueDeclareOk(_)))
            .await;
    }

    pub async fn consume(&mut self, channel: u16, queue: &str, tag: &str, no_ack: bool) {
        self.send(channel, consume_method(queue, tag, no_ack)).await;
        self.expect(channel, |m| matches!(m, Method::BasicConsumeOk(_)))
            .await;
    }

    /// Reads a basic.deliver with its content; returns (delivery tag, body).
    pub async fn expect_delivery(&mut self) -> (u64, Vec<u8>) {
        let deliver = match self.recv_method().await {
            (_, Method::BasicDeliver(deliver)) => deliver,
            other => panic!("expected basic.deliver, got {other:?}"),
        };
        (deliver.delivery_tag, self.content().await)
    }

    /// A content header and its body frames.
    pub async fn content(&mut self) -> Vec<u8> {
        let size = match self.recv().await {
            Some(Frame::Header { header, .. }) => header.body_size as usize,
            other => panic!("expected a content header, got {other:?}"),
        };
        let mut body = Vec::with_capacity(size);
        while body.len() < size {
            match self.recv().await {
                Some(Frame::Body { payload, .. }) => body.extend_from_slice(&payload),
                other => panic!("expected a content body, got {other:?}"),
            }
        }
        body
    }

    /// Publishes `b"x"` to queue `q` with these properties and returns the channel.close
    /// the broker refuses it with.
    pub async fn publish_refused(
        &mut self,
        channel: u16,
        properties: ferrymq_wire::BasicProperties,
    ) -> ChannelClose {
        self.publish_with(channel, "", "q", false, properties.encode(), b"x")
            .await;
        self.expect_channel_close(channel).await
    }

    /// Skips anything else on the channel until channel.close, and answers close-ok.
    pub async fn expect_channel_close(&mut self, channel: u16) -> ChannelClose {
        loop {
            match self.recv().await {
                Some(Frame::Method {
                    channel: c,
                    method: Method::ChannelClose(close),
                }) if c == channel => {
                    self.send(channel, Method::ChannelCloseOk(ChannelCloseOk))
                        .await;
                    return close;
                }
                Some(Frame::Method {
                    method: Method::ConnectionClose(close),
                    ..
                }) => panic!("expected channel.close, got {close:?}"),
                Some(_) => {}
                None => panic!("connection dropped while waiting for channel.close"),
            }
        }
    }

    /// Asserts that no frame arrives for a while.
    pub async fn assert_quiet(&mut self) {
        if let Some(frame) = decode_frame(&mut self.buf, 0).expect("valid frame") {
            panic!("expected nothing, got {frame:?}");
        }
        self.buf.reserve(64 * 1024);
        if let Ok(read) = tokio::time::timeout(QUIET, self.stream.read_buf(&mut self.buf)).await {
            let frame = decode_frame(&mut self.buf, 0).expect("valid frame");
            panic!("expected nothing, got {read:?} bytes: {frame:?}");
        }
    }

    /// Skips anything else until connection.close, answers close-ok, and checks that
    /// the broker then closes the socket.
    pub async fn expect_connection_close(&mut self) -> ConnectionClose {
        loop {
            match self.recv().await {
                Some(Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(close),
                }) => {
                    self.send(0, Method::ConnectionCloseOk(ConnectionCloseOk))
                        .await;
                    while self.recv().await.is_some() {}
                    return close;
                }
                Some(_) => {}
                None => panic!("connection dropped without connection.close"),
            }
        }
    }
}

pub fn publish_method(exchange: &str, routing_key: &str, mandatory: bool) -> BasicPublish {
    BasicPublish {
        exchange: exchange.to_string().into(),
        routing_key: routing_key.to_string().into(),
        mandatory,
        ..Default::default()
    }
}

/// The frames of one basic.publish, appended to `out`.
pub fn publish_frames(
    out: &mut BytesMut,
    channel: u16,
    publish: BasicPublish,
    properties: Properties,
    body: &[u8],
) {
    encode_method(out, channel, &Method::BasicPublish(publish));
    let header = ContentHeader {
        class_id: 60,
        weight: 0,
        body_size: body.len() as u64,
        properties,
    };
    encode_header(out, channel, &header);
    for chunk in body.chunks(FRAME_MAX_BYTES as usize - 8) {
        encode_body(out, channel, chunk);
    }
}

pub fn consume_method(queue: &str, tag: &str, no_ack: bool) -> Method {
    Method::BasicConsume(ferrymq_wire::BasicConsume {
        queue: queue.to_string().into(),
        consumer_tag: tag.to_string().into(),
        no_ack,
        ..Default::default()
    })
}
