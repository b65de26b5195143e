//! Direct reply-to (`amq.rabbitmq.reply-to`): RPC replies without a reply queue, as RabbitMQ
//! implements it (https://www.rabbitmq.com/docs/direct-reply-to).

mod common;

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

const REPLY_TO: &str = "amq.rabbitmq.reply-to";
const STEP: Duration = Duration::from_secs(5);

async fn declare(ch: &Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

fn no_ack() -> BasicConsumeOptions {
    BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn reply_reaches_the_requesting_channel_without_a_queue() {
    let broker = common::TestBroker::start().await;
    let server_conn = common::lapin(&broker).await;
    let server = server_conn.create_channel().await.unwrap();
    declare(&server, "rpc").await;
    let mut requests = server
        .basic_consume("rpc".into(), "srv".into(), no_ack(), FieldTable::default())
        .await
        .unwrap();

    let client_conn = common::lapin(&broker).await;
    let client = client_conn.create_channel().await.unwrap();
    let mut replies = client
        .basic_consume(REPLY_TO.into(), "".into(), no_ack(), FieldTable::default())
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_reply_to(ShortString::from(REPLY_TO))
        .with_correlation_id(ShortString::from("req-1"));
    client
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"2+2",
            props,
        )
        .await
        .unwrap();

    let request = tokio::time::timeout(STEP, requests.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let reply_to = request
        .properties
        .reply_to()
        .clone()
        .expect("reply_to set")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "rewritten address: {reply_to}"
    );
    let reply_props = BasicProperties::default().with_correlation_id(ShortString::from("req-1"));
    server
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = server
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"4",
            reply_props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    assert!(
        confirm.take_message().is_none(),
        "a delivered reply is not returned"
    );

    let reply = tokio::time::timeout(STEP, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.data, b"4");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("req-1")
    );
    assert_eq!(reply.routing_key.as_str(), reply_to);
    broker.shutdown().await;
}

#[tokio::test]
async fn publishing_with_reply_to_but_no_reply_consumer_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "rpc").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_reply_to(ShortString::from(REPLY_TO));
    let outcome = ch
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"x",
            props,
        )
        .await
        .unwrap()
        .await;
    let err = outcome.expect_err("the channel is closed");
    assert!(
        err.to_string().contains("406") || err.to_string().contains("PRECONDITION_FAILED"),
        "{err}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn reply_consumer_must_be_no_ack() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("acking reply consumers are refused");
    assert!(
        err.to_string().contains("406") || err.to_string().contains("PRECONDITION_FAILED"),
        "{err}"
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn reply_to_a_requester_that_is_gone_is_unroutable() {
    let broker = common::TestBroker::start().await;
    let client_conn = common::lapin(&broker).await;
    let client = client_conn.create_channel().await.unwrap();
    // Held: dropping a lapin consumer cancels it.
    let _replies = client
        .basic_consume(REPLY_TO.into(), "".into(), no_ack(), FieldTable::default())
        .await
        .unwrap();
    let server_conn = common::lapin(&broker).await;
    let server = server_conn.create_channel().await.unwrap();
    declare(&server, "rpc").await;
    let props = BasicProperties::default().with_reply_to(ShortString::from(REPLY_TO));
    client
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"q",
            props,
        )
        .await
        .unwrap();
    let request = tokio::time::timeout(STEP, async {
        loop {
            if let Some(m) = server
                .basic_get("rpc".into(), Default::default())
                .await
                .unwrap()
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let reply_to = request
        .delivery
        .properties
        .reply_to()
        .clone()
        .unwrap()
        .to_string();
    client_conn.close(200, "bye".into()).await.unwrap();

    server
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirm = server
        .basic_publish(
            "".into(),
            reply_to.as_str().into(),
            mandatory,
            b"late",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let returned = confirm.take_message().expect("returned as unroutable");
    assert_eq!(returned.reply_code, 312);
    broker.shutdown().await;
}

#[tokio::test]
async fn the_pseudo_queue_can_be_declared_passively() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let ok = ch
        .queue_declare(
            REPLY_TO.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(ok.message_count(), 0);
    broker.shutdown().await;
}
