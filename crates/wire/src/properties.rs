//! Content-header properties kept as received, read lazily.
//!
//! ```text
//! +-------------------+ +-------------------+     +------------------------+
//! | flags u16         | | flags u16 ...     | ... | present values, in     |
//! | bit 15 = prop 0   | | only if bit 0 of  |     | property order         |
//! | ...               | | the previous word |     |                        |
//! | bit 2  = prop 13  | | is set            |     |                        |
//! | bit 0  = another  | |                   |     |                        |
//! |   flags word      | |                   |     |                        |
//! +-------------------+ +-------------------+     +------------------------+
//!
//! #  property          type        #  property        type
//! 0  content-type      shortstr    7  expiration      shortstr
//! 1  content-encoding  shortstr    8  message-id      shortstr
//! 2  headers           table       9  timestamp       u64
//! 3  delivery-mode     octet       10 type            shortstr
//! 4  priority          octet       11 user-id         shortstr
//! 5  correlation-id    shortstr    12 app-id          shortstr
//! 6  reply-to          shortstr    13 cluster-id      shortstr
//! ```
//!
//! The broker forwards messages byte-for-byte, so `Properties` is only the
//! raw bytes; accessors walk them on each call. `validate` runs once when the
//! header frame arrives, so malformed properties never reach a consumer.
//! Continuation flag words are accepted only if they flag nothing (basic
//! has 14 properties, all in the first word); RabbitMQ ignores bit 0 and
//! would misread such a word as property data.

use bytes::Bytes;

use crate::cursor::Cursor;
use crate::error::WireError;
use crate::field_table::FieldTable;
use crate::short_str::ShortStr;

#[derive(Clone, Copy)]
pub(crate) enum Kind {
    ShortStr,
    Table,
    Octet,
    Timestamp,
}

pub(crate) const PROPERTY_COUNT: usize = 14;

pub(crate) const KINDS: [Kind; PROPERTY_COUNT] = [
    Kind::ShortStr,  // content-type
    Kind::ShortStr,  // content-encoding
    Kind::Table,     // headers
    Kind::Octet,     // delivery-mode
    Kind::Octet,     // priority
    Kind::ShortStr,  // correlation-id
    Kind::ShortStr,  // reply-to
    Kind::ShortStr,  // expiration
    Kind::ShortStr,  // message-id
    Kind::Timestamp, // timestamp
    Kind::ShortStr,  // type
    Kind::ShortStr,  // user-id
    Kind::ShortStr,  // app-id
    Kind::ShortStr,  // cluster-id
];

/// The flag bit of property `index` in the first flags word.
pub(crate) const fn flag(index: usize) -> u16 {
    1 << (15 - index)
}

const CONTINUATION: u16 = 1;

/// Raw property flags and values of a content header, as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Properties(Bytes);

impl Properties {
    /// No properties: a single all-zero flags word.
    pub fn empty() -> Properties {
        Properties(Bytes::from_static(&[0, 0]))
    }

