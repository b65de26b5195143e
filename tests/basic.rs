//! The basic class over real TCP: consume, cancel, qos, ack/nack/reject, get, recover,
//! large bodies, properties and a slow consumer. RabbitMQ's documented behaviour is the
//! reference; each test names the rule it pins (rabbit_channel.erl, rabbitmq.com docs).
//!
//! Clients: lapin for most tests, amqprs for basic.get and large bodies, and a small raw
//! client (module `raw` below, over `ferrymq_wire`) where exact frames or reply codes matter
//! or where the client must stop reading its socket.

mod common;

use std::time::Duration;

use common::{declare, ready, reply_code, s, within, TestBroker};
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverAsyncOptions, BasicRecoverOptions,
    BasicRejectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long we wait to be confident that a delivery which must not come does not come.
const QUIET: Duration = Duration::from_millis(200);

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    within(ch.basic_publish(
        s(""),
        s(queue),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    ))
    .await
    .expect("basic.publish");
}

/// Publishes `m0`, `m1`, … and waits until all are enqueued.
async fn publish_numbered(ch: &Channel, queue: &str, range: std::ops::Range<usize>) {
    for i in range {
        publish(ch, queue, format!("m{i}").as_bytes()).await;
    }
    ready(ch, queue).await;
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8(delivery.data.clone()).expect("utf-8 body")
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(body).collect()
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// A consumer whose deliveries are forwarded to a channel we can wait on with a timeout.
struct Deliveries {
    consumer: Consumer,
    rx: mpsc::UnboundedReceiver<DeliveryResult>,
}

impl Deliveries {
    async fn start(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> Deliveries {
        let options = BasicConsumeOptions {
            no_ack,
            ..Default::default()
        };
        Self::try_start(ch, queue, tag, options)
            .await
            .expect("basic.consume")
    }

    async fn try_start(
        ch: &Channel,
        queue: &str,
        tag: &str,
        options: BasicConsumeOptions,
    ) -> lapin::Result<Deliveries> {
        let consumer =
            within(ch.basic_consume(s(queue), s(tag), options, FieldTable::default())).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(delivery);
            }
        });
        Ok(Deliveries { consumer, rx })
    }

    fn tag(&self) -> String {
        self.consumer.tag().to_string()
    }

    async fn next_result(&mut self) -> DeliveryResult {
        within(self.rx.recv()).await.expect("delegate gone")
    }

    async fn next(&mut self) -> Delivery {
        self.next_result()
            .await
            .expect("delivery, not an error")
            .expect("delivery, not a cancel")
    }

    async fn take(&mut self, n: usize) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Asserts that nothing arrives for a while.
    async fn assert_quiet(&mut self) {
        if let Ok(Some(got)) = timeout(QUIET, self.rx.recv()).await {
            let what = got.map(|d| d.map(|d| body(&d)));
            panic!("expected no delivery, got {what:?}");
        }
    }
}

async fn channel(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("channel.open")
}

async fn qos(ch: &Channel, count: u16, global: bool) {
    within(ch.basic_qos(count, BasicQosOptions { global }))
        .await
        .expect("basic.qos");
}

async fn ack(delivery: &Delivery) {
    within(delivery.acker.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
}

// ---------------------------------------------------------------------------------------
// consume, consumer tags, exclusive consumers, cancel

#[tokio::test]
async fn no_ack_consumer_receives_every_message_in_order() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut consumer = Deliveries::start(&ch, "q", "c1", true).await;
    publish_numbered(&ch, "q", 0..20).await;
    let got = consumer.take(20).await;
    assert_eq!(bodies(&got), numbered(0..20));
    assert!(got.iter().all(|d| !d.redelivered));
    // Delivery tags start at 1 and grow by one per delivery on the channel.
    let tags: Vec<u64> = got.iter().map(|d| d.delivery_tag).collect();
    assert_eq!(tags, (1..=20).collect::<Vec<u64>>());
    // no-ack: nothing is left in the queue, nothing comes back when the channel closes.
    within(ch.close(200, s("bye"))).await.unwrap();
    let ch = channel(&conn).await;
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn acked_deliveries_leave_the_queue_and_unacked_ones_stay() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..4).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c1", false).await;
    let got = consumer.take(4).await;
    assert_eq!(bodies(&got), numbered(0..4));
    ack(&got[0]).await;
    ack(&got[2]).await;
    within(consumer_ch.close(200, s("bye"))).await.unwrap();
    // The two unacked messages (m1, m3) are back, the acked ones are gone.
    assert_eq!(ready(&ch, "q").await, 2);
    let got = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body(&got.delivery), "m1");
    assert!(got.delivery.redelivered);
}

#[tokio::test]
async fn server_generates_amq_ctag_consumer_tags() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let a = Deliveries::start(&ch, "q", "", true).await;
    let b = Deliveries::start(&ch, "q", "", true).await;
    // RabbitMQ: rabbit_guid:binary(rabbit_guid:gen_secure(), "amq.ctag") for an empty tag.
    for tag in [a.tag(), b.tag()] {
        assert!(tag.starts_with("amq.ctag-"), "{tag}");
        assert!(tag.len() > "amq.ctag-".len() + 8, "{tag}");
    }
    assert_ne!(a.tag(), b.tag());
}

