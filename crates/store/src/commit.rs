//! The storage thread: the single owner of every queue log, with group commit.
//!
//! Requests arrive on a bounded channel. The thread takes everything waiting (up to
//! [`BATCH_REQUESTS_MAX`]), applies it, then makes it durable with one fdatasync per log
//! that received durable appends, and only then runs the completions. A publisher confirm
//! waiting on a completion is therefore sent after its message is on disk, and a thousand
//! publishers arriving together share one fdatasync.
//!
//! ```text
//!   queue tasks ──Request (bounded, blocks when full)──▶ storage thread
//!                                                         apply batch → fdatasync dirty logs
//!   completion closures ◀──────────────────────────────── → run completions
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::error::{Result, StoreError};
use crate::queue_log::{QueueLog, Recovered};
use crate::record::Record;
use crate::segment::Position;

/// Requests waiting for the storage thread before senders block.
pub const REQUEST_QUEUE_MAX: usize = 16 * 1024;
/// Requests applied per batch before the thread syncs and completes them.
pub const BATCH_REQUESTS_MAX: usize = 4096;

pub type LogId = u64;
pub type Completion<T> = Box<dyn FnOnce(Result<T>) + Send>;

pub enum Request {
    /// Opens (and recovers) the log of a queue.
    Open {
        id: LogId,
        dir: PathBuf,
        segment_size_bytes: u64,
        done: Completion<Recovered>,
    },
    /// Appends a record; `durable` ones are fdatasynced before `done` runs.
    Append {
        id: LogId,
        record: Record,
        durable: bool,
        done: Option<Completion<Position>>,
    },
    Ack {
        id: LogId,
        positions: Vec<Position>,
    },
    Read {
        id: LogId,
        position: Position,
        done: Completion<Record>,
    },
    /// Closes the log and deletes its files (the queue was deleted).
    Destroy {
        id: LogId,
    },
    /// Runs a closure on the storage thread, in order with the other requests.
    #[cfg(test)]
    Run(Box<dyn FnOnce() + Send>),
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub syncs: AtomicU64,
    pub batches: AtomicU64,
    pub appends: AtomicU64,
}

/// The handle queue tasks use; cloning shares the one thread.
#[derive(Clone)]
pub struct Storage {
    tx: SyncSender<Request>,
    pub stats: Arc<Stats>,
}

impl Storage {
    /// Starts the storage thread. It ends when every `Storage` handle is dropped.
    pub fn start() -> (Storage, JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel(REQUEST_QUEUE_MAX);
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("ferrymq-storage".into())
            .spawn(move || run(rx, &thread_stats))
            .expect("spawning the storage thread");
        (Storage { tx, stats }, thread)
    }

    /// Queues a request, blocking while the storage thread is REQUEST_QUEUE_MAX behind.
    pub fn send(&self, request: Request) -> Result<()> {
        self.tx
            .send(request)
            .map_err(|_| StoreError::Io(std::io::Error::other("storage thread has stopped")))
    }
}

fn run(rx: Receiver<Request>, stats: &Stats) {
    let mut logs: HashMap<LogId, QueueLog> = HashMap::new();
    let mut batch = Vec::with_capacity(BATCH_REQUESTS_MAX);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        apply_batch(&mut logs, &mut batch, stats);
    }
    for log in logs.values_mut() {
        if let Err(e) = log.sync() {
            tracing::error!(error = %e, "final sync of a queue log failed");
        }
    }
}

