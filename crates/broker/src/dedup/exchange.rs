//! The cache of one deduplication exchange, shared by every connection publishing to it,
//! and the order in which a kept key reaches the disk.
//!
//! Durability (`x-cache-persistence: disk` on a durable exchange): a key must never be on
//! disk while its message is not, or a publisher retrying after a crash would have its
//! retry dropped and the message lost. So for a persistent message the cache entry is
//! written only once every queue has confirmed the message (after their fdatasync), then
//! the cache file is fdatasynced, and only then does the publisher get its confirm:
//!
//! ```text
//!   publish ─▶ cache (memory) ─▶ queues ─ fdatasync ─▶ all confirmed ─▶ append entry
//!                                                      ─▶ fdatasync (group commit) ─▶ basic.ack
//! ```
//!
//! A crash before the entry is durable can at worst let a retry through as a duplicate
//! (the publisher had no confirm: at-least-once); after the confirm, the retry is dropped.
//! A nack from a queue forgets the key, so the publisher's retry is not taken for a
//! duplicate. Entries of transient messages are written at once and not waited for (the
//! message does not outlive the broker either).

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use ferrymq_store::{DedupEntry, DedupLog, Syncer};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use super::{now_ms, DedupCache, ExchangeSettings, Key};
use crate::message::Message;
use crate::queue::{ConfirmTicket, QueueHandle};

/// Cache files may hold this many entries beyond twice the live ones before compaction, so
/// a small cache is not rewritten every few publishes.
const COMPACT_SLACK_ENTRIES: u64 = 1024;

#[derive(Debug)]
pub struct ExchangeDedup {
    settings: ExchangeSettings,
    state: Mutex<CacheState>,
    /// Makes the cache file durable before the confirms that depend on it.
    syncer: Option<Syncer>,
}

#[derive(Debug)]
struct CacheState {
    cache: DedupCache,
    /// `None`: memory only (the default, a non-durable exchange, or the file failed).
    log: Option<DedupLog>,
    /// Keys admitted for persistent messages whose entries wait for the messages to be on
    /// disk: left out of a compaction, which would otherwise write them early.
    unwritten: HashSet<Key>,
}

/// A cache entry to write once its message is safe in every queue it reached.
#[derive(Debug)]
pub struct PendingWrite {
    dedup: Arc<ExchangeDedup>,
    entry: DedupEntry,
}

/// What deduplication exchanges decided about one publish.
#[derive(Debug, Default)]
pub struct DedupOutcome {
    /// Some deduplication exchange dropped the message: no basic.return for it.
    pub duplicate: bool,
    /// Entries to write after the message is on disk; its confirm waits for them.
    pub writes: SmallVec<[PendingWrite; 1]>,
}

impl ExchangeDedup {
    /// A cache kept in memory, or in the file at `path` (replayed now) when given.
    pub fn open(settings: ExchangeSettings, path: Option<PathBuf>, syncer: Option<Syncer>) -> Self {
        let size = usize::try_from(settings.cache_size).unwrap_or(usize::MAX);
        let mut cache = DedupCache::new(size);
        let log = path.and_then(|path| match DedupLog::open(&path) {
            Ok((log, replay)) => {
                if replay.corrupt_entries > 0 || replay.truncated_bytes > 0 {
                    tracing::warn!(path = %path.display(), corrupt = replay.corrupt_entries, truncated = replay.truncated_bytes, "deduplication cache recovered with losses");
                }
                cache.replay(&replay.entries, now_ms());
                Some(log)
            }
            Err(e) => {
                // Deduplicating from memory beats refusing the exchange; the operator sees why.
                tracing::error!(error = %e, path = %path.display(), "deduplication cache file unusable, keeping the cache in memory");
                None
            }
        });
        ExchangeDedup {
            settings,
            state: Mutex::new(CacheState {
                cache,
                log,
                unwritten: HashSet::new(),
            }),
            syncer,
        }
    }

    pub fn settings(&self) -> ExchangeSettings {
        self.settings
    }

    /// Whether `key` passes (is not a duplicate); if it does, it is remembered from now on,
    /// and for a persistent message its entry joins `writes` (see the module doc).
    pub(super) fn admit(
        self: &Arc<Self>,
        key: Key,
        ttl_ms: Option<u64>,
        persistent: bool,
        writes: &mut SmallVec<[PendingWrite; 1]>,
    ) -> bool {
        let now = now_ms();
        let expiry = ttl_ms
            .or(self.settings.ttl_ms)
            .map_or(0, |ttl| now.saturating_add(ttl));
        let mut state = self.state.lock();
        if !state.cache.insert(key, expiry, now) {
            return false;
        }
        if state.log.is_none() {
            return true;
        }
        let entry = DedupEntry {
            key,
            expiry_ms: expiry,
        };
        if persistent {
            state.unwritten.insert(key);
            writes.push(PendingWrite {
                dedup: Arc::clone(self),
                entry,
            });
        } else if let Err(e) = state.append(&entry) {
            tracing::error!(error = %e, "writing to a deduplication cache file failed");
        }
        true
    }

