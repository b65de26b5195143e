//! Durability across a clean restart: definitions and persistent messages come back, in
//! order, with acks remembered and redelivered flags for what had been delivered.

mod common;

use std::time::Duration;

use common::TestBroker;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

const STEP: Duration = Duration::from_secs(5);

async fn channel(broker: &TestBroker) -> (Connection, Channel) {
    let conn = common::lapin(broker).await;
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .unwrap();
    let confirm = tokio::time::timeout(STEP, confirm).await.unwrap().unwrap();
    assert!(confirm.is_ack(), "{body} confirmed");
}

/// Every message left in `queue`, as (body, redelivered), without removing them for good.
async fn bodies(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(
        STEP,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .unwrap()
    {
        out.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
    }
    out
}

async fn exists(ch: &Channel, queue: &str) -> bool {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok()
}

#[tokio::test]
async fn durable_definitions_survive_and_transient_ones_do_not() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = channel(&broker).await;
        let durable_x = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            "orders".into(),
            ExchangeKind::Topic,
            durable_x,
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "scratch".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
        ch.queue_declare("eu-orders".into(), durable(), args)
            .await
            .unwrap();
        ch.queue_declare("temp".into(), Default::default(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare("gone".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            "eu-orders".into(),
            "orders".into(),
            "eu.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_delete("gone".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    assert!(exists(&ch, "eu-orders").await);
    let (_c2, ch2) = channel(&broker).await;
    assert!(!exists(&ch2, "temp").await, "transient queue is gone");
    let (_c3, ch3) = channel(&broker).await;
    assert!(!exists(&ch3, "gone").await, "deleted queue stays deleted");
    // The binding came back too: a publish to the durable exchange reaches the queue.
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish(&ch, "orders", "eu.de", "routed", persistent()).await;
    assert_eq!(
        bodies(&ch, "eu-orders").await,
        vec![("routed".to_string(), false)]
    );
    // Redeclaring with the recovered arguments is equivalent (no 406).
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare("eu-orders".into(), durable(), args)
        .await
        .unwrap();
    let passive_x = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert!(ch
        .exchange_declare(
            "scratch".into(),
            ExchangeKind::Fanout,
            passive_x,
            FieldTable::default()
        )
        .await
        .is_err());
    let queues_dir = broker.data_dir().join("queues");
    let dirs = std::fs::read_dir(&queues_dir)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(dirs, 1, "only the one durable queue has files");
    broker.shutdown().await;
}

#[tokio::test]
async fn persistent_messages_survive_in_order_and_transient_ones_do_not() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = common::confirming_channel(&broker).await;
        ch.queue_declare("q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(
            "transient-q".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        for i in 0..100 {
            let props = if i % 10 == 3 {
                BasicProperties::default()
            } else {
                persistent()
            };
            publish(&ch, "", "q", &format!("m{i}"), props).await;
        }
        publish(&ch, "", "transient-q", "lost", persistent()).await;
    }
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    let expected: Vec<(String, bool)> = (0..100)
        .filter(|i| i % 10 != 3)
        .map(|i| (format!("m{i}"), false))
        .collect();
    assert_eq!(bodies(&ch, "q").await, expected);
    broker.shutdown().await;
}

#[tokio::test]
async fn acked_messages_stay_acked_and_unacked_ones_come_back_redelivered() {
    let broker = TestBroker::start().await;
    {
        let (conn, ch) = common::confirming_channel(&broker).await;
        ch.queue_declare("q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..6 {
            publish(&ch, "", "q", &format!("m{i}"), persistent()).await;
        }
        // m0 acked, m1 delivered and left unacked, m2..m5 never delivered.
        let first = ch
            .basic_get("q".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        first
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        let _second = ch
            .basic_get("q".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        // A passive declare is answered by the queue after it took the ack.
        common::ready(&ch, "q").await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    let got = bodies(&ch, "q").await;
    let expected: Vec<(String, bool)> = vec![
        ("m1".into(), true),
        ("m2".into(), false),
        ("m3".into(), false),
        ("m4".into(), false),
        ("m5".into(), false),
    ];
    assert_eq!(got, expected);
    broker.shutdown().await;
}

#[tokio::test]
async fn purged_and_deleted_queues_leave_nothing_behind() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = common::confirming_channel(&broker).await;
        ch.queue_declare("purged".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare("deleted".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..10 {
            publish(&ch, "", "purged", &format!("p{i}"), persistent()).await;
            publish(&ch, "", "deleted", &format!("d{i}"), persistent()).await;
        }
        ch.queue_purge("purged".into(), Default::default())
            .await
            .unwrap();
        ch.queue_delete("deleted".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        common::ready(&ch, "purged").await;
    }
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    assert!(bodies(&ch, "purged").await.is_empty());
    let (_c2, ch2) = channel(&broker).await;
    assert!(!exists(&ch2, "deleted").await);
    broker.shutdown().await;
}

#[tokio::test]
async fn transactions_commit_persistent_messages_to_disk() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = channel(&broker).await;
        ch.queue_declare("q".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.tx_select().await.unwrap();
        for i in 0..5 {
            ch.basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                format!("t{i}").as_bytes(),
                persistent(),
            )
            .await
            .unwrap();
        }
        ch.tx_commit().await.unwrap();
    }
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    let got: Vec<String> = bodies(&ch, "q").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, vec!["t0", "t1", "t2", "t3", "t4"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn definitions_churn_keeps_the_log_compact() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = channel(&broker).await;
        ch.queue_declare("keeper".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for _ in 0..3000 {
            ch.queue_declare("churn".into(), durable(), FieldTable::default())
                .await
                .unwrap();
            ch.queue_delete("churn".into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
    }
    // 6,001 commands were logged; compaction while running keeps far fewer of them.
    // (The zeroes the log writes ahead of its entries are not entries.)
    let log = std::fs::read(broker.data_dir().join("definitions.log")).unwrap();
    let size = log.iter().rposition(|&b| b != 0).map_or(0, |end| end + 1);
    assert!(size < 6001 * 16, "definitions.log grew to {size} bytes");
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    assert!(exists(&ch, "keeper").await);
    let (_c2, ch2) = channel(&broker).await;
    assert!(!exists(&ch2, "churn").await);
    broker.shutdown().await;
}

/// The one segment file of the only durable queue in `data_dir`.
fn only_segment(data_dir: &std::path::Path) -> std::path::PathBuf {
    let queue_dir = std::fs::read_dir(data_dir.join("queues"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut segments: Vec<_> = std::fs::read_dir(&queue_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.remove(0)
}

async fn publish_five(broker: &TestBroker) {
    let (_conn, ch) = common::confirming_channel(broker).await;
    ch.queue_declare("q".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    for i in 0..5 {
        publish(&ch, "", "q", &format!("body-{i}"), persistent()).await;
    }
}

#[tokio::test]
async fn a_corrupt_record_is_skipped_and_the_others_recovered() {
    let broker = TestBroker::start().await;
    publish_five(&broker).await;
    let broker = broker
        .restart_after(|dir| {
            let path = only_segment(dir);
            let mut bytes = std::fs::read(&path).unwrap();
            let at = bytes
                .windows(6)
                .position(|w| w == b"body-2")
                .expect("record of body-2");
            bytes[at + 5] ^= 0x20; // one flipped bit in the middle record's body
            std::fs::write(&path, bytes).unwrap();
        })
        .await;
    let (_conn, ch) = channel(&broker).await;
    let got: Vec<String> = bodies(&ch, "q").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, vec!["body-0", "body-1", "body-3", "body-4"]);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_torn_last_record_is_cut_off_and_the_queue_keeps_working() {
    let broker = TestBroker::start().await;
    publish_five(&broker).await;
    let broker = broker
        .restart_after(|dir| {
            let path = only_segment(dir);
            let bytes = std::fs::read(&path).unwrap();
            let at = bytes
                .windows(6)
                .position(|w| w == b"body-4")
                .expect("record of body-4");
            // A crash in the middle of writing the last record.
            std::fs::write(&path, &bytes[..at + 3]).unwrap();
        })
        .await;
    let (_conn, ch) = common::confirming_channel(&broker).await;
    publish(&ch, "", "q", "after", persistent()).await;
    let got: Vec<String> = bodies(&ch, "q").await.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, vec!["body-0", "body-1", "body-2", "body-3", "after"]);
    broker.shutdown().await;
}
