//! A million held messages cost disk, not memory: the broker's RSS grows by a few dozen
//! bytes per held message, and after a crash and restart they all arrive in due order.
//! The broker runs as a child process (as in tests/memory.rs) so that its RSS is its own.
//! In a file of its own: the test loads both cores for a minute, which would disturb the
//! timing assertions of tests/delayed.rs if they ran alongside.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

const HELD_MESSAGES: u64 = 1_000_000;
const PUBLISHERS: u64 = 4;
/// Confirms awaited together per publisher.
const CONFIRM_BATCH: usize = 5_000;
/// The earliest due time, counted from the start of publishing: publishing must be over
/// (and the broker killed) before anything is due.
const FIRST_DUE_AFTER: Duration = Duration::from_secs(80);
/// Due times are spread over this span, in an order unrelated to the publish order.
const DUE_SPREAD_MS: u64 = 10_000;
/// How far a delivery may run behind the latest due time seen: due times are computed
/// here, the broker adds the delay to its own clock a moment later (pipelining), so due
/// order is checked up to this slack. Delivering in publish order would miss by seconds.
const DUE_SLACK_MS: u64 = 2_000;
/// RSS growth allowed for the held messages: 16 bytes of heap entry each (32 with the
/// heap's spare capacity) is 16-32 MiB; the rest is allocator and buffer slack.
const RSS_GROWTH_MAX_BYTES: u64 = 64 << 20;
/// RSS growth allowed while recovering them: the heap entries (16 B each, doubled while the
/// vector grows) and a 1 MiB read chunk. Recovery that kept ~60 B per message went to
/// ~150 MiB, and one that read each 32 MiB segment whole to ~100 MiB.
const RECOVERY_GROWTH_MAX_BYTES: u64 = 64 << 20;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_broker(data_dir: &std::path::Path, port: u16) -> Broker {
    let child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["--amqp-listen", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "warn", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("broker starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Broker(child)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn rss_bytes(broker: &Broker) -> u64 {
    rss_of(broker.0.id()).expect("the broker's /proc status")
}

/// Samples a process's RSS every 20 ms until dropped; reports the peak seen.
struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(rss) = rss_of(pid) {
                    peak = peak.max(rss);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        PeakRss {
            stop,
            thread: Some(thread),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn connect(port: u16) -> Connection {
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap()
}

async fn ready(conn: &Connection) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = ch
        .queue_declare("q".into(), passive, FieldTable::default())
        .await
        .unwrap()
        .message_count();
    let _ = ch.close(200, "".into()).await;
    count
}

/// The due time of the i-th message: a permutation of the publish order (7919 is prime to
/// 10^6) spread over `DUE_SPREAD_MS` after `first_due`.
fn due_of(i: u64, first_due: u64) -> u64 {
    let rank = (i * 7919) % HELD_MESSAGES;
    first_due + rank * DUE_SPREAD_MS / HELD_MESSAGES
}

async fn publish_share(port: u16, publisher: u64, first_due: u64) {
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(CONFIRM_BATCH);
    for i in (publisher..HELD_MESSAGES).step_by(PUBLISHERS as usize) {
        let due = due_of(i, first_due);
        let delay = due.saturating_sub(unix_ms()) as i64;
        let mut headers = FieldTable::default();
        headers.insert("x-delay".into(), AMQPValue::LongLongInt(delay));
        // Transient: held on disk all the same (the plugin holds every message), and the
        // queue need not write them again when they are routed, which keeps the test short.
        let properties = BasicProperties::default().with_headers(headers);
        let confirm = ch
            .basic_publish(
                "later".into(),
                "".into(),
                BasicPublishOptions::default(),
                &due.to_be_bytes(),
                properties,
            )
            .await
            .unwrap();
        confirms.push(confirm);
        if confirms.len() == CONFIRM_BATCH {
            for confirm in confirms.drain(..) {
                assert!(confirm.await.unwrap().is_ack());
            }
        }
    }
    for confirm in confirms.drain(..) {
        assert!(confirm.await.unwrap().is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_held_messages_cost_disk_not_memory_and_survive_a_crash_in_due_order() {
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = spawn_broker(data_dir.path(), port);
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-delayed-type".into(),
        AMQPValue::LongString(LongString::from("fanout")),
    );
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "later".into(),
        ExchangeKind::Custom("x-delayed-message".into()),
        durable_x,
        arguments,
    )
    .await
    .unwrap();
    let durable_q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("q".into(), durable_q, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "q".into(),
        "later".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let rss_before = rss_bytes(&broker);

    let started = Instant::now();
    let first_due = unix_ms() + FIRST_DUE_AFTER.as_millis() as u64;
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publish_share(port, p, first_due)))
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let published_in = started.elapsed();
    let rss_held = rss_bytes(&broker);
    let growth = rss_held.saturating_sub(rss_before);
    eprintln!(
        "{HELD_MESSAGES} messages held: published in {published_in:?}; broker RSS {} MiB before, \
         {} MiB after (+{:.1} B per held message)",
        rss_before >> 20,
        rss_held >> 20,
        growth as f64 / HELD_MESSAGES as f64
    );
    assert!(
        unix_ms() < first_due,
        "publishing took {published_in:?}, past the first due time: the test cannot tell \
         held messages from routed ones"
    );
    assert_eq!(ready(&conn).await, 0, "nothing routed before its time");
    assert!(
        growth < RSS_GROWTH_MAX_BYTES,
        "RSS grew {} MiB for {HELD_MESSAGES} held messages",
        growth >> 20
    );

    // Crash: every confirmed message was fdatasynced, so SIGKILL loses none.
    drop(conn);
    drop(broker);
    let restarted = Instant::now();
    let port = free_port();
    let broker = spawn_broker(data_dir.path(), port);
    // From start to the first delivery: recovery, with every message overdue or nearly.
    let mut recovery_rss = Some(PeakRss::watch(broker.0.id()));
    eprintln!("restarted and listening in {:?}", restarted.elapsed());
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    let mut deliveries = ch
        .basic_consume(
            "q".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = 0u64;
    let mut latest_due = 0u64;
    let mut recovery_peak = 0;
    let wait = FIRST_DUE_AFTER + Duration::from_millis(DUE_SPREAD_MS) + Duration::from_secs(60);
    while received < HELD_MESSAGES {
        let delivery = tokio::time::timeout(wait, deliveries.next())
            .await
            .unwrap_or_else(|_| panic!("only {received} messages arrived"))
            .expect("consumer open")
            .expect("delivery");
        let due = u64::from_be_bytes(delivery.data[..8].try_into().unwrap());
        assert!(
            due + DUE_SLACK_MS >= latest_due,
            "message {received} due at {due} arrived after one due at {latest_due}"
        );
        latest_due = latest_due.max(due);
        if let Some(watch) = recovery_rss.take() {
            recovery_peak = watch.peak();
        }
        received += 1;
    }
    let late_by = unix_ms().saturating_sub(first_due + DUE_SPREAD_MS);
    eprintln!(
        "all {received} delivered in due order after the restart, the last {late_by} ms after \
         the last due time; peak RSS from restart to the first delivery {} MiB",
        recovery_peak >> 20
    );
    assert!(
        recovery_peak.saturating_sub(rss_before) < RECOVERY_GROWTH_MAX_BYTES,
        "recovering {HELD_MESSAGES} held messages took RSS to {} MiB",
        recovery_peak >> 20
    );
    assert_eq!(ready(&conn).await, 0);
}
