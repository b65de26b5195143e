//! Message deduplication, compatible with the rabbitmq-message-deduplication plugin.
//!
//! - **Exchange level**: the exchange type `x-message-deduplication` routes like `fanout`,
//!   but first drops a message whose key it has let through before, within the cache's TTL
//!   and size (`x-cache-size` required, `x-cache-ttl` ms, `x-cache-persistence`
//!   `memory`|`disk`, `disk` by default for a durable exchange). A per-message
//!   `x-cache-ttl` header overrides the exchange's TTL.
//! - **Queue level** (`x-message-deduplication: true` on a queue, see
//!   [`crate::queue`]'s `dedup`): a message is dropped while one with the same key is in the
//!   queue (ready or unacked).
//!
//! A dropped duplicate is still confirmed (basic.ack under publisher confirms), so a
//! publisher that retries after a lost confirm gets an ack, not an error; it is not
//! returned as unroutable and does not go to an alternate exchange.
//!
//! The key is the `x-deduplication-header` header; without it, ferrymq uses the
//! `message-id` property (beyond the plugin, which lets such messages through unchecked).
//! Keys are kept as 16-byte digests, so a cache entry costs the same for any key.
//!
//! Layout: [`cache`] (the bounded key cache), `exchange` (an exchange's cache, its file,
//! and the order in which entries reach the disk), [`crate::queue`]'s `dedup` (the queue
//! side). The cache file format is drawn in `ferrymq_store::dedup_log`.

pub mod cache;
mod exchange;

use std::sync::Arc;

use ferrymq_wire::{FieldTable, FieldValue};
use sha2::{Digest, Sha256};

use crate::error::{BrokerError, Result};
use crate::message::{unix_ms as now_ms, Message};
pub use cache::{DedupCache, Key};
pub use exchange::{DedupOutcome, ExchangeDedup, PendingWrite};

/// The exchange type, as the plugin registers it.
pub const EXCHANGE_TYPE: &str = "x-message-deduplication";
/// The header that carries a message's key.
pub const KEY_HEADER: &str = "x-deduplication-header";
/// The header (and exchange argument) that sets how long a key is remembered, in ms.
pub const TTL_HEADER: &str = "x-cache-ttl";

/// The digest of a message's deduplication key, or `None` when it has none (it then passes
/// unchecked).
pub fn message_key(message: &Message) -> Option<Key> {
    key_from(message.properties.headers().as_ref(), message)
}

fn key_from(headers: Option<&FieldTable>, message: &Message) -> Option<Key> {
    match headers.and_then(|h| h.get(KEY_HEADER)) {
        Some(value) => Some(value_key(value)),
        None => message
            .properties
            .message_id()
            .map(|id| string_key(id.as_bytes())),
    }
}

/// Values that are equal in the plugin (Erlang terms) get the same key: every integer type
/// (and timestamps) by number, longstr and byte arrays by their bytes.
fn value_key(value: &FieldValue) -> Key {
    let mut hash = Sha256::new();
    match value {
        FieldValue::LongStr(bytes) | FieldValue::Bytes(bytes) => return string_key(bytes),
        FieldValue::Timestamp(t) => {
            hash.update(b"i");
            hash.update(i128::from(*t).to_be_bytes());
        }
        v if v.as_i64().is_some() => {
            hash.update(b"i");
            hash.update(i128::from(v.as_i64().unwrap_or_default()).to_be_bytes());
        }
        FieldValue::F32(f) => {
            hash.update(b"f");
            hash.update(f64::from(*f).to_bits().to_be_bytes());
        }
        FieldValue::F64(f) => {
            hash.update(b"f");
            hash.update(f.to_bits().to_be_bytes());
        }
        FieldValue::Bool(b) => hash.update([b'b', u8::from(*b)]),
        FieldValue::Void => hash.update(b"v"),
        // Decimals, arrays, tables: by their encoding (the plugin does not handle them).
        other => {
            let mut encoded = bytes::BytesMut::new();
            other.encode(&mut encoded);
            hash.update(b"r");
            hash.update(&encoded);
        }
    }
    truncate(hash)
}

fn string_key(bytes: &[u8]) -> Key {
    let mut hash = Sha256::new();
    hash.update(b"s");
    hash.update(bytes);
    truncate(hash)
}

fn truncate(hash: Sha256) -> Key {
    let digest = hash.finalize();
    let mut key = Key::default();
    let len = key.len();
    key.copy_from_slice(&digest[..len]);
    key
}

/// A positive integer, or a longstr holding one (the plugin accepts both).
fn positive_integer(value: &FieldValue) -> Option<u64> {
    let n = match value {
        FieldValue::LongStr(s) => std::str::from_utf8(s).ok()?.trim().parse::<i64>().ok()?,
        FieldValue::Timestamp(t) => i64::try_from(*t).ok()?,
        v => v.as_i64()?,
    };
    u64::try_from(n).ok().filter(|&n| n > 0)
}

/// A deduplication exchange's arguments, checked as the plugin checks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeSettings {
    pub cache_size: u64,
    pub ttl_ms: Option<u64>,
    /// `x-cache-persistence: disk`. Unlike the plugin (default `memory`), a durable
    /// exchange keeps its cache on disk unless told `memory`: exactly-once publishing must
    /// survive a restart.
    pub on_disk: bool,
}

