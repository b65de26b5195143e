//! What the core keeps on disk: durable definitions (through the definitions log) and, for
//! each durable queue, a directory its task writes its log into.
//!
//! ```text
//!  <data_dir>/definitions.log           durable topology (see `definitions`)
//!  <data_dir>/queues/<32 hex digits>/   one durable queue's segments and ack files;
//!                                       the name is SHA-256(vhost ‖ 0 ‖ queue name), since
//!                                       queue names may hold any character
//!  <data_dir>/paging/<n>/               the log a non-durable queue pages into; the whole
//!                                       folder is removed at every start
//!  <data_dir>/dedup/<32 hex digits>.cache  a durable deduplication exchange's cache
//!                                       (`x-cache-persistence: disk`), named like queues
//!  <data_dir>/delayed/<32 hex digits>/  the messages an x-delayed-message exchange holds
//!                                       (same naming as queues; see `exchange::delayed`)
//! ```
//!
//! At start the log is folded into the topology it describes (later commands win, deleting
//! an exchange or queue drops its bindings), applied, and written back as a compact
//! snapshot. Directories of queues that are not in the topology (deleted while the broker
//! was going down) are removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrymq_store::{DefinitionsLog, Syncer};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

pub use crate::topology::Topology;

use crate::definitions::Definition;
use crate::exchange::ExchangeType;

const QUEUES_DIR: &str = "queues";
/// Entries the definitions log may hold beyond twice its last snapshot before compaction.
const COMPACT_SLACK_ENTRIES: u64 = 4096;
const PAGING_DIR: &str = "paging";
const DEDUP_DIR: &str = "dedup";
const DELAYED_DIR: &str = "delayed";

#[derive(Debug)]
pub struct BrokerStorage {
    data_dir: PathBuf,
    pub syncer: Syncer,
    pub segment_size_bytes: u64,
    /// Ready messages a queue keeps in memory before further ones stay on disk.
    pub window_messages: usize,
    definitions: Mutex<DefinitionsLog>,
    /// Numbers the paging folders of non-durable queues.
    next_paging_dir: std::sync::atomic::AtomicU64,
    /// Entries in the last snapshot: the log is compacted again once it has grown well
    /// past it, so churn (declare/delete loops) cannot grow it without bound.
    snapshot_entries: std::sync::atomic::AtomicU64,
    /// Off while the log is being replayed, so replaying does not append to it.
    recording: AtomicBool,
    /// Set once the topology is restored: delayed exchanges route nothing before their
    /// bindings and queues are back.
    restored: tokio::sync::watch::Sender<bool>,
}

