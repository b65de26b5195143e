//! Consumer features over real TCP with lapin: single active consumer, consumer priorities,
//! exclusive consumers next to them, and delivery acknowledgement timeouts. RabbitMQ's
//! behaviour is the reference; each test names the rule it pins.

mod common;

use std::time::Duration;

use common::{declare, ready, reply_code, s, within, TestBroker};
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long we wait to be confident that a delivery which must not come does not come.
const QUIET: Duration = Duration::from_millis(200);

/// Longer than one ack-timeout check interval (1 s) plus the longest timeout a test waits
/// out (1 s): a channel wrongly closed for a timeout would be closed by then.
const PAST_CHECKS: Duration = Duration::from_millis(2_200);

async fn channel(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("channel.open")
}

async fn qos(ch: &Channel, count: u16) {
    within(ch.basic_qos(count, BasicQosOptions { global: false }))
        .await
        .expect("basic.qos");
}

async fn publish(ch: &Channel, queue: &str, body: &str) {
    within(ch.basic_publish(
        s(""),
        s(queue),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    ))
    .await
    .expect("basic.publish");
}

/// Publishes `m<i>` for each i and waits until all are enqueued.
async fn publish_numbered(ch: &Channel, queue: &str, range: std::ops::Range<usize>) {
    for i in range {
        publish(ch, queue, &format!("m{i}")).await;
    }
    ready(ch, queue).await;
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.data).into_owned()
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(body).collect()
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (key, value) in entries {
        t.insert(s(key), value.clone());
    }
    t
}

fn priority(p: i32) -> FieldTable {
    table(&[("x-priority", AMQPValue::LongInt(p))])
}

async fn declare_with(ch: &Channel, queue: &str, arguments: FieldTable) -> lapin::Result<()> {
    within(ch.queue_declare(s(queue), QueueDeclareOptions::default(), arguments))
        .await
        .map(|_| ())
}

async fn declare_sac(ch: &Channel, queue: &str) {
    let args = table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    declare_with(ch, queue, args)
        .await
        .expect("queue.declare with x-single-active-consumer");
}

/// The reply text of an AMQP error (channel.close / connection.close) seen by lapin.
fn reply_text(error: &lapin::Error) -> Option<String> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_message().to_string()),
        _ => None,
    }
}

/// A manual-ack consumer whose deliveries (and channel errors) we can wait on.
struct Deliveries {
    consumer: Consumer,
    rx: mpsc::UnboundedReceiver<DeliveryResult>,
}

impl Deliveries {
    async fn start(ch: &Channel, queue: &str, tag: &str, arguments: FieldTable) -> Deliveries {
        Self::try_start(ch, queue, tag, BasicConsumeOptions::default(), arguments)
            .await
            .expect("basic.consume")
    }

    async fn try_start(
        ch: &Channel,
        queue: &str,
        tag: &str,
        options: BasicConsumeOptions,
        arguments: FieldTable,
    ) -> lapin::Result<Deliveries> {
        let consumer = within(ch.basic_consume(s(queue), s(tag), options, arguments)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(delivery);
            }
        });
        Ok(Deliveries { consumer, rx })
    }

    async fn next(&mut self) -> Delivery {
        within(self.rx.recv())
            .await
            .expect("delegate gone")
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

    /// Waits for the channel error that ends this consumer.
    async fn closed_with(&mut self) -> lapin::Error {
        match within(self.rx.recv()).await.expect("delegate gone") {
            Err(error) => error,
            Ok(Some(d)) => panic!("expected the channel to close, got {}", body(&d)),
            Ok(None) => panic!("expected the channel to close, got a cancel"),
        }
    }

    async fn assert_quiet(&mut self) {
        if let Ok(Some(got)) = timeout(QUIET, self.rx.recv()).await {
            let what = got.map(|d| d.map(|d| body(&d)));
            panic!("expected no delivery, got {what:?}");
        }
    }

    async fn cancel(&self, ch: &Channel) {
        within(ch.basic_cancel(self.consumer.tag(), BasicCancelOptions::default()))
            .await
            .expect("basic.cancel");
    }
}

