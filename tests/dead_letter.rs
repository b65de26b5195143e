//! Dead-lettering of rejected messages with RabbitMQ's x-death history, cycle detection,
//! and delivery limits for poison messages (x-delivery-limit, x-delivery-count).

mod common;
#[path = "features/mod.rs"]
mod features;

use common::TestBroker;
use features::*;
use lapin::options::{
    BasicNackOptions, BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

fn plain() -> BasicProperties {
    BasicProperties::default()
}

async fn reject(ch: &lapin::Channel, queue: &str, requeue: bool) -> String {
    let message = get(ch, queue, false).await.expect("a message to reject");
    common::within(
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue }),
    )
    .await
    .unwrap();
    body(&message)
}

/// Takes the next message, nacks it with requeue, and returns its x-delivery-count.
async fn nack_requeue(ch: &lapin::Channel, queue: &str) -> Option<i64> {
    let message = get(ch, queue, false).await.expect("a message to nack");
    let count = header(&message, "x-delivery-count").map(as_int);
    let options = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    common::within(message.delivery.acker.nack(options))
        .await
        .unwrap();
    count
}

#[tokio::test]
async fn rejected_messages_go_to_the_dead_letter_exchange_with_their_history() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    let options = ExchangeDeclareOptions::default();
    common::within(ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Direct,
        options,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    common::declare(&ch, "dlq").await;
    common::within(ch.queue_bind(
        "dlq".into(),
        "dlx".into(),
        "dead".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let arguments = args(&[
        ("x-dead-letter-exchange", text("dlx")),
        ("x-dead-letter-routing-key", text("dead")),
    ]);
    declare_with(&ch, "work", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&ch, "work", "a", plain()).await;
    publish(&ch, "work", "b", plain()).await;
    publish(&ch, "work", "c", plain()).await;
    assert_eq!(reject(&ch, "work", false).await, "a");
    // nack without requeue dead-letters too; with requeue it does not.
    let b = get(&ch, "work", false).await.unwrap();
    let nack = BasicNackOptions {
        requeue: false,
        multiple: false,
    };
    common::within(b.delivery.acker.nack(nack)).await.unwrap();
    assert_eq!(reject(&ch, "work", true).await, "c");
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 2 }).await;
    assert_eq!(ready(&ch, "work").await, 1);

    let dead = get(&ch, "dlq", true).await.unwrap();
    assert_eq!(body(&dead), "a");
    assert_eq!(dead.delivery.routing_key.as_str(), "dead");
    assert_eq!(dead.delivery.exchange.as_str(), "dlx");
    let history = deaths(&dead);
    assert_eq!(history.len(), 1);
    let death = &history[0];
    assert_eq!(as_text(&field(death, "reason")), "rejected");
    assert_eq!(as_text(&field(death, "queue")), "work");
    assert_eq!(as_text(&field(death, "exchange")), "");
    assert_eq!(as_int(&field(death, "count")), 1);
    assert!(matches!(
        field(death, "time"),
        lapin::types::AMQPValue::Timestamp(_)
    ));
    match field(death, "routing-keys") {
        lapin::types::AMQPValue::FieldArray(keys) => {
            assert_eq!(keys.as_slice().len(), 1);
            assert_eq!(as_text(&keys.as_slice()[0]), "work");
        }
        other => panic!("routing-keys {other:?}"),
    }
    for (name, value) in [
        ("x-first-death-reason", "rejected"),
        ("x-first-death-queue", "work"),
        ("x-first-death-exchange", ""),
        ("x-last-death-reason", "rejected"),
        ("x-last-death-queue", "work"),
    ] {
        assert_eq!(as_text(header(&dead, name).unwrap()), value, "{name}");
    }
}

#[tokio::test]
async fn a_cycle_of_expiries_is_dropped_but_rejections_may_cycle() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    // Expiring back into itself: RabbitMQ drops the message rather than loop forever.
    let looping = args(&[
        ("x-message-ttl", long(20)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("loop")),
    ]);
    declare_with(&ch, "loop", QueueDeclareOptions::default(), looping)
        .await
        .unwrap();
    publish(&ch, "loop", "x", plain()).await;
    eventually(common::STEP, || async { ready(&ch, "loop").await == 0 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(ready(&ch, "loop").await, 0, "dropped, not cycled");

    // A consumer rejecting back into the same queue is its own choice: counted each time.
    let retry = args(&[
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("retry")),
    ]);
    declare_with(&ch, "retry", QueueDeclareOptions::default(), retry)
        .await
        .unwrap();
    publish(&ch, "retry", "y", plain()).await;
    reject(&ch, "retry", false).await;
    eventually(common::STEP, || async { ready(&ch, "retry").await == 1 }).await;
    reject(&ch, "retry", false).await;
    eventually(common::STEP, || async { ready(&ch, "retry").await == 1 }).await;
    let again = get(&ch, "retry", true).await.unwrap();
    let history = deaths(&again);
    assert_eq!(history.len(), 1, "one entry per queue and reason");
    assert_eq!(as_int(&field(&history[0], "count")), 2);
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_past_its_delivery_limit() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[
        ("x-delivery-limit", long(2)),
        ("x-dead-letter-exchange", text("dlx")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&ch, "q", "poison", plain()).await;
    assert_eq!(nack_requeue(&ch, "q").await, None, "first delivery");
    assert_eq!(nack_requeue(&ch, "q").await, Some(1));
    assert_eq!(nack_requeue(&ch, "q").await, Some(2));
    // Three returns with a limit of two: it is not delivered again.
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 1 }).await;
    assert_eq!(ready(&ch, "q").await, 0);
    let dead = get(&ch, "dlq", true).await.unwrap();
    assert_eq!(
        as_text(&field(&deaths(&dead)[0], "reason")),
        "delivery_limit"
    );
}

#[tokio::test]
async fn a_consumer_that_dies_counts_as_a_return_and_no_dlx_drops() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let arguments = args(&[("x-delivery-limit", long(1))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&ch, "q", "poison", plain()).await;
    for _ in 0..2 {
        // Taken and never settled: the channel goes away with it, like a crashing worker.
        let worker = conn.create_channel().await.unwrap();
        assert!(get(&worker, "q", false).await.is_some());
        common::within(worker.close(200, "crash".into()))
            .await
            .unwrap();
    }
    // Two returns past a limit of one, no dead-letter exchange: dropped.
    eventually(common::STEP, || async { ready(&ch, "q").await == 0 }).await;
    assert!(get(&ch, "q", true).await.is_none());
}

#[tokio::test]
async fn delivery_counts_survive_a_restart() {
    let broker = TestBroker::start().await;
    let (conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", true).await;
    let arguments = args(&[
        ("x-delivery-limit", long(3)),
        ("x-dead-letter-exchange", text("dlx")),
    ]);
    declare_with(&ch, "q", durable(), arguments).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    publish(&ch, "q", "poison", persistent).await;
    assert_eq!(nack_requeue(&ch, "q").await, None);
    assert_eq!(nack_requeue(&ch, "q").await, Some(1));
    drop((ch, conn));
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    assert_eq!(nack_requeue(&ch, "q").await, Some(2));
    assert_eq!(nack_requeue(&ch, "q").await, Some(3));
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 1 }).await;
    assert_eq!(ready(&ch, "q").await, 0);
}