/// Applies a batch, makes it durable, then runs its completions.
fn apply_batch(logs: &mut HashMap<LogId, QueueLog>, batch: &mut Vec<Request>, stats: &Stats) {
    let mut after_sync: Vec<(Completion<Position>, LogId, Position)> = Vec::new();
    let mut dirty: HashMap<LogId, bool> = HashMap::new();
    for request in batch.drain(..) {
        match request {
            Request::Open {
                id,
                dir,
                segment_size_bytes,
                done,
            } => match QueueLog::open(&dir, segment_size_bytes) {
                Ok((log, recovered)) => {
                    logs.insert(id, log);
                    done(Ok(recovered));
                }
                Err(e) => done(Err(e)),
            },
            Request::Append {
                id,
                record,
                durable,
                done,
            } => {
                stats.appends.fetch_add(1, Ordering::Relaxed);
                let Some(log) = logs.get_mut(&id) else {
                    if let Some(done) = done {
                        done(Err(StoreError::Io(std::io::Error::other(format!(
                            "log {id} is not open"
                        )))));
                    }
                    continue;
                };
                match log.append(&record) {
                    Ok(position) => {
                        *dirty.entry(id).or_default() |= durable;
                        if let Some(done) = done {
                            after_sync.push((done, id, position));
                        }
                    }
                    Err(e) => {
                        if let Some(done) = done {
                            done(Err(e));
                        }
                    }
                }
            }
            Request::Ack { id, positions } => {
                if let Some(log) = logs.get_mut(&id) {
                    for position in positions {
                        if let Err(e) = log.ack(position) {
                            tracing::error!(error = %e, log = id, "recording an ack failed");
                        }
                    }
                }
            }
            Request::Read { id, position, done } => match logs.get_mut(&id) {
                Some(log) => done(log.read(position)),
                None => done(Err(StoreError::Io(std::io::Error::other(format!(
                    "log {id} is not open"
                ))))),
            },
            Request::Destroy { id } => {
                if let Some(log) = logs.remove(&id) {
                    if let Err(e) = log.destroy() {
                        tracing::error!(error = %e, log = id, "deleting a queue log failed");
                    }
                }
                dirty.remove(&id);
            }
            #[cfg(test)]
            Request::Run(f) => f(),
        }
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    let mut failed: HashMap<LogId, String> = HashMap::new();
    for (id, durable) in dirty {
        let Some(log) = logs.get_mut(&id) else {
            continue;
        };
        let outcome = if durable {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            log.sync()
        } else {
            log.flush()
        };
        if let Err(e) = outcome {
            tracing::error!(error = %e, log = id, "writing a queue log failed");
            failed.insert(id, e.to_string());
        }
    }
    for (done, id, position) in after_sync {
        match failed.get(&id) {
            None => done(Ok(position)),
            Some(text) => done(Err(StoreError::Io(std::io::Error::other(text.clone())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordKind;
    use bytes::Bytes;

    fn record(seq: u64) -> Record {
        Record {
            kind: RecordKind::Persistent,
            seq,
            expiry_ms: 0,
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            properties: Bytes::new(),
            body: Bytes::from_static(b"body"),
        }
    }

    fn open(storage: &Storage, id: LogId, dir: PathBuf) -> Recovered {
        let (tx, rx) = mpsc::channel();
        let done: Completion<Recovered> = Box::new(move |r| tx.send(r).unwrap());
        storage
            .send(Request::Open {
                id,
                dir,
                segment_size_bytes: 1 << 20,
                done,
            })
            .unwrap();
        rx.recv().unwrap().unwrap()
    }

    #[test]
    fn appends_queued_together_share_one_fdatasync_per_log() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, thread) = Storage::start();
        open(&storage, 1, dir.path().join("q1"));
        open(&storage, 2, dir.path().join("q2"));
        // Hold the thread so that all appends below land in one batch.
        let (release, gate) = mpsc::channel::<()>();
        storage
            .send(Request::Run(Box::new(move || gate.recv().unwrap())))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for seq in 0..200 {
            let tx = tx.clone();
            let done: Completion<Position> = Box::new(move |r| tx.send(r.is_ok()).unwrap());
            storage
                .send(Request::Append {
                    id: 1 + seq % 2,
                    record: record(seq),
                    durable: true,
                    done: Some(done),
                })
                .unwrap();
        }
        let syncs_before = storage.stats.syncs.load(Ordering::Relaxed);
        release.send(()).unwrap();
        for _ in 0..200 {
            assert!(rx.recv().unwrap());
        }
        assert_eq!(
            storage.stats.syncs.load(Ordering::Relaxed) - syncs_before,
            2,
            "one per log"
        );
        drop(storage);
        thread.join().unwrap();
        let (_, recovered) = QueueLog::open(&dir.path().join("q1"), 1 << 20).unwrap();
        assert_eq!(recovered.messages.len(), 100);
    }

    #[test]
    fn completion_runs_only_after_the_record_is_readable_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, thread) = Storage::start();
        open(&storage, 7, dir.path().join("q"));
        let path = dir.path().join("q");
        let (tx, rx) = mpsc::channel();
        let done: Completion<Position> = Box::new(move |r| {
            // Read the file independently of the log: the bytes must already be there.
            let scan = crate::segment::scan(&path, 1).unwrap();
            tx.send((r.is_ok(), scan.records.len())).unwrap();
        });
        storage
            .send(Request::Append {
                id: 7,
                record: record(0),
                durable: true,
                done: Some(done),
            })
            .unwrap();
        assert_eq!(rx.recv().unwrap(), (true, 1));
        drop(storage);
        thread.join().unwrap();
    }
}
