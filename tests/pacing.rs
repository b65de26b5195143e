//! Publisher pacing: a queue whose consumers fall behind slows its publishers down to the
//! consumers' pace instead of paging the excess to disk, and lets them go again once its
//! backlog is back in hand. Pacing is a delay, so a connection that publishes and consumes
//! at once can never wait on itself.

mod common;
#[path = "features/mod.rs"]
mod features;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestBroker;
use features::*;
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

const MESSAGES: u32 = 20_000;

async fn publish_all(ch: &lapin::Channel, queue: &str, count: u32) {
    for n in 0..count {
        // Not waiting for confirms (none asked): as fast as the connection takes them.
        let _not_confirmed = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &n.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
}

/// Consumes `count` messages and acks each; with `slow`, "processing" takes a millisecond
/// every tenth message (at most ~10k messages a second).
async fn consume(ch: lapin::Channel, queue: &str, count: u32, slow: bool, got: Arc<AtomicU32>) {
    common::within(ch.basic_qos(50, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = common::within(ch.basic_consume(
        queue.into(),
        "worker".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    while got.load(Ordering::Relaxed) < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("deliveries keep coming")
            .unwrap()
            .unwrap();
        if slow && got.load(Ordering::Relaxed).is_multiple_of(10) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        got.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_paces_its_publisher_and_lets_it_go_when_caught_up() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 2_000).await;
    let (_pconn, publisher) = channel(&broker).await;
    common::declare(&publisher, "q").await;
    let (_cconn, consumer_ch) = channel(&broker).await;
    let got = Arc::new(AtomicU32::new(0));
    let worker = tokio::spawn(consume(consumer_ch, "q", MESSAGES, true, Arc::clone(&got)));
    let queue = broker.broker().vhost("/").unwrap().queue("q").unwrap();
    let sender = tokio::spawn({
        let publisher = publisher.clone();
        async move { publish_all(&publisher, "q", MESSAGES).await }
    });
    // The backlog passes a quarter of the window while the consumer works: paced.
    let mut paced = 0;
    eventually(Duration::from_secs(30), || {
        let pace = queue.pace_ns();
        paced = paced.max(pace);
        async move { pace > 0 }
    })
    .await;
    assert!(paced > 0);
    sender.await.unwrap();
    worker.await.unwrap();
    assert_eq!(got.load(Ordering::Relaxed), MESSAGES);
    // Caught up: the next measurement lifts the pacing.
    publish(&publisher, "q", "one more", BasicProperties::default()).await;
    eventually(common::STEP, || async { queue.pace_ns() == 0 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_publishes_and_consumes_is_paced_but_never_stuck() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 1_000).await;
    let conn = common::lapin(&broker).await;
    let publisher = conn.create_channel().await.unwrap();
    let consumer_ch = conn.create_channel().await.unwrap();
    common::declare(&publisher, "q").await;
    let got = Arc::new(AtomicU32::new(0));
    let worker = tokio::spawn(consume(consumer_ch, "q", MESSAGES, false, Arc::clone(&got)));
    publish_all(&publisher, "q", MESSAGES).await;
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("every message consumed: pacing never deadlocks a connection")
        .unwrap();
    assert_eq!(got.load(Ordering::Relaxed), MESSAGES);
    assert_eq!(ready(&publisher, "q").await, 0);
}