    /// Writes an entry whose message is safe; returns the file to sync (`None`: the cache
    /// has no file any more, the exchange was deleted). A failed write forgets the key.
    fn record(&self, entry: &DedupEntry) -> ferrymq_store::Result<Option<Arc<File>>> {
        let mut state = self.state.lock();
        state.unwritten.remove(&entry.key);
        let written = state.append(entry);
        if let Err(e) = &written {
            tracing::error!(error = %e, "writing to a deduplication cache file failed");
            state.cache.remove(&entry.key);
        }
        written
    }

    /// The message was refused somewhere: a retry must not be taken for a duplicate.
    fn forget(&self, key: &Key) {
        let mut state = self.state.lock();
        state.unwritten.remove(key);
        state.cache.remove(key);
    }

    /// The exchange is deleted: its file goes with it.
    pub fn destroy(&self) {
        if let Some(log) = self.state.lock().log.take() {
            if let Err(e) = log.destroy() {
                tracing::error!(error = %e, "removing a deleted exchange's deduplication cache failed");
            }
        }
    }
}

impl CacheState {
    /// Appends (and compacts when the file has grown to twice the cache); `Ok(None)` when
    /// the cache has no file (any more).
    fn append(&mut self, entry: &DedupEntry) -> ferrymq_store::Result<Option<Arc<File>>> {
        let Some(log) = self.log.as_mut() else {
            return Ok(None);
        };
        log.append(entry)?;
        if log.entries() > (self.cache.len() as u64).saturating_mul(2) + COMPACT_SLACK_ENTRIES {
            // Rare (once per ~size insertions) and proportional to the cache size.
            let mut live = self.cache.entries();
            live.retain(|e| !self.unwritten.contains(&e.key));
            if let Err(e) = log.compact(&live) {
                tracing::error!(error = %e, "compacting a deduplication cache file failed");
            }
        }
        Ok(Some(log.file()))
    }
}

impl DedupOutcome {
    /// Enqueues a message that has cache entries to write: each queue confirms to a fan-in
    /// task, which writes the entries once all did, syncs them, then settles `ticket` (the
    /// publisher's confirm or a transaction's waiter) — see the module doc.
    pub async fn enqueue_then_record(
        self,
        queues: &mut Vec<Arc<QueueHandle>>,
        message: &Arc<Message>,
        ticket: Option<ConfirmTicket>,
    ) {
        let mut confirmed = Vec::with_capacity(queues.len());
        for queue in queues.drain(..) {
            let (tx, rx) = oneshot::channel();
            confirmed.push(rx);
            queue
                .publish(Arc::clone(message), Some(ConfirmTicket::Waiter(tx)))
                .await;
        }
        tokio::spawn(record_when_confirmed(self.writes, confirmed, ticket));
    }
}