    /// Wraps raw bytes (flags and values) without checking them; call
    /// [`Properties::validate`] before trusting bytes from a peer or disk.
    pub fn from_bytes(raw: Bytes) -> Properties {
        Properties(raw)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no bytes at all (not even a flags word).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A cursor just past the flag words, and the first flags word.
    pub(crate) fn start(&self) -> Result<(Cursor, u16), WireError> {
        let mut c = Cursor::new(self.0.clone(), "content header properties");
        let flags = c.short()?;
        let mut word = flags;
        while word & CONTINUATION != 0 {
            word = c.short()?;
            if word & !CONTINUATION != 0 {
                return Err(c.error("property flags beyond the 14 basic properties"));
            }
        }
        Ok((c, flags))
    }

    /// Checks every present value and that nothing trails them.
    pub fn validate(&self) -> Result<(), WireError> {
        let (mut c, flags) = self.start()?;
        for (i, kind) in KINDS.iter().enumerate() {
            if flags & flag(i) != 0 {
                skip(&mut c, *kind)?;
            }
        }
        c.finish()
    }

    /// A cursor at property `index`, if present. Malformed bytes read as absent.
    fn field(&self, index: usize) -> Option<Cursor> {
        // Most properties asked about on the publish path are absent: answer from the
        // first flags word without setting up a cursor (which clones the buffer handle).
        let first = self.0.get(..2)?;
        if u16::from_be_bytes([first[0], first[1]]) & flag(index) == 0 {
            return None;
        }
        let (mut c, flags) = self.start().ok()?;
        if flags & flag(index) == 0 {
            return None;
        }
        for (i, kind) in KINDS.iter().enumerate().take(index) {
            if flags & flag(i) != 0 {
                skip(&mut c, *kind).ok()?;
            }
        }
        Some(c)
    }

    fn short_str(&self, index: usize) -> Option<ShortStr> {
        self.field(index)?.shortstr().ok()
    }

    /// Where the value of property `index` starts, if present, found by walking the raw
    /// bytes in place. A cursor (as [`Properties::field`] sets up) holds a clone of the
    /// buffer handle, a reference count on the buffer the frame was read into; this is for
    /// fixed-size values, read on every publish. Lengths that run past the end read as
    /// absent, as malformed bytes do through a cursor.
    fn offset(&self, index: usize) -> Option<usize> {
        let raw = &self.0[..];
        let word = |at: usize| {
            raw.get(at..at + 2)
                .map(|w| u16::from_be_bytes([w[0], w[1]]))
        };
        let flags = word(0)?;
        if flags & flag(index) == 0 {
            return None;
        }
        let mut at = 2;
        let mut last = flags;
        while last & CONTINUATION != 0 {
            last = word(at)?;
            at += 2;
        }
        for (i, kind) in KINDS.iter().enumerate().take(index) {
            if flags & flag(i) == 0 {
                continue;
            }
            at += match kind {
                Kind::ShortStr => 1 + usize::from(*raw.get(at)?),
                Kind::Table => {
                    let size = raw.get(at..at + 4)?;
                    4 + u32::from_be_bytes([size[0], size[1], size[2], size[3]]) as usize
                }
                Kind::Octet => 1,
                Kind::Timestamp => 8,
            };
        }
        Some(at)
    }

    fn octet(&self, index: usize) -> Option<u8> {
        self.0.get(self.offset(index)?).copied()
    }

    pub fn content_type(&self) -> Option<ShortStr> {
        self.short_str(0)
    }

    pub fn content_encoding(&self) -> Option<ShortStr> {
        self.short_str(1)
    }

    /// Decodes the headers table (allocates); `None` if absent or malformed.
    pub fn headers(&self) -> Option<FieldTable> {
        self.field(2)?.table().ok()
    }

    pub fn delivery_mode(&self) -> Option<u8> {
        self.octet(3)
    }

    pub fn priority(&self) -> Option<u8> {
        self.octet(4)
    }

    pub fn correlation_id(&self) -> Option<ShortStr> {
        self.short_str(5)
    }

    pub fn reply_to(&self) -> Option<ShortStr> {
        self.short_str(6)
    }

    pub fn expiration(&self) -> Option<ShortStr> {
        self.short_str(7)
    }

    pub fn message_id(&self) -> Option<ShortStr> {
        self.short_str(8)
    }

    pub fn timestamp(&self) -> Option<u64> {
        self.field(9)?.timestamp().ok()
    }

    /// The `type` property.
    pub fn kind(&self) -> Option<ShortStr> {
        self.short_str(10)
    }

    pub fn user_id(&self) -> Option<ShortStr> {
        self.short_str(11)
    }

    pub fn app_id(&self) -> Option<ShortStr> {
        self.short_str(12)
    }

    pub fn cluster_id(&self) -> Option<ShortStr> {
        self.short_str(13)
    }
}

impl Default for Properties {
    fn default() -> Self {
        Properties::empty()
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decode() {
            Ok(p) => p.fmt(f),
            Err(_) => f.debug_tuple("Properties").field(&self.0).finish(),
        }
    }
}

pub(crate) fn skip(c: &mut Cursor, kind: Kind) -> Result<(), WireError> {
    match kind {
        Kind::ShortStr => c.skip_shortstr(),
        Kind::Table => c.skip_table(),
        Kind::Octet => c.skip(1),
        Kind::Timestamp => c.skip(8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basic_properties::BasicProperties;
    use crate::field_table::FieldValue;

    fn sample() -> BasicProperties {
        let mut headers = FieldTable::new();
        headers.insert("x-retries", FieldValue::I32(3));
        BasicProperties {
            content_type: Some("application/json".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            timestamp: Some(1_700_000_000),
            kind: Some("order.created".into()),
            cluster_id: Some("c1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn octets_read_in_place_agree_with_the_cursor_and_never_overrun() {
        let mut full = sample();
        full.priority = Some(7);
        full.correlation_id = Some("corr".into());
        let p = full.encode();
        assert_eq!((p.delivery_mode(), p.priority()), (Some(2), Some(7)));
        let via_cursor = |p: &Properties, i| p.field(i).and_then(|mut c| c.octet().ok());
        assert_eq!(p.priority(), via_cursor(&p, 4));
        // Every truncation: an answer or none, never a read past the end.
        let raw = p.as_bytes().to_vec();
        for len in 0..raw.len() {
            let cut = Properties::from_bytes(Bytes::copy_from_slice(&raw[..len]));
            let _ = (cut.delivery_mode(), cut.priority());
        }
    }

    #[test]
    fn lazy_accessors_read_present_values_and_skip_absent_ones() {
        let p = sample().encode();
        p.validate().unwrap();
        assert_eq!(p.content_type().as_deref(), Some("application/json"));
        assert_eq!(p.content_encoding(), None);
        assert_eq!(
            p.headers().unwrap().get("x-retries"),
            Some(&FieldValue::I32(3))
        );
        assert_eq!(p.delivery_mode(), Some(2));
        assert_eq!(p.priority(), None);
        assert_eq!(p.timestamp(), Some(1_700_000_000));
        assert_eq!(p.kind().as_deref(), Some("order.created"));
        assert_eq!(p.cluster_id().as_deref(), Some("c1"));
        assert_eq!(p.app_id(), None);
    }

    #[test]
    fn empty_properties_are_valid_and_have_nothing() {
        let p = Properties::empty();
        p.validate().unwrap();
        assert_eq!(p.content_type(), None);
        assert_eq!(p.decode().unwrap(), BasicProperties::default());
    }

    #[test]
    fn empty_continuation_word_is_skipped() {
        // delivery-mode present, continuation bit set, then an empty word.
        let p = Properties::from_bytes(Bytes::from_static(&[0x10, 0x01, 0x00, 0x00, 2]));
        p.validate().unwrap();
        assert_eq!(p.delivery_mode(), Some(2));
    }

    #[test]
    fn continuation_word_flagging_properties_is_rejected() {
        let p = Properties::from_bytes(Bytes::from_static(&[0x00, 0x01, 0x80, 0x00]));
        assert_eq!(p.validate().unwrap_err().code, 501);
    }

    #[test]
    fn trailing_bytes_after_properties_are_rejected() {
        let p = Properties::from_bytes(Bytes::from_static(&[0x10, 0x00, 2, 9]));
        assert_eq!(p.validate().unwrap_err().code, 501);
    }

    #[test]
    fn truncated_or_bad_utf8_value_is_rejected_and_reads_as_absent() {
        let truncated = Properties::from_bytes(Bytes::from_static(&[0x80, 0x00, 5, b'a']));
        assert_eq!(truncated.validate().unwrap_err().code, 501);
        assert_eq!(truncated.content_type(), None);
        let bad_utf8 = Properties::from_bytes(Bytes::from_static(&[0x80, 0x00, 1, 0xff]));
        assert!(bad_utf8.validate().is_err());
    }

    #[test]
    fn missing_flags_word_is_rejected() {
        assert!(Properties::from_bytes(Bytes::new()).validate().is_err());
    }
}
