//! Segment files: a queue's messages, appended in order, never rewritten.
//!
//! ```text
//!  <dir>/<segment number, 20 digits>.seg   records back to back (see `record`)
//!  <dir>/<segment number, 20 digits>.ack   u32 big-endian entries: the offset of an acked
//!                                          record, or offset | DELIVERED_BIT for a record
//!                                          handed to a consumer (so that after a restart
//!                                          it comes back with redelivered=true)
//! ```
//!
//! A segment is deleted, with its ack file, once every record in it is acked and it is no
//! longer the one being written. Reading uses positioned reads (`pread`) on a shared file
//! handle, so readers never move the writer's file position.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::error::{Result, StoreError};
use crate::record::{self, Decoded, Record, RECORD_PREFIX_BYTES, RECORD_SIZE_MAX_BYTES};

/// Set in an ack-file entry that marks a delivery rather than an ack. Segments stay far
/// below 2 GiB, so offsets never use this bit.
pub const DELIVERED_BIT: u32 = 1 << 31;

/// Bytes one read-ahead `pread` asks for: a few hundred small records per system call.
pub const READ_AHEAD_BYTES: usize = 256 * 1024;

/// A window of one segment's bytes, for reading records in file order (a queue reading its
/// paged messages back) with one `pread` per window instead of two per record. Short-lived:
/// whoever reads a run of records owns one for that run, so an idle queue holds no buffer.
#[derive(Debug, Default)]
pub struct ReadAhead {
    segment: u64,
    /// File offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl ReadAhead {
    /// The record prefix at file offset `at` and its index in `buf`, if the buffer has it.
    fn prefix_at(&self, segment: u64, at: u64) -> Option<([u8; RECORD_PREFIX_BYTES], usize)> {
        if segment != self.segment || at < self.start {
            return None;
        }
        let rel = usize::try_from(at - self.start).ok()?;
        let prefix = self.buf.get(rel..rel.checked_add(RECORD_PREFIX_BYTES)?)?;
        Some((prefix.try_into().expect("prefix length"), rel))
    }

    /// Reads up to `want` bytes of `segment` from `at`, as far as the segment is written.
    fn fill(&mut self, segment: &Segment, at: u64, want: usize) -> Result<()> {
        let len = segment.len_bytes.saturating_sub(at).min(want as u64) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        segment.file.read_exact_at(&mut self.buf, at)?;
        self.segment = segment.number;
        self.start = at;
        Ok(())
    }
}

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u32,
}

pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.seg"))
}

pub fn ack_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.ack"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".seg") {
            if let Ok(number) = stem.parse::<u64>() {
                numbers.push(number);
            }
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// One open segment.
#[derive(Debug)]
pub struct Segment {
    pub number: u64,
    /// Shared with the sync thread, which fdatasyncs it after writes.
    file: Arc<File>,
    acks: Option<File>,
    /// Ack-file entries not yet written (see `flush_acks`).
    pending_acks: Vec<u8>,
    /// Bytes of whole records in the file.
    pub len_bytes: u64,
    /// Records in the segment (recovered or appended).
    pub records: u32,
    /// Of those, acked.
    pub acked: u32,
}

impl Segment {
    pub fn create(dir: &Path, number: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(segment_path(dir, number))?;
        Ok(Segment {
            number,
            file: Arc::new(file),
            acks: None,
            pending_acks: Vec::new(),
            len_bytes: 0,
            records: 0,
            acked: 0,
        })
    }

