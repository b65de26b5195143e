//! A durable queue's link to its log on disk.
//!
//! Persistent messages are appended as they arrive; at the end of each mailbox batch the
//! queue writes them and hands the files to the group-commit thread, and the confirms of
//! that batch are settled when the fdatasync is done. Acks and delivery marks are buffered
//! and written once per batch too. Transient messages are not written (they do not survive
//! a restart anyway); paging them to disk comes with bounded queue memory.

use std::path::PathBuf;

use bytes::Bytes;
use ferrymq_store::{Position, QueueLog, Record, RecordKind, RecoveredMessage, Syncer};
use ferrymq_wire::{Properties, ShortStr};

use super::command::ConfirmTicket;
use crate::message::Message;

/// Where a durable queue keeps its log.
#[derive(Debug, Clone)]
pub struct QueueStorage {
    pub dir: PathBuf,
    pub syncer: Syncer,
    pub segment_size_bytes: u64,
}

pub(super) struct Persistence {
    log: QueueLog,
    syncer: Syncer,
    /// Confirms that wait for this batch's fdatasync.
    waiting: Vec<ConfirmTicket>,
}

impl Persistence {
    /// Opens the log and returns the messages it still holds, oldest first.
    pub fn open(storage: QueueStorage) -> ferrymq_store::Result<(Persistence, Vec<Restored>)> {
        let (log, recovered) = QueueLog::open(&storage.dir, storage.segment_size_bytes)?;
        if recovered.corrupt_records > 0 || recovered.truncated_bytes > 0 {
            tracing::warn!(
                dir = %storage.dir.display(),
                corrupt = recovered.corrupt_records,
                truncated = recovered.truncated_bytes,
                "queue log recovered with losses"
            );
        }
        let messages = recovered
            .messages
            .into_iter()
            .filter_map(message_from)
            .collect();
        Ok((
            Persistence {
                log,
                syncer: storage.syncer,
                waiting: Vec::new(),
            },
            messages,
        ))
    }

    /// Appends a persistent message; `None` if the write failed (logged).
    pub fn append(&mut self, id: u64, message: &Message) -> Option<Position> {
        let record = Record {
            kind: RecordKind::Persistent,
            seq: id,
            expiry_ms: 0,
            exchange: message.exchange.clone().into_bytes(),
            routing_key: message.routing_key.clone().into_bytes(),
            properties: message.properties.clone().into_bytes(),
            body: message.body.clone(),
        };
        match self.log.append(&record) {
            Ok(position) => Some(position),
            Err(e) => {
                tracing::error!(error = %e, "appending to a queue log failed");
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

    pub fn mark_delivered(&mut self, position: Position) {
        self.log.mark_delivered(position);
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
            if !files.is_empty() {
                // Nobody waits, but the data should still reach the disk soon.
                self.syncer.sync(files, Box::new(|_| {}));
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

/// A message read back from the log.
pub(super) struct Restored {
    pub id: u64,
    pub message: Message,
    pub position: Position,
    /// Delivered before the restart: it comes back redelivered.
    pub delivered: bool,
}

fn message_from(recovered: RecoveredMessage) -> Option<Restored> {
    let RecoveredMessage {
        position,
        record,
        delivered,
    } = recovered;
    let exchange = ShortStr::from_utf8(record.exchange).ok()?;
    let routing_key = ShortStr::from_utf8(record.routing_key).ok()?;
    let properties = Properties::from_bytes(record.properties);
    let body: Bytes = record.body;
    let message = Message::new(exchange, routing_key, properties, body);
    Some(Restored {
        id: record.seq,
        message,
        position,
        delivered,
    })
}
