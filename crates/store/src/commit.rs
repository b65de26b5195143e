//! Group commit: one thread that makes files durable for every queue at once.
//!
//! Each queue task owns its log and writes to it itself (a `write` to the page cache costs
//! microseconds); what it must not do is wait for an fdatasync, and what the disk must not
//! see is one fdatasync per message. So queues hand the files they wrote to this thread
//! with a completion. The thread takes every request waiting (up to
//! [`BATCH_REQUESTS_MAX`]), fdatasyncs each distinct file once, and then runs the
//! completions: a thousand publishers arriving together share one fdatasync, and a
//! publisher confirm hanging on a completion is sent only after its message is on disk.
//!
//! ```text
//!   queue task: append → write()  ──SyncRequest(files, completion)──▶ sync thread
//!                                                                       fdatasync each file once
//!   confirms ◀──────────────── completion() ───────────────────────────┘
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Requests applied per batch before the thread syncs and completes them.
pub const BATCH_REQUESTS_MAX: usize = 4096;

pub type Completion = Box<dyn FnOnce(std::io::Result<()>) + Send>;

pub struct SyncRequest {
    pub files: Vec<Arc<File>>,
    pub done: Completion,
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct SyncStats {
    pub fdatasyncs: AtomicU64,
    pub batches: AtomicU64,
    pub requests: AtomicU64,
}

/// The handle queue tasks use; clones share the one thread, which ends when the last
/// handle is dropped.
#[derive(Clone, Debug)]
pub struct Syncer {
    // Unbounded on purpose: a request is a few pointers, senders are queue tasks that must
    // never block, and every request is bounded by the queue's own unconfirmed window.
    tx: Sender<SyncRequest>,
    pub stats: Arc<SyncStats>,
}

impl Syncer {
    pub fn start() -> (Syncer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SyncStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("ferrymq-sync".into())
            .spawn(move || run(rx, &thread_stats))
            .expect("spawning the sync thread");
        (Syncer { tx, stats }, thread)
    }

    /// Asks for `files` to be made durable; `done` runs on the sync thread afterwards.
    pub fn sync(&self, files: Vec<Arc<File>>, done: Completion) {
        if let Err(mpsc::SendError(request)) = self.tx.send(SyncRequest { files, done }) {
            (request.done)(Err(std::io::Error::other("sync thread has stopped")));
        }
    }
}

fn run(rx: Receiver<SyncRequest>, stats: &SyncStats) {
    let mut batch = Vec::with_capacity(BATCH_REQUESTS_MAX);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        sync_batch(&mut batch, stats);
    }
}

fn sync_batch(batch: &mut Vec<SyncRequest>, stats: &SyncStats) {
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    // One fdatasync per distinct file, whoever asked and however often.
    let mut outcome: HashMap<*const File, Option<String>> = HashMap::new();
    for request in batch.iter() {
        for file in &request.files {
            outcome.entry(Arc::as_ptr(file)).or_insert_with(|| {
                stats.fdatasyncs.fetch_add(1, Ordering::Relaxed);
                file.sync_data().err().map(|e| e.to_string())
            });
        }
    }
    for request in batch.drain(..) {
        let failure = request
            .files
            .iter()
            .find_map(|f| outcome.get(&Arc::as_ptr(f)).cloned().flatten());
        match failure {
            None => (request.done)(Ok(())),
            Some(text) => {
                tracing::error!(error = %text, "fdatasync failed");
                (request.done)(Err(std::io::Error::other(text)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn requests_waiting_together_share_one_fdatasync_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<Arc<File>> = (0..2)
            .map(|i| Arc::new(File::create(dir.path().join(format!("f{i}"))).unwrap()))
            .collect();
        let (syncer, thread) = Syncer::start();
        // Hold the thread inside a first request so the next 200 queue up behind it.
        let (release, gate) = mpsc::channel::<()>();
        let (entered_tx, entered) = mpsc::channel::<()>();
        syncer.sync(
            Vec::new(),
            Box::new(move |_| {
                entered_tx.send(()).unwrap();
                gate.recv().unwrap()
            }),
        );
        // Only once the thread is inside the gate's batch may the others queue up.
        entered.recv().unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..200 {
            (&*files[i % 2]).write_all(b"x").unwrap();
            let tx = tx.clone();
            syncer.sync(
                vec![Arc::clone(&files[i % 2])],
                Box::new(move |r| tx.send(r.is_ok()).unwrap()),
            );
        }
        release.send(()).unwrap();
        for _ in 0..200 {
            assert!(rx.recv().unwrap());
        }
        assert_eq!(
            syncer.stats.fdatasyncs.load(Ordering::Relaxed),
            2,
            "one per file for 200 requests"
        );
        drop(syncer);
        thread.join().unwrap();
    }

    #[test]
    fn completion_runs_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let (syncer, thread) = Syncer::start();
        let (tx, rx) = mpsc::channel();
        let stats = Arc::clone(&syncer.stats);
        syncer.sync(
            vec![file],
            Box::new(move |r| {
                tx.send((r.is_ok(), stats.fdatasyncs.load(Ordering::Relaxed)))
                    .unwrap()
            }),
        );
        assert_eq!(rx.recv().unwrap(), (true, 1));
        drop(syncer);
        thread.join().unwrap();
    }
}
