//! Consumer features over real TCP with lapin: single active consumer, consumer priorities,
//! exclusive consumers next to them, and delivery acknowledgement timeouts. RabbitMQ's
//! behaviour is the reference; each test names the rule it pins.

mod common;
#[path = "features/mod.rs"]
mod features;

use std::time::Duration;

use common::{ready, s, within, TestBroker};
use features::{args, refusal, text};
use ferrymq::config::Config;
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long we wait to be confident that a delivery which must not come does not come.
const QUIET: Duration = Duration::from_millis(200);

/// Longer than one ack-timeout check interval (1 s) plus the longest timeout a test waits
/// out (1 s): a channel wrongly closed for a timeout would be closed by then.
const PAST_CHECKS: Duration = Duration::from_millis(2_200);

fn priority(p: i32) -> FieldTable {
    args(&[("x-priority", AMQPValue::LongInt(p))])
}

fn consumer_timeout(ms: i32) -> FieldTable {
    args(&[("x-consumer-timeout", AMQPValue::LongInt(ms))])
}

fn single_active() -> FieldTable {
    args(&[("x-single-active-consumer", AMQPValue::Boolean(true))])
}

fn exclusive() -> BasicConsumeOptions {
    BasicConsumeOptions {
        exclusive: true,
        ..Default::default()
    }
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

fn timeout_text(channel: u16, ms: u64) -> String {
    format!(
        "PRECONDITION_FAILED - delivery acknowledgement on channel {channel} timed out. \
         Timeout value used: {ms} ms. This timeout value can be configured, see consumers \
         doc guide to learn more"
    )
}

/// A broker, a connection, a channel to publish on, and queue `q` declared with arguments.
struct Fixture {
    _broker: TestBroker,
    conn: Connection,
    ch: Channel,
}

impl Fixture {
    async fn new(queue_arguments: FieldTable) -> Fixture {
        Self::configured(|_| {}, queue_arguments).await
    }

    async fn configured(
        configure: impl FnOnce(&mut Config),
        queue_arguments: FieldTable,
    ) -> Fixture {
        let broker = TestBroker::start_with(configure).await;
        let conn = common::lapin(&broker).await;
        let ch = within(conn.create_channel()).await.expect("channel.open");
        let declared = ch.queue_declare(s("q"), QueueDeclareOptions::default(), queue_arguments);
        within(declared).await.expect("queue.declare");
        Fixture {
            _broker: broker,
            conn,
            ch,
        }
    }

    async fn channel(&self) -> Channel {
        within(self.conn.create_channel())
            .await
            .expect("channel.open")
    }

    /// A manual-ack consumer of `q` on a channel of its own.
    async fn consumer(&self, tag: &str, arguments: FieldTable) -> (Channel, Deliveries) {
        self.consumer_with_prefetch(tag, 0, arguments).await
    }

    async fn consumer_with_prefetch(
        &self,
        tag: &str,
        prefetch: u16,
        arguments: FieldTable,
    ) -> (Channel, Deliveries) {
        let ch = self.channel().await;
        within(ch.basic_qos(prefetch, BasicQosOptions { global: false }))
            .await
            .expect("basic.qos");
        let consumer = Deliveries::try_start(&ch, tag, BasicConsumeOptions::default(), arguments)
            .await
            .expect("basic.consume");
        (ch, consumer)
    }

    /// Publishes `m<i>` to `q` for each i and waits until all are enqueued.
    async fn publish(&self, range: std::ops::Range<usize>) {
        for i in range {
            let body = format!("m{i}");
            let publish = self.ch.basic_publish(
                s(""),
                s("q"),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            );
            within(publish).await.expect("basic.publish");
        }
        ready(&self.ch, "q").await;
    }

    async fn ready(&self) -> u32 {
        ready(&self.ch, "q").await
    }
}

/// A consumer of `q` whose deliveries (and channel error) we can wait on.
struct Deliveries {
    consumer: Consumer,
    rx: mpsc::UnboundedReceiver<DeliveryResult>,
}

impl Deliveries {
    async fn try_start(
        ch: &Channel,
        tag: &str,
        options: BasicConsumeOptions,
        arguments: FieldTable,
    ) -> lapin::Result<Deliveries> {
        let consumer = within(ch.basic_consume(s("q"), s(tag), options, arguments)).await?;
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

    /// The reply code and text of the channel error that ends this consumer.
    async fn closed_with(&mut self) -> (u16, String) {
        match within(self.rx.recv()).await.expect("delegate gone") {
            Err(error) => refusal::<()>(Err(error)),
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

// ---------------------------------------------------------------------------------------
// single active consumer

#[tokio::test]
async fn single_active_consumer_serves_one_consumer_and_fails_over_in_registration_order() {
    let f = Fixture::new(single_active()).await;
    let (ch_a, mut a) = f.consumer("a", FieldTable::default()).await;
    let (ch_b, mut b) = f.consumer("b", FieldTable::default()).await;
    let (_ch_c, mut c) = f.consumer("c", FieldTable::default()).await;
    // The first consumer registered is the active one; the others get nothing.
    f.publish(0..3).await;
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
    for d in &got {
        ack(d).await;
    }
    b.cancel(&ch_b).await;
    f.publish(3..4).await;
    assert_eq!(body(&c.next().await), "m3");
    assert_eq!(f.ready().await, 0);
}

#[tokio::test]
async fn single_active_consumer_at_its_prefetch_limit_holds_messages_back() {
    // RabbitMQ: "Messages are always delivered to the active consumer, even if it is too
    // busy at some point ... the other consumers are ignored and messages are enqueued."
    let f = Fixture::new(single_active()).await;
    let (_ch_a, mut a) = f
        .consumer_with_prefetch("a", 1, FieldTable::default())
        .await;
    let (_ch_b, mut b) = f.consumer("b", FieldTable::default()).await;
    f.publish(0..3).await;
    let first = a.next().await;
    assert_eq!(body(&first), "m0");
    b.assert_quiet().await;
    assert_eq!(f.ready().await, 2);
    ack(&first).await;
    assert_eq!(body(&a.next().await), "m1");
    b.assert_quiet().await;
}

#[tokio::test]
async fn single_active_consumer_failover_picks_the_highest_priority_waiting_consumer() {
    // Classic queues (rabbit_queue_consumers:get_consumer): the active consumer keeps its
    // place while it lives; when it goes, the waiting consumer of highest priority wins,
    // whatever the registration order.
    let f = Fixture::new(single_active()).await;
    let (ch_a, mut a) = f.consumer("a", priority(0)).await;
    let (_ch_b, mut b) = f.consumer("b", priority(0)).await;
    let (_ch_c, mut c) = f.consumer("c", priority(5)).await;
    f.publish(0..1).await;
    ack(&a.next().await).await;
    b.assert_quiet().await;
    c.assert_quiet().await;
    a.cancel(&ch_a).await;
    f.publish(1..2).await;
    assert_eq!(body(&c.next().await), "m1");
    b.assert_quiet().await;
}

#[tokio::test]
async fn exclusive_consume_on_a_single_active_consumer_queue_is_refused_with_403() {
    // rabbit_amqqueue_process: exclusive consume with SAC on -> exclusive_consume_unavailable,
    // even when the queue has no consumer yet.
    let f = Fixture::new(single_active()).await;
    let other = f.channel().await;
    let refused = Deliveries::try_start(&other, "x", exclusive(), FieldTable::default()).await;
    assert_eq!(
        refusal(refused.map(|_| ())),
        (
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use".to_string()
        )
    );
    // A plain consumer is fine.
    let (_ch, mut a) = f.consumer("a", FieldTable::default()).await;
    f.publish(0..1).await;
    assert_eq!(body(&a.next().await), "m0");
}

#[tokio::test]
async fn basic_get_still_works_on_a_single_active_consumer_queue() {
    let f = Fixture::new(single_active()).await;
    f.publish(0..1).await;
    let got = within(f.ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), "m0");
}

#[tokio::test]
async fn x_single_active_consumer_of_another_type_than_bool_is_refused_with_406() {
    let f = Fixture::new(FieldTable::default()).await;
    let sac = args(&[("x-single-active-consumer", text("true"))]);
    let declared = within(f.ch.queue_declare(s("q2"), QueueDeclareOptions::default(), sac)).await;
    assert_eq!(
        refusal(declared),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue 'q2' in \
             vhost '/': {unacceptable_type,longstr}"
                .to_string()
        )
    );
}

// ---------------------------------------------------------------------------------------
// consumer priorities

#[tokio::test]
async fn a_high_priority_consumer_with_credit_gets_every_message() {
    let f = Fixture::new(FieldTable::default()).await;
    // Registered first, so plain round-robin would serve it first.
    let (_ch_low, mut low) = f.consumer("low", FieldTable::default()).await;
    let (_ch_high, mut high) = f.consumer("high", priority(10)).await;
    f.publish(0..10).await;
    assert_eq!(bodies(&high.take(10).await), numbered(0..10));
    low.assert_quiet().await;
}

#[tokio::test]
async fn lower_priority_consumers_get_messages_only_while_higher_ones_are_at_their_limit() {
    let f = Fixture::new(FieldTable::default()).await;
    let (_ch_low, mut low) = f.consumer("low", priority(-5)).await;
    let (_ch_high, mut high) = f.consumer_with_prefetch("high", 2, priority(3)).await;
    f.publish(0..5).await;
    let high_got = high.take(2).await;
    assert_eq!(bodies(&high_got), numbered(0..2));
    assert_eq!(bodies(&low.take(3).await), numbered(2..5));
    // Once the high one has credit again, it is served first again.
    ack(&high_got[0]).await;
    f.publish(5..6).await;
    assert_eq!(body(&high.next().await), "m5");
    low.assert_quiet().await;
}

#[tokio::test]
async fn consumers_of_equal_priority_are_served_round_robin() {
    let f = Fixture::new(FieldTable::default()).await;
    // Integer types other than long count too (x-priority is "any integer").
    let five_short = args(&[("x-priority", AMQPValue::ShortInt(5))]);
    let five_long = args(&[("x-priority", AMQPValue::LongLongInt(5))]);
    let (_ch0, mut low) = f.consumer("low", FieldTable::default()).await;
    let (_ch1, mut one) = f.consumer("one", five_short).await;
    let (_ch2, mut two) = f.consumer("two", five_long).await;
    f.publish(0..6).await;
    assert_eq!(bodies(&one.take(3).await), ["m0", "m2", "m4"]);
    assert_eq!(bodies(&two.take(3).await), ["m1", "m3", "m5"]);
    low.assert_quiet().await;
}

#[tokio::test]
async fn x_priority_that_is_not_an_integer_is_refused_with_406() {
    // rabbit_amqqueue:check_consume_arguments -> check_int_arg.
    let f = Fixture::new(FieldTable::default()).await;
    let ch = f.channel().await;
    let bad = args(&[("x-priority", text("10"))]);
    let refused = Deliveries::try_start(&ch, "c", BasicConsumeOptions::default(), bad).await;
    assert_eq!(
        refusal(refused.map(|_| ())),
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'q' in vhost '/': \
             \"expected integer, got longstr\""
                .to_string()
        )
    );
    // The refused consumer was not registered: a new consumer gets the message.
    let (_ch, mut c) = f.consumer("c", FieldTable::default()).await;
    f.publish(0..1).await;
    assert_eq!(body(&c.next().await), "m0");
}

// ---------------------------------------------------------------------------------------
// exclusive consumers with the features above

#[tokio::test]
async fn an_exclusive_consumer_refuses_others_whatever_their_priority() {
    let f = Fixture::new(FieldTable::default()).await;
    let owner_ch = f.channel().await;
    let mut owner = Deliveries::try_start(&owner_ch, "owner", exclusive(), priority(-1))
        .await
        .expect("first exclusive consumer");
    let other = f.channel().await;
    let options = BasicConsumeOptions::default();
    let refused = Deliveries::try_start(&other, "other", options, priority(100)).await;
    assert_eq!(
        refusal(refused.map(|_| ())),
        (
            403,
            "ACCESS_REFUSED - queue 'q' in vhost '/' in exclusive use".to_string()
        )
    );
    f.publish(0..2).await;
    assert_eq!(bodies(&owner.take(2).await), numbered(0..2));
}

// ---------------------------------------------------------------------------------------
// delivery acknowledgement timeout

#[tokio::test]
async fn an_unacked_delivery_past_the_timeout_closes_the_channel_and_is_requeued() {
    let f = Fixture::configured(|c| c.consumer_timeout_ms = 300, FieldTable::default()).await;
    let (slow_ch, mut slow) = f.consumer("slow", FieldTable::default()).await;
    f.publish(0..1).await;
    assert_eq!(body(&slow.next().await), "m0");
    // Its own long timeout keeps a loaded test machine from timing this one out too.
    let (other_ch, mut other) = f.consumer("other", consumer_timeout(60_000)).await;
    assert_eq!(
        slow.closed_with().await,
        (406, timeout_text(slow_ch.id(), 300))
    );
    // Only the slow channel closed; the message went back and on to the other consumer,
    // which keeps its channel.
    let again = other.next().await;
    assert_eq!(body(&again), "m0");
    assert!(again.redelivered);
    ack(&again).await;
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(other_ch.status().connected());
    assert!(f.ch.status().connected());
    assert_eq!(f.ready().await, 0);
}

#[tokio::test]
async fn without_a_timeout_setting_unacked_deliveries_are_kept_indefinitely() {
    let f = Fixture::new(FieldTable::default()).await;
    let (ch, mut c) = f.consumer("c", FieldTable::default()).await;
    f.publish(0..1).await;
    let got = c.next().await;
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(ch.status().connected());
    ack(&got).await;
    assert_eq!(f.ready().await, 0);
}

#[tokio::test]
async fn deliveries_acked_in_time_do_not_close_the_channel() {
    // Long enough for 20 acks on a loaded machine, short enough to fire within PAST_CHECKS
    // if settled deliveries were still timed.
    let f = Fixture::configured(|c| c.consumer_timeout_ms = 1_000, FieldTable::default()).await;
    let (ch, mut c) = f.consumer("c", FieldTable::default()).await;
    f.publish(0..20).await;
    for d in c.take(20).await {
        ack(&d).await;
    }
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(ch.status().connected());
}

#[tokio::test]
async fn the_queue_argument_overrides_the_broker_default() {
    // The broker default would never fire within the test; the queue's 300 ms does.
    let f = Fixture::configured(|c| c.consumer_timeout_ms = 600_000, consumer_timeout(300)).await;
    let (ch, mut c) = f.consumer("c", FieldTable::default()).await;
    f.publish(0..1).await;
    c.next().await;
    assert_eq!(c.closed_with().await, (406, timeout_text(ch.id(), 300)));
    assert_eq!(f.ready().await, 1);
}

#[tokio::test]
async fn the_consumer_argument_overrides_the_queue_argument() {
    // RabbitMQ 3.12+: x-consumer-timeout on basic.consume wins over the queue's.
    let f = Fixture::new(consumer_timeout(200)).await;
    let (patient_ch, mut patient) = f.consumer("patient", consumer_timeout(600_000)).await;
    f.publish(0..1).await;
    let kept = patient.next().await;
    tokio::time::sleep(PAST_CHECKS).await;
    assert!(patient_ch.status().connected());
    ack(&kept).await;
}

#[tokio::test]
async fn the_consumer_argument_applies_when_nothing_else_sets_a_timeout() {
    let f = Fixture::new(FieldTable::default()).await;
    let (ch, mut hasty) = f.consumer("hasty", consumer_timeout(250)).await;
    f.publish(0..1).await;
    hasty.next().await;
    assert_eq!(hasty.closed_with().await, (406, timeout_text(ch.id(), 250)));
    assert_eq!(f.ready().await, 1);
}

#[tokio::test]
async fn a_basic_get_delivery_times_out_too() {
    // RabbitMQ's channel watches every unacked delivery, basic.get ones included.
    let f = Fixture::configured(|c| c.consumer_timeout_ms = 300, FieldTable::default()).await;
    f.publish(0..1).await;
    let getter = f.channel().await;
    let got = within(getter.basic_get(s("q"), BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), "m0");
    features::eventually(common::STEP, || async { !getter.status().connected() }).await;
    assert_eq!(f.ready().await, 1);
}
