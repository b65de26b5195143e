//! A hand-driven AMQP 0-9-1 client over a plain `TcpStream`, for tests that must see (or
//! send) exact frames: reply codes of connection.close, malformed input, silence.
//!
//! Every read is bounded by [`STEP`], so a broker that hangs fails the test instead of
//! blocking it. Frames are built with `ferrymq_wire`'s encoders, so a malformed frame is
//! always a deliberate edit of a well-formed one.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferrymq_wire::{
    decode_frame, encode_body, encode_header, encode_method, ChannelOpen, ConnectionClose,
    ConnectionCloseOk, ConnectionOpen, ConnectionStart, ConnectionStartOk, ConnectionTune,
    ConnectionTuneOk, ContentHeader, FieldTable, FieldValue, Frame, Method, Properties, ShortStr,
    PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for any single thing the broker should send.
pub const STEP: Duration = Duration::from_secs(3);

pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
}

/// What the client answers in start-ok and tune-ok.
#[derive(Debug, Clone)]
pub struct Login {
    pub mechanism: &'static str,
    pub response: Bytes,
    pub vhost: String,
    /// tune-ok values; `None` echoes what the server offered.
    pub channel_max: Option<u16>,
    pub frame_max: Option<u32>,
    pub heartbeat: u16,
    /// Advertise `authentication_failure_close` (RabbitMQ then sends 403 instead of
    /// just closing the socket).
    pub auth_failure_close: bool,
    /// Advertise `connection.blocked` (the broker then says when it blocks us).
    pub connection_blocked: bool,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            mechanism: "PLAIN",
            response: plain("guest", "guest"),
            vhost: "/".into(),
            channel_max: None,
            frame_max: None,
            heartbeat: 0,
            auth_failure_close: true,
            connection_blocked: true,
        }
    }
}

/// A SASL PLAIN response: `\0user\0password`.
pub fn plain(user: &str, password: &str) -> Bytes {
    Bytes::from(format!("\0{user}\0{password}"))
}

