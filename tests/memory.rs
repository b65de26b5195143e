//! Bounded memory: a deep backlog lives on disk, so the broker's resident memory stays
//! small however many messages wait. The broker runs as a child process so that its RSS
//! (`VmRSS` in /proc/<pid>/status) is measured alone.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const BACKLOG_MESSAGES: usize = 1_000_000;
const BODY_BYTES: usize = 100;
/// What the broker may hold resident with that backlog: the paged entries (32 B each)
/// plus the memory window, buffers and the runtime.
const RSS_LIMIT_BYTES: u64 = 192 * 1024 * 1024;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_broker(data_dir: &std::path::Path) -> (Broker, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args([
            "--amqp-listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("broker starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Broker(child), port)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_message_backlog_keeps_the_broker_small() {
    let data_dir = tempfile::tempdir().unwrap();
    let (broker, port) = start_broker(data_dir.path());
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let conn = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "backlog".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![b'x'; BODY_BYTES];
    let mut pending = Vec::with_capacity(10_000);
    for _ in 0..BACKLOG_MESSAGES {
        let confirm = ch
            .basic_publish(
                "".into(),
                "backlog".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() == 10_000 {
            for confirm in pending.drain(..) {
                assert!(confirm.await.unwrap().is_ack());
            }
        }
    }
    for confirm in pending.drain(..) {
        assert!(confirm.await.unwrap().is_ack());
    }
    assert_eq!(
        common::ready(&ch, "backlog").await as usize,
        BACKLOG_MESSAGES
    );
    let rss = rss_bytes(broker.0.id());
    eprintln!(
        "broker RSS with {BACKLOG_MESSAGES} messages of {BODY_BYTES} B waiting: {} MiB",
        rss / (1024 * 1024)
    );
    assert!(
        rss < RSS_LIMIT_BYTES,
        "RSS {} MiB over the {} MiB limit",
        rss >> 20,
        RSS_LIMIT_BYTES >> 20
    );
    // And the backlog is still all there, in order at the head.
    let first = ch
        .basic_get("backlog".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.delivery.data, body);
    drop(broker);
}
