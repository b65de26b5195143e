//! Length limits (x-max-length, x-max-length-bytes) with RabbitMQ's overflow policies, and
//! the 406 answers for badly typed queue arguments.

mod common;
#[path = "features/mod.rs"]
mod features;

use common::TestBroker;
use features::*;
use lapin::options::{ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

fn plain() -> BasicProperties {
    BasicProperties::default()
}

#[tokio::test]
async fn max_length_drops_the_oldest_and_dead_letters_them_as_maxlen() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[
        ("x-max-length", long(3)),
        ("x-dead-letter-exchange", text("dlx")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    for n in 1..=5 {
        publish(&ch, "q", &n.to_string(), plain()).await;
    }
    assert_eq!(ready(&ch, "q").await, 3);
    assert_eq!(drain(&ch, "q").await, ["3", "4", "5"]);
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 2 }).await;
    let first = get(&ch, "dlq", true).await.unwrap();
    assert_eq!(body(&first), "1");
    let death = &deaths(&first)[0];
    assert_eq!(as_text(&field(death, "reason")), "maxlen");
    assert_eq!(as_text(&field(death, "queue")), "q");
}

#[tokio::test]
async fn max_length_bytes_counts_bodies() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-max-length-bytes", long(10))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    for body in ["aaaa", "bbbb", "cccc", "dddd"] {
        publish(&ch, "q", body, plain()).await;
    }
    // 4-byte bodies: two fit in 10 bytes, the oldest make room.
    assert_eq!(drain(&ch, "q").await, ["cccc", "dddd"]);
}

#[tokio::test]
async fn reject_publish_nacks_the_newest_under_confirms() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    within_confirms(&ch).await;
    let arguments = args(&[
        ("x-max-length", long(2)),
        ("x-overflow", text("reject-publish")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    assert!(publish(&ch, "q", "1", plain()).await);
    assert!(publish(&ch, "q", "2", plain()).await);
    assert!(
        !publish(&ch, "q", "3", plain()).await,
        "over the limit: nack"
    );
    assert_eq!(ready(&ch, "q").await, 2);
    assert_eq!(body(&get(&ch, "q", true).await.unwrap()), "1");
    assert!(
        publish(&ch, "q", "4", plain()).await,
        "room again after a get"
    );
    assert_eq!(drain(&ch, "q").await, ["2", "4"]);
}

#[tokio::test]
async fn reject_publish_dlx_dead_letters_what_it_refuses() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    within_confirms(&ch).await;
    sink(&ch, "dlx", "dlq", false).await;
    let arguments = args(&[
        ("x-max-length", long(1)),
        ("x-overflow", text("reject-publish-dlx")),
        ("x-dead-letter-exchange", text("dlx")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    assert!(publish(&ch, "q", "kept", plain()).await);
    assert!(!publish(&ch, "q", "refused", plain()).await);
    eventually(common::STEP, || async { ready(&ch, "dlq").await == 1 }).await;
    let dead = get(&ch, "dlq", true).await.unwrap();
    assert_eq!(body(&dead), "refused");
    assert_eq!(as_text(&field(&deaths(&dead)[0], "reason")), "maxlen");
    assert_eq!(drain(&ch, "q").await, ["kept"]);
}

#[tokio::test]
async fn limits_hold_while_the_queue_pages_to_disk() {
    let broker = TestBroker::start_with(|config| config.queue_window_messages = 4).await;
    let (_conn, ch) = channel(&broker).await;
    let arguments = args(&[("x-max-length", long(10))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    for n in 0..30 {
        publish(&ch, "q", &n.to_string(), plain()).await;
    }
    let expected: Vec<String> = (20..30).map(|n| n.to_string()).collect();
    assert_eq!(drain(&ch, "q").await, expected);
}

#[tokio::test]
async fn bad_arguments_are_refused_with_rabbitmq_reasons() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let cases = [
        (
            args(&[("x-max-length", text("5"))]),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {unacceptable_type,longstr}",
        ),
        (
            args(&[("x-message-ttl", long(-1))]),
            "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_negative,-1}",
        ),
        (
            args(&[("x-expires", long(0))]),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}",
        ),
        (
            args(&[("x-max-priority", long(256))]),
            "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {value_too_large,256,255}",
        ),
        (
            args(&[("x-overflow", text("drop-tail"))]),
            "invalid arg 'x-overflow' for queue 'q' in vhost '/': {invalid_overflow,<<\"drop-tail\">>}",
        ),
        (
            args(&[("x-dead-letter-routing-key", text("k"))]),
            "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined",
        ),
    ];
    for (arguments, reason) in cases {
        let ch = conn.create_channel().await.unwrap();
        let refused = declare_with(&ch, "q", QueueDeclareOptions::default(), arguments).await;
        assert_eq!(
            refusal(refused),
            (406, format!("PRECONDITION_FAILED - {reason}"))
        );
    }
    // Nothing was created by the refused declares, and the connection is fine.
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert_eq!(
        refusal(declare_with(&ch, "q", passive, FieldTable::default()).await).0,
        404
    );
}

async fn within_confirms(ch: &lapin::Channel) {
    common::within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
}