#[tokio::test]
async fn second_consumer_on_an_exclusively_consumed_queue_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _owner = Deliveries::try_start(&ch, "q", "owner", exclusive)
        .await
        .unwrap();
    // rabbit_channel: {error, exclusive_consume_unavailable} -> access_refused,
    // "queue 'q' in vhost '/' in exclusive use"; a channel error.
    let other = channel(&conn).await;
    let err = Deliveries::try_start(&other, "q", "other", BasicConsumeOptions::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    // Only that channel closed: the owner's channel still works.
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn exclusive_consume_on_a_queue_with_consumers_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let _first = Deliveries::start(&ch, "q", "first", false).await;
    let other = channel(&conn).await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let err = Deliveries::try_start(&other, "q", "x", exclusive)
        .await
        .err()
        .expect("refused");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
}

#[tokio::test]
async fn an_exclusive_consumer_that_cancels_frees_the_queue() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let _owner = Deliveries::try_start(&ch, "q", "owner", exclusive)
        .await
        .unwrap();
    within(ch.basic_cancel(s("owner"), BasicCancelOptions::default()))
        .await
        .unwrap();
    let mut next = Deliveries::start(&channel(&conn).await, "q", "next", true).await;
    publish_numbered(&ch, "q", 0..1).await;
    assert_eq!(body(&next.next().await), "m0");
}

#[tokio::test]
async fn consuming_from_a_missing_queue_is_404() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    let err = Deliveries::try_start(&ch, "missing", "c", BasicConsumeOptions::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
}

#[tokio::test]
async fn settling_after_cancel_or_queue_delete_is_harmless() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    publish_numbered(&ch, "q1", 0..2).await;
    publish_numbered(&ch, "q2", 0..1).await;
    let consumer_ch = channel(&conn).await;
    let mut c1 = Deliveries::start(&consumer_ch, "q1", "c1", false).await;
    let mut c2 = Deliveries::start(&consumer_ch, "q2", "c2", false).await;
    let held = c1.take(2).await;
    let gone = c2.next().await;
    // Deliveries outlive their consumer: after basic.cancel they can still be settled.
    within(consumer_ch.basic_cancel(s("c1"), BasicCancelOptions::default()))
        .await
        .unwrap();
    ack(&held[0]).await;
    within(held[1].acker.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    }))
    .await
    .unwrap();
    // And a delivery from a deleted queue can be acked without error (the queue is gone).
    within(ch.queue_delete(s("q2"), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(matches!(c2.next_result().await, Ok(None)));
    ack(&gone).await;
    assert_eq!(ready(&consumer_ch, "q1").await, 1);
}

#[tokio::test]
async fn per_consumer_and_global_prefetch_both_apply() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let consumers_ch = channel(&conn).await;
    // rabbitmq.com consumer-prefetch: with both set, each consumer is limited by its own
    // count and all of them together by the channel's.
    qos(&consumers_ch, 2, false).await;
    qos(&consumers_ch, 3, true).await;
    let mut a = Deliveries::start(&consumers_ch, "q", "a", false).await;
    let mut b = Deliveries::start(&consumers_ch, "q", "b", false).await;
    publish_numbered(&ch, "q", 0..10).await;
    let mut got = 0;
    while let Ok(Some(Ok(Some(_)))) = timeout(QUIET, async {
        tokio::select! {
            d = a.rx.recv() => d,
            d = b.rx.recv() => d,
        }
    })
    .await
    {
        got += 1;
    }
    assert_eq!(got, 3);
    assert_eq!(ready(&ch, "q").await, 7);
}

#[tokio::test]
async fn reused_consumer_tag_on_a_channel_closes_the_connection_with_530() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    raw.consume(1, "q", "dup", false).await;
    raw.send(1, raw::consume_method("q", "dup", false)).await;
    // rabbit_channel: protocol_error(not_allowed, "attempt to reuse consumer tag '~ts'"),
    // a hard error: connection.close 530 naming basic.consume (60, 20).
    let close = raw.expect_connection_close().await;
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (530, 60, 20)
    );
    assert!(close.reply_text.as_str().starts_with("NOT_ALLOWED"));
}

#[tokio::test]
async fn the_same_consumer_tag_may_be_used_on_another_channel() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let a = channel(&conn).await;
    let b = channel(&conn).await;
    declare(&a, "q").await;
    let _x = Deliveries::start(&a, "q", "same", false).await;
    let _y = Deliveries::start(&b, "q", "same", false).await;
    let q = within(a.queue_declare(
        s("q"),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q.consumer_count(), 2);
}

