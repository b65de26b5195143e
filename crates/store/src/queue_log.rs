//! The log of one durable queue: a directory of segments, written at the end, acked
//! anywhere, deleted from wherever every record is acked.
//!
//! Appends are buffered and reach the file on [`QueueLog::flush`]; [`QueueLog::sync`] makes
//! them durable. The group-commit thread calls flush+sync once for many appends.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};

use crate::error::Result;
use crate::record::{Record, RecordKind};
use std::collections::{HashMap, HashSet};

use crate::segment::{self, list_segments, read_acks, Position, ReadAhead, Segment, DELIVERED_BIT};

#[derive(Debug)]
pub struct RecoveredMessage {
    pub position: Position,
    pub seq: u64,
    pub body_size: u32,
    /// The record's length in the segment: the next record starts right after it.
    pub encoded_len: u32,
    /// Deliveries to consumers noted before the restart (one ack-file mark each): a
    /// message delivered at least once returns redelivered, and delivery limits count on.
    pub deliveries: u32,
    /// The record's priority level and expiry (unix ms, 0 = none).
    pub priority: u8,
    pub expiry_ms: u64,
    /// The record itself, for the first `keep_records` messages (copied out of the segment
    /// so the segment's buffer is freed); the others are read back when their turn comes.
    /// Boxed: recovering a million messages must not cost a million inline records.
    pub record: Option<Box<Record>>,
}

/// What a queue gets back from recovery: its live messages, oldest first.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every persistent, unacked message, in seq order.
    pub messages: Vec<RecoveredMessage>,
    /// Records that failed their checks and were skipped.
    pub corrupt_records: u32,
    /// Bytes cut off the end of a segment (a write torn by a crash).
    pub truncated_bytes: u64,
}

#[derive(Debug)]
pub struct QueueLog {
    dir: PathBuf,
    segment_size_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    /// Encoded records not yet written, all for the last segment.
    pending: BytesMut,
    pending_records: u32,
    /// Segments written since the last sync (the last one, and any rolled over).
    unsynced: Vec<u64>,
}

impl QueueLog {
    /// Opens (creating if needed) the log in `dir` and recovers it: torn tails are
    /// truncated, corrupt records skipped, transient and acked records dropped.
    pub fn open(dir: &Path, segment_size_bytes: u64) -> Result<(QueueLog, Recovered)> {
        Self::open_keeping(dir, segment_size_bytes, usize::MAX)
    }

    /// Like [`QueueLog::open`], returning whole records for the oldest `keep_records`
    /// messages only: recovering a deep queue must not load it into memory.
    pub fn open_keeping(
        dir: &Path,
        segment_size_bytes: u64,
        keep_records: usize,
    ) -> Result<(QueueLog, Recovered)> {
        let mut messages = Vec::new();
        let (log, mut recovered) =
            Self::open_visiting(dir, segment_size_bytes, keep_records, |m| messages.push(m))?;
        // Records are appended in seq order and segments are read in order.
        debug_assert!(messages.windows(2).all(|w| w[0].seq < w[1].seq));
        recovered.messages = messages;
        Ok((log, recovered))
    }

