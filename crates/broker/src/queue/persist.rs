//! A queue's log on disk: durability for a durable queue's persistent messages, and the
//! place where any queue keeps the messages beyond its memory window.
//!
//! Persistent messages of a durable queue are appended as they arrive; at the end of each
//! mailbox batch the queue writes them and hands the files to the group-commit thread, and
//! the confirms of that batch are settled when the fdatasync is done. Messages beyond the
//! window are appended too (transient ones as `Transient` records, which recovery skips)
//! and only a run entry ([`PagedRun`](super::backlog::PagedRun), 48 bytes for any number of
//! consecutive records) stays in memory. Acks and
//! delivery marks are buffered and written once per batch.
//!
//! A durable queue's log lives in its directory under `queues/`; a non-durable queue opens
//! a log under `paging/` the first time it pages, which the broker wipes at every start.

use std::path::PathBuf;

use bytes::Bytes;
use ferrymq_store::{Position, QueueLog, ReadAhead, Record, RecordKind, RecoveredMessage, Syncer};
use ferrymq_wire::{Properties, ShortStr};

use super::command::ConfirmTicket;
use crate::message::Message;

/// Where and how a queue may use the disk; `None` at spawn keeps the queue in memory.
#[derive(Debug, Clone)]
pub struct QueueStorage {
    /// The directory of a durable queue's log.
    pub durable_dir: Option<PathBuf>,
    /// Where a non-durable queue opens a log when it first pages.
    pub paging_dir: PathBuf,
    pub syncer: Syncer,
    pub segment_size_bytes: u64,
    /// Ready messages held in memory before further ones stay on disk.
    pub window_messages: usize,
}

pub(super) struct Persistence {
    log: QueueLog,
    /// Records survive restarts (a durable queue's log), as opposed to a paging log.
    durable: bool,
    syncer: Syncer,
    /// Confirms that wait for this batch's fdatasync.
    waiting: Vec<ConfirmTicket>,
}

/// A message read back from the log at start.
pub(super) struct Restored {
    pub id: u64,
    pub position: Position,
    pub body_size: u32,
    pub encoded_len: u32,
    /// Deliveries noted before the restart: it comes back redelivered, and each counts
    /// towards a delivery limit.
    pub deliveries: u32,
    pub priority: u8,
    pub expiry_ms: u64,
    /// Present for the oldest messages (up to the window); the rest stay on disk.
    pub message: Option<Message>,
}

