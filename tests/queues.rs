//! queue.declare / bind / unbind / purge / delete over real TCP with lapin, checked against
//! RabbitMQ (`rabbit_channel.erl`, `rabbit_amqqueue.erl`): server-named queues, exclusivity,
//! equivalence on redeclare, the "" shortcut for the channel's last queue, auto-delete and
//! the cancel notification consumers get when their queue goes away.

mod common;

use std::future::Future;
use std::time::Duration;

use lapin::message::DeliveryResult;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind, Queue};
use tokio::sync::mpsc;

/// Every broker round trip must answer well within this; a hang fails the test fast.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_TIMEOUT, future)
        .await
        .expect("the broker did not answer in time")
}

fn closed_with<T: std::fmt::Debug>(result: lapin::Result<T>) -> (u16, String) {
    let error = result.expect_err("the broker should have refused this");
    match error.kind() {
        ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

fn locked_text(queue: &str) -> String {
    // rabbit_amqqueue:check_exclusive_access wording.
    format!(
        "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{queue}' in vhost \
         '/'. It could be originally declared on another connection or the exclusive property \
         value does not match that of the original declaration."
    )
}

fn flags(durable: bool, exclusive: bool, auto_delete: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable,
        exclusive,
        auto_delete,
        ..Default::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn ttl(ms: i32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
    args
}

async fn declare(ch: &Channel, name: &str, options: QueueDeclareOptions) -> Queue {
    within(ch.queue_declare(name.into(), options, FieldTable::default()))
        .await
        .unwrap_or_else(|e| panic!("declaring queue {name:?}: {e}"))
}

/// Whether the queue exists, asked on a fresh channel (a 404 closes it).
async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = within(conn.create_channel()).await.unwrap();
    match within(ch.queue_declare(name.into(), passive(), FieldTable::default())).await {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(closed_with::<()>(Err(e)).0, 404);
            false
        }
    }
}

/// Queue deletion that follows a client's action (a cancel, a connection close) happens in
/// the queue's own task: wait for it rather than racing it.
async fn eventually_gone(conn: &Connection, name: &str) {
    within(async {
        while queue_exists(conn, name).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    ))
    .await
    .unwrap();
}

async fn get(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .map(|m| m.delivery.data)
}

/// Starts a consumer whose deliveries, and its end (`None`: cancelled), arrive on a channel.
async fn consume(ch: &Channel, queue: &str, tag: &str) -> mpsc::UnboundedReceiver<Option<Vec<u8>>> {
    let consumer = within(ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("consuming from {queue}: {e}"));
    let (tx, rx) = mpsc::unbounded_channel();
    consumer.set_delegate(move |delivery: DeliveryResult| {
        let tx = tx.clone();
        async move {
            let _ = match delivery {
                Ok(Some(d)) => tx.send(Some(d.data)),
                Ok(None) | Err(_) => tx.send(None),
            };
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------
// declare

#[tokio::test]
async fn empty_name_declares_a_server_named_queue() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let first = declare(&ch, "", QueueDeclareOptions::default()).await;
    let second = declare(&ch, "", QueueDeclareOptions::default()).await;
    // rabbit_guid:binary(_, "amq.gen"): "amq.gen-" and a base64 suffix.
    for q in [&first, &second] {
        let name = q.name().as_str();
        assert!(name.starts_with("amq.gen-"), "{name}");
        assert!(name.len() > "amq.gen-".len() + 16, "{name}");
    }
    assert_ne!(first.name(), second.name());
    assert!(queue_exists(&conn, first.name().as_str()).await);
    publish(&ch, "", second.name().as_str(), b"m").await;
    assert_eq!(
        get(&ch, second.name().as_str()).await.as_deref(),
        Some(&b"m"[..])
    );
}

#[tokio::test]
async fn redeclaring_a_server_named_queue_by_name_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = declare(&ch, "", QueueDeclareOptions::default()).await;
    let name = q.name().as_str().to_string();
    // RabbitMQ runs check_name before looking the queue up, so only a passive declare may
    // name an existing amq.gen- queue (clients redeclare them passively).
    declare(&ch, &name, passive()).await;
    let result = within(ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 403);
    assert_eq!(
        text,
        format!("ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'")
    );
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404_on_the_channel_only() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.queue_declare("nope".into(), passive(), FieldTable::default())).await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 404);
    assert_eq!(text, "NOT_FOUND - no queue 'nope' in vhost '/'");
    assert!(!ch.status().connected());
    assert!(conn.status().connected());
    let again = within(conn.create_channel()).await.unwrap();
    declare(&again, "after", QueueDeclareOptions::default()).await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_other_connections() {
    let broker = common::TestBroker::start().await;
    let owner = common::lapin(&broker).await;
    let other = common::lapin(&broker).await;
    let ch = owner.create_channel().await.unwrap();
    declare(&ch, "mine", flags(false, true, false)).await;
    // Redeclare (even with the same flags), passive declare, consume, get, bind, purge and
    // delete from another connection are all 405 (rabbit_amqqueue:check_exclusive_access).
    for attempt in [
        "redeclare",
        "passive",
        "consume",
        "get",
        "bind",
        "purge",
        "delete",
    ] {
        let ch = within(other.create_channel()).await.unwrap();
        let result: lapin::Result<()> = match attempt {
            "redeclare" => within(ch.queue_declare(
                "mine".into(),
                flags(false, true, false),
                FieldTable::default(),
            ))
            .await
            .map(drop),
            "passive" => within(ch.queue_declare("mine".into(), passive(), FieldTable::default()))
                .await
                .map(drop),
            "consume" => within(ch.basic_consume(
                "mine".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await
            .map(drop),
            "get" => within(ch.basic_get("mine".into(), BasicGetOptions::default()))
                .await
                .map(drop),
            "bind" => {
                within(ch.queue_bind(
                    "mine".into(),
                    "amq.direct".into(),
                    "k".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ))
                .await
            }
            "purge" => within(ch.queue_purge("mine".into(), QueuePurgeOptions::default()))
                .await
                .map(drop),
            _ => within(ch.queue_delete("mine".into(), QueueDeleteOptions::default()))
                .await
                .map(drop),
        };
        let (code, text) = closed_with(result);
        assert_eq!(code, 405, "{attempt}");
        assert_eq!(text, locked_text("mine"), "{attempt}");
    }
    assert!(other.status().connected());
    // The owner still uses it freely.
    publish(&ch, "", "mine", b"m").await;
    assert_eq!(get(&ch, "mine").await.as_deref(), Some(&b"m"[..]));
}

#[tokio::test]
async fn redeclare_with_other_exclusive_flag_is_405() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "shared", QueueDeclareOptions::default()).await;
    // assert_equivalence checks exclusivity "strictly" before the other fields.
    let result = within(ch.queue_declare(
        "shared".into(),
        flags(false, true, false),
        FieldTable::default(),
    ))
    .await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 405);
    assert_eq!(text, locked_text("shared"));
}

#[tokio::test]
async fn redeclare_with_other_properties_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    within(setup.queue_declare("q".into(), flags(false, false, false), ttl(1000)))
        .await
        .unwrap();
    let cases = [
        ("durable", flags(true, false, false), ttl(1000)),
        ("auto_delete", flags(false, false, true), ttl(1000)),
        ("x-message-ttl", flags(false, false, false), ttl(2000)),
        (
            "x-message-ttl",
            flags(false, false, false),
            FieldTable::default(),
        ),
    ];
    for (field, options, args) in cases {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = within(ch.queue_declare("q".into(), options, args)).await;
        // rabbit_misc:assert_field_equivalence / assert_args_equivalence wording.
        let (code, text) = closed_with(result);
        assert_eq!(code, 406, "{field}");
        assert!(
            text.starts_with(&format!(
                "PRECONDITION_FAILED - inequivalent arg '{field}' for queue 'q' in vhost '/': \
                 received "
            )),
            "{text}"
        );
    }
    assert!(conn.status().connected());
}