    /// Like [`QueueLog::open_keeping`], handing each live message to `visit` in log order
    /// instead of collecting them (`Recovered::messages` stays empty): a caller that keeps
    /// a few bytes per message never holds the ~60 a `RecoveredMessage` takes.
    pub fn open_visiting(
        dir: &Path,
        segment_size_bytes: u64,
        keep_records: usize,
        mut visit: impl FnMut(RecoveredMessage),
    ) -> Result<(QueueLog, Recovered)> {
        fs::create_dir_all(dir)?;
        let mut visited = 0usize;
        let mut recovered = Recovered::default();
        let mut segments = BTreeMap::new();
        for number in list_segments(dir)? {
            let mut seg = Segment::open(dir, number)?;
            let (acked, delivered) = read_marks(dir, number)?;
            let mut records = 0u32;
            let scan = segment::scan_with(dir, number, |offset, record| {
                records += 1;
                // Transient records were on disk only for paging; they do not outlive the broker.
                if acked.contains(&offset) || record.kind == RecordKind::Transient {
                    seg.acked += 1;
                    return;
                }
                let keep = visited < keep_records;
                visited += 1;
                visit(RecoveredMessage {
                    position: Position {
                        segment: number,
                        offset,
                    },
                    seq: record.seq,
                    body_size: record.body.len() as u32,
                    encoded_len: record.encoded_len() as u32,
                    deliveries: delivered.get(&offset).copied().unwrap_or(0),
                    priority: record.priority,
                    expiry_ms: record.expiry_ms,
                    record: keep.then(|| Box::new(detached(&record))),
                });
            })?;
            seg.records = records;
            recovered.corrupt_records += scan.corrupt;
            if scan.valid_len < seg.len_bytes {
                tracing::warn!(segment = number, cut = seg.len_bytes - scan.valid_len, dir = %dir.display(), "truncating a torn write");
                recovered.truncated_bytes += seg.len_bytes - scan.valid_len;
                seg.truncate(scan.valid_len)?;
            }
            if scan.corrupt > 0 {
                tracing::warn!(segment = number, records = scan.corrupt, dir = %dir.display(), "skipped corrupt records");
            }
            segments.insert(number, seg);
        }
        let mut log = QueueLog {
            dir: dir.to_path_buf(),
            segment_size_bytes,
            segments,
            pending: BytesMut::new(),
            pending_records: 0,
            unsynced: Vec::new(),
        };
        log.reclaim_all()?;
        let next = log.segments.keys().next_back().map_or(1, |n| n + 1);
        // Always write into a fresh segment after a restart: old ones stay read-only.
        log.segments.insert(next, Segment::create(dir, next)?);
        Ok((log, recovered))
    }

    fn last_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("the log always has a segment to write")
    }

    /// Buffers a record and returns where it will be. Rolls to a new segment when the
    /// current one would pass the size limit (a record bigger than the limit gets a
    /// segment of its own).
    pub fn append(&mut self, record: &Record) -> Result<Position> {
        let size = record.encoded_len() as u64;
        let last = self
            .segments
            .values()
            .next_back()
            .expect("a segment to write");
        let used = last.len_bytes + self.pending.len() as u64;
        if used > 0 && used + size > self.segment_size_bytes {
            self.flush()?;
            let number = self.last_mut().number + 1;
            self.segments
                .insert(number, Segment::create(&self.dir, number)?);
        }
        let last = self
            .segments
            .values()
            .next_back()
            .expect("a segment to write");
        let offset = last.len_bytes + self.pending.len() as u64;
        let position = Position {
            segment: last.number,
            offset: u32::try_from(offset).expect("segments stay under 4 GiB"),
        };
        record.encode(&mut self.pending);
        self.pending_records += 1;
        Ok(position)
    }

    /// Writes buffered records to the file (not yet durable).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = self.pending.split();
        let records = std::mem::take(&mut self.pending_records);
        let last = self.last_mut();
        last.append(&pending, records)?;
        let number = last.number;
        if self.unsynced.last() != Some(&number) {
            self.unsynced.push(number);
        }
        Ok(())
    }

    /// Flushes, then fdatasyncs every segment written since the last sync.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        for number in self.unsynced.drain(..) {
            if let Some(seg) = self.segments.get(&number) {
                seg.sync()?;
            }
        }
        Ok(())
    }

    /// Flushes and hands back the files written since the last sync, for the sync thread
    /// to make durable (see [`crate::Syncer`]).
    pub fn flush_for_sync(&mut self) -> Result<Vec<std::sync::Arc<std::fs::File>>> {
        self.flush()?;
        let segments = &self.segments;
        Ok(self
            .unsynced
            .drain(..)
            .filter_map(|number| segments.get(&number).map(Segment::file))
            .collect())
    }

    pub fn read(&mut self, position: Position) -> Result<Record> {
        self.segment_for_read(position)?.read(position.offset)
    }

    /// Reads records in file order through `ahead`: one `pread` per window of records.
    pub fn read_ahead(&mut self, position: Position, ahead: &mut ReadAhead) -> Result<Record> {
        self.segment_for_read(position)?
            .read_ahead(position.offset, ahead)
    }

    /// The encoded length of the record at `position`, read from its size field only.
    pub fn record_len(&mut self, position: Position) -> Result<u32> {
        self.segment_for_read(position)?.record_len(position.offset)
    }

    /// [`QueueLog::record_len`] through `ahead` (see [`QueueLog::read_ahead`]).
    pub fn record_len_ahead(&mut self, position: Position, ahead: &mut ReadAhead) -> Result<u32> {
        self.segment_for_read(position)?
            .record_len_ahead(position.offset, ahead)
    }

    /// The segment holding `position`, with what was appended to it written out first.
    fn segment_for_read(&mut self, position: Position) -> Result<&Segment> {
        if Some(&position.segment) == self.segments.keys().next_back() {
            self.flush()?;
        }
        self.segments.get(&position.segment).ok_or_else(|| {
            crate::error::StoreError::Corrupt(format!("segment {} is gone", position.segment))
        })
    }

    /// Marks a record done; deletes its segment when that was the last live record.
    pub fn ack(&mut self, position: Position) -> Result<()> {
        let is_last = Some(&position.segment) == self.segments.keys().next_back();
        let Some(seg) = self.segments.get_mut(&position.segment) else {
            return Ok(());
        };
        seg.ack(position.offset);
        if !is_last && seg.is_fully_acked() {
            if let Some(seg) = self.segments.remove(&position.segment) {
                seg.remove(&self.dir)?;
            }
        }
        Ok(())
    }

    /// Notes that a record was handed to a consumer (see [`RecoveredMessage::deliveries`]);
    /// each call adds a mark, so the count of deliveries survives a restart.
    pub fn mark_delivered(&mut self, position: Position) {
        if let Some(seg) = self.segments.get_mut(&position.segment) {
            seg.mark_delivered(position.offset);
        }
    }

    /// Writes the acks and delivery marks buffered since the last call.
    pub fn flush_acks(&mut self) -> Result<()> {
        for seg in self.segments.values_mut() {
            seg.flush_acks(&self.dir)?;
        }
        Ok(())
    }

    fn reclaim_all(&mut self) -> Result<()> {
        let done: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.is_fully_acked())
            .map(|s| s.number)
            .collect();
        for number in done {
            if let Some(seg) = self.segments.remove(&number) {
                seg.remove(&self.dir)?;
            }
        }
        Ok(())
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Deletes the whole log (the queue was deleted).
    pub fn destroy(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        fs::remove_dir_all(dir)?;
        Ok(())
    }
}

