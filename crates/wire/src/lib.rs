//! ferrymq-wire: a sans-IO AMQP 0-9-1 codec over `bytes`.
//!
//! # Layout
//!
//! - `frame`: split frames off a read buffer (`decode_frame`), write frames (`encode_*`).
//! - `method`: generated method structs, the `Method` enum, class ids, reply codes.
//! - `properties`: content-header properties kept raw, with lazy accessors and `validate`.
//! - `basic_properties`: the owned `BasicProperties`, for rewriting properties.
//! - `field_table`: `FieldTable` and `FieldValue` (RabbitMQ's type tags).
//! - `short_str`: `ShortStr`, a `Bytes`-backed UTF-8 string of at most 255 bytes.
//! - `error`: `WireError`, what `connection.close` needs; which reply code for which failure.
//! - `cursor` / `put`: primitive readers and writers shared by the above.
//!
//! Longstr arguments and values are plain `bytes::Bytes` (they need not be UTF-8).
//! Decoding slices the input `Bytes`, so a publish (method, header, body) is
//! decoded without heap allocation; only field tables allocate.

mod basic_properties;
mod cursor;
mod error;
mod field_table;
mod frame;
pub mod method;
mod properties;
mod put;
mod short_str;
#[cfg(test)]
mod testing;

pub use basic_properties::BasicProperties;
pub use error::WireError;
pub use field_table::{FieldTable, FieldValue, TABLE_DEPTH_MAX};
pub use frame::{
    body_payload_max_bytes, decode_frame, encode_basic_deliver, encode_body, encode_frame_start,
    encode_header, encode_header_parts, encode_heartbeat, encode_method, ContentHeader, Frame,
    CONTENT_HEADER_FIXED_BYTES, FRAME_END, FRAME_HEADER_SIZE, FRAME_MIN_SIZE, FRAME_OVERHEAD_BYTES,
    FRAME_SIZE_FUDGE_BYTES, PROTOCOL_HEADER,
};
pub use method::*;
pub use properties::Properties;
pub use short_str::{ShortStr, ShortStrError, SHORT_STR_LEN_MAX_BYTES};