#[tokio::test]
async fn redeclare_with_same_properties_is_ok() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.queue_declare("q".into(), flags(true, false, false), ttl(1000)))
        .await
        .unwrap();
    // The same TTL as a different integer width, and an argument RabbitMQ does not compare.
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
    args.insert(
        "x-custom".into(),
        AMQPValue::LongString(LongString::from("anything")),
    );
    within(ch.queue_declare("q".into(), flags(true, false, false), args))
        .await
        .unwrap();
    // Passive declares ignore the flags.
    within(ch.queue_declare("q".into(), passive(), FieldTable::default()))
        .await
        .unwrap();
}

#[tokio::test]
async fn declaring_amq_prefixed_queue_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.queue_declare(
        "amq.mine".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    // rabbit_channel:check_name.
    let (code, text) = closed_with(result);
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'"
    );
    assert!(conn.status().connected());
}

#[tokio::test]
async fn declare_ok_counts_ready_messages_and_consumers() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = declare(&ch, "q", QueueDeclareOptions::default()).await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    for body in [&b"1"[..], b"2", b"3"] {
        publish(&ch, "", "q", body).await;
    }
    let q = declare(&ch, "q", QueueDeclareOptions::default()).await;
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));
    let q = declare(&ch, "q", passive()).await;
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));

    // A consumer on another queue-less channel: messages go to it and stop being ready.
    let consumer_ch = conn.create_channel().await.unwrap();
    let mut deliveries = consume(&consumer_ch, "q", "c1").await;
    for _ in 0..3 {
        within(deliveries.recv()).await.unwrap().unwrap();
    }
    let _second = consume(&consumer_ch, "q", "c2").await;
    let q = declare(&ch, "q", passive()).await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 2));
}