#[tokio::test]
async fn client_cancel_gets_cancel_ok_and_no_deliveries_follow() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut consumer = Deliveries::start(&ch, "q", "c1", true).await;
    publish_numbered(&ch, "q", 0..50).await;
    // Cancel while deliveries may be in flight; lapin waits for cancel-ok.
    within(ch.basic_cancel(s("c1"), BasicCancelOptions::default()))
        .await
        .expect("cancel-ok");
    let mut delivered_before_cancel_ok = 0;
    while let Ok(Some(result)) = timeout(QUIET, consumer.rx.recv()).await {
        match result {
            Ok(Some(_)) => delivered_before_cancel_ok += 1,
            Ok(None) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    publish_numbered(&ch, "q", 50..60).await;
    consumer.assert_quiet().await;
    // Everything not delivered before cancel-ok, plus the later ten, waits in the queue.
    assert_eq!(
        ready(&ch, "q").await as usize,
        60 - delivered_before_cancel_ok
    );
    let q = within(ch.queue_declare(
        s("q"),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(q.consumer_count(), 0);
}

#[tokio::test]
async fn cancel_of_an_unknown_consumer_tag_is_answered_with_cancel_ok() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    // rabbit_channel basic.cancel: "Spec requires we ignore this situation."
    raw.send(
        1,
        ferrymq_wire::Method::BasicCancel(ferrymq_wire::BasicCancel {
            consumer_tag: "nobody".to_string().into(),
            nowait: false,
        }),
    )
    .await;
    match raw.recv_method().await {
        (1, ferrymq_wire::Method::BasicCancelOk(ok)) => {
            assert_eq!(ok.consumer_tag.as_str(), "nobody")
        }
        other => panic!("expected cancel-ok, got {other:?}"),
    }
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers_with_basic_cancel() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    raw.consume(1, "q", "c1", false).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    within(ch.queue_delete(s("q"), QueueDeleteOptions::default()))
        .await
        .unwrap();
    // The raw client announced consumer_cancel_notify: the broker sends basic.cancel
    // (nowait) on the consumer's channel, as RabbitMQ's cancel_consumer does.
    match raw.recv_method().await {
        (1, ferrymq_wire::Method::BasicCancel(cancel)) => {
            assert_eq!(cancel.consumer_tag.as_str(), "c1");
            assert!(cancel.nowait);
        }
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    // And the lapin view: its consumer stream ends.
    declare(&ch, "q2").await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q2", "c2", false).await;
    within(ch.queue_delete(s("q2"), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(matches!(consumer.next_result().await, Ok(None)));
}

// ---------------------------------------------------------------------------------------
// round-robin and prefetch

#[tokio::test]
async fn consumers_on_one_queue_take_turns() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut a = Deliveries::start(&channel(&conn).await, "q", "a", true).await;
    let mut b = Deliveries::start(&channel(&conn).await, "q", "b", true).await;
    publish_numbered(&ch, "q", 0..10).await;
    let from_a = bodies(&a.take(5).await);
    let from_b = bodies(&b.take(5).await);
    a.assert_quiet().await;
    // Strict alternation, as RabbitMQ's round-robin over consumers with credit.
    let evens: Vec<String> = (0..10).step_by(2).map(|i| format!("m{i}")).collect();
    let odds: Vec<String> = (1..10).step_by(2).map(|i| format!("m{i}")).collect();
    assert!(
        (from_a == evens && from_b == odds) || (from_a == odds && from_b == evens),
        "{from_a:?} {from_b:?}"
    );
}

#[tokio::test]
async fn round_robin_respects_each_consumers_prefetch() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let (ca, cb) = (channel(&conn).await, channel(&conn).await);
    qos(&ca, 2, false).await;
    qos(&cb, 3, false).await;
    let mut a = Deliveries::start(&ca, "q", "a", false).await;
    let mut b = Deliveries::start(&cb, "q", "b", false).await;
    publish_numbered(&ch, "q", 0..10).await;
    let got_a = a.take(2).await;
    let got_b = b.take(3).await;
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(ready(&ch, "q").await, 5);
    // An ack gives exactly one unit of credit back.
    ack(&got_a[0]).await;
    let next = a.next().await;
    a.assert_quiet().await;
    assert_eq!(ready(&ch, "q").await, 4);
    let mut seen = bodies(&got_a);
    seen.extend(bodies(&got_b));
    seen.push(body(&next));
    seen.sort_by_key(|b| b[1..].parse::<u32>().unwrap());
    assert_eq!(seen, numbered(0..6));
}

#[tokio::test]
async fn per_consumer_prefetch_applies_to_each_consumer_on_the_channel() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let consumers_ch = channel(&conn).await;
    // basic.qos(global=false): "applied separately to each new consumer on the channel"
    // (rabbitmq.com consumer-prefetch); two consumers -> one unacked each.
    qos(&consumers_ch, 1, false).await;
    let mut a = Deliveries::start(&consumers_ch, "q", "a", false).await;
    let mut b = Deliveries::start(&consumers_ch, "q", "b", false).await;
    publish_numbered(&ch, "q", 0..6).await;
    let first_a = a.next().await;
    let first_b = b.next().await;
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(ready(&ch, "q").await, 4);
    ack(&first_a).await;
    let second_a = a.next().await;
    b.assert_quiet().await;
    assert_eq!(ready(&ch, "q").await, 3);
    ack(&first_b).await;
    ack(&second_a).await;
    a.next().await;
    b.next().await;
    assert_eq!(ready(&ch, "q").await, 1);
}

#[tokio::test]
async fn global_prefetch_is_shared_by_all_consumers_of_the_channel() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    let consumers_ch = channel(&conn).await;
    // basic.qos(global=true): one limit shared across the channel's consumers (and queues).
    qos(&consumers_ch, 1, true).await;
    let mut a = Deliveries::start(&consumers_ch, "q1", "a", false).await;
    let mut b = Deliveries::start(&consumers_ch, "q2", "b", false).await;
    publish_numbered(&ch, "q1", 0..3).await;
    publish_numbered(&ch, "q2", 0..3).await;
    let first = tokio::select! {
        d = a.next() => d,
        d = b.next() => d,
    };
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(ready(&ch, "q1").await + ready(&ch, "q2").await, 5);
    ack(&first).await;
    let _second = tokio::select! {
        d = a.next() => d,
        d = b.next() => d,
    };
    a.assert_quiet().await;
    b.assert_quiet().await;
    assert_eq!(ready(&ch, "q1").await + ready(&ch, "q2").await, 4);
}

#[tokio::test]
async fn raising_the_global_prefetch_lets_parked_deliveries_flow() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let consumer_ch = channel(&conn).await;
    qos(&consumer_ch, 1, true).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    publish_numbered(&ch, "q", 0..5).await;
    consumer.next().await;
    consumer.assert_quiet().await;
    // RabbitMQ's limiter applies a new channel prefetch at once (rabbit_limiter:limit_prefetch).
    qos(&consumer_ch, 10, true).await;
    assert_eq!(bodies(&consumer.take(4).await), numbered(1..5));
}