async fn ack(delivery: &Delivery) {
    within(delivery.acker.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
}

async fn ack_all(deliveries: &[Delivery]) {
    for d in deliveries {
        ack(d).await;
    }
}

// ---------------------------------------------------------------------------------------
// single active consumer

#[tokio::test]
async fn single_active_consumer_serves_one_consumer_and_fails_over_in_registration_order() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare_sac(&ch, "q").await;
    let (ch_a, ch_b, ch_c) = (
        channel(&conn).await,
        channel(&conn).await,
        channel(&conn).await,
    );
    let mut a = Deliveries::start(&ch_a, "q", "a", FieldTable::default()).await;
    let mut b = Deliveries::start(&ch_b, "q", "b", FieldTable::default()).await;
    let mut c = Deliveries::start(&ch_c, "q", "c", FieldTable::default()).await;
    // The first consumer registered is the active one; the others get nothing.
    publish_numbered(&ch, "q", 0..3).await;
    assert_eq!(bodies(&a.take(3).await), numbered(0..3));
    b.assert_quiet().await;
    c.assert_quiet().await;
    // The active one's channel closes with all three unacked: they are requeued and go, in
    // their order and redelivered, to the next consumer by registration (b, not c).
    within(ch_a.close(200, s("bye"))).await.unwrap();
    let got = b.take(3).await;
    assert_eq!(bodies(&got), numbered(0..3));
    assert!(got.iter().all(|d| d.redelivered));
    c.assert_quiet().await;
    // basic.cancel fails over too.
    ack_all(&got).await;
    b.cancel(&ch_b).await;
    publish_numbered(&ch, "q", 3..4).await;
    assert_eq!(bodies(&c.take(1).await), numbered(3..4));
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn single_active_consumer_at_its_prefetch_limit_holds_messages_back() {
    // RabbitMQ: "Messages are always delivered to the active consumer, even if it is too
    // busy at some point ... the other consumers are ignored and messages are enqueued."
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare_sac(&ch, "q").await;
    let (ch_a, ch_b) = (channel(&conn).await, channel(&conn).await);
    qos(&ch_a, 1).await;
    let mut a = Deliveries::start(&ch_a, "q", "a", FieldTable::default()).await;
    let mut b = Deliveries::start(&ch_b, "q", "b", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..3).await;
    let first = a.next().await;
    assert_eq!(body(&first), "m0");
    b.assert_quiet().await;
    assert_eq!(ready(&ch, "q").await, 2);
    ack(&first).await;
    assert_eq!(body(&a.next().await), "m1");
    b.assert_quiet().await;
}

#[tokio::test]
async fn single_active_consumer_failover_picks_the_highest_priority_waiting_consumer() {
    // Classic queues (rabbit_queue_consumers:get_consumer): the active consumer keeps its
    // place while it lives; when it goes, the waiting consumer of highest priority wins,
    // whatever the registration order.
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare_sac(&ch, "q").await;
    let (ch_a, ch_b, ch_c) = (
        channel(&conn).await,
        channel(&conn).await,
        channel(&conn).await,
    );
    let mut a = Deliveries::start(&ch_a, "q", "a", priority(0)).await;
    let mut b = Deliveries::start(&ch_b, "q", "b", priority(0)).await;
    let mut c = Deliveries::start(&ch_c, "q", "c", priority(5)).await;
    publish_numbered(&ch, "q", 0..1).await;
    ack(&a.next().await).await;
    b.assert_quiet().await;
    c.assert_quiet().await;
    a.cancel(&ch_a).await;
    publish_numbered(&ch, "q", 1..2).await;
    assert_eq!(body(&c.next().await), "m1");
    b.assert_quiet().await;
}

#[tokio::test]
async fn exclusive_consume_on_a_single_active_consumer_queue_is_refused_with_403() {
    // rabbit_amqqueue_process: exclusive consume with SAC on -> exclusive_consume_unavailable,
    // even when the queue has no consumer yet.
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare_sac(&ch, "q").await;
    let other = channel(&conn).await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let err = Deliveries::try_start(&other, "q", "x", exclusive, FieldTable::default())
        .await
        .err()
        .expect("refused");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err).as_deref(),
        Some("ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use")
    );
    // A plain consumer is fine.
    let mut a = Deliveries::start(&ch, "q", "a", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..1).await;
    assert_eq!(body(&a.next().await), "m0");
}

#[tokio::test]
async fn basic_get_still_works_on_a_single_active_consumer_queue() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare_sac(&ch, "q").await;
    publish_numbered(&ch, "q", 0..1).await;
    let got = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(body(&got.delivery), "m0");
}

#[tokio::test]
async fn x_single_active_consumer_of_another_type_than_bool_is_refused_with_406() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    let args = table(&[(
        "x-single-active-consumer",
        AMQPValue::LongString(LongString::from("true")),
    )]);
    let err = declare_with(&ch, "q", args).await.expect_err("refused");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err).as_deref(),
        Some(
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue 'q' in \
             vhost '/': {unacceptable_type,longstr}"
        )
    );
    // Nothing was created.
    let ch = channel(&conn).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let err = within(ch.queue_declare(s("q"), passive, FieldTable::default()))
        .await
        .expect_err("no such queue");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
}

