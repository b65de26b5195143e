//! Message deduplication as the rabbitmq-message-deduplication plugin does it: the
//! `x-message-deduplication` exchange type (a cache of keys with a size and a TTL) and the
//! `x-message-deduplication` queue argument (no two messages with one key in the queue).

mod common;

use std::time::Duration;

use common::{declare, ready, s, within, TestBroker};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, ExchangeKind};

const DEDUP: &str = "x-message-deduplication";

use common::confirming_channel;

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long_str(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// Properties whose `x-deduplication-header` is `key`.
fn keyed(key: &str) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("x-deduplication-header", long_str(key))]))
}

async fn declare_dedup_exchange(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    let options = ExchangeDeclareOptions {
        durable,
        ..Default::default()
    };
    within(ch.exchange_declare(s(name), ExchangeKind::Custom(DEDUP.into()), options, args))
        .await
        .unwrap_or_else(|e| panic!("declaring {name}: {e}"));
}

/// A deduplication exchange `x` (with `args`) fanning out to queue `q`.
async fn exchange_to_queue(ch: &Channel, args: FieldTable) {
    declare_dedup_exchange(ch, "x", false, args).await;
    declare(ch, "q").await;
    within(ch.queue_bind(
        s("q"),
        s("x"),
        s("any key"),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

/// Publishes (mandatory) and returns the confirmation.
async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> Confirmation {
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = within(ch.basic_publish(s(exchange), s(key), options, body.as_bytes(), props))
        .await
        .unwrap();
    within(confirm).await.unwrap()
}

/// Publishes and checks the confirm is a plain ack (not a nack, nothing returned).
async fn publish_acked(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) {
    let confirmation = publish(ch, exchange, key, body, props).await;
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "{body}: {confirmation:?}"
    );
}

/// Takes every ready message (no-ack) and returns the bodies.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(s(queue), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

fn size(n: i32) -> (&'static str, AMQPValue) {
    ("x-cache-size", AMQPValue::LongInt(n))
}

#[tokio::test]
async fn exchange_drops_a_duplicate_by_header_and_still_acks_it() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    exchange_to_queue(&ch, table(&[size(10)])).await;
    publish_acked(&ch, "x", "", "a", keyed("k1")).await;
    // Mandatory, yet not returned: a duplicate is handled, not unroutable.
    publish_acked(&ch, "x", "", "dup of a", keyed("k1")).await;
    publish_acked(&ch, "x", "", "b", keyed("k2")).await;
    assert_eq!(drain(&ch, "q").await, ["a", "b"]);
}

#[tokio::test]
async fn exchange_falls_back_to_the_message_id_and_lets_keyless_messages_through() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    exchange_to_queue(&ch, table(&[size(10)])).await;
    let by_id = || BasicProperties::default().with_message_id(s("m-1"));
    publish_acked(&ch, "x", "", "a", by_id()).await;
    publish_acked(&ch, "x", "", "dup by message-id", by_id()).await;
    publish_acked(&ch, "x", "", "plain 1", BasicProperties::default()).await;
    publish_acked(&ch, "x", "", "plain 2", BasicProperties::default()).await;
    assert_eq!(drain(&ch, "q").await, ["a", "plain 1", "plain 2"]);
}

#[tokio::test]
async fn exchange_routes_like_fanout_whatever_the_routing_key() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    exchange_to_queue(&ch, table(&[size(10)])).await;
    declare(&ch, "q2").await;
    within(ch.queue_bind(
        s("q2"),
        s("x"),
        s("other key"),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish_acked(&ch, "x", "unrelated", "a", keyed("k")).await;
    assert_eq!(ready(&ch, "q").await, 1);
    assert_eq!(ready(&ch, "q2").await, 1);
}

#[tokio::test]
async fn a_full_cache_forgets_its_oldest_key_first() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    exchange_to_queue(&ch, table(&[size(2)])).await;
    for key in ["k1", "k2", "k3"] {
        publish_acked(&ch, "x", "", key, keyed(key)).await;
    }
    // k1 made room for k3; k2 and k3 are still remembered.
    publish_acked(&ch, "x", "", "k1 again", keyed("k1")).await;
    publish_acked(&ch, "x", "", "k3 again", keyed("k3")).await;
    assert_eq!(drain(&ch, "q").await, ["k1", "k2", "k3", "k1 again"]);
}