// ---------------------------------------------------------------------------------------
// lifetime: exclusive and auto-delete

#[tokio::test]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = common::TestBroker::start().await;
    let owner = common::lapin(&broker).await;
    let observer = common::lapin(&broker).await;
    let ch = owner.create_channel().await.unwrap();
    declare(&ch, "mine", flags(false, true, false)).await;
    let generated = declare(&ch, "", flags(false, true, false)).await;
    within(owner.close(200, "bye".into())).await.unwrap();
    eventually_gone(&observer, "mine").await;
    eventually_gone(&observer, generated.name().as_str()).await;
    // The name is free again for anyone.
    let ch = observer.create_channel().await.unwrap();
    declare(&ch, "mine", QueueDeclareOptions::default()).await;
}

#[tokio::test]
async fn exclusive_queue_outlives_the_channel_that_declared_it() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "mine", flags(false, true, false)).await;
    within(ch.close(200, "bye".into())).await.unwrap();
    // Exclusivity belongs to the connection, not the channel.
    assert!(queue_exists(&conn, "mine").await);
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_after_its_last_consumer_cancels() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "ad", flags(false, false, true)).await;
    // Never consumed from: it stays, however long it is used otherwise.
    publish(&ch, "", "ad", b"m").await;
    assert_eq!(get(&ch, "ad").await.as_deref(), Some(&b"m"[..]));
    assert!(queue_exists(&conn, "ad").await);

    let _first = consume(&ch, "ad", "c1").await;
    let _second = consume(&ch, "ad", "c2").await;
    within(ch.basic_cancel("c1".into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    assert!(queue_exists(&conn, "ad").await, "one consumer is left");
    within(ch.basic_cancel("c2".into(), BasicCancelOptions::default()))
        .await
        .unwrap();
    eventually_gone(&conn, "ad").await;
}

#[tokio::test]
async fn auto_delete_queue_is_deleted_when_its_consumers_channel_closes() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "ad", flags(false, false, true)).await;
    let consumer_ch = conn.create_channel().await.unwrap();
    let _deliveries = consume(&consumer_ch, "ad", "c").await;
    within(consumer_ch.close(200, "bye".into())).await.unwrap();
    eventually_gone(&conn, "ad").await;
}

// ---------------------------------------------------------------------------------------
// bind / unbind

#[tokio::test]
async fn bind_with_missing_queue_or_exchange_is_404() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    declare(&setup, "q", QueueDeclareOptions::default()).await;
    for (queue, exchange, text) in [
        (
            "nope",
            "amq.direct",
            "NOT_FOUND - no queue 'nope' in vhost '/'",
        ),
        ("q", "nope", "NOT_FOUND - no exchange 'nope' in vhost '/'"),
    ] {
        for unbind in [false, true] {
            let ch = within(conn.create_channel()).await.unwrap();
            let result = if unbind {
                within(ch.queue_unbind(
                    queue.into(),
                    exchange.into(),
                    "k".into(),
                    FieldTable::default(),
                ))
                .await
            } else {
                within(ch.queue_bind(
                    queue.into(),
                    exchange.into(),
                    "k".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ))
                .await
            };
            let (code, got) = closed_with(result);
            assert_eq!(code, 404, "unbind={unbind}");
            assert_eq!(got, text, "unbind={unbind}");
        }
    }
}

#[tokio::test]
async fn binding_to_the_default_exchange_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    declare(&setup, "q", QueueDeclareOptions::default()).await;
    for unbind in [false, true] {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = if unbind {
            within(ch.queue_unbind("q".into(), "".into(), "q".into(), FieldTable::default())).await
        } else {
            within(ch.queue_bind(
                "q".into(),
                "".into(),
                "other".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ))
            .await
        };
        let (code, text) = closed_with(result);
        assert_eq!(code, 403, "unbind={unbind}");
        assert_eq!(
            text,
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        );
    }
}