impl BrokerStorage {
    /// Opens the definitions log in `data_dir` and returns the storage and the topology to
    /// restore. Recording starts with [`BrokerStorage::start_recording`].
    pub fn open(
        data_dir: &Path,
        syncer: Syncer,
        segment_size_bytes: u64,
        window_messages: usize,
    ) -> ferrymq_store::Result<(BrokerStorage, Topology)> {
        // Paged transient messages never outlive the broker.
        match std::fs::remove_dir_all(data_dir.join(PAGING_DIR)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let (log, replay) = DefinitionsLog::open(data_dir)?;
        if replay.corrupt_entries > 0 {
            tracing::warn!(
                entries = replay.corrupt_entries,
                "skipped corrupt entries in definitions.log"
            );
        }
        let mut topology = Topology::default();
        for entry in replay.entries {
            match Definition::decode(entry) {
                Ok(definition) => topology.apply(definition),
                Err(e) => tracing::error!(error = %e, "skipping a definition that does not decode"),
            }
        }
        let storage = BrokerStorage {
            data_dir: data_dir.to_path_buf(),
            syncer,
            segment_size_bytes,
            window_messages,
            definitions: Mutex::new(log),
            next_paging_dir: Default::default(),
            snapshot_entries: Default::default(),
            recording: AtomicBool::new(false),
            restored: tokio::sync::watch::Sender::new(false),
        };
        Ok((storage, topology))
    }

    /// Rewrites the log as `topology` and starts recording changes.
    pub fn start_recording(&self, topology: &Topology) -> ferrymq_store::Result<()> {
        let snapshot: Vec<_> = topology
            .definitions()
            .iter()
            .map(Definition::encode)
            .collect();
        self.definitions.lock().compact(&snapshot)?;
        self.snapshot_entries
            .store(snapshot.len() as u64, Ordering::Relaxed);
        self.remove_orphan_queue_dirs(topology)?;
        self.remove_orphan_dedup_caches(topology)?;
        self.remove_orphan_delayed_dirs(topology)?;
        self.recording.store(true, Ordering::Release);
        self.restored.send_replace(true);
        Ok(())
    }

    /// Becomes true when the durable topology is restored (see [`Self::start_recording`]).
    pub fn restored(&self) -> tokio::sync::watch::Receiver<bool> {
        self.restored.subscribe()
    }

    /// Appends a change to the definitions log and hands the file to the group commit
    /// thread to sync soon. A failure is logged: the change is live, but will not survive a
    /// restart.
    ///
    /// The append is written before the caller replies, so a crash of the broker loses no
    /// declared queue; a power loss may lose the last [`ferrymq_store::SYNC_SOON_DELAY_MS`].
    /// The caller's reply (declare-ok) does not wait for the fdatasync, as RabbitMQ's does
    /// not (Mnesia logs a transaction without syncing it), and declares one after another
    /// share it. What must hold is that no message is confirmed on disk in a queue whose
    /// definition is not: the sync thread syncs every waiting file before it runs any
    /// completion, so the confirm of any message published after this call waits for this
    /// sync too.
    pub fn record(&self, definition: &Definition) {
        if !self.recording.load(Ordering::Acquire) {
            return;
        }
        let mut log = self.definitions.lock();
        if let Err(e) = log.append(&definition.encode()) {
            tracing::error!(error = %e, ?definition, "could not record a durable definition");
            return;
        }
        self.syncer.sync_soon(vec![Arc::clone(log.file())]);
        let snapshot = self.snapshot_entries.load(Ordering::Relaxed);
        if log.entries() > snapshot.saturating_mul(2) + COMPACT_SLACK_ENTRIES {
            match compact(&mut log) {
                Ok(entries) => self.snapshot_entries.store(entries, Ordering::Relaxed),
                Err(e) => tracing::error!(error = %e, "compacting the definitions log failed"),
            }
        }
    }

    /// A folder of its own for a non-durable queue's paging log (created when it pages).
    pub fn new_paging_dir(&self) -> PathBuf {
        let n = self.next_paging_dir.fetch_add(1, Ordering::Relaxed);
        self.data_dir.join(PAGING_DIR).join(n.to_string())
    }

    pub fn queue_dir(&self, vhost: &str, name: &str) -> PathBuf {
        self.data_dir.join(QUEUES_DIR).join(name_hex(vhost, name))
    }

    /// The cache file of a durable deduplication exchange.
    pub fn dedup_cache_path(&self, vhost: &str, exchange: &str) -> PathBuf {
        self.data_dir
            .join(DEDUP_DIR)
            .join(format!("{}.cache", name_hex(vhost, exchange)))
    }

    /// Cache files of exchanges that are gone (deleted while the broker went down) would
    /// otherwise come back to life if an exchange of that name were declared again.
    fn remove_orphan_dedup_caches(&self, topology: &Topology) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join(DEDUP_DIR)) else {
            return Ok(());
        };
        let keep: HashSet<PathBuf> = topology
            .exchanges()
            .map(|((vhost, name), _)| self.dedup_cache_path(vhost, name))
            .collect();
        for entry in entries {
            let path = entry?.path();
            if !keep.contains(&path) {
                tracing::info!(file = %path.display(), "removing the cache of a deleted exchange");
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Where a delayed exchange keeps its held messages.
    pub fn delayed_dir(&self, vhost: &str, exchange: &str) -> PathBuf {
        let hashed = self.queue_dir(vhost, exchange);
        let name = hashed.file_name().unwrap_or_default();
        self.data_dir.join(DELAYED_DIR).join(name)
    }

    /// Held messages of delayed exchanges that are not durable, or were deleted while the
    /// broker went down, do not outlive the exchange.
    fn remove_orphan_delayed_dirs(&self, topology: &Topology) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.data_dir.join(DELAYED_DIR)) else {
            return Ok(());
        };
        let keep: HashSet<PathBuf> = topology
            .exchanges()
            .filter(|(_, d)| {
                matches!(
                    d,
                    Definition::Exchange {
                        kind: ExchangeType::Delayed,
                        ..
                    }
                )
            })
            .map(|((vhost, name), _)| self.delayed_dir(vhost, name))
            .collect();
        for entry in entries {
            let path = entry?.path();
            if !keep.contains(&path) {
                tracing::info!(dir = %path.display(), "removing the held messages of a deleted delayed exchange");
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    fn remove_orphan_queue_dirs(&self, topology: &Topology) -> std::io::Result<()> {
        let root = self.data_dir.join(QUEUES_DIR);
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Ok(());
        };
        let keep: HashSet<PathBuf> = topology
            .queues()
            .map(|((vhost, name), _)| self.queue_dir(vhost, name))
            .collect();
        for entry in entries {
            let path = entry?.path();
            if !keep.contains(&path) {
                tracing::info!(dir = %path.display(), "removing the files of a deleted queue");
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }
}

/// SHA-256(vhost ‖ 0 ‖ name)[..16] in hex: a file name for any queue or exchange name.
fn name_hex(vhost: &str, name: &str) -> String {
    let digest = Sha256::new()
        .chain_update(vhost)
        .chain_update([0u8])
        .chain_update(name)
        .finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Folds the log into the topology it describes and rewrites it as that snapshot.
fn compact(log: &mut DefinitionsLog) -> ferrymq_store::Result<u64> {
    let mut topology = Topology::default();
    for entry in log.replay()?.entries {
        if let Ok(definition) = Definition::decode(entry) {
            topology.apply(definition);
        }
    }
    let snapshot: Vec<_> = topology
        .definitions()
        .iter()
        .map(Definition::encode)
        .collect();
    log.compact(&snapshot)?;
    tracing::info!(entries = snapshot.len(), "compacted the definitions log");
    Ok(snapshot.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_wire::{FieldTable, ShortStr};

    /// A declare does not wait for its fdatasync, but a sync asked for after it (a message's
    /// confirm) completes only once the definitions log is synced too.
    #[test]
    fn a_later_sync_request_covers_the_recorded_definition() {
        let dir = tempfile::tempdir().unwrap();
        // A delay no test outlasts: only the confirm's request can carry the sync.
        let (syncer, _thread) = Syncer::start_with_soon_delay(std::time::Duration::from_secs(3600));
        let (storage, topology) =
            BrokerStorage::open(dir.path(), syncer.clone(), 1 << 20, 64).unwrap();
        storage.start_recording(&topology).unwrap();
        let before = syncer.stats.fdatasyncs.load(Ordering::Relaxed);
        storage.record(&Definition::Queue {
            vhost: ShortStr::from("/"),
            name: ShortStr::from("q"),
            auto_delete: false,
            arguments: FieldTable::default(),
        });
        let (done, confirmed) = std::sync::mpsc::channel();
        syncer.sync(Vec::new(), Box::new(move |r| done.send(r.is_ok()).unwrap()));
        assert!(confirmed.recv().unwrap());
        assert_eq!(syncer.stats.fdatasyncs.load(Ordering::Relaxed), before + 1);
        drop(storage);
        let (_, restored) = BrokerStorage::open(dir.path(), syncer, 1 << 20, 64).unwrap();
        assert_eq!(restored.queues().count(), 1);
    }
}
