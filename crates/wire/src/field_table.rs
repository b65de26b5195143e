//! Field tables and field values (method `arguments`, `headers`, peer properties).
//!
//! ```text
//! table:  +-------------+------------------------------------------+
//!         | size u32    | entry*  (exactly `size` bytes)           |
//!         +-------------+------------------------------------------+
//! entry:  | shortstr key | tag u8 | value                          |
//! array:  | size u32     | (tag u8 | value)*                       |
//!
//! tag  value                       tag  value
//! 't'  bool (u8, non-zero = true)  'l'  i64   ('L' accepted as i64 too)
//! 'b'  i8                          'f'  f32
//! 'B'  u8                          'd'  f64
//! 's'  i16                         'D'  decimal: scale u8, value u32
//! 'u'  u16                         'S'  longstr
//! 'I'  i32                         'x'  byte array (longstr layout)
//! 'i'  u32                         'A'  array
//! 'T'  timestamp u64               'F'  table
//! 'V'  void (no bytes)
//! ```
//!
//! Tags follow RabbitMQ's `rabbit_binary_parser:parse_table` (the 0-9-1
//! errata table), not the spec's grammar: clients interoperate with
//! RabbitMQ's choice. Like RabbitMQ we decode both `l` and `L` as i64 and
//! reject the spec-only `U` and `s`-as-shortstr readings.

use bytes::{BufMut, Bytes, BytesMut};

use crate::cursor::Cursor;
use crate::error::WireError;
use crate::put::{patch_len, put_longstr, put_shortstr, reserve_len};
use crate::short_str::ShortStr;

/// Nesting limit for tables and arrays. A hostile peer can nest a table
/// 1 byte deep per level; without a limit a 128 KiB frame would recurse
/// ~25k frames deep and overflow the stack.
pub const TABLE_DEPTH_MAX: usize = 64;

/// One field value.
///
/// Equality compares floats by bit pattern, so a decoded NaN equals itself
/// and `Eq` holds: two values are equal exactly when they encode the same.
#[derive(Debug, Clone)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal { scale: u8, value: u32 },
    LongStr(Bytes),
    Bytes(Bytes),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
}

impl FieldValue {
    /// A deep copy whose byte strings own their bytes (see [`FieldTable::detached`]).
    pub fn detached(&self) -> FieldValue {
        match self {
            FieldValue::LongStr(b) => FieldValue::LongStr(Bytes::copy_from_slice(b)),
            FieldValue::Bytes(b) => FieldValue::Bytes(Bytes::copy_from_slice(b)),
            FieldValue::Array(items) => {
                FieldValue::Array(items.iter().map(FieldValue::detached).collect())
            }
            FieldValue::Table(table) => FieldValue::Table(table.detached()),
            other => other.clone(),
        }
    }

    /// Any integer type widened to i64 (not timestamps, decimals or floats).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(v.into()),
            FieldValue::U8(v) => Some(v.into()),
            FieldValue::I16(v) => Some(v.into()),
            FieldValue::U16(v) => Some(v.into()),
            FieldValue::I32(v) => Some(v.into()),
            FieldValue::U32(v) => Some(v.into()),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// A longstr that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            FieldValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&FieldTable> {
        match self {
            FieldValue::Table(t) => Some(t),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[FieldValue]> {
        match self {
            FieldValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The type tag this value is written with.
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal { .. } => b'D',
            FieldValue::LongStr(_) => b'S',
            FieldValue::Bytes(_) => b'x',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
        }
    }

    /// Writes the tag and the value.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u8(self.tag());
        match self {
            FieldValue::Bool(v) => dst.put_u8(u8::from(*v)),
            FieldValue::I8(v) => dst.put_i8(*v),
            FieldValue::U8(v) => dst.put_u8(*v),
            FieldValue::I16(v) => dst.put_i16(*v),
            FieldValue::U16(v) => dst.put_u16(*v),
            FieldValue::I32(v) => dst.put_i32(*v),
            FieldValue::U32(v) => dst.put_u32(*v),
            FieldValue::I64(v) => dst.put_i64(*v),
            FieldValue::F32(v) => dst.put_f32(*v),
            FieldValue::F64(v) => dst.put_f64(*v),
            FieldValue::Decimal { scale, value } => {
                dst.put_u8(*scale);
                dst.put_u32(*value);
            }
            FieldValue::LongStr(b) | FieldValue::Bytes(b) => put_longstr(dst, b),
            FieldValue::Array(items) => {
                let at = reserve_len(dst);
                for item in items {
                    item.encode(dst);
                }
                patch_len(dst, at);
            }
            FieldValue::Timestamp(v) => dst.put_u64(*v),
            FieldValue::Table(t) => t.encode(dst),
            FieldValue::Void => {}
        }
    }
}

