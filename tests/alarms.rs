//! Resource alarms: while memory or disk runs short, connections that publish are blocked
//! (connection.blocked, then their socket is not read) and consumers keep being served;
//! when the alarm clears they get connection.unblocked and carry on (RabbitMQ's behaviour,
//! https://www.rabbitmq.com/docs/connection-blocked).

mod common;
mod raw;

use std::time::Duration;

use common::TestBroker;
use ferrymq_wire::{BasicPublish, Method, QueueDeclare, ShortStr};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use raw::RawClient;

fn publish(routing_key: &str) -> Method {
    Method::BasicPublish(BasicPublish {
        routing_key: ShortStr::from(routing_key),
        ..Default::default()
    })
}

fn passive_declare(queue: &str) -> Method {
    Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::from(queue),
        passive: true,
        ..Default::default()
    })
}

async fn publish_one(client: &mut RawClient, queue: &str, body: &[u8]) {
    client.send(1, publish(queue)).await;
    client.send_header(1, body.len() as u64).await;
    client.send_body(1, body).await;
}

/// Sets the disk limit and waits until the broker's monitor has seen it (it samples every
/// 500 ms): a tiny data directory limit is how operators trigger it too.
async fn set_disk_limit(broker: &TestBroker, bytes: u64) {
    broker.alarm_limits().lock().disk_free_limit_bytes = bytes;
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

#[tokio::test]
async fn a_disk_alarm_blocks_publishers_but_not_consumers() {
    let broker = TestBroker::start().await;
    let mut publisher = RawClient::open(broker.addr).await;
    publisher.open_channel(1).await;
    publisher
        .send(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: "q".into(),
                ..Default::default()
            }),
        )
        .await;
    assert!(matches!(
        publisher.recv_method().await,
        (1, Method::QueueDeclareOk(_))
    ));
    publish_one(&mut publisher, "q", b"before").await;
    // A round trip, so that "before" is taken before the alarm is raised.
    publisher.send(1, passive_declare("q")).await;
    assert!(matches!(
        publisher.recv_method().await,
        (1, Method::QueueDeclareOk(_))
    ));

    set_disk_limit(&broker, u64::MAX).await;
    publish_one(&mut publisher, "q", b"during").await;
    match publisher.recv_method().await {
        (0, Method::ConnectionBlocked(blocked)) => {
            assert_eq!(blocked.reason.as_str(), "low on disk")
        }
        other => panic!("expected connection.blocked, got {other:?}"),
    }
    // While blocked the broker does not read: this declare stays unanswered.
    publisher.send(1, passive_declare("q")).await;
    let unanswered =
        tokio::time::timeout(Duration::from_millis(700), publisher.recv_method()).await;
    assert!(
        unanswered.is_err(),
        "a blocked connection was served: {unanswered:?}"
    );

    // A consumer is not blocked: it drains what was published.
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get("q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"before");
    let got = ch
        .basic_get("q".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(
        got.delivery.data, b"during",
        "the publish that ran into the alarm was taken"
    );

    set_disk_limit(&broker, 0).await;
    assert!(matches!(
        publisher.recv_method().await,
        (0, Method::ConnectionUnblocked(_))
    ));
    match publisher.recv_method().await {
        (1, Method::QueueDeclareOk(ok)) => assert_eq!(ok.message_count, 0),
        other => panic!("expected the held declare to be answered, got {other:?}"),
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("q".into(), passive, FieldTable::default())
        .await
        .unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn connections_that_only_consume_are_never_blocked() {
    // A disk limit no disk can meet, from the configuration: the alarm is up from the start.
    let broker = TestBroker::start_with(|c| c.disk_free_limit_bytes = u64::MAX).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut consumer = RawClient::open(broker.addr).await;
    consumer.open_channel(1).await;
    consumer
        .send(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: "c".into(),
                ..Default::default()
            }),
        )
        .await;
    assert!(matches!(
        consumer.recv_method().await,
        (1, Method::QueueDeclareOk(_))
    ));
    // While a publisher on the same broker is blocked at once.
    let mut publisher = RawClient::open(broker.addr).await;
    publisher.open_channel(1).await;
    publish_one(&mut publisher, "c", b"x").await;
    assert!(matches!(
        publisher.recv_method().await,
        (0, Method::ConnectionBlocked(_))
    ));
    broker.shutdown().await;
}