async fn record_when_confirmed(
    writes: SmallVec<[PendingWrite; 1]>,
    confirmed: Vec<oneshot::Receiver<bool>>,
    ticket: Option<ConfirmTicket>,
) {
    let mut safe = true;
    for queue in confirmed {
        // A queue that vanished without answering cannot vouch for the message.
        safe &= queue.await.unwrap_or(false);
    }
    let settle = move |ack: bool| {
        if let Some(ticket) = ticket {
            ticket.settle(ack);
        }
    };
    if !safe {
        for write in &writes {
            write.dedup.forget(&write.entry.key);
        }
        settle(false);
        return;
    }
    let mut files = Vec::with_capacity(writes.len());
    let mut written = true;
    for write in &writes {
        match write.dedup.record(&write.entry) {
            Ok(file) => files.extend(file),
            Err(_) => written = false,
        }
    }
    let syncer = writes.iter().find_map(|w| w.dedup.syncer.clone());
    match syncer {
        Some(syncer) if written && !files.is_empty() => syncer.sync(
            files,
            Box::new(move |outcome| {
                if outcome.is_err() {
                    for write in &writes {
                        write.dedup.forget(&write.entry.key);
                    }
                }
                settle(outcome.is_ok());
            }),
        ),
        _ => settle(written),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{DedupProbe, KEY_HEADER};
    use bytes::Bytes;
    use ferrymq_wire::{BasicProperties, FieldTable, FieldValue};

    fn message(key: &str, persistent: bool) -> Message {
        let mut headers = FieldTable::new();
        headers.insert(
            KEY_HEADER,
            FieldValue::LongStr(Bytes::from(key.to_string())),
        );
        let props = BasicProperties {
            headers: Some(headers),
            delivery_mode: persistent.then_some(2),
            ..Default::default()
        };
        Message::new("x".into(), "".into(), props.encode(), Bytes::new())
    }

    fn settings(on_disk: bool) -> ExchangeSettings {
        ExchangeSettings {
            cache_size: 10,
            ttl_ms: None,
            on_disk,
        }
    }

    fn on_disk(path: &std::path::Path) -> Arc<ExchangeDedup> {
        Arc::new(ExchangeDedup::open(
            settings(true),
            Some(path.to_path_buf()),
            None,
        ))
    }

    fn passes(dedup: &Arc<ExchangeDedup>, m: &Message) -> DedupOutcome {
        let mut probe = DedupProbe::new(m);
        assert!(!probe.drops(dedup), "expected to pass");
        probe.outcome
    }

    #[test]
    fn a_probe_drops_the_second_message_with_a_key_and_passes_keyless_ones() {
        let dedup = Arc::new(ExchangeDedup::open(settings(false), None, None));
        let m = message("a", false);
        passes(&dedup, &m);
        let mut probe = DedupProbe::new(&m);
        assert!(probe.drops(&dedup));
        assert!(probe.outcome.duplicate);
        let keyless = Message::new(
            "x".into(),
            "".into(),
            BasicProperties::default().encode(),
            Bytes::new(),
        );
        passes(&dedup, &keyless);
        passes(&dedup, &keyless);
    }

    #[tokio::test]
    async fn a_persistent_key_reaches_the_file_only_after_its_queues_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let dedup = on_disk(&path);
        let m = message("p", true);
        let outcome = passes(&dedup, &m);
        assert_eq!(outcome.writes.len(), 1);
        // Nothing on disk yet: a restart now would let a retry through.
        assert!(passes(&on_disk(&path), &m).writes.len() == 1);
        let (queue_tx, queue_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(record_when_confirmed(
            outcome.writes,
            vec![queue_rx],
            Some(ConfirmTicket::Waiter(tx)),
        ));
        queue_tx.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(rx.await, Ok(true));
        // On disk now: a restarted cache drops it.
        let mut probe = DedupProbe::new(&m);
        assert!(probe.drops(&on_disk(&path)));
    }

    #[tokio::test]
    async fn a_refused_message_is_forgotten_so_its_retry_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let dedup = on_disk(&path);
        let m = message("p", true);
        let outcome = passes(&dedup, &m);
        let (queue_tx, queue_rx) = oneshot::channel();
        let (tx, rx) = oneshot::channel();
        queue_tx.send(false).unwrap();
        record_when_confirmed(
            outcome.writes,
            vec![queue_rx],
            Some(ConfirmTicket::Waiter(tx)),
        )
        .await;
        assert_eq!(rx.await, Ok(false));
        passes(&dedup, &m);
    }

    #[test]
    fn a_transient_key_is_written_at_once_and_waits_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let dedup = on_disk(&path);
        let m = message("t", false);
        assert!(passes(&dedup, &m).writes.is_empty());
        let mut probe = DedupProbe::new(&m);
        assert!(probe.drops(&on_disk(&path)));
        // A duplicate writes nothing either.
        let mut probe = DedupProbe::new(&m);
        assert!(probe.drops(&dedup));
        assert!(probe.outcome.writes.is_empty());
    }

    #[test]
    fn the_cache_file_stays_within_about_twice_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let dedup = on_disk(&path);
        for n in 0..5_000 {
            passes(&dedup, &message(&format!("k{n}"), false));
        }
        let entries = dedup.state.lock().log.as_ref().unwrap().entries();
        assert!(entries <= 2 * 10 + COMPACT_SLACK_ENTRIES + 1, "{entries}");
        drop(dedup);
        // Only the last ten keys are remembered after a restart.
        let dedup = on_disk(&path);
        assert!(DedupProbe::new(&message("k4999", false)).drops(&dedup));
        assert!(DedupProbe::new(&message("k4990", false)).drops(&dedup));
        passes(&dedup, &message("k4989", false));
    }

    #[test]
    fn a_deleted_exchange_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let dedup = on_disk(&path);
        passes(&dedup, &message("a", false));
        assert!(path.exists());
        dedup.destroy();
        assert!(!path.exists());
    }
}
