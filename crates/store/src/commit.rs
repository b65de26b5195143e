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
//! Writes nobody waits for (a declared queue's definition, persistent messages published
//! without confirms) ask with [`Syncer::sync_soon`] instead: the thread syncs them with the
//! next batch that has a completion, or [`SYNC_SOON_DELAY_MS`] after they were asked for,
//! whichever comes first. A client declaring 10,000 queues one by one in a second then
//! costs about a hundred fdatasyncs instead of 10,000, and anything confirmed after such a
//! write still finds it on disk. Such files wait in a shared set; only the first one of a round wakes
//! the thread (to start the delay), so a declare costs the sync thread no wake-up either.
//!
//! ```text
//!   queue task: append → write()  ──SyncRequest(files, completion)──▶ sync thread
//!   declare:    append → write()  ──▶ soon set (first one: Soon) ──▶   fdatasync each file once
//!   confirms ◀──────────────── completion() ───────────────────────────┘
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Requests applied per batch before the thread syncs and completes them.
pub const BATCH_REQUESTS_MAX: usize = 4096;
/// How long a [`Syncer::sync_soon`] write may wait for a batch to share before the thread
/// syncs it on its own: the window in which a power loss (not a crash of the broker: the
/// data is already written to the page cache) can lose it.
pub const SYNC_SOON_DELAY_MS: u64 = 10;

pub type Completion = Box<dyn FnOnce(std::io::Result<()>) + Send>;

pub struct SyncRequest {
    pub files: Vec<Arc<File>>,
    pub done: Completion,
}

enum Request {
    Sync(SyncRequest),
    /// The soon set was empty and is not: start the delay (see [`Syncer::sync_soon`]).
    Soon,
}

/// Files asked for with [`Syncer::sync_soon`] and not yet synced, each once (keyed by the
/// `File`'s address).
type SoonFiles = Mutex<HashMap<usize, Arc<File>>>;

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
    tx: Sender<Request>,
    soon: Arc<SoonFiles>,
    pub stats: Arc<SyncStats>,
}

impl Syncer {
    pub fn start() -> (Syncer, JoinHandle<()>) {
        Self::start_with_soon_delay(Duration::from_millis(SYNC_SOON_DELAY_MS))
    }

    /// [`Syncer::start`] with another delay for [`Syncer::sync_soon`] (tests use a long one).
    pub fn start_with_soon_delay(soon_delay: Duration) -> (Syncer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(SyncStats::default());
        let soon = Arc::new(SoonFiles::default());
        let thread_stats = Arc::clone(&stats);
        let thread_soon = Arc::clone(&soon);
        let thread = std::thread::Builder::new()
            .name("ferrymq-sync".into())
            .spawn(move || run(rx, &thread_soon, &thread_stats, soon_delay))
            .expect("spawning the sync thread");
        (Syncer { tx, soon, stats }, thread)
    }

    /// Asks for `files` to be made durable; `done` runs on the sync thread afterwards.
    pub fn sync(&self, files: Vec<Arc<File>>, done: Completion) {
        if let Err(mpsc::SendError(Request::Sync(request))) =
            self.tx.send(Request::Sync(SyncRequest { files, done }))
        {
            (request.done)(Err(std::io::Error::other("sync thread has stopped")));
        }
    }

    /// Asks for `files` to be made durable within [`SYNC_SOON_DELAY_MS`], and before any
    /// completion of a [`Syncer::sync`] asked for later runs. Nobody is told when.
    pub fn sync_soon(&self, files: Vec<Arc<File>>) {
        let mut soon = self.soon.lock().unwrap_or_else(|e| e.into_inner());
        let first = soon.is_empty();
        for file in files {
            soon.insert(Arc::as_ptr(&file) as usize, file);
        }
        // Later callers find the set non-empty: the thread already counts down for them.
        if first && !soon.is_empty() {
            // A stopped thread means the broker is going down; the files were written.
            let _ = self.tx.send(Request::Soon);
        }
    }
}

