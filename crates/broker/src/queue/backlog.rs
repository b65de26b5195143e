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

/// A ready message whose body is only on disk: what the queue pages out, and what it
/// reads back first.
#[derive(Debug, Clone, Copy)]
pub struct PagedEntry {
    pub id: u64,
    pub position: Position,
    pub redelivered: bool,
    pub delivery_noted: bool,
    pub body_size: u32,
    /// The record's length on disk: the next record of a run starts right after it.
    pub encoded_len: u32,
}

/// Consecutive paged messages (ids one apart) stored back to back in one segment. A run
/// costs 48 bytes however long it is, so a backlog of ten million messages that were paged
/// as they arrived costs a few kilobytes of RAM, not 32 bytes each.
#[derive(Debug, Clone, Copy)]
pub struct PagedRun {
    pub first_id: u64,
    pub count: u64,
    pub segment: u64,
    /// Offset of the first record of the run.
    pub offset: u32,
    /// Where the last record ends, to extend the run.
    pub end_offset: u32,
    pub redelivered: bool,
    pub delivery_noted: bool,
}

impl PagedRun {
    fn extends_with(&self, paged: &PagedEntry) -> bool {
        self.segment == paged.position.segment
            && self.end_offset == paged.position.offset
            && self.first_id + self.count == paged.id
            && self.redelivered == paged.redelivered
            && self.delivery_noted == paged.delivery_noted
    }
}

#[derive(Debug, Default)]
pub struct Backlog {
    /// In memory, oldest first.
    fresh: VecDeque<Entry>,
    /// On disk, all newer than `fresh`, oldest first. While it is not empty, every new
    /// message joins it too, so that FIFO order holds across memory and disk.
    paged: VecDeque<PagedRun>,
    /// Messages in `paged`.
    paged_count: usize,
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
            self.paged
                .front()
                .is_none_or(|next| entry.id < next.first_id),
            "memory before disk"
        );
        self.bytes += entry.message.body_size();
        self.fresh.push_back(entry);
    }

    /// Adds a message whose body stays on disk, extending the last run when it can.
    pub fn push_paged(&mut self, paged: PagedEntry) {
        debug_assert!(
            self.paged
                .back()
                .is_none_or(|last| last.first_id + last.count <= paged.id),
            "ids grow"
        );
        self.bytes += paged.body_size as usize;
        self.paged_count += 1;
        if let Some(last) = self
            .paged
            .back_mut()
            .filter(|last| last.extends_with(&paged))
        {
            last.count += 1;
            last.end_offset += paged.encoded_len;
            return;
        }
        self.paged.push_back(PagedRun {
            first_id: paged.id,
            count: 1,
            segment: paged.position.segment,
            offset: paged.position.offset,
            end_offset: paged.position.offset + paged.encoded_len,
            redelivered: paged.redelivered,
            delivery_noted: paged.delivery_noted,
        });
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

    /// The oldest paged message: id, where it is, and its flags (`body_size` and
    /// `encoded_len` are unknown until it is read: 0).
    pub fn front_paged(&self) -> Option<PagedEntry> {
        let run = self.paged.front()?;
        Some(PagedEntry {
            id: run.first_id,
            position: Position {
                segment: run.segment,
                offset: run.offset,
            },
            redelivered: run.redelivered,
            delivery_noted: run.delivery_noted,
            body_size: 0,
            encoded_len: 0,
        })
    }

    /// Removes the oldest paged message, now read back (whose sizes are now known).
    pub fn advance_paged(&mut self, encoded_len: u32, body_size: u32) {
        let Some(run) = self.paged.front_mut() else {
            return;
        };
        run.first_id += 1;
        run.count -= 1;
        run.offset += encoded_len;
        if run.count == 0 {
            self.paged.pop_front();
        }
        self.paged_count -= 1;
        self.bytes -= body_size as usize;
    }

    /// Drops the whole oldest run (its records could not be read).
    pub fn drop_paged_run(&mut self) -> Option<PagedRun> {
        let run = self.paged.pop_front()?;
        self.paged_count -= run.count as usize;
        Some(run)
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
        self.fresh.len() + self.requeued.len() + self.paged_count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages held in memory (fresh and requeued).
    pub fn in_memory(&self) -> usize {
        self.fresh.len() + self.requeued.len()
    }

    pub fn paged_len(&self) -> usize {
        self.paged_count
    }

    /// Body bytes of the ready messages; kept for the x-max-length-bytes limit.
    #[allow(dead_code)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes every ready message and returns them (purge, delete).
    pub fn take_all(&mut self) -> (Vec<Entry>, Vec<PagedRun>) {
        let mut all: Vec<Entry> = self.fresh.drain(..).collect();
        all.extend(std::mem::take(&mut self.requeued).into_values());
        let paged = self.paged.drain(..).collect();
        self.paged_count = 0;
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

    fn paged(id: u64, offset: u32) -> PagedEntry {
        PagedEntry {
            id,
            position: Position { segment: 1, offset },
            redelivered: false,
            delivery_noted: false,
            body_size: 10,
            encoded_len: 40,
        }
    }

    #[test]
    fn consecutive_paged_messages_share_one_run() {
        let mut backlog = Backlog::default();
        for id in 0..1000 {
            backlog.push_paged(paged(id, id as u32 * 40));
        }
        // A gap in ids (a message kept in memory elsewhere) starts a new run.
        backlog.push_paged(paged(1001, 1000 * 40));
        assert_eq!(backlog.paged.len(), 2);
        assert_eq!(backlog.paged_len(), 1001);
        assert_eq!(backlog.bytes(), 10_010);
        let head = backlog.front_paged().unwrap();
        assert_eq!((head.id, head.position.offset), (0, 0));
        backlog.advance_paged(40, 10);
        let head = backlog.front_paged().unwrap();
        assert_eq!((head.id, head.position.offset), (1, 40));
        assert_eq!(backlog.paged_len(), 1000);
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
