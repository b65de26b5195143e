//! Paging: a queue keeps `queue_window_messages` ready messages in memory and the rest on
//! disk, and order, requeues, acks and restarts behave as if everything were in memory.

mod common;

use std::time::Duration;

use common::TestBroker;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

const WINDOW: usize = 10;
const STEP: Duration = Duration::from_secs(10);

async fn small_window() -> TestBroker {
    TestBroker::start_with(|c| c.queue_window_messages = WINDOW).await
}

async fn publish_n(
    ch: &Channel,
    queue: &str,
    range: std::ops::Range<usize>,
    props: BasicProperties,
) {
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in range {
        let body = format!("m{i:05}");
        confirms.push(
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
            .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(tokio::time::timeout(STEP, confirm)
            .await
            .unwrap()
            .unwrap()
            .is_ack());
    }
}

async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = tokio::time::timeout(
        STEP,
        ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .unwrap()
    {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i:05}")).collect()
}

#[tokio::test]
async fn a_backlog_beyond_the_window_drains_in_order_from_disk() {
    let broker = small_window().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "deep".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_n(&ch, "deep", 0..1000, BasicProperties::default()).await;
    assert_eq!(
        common::ready(&ch, "deep").await,
        1000,
        "paged messages count as ready"
    );
    let paging = broker.data_dir().join("paging");
    assert!(
        std::fs::read_dir(&paging).map(|d| d.count()).unwrap_or(0) > 0,
        "the transient queue paged to disk"
    );
    assert_eq!(drain(&ch, "deep").await, expected(0..1000));
    broker.shutdown().await;
}

#[tokio::test]
async fn requeued_messages_keep_their_place_ahead_of_paged_ones() {
    let broker = small_window().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_n(&ch, "q", 0..50, BasicProperties::default()).await;
    let mut tags = Vec::new();
    for _ in 0..25 {
        let m = ch
            .basic_get("q".into(), BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        tags.push(m.delivery.delivery_tag);
    }
    ch.basic_nack(
        *tags.last().unwrap(),
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, "q").await, expected(0..50));
    broker.shutdown().await;
}

#[tokio::test]
async fn a_paged_durable_queue_comes_back_whole_after_a_restart() {
    let broker = small_window().await;
    {
        let conn = common::lapin(&broker).await;
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("dq".into(), durable, FieldTable::default())
            .await
            .unwrap();
        publish_n(
            &ch,
            "dq",
            0..300,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        // Transient messages beyond the window are on disk too, but not for a restart.
        let ch2 = conn.create_channel().await.unwrap();
        publish_n(&ch2, "dq", 300..320, BasicProperties::default()).await;
    }
    let broker = broker.restart().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(drain(&ch, "dq").await, expected(0..300));
    broker.shutdown().await;
}

#[tokio::test]
async fn purging_paged_messages_acks_them_on_disk() {
    let broker = small_window().await;
    {
        let conn = common::lapin(&broker).await;
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare("pq".into(), durable, FieldTable::default())
            .await
            .unwrap();
        publish_n(
            &ch,
            "pq",
            0..200,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        let purged = ch
            .queue_purge("pq".into(), Default::default())
            .await
            .unwrap();
        assert_eq!(purged, 200);
        publish_n(
            &ch,
            "pq",
            200..205,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    let broker = broker.restart().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        drain(&ch, "pq").await,
        expected(200..205),
        "purged messages stay purged"
    );
    broker.shutdown().await;
}
