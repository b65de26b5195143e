//! Message TTL (x-message-ttl, the expiration property) and queue expiry (x-expires).
//! Unlike RabbitMQ, which expires messages only when they reach the head of the queue,
//! ferrymq removes a message when its TTL runs out wherever it is.

mod common;
#[path = "features/mod.rs"]
mod features;

use std::time::Duration;

use common::TestBroker;
use features::*;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

fn expiring(ms: u64) -> BasicProperties {
    BasicProperties::default().with_expiration(ms.to_string().into())
}

#[tokio::test]
async fn queue_ttl_expires_messages_into_the_dead_letter_exchange() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[
        ("x-message-ttl", long(100)),
        ("x-dead-letter-exchange", text("dlx")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    for n in 0..3 {
        publish(&ch, "q", &n.to_string(), BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "q").await, 3, "not expired yet");
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 3 }).await;
    assert_eq!(ready(&ch, "q").await, 0);
    let dead = get(&ch, "dlq", true).await.unwrap();
    assert_eq!(body(&dead), "0");
    let death = &deaths(&dead)[0];
    assert_eq!(as_text(&field(death, "reason")), "expired");
    assert_eq!(as_text(&field(death, "queue")), "q");
    assert_eq!(as_text(&field(death, "exchange")), "");
    assert_eq!(as_int(&field(death, "count")), 1);
    assert_eq!(
        as_text(header(&dead, "x-first-death-reason").unwrap()),
        "expired"
    );
}

#[tokio::test]
async fn a_message_expires_on_time_behind_a_head_that_does_not() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[("x-dead-letter-exchange", text("dlx"))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&ch, "q", "head", BasicProperties::default()).await;
    publish(&ch, "q", "short", expiring(50)).await;
    publish(&ch, "q", "tail", BasicProperties::default()).await;
    // Nobody consumes: RabbitMQ would keep "short" until "head" left.
    eventually(common::STEP, || async { ready(&ch, "q").await == 2 }).await;
    let dead = get(&ch, "dlq", true).await.unwrap();
    assert_eq!(body(&dead), "short");
    let death = &deaths(&dead)[0];
    assert_eq!(as_text(&field(death, "original-expiration")), "50");
    assert_eq!(
        dead.delivery.properties.expiration(),
        &None,
        "the copy must not expire again"
    );
    assert_eq!(drain(&ch, "q").await, ["head", "tail"]);
}

#[tokio::test]
async fn the_shorter_of_queue_and_message_ttl_wins() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-message-ttl", long(60_000))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&ch, "q", "long", expiring(120_000)).await;
    publish(&ch, "q", "short", expiring(30)).await;
    eventually(common::STEP, || async { ready(&ch, "q").await == 1 }).await;
    assert_eq!(drain(&ch, "q").await, ["long"]);
}

#[tokio::test]
async fn paged_messages_expire_too() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 4).await;
    let (_conn, ch) = channel(&broker).await;
    declare_with(
        &ch,
        "q",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for n in 0..20 {
        // Every other message expires; most of them are on disk only.
        let props = if n % 2 == 0 {
            expiring(50)
        } else {
            BasicProperties::default()
        };
        publish(&ch, "q", &n.to_string(), props).await;
    }
    eventually(common::STEP, || async { ready(&ch, "q").await == 10 }).await;
    let odd: Vec<String> = (0..20)
        .filter(|n| n % 2 == 1)
        .map(|n| n.to_string())
        .collect();
    assert_eq!(drain(&ch, "q").await, odd);
}

#[tokio::test]
async fn a_queue_ttl_expires_a_backlog_that_is_mostly_on_disk() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 4).await;
    let (_conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[
        ("x-message-ttl", long(100)),
        ("x-dead-letter-exchange", text("dlx")),
        ("x-max-priority", long(2)),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    for n in 0..40u8 {
        let props = BasicProperties::default().with_priority(n % 3);
        publish(&ch, "q", &n.to_string(), props).await;
    }
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 40 }).await;
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn expiries_survive_a_restart() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 2).await;
    let (conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-message-ttl", long(3000))]);
    let published = std::time::Instant::now();
    declare_with(&ch, "q", durable(), arguments).await.unwrap();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for n in 0..5 {
        publish(&ch, "q", &n.to_string(), persistent.clone()).await;
    }
    publish(
        &ch,
        "q",
        "own",
        persistent.clone().with_expiration("300".into()),
    )
    .await;
    assert_eq!(ready(&ch, "q").await, 6);
    drop((ch, conn));
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    let left = ready(&ch, "q").await;
    if published.elapsed() < Duration::from_millis(2500) {
        // (A very slow machine may have passed the TTL already; the rest still holds.)
        assert!(left >= 5, "the queue TTL has not run out yet: {left}");
    }
    // The expiry is a wall-clock time kept on disk: it keeps counting across the restart.
    eventually(Duration::from_secs(10), || async {
        ready(&ch, "q").await == 0
    })
    .await;
}

#[tokio::test]
async fn bad_expiration_is_refused_with_406() {
    let broker = TestBroker::start().await;
    // A raw client sees the channel.close itself: through lapin the next call could race
    // the close and fail as "channel closing" instead of with the broker's reason.
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    let props = ferrymq_wire::BasicProperties {
        expiration: Some("soon".to_string().into()),
        ..Default::default()
    };
    let close = raw.publish_refused(1, props).await;
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (406, 60, 40)
    );
    assert!(
        close
            .reply_text
            .as_str()
            .contains("invalid expiration 'soon'"),
        "{}",
        close.reply_text
    );
}

#[tokio::test]
async fn an_unused_queue_expires_and_a_consumer_keeps_it() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-expires", long(200))]);
    declare_with(
        &ch,
        "short-lived",
        QueueDeclareOptions::default(),
        arguments.clone(),
    )
    .await
    .unwrap();
    declare_with(&ch, "watched", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    let consumer = common::within(ch.basic_consume(
        "watched".into(),
        "c".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let probe = broker.broker().vhost("/").unwrap();
    eventually(common::STEP, || async {
        probe.queue("short-lived").is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        probe.queue("watched").is_some(),
        "a consumer keeps it in use"
    );
    common::within(ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()))
        .await
        .unwrap();
    eventually(common::STEP, || async { probe.queue("watched").is_none() }).await;
}

#[path = "wire_client/mod.rs"]
mod raw;