impl PartialEq for FieldValue {
    fn eq(&self, other: &Self) -> bool {
        use FieldValue as V;
        match (self, other) {
            (V::F32(a), V::F32(b)) => a.to_bits() == b.to_bits(),
            (V::F64(a), V::F64(b)) => a.to_bits() == b.to_bits(),
            (V::Bool(a), V::Bool(b)) => a == b,
            (V::I8(a), V::I8(b)) => a == b,
            (V::U8(a), V::U8(b)) => a == b,
            (V::I16(a), V::I16(b)) => a == b,
            (V::U16(a), V::U16(b)) => a == b,
            (V::I32(a), V::I32(b)) => a == b,
            (V::U32(a), V::U32(b)) => a == b,
            (V::I64(a), V::I64(b)) => a == b,
            (
                V::Decimal {
                    scale: s1,
                    value: v1,
                },
                V::Decimal {
                    scale: s2,
                    value: v2,
                },
            ) => s1 == s2 && v1 == v2,
            (V::LongStr(a), V::LongStr(b)) | (V::Bytes(a), V::Bytes(b)) => a == b,
            (V::Array(a), V::Array(b)) => a == b,
            (V::Timestamp(a), V::Timestamp(b)) => a == b,
            (V::Table(a), V::Table(b)) => a == b,
            (V::Void, V::Void) => true,
            _ => false,
        }
    }
}

impl Eq for FieldValue {}

/// A field table in wire order. Duplicate keys received from a peer are
/// kept (so re-encoding reproduces the input); `get` returns the first.
///
/// One pointer wide, and no allocation when empty (most tables are): a table is part of
/// several methods, and every `Method` and `Frame` is as large as its largest variant.
/// Kept under 128 bytes, a frame moves with a few vector instructions instead of a call
/// to `memcpy`, and frames move several times on the way through the connection.
// The box is the point: one pointer inline instead of a vector's three words.
#[allow(clippy::box_collection)]
#[derive(Clone, Default)]
pub struct FieldTable(Option<Box<Vec<(ShortStr, FieldValue)>>>);

impl FieldTable {
    pub fn new() -> FieldTable {
        FieldTable(None)
    }

    /// Never `Some` of an empty vector, so that equal tables compare equal cheaply.
    fn from_vec(entries: Vec<(ShortStr, FieldValue)>) -> FieldTable {
        FieldTable((!entries.is_empty()).then(|| Box::new(entries)))
    }

    fn entries(&self) -> &[(ShortStr, FieldValue)] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.entries()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Replaces the value of an existing key in place (keeping its position),
    /// or appends. Returns the old value.
    pub fn insert(&mut self, key: impl Into<ShortStr>, value: FieldValue) -> Option<FieldValue> {
        let key = key.into();
        let entries = self.0.get_or_insert_with(Box::default);
        match entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                entries.push((key, value));
                None
            }
        }
    }

    /// Removes every entry with `key`; returns the first value removed.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let entries = self.0.as_mut()?;
        let pos = entries.iter().position(|(k, _)| k == key)?;
        let (_, first) = entries.remove(pos);
        entries.retain(|(k, _)| k != key);
        if entries.is_empty() {
            self.0 = None;
        }
        Some(first)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.entries().iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Decodes table entries: `entries` is what follows the u32 size.
    pub fn decode(entries: Bytes) -> Result<FieldTable, WireError> {
        decode_entries(Cursor::new(entries, "field table"), 0)
    }

    /// A deep copy whose strings own their bytes (see [`ShortStr::detached`]): for tables
    /// kept for long, such as declare and bind arguments.
    pub fn detached(&self) -> FieldTable {
        self.entries()
            .iter()
            .map(|(key, value)| (key.detached(), value.detached()))
            .collect()
    }

    /// Writes the table with its u32 size, as a method argument or property.
    pub fn encode(&self, dst: &mut BytesMut) {
        crate::put::put_table(dst, self);
    }

    /// Writes the entries only (no size).
    pub fn encode_entries(&self, dst: &mut BytesMut) {
        for (key, value) in self.entries() {
            put_shortstr(dst, key);
            value.encode(dst);
        }
    }
}

impl FromIterator<(ShortStr, FieldValue)> for FieldTable {
    /// Keeps every pair in order, duplicates included (like decoding).
    fn from_iter<I: IntoIterator<Item = (ShortStr, FieldValue)>>(iter: I) -> Self {
        FieldTable::from_vec(iter.into_iter().collect())
    }
}

impl From<Vec<(ShortStr, FieldValue)>> for FieldTable {
    fn from(entries: Vec<(ShortStr, FieldValue)>) -> Self {
        FieldTable::from_vec(entries)
    }
}