#[tokio::test]
async fn prefetch_size_is_not_implemented_and_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.send(
        1,
        ferrymq_wire::Method::BasicQos(ferrymq_wire::BasicQos {
            prefetch_size: 1024,
            prefetch_count: 10,
            global: false,
        }),
    )
    .await;
    // rabbit_channel: protocol_error(not_implemented, "prefetch_size!=0 (~w)").
    let close = raw.expect_connection_close().await;
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (540, 60, 10)
    );
}

// ---------------------------------------------------------------------------------------
// ack, nack, reject, requeue

#[tokio::test]
async fn requeued_message_returns_to_its_original_position() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..6).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    let got = consumer.take(6).await;
    assert_eq!(bodies(&got), numbered(0..6));
    // Cancelled first so that nothing is redelivered at once; the deliveries stay unacked.
    within(consumer_ch.basic_cancel(s("c"), BasicCancelOptions::default()))
        .await
        .unwrap();
    ack(&got[0]).await;
    ack(&got[2]).await;
    // Requeue m4, then m1, then m3: each goes back to its original position (classic
    // queues, rabbit_variable_queue requeue), marked redelivered; m5 stays out.
    within(got[4].acker.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    within(got[1].acker.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    }))
    .await
    .unwrap();
    within(got[3].acker.reject(BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    publish_numbered(&ch, "q", 6..8).await;
    let mut order = Vec::new();
    while let Some(got) = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        order.push((body(&got.delivery), got.delivery.redelivered));
    }
    let expected: Vec<(String, bool)> = [
        ("m1", true),
        ("m3", true),
        ("m4", true),
        ("m6", false),
        ("m7", false),
    ]
    .iter()
    .map(|(b, r)| (b.to_string(), *r))
    .collect();
    assert_eq!(order, expected);
}

#[tokio::test]
async fn a_requeued_message_goes_straight_back_to_a_consumer_with_credit() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..3).await;
    let consumer_ch = channel(&conn).await;
    qos(&consumer_ch, 1, false).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    let first = consumer.next().await;
    within(first.acker.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    }))
    .await
    .unwrap();
    // It is the oldest ready message again, so it is the next delivery.
    let again = consumer.next().await;
    assert_eq!((body(&again), again.redelivered), ("m0".to_string(), true));
    assert!(again.delivery_tag > first.delivery_tag);
}