// ---------------------------------------------------------------------------------------
// consumer priorities

#[tokio::test]
async fn a_high_priority_consumer_with_credit_gets_every_message() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let (ch_low, ch_high) = (channel(&conn).await, channel(&conn).await);
    // Registered first, so plain round-robin would serve it first.
    let mut low = Deliveries::start(&ch_low, "q", "low", FieldTable::default()).await;
    let mut high = Deliveries::start(&ch_high, "q", "high", priority(10)).await;
    publish_numbered(&ch, "q", 0..10).await;
    assert_eq!(bodies(&high.take(10).await), numbered(0..10));
    low.assert_quiet().await;
}

#[tokio::test]
async fn lower_priority_consumers_get_messages_only_while_higher_ones_are_at_their_limit() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let (ch_low, ch_high) = (channel(&conn).await, channel(&conn).await);
    qos(&ch_high, 2).await;
    let mut low = Deliveries::start(&ch_low, "q", "low", priority(-5)).await;
    let mut high = Deliveries::start(&ch_high, "q", "high", priority(3)).await;
    publish_numbered(&ch, "q", 0..5).await;
    let high_got = high.take(2).await;
    assert_eq!(bodies(&high_got), numbered(0..2));
    assert_eq!(bodies(&low.take(3).await), numbered(2..5));
    // Once the high one has credit again, it is served first again.
    ack(&high_got[0]).await;
    publish_numbered(&ch, "q", 5..6).await;
    assert_eq!(body(&high.next().await), "m5");
    low.assert_quiet().await;
}

#[tokio::test]
async fn consumers_of_equal_priority_are_served_round_robin() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let (ch1, ch2, ch3) = (
        channel(&conn).await,
        channel(&conn).await,
        channel(&conn).await,
    );
    // Integer types other than long count too (x-priority is "any integer").
    let five_short = table(&[("x-priority", AMQPValue::ShortInt(5))]);
    let five_long = table(&[("x-priority", AMQPValue::LongLongInt(5))]);
    let mut low = Deliveries::start(&ch3, "q", "low", FieldTable::default()).await;
    let mut one = Deliveries::start(&ch1, "q", "one", five_short).await;
    let mut two = Deliveries::start(&ch2, "q", "two", five_long).await;
    publish_numbered(&ch, "q", 0..6).await;
    assert_eq!(bodies(&one.take(3).await), ["m0", "m2", "m4"]);
    assert_eq!(bodies(&two.take(3).await), ["m1", "m3", "m5"]);
    low.assert_quiet().await;
}

#[tokio::test]
async fn x_priority_that_is_not_an_integer_is_refused_with_406() {
    // rabbit_amqqueue:check_consume_arguments -> check_int_arg.
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let args = table(&[("x-priority", AMQPValue::LongString(LongString::from("10")))]);
    let err = Deliveries::try_start(&ch, "q", "c", BasicConsumeOptions::default(), args)
        .await
        .err()
        .expect("refused");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err).as_deref(),
        Some(
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \
             \"expected integer, got longstr\""
        )
    );
    // The refused consumer was not registered: a new consumer gets the message.
    let ch = channel(&conn).await;
    let mut c = Deliveries::start(&ch, "q", "c", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..1).await;
    assert_eq!(body(&c.next().await), "m0");
}

// ---------------------------------------------------------------------------------------
// exclusive consumers with the features above

#[tokio::test]
async fn an_exclusive_consumer_refuses_others_whatever_their_priority() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let exclusive = BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    };
    let mut owner = Deliveries::try_start(&ch, "q", "owner", exclusive, priority(-1))
        .await
        .expect("first exclusive consumer");
    let other = channel(&conn).await;
    let options = BasicConsumeOptions::default();
    let err = Deliveries::try_start(&other, "q", "other", options, priority(100))
        .await
        .err()
        .expect("refused");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err).as_deref(),
        Some("ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use")
    );
    publish_numbered(&ch, "q", 0..2).await;
    assert_eq!(bodies(&owner.take(2).await), numbered(0..2));
}

// ---------------------------------------------------------------------------------------
// delivery acknowledgement timeout

fn timeout_text(channel: u16, ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. \
         Timeout value used: {ms} ms. This timeout value can be configured, see consumers \
         doc guide to learn more"
    )
}