impl Persistence {
    /// Opens a durable queue's log and returns the messages it still holds, oldest first.
    pub fn open_durable(
        storage: &QueueStorage,
        dir: &std::path::Path,
    ) -> ferrymq_store::Result<(Persistence, impl ExactSizeIterator<Item = Restored>)> {
        let (log, recovered) =
            QueueLog::open_keeping(dir, storage.segment_size_bytes, storage.window_messages)?;
        if recovered.corrupt_records > 0 || recovered.truncated_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                corrupt = recovered.corrupt_records,
                truncated = recovered.truncated_bytes,
                "queue log recovered with losses"
            );
        }
        // Converted one by one as the queue takes them: a deep queue is never held twice.
        let messages = recovered.messages.into_iter().map(restored);
        Ok((
            Persistence {
                log,
                durable: true,
                syncer: storage.syncer.clone(),
                waiting: Vec::new(),
            },
            messages,
        ))
    }

    /// Opens an empty log for paging a non-durable queue.
    pub fn open_paging(
        storage: &QueueStorage,
        dir: &std::path::Path,
    ) -> ferrymq_store::Result<Persistence> {
        let _ = std::fs::remove_dir_all(dir);
        let (log, _) = QueueLog::open(dir, storage.segment_size_bytes)?;
        Ok(Persistence {
            log,
            durable: false,
            syncer: storage.syncer.clone(),
            waiting: Vec::new(),
        })
    }

    /// Whether a message must survive a restart here.
    pub fn keeps(&self, message: &Message) -> bool {
        self.durable && message.persistent
    }

    /// Appends a message; returns where and how long its record is, or `None` if the write
    /// failed (logged).
    pub fn append(
        &mut self,
        id: u64,
        message: &Message,
        priority: u8,
        expiry_ms: u64,
    ) -> Option<(Position, u32)> {
        let kind = if self.keeps(message) {
            RecordKind::Persistent
        } else {
            RecordKind::Transient
        };
        let record = Record {
            kind,
            priority,
            seq: id,
            expiry_ms,
            exchange: message.exchange.clone().into_bytes(),
            routing_key: message.routing_key.clone().into_bytes(),
            properties: message.properties.clone().into_bytes(),
            body: message.body.clone(),
        };
        match self.log.append(&record) {
            Ok(position) => Some((position, record.encoded_len() as u32)),
            Err(e) => {
                tracing::error!(error = %e, "appending to a queue log failed");
                None
            }
        }
    }

    /// Reads a paged-out message back, with its record's length and expiry.
    pub fn read(&mut self, position: Position) -> Option<(Message, u32, u64)> {
        let record = self.log.read(position);
        Self::paged_message(record, position)
    }

    /// [`Persistence::read`] for records read in file order (a run of paged messages).
    pub fn read_ahead(
        &mut self,
        position: Position,
        ahead: &mut ReadAhead,
    ) -> Option<(Message, u32, u64)> {
        let record = self.log.read_ahead(position, ahead);
        Self::paged_message(record, position)
    }

    fn paged_message(
        record: ferrymq_store::Result<Record>,
        position: Position,
    ) -> Option<(Message, u32, u64)> {
        match record {
            Ok(record) => {
                let len = record.encoded_len() as u32;
                let expiry_ms = record.expiry_ms;
                message_from(record).map(|m| (m, len, expiry_ms))
            }
            Err(e) => {
                tracing::error!(error = %e, ?position, "reading a paged message failed; it is lost");
                None
            }
        }
    }

    /// Settles `ticket` once everything appended so far is on disk.
    pub fn confirm_after_sync(&mut self, ticket: ConfirmTicket) {
        self.waiting.push(ticket);
    }

    pub fn ack(&mut self, position: Position) {
        if let Err(e) = self.log.ack(position) {
            tracing::error!(error = %e, "recording an ack failed");
        }
    }

    /// The length of the record at `position` (to step over it), read through `ahead`.
    pub fn record_len(&mut self, position: Position, ahead: &mut ReadAhead) -> Option<u32> {
        match self.log.record_len_ahead(position, ahead) {
            Ok(len) => Some(len),
            Err(e) => {
                tracing::error!(error = %e, ?position, "reading a record's length failed");
                None
            }
        }
    }

    /// Acks every record of a run of `count` records starting at `position` (purge),
    /// except those `acked_already` says left earlier.
    pub fn ack_run(
        &mut self,
        mut position: Position,
        count: u64,
        acked_already: impl Fn(u64) -> bool,
    ) {
        let mut ahead = ReadAhead::default();
        for index in 0..count {
            match self.log.record_len_ahead(position, &mut ahead) {
                Ok(len) => {
                    if !acked_already(index) {
                        self.ack(position);
                    }
                    position.offset += len;
                }
                Err(e) => {
                    tracing::error!(error = %e, ?position, "walking a paged run failed");
                    return;
                }
            }
        }
    }

    pub fn mark_delivered(&mut self, position: Position) {
        if self.durable {
            self.log.mark_delivered(position);
        }
    }

    /// End of a batch: writes acks and appends, asks for an fdatasync, and settles the
    /// waiting confirms after it (with a nack if the disk failed them).
    pub fn commit(&mut self) {
        if let Err(e) = self.log.flush_acks() {
            tracing::error!(error = %e, "writing acks failed");
        }
        let files = match self.log.flush_for_sync() {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "writing a queue log failed");
                for ticket in self.waiting.drain(..) {
                    ticket.settle(false);
                }
                return;
            }
        };
        if self.waiting.is_empty() {
            if self.durable && !files.is_empty() {
                // Nobody waits, but durable data should still reach the disk soon.
                self.syncer.sync_soon(files);
            }
            return;
        }
        let tickets = std::mem::take(&mut self.waiting);
        self.syncer.sync(
            files,
            Box::new(move |outcome| {
                let ok = outcome.is_ok();
                for ticket in tickets {
                    ticket.settle(ok);
                }
            }),
        );
    }

    /// The queue is deleted: settle what waits and remove its files.
    pub fn destroy(mut self) {
        for ticket in self.waiting.drain(..) {
            ticket.settle(true);
        }
        if let Err(e) = self.log.destroy() {
            tracing::error!(error = %e, "removing a deleted queue's files failed");
        }
    }
}

fn restored(recovered: RecoveredMessage) -> Restored {
    let RecoveredMessage {
        position,
        seq,
        body_size,
        encoded_len,
        deliveries,
        priority,
        expiry_ms,
        record,
    } = recovered;
    Restored {
        id: seq,
        position,
        body_size,
        encoded_len,
        deliveries,
        priority,
        expiry_ms,
        message: record.and_then(|r| message_from(*r)),
    }
}

fn message_from(record: Record) -> Option<Message> {
    let exchange = ShortStr::from_utf8(record.exchange).ok()?;
    let routing_key = ShortStr::from_utf8(record.routing_key).ok()?;
    let properties = Properties::from_bytes(record.properties);
    let body: Bytes = record.body;
    Some(Message::new(exchange, routing_key, properties, body))
}