#[tokio::test]
async fn nack_multiple_with_requeue_puts_every_message_back_in_order() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..6).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    let got = consumer.take(6).await;
    // nack(multiple, tag of m3): m0..m3 go back; m4 and m5 stay unacked.
    within(consumer_ch.basic_nack(
        got[3].delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    let again = consumer.take(4).await;
    assert_eq!(bodies(&again), numbered(0..4));
    assert!(again.iter().all(|d| d.redelivered));
    consumer.assert_quiet().await;
    // multiple with delivery tag 0 means "all outstanding" (AMQP 0-9-1 spec).
    within(consumer_ch.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    within(consumer_ch.close(200, s("bye"))).await.unwrap();
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn reject_and_nack_without_requeue_drop_the_message() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..3).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    let got = consumer.take(3).await;
    within(got[0].acker.reject(BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    within(got[1].acker.nack(BasicNackOptions {
        requeue: false,
        multiple: false,
    }))
    .await
    .unwrap();
    consumer.assert_quiet().await;
    within(consumer_ch.close(200, s("bye"))).await.unwrap();
    // Only the unsettled m2 comes back.
    assert_eq!(ready(&ch, "q").await, 1);
    let got = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body(&got.delivery), "m2");
}

/// Sends `settle` on a fresh channel holding deliveries m0..m2 and returns the reply code
/// that closed the channel.
async fn channel_error_after(settle: Vec<ferrymq_wire::Method>) -> (u16, u16, u16) {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    for i in 0..3 {
        raw.publish(1, "", "q", false, format!("m{i}").as_bytes())
            .await;
    }
    raw.consume(1, "q", "c", false).await;
    for _ in 0..3 {
        raw.expect_delivery().await;
    }
    for method in settle {
        raw.send(1, method).await;
    }
    let close = raw.expect_channel_close(1).await;
    (close.reply_code, close.class_id, close.method_id)
}

fn ack_method(delivery_tag: u64, multiple: bool) -> ferrymq_wire::Method {
    ferrymq_wire::Method::BasicAck(ferrymq_wire::BasicAck {
        delivery_tag,
        multiple,
    })
}

#[tokio::test]
async fn unknown_delivery_tag_closes_the_channel_with_406() {
    // rabbit_channel collect_acks: precondition_failed("unknown delivery tag ~w").
    assert_eq!(
        channel_error_after(vec![ack_method(99, false)]).await,
        (406, 60, 80)
    );
    let reject = ferrymq_wire::Method::BasicReject(ferrymq_wire::BasicReject {
        delivery_tag: 42,
        requeue: true,
    });
    assert_eq!(channel_error_after(vec![reject]).await, (406, 60, 90));
}

#[tokio::test]
async fn double_ack_closes_the_channel_with_406() {
    assert_eq!(
        channel_error_after(vec![ack_method(2, false), ack_method(2, false)]).await,
        (406, 60, 80)
    );
}

#[tokio::test]
async fn multiple_ack_naming_an_already_acked_tag_is_406() {
    // collect_acks walks the unacked queue until it finds the exact tag; with tag 2 acked
    // already, ack(2, multiple) finds none and fails even though tag 1 is outstanding.
    assert_eq!(
        channel_error_after(vec![ack_method(2, false), ack_method(2, true)]).await,
        (406, 60, 80)
    );
}

#[tokio::test]
async fn channel_error_requeues_what_the_channel_held_and_other_channels_go_on() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..3).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    consumer.take(3).await;
    within(consumer_ch.basic_ack(77, BasicAckOptions::default()))
        .await
        .unwrap();
    match consumer.next_result().await {
        Err(e) => assert_eq!(reply_code(&e), Some(406), "{e:?}"),
        other => panic!("expected the channel error, got {other:?}"),
    }
    assert_eq!(ready(&ch, "q").await, 3);
}

// ---------------------------------------------------------------------------------------
// unacked messages on channel and connection close, FIFO

#[tokio::test]
async fn unacked_messages_return_to_their_positions_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..10).await;
    let consumer_ch = channel(&conn).await;
    qos(&consumer_ch, 4, false).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    let got = consumer.take(4).await;
    ack(&got[1]).await;
    // The ack gave one unit of credit back: m4 is delivered too, then held unacked.
    assert_eq!(body(&consumer.next().await), "m4");
    within(consumer_ch.close(200, s("bye"))).await.unwrap();
    let reader = channel(&conn).await;
    let mut all = Deliveries::start(&reader, "q", "r", true).await;
    let again = all.take(9).await;
    let seen: Vec<(String, bool)> = again.iter().map(|d| (body(d), d.redelivered)).collect();
    let mut expected = vec![
        ("m0".to_string(), true),
        ("m2".to_string(), true),
        ("m3".to_string(), true),
        ("m4".to_string(), true),
    ];
    expected.extend((5..10).map(|i| (format!("m{i}"), false)));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn unacked_messages_return_to_their_positions_when_the_connection_closes() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..10).await;
    {
        let consumer_conn = common::lapin(&broker).await;
        let consumer_ch = channel(&consumer_conn).await;
        qos(&consumer_ch, 5, false).await;
        let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
        let got = consumer.take(5).await;
        ack(&got[0]).await;
        ack(&got[3]).await;
        // Two acks, two more deliveries (m5, m6), all held unacked when the connection goes.
        assert_eq!(bodies(&consumer.take(2).await), numbered(5..7));
        within(consumer_conn.close(200, s("bye"))).await.unwrap();
    }
    let mut all = Deliveries::start(&channel(&conn).await, "q", "r", true).await;
    let seen: Vec<(String, bool)> = all
        .take(8)
        .await
        .iter()
        .map(|d| (body(d), d.redelivered))
        .collect();
    let mut expected = vec![
        ("m1".to_string(), true),
        ("m2".to_string(), true),
        ("m4".to_string(), true),
        ("m5".to_string(), true),
        ("m6".to_string(), true),
    ];
    expected.extend((7..10).map(|i| (format!("m{i}"), false)));
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn unacked_messages_come_back_when_the_socket_just_drops() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..3).await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.consume(1, "q", "c", false).await;
    for _ in 0..3 {
        raw.expect_delivery().await;
    }
    drop(raw);
    let mut all = Deliveries::start(&channel(&conn).await, "q", "r", true).await;
    let got = all.take(3).await;
    assert_eq!(bodies(&got), numbered(0..3));
    assert!(got.iter().all(|d| d.redelivered));
}