impl PartialEq for FieldTable {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for FieldTable {}

impl std::fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FieldTable").field(&self.entries()).finish()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = &'a (ShortStr, FieldValue);
    type IntoIter = std::slice::Iter<'a, (ShortStr, FieldValue)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries().iter()
    }
}

fn check_depth(c: &Cursor, depth: usize) -> Result<(), WireError> {
    if depth >= TABLE_DEPTH_MAX {
        return Err(c.error(format_args!("tables nested deeper than {TABLE_DEPTH_MAX}")));
    }
    Ok(())
}

pub(crate) fn decode_entries(mut c: Cursor, depth: usize) -> Result<FieldTable, WireError> {
    check_depth(&c, depth)?;
    let mut entries = Vec::new();
    while !c.is_empty() {
        let key = c.shortstr()?;
        let value = decode_value(&mut c, depth)?;
        entries.push((key, value));
    }
    Ok(FieldTable::from_vec(entries))
}

fn decode_array(mut c: Cursor, depth: usize) -> Result<Vec<FieldValue>, WireError> {
    check_depth(&c, depth)?;
    let mut items = Vec::new();
    while !c.is_empty() {
        items.push(decode_value(&mut c, depth)?);
    }
    Ok(items)
}

fn decode_value(c: &mut Cursor, depth: usize) -> Result<FieldValue, WireError> {
    let tag = c.octet()?;
    Ok(match tag {
        b't' => FieldValue::Bool(c.octet()? != 0),
        b'b' => FieldValue::I8(c.octet()? as i8),
        b'B' => FieldValue::U8(c.octet()?),
        b's' => FieldValue::I16(c.short()? as i16),
        b'u' => FieldValue::U16(c.short()?),
        b'I' => FieldValue::I32(c.long()? as i32),
        b'i' => FieldValue::U32(c.long()?),
        // RabbitMQ reads both as signed 64-bit (rabbitmq-server#1093).
        b'l' | b'L' => FieldValue::I64(c.longlong()? as i64),
        b'f' => FieldValue::F32(f32::from_bits(c.long()?)),
        b'd' => FieldValue::F64(f64::from_bits(c.longlong()?)),
        b'D' => FieldValue::Decimal {
            scale: c.octet()?,
            value: c.long()?,
        },
        b'S' => FieldValue::LongStr(c.longstr()?),
        b'x' => FieldValue::Bytes(c.longstr()?),
        b'A' => {
            let bytes = c.longstr()?;
            FieldValue::Array(decode_array(c.sub(bytes), depth + 1)?)
        }
        b'T' => FieldValue::Timestamp(c.timestamp()?),
        b'F' => {
            let bytes = c.longstr()?;
            FieldValue::Table(decode_entries(c.sub(bytes), depth + 1)?)
        }
        b'V' => FieldValue::Void,
        other => return Err(c.error(format_args!("unknown field type tag 0x{other:02x}"))),
    })
}

/// Walks a table's entries checking structure and UTF-8 keys, building nothing.
pub(crate) fn validate_entries(mut c: Cursor, depth: usize) -> Result<(), WireError> {
    check_depth(&c, depth)?;
    while !c.is_empty() {
        c.skip_shortstr()?;
        validate_value(&mut c, depth)?;
    }
    Ok(())
}

fn validate_array(mut c: Cursor, depth: usize) -> Result<(), WireError> {
    check_depth(&c, depth)?;
    while !c.is_empty() {
        validate_value(&mut c, depth)?;
    }
    Ok(())
}