#[tokio::test]
async fn an_unacked_delivery_past_the_timeout_closes_the_channel_and_is_requeued() {
    let broker = TestBroker::start_with(|config| config.consumer_timeout_ms = 300).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let slow_ch = channel(&conn).await;
    let mut slow = Deliveries::start(&slow_ch, "q", "slow", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..1).await;
    assert_eq!(body(&slow.next().await), "m0");
    let other_ch = channel(&conn).await;
    // Its own long timeout keeps a loaded test machine from timing it out too.
    let patient = table(&[("x-consumer-timeout", AMQPValue::LongInt(60_000))]);
    let mut other = Deliveries::start(&other_ch, "q", "other", patient).await;
    let error = slow.closed_with().await;
    assert_eq!(reply_code(&error), Some(406), "{error:?}");
    assert_eq!(reply_text(&error), Some(timeout_text(slow_ch.id(), 300)));
    // Only the slow channel closed; the message went back and on to the other consumer,
    // which keeps its channel.
    let again = other.next().await;
    assert_eq!(body(&again), "m0");
    assert!(again.redelivered);
    ack(&again).await;
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(other_ch.status().connected());
    assert!(ch.status().connected());
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn without_a_timeout_setting_unacked_deliveries_are_kept_indefinitely() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut c = Deliveries::start(&ch, "q", "c", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..1).await;
    let got = c.next().await;
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(ch.status().connected());
    ack(&got).await;
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn deliveries_acked_in_time_do_not_close_the_channel() {
    // Long enough for 20 acks on a loaded machine, short enough to fire within PAST_CHECKS
    // if settled deliveries were still timed.
    let broker = TestBroker::start_with(|config| config.consumer_timeout_ms = 1_000).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let mut c = Deliveries::start(&ch, "q", "c", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..20).await;
    ack_all(&c.take(20).await).await;
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(ch.status().connected());
}

#[tokio::test]
async fn the_queue_argument_overrides_the_broker_default() {
    // The broker default would never fire within the test; the queue's 300 ms does.
    let broker = TestBroker::start_with(|config| config.consumer_timeout_ms = 600_000).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    let args = table(&[("x-consumer-timeout", AMQPValue::LongInt(300))]);
    declare_with(&ch, "q", args).await.unwrap();
    let consumer_ch = channel(&conn).await;
    let mut c = Deliveries::start(&consumer_ch, "q", "c", FieldTable::default()).await;
    publish_numbered(&ch, "q", 0..1).await;
    c.next().await;
    let error = c.closed_with().await;
    assert_eq!(
        reply_text(&error),
        Some(timeout_text(consumer_ch.id(), 300))
    );
    assert_eq!(ready(&ch, "q").await, 1);
}

#[tokio::test]
async fn the_consumer_argument_overrides_the_queue_argument() {
    // RabbitMQ 3.12+: x-consumer-timeout on basic.consume wins over the queue's.
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    let args = table(&[("x-consumer-timeout", AMQPValue::LongInt(200))]);
    declare_with(&ch, "q", args).await.unwrap();
    let (patient_ch, hasty_ch) = (channel(&conn).await, channel(&conn).await);
    let long = table(&[("x-consumer-timeout", AMQPValue::LongLongInt(600_000))]);
    let mut patient = Deliveries::start(&patient_ch, "q", "patient", long).await;
    publish_numbered(&ch, "q", 0..1).await;
    let kept = patient.next().await;
    // A consumer argument can also be shorter than the broker default (here: off).
    let short = table(&[("x-consumer-timeout", AMQPValue::LongInt(250))]);
    let other = declare_with(&ch, "q2", FieldTable::default());
    other.await.unwrap();
    let mut hasty = Deliveries::start(&hasty_ch, "q2", "hasty", short).await;
    publish_numbered(&ch, "q2", 0..1).await;
    hasty.next().await;
    let error = hasty.closed_with().await;
    assert_eq!(reply_text(&error), Some(timeout_text(hasty_ch.id(), 250)));
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(patient_ch.status().connected());
    ack(&kept).await;
}

#[tokio::test]
async fn a_basic_get_delivery_times_out_too() {
    // RabbitMQ's channel watches every unacked delivery, basic.get ones included.
    let broker = TestBroker::start_with(|config| config.consumer_timeout_ms = 300).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 0..1).await;
    let getter = channel(&conn).await;
    let got = within(getter.basic_get(s("q"), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(body(&got.delivery), "m0");
    within(async {
        while getter.status().connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(ready(&ch, "q").await, 1);
}