#[tokio::test]
async fn ten_thousand_messages_keep_fifo_order() {
    const COUNT: usize = 10_000;
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut consumer = Deliveries::start(&channel(&conn).await, "q", "c", true).await;
    // Half published before consuming, half while consuming.
    for i in 0..COUNT {
        ch.basic_publish(
            s(""),
            s("q"),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    for i in 0..COUNT {
        let d = consumer.next().await;
        assert_eq!(body(&d), format!("m{i}"));
    }
}

// ---------------------------------------------------------------------------------------
// basic.get and basic.recover

#[tokio::test]
async fn basic_get_reports_the_remaining_count_and_get_empty() {
    let broker = TestBroker::start().await;
    let args = amqprs::connection::OpenConnectionArguments::new(
        &broker.addr.ip().to_string(),
        broker.addr.port(),
        "guest",
        "guest",
    );
    let conn = within(amqprs::connection::Connection::open(&args))
        .await
        .unwrap();
    let ch = within(conn.open_channel(None)).await.unwrap();
    within(ch.queue_declare(amqprs::channel::QueueDeclareArguments::new("q")))
        .await
        .unwrap();
    for i in 0..3 {
        within(ch.basic_publish(
            amqprs::BasicProperties::default(),
            format!("m{i}").into_bytes(),
            amqprs::channel::BasicPublishArguments::new("", "q"),
        ))
        .await
        .unwrap();
    }
    let mut remaining = Vec::new();
    let mut got_bodies = Vec::new();
    for _ in 0..3 {
        // get-ok's message-count is what is left after this message (RabbitMQ).
        let (get_ok, _, content) = within(ch.basic_get(amqprs::channel::BasicGetArguments {
            queue: "q".into(),
            no_ack: true,
        }))
        .await
        .unwrap()
        .expect("get-ok");
        remaining.push(get_ok.message_count());
        got_bodies.push(String::from_utf8(content).unwrap());
    }
    assert_eq!(remaining, vec![2, 1, 0]);
    assert_eq!(got_bodies, numbered(0..3));
    let empty = within(ch.basic_get(amqprs::channel::BasicGetArguments::new("q")))
        .await
        .unwrap();
    assert!(empty.is_none(), "get-empty");
    within(conn.close()).await.unwrap();
}

#[tokio::test]
async fn basic_get_with_ack_holds_the_message_until_acked() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..3).await;
    let getter = channel(&conn).await;
    let acked = within(getter.basic_get(s("q"), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .unwrap();
    let unacked = within(getter.basic_get(s("q"), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (acked.delivery.delivery_tag, unacked.delivery.delivery_tag),
        (1, 2)
    );
    assert_eq!(ready(&ch, "q").await, 1);
    ack(&acked.delivery).await;
    within(getter.close(200, s("bye"))).await.unwrap();
    // The unacked get comes back at the head, redelivered; the acked one is gone.
    assert_eq!(ready(&ch, "q").await, 2);
    let again = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body(&again.delivery), "m1");
    assert!(again.delivery.redelivered);
    assert_eq!(again.message_count, 1);
}

#[tokio::test]
async fn recover_requeues_unacked_messages_as_redelivered() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..3).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    let got = consumer.take(3).await;
    ack(&got[1]).await;
    within(consumer_ch.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .expect("recover-ok");
    let again = consumer.take(2).await;
    assert_eq!(bodies(&again), vec!["m0", "m2"]);
    assert!(again.iter().all(|d| d.redelivered));
    // New delivery tags: the old ones are gone.
    assert!(again.iter().all(|d| d.delivery_tag > 3));
}

#[tokio::test]
async fn recover_async_requeues_unacked_messages() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..2).await;
    let consumer_ch = channel(&conn).await;
    let mut consumer = Deliveries::start(&consumer_ch, "q", "c", false).await;
    consumer.take(2).await;
    within(consumer_ch.basic_recover_async(BasicRecoverAsyncOptions { requeue: true }))
        .await
        .unwrap();
    let again = consumer.take(2).await;
    assert_eq!(bodies(&again), numbered(0..2));
    assert!(again.iter().all(|d| d.redelivered));
}

#[tokio::test]
async fn recover_without_requeue_is_not_implemented_540() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.send(
        1,
        ferrymq_wire::Method::BasicRecover(ferrymq_wire::BasicRecover { requeue: false }),
    )
    .await;
    // rabbit_channel: basic.recover_async{requeue=false} -> not_implemented "requeue=false";
    // basic.recover delegates to it, so both are 540 connection errors.
    let close = raw.expect_connection_close().await;
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (540, 60, 110)
    );
}

// ---------------------------------------------------------------------------------------
// bodies and properties

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 13) as u8)
        .collect()
}

