//! The definitions log: an append-only log of topology commands (vhost, user, exchange,
//! queue and binding added or removed), replayed at start, compacted into a snapshot.
//!
//! ```text
//!  <data_dir>/definitions.log
//!  ┌──────────────┬──────────────────────────────────────────────────────────┐
//!  │ "FMQDEF01"   │ entry*                                                   │
//!  └──────────────┴──────────────────────────────────────────────────────────┘
//!  entry: ┌──────────┬──────────┬──────────────────┐
//!         │ size u32 │ crc u32  │ payload (size B) │   crc = CRC32C(payload), big-endian
//!         └──────────┴──────────┴──────────────────┘
//! ```
//!
//! The payload is opaque here: the broker encodes its commands. Every append is fsynced
//! before it returns (definitions change rarely and a declare-ok must mean "it will be
//! there after a crash"). Compaction writes the snapshot to `definitions.log.tmp`, syncs it
//! and renames it over the log, so a crash at any point leaves the old or the new log whole.
//! Later this log becomes the replicated state machine's log.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Result, StoreError};

const MAGIC: &[u8; 8] = b"FMQDEF01";
const ENTRY_PREFIX_BYTES: usize = 8;
/// A definition command larger than this is corruption, not data.
const ENTRY_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
pub struct DefinitionsLog {
    path: PathBuf,
    file: File,
    entries: u64,
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub entries: Vec<Bytes>,
    pub corrupt_entries: u32,
    pub truncated_bytes: u64,
}

impl DefinitionsLog {
    /// Opens `<dir>/definitions.log` (creating it) and returns its entries in order.
    pub fn open(dir: &Path) -> Result<(DefinitionsLog, Replay)> {
        let path = dir.join("definitions.log");
        if !path.exists() {
            write_snapshot(&path, &[])?;
        }
        let data = Bytes::from(fs::read(&path)?);
        if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
            return Err(StoreError::Corrupt(format!(
                "{} is not a definitions log",
                path.display()
            )));
        }
        let replay = parse_entries(&data);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let valid_len = data.len() as u64 - replay.truncated_bytes;
        if replay.truncated_bytes > 0 {
            tracing::warn!(
                cut = replay.truncated_bytes,
                "truncating a torn write at the end of definitions.log"
            );
            file.set_len(valid_len)?;
            file.sync_data()?;
        }
        let log = DefinitionsLog {
            path,
            file,
            entries: replay.entries.len() as u64,
        };
        Ok((log, replay))
    }

    /// Appends one command and makes it durable.
    pub fn append(&mut self, payload: &[u8]) -> Result<()> {
        let mut entry = Vec::with_capacity(ENTRY_PREFIX_BYTES + payload.len());
        encode_entry(&mut entry, payload);
        let end = self.file.metadata()?.len();
        std::os::unix::fs::FileExt::write_all_at(&self.file, &entry, end)?;
        self.file.sync_data()?;
        self.entries += 1;
        Ok(())
    }

    /// Reads the log's entries again (for compaction while the broker runs).
    pub fn replay(&self) -> Result<Replay> {
        let data = Bytes::from(fs::read(&self.path)?);
        Ok(parse_entries(&data))
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Replaces the log with `snapshot` (the commands that rebuild the current state).
    pub fn compact(&mut self, snapshot: &[Bytes]) -> Result<()> {
        write_snapshot(&self.path, snapshot)?;
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.entries = snapshot.len() as u64;
        Ok(())
    }
}

fn encode_entry(dst: &mut Vec<u8>, payload: &[u8]) {
    dst.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    dst.extend_from_slice(&crc32c::crc32c(payload).to_be_bytes());
    dst.extend_from_slice(payload);
}