/// An AMQPLAIN response: a field table without its length prefix.
pub fn amqplain(user: &str, password: &str) -> Bytes {
    let mut table = FieldTable::new();
    let text = |s: &str| FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()));
    table.insert(ShortStr::from("LOGIN"), text(user));
    table.insert(ShortStr::from("PASSWORD"), text(password));
    let mut out = BytesMut::new();
    table.encode_entries(&mut out);
    out.freeze()
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Connects with a tiny receive buffer, so a client that stops reading makes the
    /// broker's writes block after little data.
    pub async fn connect_small_window(addr: SocketAddr) -> RawClient {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// Protocol header and connection.start.
    pub async fn start(addr: SocketAddr) -> (RawClient, ConnectionStart) {
        let mut client = Self::connect(addr).await;
        client.write(&PROTOCOL_HEADER).await;
        let start = match client.recv_method().await {
            (0, Method::ConnectionStart(start)) => start,
            other => panic!("expected connection.start, got {other:?}"),
        };
        (client, start)
    }

    /// start-ok; returns the broker's answer (tune, or close/EOF on refusal).
    pub async fn start_ok(&mut self, login: &Login) -> Option<Method> {
        let mut capabilities = FieldTable::new();
        if login.auth_failure_close {
            capabilities.insert(
                ShortStr::from("authentication_failure_close"),
                FieldValue::Bool(true),
            );
        }
        if login.connection_blocked {
            capabilities.insert(ShortStr::from("connection.blocked"), FieldValue::Bool(true));
        }
        let mut properties = FieldTable::new();
        properties.insert(
            ShortStr::from("capabilities"),
            FieldValue::Table(capabilities),
        );
        let start_ok = ConnectionStartOk {
            client_properties: properties,
            mechanism: ShortStr::from(login.mechanism),
            response: login.response.clone(),
            locale: ShortStr::from("en_US"),
        };
        self.send(0, Method::ConnectionStartOk(start_ok)).await;
        self.recv().await.map(|frame| match frame {
            Frame::Method { method, .. } => method,
            other => panic!("expected a method after start-ok, got {other:?}"),
        })
    }

    /// tune-ok and connection.open; returns the broker's answer to open.
    pub async fn tune_ok_and_open(&mut self, tune: &ConnectionTune, login: &Login) -> Method {
        let tune_ok = ConnectionTuneOk {
            channel_max: login.channel_max.unwrap_or(tune.channel_max),
            frame_max: login.frame_max.unwrap_or(tune.frame_max),
            heartbeat: login.heartbeat,
        };
        self.send(0, Method::ConnectionTuneOk(tune_ok)).await;
        let open = ConnectionOpen {
            virtual_host: ShortStr::from(login.vhost.as_str()),
            ..Default::default()
        };
        self.send(0, Method::ConnectionOpen(open)).await;
        self.recv_method().await.1
    }

    /// The whole handshake; panics unless it ends in open-ok.
    pub async fn open_with(addr: SocketAddr, login: &Login) -> RawClient {
        let (client, _) = Self::start(addr).await;
        client.finish_handshake(login).await
    }

    /// start-ok, tune-ok and open after [`start`](Self::start); panics unless open-ok.
    pub async fn finish_handshake(mut self, login: &Login) -> RawClient {
        let tune = match self.start_ok(login).await {
            Some(Method::ConnectionTune(tune)) => tune,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        match self.tune_ok_and_open(&tune, login).await {
            Method::ConnectionOpenOk(_) => self,
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// Handshake as guest on "/" with the server's tune values and no heartbeats.
    pub async fn open(addr: SocketAddr) -> RawClient {
        Self::open_with(addr, &Login::default()).await
    }

    pub async fn open_channel(&mut self, channel: u16) {
        self.send(channel, Method::ChannelOpen(ChannelOpen::default()))
            .await;
        match self.recv_method().await {
            (c, Method::ChannelOpenOk(_)) if c == channel => {}
            other => panic!("expected channel.open-ok on {channel}, got {other:?}"),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes))
            .await
            .expect("write timed out")
            .expect("write");
    }

    /// Like [`write`](Self::write), for bytes the broker may refuse mid-way.
    pub async fn write_lossy(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(STEP, self.stream.write_all(bytes)).await;
    }

    pub fn method_bytes(channel: u16, method: &Method) -> BytesMut {
        let mut out = BytesMut::new();
        encode_method(&mut out, channel, method);
        out
    }

    pub async fn send(&mut self, channel: u16, method: Method) {
        let bytes = Self::method_bytes(channel, &method);
        self.write(&bytes).await;
    }

    /// A basic content header with no properties.
    pub async fn send_header(&mut self, channel: u16, body_size: u64) {
        let mut out = BytesMut::new();
        let header = ContentHeader {
            class_id: 60,
            weight: 0,
            body_size,
            properties: Properties::empty(),
        };
        encode_header(&mut out, channel, &header);
        self.write(&out).await;
    }

    pub async fn send_body(&mut self, channel: u16, payload: &[u8]) {
        let mut out = BytesMut::new();
        encode_body(&mut out, channel, payload);
        self.write(&out).await;
    }

    /// The next frame; `None` when the broker closed (or reset) the socket.
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(STEP, self.recv_unbounded())
            .await
            .expect("no frame from the broker in time")
    }

    async fn recv_unbounded(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, 0).expect("broker sent a bad frame") {
                return Some(frame);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next method frame, skipping heartbeats; panics on EOF.
    pub async fn recv_method(&mut self) -> (u16, Method) {
        loop {
            match self.recv().await {
                Some(Frame::Heartbeat { .. }) => continue,
                Some(Frame::Method { channel, method }) => return (channel, method),
                Some(other) => panic!("expected a method frame, got {other:?}"),
                None => panic!("broker closed the socket while a method was expected"),
            }
        }
    }

    /// Reads until connection.close (skipping anything else), answers close-ok, and
    /// checks the broker then closes the socket.
    pub async fn expect_close(&mut self) -> ConnectionClose {
        let close = loop {
            match self.recv().await {
                Some(Frame::Method {
                    channel: 0,
                    method: Method::ConnectionClose(close),
                }) => break close,
                Some(_) => continue,
                None => panic!("broker closed the socket without connection.close"),
            }
        };
        self.close_ok_and_eof().await;
        close
    }

    /// Answers a connection.close already received and checks the socket then closes.
    pub async fn close_ok_and_eof(&mut self) {
        let bytes = Self::method_bytes(0, &Method::ConnectionCloseOk(ConnectionCloseOk));
        self.write_lossy(&bytes).await;
        self.expect_eof(STEP).await;
    }

    /// Reads (and drops) frames until the broker closes the socket.
    pub async fn expect_eof(&mut self, within: Duration) {
        tokio::time::timeout(within, async {
            loop {
                self.buf.clear();
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("broker did not close the socket in time");
    }

    /// Up to `n` raw bytes, for answers that are not frames (the protocol header).
    pub async fn read_raw(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let mut filled = 0;
        while filled < n {
            let read = tokio::time::timeout(STEP, self.stream.read(&mut out[filled..]))
                .await
                .expect("no bytes from the broker in time");
            match read {
                Ok(0) | Err(_) => break,
                Ok(k) => filled += k,
            }
        }
        out.truncate(filled);
        out
    }
}

/// The reply code, class id and method id of a connection.close.
pub fn ids(close: &ConnectionClose) -> (u16, u16, u16) {
    (close.reply_code, close.class_id, close.method_id)
}