/// Publishes `key` until the exchange lets it through again; returns how many were dropped.
async fn publish_until_routed(ch: &Channel, key: &str, props: impl Fn() -> BasicProperties) -> u32 {
    let mut dropped = 0;
    within(async {
        loop {
            publish_acked(ch, "x", "", key, props()).await;
            if ready(ch, "q").await > 0 {
                return;
            }
            dropped += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    dropped
}

#[tokio::test]
async fn a_key_passes_again_once_the_cache_ttl_expires() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    exchange_to_queue(
        &ch,
        table(&[size(10), ("x-cache-ttl", AMQPValue::LongInt(300))]),
    )
    .await;
    publish_acked(&ch, "x", "", "first", keyed("k")).await;
    assert_eq!(drain(&ch, "q").await, ["first"]);
    let started = std::time::Instant::now();
    let dropped = publish_until_routed(&ch, "k", || keyed("k")).await;
    assert!(dropped > 0, "a duplicate within the TTL is dropped");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the TTL"
    );
}

#[tokio::test]
async fn the_message_ttl_header_overrides_the_exchange_ttl() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    // No TTL on the exchange: keys would stay until evicted.
    exchange_to_queue(&ch, table(&[size(10)])).await;
    let short = || {
        BasicProperties::default().with_headers(table(&[
            ("x-deduplication-header", long_str("k")),
            ("x-cache-ttl", AMQPValue::LongInt(200)),
        ]))
    };
    publish_acked(&ch, "x", "", "first", short()).await;
    assert_eq!(drain(&ch, "q").await, ["first"]);
    let dropped = publish_until_routed(&ch, "k", short).await;
    assert!(dropped > 0);
    // Without the header the key stays.
    publish_acked(&ch, "x", "", "forever", keyed("kept")).await;
    drain(&ch, "q").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish_acked(&ch, "x", "", "still a duplicate", keyed("kept")).await;
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn bad_exchange_arguments_are_refused_with_the_plugins_words() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let cases = [
        (
            table(&[]),
            "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
        ),
        (
            table(&[size(0)]),
            "PRECONDITION_FAILED - Missing or invalid argument, 'x-cache-size' must be an integer greater than 0",
        ),
        (
            table(&[size(5), ("x-cache-ttl", long_str("soon"))]),
            "PRECONDITION_FAILED - Invalid argument, 'x-cache-ttl' must be an integer greater than 0",
        ),
        (
            table(&[size(5), ("x-cache-persistence", long_str("tape"))]),
            "PRECONDITION_FAILED - Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'",
        ),
    ];
    for (args, text) in cases {
        let ch = conn.create_channel().await.unwrap();
        let result = within(ch.exchange_declare(
            s("bad"),
            ExchangeKind::Custom(DEDUP.into()),
            ExchangeDeclareOptions::default(),
            args,
        ))
        .await;
        let error = result.expect_err("refused");
        match error.kind() {
            lapin::ErrorKind::ProtocolError(e) => {
                assert_eq!(e.get_id(), 406);
                assert_eq!(e.get_message().as_str(), text);
            }
            other => panic!("expected a channel error, got {other:?}"),
        }
    }
    // A size given as a numeric string is accepted, as the plugin accepts it.
    let ch = conn.create_channel().await.unwrap();
    declare_dedup_exchange(&ch, "ok", false, table(&[("x-cache-size", long_str("5"))])).await;
}

