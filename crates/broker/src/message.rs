//! A published message as the core sees it.
//!
//! A message is immutable once published and shared as `Arc<Message>` by every queue it was
//! routed to: fanout to N queues costs N pointer copies, never a body copy. The body is the
//! `Bytes` sliced out of the publisher's read buffer (single-frame bodies) or one contiguous
//! buffer assembled from several body frames.

use bytes::Bytes;
use ferrymq_wire::{Properties, ShortStr};

#[derive(Debug, Clone)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content-header properties as received, so they reach consumers byte for byte.
    pub properties: Properties,
    pub body: Bytes,
    /// delivery_mode == 2, read once at publish time.
    pub persistent: bool,
}

impl Message {
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: Properties,
        body: Bytes,
    ) -> Self {
        let persistent = properties.delivery_mode() == Some(2);
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
        }
    }

    /// What the message costs a queue in bytes (RabbitMQ counts the body only).
    pub fn body_size(&self) -> usize {
        self.body.len()
    }
}
