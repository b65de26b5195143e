//! `Cursor`: reads AMQP primitive types from a `Bytes` without copying.
//!
//! ```text
//! octet      u8
//! short      u16 big-endian
//! long       u32 big-endian
//! longlong   u64 big-endian (also timestamp)
//! shortstr   u8 length, then UTF-8 bytes
//! longstr    u32 length, then bytes
//! table      u32 length, then entries (see field_table.rs)
//! ```
//!
//! Strings and tables are `Bytes::slice`s of the input (a reference-count
//! bump, no allocation). Every failure is 501 FRAME_ERROR attributed to the
//! method being decoded, as RabbitMQ's `rabbit_misc:frame_error` does.

use bytes::Bytes;

use crate::error::WireError;
use crate::field_table::FieldTable;
use crate::short_str::{ShortStr, ShortStrError};

pub(crate) struct Cursor {
    buf: Bytes,
    pos: usize,
    /// What is being decoded, for error replies: `(class_id, method_id, name)`.
    class_id: u16,
    method_id: u16,
    what: &'static str,
}

impl Cursor {
    pub(crate) fn new(buf: Bytes, what: &'static str) -> Cursor {
        Cursor {
            buf,
            pos: 0,
            class_id: 0,
            method_id: 0,
            what,
        }
    }

    /// Attributes later errors to a method, so `connection.close` names it.
    pub(crate) fn set_method(&mut self, class_id: u16, method_id: u16, name: &'static str) {
        self.class_id = class_id;
        self.method_id = method_id;
        self.what = name;
    }

    /// A cursor over `buf` that reports errors like `self`.
    pub(crate) fn sub(&self, buf: Bytes) -> Cursor {
        Cursor {
            buf,
            pos: 0,
            class_id: self.class_id,
            method_id: self.method_id,
            what: self.what,
        }
    }

    pub(crate) fn error(&self, detail: impl std::fmt::Display) -> WireError {
        WireError::method_frame_error(
            self.class_id,
            self.method_id,
            format!("cannot decode {}: {detail}", self.what),
        )
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Fails on trailing bytes: RabbitMQ's decoders match the whole binary.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.error(format_args!("{} trailing bytes", self.remaining())))
        }
    }

    fn take_array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let end = self.pos + N;
        match self.buf.get(self.pos..end) {
            Some(s) => {
                self.pos = end;
                let mut out = [0u8; N];
                out.copy_from_slice(s);
                Ok(out)
            }
            None => Err(self.error("truncated")),
        }
    }

    /// The next `len` bytes as a shared slice. `len` comes from the peer, so
    /// it is checked against what is buffered before anything is sliced.
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, WireError> {
        if len > self.remaining() {
            return Err(self.error(format_args!(
                "length {len} exceeds the {} bytes left",
                self.remaining()
            )));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// Skips `len` bytes without slicing (used by validating walks).
    pub(crate) fn skip(&mut self, len: usize) -> Result<(), WireError> {
        if len > self.remaining() {
            return Err(self.error("truncated"));
        }
        self.pos += len;
        Ok(())
    }

    pub(crate) fn octet(&mut self) -> Result<u8, WireError> {
        Ok(self.take_array::<1>()?[0])
    }

    pub(crate) fn short(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take_array()?))
    }

    pub(crate) fn long(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take_array()?))
    }

    pub(crate) fn longlong(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take_array()?))
    }

    pub(crate) fn timestamp(&mut self) -> Result<u64, WireError> {
        self.longlong()
    }

    pub(crate) fn shortstr(&mut self) -> Result<ShortStr, WireError> {
        let len = usize::from(self.octet()?);
        let bytes = self.take(len)?;
        ShortStr::from_utf8(bytes).map_err(|e| self.shortstr_error(e))
    }

    fn shortstr_error(&self, e: ShortStrError) -> WireError {
        match e {
            // RabbitMQ's rabbit_binary_parser:assert_utf8 wording.
            ShortStrError::InvalidUtf8 => self.error("Malformed UTF-8 in shortstr"),
            ShortStrError::TooLong(n) => self.error(format_args!("shortstr of {n} bytes")),
        }
    }

    /// Skips a shortstr after checking its UTF-8 (validation without slicing).
    pub(crate) fn skip_shortstr(&mut self) -> Result<(), WireError> {
        let len = usize::from(self.octet()?);
        if len > self.remaining() {
            return Err(self.error("truncated shortstr"));
        }
        if std::str::from_utf8(&self.buf[self.pos..self.pos + len]).is_err() {
            return Err(self.shortstr_error(ShortStrError::InvalidUtf8));
        }
        self.pos += len;
        Ok(())
    }

    pub(crate) fn longstr(&mut self) -> Result<Bytes, WireError> {
        let len = self.long()? as usize;
        self.take(len)
    }

    pub(crate) fn table(&mut self) -> Result<FieldTable, WireError> {
        let bytes = self.longstr()?;
        crate::field_table::decode_entries(self.sub(bytes), 0)
    }

    /// Checks a table's structure without building it.
    pub(crate) fn skip_table(&mut self) -> Result<(), WireError> {
        let bytes = self.longstr()?;
        crate::field_table::validate_entries(self.sub(bytes), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_primitives() {
        let mut c = Cursor::new(
            Bytes::from_static(&[1, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4]),
            "t",
        );
        assert_eq!(c.octet().unwrap(), 1);
        assert_eq!(c.short().unwrap(), 2);
        assert_eq!(c.long().unwrap(), 3);
        assert_eq!(c.longlong().unwrap(), 4);
        assert!(c.finish().is_ok());
    }

    #[test]
    fn declared_length_past_the_end_is_frame_error() {
        let mut c = Cursor::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, b'a']), "t");
        let e = c.longstr().unwrap_err();
        assert_eq!(e.code, 501);
    }

    #[test]
    fn trailing_bytes_are_frame_error() {
        let mut c = Cursor::new(Bytes::from_static(&[1, 2]), "t");
        c.set_method(60, 80, "basic.ack");
        c.octet().unwrap();
        let e = c.finish().unwrap_err();
        assert_eq!((e.code, e.class_id, e.method_id), (501, 60, 80));
        assert!(e.text.contains("basic.ack"), "{}", e.text);
    }

    #[test]
    fn malformed_utf8_shortstr_is_frame_error() {
        let mut c = Cursor::new(Bytes::from_static(&[2, 0xc3, 0x28]), "t");
        let e = c.shortstr().unwrap_err();
        assert_eq!(e.code, 501);
        assert!(e.text.contains("Malformed UTF-8"));
    }
}