fn validate_value(c: &mut Cursor, depth: usize) -> Result<(), WireError> {
    let tag = c.octet()?;
    match tag {
        b't' | b'b' | b'B' => c.skip(1),
        b's' | b'u' => c.skip(2),
        b'I' | b'i' | b'f' => c.skip(4),
        b'D' => c.skip(5),
        b'l' | b'L' | b'd' | b'T' => c.skip(8),
        b'S' | b'x' => c.longstr().map(drop),
        b'A' => {
            let bytes = c.longstr()?;
            validate_array(c.sub(bytes), depth + 1)
        }
        b'F' => {
            let bytes = c.longstr()?;
            validate_entries(c.sub(bytes), depth + 1)
        }
        b'V' => Ok(()),
        other => Err(c.error(format_args!("unknown field type tag 0x{other:02x}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::field_table;
    use proptest::prelude::*;

    fn encoded(t: &FieldTable) -> Bytes {
        let mut dst = BytesMut::new();
        t.encode_entries(&mut dst);
        dst.freeze()
    }

    #[test]
    fn detached_tables_own_their_bytes() {
        let frame = Bytes::from_static(b"..key-and-value..");
        let mut nested = FieldTable::new();
        nested.insert("n", FieldValue::LongStr(frame.slice(2..5)));
        let mut table = FieldTable::new();
        table.insert(
            ShortStr::from_utf8(frame.slice(6..9)).unwrap(),
            FieldValue::Array(vec![FieldValue::Table(nested)]),
        );
        let copy = table.detached();
        assert_eq!(copy, table);
        let within = |b: &[u8]| frame.as_ptr_range().contains(&b.as_ptr());
        let (key, value) = copy.iter().next().unwrap();
        assert!(!within(key.as_bytes()), "the key is a copy");
        let FieldValue::Array(items) = value else {
            panic!()
        };
        let FieldValue::Table(inner) = &items[0] else {
            panic!()
        };
        let Some(FieldValue::LongStr(bytes)) = inner.get("n") else {
            panic!()
        };
        assert!(!within(bytes), "nested strings are copies");
    }

    #[test]
    fn insert_replaces_in_place_and_keeps_order() {
        let mut t = FieldTable::new();
        t.insert("a", FieldValue::I32(1));
        t.insert("b", FieldValue::Bool(true));
        assert_eq!(t.insert("a", FieldValue::I32(2)), Some(FieldValue::I32(1)));
        let keys: Vec<&str> = t.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(t.get("a").and_then(FieldValue::as_i64), Some(2));
        assert_eq!(t.remove("a"), Some(FieldValue::I32(2)));
        assert!(!t.contains_key("a"));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn rabbitmq_encoding_of_every_tag() {
        let mut t = FieldTable::new();
        t.insert("s", FieldValue::I16(-2));
        t.insert("x", FieldValue::Bytes(Bytes::from_static(b"\x00\x01")));
        let bytes = encoded(&t);
        assert_eq!(&bytes[..], b"\x01ss\xff\xfe\x01xx\x00\x00\x00\x02\x00\x01");
    }

    #[test]
    fn capital_l_decodes_as_signed_64_bit_like_rabbitmq() {
        let t = FieldTable::decode(Bytes::from_static(
            b"\x01kL\xff\xff\xff\xff\xff\xff\xff\xff",
        ))
        .unwrap();
        assert_eq!(t.get("k"), Some(&FieldValue::I64(-1)));
    }

    #[test]
    fn unknown_tag_is_frame_error() {
        let e = FieldTable::decode(Bytes::from_static(b"\x01kU\x00\x01")).unwrap_err();
        assert_eq!(e.code, 501);
        assert!(e.text.contains("0x55"), "{}", e.text);
    }

    #[test]
    fn truncated_value_is_frame_error() {
        let e = FieldTable::decode(Bytes::from_static(b"\x01kI\x00\x01")).unwrap_err();
        assert_eq!(e.code, 501);
    }

    #[test]
    fn nesting_past_the_limit_is_rejected_without_recursing_further() {
        // 100 tables, each holding the next under key "k".
        let mut value = FieldValue::Void;
        for _ in 0..100 {
            let mut t = FieldTable::new();
            t.insert("k", value);
            value = FieldValue::Table(t);
        }
        let mut outer = FieldTable::new();
        outer.insert("k", value);
        let bytes = encoded(&outer);
        let e = FieldTable::decode(bytes.clone()).unwrap_err();
        assert!(e.text.contains("nested"), "{}", e.text);
        let e = validate_entries(Cursor::new(bytes, "t"), 0).unwrap_err();
        assert!(e.text.contains("nested"), "{}", e.text);
    }

    #[test]
    fn nan_equals_itself_bitwise() {
        assert_eq!(FieldValue::F64(f64::NAN), FieldValue::F64(f64::NAN));
        assert_ne!(FieldValue::F64(0.0), FieldValue::F64(-0.0));
    }

    #[test]
    fn accessors_widen_and_check_types() {
        assert_eq!(FieldValue::U32(7).as_i64(), Some(7));
        assert_eq!(FieldValue::Timestamp(7).as_i64(), None);
        assert_eq!(
            FieldValue::LongStr(Bytes::from_static(b"hi")).as_str(),
            Some("hi")
        );
        assert_eq!(
            FieldValue::LongStr(Bytes::from_static(b"\xff")).as_str(),
            None
        );
        assert_eq!(FieldValue::Bool(true).as_bool(), Some(true));
    }

    proptest! {
        #[test]
        fn every_field_type_round_trips(t in field_table()) {
            let bytes = encoded(&t);
            prop_assert_eq!(&FieldTable::decode(bytes.clone()).unwrap(), &t);
            prop_assert!(validate_entries(Cursor::new(bytes, "t"), 0).is_ok());
        }

        #[test]
        fn decode_and_validate_agree_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(bytes);
            let decoded = FieldTable::decode(bytes.clone());
            let validated = validate_entries(Cursor::new(bytes, "field table"), 0);
            prop_assert_eq!(decoded.is_ok(), validated.is_ok());
        }
    }
}
