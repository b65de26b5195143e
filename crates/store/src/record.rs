//! The message record: the unit every segment file is made of.
//!
//! ```text
//!  offset 0      4      8      9      10      18       26        27+e      28+e+r        32+e+r+p
//!         ┌──────┬──────┬──────┬──────┬───────┬────────┬─────────┬─────────┬─────────────┬──────────┐
//!         │ size │ crc  │ kind │ prio │ seq   │ expiry │ exchange│ routing │ properties  │ body     │
//!         │ u32  │ u32  │ u8   │ u8   │ u64   │ u64    │ u8 len  │ u8 len  │ u32 len     │ u32 len  │
//!         │      │      │      │      │       │        │ + bytes │ + bytes │ + bytes     │ + bytes  │
//!         └──────┴──────┴──────┴──────┴───────┴────────┴─────────┴─────────┴─────────────┴──────────┘
//!  size = bytes after the crc field (kind … body); crc = CRC32C over those same bytes.
//!  All integers big-endian, like the AMQP wire format the fields come from.
//! ```
//!
//! `kind` says whether the message must survive a restart (persistent) or is only on disk
//! because its queue paged it out (transient: skipped by recovery). `seq` is the queue's own
//! message id, which orders the queue. `prio` is the priority level the queue filed the message
//! under (0 outside priority queues) and `expiry` a unix time in milliseconds (0 = none): both
//! are in the fixed part so recovery can place and expire a message without parsing its
//! properties.
//! Properties are the AMQP content-header property bytes as the publisher sent them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::StoreError;

/// Bytes before `kind`: the size and crc fields.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// The smallest valid record body (kind … body with empty strings and body).
const RECORD_FIXED_BYTES: usize = 1 + 1 + 8 + 8 + 1 + 1 + 4 + 4;
/// Largest record accepted when reading; guards against allocating on a corrupt size field.
/// The broker's message size limit (128 MiB by default) plus headroom for the fixed fields.
pub const RECORD_SIZE_MAX_BYTES: usize = 512 * 1024 * 1024;

const _: () = assert!(RECORD_FIXED_BYTES == 28);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// delivery_mode 2 on a durable queue: recovered after a restart.
    Persistent = 1,
    /// On disk only to keep memory bounded: dropped by recovery.
    Transient = 2,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Persistent),
            2 => Some(RecordKind::Transient),
            _ => None,
        }
    }
}

/// A message as stored. Strings are raw bytes: they were validated when published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    /// The priority level within its queue (0 when the queue has no priorities).
    pub priority: u8,
    pub seq: u64,
    pub expiry_ms: u64,
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: Bytes,
    pub body: Bytes,
}

impl Record {
    /// Encoded size including the size and crc fields.
    pub fn encoded_len(&self) -> usize {
        RECORD_PREFIX_BYTES
            + RECORD_FIXED_BYTES
            + self.exchange.len()
            + self.routing_key.len()
            + self.properties.len()
            + self.body.len()
    }

    /// Appends the encoded record to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        assert!(
            self.exchange.len() <= 255 && self.routing_key.len() <= 255,
            "shortstr fields"
        );
        let start = dst.len();
        dst.reserve(self.encoded_len());
        dst.put_u32((self.encoded_len() - RECORD_PREFIX_BYTES) as u32);
        dst.put_u32(0); // crc, filled in below
        dst.put_u8(self.kind as u8);
        dst.put_u8(self.priority);
        dst.put_u64(self.seq);
        dst.put_u64(self.expiry_ms);
        dst.put_u8(self.exchange.len() as u8);
        dst.put_slice(&self.exchange);
        dst.put_u8(self.routing_key.len() as u8);
        dst.put_slice(&self.routing_key);
        dst.put_u32(self.properties.len() as u32);
        dst.put_slice(&self.properties);
        dst.put_u32(self.body.len() as u32);
        dst.put_slice(&self.body);
        let crc = crc32c::crc32c(&dst[start + RECORD_PREFIX_BYTES..]);
        dst[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
        debug_assert_eq!(dst.len() - start, self.encoded_len());
    }
}

/// The outcome of reading one record at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and its total encoded length.
    Record(Record, usize),
    /// Fewer bytes than the record needs: the end of what was written (or a torn write).
    Incomplete,
}

