//! Outgoing frames of one connection, written with vectored writes.
//!
//! Frames are encoded into `scratch`; a message body above [`BODY_INLINE_MAX_BYTES`] is not
//! copied but queued as its own `Bytes` chunk (the same buffer the publisher's frame was read
//! into), so a large message fanned out to many consumers is never copied on the way out.
//! Everything encoded during one wake-up leaves in as few `writev` calls as the socket takes.
//!
//! ```text
//!   chunks: [ scratch₀ (method+header+body-frame start) | body Bytes | scratch₁ (frame end, …) ]
//! ```

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes, BytesMut};
use ferrymq_broker::message::Message;
use ferrymq_wire as frame;
use ferrymq_wire::{frame_type, Method, Properties, ShortStr};
use tokio::net::TcpStream;

/// Bodies up to this size are copied into the frame buffer: cheaper than an extra iovec.
pub const BODY_INLINE_MAX_BYTES: usize = 2048;
/// iovecs handed to one writev call.
const WRITE_SLICES_MAX: usize = 64;
/// Class id of basic, the only class with content.
const CLASS_BASIC: u16 = 60;

pub struct Outbox {
    chunks: VecDeque<Bytes>,
    scratch: BytesMut,
    queued_bytes: usize,
    frame_max_bytes: u32,
}

impl Outbox {
    pub fn new(frame_max_bytes: u32) -> Self {
        Outbox {
            chunks: VecDeque::new(),
            scratch: BytesMut::new(),
            queued_bytes: 0,
            frame_max_bytes,
        }
    }

    pub fn set_frame_max(&mut self, frame_max_bytes: u32) {
        self.frame_max_bytes = frame_max_bytes;
    }

    pub fn method(&mut self, channel: u16, method: &Method) {
        let before = self.scratch.len();
        frame::encode_method(&mut self.scratch, channel, method);
        self.queued_bytes += self.scratch.len() - before;
    }

    /// A basic.deliver method frame (see [`frame::encode_basic_deliver`]).
    pub fn deliver(
        &mut self,
        channel: u16,
        consumer_tag: &ShortStr,
        delivery_tag: u64,
        redelivered: bool,
        message: &Message,
    ) {
        let before = self.scratch.len();
        frame::encode_basic_deliver(
            &mut self.scratch,
            channel,
            consumer_tag,
            delivery_tag,
            redelivered,
            &message.exchange,
            &message.routing_key,
        );
        self.queued_bytes += self.scratch.len() - before;
    }

    pub fn heartbeat(&mut self) {
        let before = self.scratch.len();
        frame::encode_heartbeat(&mut self.scratch);
        self.queued_bytes += self.scratch.len() - before;
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.scratch.extend_from_slice(bytes);
        self.queued_bytes += bytes.len();
    }

    /// A content header and the body frames of a message (after its method frame).
    pub fn content(&mut self, channel: u16, properties: &Properties, body: &Bytes) {
        let before = self.scratch.len();
        frame::encode_header_parts(
            &mut self.scratch,
            channel,
            CLASS_BASIC,
            0,
            body.len() as u64,
            properties,
        );
        self.queued_bytes += self.scratch.len() - before;
        // frame_max 0 means "no limit": one body frame, not one frame per byte.
        let payload_max = frame::body_payload_max_bytes(self.frame_max_bytes).max(1);
        let mut offset = 0;
        while offset < body.len() {
            let end = (offset + payload_max).min(body.len());
            self.body_frame(channel, body, offset, end);
            offset = end;
        }
    }

    fn body_frame(&mut self, channel: u16, body: &Bytes, start: usize, end: usize) {
        let size = end - start;
        frame::encode_frame_start(&mut self.scratch, frame_type::BODY, channel, size as u32);
        if size <= BODY_INLINE_MAX_BYTES {
            self.scratch.extend_from_slice(&body[start..end]);
        } else {
            self.seal_scratch();
            self.chunks.push_back(body.slice(start..end));
        }
        self.scratch.extend_from_slice(&[frame::FRAME_END]);
        self.queued_bytes += frame::FRAME_HEADER_SIZE + size + 1;
    }

    fn seal_scratch(&mut self) {
        if !self.scratch.is_empty() {
            self.chunks.push_back(self.scratch.split().freeze());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queued_bytes == 0
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Writes as much as the socket takes without blocking. Returns Ok when the socket
    /// would block or everything is written.
    pub fn write_to(&mut self, stream: &TcpStream) -> io::Result<()> {
        self.seal_scratch();
        while !self.chunks.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .chunks
                .iter()
                .take(WRITE_SLICES_MAX)
                .map(|chunk| IoSlice::new(chunk))
                .collect();
            match stream.try_write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn consume(&mut self, mut written: usize) {
        self.queued_bytes -= written;
        while written > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame queued so far, decoded back.
    fn queued_frames(outbox: &mut Outbox) -> Vec<frame::Frame> {
        outbox.seal_scratch();
        let mut all = BytesMut::new();
        for chunk in &outbox.chunks {
            all.extend_from_slice(chunk);
        }
        let mut frames = Vec::new();
        while let Some(f) = frame::decode_frame(&mut all, 0).unwrap() {
            frames.push(f);
        }
        assert!(all.is_empty());
        frames
    }

    fn body_sizes(frames: &[frame::Frame]) -> Vec<usize> {
        frames
            .iter()
            .filter_map(|f| match f {
                frame::Frame::Body { payload, .. } => Some(payload.len()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn body_is_split_to_fit_frame_max() {
        let mut outbox = Outbox::new(4096);
        let body = Bytes::from(vec![7u8; 10_000]);
        outbox.content(1, &Properties::empty(), &body);
        let frames = queued_frames(&mut outbox);
        assert_eq!(body_sizes(&frames), vec![4088, 4088, 1824]);
    }

    #[test]
    fn unlimited_frame_max_sends_the_body_in_one_frame() {
        let mut outbox = Outbox::new(0);
        let body = Bytes::from(vec![7u8; 10_000]);
        outbox.content(1, &Properties::empty(), &body);
        let frames = queued_frames(&mut outbox);
        assert_eq!(body_sizes(&frames), vec![10_000]);
    }
}
