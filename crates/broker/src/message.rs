//! A published message as the core sees it.
//!
//! A message is immutable once published and shared as `Arc<Message>` by every queue it was
//! routed to: fanout to N queues costs N pointer copies, never a body copy. The body is the
//! `Bytes` sliced out of the publisher's read buffer (single-frame bodies) or one contiguous
//! buffer assembled from several body frames.

use bytes::Bytes;
use ferrymq_wire::{FieldValue, Properties, ShortStr};

#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content-header properties as received, so they reach consumers byte for byte.
    pub properties: Properties,
    pub body: Bytes,
    /// delivery_mode == 2, read once at publish time.
    pub persistent: bool,
    /// The `priority` property (0 when absent), for priority queues.
    pub priority: u8,
    /// The `expiration` property (per-message TTL) in milliseconds, when valid.
    pub expiration_ms: Option<u64>,
}

impl Message {
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: Properties,
        body: Bytes,
    ) -> Self {
        // One pass over the properties at publish; every queue then reads plain fields.
        let (persistent, priority, expiration_ms) = if properties.is_empty() {
            (false, 0, None)
        } else {
            (
                properties.delivery_mode() == Some(2),
                properties.priority().unwrap_or(0),
                properties
                    .expiration()
                    .and_then(|e| parse_expiration(&e).ok()),
            )
        };
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            priority,
            expiration_ms,
        }
    }

    /// What the message costs a queue in bytes (RabbitMQ counts the body only).
    pub fn body_size(&self) -> usize {
        self.body.len()
    }
}

/// Now, in unix milliseconds: expiries, delays and cache entries are wall-clock times so
/// that they keep running across a restart.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The strings of a sender-selected-distribution header (`CC`, `BCC`): an array of
/// longstr, or a single longstr.
pub fn header_strings(value: Option<&FieldValue>) -> Vec<String> {
    match value {
        Some(FieldValue::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(single) => single.as_str().map(str::to_string).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Reads an `expiration` property: RabbitMQ takes a non-negative integer number of
/// milliseconds written in decimal, and refuses the publish (406) for anything else.
pub fn parse_expiration(value: &str) -> Result<u64, String> {
    match value.parse::<i64>() {
        Ok(ms) if ms >= 0 => Ok(ms as u64),
        Ok(ms) => Err(format!(
            "invalid expiration '{value}': {{value_negative,{ms}}}"
        )),
        Err(_) => Err(format!(
            "invalid expiration '{value}': {{error,no_integer}}"
        )),
    }
}
