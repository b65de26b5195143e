//! The `x-delayed-message` exchange, as RabbitMQ's rabbitmq-delayed-message-exchange plugin
//! behaves: messages with a positive `x-delay` are held, then routed by the `x-delayed-type`
//! rules in due order; they survive restarts and go away with their exchange.

mod common;

use std::time::{Duration, Instant};

use common::{declare, lapin, ready, reply_code, s, within, TestBroker};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};

/// How late a delayed message may arrive before the test fails. The target is 10 ms; CI
/// runs debug builds on two busy cores, so the assertion leaves room and the log shows
/// what was measured.
const LATENESS_MAX: Duration = Duration::from_millis(100);

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

async fn channel(broker: &TestBroker) -> (Connection, Channel) {
    let conn = lapin(broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    (conn, ch)
}

async fn delayed_exchange(ch: &Channel, name: &str, routing: &str, durable: bool) {
    within(ch.exchange_declare(
        s(name),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        table(&[("x-delayed-type", long(routing))]),
    ))
    .await
    .expect("delayed exchange declared");
}

/// A broker with a delayed direct exchange `later` routing key `k` to queue `q`, and a
/// channel in confirm mode.
async fn later_to_q(durable: bool) -> (TestBroker, Connection, Channel) {
    let broker = TestBroker::start().await;
    let (conn, ch) = channel(&broker).await;
    delayed_exchange(&ch, "later", "direct", durable).await;
    declare(&ch, "q").await;
    bind(&ch, "q", "later", "k").await;
    (broker, conn, ch)
}

async fn durable_queue(ch: &Channel, name: &str) {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare(s(name), options, FieldTable::default()))
        .await
        .unwrap();
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_bind(
        s(queue),
        s(exchange),
        s(key),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

fn delay_props(delay: Option<AMQPValue>) -> BasicProperties {
    match delay {
        Some(value) => BasicProperties::default().with_headers(table(&[("x-delay", value)])),
        None => BasicProperties::default(),
    }
}

/// Publishes and waits for the confirm.
async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    properties: BasicProperties,
) -> Confirmation {
    let confirm = within(ch.basic_publish(
        s(exchange),
        s(key),
        BasicPublishOptions::default(),
        body.as_bytes(),
        properties,
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap()
}

async fn publish_delayed(ch: &Channel, exchange: &str, key: &str, body: &str, delay_ms: i64) {
    let properties = delay_props(Some(AMQPValue::LongLongInt(delay_ms)));
    let confirmation = publish(ch, exchange, key, body, properties).await;
    assert!(confirmation.is_ack(), "{body} confirmed");
}

async fn consumer(ch: &Channel, queue: &str) -> Consumer {
    let options = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    within(ch.basic_consume(s(queue), s(""), options, FieldTable::default()))
        .await
        .unwrap()
}

async fn next(consumer: &mut Consumer, wait: Duration) -> Delivery {
    tokio::time::timeout(wait, consumer.next())
        .await
        .expect("a delivery in time")
        .expect("consumer open")
        .expect("delivery")
}

fn body(delivery: &Delivery) -> String {
    String::from_utf8(delivery.data.clone()).unwrap()
}

fn pending(broker: &TestBroker, exchange: &str) -> u64 {
    broker
        .broker()
        .vhost("/")
        .expect("vhost")
        .exchange(exchange)
        .expect("exchange")
        .delayed_messages()
}

async fn wait_for_pending(broker: &TestBroker, exchange: &str, expected: u64) {
    within(async {
        while pending(broker, exchange) != expected {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn direct_delayed_message_arrives_at_its_due_time_with_the_delay_negated() {
    let (broker, _conn, ch) = later_to_q(true).await;
    let mut deliveries = consumer(&ch, "q").await;
    let mut worst = Duration::ZERO;
    for delay_ms in [150u64, 300, 450] {
        let sent = Instant::now();
        publish_delayed(
            &ch,
            "later",
            "k",
            &format!("after {delay_ms}"),
            delay_ms as i64,
        )
        .await;
        assert_eq!(pending(&broker, "later"), 1, "held, not routed");
        let delivery = next(&mut deliveries, Duration::from_secs(3)).await;
        let waited = sent.elapsed();
        let due = Duration::from_millis(delay_ms);
        assert!(
            waited >= due,
            "delivered {waited:?} after publish, due {due:?}"
        );
        let late = waited - due;
        worst = worst.max(late);
        assert!(
            late <= LATENESS_MAX,
            "{late:?} late for a {delay_ms} ms delay"
        );
        assert_eq!(body(&delivery), format!("after {delay_ms}"));
        // The plugin negates x-delay on release, so a delayed exchange downstream does not
        // hold the message again and consumers can tell it was delayed.
        let headers = delivery.properties.headers().clone().unwrap();
        assert_eq!(
            headers.inner().get("x-delay"),
            Some(&AMQPValue::LongInt(-(delay_ms as i32)))
        );
        assert_eq!(pending(&broker, "later"), 0);
    }
    eprintln!("delayed delivery lateness (publish-side measurement): worst {worst:?}");
}

#[tokio::test]
async fn topic_fanout_and_headers_delayed_types_route_like_their_type() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    delayed_exchange(&ch, "dt", "topic", false).await;
    delayed_exchange(&ch, "df", "fanout", false).await;
    delayed_exchange(&ch, "dh", "headers", false).await;
    for q in ["eu", "all", "f1", "f2", "h"] {
        declare(&ch, q).await;
    }
    bind(&ch, "eu", "dt", "eu.*").await;
    bind(&ch, "all", "dt", "#").await;
    bind(&ch, "f1", "df", "ignored").await;
    bind(&ch, "f2", "df", "").await;
    within(ch.queue_bind(
        s("h"),
        s("dh"),
        s(""),
        QueueBindOptions::default(),
        table(&[("kind", long("order"))]),
    ))
    .await
    .unwrap();
    publish_delayed(&ch, "dt", "eu.orders", "t1", 100).await;
    publish_delayed(&ch, "dt", "us.orders", "t2", 100).await;
    publish_delayed(&ch, "df", "whatever", "f", 100).await;
    let matching = table(&[
        ("x-delay", AMQPValue::LongInt(100)),
        ("kind", long("order")),
    ]);
    let other = table(&[("x-delay", AMQPValue::LongInt(100)), ("kind", long("x"))]);
    for (name, headers) in [("h-match", matching), ("h-other", other)] {
        let properties = BasicProperties::default().with_headers(headers);
        assert!(publish(&ch, "dh", "", name, properties).await.is_ack());
    }
    for q in ["eu", "all", "f1", "f2", "h"] {
        assert_eq!(ready(&ch, q).await, 0, "{q} empty while held");
    }
    wait_for_pending(&broker, "dt", 0).await;
    wait_for_pending(&broker, "df", 0).await;
    wait_for_pending(&broker, "dh", 0).await;
    let expected = [("eu", 1), ("all", 2), ("f1", 1), ("f2", 1), ("h", 1)];
    for (q, count) in expected {
        within(async {
            while ready(&ch, q).await != count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

#[tokio::test]
async fn messages_leave_in_due_order_not_publish_order() {
    let (broker, _conn, ch) = later_to_q(false).await;
    let delays = [700, 100, 500, 300, 600, 200, 400];
    let mut sent = std::collections::HashMap::new();
    for delay in delays {
        sent.insert(delay.to_string(), (Instant::now(), delay));
        publish_delayed(&ch, "later", "k", &delay.to_string(), delay).await;
    }
    assert_eq!(pending(&broker, "later"), delays.len() as u64);
    let mut deliveries = consumer(&ch, "q").await;
    let mut got = Vec::new();
    for _ in delays {
        let name = body(&next(&mut deliveries, Duration::from_secs(3)).await);
        // Each one no earlier than its own due time, not merely after the first one's.
        let (at, delay) = sent[&name];
        assert!(
            at.elapsed() >= Duration::from_millis(delay as u64),
            "{name} early"
        );
        got.push(name);
    }
    let mut sorted = delays.to_vec();
    sorted.sort_unstable();
    let expected: Vec<String> = sorted.iter().map(ToString::to_string).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn without_a_positive_delay_messages_are_routed_at_once() {
    let (broker, _conn, ch) = later_to_q(false).await;
    let cases = [
        ("no header", None),
        ("zero", Some(AMQPValue::LongInt(0))),
        ("negative", Some(AMQPValue::LongInt(-5000))),
        ("not a number", Some(AMQPValue::Boolean(true))),
        // Past 2^32-1 ms the plugin does not hold a message either.
        ("too long", Some(AMQPValue::LongLongInt(1 << 40))),
    ];
    for (name, delay) in cases.iter().cloned() {
        assert!(publish(&ch, "later", "k", name, delay_props(delay))
            .await
            .is_ack());
    }
    assert_eq!(ready(&ch, "q").await, cases.len() as u32);
    assert_eq!(pending(&broker, "later"), 0);
    // Integer widths and decimal strings are delays (the plugin converts strings too).
    for value in [AMQPValue::ShortInt(6000), long("60000")] {
        assert!(publish(&ch, "later", "k", "held", delay_props(Some(value)))
            .await
            .is_ack());
    }
    assert_eq!(pending(&broker, "later"), 2);
    assert_eq!(ready(&ch, "q").await, cases.len() as u32);
}

#[tokio::test]
async fn mandatory_delayed_publish_is_returned_at_once_and_still_delivered() {
    let (broker, _conn, ch) = later_to_q(false).await;
    let confirm = within(ch.basic_publish(
        s("later"),
        s("k"),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"m",
        BasicProperties::default().with_headers(table(&[
            ("x-delay", AMQPValue::LongInt(200)),
            ("BCC", long("q")),
        ])),
    ))
    .await
    .unwrap();
    // The plugin routes nothing at publish time, so RabbitMQ returns it with 312 (its
    // README: "the mandatory flag is not supported"), and delivers it when due anyway.
    let Confirmation::Ack(Some(returned)) = within(confirm).await.unwrap() else {
        panic!("expected an ack carrying a basic.return");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    let shown = returned.properties.headers().clone().unwrap();
    assert!(shown.inner().get("BCC").is_none(), "BCC is never shown");
    assert_eq!(pending(&broker, "later"), 1);
    wait_for_pending(&broker, "later", 0).await;
    within(async {
        while ready(&ch, "q").await == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Routed once though both its key and its BCC name `q`; BCC removed on release.
    assert_eq!(ready(&ch, "q").await, 1);
    let got = within(ch.basic_get(s("q"), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the delayed message");
    assert_eq!(got.delivery.data, b"m");
    let headers = got.delivery.properties.headers().clone().unwrap();
    assert!(headers.inner().get("BCC").is_none());
}

#[tokio::test]
async fn confirm_of_a_held_message_follows_an_fdatasync() {
    let (broker, _conn, ch) = later_to_q(true).await;
    let vhost = broker.broker().vhost("/").unwrap();
    let stats = &vhost.storage().expect("storage").syncer.stats;
    let syncs = |stats: &ferrymq_store::commit::SyncStats| {
        stats.fdatasyncs.load(std::sync::atomic::Ordering::SeqCst)
    };
    // Transient too: the plugin keeps every held message on disk.
    for mode in [1, 2] {
        let before = syncs(stats);
        let properties = delay_props(Some(AMQPValue::LongInt(60_000))).with_delivery_mode(mode);
        assert!(publish(&ch, "later", "k", "m", properties).await.is_ack());
        assert!(
            syncs(stats) > before,
            "acked before any fdatasync (mode {mode})"
        );
    }
}

#[tokio::test]
async fn tx_commit_of_a_delayed_publish_returns_once_it_is_held() {
    let broker = TestBroker::start().await;
    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.tx_select()).await.unwrap();
    delayed_exchange(&ch, "later", "direct", true).await;
    declare(&ch, "q").await;
    bind(&ch, "q", "later", "k").await;
    within(ch.basic_publish(
        s("later"),
        s("k"),
        BasicPublishOptions::default(),
        b"in a tx",
        delay_props(Some(AMQPValue::LongInt(200))),
    ))
    .await
    .unwrap();
    assert_eq!(pending(&broker, "later"), 0, "nothing before the commit");
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(
        pending(&broker, "later"),
        1,
        "held (and on disk) by commit-ok"
    );
    let mut deliveries = consumer(&ch, "q").await;
    assert_eq!(
        body(&next(&mut deliveries, Duration::from_secs(3)).await),
        "in a tx"
    );
}

#[tokio::test]
async fn declare_without_a_valid_delayed_type_fails_as_in_rabbitmq() {
    let broker = TestBroker::start().await;
    let conn = lapin(&broker).await;
    let declare_with = |args: FieldTable| {
        let conn = &conn;
        async move {
            let ch = conn.create_channel().await.unwrap();
            within(ch.exchange_declare(
                s("bad"),
                ExchangeKind::Custom("x-delayed-message".into()),
                ExchangeDeclareOptions::default(),
                args,
            ))
            .await
        }
    };
    for args in [
        FieldTable::default(),
        table(&[("x-delayed-type", AMQPValue::LongInt(1))]),
        table(&[("x-delayed-type", long("x-delayed-message"))]),
    ] {
        let error = declare_with(args).await.unwrap_err();
        assert_eq!(reply_code(&error), Some(406), "{error}");
        assert!(error.to_string().contains("Invalid argument"), "{error}");
    }
    // An unknown type is rabbit_exchange:check_type's hard error.
    let error = declare_with(table(&[("x-delayed-type", long("nonsense"))]))
        .await
        .unwrap_err();
    assert_eq!(reply_code(&error), Some(503), "{error}");
    assert!(error
        .to_string()
        .contains("unknown exchange type 'nonsense'"));
}

#[tokio::test]
async fn redeclare_compares_the_type_but_not_the_delayed_type() {
    let broker = TestBroker::start().await;
    let conn = lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    delayed_exchange(&ch, "later", "direct", false).await;
    // The plugin hands equivalence to the routing type, which compares alternate-exchange
    // only: another x-delayed-type is accepted (the exchange keeps its own).
    delayed_exchange(&ch, "later", "topic", false).await;
    let error = within(ch.exchange_declare(
        s("later"),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_err();
    assert_eq!(reply_code(&error), Some(406), "{error}");
    assert!(
        error
            .to_string()
            .contains("received 'direct' but current is 'x-delayed-message'"),
        "{error}"
    );
}

#[tokio::test]
async fn alternate_exchange_and_exchange_bindings_apply_at_due_time() {
    let broker = TestBroker::start().await;
    let (_conn, ch) = channel(&broker).await;
    within(ch.exchange_declare(
        s("ae"),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_declare(
        s("later"),
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions::default(),
        table(&[
            ("x-delayed-type", long("direct")),
            ("alternate-exchange", long("ae")),
        ]),
    ))
    .await
    .unwrap();
    within(ch.exchange_declare(
        s("onward"),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_bind(
        s("onward"),
        s("later"),
        s("e2e"),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare(&ch, "unrouted").await;
    declare(&ch, "via-e2e").await;
    bind(&ch, "unrouted", "ae", "").await;
    bind(&ch, "via-e2e", "onward", "").await;
    publish_delayed(&ch, "later", "nobody", "to-ae", 150).await;
    publish_delayed(&ch, "later", "e2e", "to-e2e", 150).await;
    assert_eq!(
        ready(&ch, "unrouted").await,
        0,
        "not sent to the AE at publish"
    );
    wait_for_pending(&broker, "later", 0).await;
    within(async {
        while ready(&ch, "unrouted").await + ready(&ch, "via-e2e").await != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(ready(&ch, "unrouted").await, 1);
    assert_eq!(ready(&ch, "via-e2e").await, 1);
}

fn segment_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir.join("delayed")) else {
        return 0;
    };
    entries
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .filter(|f| f.path().extension().is_some_and(|x| x == "seg"))
        .count()
}

#[tokio::test]
async fn deleting_the_exchange_drops_its_held_messages_and_files() {
    let (broker, _conn, ch) = later_to_q(true).await;
    for i in 0..3 {
        publish_delayed(&ch, "later", "k", &format!("m{i}"), 300).await;
    }
    assert_eq!(pending(&broker, "later"), 3);
    assert!(
        segment_files(broker.data_dir()) > 0,
        "held messages are on disk"
    );
    within(ch.exchange_delete(s("later"), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    within(async {
        while segment_files(broker.data_dir()) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Declared again under the same name: it starts empty.
    delayed_exchange(&ch, "later", "direct", true).await;
    bind(&ch, "q", "later", "k").await;
    assert_eq!(pending(&broker, "later"), 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ready(&ch, "q").await, 0, "nothing was routed");
}

#[tokio::test]
async fn held_messages_survive_a_restart_and_arrive_in_due_order() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = channel(&broker).await;
        delayed_exchange(&ch, "later", "direct", true).await;
        delayed_exchange(&ch, "scratch", "direct", false).await;
        durable_queue(&ch, "q").await;
        bind(&ch, "q", "later", "k").await;
        // Transient messages are held on disk too (the plugin keeps every held message).
        for (body, delay, mode) in [("c", 1600, 2), ("a", 1200, 1), ("b", 1400, 2)] {
            let mut properties = delay_props(Some(AMQPValue::LongInt(delay)));
            properties = properties.with_delivery_mode(mode);
            assert!(publish(&ch, "later", "k", body, properties).await.is_ack());
        }
        publish_delayed(&ch, "scratch", "k", "gone with its exchange", 1000).await;
    }
    let broker = broker.restart().await;
    wait_for_pending(&broker, "later", 3).await;
    let (_conn, ch) = channel(&broker).await;
    let mut deliveries = consumer(&ch, "q").await;
    let got: Vec<String> = {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(body(&next(&mut deliveries, Duration::from_secs(4)).await));
        }
        got
    };
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(pending(&broker, "later"), 0);
    assert!(
        broker
            .broker()
            .vhost("/")
            .unwrap()
            .exchange("scratch")
            .is_none(),
        "a transient exchange does not come back"
    );
    // Only the durable exchange's folder is left.
    let folders = std::fs::read_dir(broker.data_dir().join("delayed"))
        .unwrap()
        .count();
    assert_eq!(folders, 1);
}

#[tokio::test]
async fn messages_due_while_the_broker_was_down_are_routed_promptly_in_due_order() {
    let broker = TestBroker::start().await;
    {
        let (_conn, ch) = channel(&broker).await;
        delayed_exchange(&ch, "later", "fanout", true).await;
        durable_queue(&ch, "q").await;
        bind(&ch, "q", "later", "").await;
        for (i, delay) in [500, 300, 400, 200].into_iter().enumerate() {
            publish_delayed(&ch, "later", "", &format!("{delay}/{i}"), delay).await;
        }
    }
    let broker = broker
        .restart_after(|_| std::thread::sleep(Duration::from_millis(700)))
        .await;
    let (_conn, ch) = channel(&broker).await;
    let started = Instant::now();
    let mut deliveries = consumer(&ch, "q").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(body(&next(&mut deliveries, Duration::from_secs(3)).await));
    }
    eprintln!(
        "overdue messages all consumed {:?} after consuming began",
        started.elapsed()
    );
    assert_eq!(got, ["200/3", "300/1", "400/2", "500/0"]);
}
