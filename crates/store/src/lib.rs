//! ferrymq's storage engine: append-only segment logs of CRC-checked records.
//!
//! # Layout
//! - [`commit`]: the storage thread: owns the logs, group commit (one fdatasync per batch).
//! - [`definitions`]: the log of topology commands, with snapshot compaction.
//! - [`data_dir`]: the data directory and its lock.
//! - [`record`]: the message record format (drawn above its encoder) and its decoder.
//! - [`segment`]: segment and ack files; scanning a segment with torn-tail and corruption handling.
//! - [`queue_log`]: one queue's log: append, flush, sync, read, ack, reclaim, recovery.
//! - [`error`]: the error type, [`StoreError`].
//!
//! The broker does not use this crate yet: wiring it into queues (group commit on a storage
//! thread, paging, durable definitions) is the next step of the storage work.

pub mod commit;
pub mod data_dir;
pub mod definitions;
pub mod error;
pub mod queue_log;
pub mod record;
pub mod segment;

pub use commit::{Request, Storage};
pub use data_dir::DataDir;
pub use definitions::DefinitionsLog;
pub use error::{Result, StoreError};
pub use queue_log::{QueueLog, Recovered};
pub use record::{Record, RecordKind};
pub use segment::Position;