#[tokio::test]
async fn unbind_stops_routing_and_unbinding_twice_is_ok() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    within(ch.queue_bind(
        "q".into(),
        "amq.direct".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, "amq.direct", "k", b"bound").await;
    for _ in 0..2 {
        within(ch.queue_unbind(
            "q".into(),
            "amq.direct".into(),
            "k".into(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    publish(&ch, "amq.direct", "k", b"unbound").await;
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"bound"[..]));
    assert_eq!(get(&ch, "q").await, None);
}

#[tokio::test]
async fn empty_queue_name_means_the_channels_last_declared_queue() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = declare(&ch, "", QueueDeclareOptions::default()).await;
    let name = q.name().as_str().to_string();
    // queue.bind with "" queue and "" key binds the last queue with its own name as the key
    // (rabbit_channel:expand_routing_key_shortcut).
    within(ch.queue_bind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, "amq.direct", &name, b"by name").await;
    assert_eq!(get(&ch, "").await.as_deref(), Some(&b"by name"[..]));
    // queue.unbind expands the same way, so this removes that binding.
    within(ch.queue_unbind(
        "".into(),
        "amq.direct".into(),
        "".into(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, "amq.direct", &name, b"unbound").await;
    publish(&ch, "", &name, b"direct").await;
    let purged = within(ch.queue_purge("".into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the default-exchange publish was routed");
    within(ch.queue_delete("".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!queue_exists(&conn, &name).await);
}

#[tokio::test]
async fn empty_queue_name_without_a_declared_queue_is_404() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.queue_purge("".into(), QueuePurgeOptions::default())).await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 404);
    assert_eq!(text, "NOT_FOUND - no previously declared queue");
}

// ---------------------------------------------------------------------------------------
// purge / delete

#[tokio::test]
async fn purge_returns_the_number_of_ready_messages() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    for _ in 0..5 {
        publish(&ch, "", "q", b"m").await;
    }
    let purged = within(ch.queue_purge("q".into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 5);
    let purged = within(ch.queue_purge("q".into(), QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 0);
    assert_eq!(get(&ch, "q").await, None);
}

#[tokio::test]
async fn purging_a_missing_queue_is_404() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.queue_purge("nope".into(), QueuePurgeOptions::default())).await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 404);
    assert_eq!(text, "NOT_FOUND - no queue 'nope' in vhost '/'");
}

#[tokio::test]
async fn delete_returns_the_message_count() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    for _ in 0..3 {
        publish(&ch, "", "q", b"m").await;
    }
    let count = within(ch.queue_delete("q".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(count, 3);
    assert!(!queue_exists(&conn, "q").await);
}

#[tokio::test]
async fn deleting_a_missing_queue_is_ok_with_zero() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let count = within(ch.queue_delete("nope".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(count, 0);
    assert!(ch.status().connected());
}

#[tokio::test]
async fn delete_if_unused_with_a_consumer_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    let consumer_ch = conn.create_channel().await.unwrap();
    let _deliveries = consume(&consumer_ch, "q", "c").await;
    let result = within(ch.queue_delete(
        "q".into(),
        QueueDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 406);
    assert_eq!(text, "PRECONDITION_FAILED - queue 'q' in vhost '/' in use");
    assert!(queue_exists(&conn, "q").await);
}

#[tokio::test]
async fn delete_if_empty_with_messages_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    publish(&ch, "", "q", b"m").await;
    let result = within(ch.queue_delete(
        "q".into(),
        QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        },
    ))
    .await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - queue 'q' in vhost '/' is not empty"
    );
    assert!(queue_exists(&conn, "q").await);
}

#[tokio::test]
async fn delete_if_unused_and_if_empty_deletes_an_idle_empty_queue() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    let count = within(ch.queue_delete(
        "q".into(),
        QueueDeleteOptions {
            if_unused: true,
            if_empty: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(count, 0);
    assert!(!queue_exists(&conn, "q").await);
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    let consumer_ch = conn.create_channel().await.unwrap();
    let mut deliveries = consume(&consumer_ch, "q", "c").await;
    publish(&ch, "", "q", b"before").await;
    assert_eq!(
        within(deliveries.recv()).await,
        Some(Some(b"before".to_vec()))
    );
    within(ch.queue_delete("q".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    // lapin announces consumer_cancel_notify, so the broker sends basic.cancel and the
    // consumer ends (rabbit_channel:cancel_consumer).
    assert_eq!(within(deliveries.recv()).await, Some(None));
    // The consumer's channel stays open and usable.
    assert!(consumer_ch.status().connected());
    declare(&consumer_ch, "q2", QueueDeclareOptions::default()).await;
}

#[tokio::test]
async fn deleting_a_queue_removes_its_bindings() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    within(ch.queue_bind(
        "q".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_delete("q".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    declare(&ch, "q", QueueDeclareOptions::default()).await;
    publish(&ch, "amq.fanout", "", b"lost").await;
    assert_eq!(get(&ch, "q").await, None);
}
