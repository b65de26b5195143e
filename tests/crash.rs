//! Crash safety: the broker runs as a child process, publishers with confirms write
//! persistent messages to a durable queue at full speed, and the test SIGKILLs the broker at
//! a random moment. After a restart every confirmed message must be there, and no message
//! whose ack the broker had processed may come back.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// Rounds run by `cargo test`; scripts/crash-soak.sh runs many more via CRASH_ROUNDS.
const ROUNDS_DEFAULT: usize = 3;
const QUEUE: &str = "crash-test";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_broker(port: u16, data_dir: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_ferrymq"))
        .args(["--amqp-listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir)
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("broker starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn kill(mut child: Child) {
    // SIGKILL: no chance to flush anything.
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

async fn connect(port: u16) -> Connection {
    Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("connects")
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes numbered messages with confirms until the broker dies; returns those confirmed.
async fn publish_until_killed(port: u16, first_id: u64) -> HashSet<u64> {
    let mut confirmed = HashSet::new();
    let Ok(conn) = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    else {
        return confirmed;
    };
    let Ok(ch) = conn.create_channel().await else {
        return confirmed;
    };
    if ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .is_err()
    {
        return confirmed;
    }
    let mut id = first_id;
    loop {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let body = id.to_be_bytes();
            match ch
                .basic_publish(
                    "".into(),
                    QUEUE.into(),
                    BasicPublishOptions::default(),
                    &body,
                    persistent(),
                )
                .await
            {
                Ok(confirm) => batch.push((id, confirm)),
                Err(_) => return confirmed,
            }
            id += 1;
        }
        for (id, confirm) in batch {
            match confirm.await {
                Ok(c) if c.is_ack() => {
                    confirmed.insert(id);
                }
                _ => return confirmed,
            }
        }
    }
}

/// Takes up to `count` messages and acks them, then makes sure the queue has processed the
/// acks (a passive declare is answered by the queue after the acks). Returns their ids.
async fn ack_some(port: u16, count: usize) -> HashSet<u64> {
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    let mut acked = HashSet::new();
    for _ in 0..count {
        let Some(message) = ch
            .basic_get(QUEUE.into(), BasicGetOptions::default())
            .await
            .unwrap()
        else {
            break;
        };
        acked.insert(u64::from_be_bytes(
            message.delivery.data[..8].try_into().unwrap(),
        ));
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close(200, "bye".into()).await.ok();
    acked
}

async fn drain_ids(port: u16) -> Vec<u64> {
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    let mut ids = Vec::new();
    while let Some(message) = ch
        .basic_get(QUEUE.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        ids.push(u64::from_be_bytes(
            message.delivery.data[..8].try_into().unwrap(),
        ));
    }
    conn.close(200, "bye".into()).await.ok();
    ids
}

async fn declare_queue(port: u16) {
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        QUEUE.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    conn.close(200, "bye".into()).await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_confirmed_message_and_revives_no_acked_one() {
    let rounds: usize = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT);
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = start_broker(port, data_dir.path());
    declare_queue(port).await;
    let mut expected: HashSet<u64> = HashSet::new();
    let mut acked_ever: HashSet<u64> = HashSet::new();
    for round in 0..rounds {
        acked_ever.extend(ack_some(port, 50).await);
        let publisher = tokio::spawn(publish_until_killed(port, (round as u64 + 1) << 32));
        let delay_ms = 200 + rand_delay_ms(round);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        kill(broker);
        let confirmed = tokio::time::timeout(Duration::from_secs(10), publisher)
            .await
            .expect("publisher ends")
            .unwrap();
        assert!(
            !confirmed.is_empty() || round > 0,
            "round {round}: nothing was confirmed in {delay_ms} ms"
        );
        expected.extend(confirmed);
        broker = start_broker(port, data_dir.path());
        // Check without consuming: every confirmed, unacked id must be there.
        let present = drain_ids_keep(port).await;
        let missing: Vec<&u64> = expected
            .difference(&acked_ever)
            .filter(|id| !present.contains(id))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: confirmed messages lost, e.g. {missing:?}"
        );
        let revived: Vec<&u64> = acked_ever
            .iter()
            .filter(|id| present.contains(id))
            .take(5)
            .collect();
        assert!(
            revived.is_empty(),
            "round {round}: acked messages came back, e.g. {revived:?}"
        );
        eprintln!(
            "round {round}: killed after {delay_ms} ms; {} confirmed so far, {} acked, {} present after restart",
            expected.len(),
            acked_ever.len(),
            present.len()
        );
    }
    let ids = drain_ids(port).await;
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "queue order survives restarts");
    kill(broker);
}

/// Reads every message (get + requeue by closing the channel) without removing any.
async fn drain_ids_keep(port: u16) -> HashSet<u64> {
    let conn = connect(port).await;
    let ch = conn.create_channel().await.unwrap();
    let mut ids = HashSet::new();
    while let Some(message) = ch
        .basic_get(QUEUE.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        ids.insert(u64::from_be_bytes(
            message.delivery.data[..8].try_into().unwrap(),
        ));
    }
    // Closing the connection requeues everything unacked, in the original order.
    conn.close(200, "bye".into()).await.ok();
    ids
}

/// A varied but reproducible kill moment per round.
fn rand_delay_ms(round: usize) -> u64 {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0x5eed);
    let mut x = seed ^ ((round as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % 600
}
