//! ferrymq's storage engine: append-only segment logs of CRC-checked records.
//!
//! # Layout
//! - [`commit`]: group commit: one thread fdatasyncs the files many queues wrote, then completes.
//! - [`definitions`]: the log of topology commands, with snapshot compaction.
//! - [`dedup_log`]: the append-only file behind a deduplication exchange's cache.
//! - [`data_dir`]: the data directory and its lock.
//! - [`record`]: the message record format (drawn above its encoder) and its decoder.
//! - [`segment`]: segment and ack files; scanning a segment with torn-tail and corruption handling.
//! - [`queue_log`]: one queue's log: append, flush, sync, read, ack, reclaim, recovery.
//! - [`error`]: the error type, [`StoreError`].
//!
//! Ownership: a queue task owns its [`QueueLog`] (files, positions, acks) and writes to it
//! directly; the [`Syncer`] thread only makes files durable, batched across queues.

pub mod commit;
pub mod data_dir;
pub mod dedup_log;
pub mod definitions;
pub mod error;
pub mod queue_log;
pub mod record;
pub mod segment;

pub use commit::{Syncer, SYNC_SOON_DELAY_MS};
pub use data_dir::DataDir;
pub use dedup_log::{DedupEntry, DedupLog};
pub use definitions::DefinitionsLog;
pub use error::{Result, StoreError};
pub use queue_log::{QueueLog, Recovered, RecoveredMessage};
pub use record::{Record, RecordKind};
pub use segment::{Position, ReadAhead};