#[tokio::test]
async fn large_bodies_spanning_many_frames_arrive_byte_for_byte() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    // frame_max 131072: 1 MiB and 3 MiB take 9 and 25 body frames; the others sit on
    // frame boundaries (payload max = frame_max - 8).
    let sizes = [
        1 << 20,
        3 << 20,
        131_072 - 8,
        131_072 - 7,
        2 * (131_072 - 8),
        0,
        1,
    ];
    // Published by amqprs, read back by lapin (consume) and amqprs (get).
    let args = amqprs::connection::OpenConnectionArguments::new(
        &broker.addr.ip().to_string(),
        broker.addr.port(),
        "guest",
        "guest",
    );
    let other = within(amqprs::connection::Connection::open(&args))
        .await
        .unwrap();
    let other_ch = within(other.open_channel(None)).await.unwrap();
    for (seed, &size) in sizes.iter().enumerate() {
        within(other_ch.basic_publish(
            amqprs::BasicProperties::default(),
            pattern(size, seed as u8),
            amqprs::channel::BasicPublishArguments::new("", "q"),
        ))
        .await
        .unwrap();
    }
    let mut consumer = Deliveries::start(&ch, "q", "c", true).await;
    for (seed, &size) in sizes.iter().enumerate() {
        let d = consumer.next().await;
        assert_eq!(d.data.len(), size);
        assert!(d.data == pattern(size, seed as u8), "body {seed} differs");
    }
    within(ch.basic_cancel(s("c"), BasicCancelOptions::default()))
        .await
        .unwrap();
    // And out through basic.get to amqprs.
    let big = pattern(3 << 20, 99);
    publish(&ch, "q", &big).await;
    ready(&ch, "q").await;
    let (_, _, content) = within(other_ch.basic_get(amqprs::channel::BasicGetArguments {
        queue: "q".into(),
        no_ack: true,
    }))
    .await
    .unwrap()
    .expect("get-ok");
    assert!(content == big, "basic.get body differs");
}

fn rich_properties() -> BasicProperties {
    let mut inner = FieldTable::default();
    inner.insert(s("depth"), AMQPValue::LongLongInt(2));
    let mut deeper = FieldTable::default();
    deeper.insert(s("leaf"), AMQPValue::LongString(LongString::from("yes")));
    inner.insert(s("deeper"), AMQPValue::FieldTable(deeper));
    let mut headers = FieldTable::default();
    headers.insert(s("nested"), AMQPValue::FieldTable(inner));
    headers.insert(s("text"), AMQPValue::LongString(LongString::from("héllo")));
    headers.insert(s("int"), AMQPValue::LongInt(-7));
    headers.insert(s("flag"), AMQPValue::Boolean(true));
    headers.insert(
        s("list"),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString(LongString::from("a")),
            AMQPValue::LongLongInt(1),
        ])),
    );
    BasicProperties::default()
        .with_content_type(s("application/json"))
        .with_content_encoding(s("identity"))
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id(s("corr-1"))
        .with_reply_to(s("amq.gen-reply"))
        .with_expiration(s("60000"))
        .with_message_id(s("msg-1"))
        .with_timestamp(1_700_000_000)
        .with_type(s("order.created"))
        .with_user_id(s("guest"))
        .with_app_id(s("ferrymq-tests"))
}

#[tokio::test]
async fn properties_pass_through_unchanged() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let props = rich_properties();
    within(ch.basic_publish(
        s(""),
        s("q"),
        BasicPublishOptions::default(),
        b"{}",
        props.clone(),
    ))
    .await
    .unwrap();
    within(ch.basic_publish(
        s(""),
        s("q"),
        BasicPublishOptions::default(),
        b"{}",
        props.clone(),
    ))
    .await
    .unwrap();
    ready(&ch, "q").await;
    let got = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.delivery.properties, props);
    let mut consumer = Deliveries::start(&channel(&conn).await, "q", "c", true).await;
    let delivered = consumer.next().await;
    assert_eq!(delivered.properties, props);
}

#[tokio::test]
async fn user_id_that_is_not_the_login_is_refused_with_406() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    let props = ferrymq_wire::BasicProperties {
        user_id: Some("mallory".to_string().into()),
        ..Default::default()
    };
    // rabbit_channel check_user_id_header: precondition_failed "user_id property set to
    // 'mallory' but authenticated user was 'guest'", a channel error on basic.publish.
    let close = raw.publish_refused(1, props).await;
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (406, 60, 40)
    );
    assert!(close.reply_text.as_str().contains("mallory"));
    // The matching user_id is accepted, and nothing of the refused publish was enqueued.
    raw.open_channel(2).await;
    let props = ferrymq_wire::BasicProperties {
        user_id: Some("guest".to_string().into()),
        ..Default::default()
    };
    raw.publish_with(2, "", "q", false, props.encode(), b"ok")
        .await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    assert_eq!(ready(&ch, "q").await, 1);
}

// ---------------------------------------------------------------------------------------
// a slow consumer