/// The acked offsets, and how many delivery marks each delivered offset has, recorded in
/// a segment's ack file.
fn read_marks(dir: &Path, number: u64) -> Result<(HashSet<u32>, HashMap<u32, u32>)> {
    let mut acked = HashSet::new();
    let mut delivered = HashMap::new();
    for entry in read_acks(dir, number)? {
        if entry & DELIVERED_BIT == 0 {
            acked.insert(entry);
        } else {
            *delivered.entry(entry & !DELIVERED_BIT).or_insert(0) += 1;
        }
    }
    Ok((acked, delivered))
}

/// A copy of a record that does not keep the segment buffer it was read from alive.
fn detached(record: &Record) -> Record {
    Record {
        kind: record.kind,
        priority: record.priority,
        seq: record.seq,
        expiry_ms: record.expiry_ms,
        exchange: Bytes::copy_from_slice(&record.exchange),
        routing_key: Bytes::copy_from_slice(&record.routing_key),
        properties: Bytes::copy_from_slice(&record.properties),
        body: Bytes::copy_from_slice(&record.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(seq: u64, kind: RecordKind, body_len: usize) -> Record {
        Record {
            kind,
            priority: 0,
            seq,
            expiry_ms: 0,
            exchange: Bytes::new(),
            routing_key: Bytes::from_static(b"q"),
            properties: Bytes::new(),
            body: Bytes::from(vec![seq as u8; body_len]),
        }
    }

    /// Appends persistent records with these body sizes (seq = index) and syncs them.
    fn write_persistent(dir: &Path, segment_size_bytes: u64, sizes: &[usize]) -> Vec<Position> {
        let (mut log, _) = QueueLog::open(dir, segment_size_bytes).unwrap();
        let positions = append_all(&mut log, RecordKind::Persistent, sizes);
        log.sync().unwrap();
        positions
    }

    /// Appends one record per size, numbered from 0, and returns where they went.
    fn append_all(log: &mut QueueLog, kind: RecordKind, sizes: &[usize]) -> Vec<Position> {
        sizes
            .iter()
            .enumerate()
            .map(|(seq, &len)| log.append(&record(seq as u64, kind, len)).unwrap())
            .collect()
    }

    fn seqs(recovered: &Recovered) -> Vec<u64> {
        recovered.messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn persistent_unacked_messages_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        let mut positions = Vec::new();
        for seq in 0..10 {
            let kind = if seq % 3 == 0 {
                RecordKind::Transient
            } else {
                RecordKind::Persistent
            };
            positions.push(log.append(&record(seq, kind, 10)).unwrap());
        }
        log.sync().unwrap();
        log.ack(positions[1]).unwrap();
        log.mark_delivered(positions[2]);
        log.flush_acks().unwrap();
        assert_eq!(
            log.read(positions[4]).unwrap(),
            record(4, RecordKind::Persistent, 10)
        );
        drop(log);
        let (_, recovered) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(seqs(&recovered), vec![2, 4, 5, 7, 8]);
        let delivered: Vec<u64> = recovered
            .messages
            .iter()
            .filter(|m| m.deliveries > 0)
            .map(|m| m.seq)
            .collect();
        assert_eq!(delivered, vec![2], "delivery marks survive the restart");
        let delivered: Vec<u64> = recovered
            .messages
            .iter()
            .filter(|m| m.deliveries > 0)
            .map(|m| m.seq)
            .collect();
        assert_eq!(delivered, vec![2]);
    }

    #[test]
    fn recovery_keeps_records_only_for_the_oldest_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        for seq in 0..10 {
            log.append(&record(seq, RecordKind::Persistent, 8)).unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let (mut log, recovered) = QueueLog::open_keeping(dir.path(), 1 << 20, 3).unwrap();
        let kept: Vec<bool> = recovered
            .messages
            .iter()
            .map(|m| m.record.is_some())
            .collect();
        assert_eq!(
            kept,
            [true, true, true, false, false, false, false, false, false, false]
        );
        let later = &recovered.messages[7];
        assert_eq!(later.body_size, 8);
        assert_eq!(
            log.read(later.position).unwrap(),
            record(7, RecordKind::Persistent, 8)
        );
    }

    #[test]
    fn visiting_recovery_hands_out_live_messages_in_order_without_collecting() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        let positions: Vec<Position> = (0..5)
            .map(|seq| log.append(&record(seq, RecordKind::Persistent, 8)).unwrap())
            .collect();
        log.sync().unwrap();
        log.ack(positions[1]).unwrap();
        log.flush_acks().unwrap();
        drop(log);
        let mut seen = Vec::new();
        let (_, recovered) = QueueLog::open_visiting(dir.path(), 1 << 20, 1, |m| {
            seen.push((m.seq, m.position, m.record.is_some()))
        })
        .unwrap();
        assert!(recovered.messages.is_empty());
        let expected = [(0, true), (2, false), (3, false), (4, false)]
            .map(|(seq, kept)| (seq, positions[seq as usize], kept));
        assert_eq!(seen, expected);
    }

    #[test]
    fn fully_acked_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 200).unwrap();
        let positions: Vec<Position> = (0..20)
            .map(|seq| {
                log.append(&record(seq, RecordKind::Persistent, 50))
                    .unwrap()
            })
            .collect();
        log.sync().unwrap();
        let segments_before = log.segment_count();
        assert!(segments_before > 3, "small segments roll over");
        for position in &positions[..positions.len() - 1] {
            log.ack(*position).unwrap();
        }
        log.flush_acks().unwrap();
        assert_eq!(
            log.segment_count(),
            1,
            "only the segment being written stays"
        );
        drop(log);
        let (_, recovered) = QueueLog::open(dir.path(), 200).unwrap();
        assert_eq!(seqs(&recovered), vec![19]);
    }

    #[test]
    fn torn_tail_is_truncated_at_every_cut_point() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        for seq in 0..3 {
            log.append(&record(seq, RecordKind::Persistent, 30))
                .unwrap();
        }
        log.sync().unwrap();
        drop(log);
        let path = segment::segment_path(dir.path(), 1);
        let full = fs::read(&path).unwrap();
        let last_len = record(2, RecordKind::Persistent, 30).encoded_len();
        for cut in (full.len() - last_len)..full.len() {
            let copy = tempfile::tempdir().unwrap();
            fs::write(segment::segment_path(copy.path(), 1), &full[..cut]).unwrap();
            let (_, recovered) = QueueLog::open(copy.path(), 1 << 20).unwrap();
            assert_eq!(seqs(&recovered), vec![0, 1], "cut at {cut}");
            assert_eq!(
                recovered.truncated_bytes as usize,
                cut - (full.len() - last_len)
            );
            assert_eq!(
                fs::metadata(segment::segment_path(copy.path(), 1))
                    .unwrap()
                    .len() as usize,
                full.len() - last_len
            );
        }
    }

    #[test]
    fn corrupt_middle_record_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let positions = write_persistent(dir.path(), 1 << 20, &[40; 5]);
        let path = segment::segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        bytes[positions[2].offset as usize + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (_, recovered) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(seqs(&recovered), vec![0, 1, 3, 4]);
        assert_eq!(recovered.corrupt_records, 1);
    }

    /// Recovery reads segments in chunks: records that straddle a chunk boundary, one larger
    /// than a chunk, a corrupt record past the first chunk and a torn tail all come out as a
    /// whole-file read would give them.
    #[test]
    fn recovery_reads_across_chunks_as_a_whole_file_read_would() {
        let dir = tempfile::tempdir().unwrap();
        // 3,000 records of 1,000 to 1,999 bytes (about 4.5 MiB), one of 2.5 MiB among them.
        let sizes: Vec<usize> = (0..3_000u64)
            .map(|seq| match seq {
                500 => 5 << 19,
                _ => 1_000 + (seq as usize * 7_919) % 1_000,
            })
            .collect();
        let positions = write_persistent(dir.path(), 64 << 20, &sizes);
        let path = segment::segment_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        assert!(positions[2_000].offset > 4 << 20);
        bytes[positions[2_000].offset as usize + 30] ^= 0xff;
        // Cut the last record short.
        bytes.truncate(positions[2_999].offset as usize + 100);
        fs::write(&path, &bytes).unwrap();
        let (_, recovered) = QueueLog::open(dir.path(), 64 << 20).unwrap();
        let expected: Vec<u64> = (0..2_999).filter(|&seq| seq != 2_000).collect();
        assert_eq!(seqs(&recovered), expected);
        assert_eq!(recovered.corrupt_records, 1);
        assert_eq!(recovered.truncated_bytes, 100);
        for message in &recovered.messages {
            assert_eq!(message.position, positions[message.seq as usize]);
            assert_eq!(message.body_size as usize, sizes[message.seq as usize]);
        }
    }

    #[test]
    fn reads_through_read_ahead_match_single_reads_across_windows_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        // Small and mid-sized records across two 4 MiB segments, one larger than a window.
        let sizes: Vec<usize> = (0..4_000u64)
            .map(|seq| match seq {
                700 => segment::READ_AHEAD_BYTES + 4_321,
                _ => 16 + (seq as usize * 7_919) % 2_000,
            })
            .collect();
        let (mut log, _) = QueueLog::open(dir.path(), 4 << 20).unwrap();
        let positions = append_all(&mut log, RecordKind::Transient, &sizes);
        assert!(positions.last().unwrap().segment > positions[0].segment);
        let mut ahead = ReadAhead::default();
        for (seq, &position) in positions.iter().enumerate() {
            // Every third record is only stepped over, as an expired paged message is.
            if seq % 3 == 1 {
                let len = log.record_len_ahead(position, &mut ahead).unwrap();
                assert_eq!(len, log.record_len(position).unwrap(), "record {seq}");
                continue;
            }
            let read = log.read_ahead(position, &mut ahead).unwrap();
            assert_eq!(read, log.read(position).unwrap(), "record {seq}");
            assert_eq!((read.seq, read.body.len()), (seq as u64, sizes[seq]));
        }
        // Appended after the window was read: a read past its end reads again.
        let later = log
            .append(&record(4_000, RecordKind::Transient, 10))
            .unwrap();
        assert_eq!(log.read_ahead(later, &mut ahead).unwrap().seq, 4_000);
    }

    #[test]
    fn flush_for_sync_hands_out_each_written_segment_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 100).unwrap();
        for seq in 0..4 {
            log.append(&record(seq, RecordKind::Persistent, 40))
                .unwrap();
        }
        let files = log.flush_for_sync().unwrap();
        assert_eq!(
            files.len(),
            log.segment_count(),
            "every segment was written"
        );
        assert!(log.flush_for_sync().unwrap().is_empty());
    }

    #[test]
    fn writes_after_restart_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&record(0, RecordKind::Persistent, 5)).unwrap();
        log.sync().unwrap();
        drop(log);
        let (mut log, _) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        let position = log.append(&record(1, RecordKind::Persistent, 5)).unwrap();
        assert_eq!(position.segment, 2);
        log.sync().unwrap();
        drop(log);
        let (_, recovered) = QueueLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(seqs(&recovered), vec![0, 1]);
    }
}