/// Reads the record at the start of `src` (a slice of a segment). Fields are sliced from
/// `src`, so a segment mapped into memory yields bodies without copying.
pub fn decode(src: &Bytes) -> Result<Decoded, StoreError> {
    if src.len() < RECORD_PREFIX_BYTES {
        return Ok(Decoded::Incomplete);
    }
    let size = u32::from_be_bytes(src[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(src[4..8].try_into().expect("4 bytes"));
    if size == 0 && crc == 0 {
        // Zeroes past the end of what was written (a preallocated tail).
        return Ok(Decoded::Incomplete);
    }
    if !(RECORD_FIXED_BYTES..=RECORD_SIZE_MAX_BYTES).contains(&size) {
        return Err(StoreError::Corrupt(format!(
            "record size {size} out of range"
        )));
    }
    let total = RECORD_PREFIX_BYTES + size;
    if src.len() < total {
        return Ok(Decoded::Incomplete);
    }
    let payload = src.slice(RECORD_PREFIX_BYTES..total);
    if crc32c::crc32c(&payload) != crc {
        return Err(StoreError::Corrupt("record checksum mismatch".into()));
    }
    let record = parse_payload(&payload)
        .ok_or_else(|| StoreError::Corrupt("record fields overrun its size".into()))?;
    Ok(Decoded::Record(record, total))
}

fn parse_payload(p: &Bytes) -> Option<Record> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<Bytes> {
        let end = at.checked_add(n).filter(|&end| end <= p.len())?;
        let out = p.slice(at..end);
        at = end;
        Some(out)
    };
    let kind = RecordKind::from_byte(take(1)?[0])?;
    let priority = take(1)?[0];
    let seq = u64::from_be_bytes(take(8)?[..].try_into().ok()?);
    let expiry_ms = u64::from_be_bytes(take(8)?[..].try_into().ok()?);
    let exchange_len = take(1)?[0] as usize;
    let exchange = take(exchange_len)?;
    let routing_key_len = take(1)?[0] as usize;
    let routing_key = take(routing_key_len)?;
    let properties_len = u32::from_be_bytes(take(4)?[..].try_into().ok()?) as usize;
    let properties = take(properties_len)?;
    let body_len = u32::from_be_bytes(take(4)?[..].try_into().ok()?) as usize;
    let body = take(body_len)?;
    if at != p.len() {
        return None;
    }
    Some(Record {
        kind,
        priority,
        seq,
        expiry_ms,
        exchange,
        routing_key,
        properties,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(seq: u64, body: &[u8]) -> Record {
        Record {
            kind: RecordKind::Persistent,
            priority: 3,
            seq,
            expiry_ms: 0,
            exchange: Bytes::from_static(b"amq.direct"),
            routing_key: Bytes::from_static(b"orders"),
            properties: Bytes::from_static(&[0x10, 0x00, 0x02]),
            body: Bytes::copy_from_slice(body),
        }
    }

    fn encoded(record: &Record) -> Bytes {
        let mut buf = BytesMut::new();
        record.encode(&mut buf);
        buf.freeze()
    }

    #[test]
    fn record_round_trips() {
        let record = sample(7, b"hello");
        let bytes = encoded(&record);
        assert_eq!(bytes.len(), record.encoded_len());
        assert_eq!(
            decode(&bytes).unwrap(),
            Decoded::Record(record, bytes.len())
        );
    }

    #[test]
    fn every_truncation_is_incomplete_not_corrupt() {
        let bytes = encoded(&sample(1, b"payload"));
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes.slice(..cut)).unwrap(),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let bytes = encoded(&sample(1, b"payload"));
        for at in RECORD_PREFIX_BYTES..bytes.len() {
            let mut copy = bytes.to_vec();
            copy[at] ^= 0x40;
            assert!(
                decode(&Bytes::from(copy)).is_err(),
                "flip at {at} went unnoticed"
            );
        }
    }

    #[test]
    fn zeroed_tail_reads_as_the_end() {
        assert_eq!(
            decode(&Bytes::from(vec![0u8; 64])).unwrap(),
            Decoded::Incomplete
        );
    }

    proptest! {
        #[test]
        fn arbitrary_records_round_trip(seq: u64, expiry: u64, priority: u8, transient: bool,
            exchange in proptest::collection::vec(any::<u8>(), 0..=255),
            key in proptest::collection::vec(any::<u8>(), 0..=255),
            props in proptest::collection::vec(any::<u8>(), 0..64),
            body in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let record = Record {
                kind: if transient { RecordKind::Transient } else { RecordKind::Persistent },
                priority, seq, expiry_ms: expiry,
                exchange: exchange.into(), routing_key: key.into(), properties: props.into(), body: body.into(),
            };
            let bytes = encoded(&record);
            prop_assert_eq!(decode(&bytes).unwrap(), Decoded::Record(record, bytes.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&Bytes::from(data));
        }
    }
}
