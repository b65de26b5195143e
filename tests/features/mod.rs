//! Helpers for the queue-feature tests (priority, TTL, dead-lettering, limits): declaring
//! with arguments, publishing with properties, reading messages and their headers.
#![allow(dead_code)]

use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use crate::common::{within, TestBroker};

pub async fn channel(broker: &TestBroker) -> (Connection, Channel) {
    let conn = crate::common::lapin(broker).await;
    let ch = within(conn.create_channel()).await.unwrap();
    (conn, ch)
}

pub fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

pub fn long(value: i64) -> AMQPValue {
    AMQPValue::LongLongInt(value)
}

pub fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub async fn declare_with(
    ch: &Channel,
    queue: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(ch.queue_declare(queue.into(), options, arguments)).await
}

/// A fanout exchange `exchange` feeding queue `queue` (where dead letters are collected).
pub async fn sink(ch: &Channel, exchange: &str, queue: &str, durable: bool) {
    let options = ExchangeDeclareOptions {
        durable,
        ..Default::default()
    };
    within(ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Fanout,
        options,
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let queue_options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    declare_with(ch, queue, queue_options, FieldTable::default())
        .await
        .unwrap();
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

/// Publishes to the default exchange and waits for the confirm when the channel has
/// confirms on; returns whether it was acked (true without confirms).
pub async fn publish(ch: &Channel, queue: &str, body: &str, props: BasicProperties) -> bool {
    publish_to(ch, "", queue, body, props).await
}

pub async fn publish_to(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    props: BasicProperties,
) -> bool {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    ))
    .await
    .unwrap();
    match within(confirm).await.unwrap() {
        Confirmation::Nack(_) => false,
        Confirmation::Ack(_) | Confirmation::NotRequested => true,
    }
}

pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack }))
        .await
        .unwrap()
}

pub fn body(message: &BasicGetMessage) -> String {
    String::from_utf8(message.delivery.data.clone()).unwrap()
}

/// Takes every ready message (no-ack) and returns the bodies in delivery order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(message) = get(ch, queue, true).await {
        out.push(body(&message));
    }
    out
}

pub fn header<'a>(message: &'a BasicGetMessage, name: &str) -> Option<&'a AMQPValue> {
    message
        .delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(name)
}

pub fn as_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

pub fn as_int(value: &AMQPValue) -> i64 {
    match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// The entries of the `x-death` header, most recent first.
pub fn deaths(message: &BasicGetMessage) -> Vec<FieldTable> {
    let Some(AMQPValue::FieldArray(entries)) = header(message, "x-death") else {
        return Vec::new();
    };
    let entries: &FieldArray = entries;
    entries
        .as_slice()
        .iter()
        .map(|e| match e {
            AMQPValue::FieldTable(t) => t.clone(),
            other => panic!("x-death entry {other:?}"),
        })
        .collect()
}

pub fn field(table: &FieldTable, name: &str) -> AMQPValue {
    table
        .inner()
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no '{name}' in {table:?}"))
}

/// Ready messages, by a passive declare (see `common::ready`).
pub async fn ready(ch: &Channel, queue: &str) -> u32 {
    crate::common::ready(ch, queue).await
}

/// Polls `check` until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The AMQP error a refused operation got: (reply code, reply text).
pub fn refusal<T: std::fmt::Debug>(result: lapin::Result<T>) -> (u16, String) {
    let error = result.expect_err("the broker should have refused this");
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}
