//! Priority queues (x-max-priority): higher priorities first, FIFO within a priority,
//! across paging and restarts; and TTLs that do not wait behind other priorities.

mod common;
#[path = "features/mod.rs"]
mod features;

use common::TestBroker;
use features::*;
use lapin::options::QueueDeclareOptions;
use lapin::BasicProperties;

fn priority(p: u8) -> BasicProperties {
    BasicProperties::default().with_priority(p)
}

#[tokio::test]
async fn higher_priorities_first_and_fifo_within_a_priority() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-max-priority", long(10))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    let sent = [
        ("a1", Some(0)),
        ("b1", Some(5)),
        ("none", None),
        ("a2", Some(0)),
        ("b2", Some(5)),
        ("c1", Some(9)),
        // Above the maximum counts as the maximum, as in RabbitMQ.
        ("d1", Some(200)),
    ];
    for (body, p) in sent {
        let props = p.map_or_else(BasicProperties::default, priority);
        publish(&ch, "q", body, props).await;
    }
    assert_eq!(
        drain(&ch, "q").await,
        ["d1", "c1", "b1", "b2", "a1", "none", "a2"]
    );
}

#[tokio::test]
async fn a_queue_without_max_priority_ignores_priorities() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    common::declare(&ch, "q").await;
    publish(&ch, "q", "low", priority(1)).await;
    publish(&ch, "q", "high", priority(9)).await;
    assert_eq!(drain(&ch, "q").await, ["low", "high"]);
}

fn expected_order(count: u32, levels: u32) -> Vec<String> {
    let mut order: Vec<(u32, u32)> = (0..count).map(|n| (n % levels, n)).collect();
    order.sort_by_key(|&(p, n)| (std::cmp::Reverse(p), n));
    order.into_iter().map(|(_, n)| n.to_string()).collect()
}

#[tokio::test]
async fn priorities_hold_while_paged_and_after_a_restart() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 4).await;
    let (conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-max-priority", long(3))]);
    declare_with(&ch, "q", durable(), arguments.clone())
        .await
        .unwrap();
    declare_with(&ch, "transient", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    for n in 0..40u32 {
        let props = priority((n % 4) as u8).with_delivery_mode(2);
        publish(&ch, "q", &n.to_string(), props.clone()).await;
        publish(&ch, "transient", &n.to_string(), props).await;
    }
    // Most of both queues is on disk (window of 4): paging keeps priority order.
    assert_eq!(drain(&ch, "transient").await, expected_order(40, 4));
    drop((ch, conn));
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    assert_eq!(drain(&ch, "q").await, expected_order(40, 4));
}

#[tokio::test]
async fn a_short_ttl_expires_behind_other_priorities() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[
        ("x-max-priority", long(5)),
        ("x-dead-letter-exchange", text("dlx")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    publish(&ch, "q", "urgent", priority(5)).await;
    publish(&ch, "q", "low", priority(1)).await;
    publish(
        &ch,
        "q",
        "urgent-short",
        priority(5).with_expiration("50".into()),
    )
    .await;
    publish(
        &ch,
        "q",
        "low-short",
        priority(1).with_expiration("50".into()),
    )
    .await;
    // Neither short-lived message is at the head of the queue, and both expire on time.
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 2 }).await;
    assert_eq!(drain(&ch, "q").await, ["urgent", "low"]);
    let mut dead = drain(&ch, "dlq").await;
    dead.sort();
    assert_eq!(dead, ["low-short", "urgent-short"]);
}