/// Writes a complete log to a temporary file, syncs it, and renames it into place.
fn write_snapshot(path: &Path, entries: &[Bytes]) -> Result<()> {
    let tmp = path.with_extension("log.tmp");
    let mut data = MAGIC.to_vec();
    for entry in entries {
        encode_entry(&mut data, entry);
    }
    let mut file = File::create(&tmp)?;
    file.write_all(&data)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // The rename is durable only once the directory is.
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn parse_entries(data: &Bytes) -> Replay {
    let mut replay = Replay::default();
    let mut at = MAGIC.len();
    while at < data.len() {
        match entry_at(data, at) {
            Some(Ok((payload, next))) => {
                replay.entries.push(payload);
                at = next;
            }
            Some(Err(())) => {
                // A bad entry in the middle: skip to the next one that checks out.
                match (at + 1..data.len()).find(|&i| matches!(entry_at(data, i), Some(Ok(_)))) {
                    Some(next) => {
                        tracing::warn!(offset = at, "skipping a corrupt entry in definitions.log");
                        replay.corrupt_entries += 1;
                        at = next;
                    }
                    None => break,
                }
            }
            None => break,
        }
    }
    replay.truncated_bytes = (data.len() - at) as u64;
    replay
}

/// `None`: not enough bytes (the end); `Some(Err)`: bytes that are not a valid entry.
#[allow(clippy::type_complexity)]
fn entry_at(data: &Bytes, at: usize) -> Option<Result<(Bytes, usize), ()>> {
    let prefix = data.get(at..at + ENTRY_PREFIX_BYTES)?;
    let size = u32::from_be_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(prefix[4..8].try_into().expect("4 bytes"));
    if size > ENTRY_SIZE_MAX_BYTES {
        return Some(Err(()));
    }
    let end = at + ENTRY_PREFIX_BYTES + size;
    if end > data.len() {
        return None;
    }
    let payload = data.slice(at + ENTRY_PREFIX_BYTES..end);
    if crc32c::crc32c(&payload) != crc {
        return Some(Err(()));
    }
    Some(Ok((payload, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(replay: &Replay) -> Vec<&[u8]> {
        replay.entries.iter().map(|b| &b[..]).collect()
    }

    #[test]
    fn entries_replay_in_order_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert!(replay.entries.is_empty());
        log.append(b"declare q1").unwrap();
        log.append(b"bind q1").unwrap();
        drop(log);
        let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&replay), vec![&b"declare q1"[..], b"bind q1"]);
    }

    #[test]
    fn compaction_replaces_the_log_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
        for i in 0..10 {
            log.append(format!("cmd {i}").as_bytes()).unwrap();
        }
        log.compact(&[Bytes::from_static(b"snapshot")]).unwrap();
        log.append(b"after").unwrap();
        drop(log);
        let (log, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&replay), vec![&b"snapshot"[..], b"after"]);
        assert_eq!(log.entries(), 2);
        assert!(!dir.path().join("definitions.log.tmp").exists());
    }

    #[test]
    fn torn_last_entry_is_cut_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
        log.append(b"first").unwrap();
        log.append(b"second entry").unwrap();
        drop(log);
        let path = dir.path().join("definitions.log");
        let full = fs::read(&path).unwrap();
        let last = ENTRY_PREFIX_BYTES + b"second entry".len();
        for cut in full.len() - last..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
            assert_eq!(payloads(&replay), vec![&b"first"[..]], "cut at {cut}");
            assert_eq!(
                fs::metadata(&path).unwrap().len() as usize,
                full.len() - last
            );
        }
    }

    #[test]
    fn corrupt_middle_entry_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = DefinitionsLog::open(dir.path()).unwrap();
        for payload in [&b"one"[..], b"two", b"three"] {
            log.append(payload).unwrap();
        }
        drop(log);
        let path = dir.path().join("definitions.log");
        let mut bytes = fs::read(&path).unwrap();
        let second_payload = MAGIC.len() + ENTRY_PREFIX_BYTES + 3 + ENTRY_PREFIX_BYTES;
        bytes[second_payload] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let (_, replay) = DefinitionsLog::open(dir.path()).unwrap();
        assert_eq!(payloads(&replay), vec![&b"one"[..], b"three"]);
        assert_eq!(replay.corrupt_entries, 1);
    }
}