impl ExchangeSettings {
    pub fn parse(arguments: &FieldTable) -> Result<ExchangeSettings> {
        let cache_size = arguments
            .get("x-cache-size")
            .and_then(positive_integer)
            .ok_or_else(|| {
                BrokerError::precondition_failed(
                    "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
                )
            })?;
        let ttl_ms = match arguments.get("x-cache-ttl") {
            None => None,
            Some(value) => Some(positive_integer(value).ok_or_else(|| {
                BrokerError::precondition_failed(
                    "Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
                )
            })?),
        };
        let on_disk = match arguments.get("x-cache-persistence") {
            None => true,
            Some(FieldValue::LongStr(s)) if &s[..] == b"disk" => true,
            Some(FieldValue::LongStr(s)) if &s[..] == b"memory" => false,
            Some(_) => {
                return Err(BrokerError::precondition_failed(
                    "Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'",
                ))
            }
        };
        Ok(ExchangeSettings {
            cache_size,
            ttl_ms,
            on_disk,
        })
    }
}

/// Carried through one publish's routing: asks each deduplication exchange on the way
/// whether the message passes, computing its key once.
#[derive(Debug)]
pub struct DedupProbe<'m> {
    message: &'m Message,
    /// (key, per-message TTL), once computed.
    key: Option<Option<(Key, Option<u64>)>>,
    pub outcome: DedupOutcome,
}

impl<'m> DedupProbe<'m> {
    pub fn new(message: &'m Message) -> Self {
        DedupProbe {
            message,
            key: None,
            outcome: DedupOutcome::default(),
        }
    }

    /// Whether `exchange` drops the message as a duplicate.
    pub fn drops(&mut self, exchange: &Arc<ExchangeDedup>) -> bool {
        let message = self.message;
        let key = *self.key.get_or_insert_with(|| {
            let headers = message.properties.headers();
            let ttl = headers
                .as_ref()
                .and_then(|h| h.get(TTL_HEADER))
                .and_then(positive_integer);
            key_from(headers.as_ref(), message).map(|key| (key, ttl))
        });
        let Some((key, ttl)) = key else {
            return false;
        };
        let passes = exchange.admit(key, ttl, message.persistent, &mut self.outcome.writes);
        self.outcome.duplicate |= !passes;
        !passes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrymq_wire::{BasicProperties, ShortStr};

    fn message(headers: Option<FieldTable>, message_id: Option<&str>) -> Message {
        let props = BasicProperties {
            headers,
            message_id: message_id.map(ShortStr::from),
            ..Default::default()
        };
        Message::new(
            ShortStr::from("x"),
            ShortStr::from(""),
            props.encode(),
            Bytes::new(),
        )
    }

    fn with_header(value: FieldValue) -> Message {
        let mut headers = FieldTable::new();
        headers.insert(KEY_HEADER, value);
        message(Some(headers), None)
    }

    #[test]
    fn the_header_gives_the_key_and_the_message_id_is_the_fallback() {
        let by_header = message_key(&with_header(FieldValue::LongStr(Bytes::from("k1"))));
        let by_id = message_key(&message(None, Some("k1")));
        assert!(by_header.is_some());
        assert_eq!(by_header, by_id);
        assert_eq!(message_key(&message(None, None)), None);
        let mut headers = FieldTable::new();
        headers.insert(KEY_HEADER, FieldValue::LongStr(Bytes::from("k2")));
        // The header wins over the message id.
        assert_eq!(
            message_key(&message(Some(headers), Some("k1"))),
            message_key(&with_header(FieldValue::LongStr(Bytes::from("k2"))))
        );
    }

    #[test]
    fn integers_of_any_width_are_the_same_key_and_strings_are_not() {
        let long = message_key(&with_header(FieldValue::I64(7)));
        assert_eq!(long, message_key(&with_header(FieldValue::U8(7))));
        assert_eq!(long, message_key(&with_header(FieldValue::I32(7))));
        assert_ne!(long, message_key(&with_header(FieldValue::I32(8))));
        assert_ne!(
            long,
            message_key(&with_header(FieldValue::LongStr(Bytes::from("7"))))
        );
        assert_ne!(long, message_key(&with_header(FieldValue::F64(7.0))));
    }

    fn args(entries: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            t.insert(*k, v.clone());
        }
        t
    }

    #[test]
    fn exchange_arguments_are_checked_as_the_plugin_checks_them() {
        let err = ExchangeSettings::parse(&FieldTable::new()).unwrap_err();
        assert_eq!(err.code, 406);
        assert_eq!(
            err.text,
            "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0"
        );
        for bad in [
            FieldValue::I32(0),
            FieldValue::I64(-1),
            FieldValue::Bool(true),
        ] {
            assert!(ExchangeSettings::parse(&args(&[("x-cache-size", bad)])).is_err());
        }
        let ok = ExchangeSettings::parse(&args(&[
            ("x-cache-size", FieldValue::LongStr(Bytes::from("10"))),
            ("x-cache-ttl", FieldValue::U16(500)),
            (
                "x-cache-persistence",
                FieldValue::LongStr(Bytes::from("disk")),
            ),
        ]))
        .unwrap();
        assert_eq!(
            ok,
            ExchangeSettings {
                cache_size: 10,
                ttl_ms: Some(500),
                on_disk: true
            }
        );
        let err = ExchangeSettings::parse(&args(&[
            ("x-cache-size", FieldValue::I32(1)),
            ("x-cache-ttl", FieldValue::I32(0)),
        ]))
        .unwrap_err();
        assert!(err
            .text
            .contains("'x-cache-ttl' must be an integer greater than 0"));
        let err = ExchangeSettings::parse(&args(&[
            ("x-cache-size", FieldValue::I32(1)),
            (
                "x-cache-persistence",
                FieldValue::LongStr(Bytes::from("tape")),
            ),
        ]))
        .unwrap_err();
        assert!(err.text.contains("must be either 'disk' or 'memory'"));
    }
}