fn run(rx: Receiver<Request>, soon: &SoonFiles, stats: &SyncStats, soon_delay: Duration) {
    let mut batch = Vec::with_capacity(BATCH_REQUESTS_MAX);
    // When the files in `soon` must be on disk.
    let mut due: Option<Instant> = None;
    loop {
        let first = match due {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        match first {
            Ok(request) => take(request, &mut batch, &mut due, soon_delay),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        while batch.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(request) => take(request, &mut batch, &mut due, soon_delay),
                Err(_) => break,
            }
        }
        if !batch.is_empty() || due.is_some_and(|due| due <= Instant::now()) {
            sync_batch(&mut batch, soon, stats);
            due = None;
        }
    }
    // Going down: what was asked for soon is synced now.
    sync_batch(&mut batch, soon, stats);
}

fn take(
    request: Request,
    batch: &mut Vec<SyncRequest>,
    due: &mut Option<Instant>,
    soon_delay: Duration,
) {
    match request {
        Request::Sync(request) => batch.push(request),
        Request::Soon => {
            due.get_or_insert_with(|| Instant::now() + soon_delay);
        }
    }
}

fn sync_batch(batch: &mut Vec<SyncRequest>, soon: &SoonFiles, stats: &SyncStats) {
    // Taken after the batch's requests were received: a file asked for soon before any of
    // them is in here, and is synced before their completions run.
    let soon: Vec<Arc<File>> = std::mem::take(&mut *soon.lock().unwrap_or_else(|e| e.into_inner()))
        .into_values()
        .collect();
    if batch.is_empty() && soon.is_empty() {
        return;
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    stats
        .requests
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    // One fdatasync per distinct file, whoever asked and however often.
    let mut outcome: HashMap<*const File, Option<String>> = HashMap::new();
    let asked = batch.iter().flat_map(|request| request.files.iter());
    for file in soon.iter().chain(asked) {
        outcome.entry(Arc::as_ptr(file)).or_insert_with(|| {
            stats.fdatasyncs.fetch_add(1, Ordering::Relaxed);
            file.sync_data().err().map(|e| e.to_string())
        });
    }
    for file in &soon {
        if let Some(Some(text)) = outcome.get(&Arc::as_ptr(file)) {
            tracing::error!(error = %text, "fdatasync failed");
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
    fn soon_writes_are_synced_once_before_the_next_completion() {
        let dir = tempfile::tempdir().unwrap();
        let soon = Arc::new(File::create(dir.path().join("definitions")).unwrap());
        let asked = Arc::new(File::create(dir.path().join("queue")).unwrap());
        // A delay no test outlasts: only the completion can trigger the sync.
        let (syncer, thread) = Syncer::start_with_soon_delay(Duration::from_secs(3600));
        for _ in 0..100 {
            (&*soon).write_all(b"x").unwrap();
            syncer.sync_soon(vec![Arc::clone(&soon)]);
        }
        assert_eq!(
            sync_and_count(&syncer, asked),
            (true, 2),
            "the soon file once, then the asked one"
        );
        drop(syncer);
        thread.join().unwrap();
    }

    #[test]
    fn soon_writes_are_synced_by_themselves_after_the_delay() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let (syncer, thread) = Syncer::start_with_soon_delay(Duration::from_millis(1));
        syncer.sync_soon(vec![file]);
        // Liveness, not timing: the sync comes with no other request to carry it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while syncer.stats.fdatasyncs.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the soon sync never came");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(syncer.stats.fdatasyncs.load(Ordering::Relaxed), 1);
        drop(syncer);
        thread.join().unwrap();
    }

    #[test]
    fn soon_writes_are_synced_when_the_thread_stops() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let (syncer, thread) = Syncer::start_with_soon_delay(Duration::from_secs(3600));
        syncer.sync_soon(vec![file]);
        let stats = Arc::clone(&syncer.stats);
        drop(syncer);
        thread.join().unwrap();
        assert_eq!(stats.fdatasyncs.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn completion_runs_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("f")).unwrap());
        let (syncer, thread) = Syncer::start();
        assert_eq!(sync_and_count(&syncer, file), (true, 1));
        drop(syncer);
        thread.join().unwrap();
    }

    /// Asks for `file` to be synced; returns the outcome and the fdatasyncs made by the
    /// time the completion ran.
    fn sync_and_count(syncer: &Syncer, file: Arc<File>) -> (bool, u64) {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::clone(&syncer.stats);
        syncer.sync(
            vec![file],
            Box::new(move |r| {
                tx.send((r.is_ok(), stats.fdatasyncs.load(Ordering::Relaxed)))
                    .unwrap()
            }),
        );
        rx.recv().unwrap()
    }
}
