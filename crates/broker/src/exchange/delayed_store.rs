//! Where an `x-delayed-message` exchange keeps the messages it holds: a [`QueueLog`] of its
//! own under `<data_dir>/delayed/`, or memory for a broker without storage.
//!
//! A held message is one record of the store's format (`ferrymq_store::record`), used so:
//!
//! ```text
//!  kind      always Persistent: the plugin keeps every held message on disk, transient or not
//!  prio      0
//!  seq       the exchange's own counter (records are appended in seq order)
//!  expiry    the due time, unix milliseconds: recovery reads it without parsing the message
//!  exchange  the delayed exchange's name; routing key, properties, body as published
//!            (properties keep `x-delay` and any BCC header: they are needed at routing time)
//! ```
//!
//! In memory only a [`Due`] (16 bytes) stays per held message: the due time and where the
//! record is. Acking a record marks it in the segment's ack file; a segment whose records
//! are all routed is deleted, as for queues.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferrymq_store::{Position, QueueLog, Record, Syncer};

use crate::queue::ConfirmTicket;

/// One held message as the scheduler's heap keeps it. Ordered by due time, then by where it
/// was appended, so messages due in the same millisecond leave in publish order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Due {
    pub due_ms: u64,
    segment: u32,
    offset: u32,
}

// The memory budget is 32 bytes per held message including the heap's spare capacity.
const _: () = assert!(std::mem::size_of::<Due>() == 16);

impl Due {
    fn position(self) -> Position {
        Position {
            segment: u64::from(self.segment),
            offset: self.offset,
        }
    }

    /// `None` past segment 2^32: at the default 32 MiB per segment that is 128 PiB written.
    fn at(due_ms: u64, position: Position) -> Option<Due> {
        Some(Due {
            due_ms,
            segment: u32::try_from(position.segment).ok()?,
            offset: position.offset,
        })
    }
}

pub(super) enum DelayStore {
    Disk {
        log: QueueLog,
        syncer: Syncer,
    },
    /// A broker without a data directory (unit tests): records by a counter.
    Memory {
        records: HashMap<Position, Record>,
        next: u64,
    },
}

/// What a store holds when it is opened.
pub(super) struct Opened {
    pub store: DelayStore,
    pub held: Vec<Due>,
    /// Above every recovered record's seq.
    pub next_seq: u64,
}

impl DelayStore {
    /// Opens (creating or recovering) the log in `dir`; the records themselves stay on disk.
    pub fn open(
        dir: &Path,
        segment_size_bytes: u64,
        syncer: Syncer,
    ) -> ferrymq_store::Result<Opened> {
        // Only 16 bytes per held message stay in memory, recovery included.
        let mut held = Vec::new();
        let mut next_seq = 0;
        let (log, recovered) = QueueLog::open_visiting(dir, segment_size_bytes, 0, |message| {
            next_seq = message.seq + 1;
            match Due::at(message.expiry_ms, message.position) {
                Some(due) => held.push(due),
                None => {
                    tracing::error!(position = ?message.position, "delayed message beyond segment 2^32 dropped")
                }
            }
        })?;
        if recovered.corrupt_records > 0 || recovered.truncated_bytes > 0 {
            tracing::warn!(
                dir = %dir.display(),
                corrupt = recovered.corrupt_records,
                truncated = recovered.truncated_bytes,
                "delayed messages recovered with losses"
            );
        }
        Ok(Opened {
            store: DelayStore::Disk { log, syncer },
            held,
            next_seq,
        })
    }

    pub fn memory() -> Opened {
        Opened {
            store: DelayStore::Memory {
                records: HashMap::new(),
                next: 0,
            },
            held: Vec::new(),
            next_seq: 0,
        }
    }

    /// Buffers a record; it is written by the next [`DelayStore::commit`].
    pub fn append(&mut self, record: Record) -> ferrymq_store::Result<Due> {
        let due_ms = record.expiry_ms;
        let position = match self {
            DelayStore::Disk { log, .. } => log.append(&record)?,
            DelayStore::Memory { records, next } => {
                let position = Position {
                    segment: *next >> 32,
                    offset: *next as u32,
                };
                *next += 1;
                records.insert(position, record);
                position
            }
        };
        Due::at(due_ms, position).ok_or_else(|| {
            ferrymq_store::StoreError::Corrupt("segment numbers past 2^32".to_string())
        })
    }

    /// Writes what was appended and settles `tickets` once it is on disk (nack if the
    /// write or the fdatasync failed): a confirm for a held message means it is durable.
    pub fn commit(&mut self, tickets: Vec<ConfirmTicket>) {
        let DelayStore::Disk { log, syncer } = self else {
            tickets.into_iter().for_each(|t| t.settle(true));
            return;
        };
        let files = match log.flush_for_sync() {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "writing delayed messages failed");
                tickets.into_iter().for_each(|t| t.settle(false));
                return;
            }
        };
        if files.is_empty() && tickets.is_empty() {
            return;
        }
        syncer.sync(
            files,
            Box::new(move |outcome| {
                let ok = outcome.is_ok();
                tickets.into_iter().for_each(|t| t.settle(ok));
            }),
        );
    }

    pub fn read(&mut self, due: Due) -> ferrymq_store::Result<Record> {
        match self {
            DelayStore::Disk { log, .. } => log.read(due.position()),
            DelayStore::Memory { records, .. } => {
                records.get(&due.position()).cloned().ok_or_else(|| {
                    ferrymq_store::StoreError::Corrupt("held message is gone".to_string())
                })
            }
        }
    }

    /// The message was handed to every queue it routed to: forget it.
    pub fn ack(&mut self, due: Due) {
        match self {
            DelayStore::Disk { log, .. } => {
                if let Err(e) = log.ack(due.position()) {
                    tracing::error!(error = %e, "acking a delayed message failed");
                }
            }
            DelayStore::Memory { records, .. } => {
                records.remove(&due.position());
            }
        }
    }

    /// Writes the acks of a batch (not synced: losing them to a power cut means the
    /// messages are routed again, which at-least-once allows).
    pub fn flush_acks(&mut self) {
        if let DelayStore::Disk { log, .. } = self {
            if let Err(e) = log.flush_acks() {
                tracing::error!(error = %e, "writing delayed-message acks failed");
            }
        }
    }

    /// The exchange was deleted: its held messages go with it.
    pub fn destroy(self) {
        if let DelayStore::Disk { log, .. } = self {
            if let Err(e) = log.destroy() {
                tracing::error!(error = %e, "removing a deleted delayed exchange's files failed");
            }
        }
    }
}

/// One scheduler at a time per directory: the task of an exchange deleted and declared
/// again under the same name must have removed the old files before the new one opens
/// them. Process-wide, keyed by directory; an entry lives while a task holds or awaits it.
static DIR_LOCKS: std::sync::LazyLock<
    parking_lot::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
> = std::sync::LazyLock::new(Default::default);

/// Holds a directory for one scheduler; released (and the entry dropped when nobody else
/// waits) on drop.
pub(super) struct DirGuard {
    dir: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

pub(super) async fn lock_dir(dir: &Path) -> DirGuard {
    let lock = Arc::clone(DIR_LOCKS.lock().entry(dir.to_path_buf()).or_default());
    let guard = Arc::clone(&lock).lock_owned().await;
    DirGuard {
        dir: dir.to_path_buf(),
        lock,
        guard: Some(guard),
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = DIR_LOCKS.lock();
        // Two references: the map's and ours. More means a successor waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            locks.remove(&self.dir);
        }
    }
}