    pub fn open(dir: &Path, number: u64) -> Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(segment_path(dir, number))?;
        let len_bytes = file.metadata()?.len();
        Ok(Segment {
            number,
            file: Arc::new(file),
            acks: None,
            pending_acks: Vec::new(),
            len_bytes,
            records: 0,
            acked: 0,
        })
    }

    /// Appends already encoded records at the end.
    pub fn append(&mut self, encoded: &[u8], records: u32) -> Result<()> {
        self.file.write_all_at(encoded, self.len_bytes)?;
        self.len_bytes += encoded.len() as u64;
        self.records += records;
        Ok(())
    }

    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync_data()?;
        Ok(())
    }

    /// The encoded length of the record at `offset` (its size field plus the prefix).
    pub fn record_len(&self, offset: u32) -> Result<u32> {
        let mut prefix = [0u8; RECORD_PREFIX_BYTES];
        self.file.read_exact_at(&mut prefix, u64::from(offset))?;
        let size = u32::from_be_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
        if size > RECORD_SIZE_MAX_BYTES {
            return Err(StoreError::Corrupt(format!(
                "record at {}:{offset} has size {size}",
                self.number
            )));
        }
        Ok((RECORD_PREFIX_BYTES + size) as u32)
    }

    /// [`Segment::record_len`] through `ahead` (see [`Segment::read_ahead`]).
    pub fn record_len_ahead(&self, offset: u32, ahead: &mut ReadAhead) -> Result<u32> {
        let (prefix, _) = self.prefix_ahead(offset, ahead)?;
        let size = u32::from_be_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
        if size > RECORD_SIZE_MAX_BYTES {
            return Err(self.overrun(offset));
        }
        Ok((RECORD_PREFIX_BYTES + size) as u32)
    }

    /// Reads the record at `offset` through `ahead`: one `pread` fills it with the records
    /// that follow too, and the next reads of this segment take their record from it. The
    /// record is copied out of the buffer, so messages never pin it.
    pub fn read_ahead(&self, offset: u32, ahead: &mut ReadAhead) -> Result<Record> {
        let at = u64::from(offset);
        let (prefix, rel) = self.prefix_ahead(offset, ahead)?;
        let size = u32::from_be_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
        let total = RECORD_PREFIX_BYTES + size;
        if size > RECORD_SIZE_MAX_BYTES || at + total as u64 > self.len_bytes {
            return Err(self.overrun(offset));
        }
        let rel = if rel + total <= ahead.buf.len() {
            rel
        } else {
            // Runs past what the buffer holds: read again from here, the whole record at least.
            ahead.fill(self, at, total.max(READ_AHEAD_BYTES))?;
            0
        };
        self.decode_at(offset, Bytes::copy_from_slice(&ahead.buf[rel..rel + total]))
    }

    /// The prefix of the record at `offset` and its index in `ahead`, which is refilled
    /// from there when it does not hold it.
    fn prefix_ahead(
        &self,
        offset: u32,
        ahead: &mut ReadAhead,
    ) -> Result<([u8; RECORD_PREFIX_BYTES], usize)> {
        let at = u64::from(offset);
        if let Some(found) = ahead.prefix_at(self.number, at) {
            return Ok(found);
        }
        ahead.fill(self, at, READ_AHEAD_BYTES)?;
        ahead
            .prefix_at(self.number, at)
            .ok_or_else(|| self.overrun(offset))
    }

    fn overrun(&self, offset: u32) -> StoreError {
        StoreError::Corrupt(format!(
            "record at {}:{offset} overruns the segment",
            self.number
        ))
    }

    fn decode_at(&self, offset: u32, bytes: Bytes) -> Result<Record> {
        match record::decode(&bytes)? {
            Decoded::Record(record, _) => Ok(record),
            Decoded::Incomplete => Err(StoreError::Corrupt(format!(
                "record at {}:{offset} is incomplete",
                self.number
            ))),
        }
    }

    /// Reads the record at `offset`, checking its size and checksum again on the way out.
    pub fn read(&self, offset: u32) -> Result<Record> {
        let mut prefix = [0u8; RECORD_PREFIX_BYTES];
        self.file.read_exact_at(&mut prefix, u64::from(offset))?;
        let size = u32::from_be_bytes(prefix[0..4].try_into().expect("4 bytes")) as usize;
        if size > RECORD_SIZE_MAX_BYTES
            || u64::from(offset) + (RECORD_PREFIX_BYTES + size) as u64 > self.len_bytes
        {
            return Err(StoreError::Corrupt(format!(
                "record at {}:{offset} overruns the segment",
                self.number
            )));
        }
        let mut buf = BytesMut::zeroed(RECORD_PREFIX_BYTES + size);
        self.file.read_exact_at(&mut buf, u64::from(offset))?;
        self.decode_at(offset, buf.freeze())
    }

    /// Records that an offset is acked; written by the next `flush_acks`.
    pub fn ack(&mut self, offset: u32) {
        self.pending_acks.extend_from_slice(&offset.to_be_bytes());
        self.acked += 1;
    }

    /// Records that the record at `offset` was handed to a consumer.
    pub fn mark_delivered(&mut self, offset: u32) {
        self.pending_acks
            .extend_from_slice(&(offset | DELIVERED_BIT).to_be_bytes());
    }

    /// Writes buffered ack-file entries in one call. Not synced: losing the last acks to a
    /// power cut only means redelivery, which at-least-once allows; a process crash loses
    /// nothing written.
    pub fn flush_acks(&mut self, dir: &Path) -> Result<()> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        if self.acks.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(ack_path(dir, self.number))?;
            self.acks = Some(file);
        }
        if let Some(acks) = self.acks.as_mut() {
            acks.write_all(&self.pending_acks)?;
        }
        self.pending_acks.clear();
        Ok(())
    }

    pub fn is_fully_acked(&self) -> bool {
        self.acked >= self.records
    }

    /// Truncates the file to `len` bytes (a torn last record found by recovery).
    pub fn truncate(&mut self, len: u64) -> Result<()> {
        self.file.set_len(len)?;
        self.file.sync_data()?;
        self.len_bytes = len;
        Ok(())
    }

    pub fn remove(self, dir: &Path) -> Result<()> {
        drop(self.file);
        fs::remove_file(segment_path(dir, self.number))?;
        match fs::remove_file(ack_path(dir, self.number)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Reads a segment's ack file; a torn last entry (fewer than 4 bytes) is ignored.
pub fn read_acks(dir: &Path, number: u64) -> Result<Vec<u32>> {
    let bytes = match fs::read(ack_path(dir, number)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// (offset, record) for every valid record, in file order.
    pub records: Vec<(u32, Record)>,
    /// Records skipped because they failed their checks.
    pub corrupt: u32,
    /// Where the valid data ends: anything after it is a torn write to truncate.
    pub valid_len: u64,
}

/// Reads every record of a segment file. A record that fails its checksum in the middle is
/// skipped by searching forward for the next record that decodes; bytes at the end that do
/// not form a whole record are reported through `valid_len`.
pub fn scan(dir: &Path, number: u64) -> Result<Scan> {
    let mut records = Vec::new();
    let mut out = scan_with(dir, number, |offset, record| records.push((offset, record)))?;
    out.records = records;
    Ok(out)
}

/// Like [`scan`], handing each valid record to `visit` instead of collecting them, so a
/// large segment is never held as a vector of records (`Scan::records` stays empty).
///
/// The file is read `SCAN_CHUNK_BYTES` at a time, so recovery holds a chunk of each segment
/// (or one record, where a record is larger) rather than the whole file; records handed to
/// `visit` share their chunk. Only a corrupt record makes the scan read the rest of the
/// file at once, to search it for the next record that decodes.
pub fn scan_with(dir: &Path, number: u64, mut visit: impl FnMut(u32, Record)) -> Result<Scan> {
    let mut reader = ChunkReader::open(&segment_path(dir, number))?;
    let mut out = Scan::default();
    loop {
        let rest = reader.rest();
        match record::decode(&rest) {
            Ok(Decoded::Record(record, len)) => {
                visit(reader.offset() as u32, record);
                reader.advance(len);
                out.valid_len = reader.offset();
            }
            Ok(Decoded::Incomplete) => match whole_len(&rest) {
                Some(wanted) if reader.fill(wanted)? => {}
                // The end of what was written, or a torn record at the end of the file.
                _ => break,
            },
            Err(_) => {
                reader.fill_to_end()?;
                match resync(&reader.rest(), 1) {
                    Some(next) => {
                        out.corrupt += 1;
                        reader.advance(next);
                    }
                    None => break,
                }
            }
        }
    }
    Ok(out)
}

/// How much of a segment file a scan reads at a time.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// The bytes a record that `decode` found incomplete needs in all, or `None` at the zeroes
/// that follow the last record written.
fn whole_len(src: &[u8]) -> Option<usize> {
    if src.len() < RECORD_PREFIX_BYTES {
        return Some(RECORD_PREFIX_BYTES);
    }
    let size = u32::from_be_bytes(src[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(src[4..8].try_into().expect("4 bytes"));
    (size != 0 || crc != 0).then_some(RECORD_PREFIX_BYTES + size)
}

/// A file read forward in chunks: `rest` is what has been read from `offset` on.
struct ChunkReader {
    file: File,
    /// The file's length when opened: a scanned segment is no longer written.
    len: u64,
    chunk: Bytes,
    /// The file offset of `chunk[0]`.
    base: u64,
    /// How far into `chunk` the reader is.
    at: usize,
}

impl ChunkReader {
    fn open(path: &Path) -> Result<ChunkReader> {
        let file = File::open(path)?;
        Ok(ChunkReader {
            len: file.metadata()?.len(),
            file,
            chunk: Bytes::new(),
            base: 0,
            at: 0,
        })
    }

    fn offset(&self) -> u64 {
        self.base + self.at as u64
    }

    fn rest(&self) -> Bytes {
        self.chunk.slice(self.at..)
    }

    fn advance(&mut self, n: usize) {
        self.at += n;
    }

    /// Reads on until `rest` holds at least `wanted` bytes (and at least a chunk, where the
    /// file has one); false when the file ends first.
    fn fill(&mut self, wanted: usize) -> Result<bool> {
        let kept = self.chunk.len() - self.at;
        if kept >= wanted {
            return Ok(true);
        }
        let file_at = self.base + self.chunk.len() as u64;
        let unread = self.len.saturating_sub(file_at) as usize;
        if kept + unread < wanted {
            // A torn record: its size runs past the end of the file (no buffer that size).
            return Ok(false);
        }
        let mut buf = vec![0; wanted.max(SCAN_CHUNK_BYTES).min(kept + unread)];
        buf[..kept].copy_from_slice(&self.chunk[self.at..]);
        let mut filled = kept;
        while filled < buf.len() {
            match self
                .file
                .read_at(&mut buf[filled..], file_at + (filled - kept) as u64)
            {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        self.base += self.at as u64;
        self.at = 0;
        self.chunk = Bytes::from(buf);
        Ok(filled >= wanted)
    }

    /// Reads the whole rest of the file.
    fn fill_to_end(&mut self) -> Result<()> {
        let unread = self.len.saturating_sub(self.base + self.chunk.len() as u64) as usize;
        self.fill(self.chunk.len() - self.at + unread)?;
        Ok(())
    }
}

/// The next offset at or after `from` where a whole valid record starts.
fn resync(data: &Bytes, from: usize) -> Option<usize> {
    (from..data.len())
        .find(|&at| matches!(record::decode(&data.slice(at..)), Ok(Decoded::Record(..))))
}
