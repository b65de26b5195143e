//! The file behind a deduplication exchange's cache (`x-cache-persistence: disk`): the
//! keys it has let through and until when, so that a restart does not reopen the window
//! for duplicates.
//!
//! The cache is size-bounded and evicts oldest first, so it can be rebuilt by replaying its
//! insertions in order with the same bound: no eviction needs to be written down, and the
//! file is append-only. It is rewritten (compacted) from the live entries when it holds
//! about twice as many entries as the cache, so it stays within ~2x the cache's size.
//!
//! ```text
//!   file:   ┌────────────┬───────┬───────┬─────┐
//!           │ "FMQDDP01" │ entry │ entry │ ... │      entries in insertion order
//!           └────────────┴───────┴───────┴─────┘
//!   entry:  ┌─────────┬──────────────┬─────────────┐
//!           │ crc u32 │ key [u8; 16] │ expiry u64  │  28 bytes, big-endian
//!           └─────────┴──────────────┴─────────────┘
//!   crc = CRC32C over key ‖ expiry; key = a digest of the message's deduplication key;
//!   expiry = unix time in ms after which the key may pass again, 0 = never.
//! ```
//!
//! Entries have a fixed size, so a corrupt one is skipped without losing the ones after it,
//! and bytes at the end that do not form a whole entry are a torn write, cut off.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Result;

const MAGIC: &[u8; 8] = b"FMQDDP01";
pub const DEDUP_KEY_BYTES: usize = 16;
/// crc + key + expiry.
pub const DEDUP_ENTRY_BYTES: usize = 4 + DEDUP_KEY_BYTES + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupEntry {
    pub key: [u8; DEDUP_KEY_BYTES],
    /// Unix ms; 0 = never expires.
    pub expiry_ms: u64,
}

/// What reopening a cache file found.
#[derive(Debug, Default)]
pub struct DedupReplay {
    /// In the order they were written.
    pub entries: Vec<DedupEntry>,
    pub corrupt_entries: u32,
    pub truncated_bytes: u64,
}

#[derive(Debug)]
pub struct DedupLog {
    path: PathBuf,
    /// Shared with the sync thread, which fdatasyncs it before confirms go out.
    file: Arc<File>,
    /// Entries in the file, live or not: measured against the live ones to compact.
    entries: u64,
}

impl DedupLog {
    /// Opens (or creates) the file at `path` and returns what it holds.
    pub fn open(path: &Path) -> Result<(DedupLog, DedupReplay)> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut data = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let replay = if data.starts_with(MAGIC) {
            parse(&data)
        } else {
            if !data.is_empty() {
                // Not ours or torn before the header was whole: nothing in it can be trusted.
                tracing::warn!(path = %path.display(), "deduplication cache file has no valid header; starting empty");
            }
            write_file(path, &[])?;
            DedupReplay::default()
        };
        if replay.truncated_bytes > 0 {
            let valid = data.len() as u64 - replay.truncated_bytes;
            OpenOptions::new().write(true).open(path)?.set_len(valid)?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        let entries = (replay.entries.len() + replay.corrupt_entries as usize) as u64;
        Ok((
            DedupLog {
                path: path.to_path_buf(),
                file: Arc::new(file),
                entries,
            },
            replay,
        ))
    }