#[tokio::test]
async fn a_consumer_that_stops_reading_does_not_make_the_broker_buffer_everything() {
    const MESSAGES: usize = 2_000;
    const BODY_BYTES: usize = 32 * 1024;
    let broker = TestBroker::start_with(|config| config.client_window_bytes = 1024 * 1024).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "slow").await;
    declare(&ch, "other").await;
    // A consumer with unlimited prefetch whose client never reads its socket again.
    let mut slow = raw::Raw::open(&broker).await;
    slow.consume(1, "slow", "c", false).await;
    let payload = vec![7u8; BODY_BYTES];
    for _ in 0..MESSAGES {
        ch.basic_publish(
            s(""),
            s("slow"),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    // 64 MiB published. The broker may have pushed the client window, its outbox and the
    // socket buffers towards the consumer, but not everything: most must still be ready.
    let still_ready = ready(&ch, "slow").await as usize;
    assert!(
        still_ready >= MESSAGES / 2,
        "only {still_ready} of {MESSAGES} still in the queue"
    );
    // Meanwhile other connections are served normally.
    let other_conn = common::lapin(&broker).await;
    let other_ch = channel(&other_conn).await;
    publish_numbered(&other_ch, "other", 0..100).await;
    let mut other = Deliveries::start(&other_ch, "other", "o", false).await;
    let got = other.take(100).await;
    assert_eq!(bodies(&got), numbered(0..100));
    // When the slow client goes away, everything it held comes back: nothing was lost.
    drop(slow);
    let mut drain = Deliveries::start(&channel(&conn).await, "slow", "d", true).await;
    for _ in 0..MESSAGES {
        assert_eq!(drain.next().await.data.len(), BODY_BYTES);
    }
    drain.assert_quiet().await;
}

#[path = "wire_client/mod.rs"]
mod raw;

/// A connection gathers the publishes of one read per queue and sends them in batches.
/// A burst in one write, longer than a batch and spread over two queues, arrives whole and
/// in order, and a get that follows it in the same write finds it there.
#[tokio::test]
async fn a_burst_of_publishes_in_one_write_arrives_whole_and_in_order() {
    use ferrymq_wire::{encode_method, BasicGet, BasicProperties, Method};
    // More than one batch (the broker's PUBLISH_BATCH_MESSAGES_MAX is 64) for queue "a".
    const MESSAGES: usize = 200;
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "a").await;
    raw.declare_queue(1, "b").await;
    let queue_of = |i: usize| if i.is_multiple_of(3) { "b" } else { "a" };
    let mut out = bytes::BytesMut::new();
    for i in 0..MESSAGES {
        let publish = raw::publish_method("", queue_of(i), false);
        let properties = BasicProperties::default().encode();
        raw::publish_frames(&mut out, 1, publish, properties, i.to_string().as_bytes());
    }
    let get = BasicGet {
        queue: "a".to_string().into(),
        no_ack: true,
        ..Default::default()
    };
    encode_method(&mut out, 1, &Method::BasicGet(get));
    raw.write(&out).await;
    let expected = |queue: &str| -> Vec<Vec<u8>> {
        (0..MESSAGES)
            .filter(|&i| queue_of(i) == queue)
            .map(|i| i.to_string().into_bytes())
            .collect()
    };
    let (a, b) = (expected("a"), expected("b"));
    match raw.recv_method().await {
        (1, Method::BasicGetOk(ok)) => assert_eq!(ok.message_count as usize, a.len() - 1),
        other => panic!("expected basic.get-ok, got {other:?}"),
    }
    assert_eq!(raw.content().await, a[0]);
    for (queue, expected) in [("a", &a[1..]), ("b", &b[..])] {
        raw.consume(1, queue, queue, true).await;
        for body in expected {
            assert_eq!(&raw.expect_delivery().await.1, body, "queue {queue}");
        }
    }
    raw.assert_quiet().await;
}

/// A queue tops up a consumer that holds most of its prefetch in batches, but never leaves
/// it waiting: a consumer that keeps its deliveries unacked until more arrive (here: 7 of a
/// prefetch of 8, after acking one) still gets the next message.
#[tokio::test]
async fn a_consumer_holding_most_of_its_prefetch_still_gets_the_next_message() {
    use ferrymq_wire::{BasicAck, BasicQos, Method};
    const PREFETCH: u16 = 8;
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    for i in 0..20 {
        raw.publish(1, "", "q", false, format!("{i}").as_bytes())
            .await;
    }
    let qos = BasicQos {
        prefetch_count: PREFETCH,
        ..Default::default()
    };
    raw.send(1, Method::BasicQos(qos)).await;
    assert!(matches!(
        raw.recv_method().await,
        (1, Method::BasicQosOk(_))
    ));
    raw.consume(1, "q", "c", false).await;
    let mut tags = Vec::new();
    for i in 0..PREFETCH {
        let (tag, body) = raw.expect_delivery().await;
        assert_eq!(body, format!("{i}").into_bytes());
        tags.push(tag);
    }
    raw.assert_quiet().await;
    let ack = BasicAck {
        delivery_tag: tags[0],
        multiple: false,
    };
    raw.send(1, Method::BasicAck(ack)).await;
    // One unit of prefetch is free: the ninth message comes (after a short wait at most).
    let (_, body) = raw.expect_delivery().await;
    assert_eq!(body, b"8");
    raw.assert_quiet().await;
}