#[tokio::test]
async fn a_duplicate_is_not_sent_to_the_alternate_exchange() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    within(ch.exchange_declare(
        s("ae"),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare(&ch, "unrouted").await;
    within(ch.queue_bind(
        s("unrouted"),
        s("ae"),
        s(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare_dedup_exchange(
        &ch,
        "x",
        false,
        table(&[size(10), ("alternate-exchange", long_str("ae"))]),
    )
    .await;
    // Nothing bound to x: the first goes to the alternate exchange, the duplicate nowhere.
    publish_acked(&ch, "x", "", "first", keyed("k")).await;
    publish_acked(&ch, "x", "", "dup", keyed("k")).await;
    assert_eq!(drain(&ch, "unrouted").await, ["first"]);
}

#[tokio::test]
async fn an_exchange_bound_to_a_deduplication_exchange_is_deduplicated_there() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    exchange_to_queue(&ch, table(&[size(10)])).await;
    within(ch.exchange_bind(
        s("x"),
        s("amq.topic"),
        s("orders.#"),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish_acked(&ch, "amq.topic", "orders.new", "a", keyed("k")).await;
    publish_acked(&ch, "amq.topic", "orders.new", "dup", keyed("k")).await;
    assert_eq!(drain(&ch, "q").await, ["a"]);
}

fn dedup_queue_args() -> FieldTable {
    table(&[(DEDUP, AMQPValue::Boolean(true))])
}

async fn declare_dedup_queue(ch: &Channel, name: &str, durable: bool) {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    within(ch.queue_declare(s(name), options, dedup_queue_args()))
        .await
        .unwrap();
}

#[tokio::test]
async fn queue_drops_a_duplicate_while_the_first_is_in_it_and_takes_it_after_the_ack() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    declare_dedup_queue(&ch, "dq", false).await;
    publish_acked(&ch, "", "dq", "a", keyed("k")).await;
    publish_acked(&ch, "", "dq", "dup while ready", keyed("k")).await;
    assert_eq!(ready(&ch, "dq").await, 1);
    let got = within(ch.basic_get(s("dq"), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("a message");
    // Delivered but unacked: still in the queue.
    publish_acked(&ch, "", "dq", "dup while unacked", keyed("k")).await;
    assert_eq!(ready(&ch, "dq").await, 0);
    // Requeued: still the same message holding the key.
    within(got.delivery.acker.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    publish_acked(&ch, "", "dq", "dup after requeue", keyed("k")).await;
    assert_eq!(ready(&ch, "dq").await, 1);
    let got = within(ch.basic_get(s("dq"), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"a");
    within(got.delivery.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    publish_acked(&ch, "", "dq", "b", keyed("k")).await;
    assert_eq!(drain(&ch, "dq").await, ["b"]);
    // The no-ack get above took "b" away for good: the key is free again.
    publish_acked(&ch, "", "dq", "c", keyed("k")).await;
    assert_eq!(ready(&ch, "dq").await, 1);
}

#[tokio::test]
async fn a_purge_frees_the_keys_of_the_purged_messages() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 2).await;
    let (_conn, ch) = confirming_channel(&broker).await;
    declare_dedup_queue(&ch, "dq", false).await;
    // Beyond the window of two, messages wait on disk: the purge drops them as runs.
    for n in 0..6 {
        publish_acked(&ch, "", "dq", &format!("m{n}"), keyed(&format!("k{n}"))).await;
    }
    publish_acked(&ch, "", "dq", "dup", keyed("k5")).await;
    assert_eq!(ready(&ch, "dq").await, 6);
    within(ch.queue_purge(s("dq"), QueuePurgeOptions::default()))
        .await
        .unwrap();
    for n in 0..6 {
        publish_acked(
            &ch,
            "",
            "dq",
            &format!("again {n}"),
            keyed(&format!("k{n}")),
        )
        .await;
    }
    assert_eq!(ready(&ch, "dq").await, 6);
}

#[tokio::test]
async fn a_queue_without_the_argument_keeps_duplicates() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    declare(&ch, "plain").await;
    publish_acked(&ch, "", "plain", "a", keyed("k")).await;
    publish_acked(&ch, "", "plain", "b", keyed("k")).await;
    assert_eq!(ready(&ch, "plain").await, 2);
}

#[tokio::test]
async fn a_durable_disk_cache_survives_a_restart_and_a_memory_one_does_not() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = confirming_channel(&broker).await;
        for (name, persistence) in [
            ("on-disk", Some("disk")),
            ("in-memory", Some("memory")),
            ("by-default", None),
        ] {
            let args = match persistence {
                Some(p) => table(&[size(10), ("x-cache-persistence", long_str(p))]),
                None => table(&[size(10)]),
            };
            declare_dedup_exchange(&ch, name, true, args).await;
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let queue = format!("{name}-q");
            within(ch.queue_declare(s(&queue), options, FieldTable::default()))
                .await
                .unwrap();
            within(ch.queue_bind(
                s(&queue),
                s(name),
                s(""),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
            .unwrap();
            let persistent = keyed("k").with_delivery_mode(2);
            publish_acked(&ch, name, "", "before", persistent).await;
        }
    }
    let broker = broker.restart().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    let persistent = || keyed("k").with_delivery_mode(2);
    publish_acked(&ch, "on-disk", "", "after", persistent()).await;
    publish_acked(&ch, "in-memory", "", "after", persistent()).await;
    publish_acked(&ch, "by-default", "", "after", persistent()).await;
    assert_eq!(drain(&ch, "on-disk-q").await, ["before"]);
    // Beyond the plugin: a durable exchange keeps its cache on disk unless told `memory`.
    assert_eq!(drain(&ch, "by-default-q").await, ["before"]);
    // As the plugin: `memory` does not outlive the broker.
    assert_eq!(drain(&ch, "in-memory-q").await, ["before", "after"]);
}

#[tokio::test]
async fn a_deleted_exchange_takes_its_cache_with_it() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    declare(&ch, "q").await;
    // Redeclared under the same name, the exchange would reopen the same file.
    for body in ["a", "b"] {
        let args = table(&[size(10), ("x-cache-persistence", long_str("disk"))]);
        declare_dedup_exchange(&ch, "x", true, args).await;
        within(ch.queue_bind(
            s("q"),
            s("x"),
            s(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
        publish_acked(&ch, "x", "", body, keyed("k")).await;
        within(ch.exchange_delete(s("x"), Default::default()))
            .await
            .unwrap();
    }
    assert_eq!(drain(&ch, "q").await, ["a", "b"]);
    let files = std::fs::read_dir(broker.data_dir().join("dedup"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    assert_eq!(files, 0);
}

#[tokio::test]
async fn a_durable_queue_remembers_the_keys_of_its_persistent_messages_after_a_restart() {
    // A window of 3: most of the 8 messages come back paged, their keys read from disk.
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 3).await;
    {
        let (_conn, ch) = confirming_channel(&broker).await;
        declare_dedup_queue(&ch, "dq", true).await;
        for n in 0..8 {
            let props = keyed(&format!("k{n}")).with_delivery_mode(2);
            publish_acked(&ch, "", "dq", &format!("m{n}"), props).await;
        }
        publish_acked(&ch, "", "dq", "transient", keyed("t")).await;
    }
    let broker = broker.restart().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    for n in 0..8 {
        let props = keyed(&format!("k{n}")).with_delivery_mode(2);
        publish_acked(&ch, "", "dq", &format!("dup {n}"), props).await;
    }
    // The transient message did not survive, so its key is free.
    publish_acked(&ch, "", "dq", "transient again", keyed("t")).await;
    let expected: Vec<String> = (0..8)
        .map(|n| format!("m{n}"))
        .chain(["transient again".to_string()])
        .collect();
    assert_eq!(drain(&ch, "dq").await, expected);
}

#[tokio::test]
async fn a_transaction_commits_once_the_cache_entry_follows_the_message_to_disk() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let args = table(&[size(10), ("x-cache-persistence", long_str("disk"))]);
    declare_dedup_exchange(&ch, "x", true, args).await;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare(s("q"), options, FieldTable::default()))
        .await
        .unwrap();
    within(ch.queue_bind(
        s("q"),
        s("x"),
        s(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.tx_select()).await.unwrap();
    for body in ["a", "dup"] {
        let props = keyed("k").with_delivery_mode(2);
        within(ch.basic_publish(
            s("x"),
            s(""),
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        ))
        .await
        .unwrap();
    }
    within(ch.tx_commit()).await.unwrap();
    let broker = broker.restart().await;
    let (_conn, ch) = confirming_channel(&broker).await;
    publish_acked(
        &ch,
        "x",
        "",
        "after restart",
        keyed("k").with_delivery_mode(2),
    )
    .await;
    assert_eq!(drain(&ch, "q").await, ["a"]);
}
