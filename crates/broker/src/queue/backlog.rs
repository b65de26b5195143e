//! The ready messages of a queue, in delivery order.
//!
//! Messages enter at the back with a queue-local id that grows by one per message, so ids
//! are the queue's FIFO order. A requeued message (nack, reject, channel closed) goes back
//! to its *original* position, as RabbitMQ's classic queues do: requeued entries wait in a
//! map ordered by id, and the next message is whichever of the two heads is older.
//!
//! A message can also leave from the middle (its TTL ran out before it reached the head):
//! a requeued one is taken out of its map, a fresh or paged one is marked removed and
//! skipped when the head reaches it, so no deque is ever shifted.
//!
//! A priority queue has one backlog per priority level (see [`super::priority`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use ferrymq_store::Position;
use rustc_hash::FxHashSet;

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
    /// When it expires, in unix milliseconds (0: never).
    pub expires_at_ms: u64,
    /// Times it came back to the queue after a delivery (the x-delivery-count header).
    pub deliveries: u32,
}

/// A ready message whose body is only on disk: what the queue pages out, and what it
/// reads back first.
#[derive(Debug, Clone, Copy)]
pub struct PagedEntry {
    pub id: u64,
    pub position: Position,
    pub redelivered: bool,
    pub delivery_noted: bool,
    pub deliveries: u32,
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
    pub deliveries: u32,
}

impl PagedRun {
    fn extends_with(&self, paged: &PagedEntry) -> bool {
        self.segment == paged.position.segment
            && self.end_offset == paged.position.offset
            && self.first_id + self.count == paged.id
            && self.redelivered == paged.redelivered
            && self.delivery_noted == paged.delivery_noted
            && self.deliveries == paged.deliveries
    }