    /// Writes one entry (to the page cache: durable after an fdatasync of [`Self::file`]).
    pub fn append(&mut self, entry: &DedupEntry) -> Result<()> {
        let mut buf = [0u8; DEDUP_ENTRY_BYTES];
        encode(entry, &mut buf);
        (&*self.file).write_all(&buf)?;
        self.entries += 1;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Replaces the file with `live` (temporary file, fsync, rename, fsync of the
    /// directory): a crash leaves either the old file or the new one whole. Syncs still
    /// pending on the old file stay correct: everything in it that is live is in the new one,
    /// which is durable before the rename.
    pub fn compact(&mut self, live: &[DedupEntry]) -> Result<()> {
        write_file(&self.path, live)?;
        self.file = Arc::new(OpenOptions::new().append(true).open(&self.path)?);
        self.entries = live.len() as u64;
        Ok(())
    }

    /// The exchange is deleted: its file goes.
    pub fn destroy(self) -> Result<()> {
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn encode(entry: &DedupEntry, buf: &mut [u8; DEDUP_ENTRY_BYTES]) {
    buf[4..4 + DEDUP_KEY_BYTES].copy_from_slice(&entry.key);
    buf[4 + DEDUP_KEY_BYTES..].copy_from_slice(&entry.expiry_ms.to_be_bytes());
    let crc = crc32c::crc32c(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_be_bytes());
    debug_assert_eq!(decode(buf), Some(*entry), "an entry reads back as written");
}

fn decode(buf: &[u8]) -> Option<DedupEntry> {
    debug_assert_eq!(buf.len(), DEDUP_ENTRY_BYTES);
    let crc = u32::from_be_bytes(buf[..4].try_into().ok()?);
    if crc != crc32c::crc32c(&buf[4..]) {
        return None;
    }
    Some(DedupEntry {
        key: buf[4..4 + DEDUP_KEY_BYTES].try_into().ok()?,
        expiry_ms: u64::from_be_bytes(buf[4 + DEDUP_KEY_BYTES..].try_into().ok()?),
    })
}

fn parse(data: &[u8]) -> DedupReplay {
    let mut replay = DedupReplay::default();
    let body = &data[MAGIC.len()..];
    let mut chunks = body.chunks_exact(DEDUP_ENTRY_BYTES);
    for chunk in &mut chunks {
        match decode(chunk) {
            Some(entry) => replay.entries.push(entry),
            None => replay.corrupt_entries += 1,
        }
    }
    replay.truncated_bytes = chunks.remainder().len() as u64;
    replay
}

fn write_file(path: &Path, entries: &[DedupEntry]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut data = Vec::with_capacity(MAGIC.len() + entries.len() * DEDUP_ENTRY_BYTES);
    data.extend_from_slice(MAGIC);
    let mut buf = [0u8; DEDUP_ENTRY_BYTES];
    for entry in entries {
        encode(entry, &mut buf);
        data.extend_from_slice(&buf);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u8) -> DedupEntry {
        DedupEntry {
            key: [n; DEDUP_KEY_BYTES],
            expiry_ms: u64::from(n) * 1000,
        }
    }

    #[test]
    fn entries_come_back_in_the_order_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let (mut log, replay) = DedupLog::open(&path).unwrap();
        assert!(replay.entries.is_empty());
        for n in 1..=3 {
            log.append(&entry(n)).unwrap();
        }
        drop(log);
        let (log, replay) = DedupLog::open(&path).unwrap();
        assert_eq!(replay.entries, vec![entry(1), entry(2), entry(3)]);
        assert_eq!(log.entries(), 3);
    }

    #[test]
    fn torn_last_entry_is_cut_at_every_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let (mut log, _) = DedupLog::open(&path).unwrap();
        log.append(&entry(1)).unwrap();
        log.append(&entry(2)).unwrap();
        drop(log);
        let full = fs::read(&path).unwrap();
        for cut in full.len() - DEDUP_ENTRY_BYTES + 1..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (mut log, replay) = DedupLog::open(&path).unwrap();
            assert_eq!(replay.entries, vec![entry(1)], "cut at {cut}");
            // Appends continue right after the last whole entry.
            log.append(&entry(3)).unwrap();
            drop(log);
            let (_, replay) = DedupLog::open(&path).unwrap();
            assert_eq!(replay.entries, vec![entry(1), entry(3)], "cut at {cut}");
        }
    }

    #[test]
    fn corrupt_entry_is_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let (mut log, _) = DedupLog::open(&path).unwrap();
        for n in 1..=3 {
            log.append(&entry(n)).unwrap();
        }
        drop(log);
        let mut data = fs::read(&path).unwrap();
        data[MAGIC.len() + DEDUP_ENTRY_BYTES + 10] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let (_, replay) = DedupLog::open(&path).unwrap();
        assert_eq!(replay.entries, vec![entry(1), entry(3)]);
        assert_eq!(replay.corrupt_entries, 1);
    }

    #[test]
    fn compaction_keeps_only_the_given_entries_and_appends_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        let (mut log, _) = DedupLog::open(&path).unwrap();
        for n in 1..=5 {
            log.append(&entry(n)).unwrap();
        }
        log.compact(&[entry(4), entry(5)]).unwrap();
        log.append(&entry(6)).unwrap();
        assert_eq!(log.entries(), 3);
        drop(log);
        let (_, replay) = DedupLog::open(&path).unwrap();
        assert_eq!(replay.entries, vec![entry(4), entry(5), entry(6)]);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn a_file_without_the_header_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cache");
        fs::write(&path, b"garbage that is not a cache").unwrap();
        let (mut log, replay) = DedupLog::open(&path).unwrap();
        assert!(replay.entries.is_empty());
        log.append(&entry(1)).unwrap();
        drop(log);
        let (_, replay) = DedupLog::open(&path).unwrap();
        assert_eq!(replay.entries, vec![entry(1)]);
    }
}
