//! The ready messages of a queue, in delivery order.
//!
//! Messages enter at the back with a queue-local id that grows by one per message, so ids
//! are the queue's FIFO order. A requeued message (nack, reject, channel closed) goes back
//! to its *original* position, as RabbitMQ's classic queues do: requeued entries wait in a
//! map ordered by id, and the next message is whichever of the two heads is older.
//! Storage (paging to disk) will replace the in-memory deque behind this same interface.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ferrymq_store::Position;

use crate::message::Message;

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// Where the message is on disk, if it is (persistent in a durable queue, or loaded back
    /// from the paged tail): acked there when done with.
    pub position: Option<Position>,
    /// Its delivery has been noted on disk (so a restart redelivers it flagged).
    pub delivery_noted: bool,
}

/// A ready message whose body is only on disk (the queue paged it out); 32 bytes of RAM.
#[derive(Debug, Clone, Copy)]
pub struct PagedEntry {
    pub id: u64,
    pub position: Position,
    pub redelivered: bool,
    pub delivery_noted: bool,
    pub body_size: u32,
}

#[derive(Debug, Default)]
pub struct Backlog {
    /// In memory, oldest first.
    fresh: VecDeque<Entry>,
    /// On disk, all newer than `fresh`, oldest first. While it is not empty, every new
    /// message joins it too, so that FIFO order holds across memory and disk.
    paged: VecDeque<PagedEntry>,
    requeued: BTreeMap<u64, Entry>,
    bytes: usize,
}

impl Backlog {
    /// Adds a message in memory: a new one (only while nothing is paged) or one loaded
    /// back from the front of the paged tail.
    pub fn push(&mut self, entry: Entry) {
        debug_assert!(
            self.fresh.back().is_none_or(|last| last.id < entry.id),
            "ids grow"
        );
        debug_assert!(
            self.paged.front().is_none_or(|next| entry.id < next.id),
            "memory before disk"
        );
        self.bytes += entry.message.body_size();
        self.fresh.push_back(entry);
    }

    /// Makes room for `additional` paged entries at once (recovery knows how many).
    pub fn reserve_paged(&mut self, additional: usize) {
        self.paged.reserve_exact(additional);
    }

    /// Adds a message whose body stays on disk.
    pub fn push_paged(&mut self, paged: PagedEntry) {
        debug_assert!(
            self.paged.back().is_none_or(|last| last.id < paged.id),
            "ids grow"
        );
        self.bytes += paged.body_size as usize;
        self.paged.push_back(paged);
    }

    pub fn requeue(&mut self, mut entry: Entry) {
        entry.redelivered = true;
        self.bytes += entry.message.body_size();
        self.requeued.insert(entry.id, entry);
    }

    /// The next message held in memory. `None` with [`Backlog::paged_len`] > 0 means the
    /// next one must first be loaded from disk ([`Backlog::pop_paged`], then `push`).
    pub fn pop(&mut self) -> Option<Entry> {
        let entry = if self.requeued_is_older() {
            self.requeued.pop_first().map(|(_, entry)| entry)
        } else {
            self.fresh.pop_front()
        }?;
        self.bytes -= entry.message.body_size();
        Some(entry)
    }

    pub fn pop_paged(&mut self) -> Option<PagedEntry> {
        let paged = self.paged.pop_front()?;
        self.bytes -= paged.body_size as usize;
        Some(paged)
    }

    /// Whether the next message is a requeued one: the two heads compete by id. Requeued
    /// messages are always older than paged ones (they were delivered before those arrived).
    fn requeued_is_older(&self) -> bool {
        match (self.fresh.front(), self.requeued.first_key_value()) {
            (Some(fresh), Some((&id, _))) => id < fresh.id,
            (None, Some(_)) => true,
            (_, None) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.fresh.len() + self.requeued.len() + self.paged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages held in memory (fresh and requeued).
    pub fn in_memory(&self) -> usize {
        self.fresh.len() + self.requeued.len()
    }

    pub fn paged_len(&self) -> usize {
        self.paged.len()
    }

    /// Body bytes of the ready messages; kept for the x-max-length-bytes limit.
    #[allow(dead_code)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes every ready message and returns them (purge, delete).
    pub fn take_all(&mut self) -> (Vec<Entry>, Vec<PagedEntry>) {
        let mut all: Vec<Entry> = self.fresh.drain(..).collect();
        all.extend(std::mem::take(&mut self.requeued).into_values());
        let paged = self.paged.drain(..).collect();
        self.bytes = 0;
        (all, paged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferrymq_wire::{Properties, ShortStr};

    fn entry(id: u64) -> Entry {
        let message = Message::new(
            ShortStr::from_static(""),
            ShortStr::from_static("k"),
            Properties::empty(),
            Bytes::from(vec![0u8; 3]),
        );
        Entry {
            id,
            message: Arc::new(message),
            redelivered: false,
            position: None,
            delivery_noted: false,
        }
    }

    #[test]
    fn requeued_message_returns_to_its_original_position() {
        let mut backlog = Backlog::default();
        for id in 0..5 {
            backlog.push(entry(id));
        }
        let first = backlog.pop().unwrap();
        let second = backlog.pop().unwrap();
        backlog.requeue(second);
        backlog.requeue(first);
        let order: Vec<(u64, bool)> = std::iter::from_fn(|| backlog.pop())
            .map(|e| (e.id, e.redelivered))
            .collect();
        assert_eq!(
            order,
            vec![(0, true), (1, true), (2, false), (3, false), (4, false)]
        );
    }

    #[test]
    fn byte_count_follows_pushes_pops_and_clear() {
        let mut backlog = Backlog::default();
        backlog.push(entry(1));
        backlog.push(entry(2));
        assert_eq!(backlog.bytes(), 6);
        backlog.pop();
        assert_eq!(backlog.bytes(), 3);
        assert_eq!(backlog.take_all().0.len(), 1);
        assert_eq!(backlog.bytes(), 0);
        assert!(backlog.pop().is_none());
    }
}