    fn contains(&self, id: u64) -> bool {
        (self.first_id..self.first_id + self.count).contains(&id)
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
    /// Ids still in `fresh` or `paged` that left out of order: skipped when reached.
    removed: FxHashSet<u64>,
    bytes: usize,
}

/// What [`Backlog::remove`] found.
#[derive(Debug)]
pub enum Removed {
    /// In memory: the entry (a copy for a fresh one, which stays behind as a tombstone).
    Memory(Entry),
    /// Paged: only on disk, which the caller reads if it needs the message.
    Paged,
    /// Not ready here (delivered, already gone, or never was).
    Absent,
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
            deliveries: paged.deliveries,
        });
    }

    pub fn requeue(&mut self, mut entry: Entry) {
        entry.redelivered = true;
        self.bytes += entry.message.body_size();
        self.requeued.insert(entry.id, entry);
    }

    /// The next message held in memory. `None` with [`Backlog::paged_len`] > 0 means the
    /// next one must first be loaded from disk ([`Backlog::front_paged`], then `push`).
    pub fn pop(&mut self) -> Option<Entry> {
        loop {
            let entry = if self.requeued_is_older() {
                self.requeued.pop_first().map(|(_, entry)| entry)
            } else {
                self.fresh.pop_front()
            }?;
            // Tombstones are rare: skip hashing the id when there are none.
            if !self.removed.is_empty() && self.removed.remove(&entry.id) {
                continue;
            }
            self.bytes -= entry.message.body_size();
            return Some(entry);
        }
    }

    /// The message [`Backlog::pop`] would return, if it is in memory.
    pub fn peek(&mut self) -> Option<&Entry> {
        // Tombstones at the head are dropped first so the answer is a live message.
        while let Some(front) = self.fresh.front() {
            if !self.removed.remove(&front.id) {
                break;
            }
            self.fresh.pop_front();
        }
        if self.requeued_is_older() {
            self.requeued.first_key_value().map(|(_, entry)| entry)
        } else {
            self.fresh.front()
        }
    }

    /// Takes message `id` out of the middle of the backlog. `body_size` is what a paged
    /// message counted for in [`Backlog::bytes`].
    pub fn remove(&mut self, id: u64, body_size: u32) -> Removed {
        if self.removed.contains(&id) {
            return Removed::Absent;
        }
        if let Some(entry) = self.requeued.remove(&id) {
            self.bytes -= entry.message.body_size();
            return Removed::Memory(entry);
        }
        if let Ok(at) = self.fresh.binary_search_by_key(&id, |e| e.id) {
            let entry = self.fresh[at].clone();
            self.bytes -= entry.message.body_size();
            self.removed.insert(id);
            return Removed::Memory(entry);
        }
        let run = self
            .paged
            .partition_point(|run| run.first_id + run.count <= id);
        if self.paged.get(run).is_some_and(|run| run.contains(id)) {
            self.bytes -= body_size as usize;
            self.removed.insert(id);
            return Removed::Paged;
        }
        Removed::Absent
    }

    /// Whether the oldest paged message was removed already (see [`Backlog::skip_paged`]).
    pub fn front_paged_removed(&self) -> bool {
        self.paged
            .front()
            .is_some_and(|run| self.removed.contains(&run.first_id))
    }

    /// Steps over the oldest paged message, removed earlier, whose record is `encoded_len`
    /// bytes long.
    pub fn skip_paged(&mut self, encoded_len: u32) {
        if let Some(run) = self.paged.front() {
            self.removed.remove(&run.first_id);
            // advance_paged subtracts the body size, which removal already did.
            self.advance_paged(encoded_len, 0);
        }
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
            deliveries: run.deliveries,
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
        // Removed ones leave `len` with their run, not a second time through `removed`.
        self.removed.retain(|id| !run.contains(*id));
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
        self.fresh.len() + self.requeued.len() + self.paged_count - self.removed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages held in memory (fresh and requeued, tombstones included: they hold memory).
    pub fn in_memory(&self) -> usize {
        self.fresh.len() + self.requeued.len()
    }

    pub fn paged_len(&self) -> usize {
        self.paged_count
    }

    /// Body bytes of the ready messages (the x-max-length-bytes limit).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes every ready message and returns them (purge, delete), with the ids inside
    /// the paged runs that left earlier (their records are acked already).
    pub fn take_all(&mut self) -> (Vec<Entry>, Vec<PagedRun>, FxHashSet<u64>) {
        let removed = std::mem::take(&mut self.removed);
        let mut all: Vec<Entry> = self
            .fresh
            .drain(..)
            .filter(|e| !removed.contains(&e.id))
            .collect();
        all.extend(std::mem::take(&mut self.requeued).into_values());
        let paged = self.paged.drain(..).collect();
        self.paged_count = 0;
        self.bytes = 0;
        (all, paged, removed)
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
            expires_at_ms: 0,
            deliveries: 0,
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
            deliveries: 0,
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
    fn removal_from_the_middle_is_skipped_at_the_head() {
        let mut backlog = Backlog::default();
        for id in 0..4 {
            backlog.push(entry(id));
        }
        for id in 4..8 {
            backlog.push_paged(paged(id, (id as u32 - 4) * 40));
        }
        assert!(matches!(backlog.remove(2, 0), Removed::Memory(e) if e.id == 2));
        assert!(matches!(backlog.remove(2, 0), Removed::Absent));
        assert!(matches!(backlog.remove(4, 10), Removed::Paged));
        assert!(matches!(backlog.remove(9, 10), Removed::Absent));
        assert_eq!(backlog.len(), 6);
        assert_eq!(backlog.bytes(), 3 * 3 + 3 * 10);
        let popped: Vec<u64> = std::iter::from_fn(|| backlog.pop()).map(|e| e.id).collect();
        assert_eq!(popped, vec![0, 1, 3]);
        assert!(backlog.front_paged_removed());
        backlog.skip_paged(40);
        assert!(!backlog.front_paged_removed());
        assert_eq!(backlog.front_paged().unwrap().id, 5);
        assert_eq!(backlog.len(), 3);
        assert_eq!(backlog.bytes(), 30);
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
