//! Encoders for the AMQP primitive types that need more than one `BufMut`
//! call (layouts are drawn in cursor.rs). Tables are written in place: a
//! placeholder length is patched afterwards, so no intermediate buffer.

use bytes::{BufMut, BytesMut};

use crate::field_table::FieldTable;
use crate::short_str::{ShortStr, SHORT_STR_LEN_MAX_BYTES};

pub(crate) fn put_shortstr(dst: &mut BytesMut, s: &ShortStr) {
    // ShortStr's constructors guarantee this; a violation would desync the peer.
    debug_assert!(s.len() <= SHORT_STR_LEN_MAX_BYTES);
    dst.put_u8(s.len() as u8);
    dst.put_slice(s.as_bytes());
}

/// Panics if `bytes` is 4 GiB or more: no frame can carry it anyway.
pub(crate) fn put_longstr(dst: &mut BytesMut, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("longstr of 4 GiB or more");
    dst.put_u32(len);
    dst.put_slice(bytes);
}

pub(crate) fn put_table(dst: &mut BytesMut, table: &FieldTable) {
    let at = reserve_len(dst);
    table.encode_entries(dst);
    patch_len(dst, at);
}

/// Writes a zero u32 length and returns where, for [`patch_len`].
pub(crate) fn reserve_len(dst: &mut BytesMut) -> usize {
    let at = dst.len();
    dst.put_u32(0);
    at
}

/// Sets the u32 at `at` to the number of bytes written after it.
pub(crate) fn patch_len(dst: &mut BytesMut, at: usize) {
    let len = dst.len() - at - 4;
    let len = u32::try_from(len).expect("table of 4 GiB or more");
    dst[at..at + 4].copy_from_slice(&len.to_be_bytes());
}
