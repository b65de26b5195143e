//! Queue-level deduplication (`x-message-deduplication` on a queue, as the
//! rabbitmq-message-deduplication plugin): a message is dropped while a message with the
//! same key (see [`crate::dedup::message_key`]) is in the queue, ready or unacked. The key
//! is released when its message leaves the queue for good (acked, no-ack delivery, purge,
//! expiry, overflow), not when it is delivered or requeued.
//!
//! The queue task owns this set; it calls [`QueueDedup::admit`] on publish and
//! [`QueueDedup::release`] / [`QueueDedup::release_range`] wherever a message goes. At
//! start the set is rebuilt from the messages recovered from the queue's log, so it survives
//! a restart with them (the plugin starts such a queue with an empty set).
//!
//! Bound: [`QUEUE_DEDUP_KEYS_MAX`] keys per queue (about 100 bytes each). Beyond it a new
//! keyed message is refused (nacked under confirms, like `x-overflow: reject-publish`)
//! rather than accepted unchecked, which would silently break the guarantee.

use std::collections::{BTreeMap, HashMap};

use ferrymq_wire::{FieldTable, FieldValue};

use super::persist::{Persistence, Restored};
use crate::dedup::{message_key, Key};
use crate::message::Message;

/// The queue argument that turns deduplication on.
pub const QUEUE_ARGUMENT: &str = "x-message-deduplication";
/// Keys one queue tracks at most: ~100 MiB of memory for a queue at the limit.
pub const QUEUE_DEDUP_KEYS_MAX: usize = 1 << 20;

#[derive(Debug, Default)]
pub(super) struct QueueDedup {
    enabled: bool,
    /// message id → its key, for releasing by id (paged messages are not in memory).
    by_id: BTreeMap<u64, Key>,
    keys: HashMap<Key, u64>,
}

impl QueueDedup {
    /// Enabled as the plugin enables it: the argument is present and not `false` (the
    /// plugin does not check its type, and any other value is true to it).
    pub fn new(arguments: &FieldTable) -> Self {
        let enabled = !matches!(
            arguments.get(QUEUE_ARGUMENT),
            None | Some(FieldValue::Bool(false)) | Some(FieldValue::Void)
        );
        QueueDedup {
            enabled,
            ..Default::default()
        }
    }

    /// Decides about a published message that would get `id`: `None` admits it (its key is
    /// now taken); `Some(ack)` drops it and settles its confirm with `ack` (true for a
    /// duplicate, false when the set is full).
    pub fn admit(&mut self, id: u64, message: &Message) -> Option<bool> {
        if !self.enabled {
            return None;
        }
        let key = message_key(message)?;
        if self.keys.contains_key(&key) {
            return Some(true);
        }
        if self.keys.len() >= QUEUE_DEDUP_KEYS_MAX {
            tracing::warn!(
                keys = QUEUE_DEDUP_KEYS_MAX,
                "deduplication queue is tracking its maximum of keys; refusing a message"
            );
            return Some(false);
        }
        self.track(id, key);
        None
    }

    fn track(&mut self, id: u64, key: Key) {
        if let Some(previous) = self.keys.insert(key, id) {
            // Only on recovery of a log holding the key twice: the newer message holds it.
            self.by_id.remove(&previous);
        }
        self.by_id.insert(id, key);
    }

    /// The message `id` left the queue for good: its key is free again.
    pub fn release(&mut self, id: u64) {
        if let Some(key) = self.by_id.remove(&id) {
            self.keys.remove(&key);
        }
    }

    /// Messages `first_id .. first_id + count` left the queue (a dropped paged run).
    pub fn release_range(&mut self, first_id: u64, count: u64) {
        if self.by_id.is_empty() {
            return;
        }
        let end = first_id.saturating_add(count);
        let ids: Vec<u64> = self.by_id.range(first_id..end).map(|(id, _)| *id).collect();
        for id in ids {
            self.release(id);
        }
    }

    /// The queue is gone.
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.keys.clear();
    }

    /// A message recovered from the log at start takes its key again. Messages beyond the
    /// memory window come without their properties; they are read back from the log, so
    /// restarting a deep deduplication queue reads its whole backlog once.
    pub fn recover(&mut self, restored: &Restored, persist: &mut Persistence) {
        if !self.enabled {
            return;
        }
        let key = match &restored.message {
            Some(message) => message_key(message),
            None => persist
                .read(restored.position)
                .and_then(|(message, _, _)| message_key(&message)),
        };
        if let Some(key) = key {
            self.track(restored.id, key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrymq_wire::{BasicProperties, ShortStr};

    fn keyed(key: &str) -> Message {
        let mut headers = FieldTable::new();
        headers.insert(
            crate::dedup::KEY_HEADER,
            FieldValue::LongStr(Bytes::from(key.to_string())),
        );
        let props = BasicProperties {
            headers: Some(headers),
            ..Default::default()
        };
        Message::new(
            ShortStr::from(""),
            ShortStr::from("q"),
            props.encode(),
            Bytes::new(),
        )
    }

    fn enabled() -> QueueDedup {
        let mut args = FieldTable::new();
        args.insert(QUEUE_ARGUMENT, FieldValue::Bool(true));
        QueueDedup::new(&args)
    }

    #[test]
    fn a_key_is_taken_until_its_message_is_released() {
        let mut dedup = enabled();
        assert_eq!(dedup.admit(0, &keyed("a")), None);
        assert_eq!(dedup.admit(1, &keyed("a")), Some(true));
        assert_eq!(dedup.admit(1, &keyed("b")), None);
        dedup.release(0);
        assert_eq!(dedup.admit(2, &keyed("a")), None);
        // Releasing an id that holds nothing changes nothing.
        dedup.release(0);
        assert_eq!(dedup.admit(3, &keyed("a")), Some(true));
    }

    #[test]
    fn a_range_release_frees_exactly_the_ids_in_it() {
        let mut dedup = enabled();
        for (id, key) in ["a", "b", "c", "d"].iter().enumerate() {
            assert_eq!(dedup.admit(id as u64, &keyed(key)), None);
        }
        dedup.release_range(1, 2);
        assert_eq!(dedup.admit(10, &keyed("a")), Some(true));
        assert_eq!(dedup.admit(11, &keyed("b")), None);
        assert_eq!(dedup.admit(12, &keyed("c")), None);
        assert_eq!(dedup.admit(13, &keyed("d")), Some(true));
    }

    #[test]
    fn without_the_argument_or_with_false_nothing_is_dropped() {
        let mut off = QueueDedup::new(&FieldTable::new());
        assert_eq!(off.admit(0, &keyed("a")), None);
        assert_eq!(off.admit(1, &keyed("a")), None);
        let mut args = FieldTable::new();
        args.insert(QUEUE_ARGUMENT, FieldValue::Bool(false));
        let mut off = QueueDedup::new(&args);
        assert_eq!(off.admit(0, &keyed("a")), None);
        assert_eq!(off.admit(1, &keyed("a")), None);
    }

    #[test]
    fn keyless_messages_always_pass() {
        let mut dedup = enabled();
        let plain = Message::new(
            ShortStr::from(""),
            ShortStr::from("q"),
            BasicProperties::default().encode(),
            Bytes::new(),
        );
        assert_eq!(dedup.admit(0, &plain), None);
        assert_eq!(dedup.admit(1, &plain), None);
        assert!(dedup.keys.is_empty());
    }
}
