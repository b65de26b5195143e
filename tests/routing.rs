//! Routing through the broker over real TCP with lapin: each exchange type, exchange-to-
//! exchange bindings, alternate exchanges, CC/BCC, mandatory returns. The reference is
//! RabbitMQ (`rabbit_exchange.erl` route/3, `rabbit_exchange_type_*.erl`, `rabbit_channel.erl`).
//!
//! Messages are read back with basic.get on the publishing channel: the broker handles a
//! channel's frames in order, so a publish sent before the get has been routed and enqueued
//! by then, and "not routed" is an exact assertion rather than a timeout.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ErrorKind, ExchangeKind};

/// Every broker round trip must answer well within this; a hang fails the test fast.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_TIMEOUT, future)
        .await
        .expect("the broker did not answer in time")
}

fn closed_with<T: std::fmt::Debug>(result: lapin::Result<T>) -> (u16, String) {
    let error = result.expect_err("the broker should have refused this");
    match error.kind() {
        ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    within(ch.exchange_declare(name.into(), kind, ExchangeDeclareOptions::default(), args))
        .await
        .unwrap_or_else(|e| panic!("declaring exchange {name}: {e}"));
}

async fn queue(ch: &Channel, name: &str) {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declaring queue {name}: {e}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    bind_with(ch, queue, exchange, key, FieldTable::default()).await;
}

async fn bind_with(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        args,
    ))
    .await
    .unwrap_or_else(|e| panic!("binding {queue} to {exchange} with {key:?}: {e}"));
}

async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    within(ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("binding {destination} to {source}: {e}"));
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    publish_with(ch, exchange, key, body, BasicProperties::default()).await;
}

async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        properties,
    ))
    .await
    .unwrap();
}

/// Everything ready in `queue`, as UTF-8 bodies, in order.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(message) = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8(message.delivery.data).unwrap());
    }
    bodies
}

/// Publishes in confirm mode and returns what the broker answered (an ack carrying the
/// basic.return if the message came back).
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    mandatory: bool,
    body: &[u8],
) -> Confirmation {
    let confirm = within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions {
            mandatory,
            ..Default::default()
        },
        body,
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap()
}

/// Publishes mandatory in confirm mode and returns the basic.return the ack carried,
/// checking it is 312 NO_ROUTE.
async fn publish_unroutable(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
) -> lapin::message::BasicReturnMessage {
    let answer = publish_confirmed(ch, exchange, key, true, body).await;
    let Confirmation::Ack(Some(returned)) = answer else {
        panic!("expected an ack carrying the return, got {answer:?}");
    };
    assert_eq!(returned.reply_code, 312);
    returned
}

// ---------------------------------------------------------------------------------------
// direct / fanout

#[tokio::test]
async fn direct_delivers_to_every_queue_bound_with_the_key() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    for q in ["q1", "q2", "q3"] {
        queue(&ch, q).await;
    }
    bind(&ch, "q1", "d", "k").await;
    bind(&ch, "q2", "d", "k").await;
    bind(&ch, "q3", "d", "other").await;
    publish(&ch, "d", "k", b"m").await;
    assert_eq!(drain(&ch, "q1").await, ["m"]);
    assert_eq!(drain(&ch, "q2").await, ["m"]);
    assert!(drain(&ch, "q3").await.is_empty());
    // Keys compare exactly: no case folding, no patterns.
    publish(&ch, "d", "K", b"upper").await;
    publish(&ch, "d", "*", b"star").await;
    assert!(drain(&ch, "q1").await.is_empty());
}

#[tokio::test]
async fn fanout_ignores_routing_keys() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "f", ExchangeKind::Fanout, FieldTable::default()).await;
    queue(&ch, "q1").await;
    queue(&ch, "q2").await;
    bind(&ch, "q1", "f", "a").await;
    bind(&ch, "q2", "f", "").await;
    publish(&ch, "f", "zzz", b"one").await;
    publish(&ch, "f", "", b"two").await;
    assert_eq!(drain(&ch, "q1").await, ["one", "two"]);
    assert_eq!(drain(&ch, "q2").await, ["one", "two"]);
}

#[tokio::test]
async fn a_queue_bound_twice_gets_each_message_once() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "f", ExchangeKind::Fanout, FieldTable::default()).await;
    exchange(&ch, "t", ExchangeKind::Topic, FieldTable::default()).await;
    queue(&ch, "q").await;
    bind(&ch, "q", "f", "a").await;
    bind(&ch, "q", "f", "b").await;
    bind(&ch, "q", "t", "a.*").await;
    bind(&ch, "q", "t", "*.b").await;
    bind(&ch, "q", "t", "#").await;
    publish(&ch, "f", "", b"fanout").await;
    publish(&ch, "t", "a.b", b"topic").await;
    assert_eq!(drain(&ch, "q").await, ["fanout", "topic"]);
}

#[tokio::test]
async fn unbinding_one_of_two_bindings_keeps_the_other_routing() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    queue(&ch, "q").await;
    bind(&ch, "q", "d", "a").await;
    bind(&ch, "q", "d", "b").await;
    within(ch.queue_unbind("q".into(), "d".into(), "a".into(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "d", "a", b"a").await;
    publish(&ch, "d", "b", b"b").await;
    assert_eq!(drain(&ch, "q").await, ["b"]);
}

// ---------------------------------------------------------------------------------------
// topic

/// (binding pattern, routing keys it must match among `TOPIC_KEYS`), per RabbitMQ's
/// rabbit_db_topic_exchange: "" is zero words, every "." splits (so "a." is ["a", ""]),
/// `*` is exactly one word (an empty one too), `#` zero or more.
const TOPIC_CASES: &[(&str, &[&str])] = &[
    ("a.b.c", &["a.b.c"]),
    ("a.*.c", &["a.b.c", "a..c"]),
    (
        "a.#",
        &["a.b.c", "a.c", "a", "a.b", "a..c", "a.", "a.b.b.c"],
    ),
    (
        "#",
        &[
            "a.b.c", "a.c", "a", "", "a.b", "a..c", "a.", "x.c", "a.b.b.c",
        ],
    ),
    ("*", &["a"]),
    ("#.c", &["a.b.c", "a.c", "a..c", "x.c", "a.b.b.c"]),
    ("*.*", &["a.c", "a.b", "a.", "x.c"]),
    ("a.#.c", &["a.b.c", "a.c", "a..c", "a.b.b.c"]),
    ("", &[""]),
    ("a.*.#", &["a.b.c", "a.c", "a.b", "a..c", "a.", "a.b.b.c"]),
    (
        "#.#",
        &[
            "a.b.c", "a.c", "a", "", "a.b", "a..c", "a.", "x.c", "a.b.b.c",
        ],
    ),
    (
        "*.#",
        &["a.b.c", "a.c", "a", "a.b", "a..c", "a.", "x.c", "a.b.b.c"],
    ),
    (
        "#.*",
        &["a.b.c", "a.c", "a", "a.b", "a..c", "a.", "x.c", "a.b.b.c"],
    ),
    ("*.*.*", &["a.b.c", "a..c"]),
    ("a.b.c.#", &["a.b.c"]),
    ("A.#", &[]),
];

const TOPIC_KEYS: &[&str] = &[
    "a.b.c", "a.c", "a", "", "a.b", "a..c", "a.", "x.c", "a.b.b.c",
];

#[tokio::test]
async fn topic_wildcards_match_like_rabbitmq() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "t", ExchangeKind::Topic, FieldTable::default()).await;
    for (i, (pattern, _)) in TOPIC_CASES.iter().enumerate() {
        let q = format!("q{i}");
        queue(&ch, &q).await;
        bind(&ch, &q, "t", pattern).await;
    }
    for key in TOPIC_KEYS {
        publish(&ch, "t", key, key.as_bytes()).await;
    }
    for (i, (pattern, expected)) in TOPIC_CASES.iter().enumerate() {
        let got: BTreeSet<String> = drain(&ch, &format!("q{i}")).await.into_iter().collect();
        let expected: BTreeSet<String> = expected.iter().map(|k| k.to_string()).collect();
        assert_eq!(got, expected, "pattern {pattern:?}");
    }
}

#[tokio::test]
async fn topic_routes_right_among_ten_thousand_bindings() {
    const BINDINGS: usize = 10_000;
    const QUEUES: usize = 8;
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "t", ExchangeKind::Topic, FieldTable::default()).await;
    for q in 0..QUEUES {
        queue(&ch, &format!("q{q}")).await;
    }
    // nowait binds are pipelined; the synchronous declare after them is the fence.
    for i in 0..BINDINGS {
        within(ch.queue_bind(
            format!("q{}", i % QUEUES).into(),
            "t".into(),
            format!("s.{i}.*").into(),
            QueueBindOptions { nowait: true },
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    queue(&ch, "catch-all").await;
    bind(&ch, "catch-all", "t", "s.#").await;
    publish(&ch, "t", "s.1234.x", b"1234").await;
    publish(&ch, "t", "s.9999.y", b"9999").await;
    publish(&ch, "t", "s.7", b"too short").await;
    publish(&ch, "t", "s.10000.x", b"unbound").await;
    publish(&ch, "t", "s.7.x.y", b"too long").await;
    for q in 0..QUEUES {
        let expected: Vec<&str> = match q {
            2 => vec!["1234"], // 1234 % 8
            7 => vec!["9999"], // 9999 % 8
            _ => vec![],
        };
        assert_eq!(drain(&ch, &format!("q{q}")).await, expected, "q{q}");
    }
    assert_eq!(
        drain(&ch, "catch-all").await,
        ["1234", "9999", "too short", "unbound", "too long"]
    );
}

// ---------------------------------------------------------------------------------------
// headers

#[tokio::test]
async fn headers_exchange_matches_all_any_and_with_x() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "h", ExchangeKind::Headers, FieldTable::default()).await;
    let bindings = [
        (
            "all",
            table(&[("x-match", long("all")), ("a", long("1")), ("b", long("2"))]),
        ),
        ("default-all", table(&[("a", long("1")), ("b", long("2"))])),
        (
            "any",
            table(&[("x-match", long("any")), ("a", long("1")), ("b", long("2"))]),
        ),
        (
            "all-with-x",
            table(&[
                ("x-match", long("all-with-x")),
                ("x-tenant", long("t1")),
                ("a", long("1")),
            ]),
        ),
        (
            "any-with-x",
            table(&[("x-match", long("any-with-x")), ("x-tenant", long("t1"))]),
        ),
        // x- arguments take no part without -with-x: an "all" over nothing matches all.
        (
            "x-ignored",
            table(&[("x-match", long("all")), ("x-tenant", long("t1"))]),
        ),
        // A void value asks for the header's presence only.
        ("void", table(&[("a", AMQPValue::Void)])),
    ];
    for (q, args) in &bindings {
        queue(&ch, q).await;
        bind_with(&ch, q, "h", "", args.clone()).await;
    }
    let messages: [(&str, Option<FieldTable>); 6] = [
        ("ab", Some(table(&[("a", long("1")), ("b", long("2"))]))),
        ("a", Some(table(&[("a", long("1"))]))),
        (
            "b+tenant",
            Some(table(&[("b", long("2")), ("x-tenant", long("t1"))])),
        ),
        (
            "a+tenant",
            Some(table(&[("a", long("1")), ("x-tenant", long("t1"))])),
        ),
        ("a=9", Some(table(&[("a", long("9"))]))),
        ("none", None),
    ];
    for (body, headers) in &messages {
        let properties = match headers {
            Some(h) => BasicProperties::default().with_headers(h.clone()),
            None => BasicProperties::default(),
        };
        publish_with(&ch, "h", "ignored", body.as_bytes(), properties).await;
    }
    let expected: [(&str, &[&str]); 7] = [
        ("all", &["ab"]),
        ("default-all", &["ab"]),
        ("any", &["ab", "a", "b+tenant", "a+tenant"]),
        ("all-with-x", &["a+tenant"]),
        ("any-with-x", &["b+tenant", "a+tenant"]),
        (
            "x-ignored",
            &["ab", "a", "b+tenant", "a+tenant", "a=9", "none"],
        ),
        ("void", &["ab", "a", "a+tenant", "a=9"]),
    ];
    for (q, bodies) in expected {
        assert_eq!(drain(&ch, q).await, bodies, "queue {q}");
    }
}

#[tokio::test]
async fn headers_integers_match_across_widths() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "h", ExchangeKind::Headers, FieldTable::default()).await;
    queue(&ch, "q").await;
    bind_with(&ch, "q", "h", "", table(&[("n", AMQPValue::LongInt(5))])).await;
    // RabbitMQ compares decoded header values with =:=, and AMQP integers of every width
    // decode to the same Erlang integer.
    for (body, value) in [
        ("i64-5", AMQPValue::LongLongInt(5)),
        ("i64-6", AMQPValue::LongLongInt(6)),
        ("i32-5", AMQPValue::LongInt(5)),
    ] {
        let properties = BasicProperties::default().with_headers(table(&[("n", value)]));
        publish_with(&ch, "h", "", body.as_bytes(), properties).await;
    }
    assert_eq!(drain(&ch, "q").await, ["i64-5", "i32-5"]);
}

#[tokio::test]
async fn headers_binding_with_invalid_x_match_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    exchange(&setup, "h", ExchangeKind::Headers, FieldTable::default()).await;
    queue(&setup, "q").await;
    // rabbit_exchange_type_headers:validate_binding → binding_invalid → precondition_failed.
    for (x_match, wording) in [
        (long("some"), "Invalid x-match field value"),
        (AMQPValue::LongInt(1), "Invalid x-match field type"),
    ] {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = within(ch.queue_bind(
            "q".into(),
            "h".into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", x_match), ("a", long("1"))]),
        ))
        .await;
        let (code, text) = closed_with(result);
        assert_eq!(code, 406);
        assert!(text.contains(wording), "{text}");
    }
    assert!(conn.status().connected());
}

// ---------------------------------------------------------------------------------------
// exchange-to-exchange

#[tokio::test]
async fn exchange_bindings_route_through_a_chain() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "x1", ExchangeKind::Direct, FieldTable::default()).await;
    exchange(&ch, "x2", ExchangeKind::Fanout, FieldTable::default()).await;
    exchange(&ch, "x3", ExchangeKind::Topic, FieldTable::default()).await;
    bind_exchange(&ch, "x2", "x1", "k").await;
    bind_exchange(&ch, "x3", "x2", "ignored").await;
    queue(&ch, "q").await;
    // The message keeps its routing key through the chain: x3 matches on "k".
    bind(&ch, "q", "x3", "k").await;
    publish(&ch, "x1", "k", b"through").await;
    publish(&ch, "x1", "other", b"stops at x1").await;
    assert_eq!(drain(&ch, "q").await, ["through"]);

    within(ch.exchange_unbind(
        "x2".into(),
        "x1".into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    publish(&ch, "x1", "k", b"unbound").await;
    assert!(drain(&ch, "q").await.is_empty());
}

#[tokio::test]
async fn exchange_cycle_delivers_once_per_queue() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "x1", ExchangeKind::Fanout, FieldTable::default()).await;
    exchange(&ch, "x2", ExchangeKind::Fanout, FieldTable::default()).await;
    bind_exchange(&ch, "x2", "x1", "").await;
    bind_exchange(&ch, "x1", "x2", "").await;
    queue(&ch, "q1").await;
    queue(&ch, "q2").await;
    bind(&ch, "q1", "x1", "").await;
    bind(&ch, "q2", "x2", "").await;
    publish(&ch, "x1", "", b"a").await;
    publish(&ch, "x2", "", b"b").await;
    assert_eq!(drain(&ch, "q1").await, ["a", "b"]);
    assert_eq!(drain(&ch, "q2").await, ["a", "b"]);
}

#[tokio::test]
async fn exchange_diamond_delivers_once() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    for x in ["top", "left", "right"] {
        exchange(&ch, x, ExchangeKind::Fanout, FieldTable::default()).await;
    }
    bind_exchange(&ch, "left", "top", "").await;
    bind_exchange(&ch, "right", "top", "").await;
    queue(&ch, "q").await;
    bind(&ch, "q", "left", "").await;
    bind(&ch, "q", "right", "").await;
    publish(&ch, "top", "", b"once").await;
    assert_eq!(drain(&ch, "q").await, ["once"]);
}

// ---------------------------------------------------------------------------------------
// alternate exchange

#[tokio::test]
async fn alternate_exchange_takes_only_unroutable_messages() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    exchange(
        &ch,
        "x",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", long("ae"))]),
    )
    .await;
    queue(&ch, "main").await;
    queue(&ch, "unrouted").await;
    bind(&ch, "main", "x", "k").await;
    bind(&ch, "unrouted", "ae", "").await;
    publish(&ch, "x", "k", b"routable").await;
    publish(&ch, "x", "other", b"unroutable").await;
    assert_eq!(drain(&ch, "main").await, ["routable"]);
    assert_eq!(drain(&ch, "unrouted").await, ["unroutable"]);
}

#[tokio::test]
async fn message_through_alternate_exchange_is_not_returned() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    exchange(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    exchange(
        &ch,
        "x",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", long("ae"))]),
    )
    .await;
    queue(&ch, "unrouted").await;
    bind(&ch, "unrouted", "ae", "").await;
    let answer = publish_confirmed(&ch, "x", "nowhere", true, b"m").await;
    assert!(matches!(answer, Confirmation::Ack(None)), "{answer:?}");
    assert_eq!(drain(&ch, "unrouted").await, ["m"]);
}

#[tokio::test]
async fn missing_alternate_exchange_leaves_the_message_unroutable() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    exchange(
        &ch,
        "x",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", long("no-such-ae"))]),
    )
    .await;
    let returned = publish_unroutable(&ch, "x", "k", b"back").await;
    assert_eq!(returned.delivery.data, b"back");
}

// ---------------------------------------------------------------------------------------
// CC / BCC (sender-selected distribution)

fn keys(list: &[&str]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        list.iter().map(|k| long(k)).collect::<Vec<_>>(),
    ))
}

async fn get_headers(ch: &Channel, queue: &str) -> FieldTable {
    let message = within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{queue} should have a message"));
    message
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn cc_header_adds_routing_keys_and_is_kept() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    for q in ["q1", "q2", "q3", "q4"] {
        queue(&ch, q).await;
        bind(&ch, q, "d", &format!("k{}", &q[1..])).await;
    }
    let properties = BasicProperties::default()
        .with_headers(table(&[("CC", keys(&["k2", "k3"])), ("other", long("v"))]));
    publish_with(&ch, "d", "k1", b"m", properties).await;
    for q in ["q1", "q2", "q3"] {
        let headers = get_headers(&ch, q).await;
        assert!(headers.contains_key("CC"), "{q}: {headers:?}");
        assert!(headers.contains_key("other"), "{q}: {headers:?}");
    }
    assert!(drain(&ch, "q4").await.is_empty());
}

#[tokio::test]
async fn bcc_header_adds_routing_keys_and_is_removed() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    for q in ["q1", "q2", "q3"] {
        queue(&ch, q).await;
        bind(&ch, q, "d", &format!("k{}", &q[1..])).await;
    }
    let properties = BasicProperties::default().with_headers(table(&[
        ("CC", keys(&["k2"])),
        ("BCC", keys(&["k3"])),
        ("other", long("v")),
    ]));
    publish_with(&ch, "d", "k1", b"m", properties).await;
    for q in ["q1", "q2", "q3"] {
        let headers = get_headers(&ch, q).await;
        assert!(!headers.contains_key("BCC"), "{q}: {headers:?}");
        assert!(headers.contains_key("CC"), "{q}: {headers:?}");
        assert!(headers.contains_key("other"), "{q}: {headers:?}");
    }
}

#[tokio::test]
async fn cc_keys_reach_the_default_exchange_and_topics() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    queue(&ch, "plain").await;
    queue(&ch, "copy").await;
    let properties = BasicProperties::default().with_headers(table(&[("CC", keys(&["copy"]))]));
    publish_with(&ch, "", "plain", b"m", properties).await;
    assert_eq!(drain(&ch, "plain").await, ["m"]);
    assert_eq!(drain(&ch, "copy").await, ["m"]);

    exchange(&ch, "t", ExchangeKind::Topic, FieldTable::default()).await;
    bind(&ch, "copy", "t", "audit.#").await;
    let properties =
        BasicProperties::default().with_headers(table(&[("BCC", keys(&["audit.x.y"]))]));
    publish_with(&ch, "t", "unbound", b"t", properties).await;
    assert_eq!(drain(&ch, "copy").await, ["t"]);
}

// ---------------------------------------------------------------------------------------
// mandatory

#[tokio::test]
async fn mandatory_unroutable_is_returned_with_312_no_route() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    // rabbit_channel:process_routing_mandatory → basic.return before the ack.
    let returned = publish_unroutable(&ch, "d", "nowhere", b"come back").await;
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "d");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(returned.delivery.data, b"come back");
    // The default exchange returns too when no queue has the name.
    let answer = publish_confirmed(&ch, "", "no-such-queue", true, b"x").await;
    assert!(matches!(answer, Confirmation::Ack(Some(_))), "{answer:?}");
}

#[tokio::test]
async fn non_mandatory_unroutable_is_dropped_silently() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    let answer = publish_confirmed(&ch, "d", "nowhere", false, b"gone").await;
    assert!(matches!(answer, Confirmation::Ack(None)), "{answer:?}");
    assert!(ch.status().connected());
}

#[tokio::test]
async fn mandatory_routable_is_not_returned() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    queue(&ch, "q").await;
    let answer = publish_confirmed(&ch, "", "q", true, b"kept").await;
    assert!(matches!(answer, Confirmation::Ack(None)), "{answer:?}");
    assert_eq!(drain(&ch, "q").await, ["kept"]);
}

#[tokio::test]
async fn alternate_exchange_pointing_at_itself_does_not_loop() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    exchange(
        &ch,
        "x",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", long("y"))]),
    )
    .await;
    exchange(
        &ch,
        "y",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", long("x"))]),
    )
    .await;
    let answer = publish_confirmed(&ch, "x", "k", true, b"m").await;
    assert!(matches!(answer, Confirmation::Ack(Some(_))), "{answer:?}");
    assert!(ch.status().connected());
}

#[tokio::test]
async fn bindings_differing_only_by_arguments_are_distinct() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    queue(&ch, "q").await;
    let tagged = table(&[("tag", long("1"))]);
    bind(&ch, "q", "d", "k").await;
    bind_with(&ch, "q", "d", "k", tagged.clone()).await;
    within(ch.queue_unbind("q".into(), "d".into(), "k".into(), FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "d", "k", b"still bound").await;
    assert_eq!(drain(&ch, "q").await, ["still bound"]);
    within(ch.queue_unbind("q".into(), "d".into(), "k".into(), tagged))
        .await
        .unwrap();
    publish(&ch, "d", "k", b"unbound").await;
    assert!(drain(&ch, "q").await.is_empty());
}

#[tokio::test]
async fn binding_twice_is_one_binding() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    for (x, kind, key) in [
        ("d", ExchangeKind::Direct, "k"),
        ("t", ExchangeKind::Topic, "k.#"),
        ("f", ExchangeKind::Fanout, ""),
    ] {
        exchange(&ch, x, kind, FieldTable::default()).await;
        queue(&ch, x).await;
        bind(&ch, x, x, key).await;
        bind(&ch, x, x, key).await;
        within(ch.queue_unbind(x.into(), x.into(), key.into(), FieldTable::default()))
            .await
            .unwrap();
        publish(&ch, x, "k", b"unbound").await;
        assert!(drain(&ch, x).await.is_empty(), "{x}");
    }
}

#[tokio::test]
async fn headers_unbind_needs_the_same_arguments() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "h", ExchangeKind::Headers, FieldTable::default()).await;
    queue(&ch, "q").await;
    let args = table(&[("x-match", long("any")), ("a", long("1"))]);
    bind_with(&ch, "q", "h", "", args.clone()).await;
    let message = || BasicProperties::default().with_headers(table(&[("a", long("1"))]));
    within(ch.queue_unbind(
        "q".into(),
        "h".into(),
        "".into(),
        table(&[("a", long("1"))]),
    ))
    .await
    .unwrap();
    publish_with(&ch, "h", "", b"bound", message()).await;
    within(ch.queue_unbind("q".into(), "h".into(), "".into(), args))
        .await
        .unwrap();
    publish_with(&ch, "h", "", b"unbound", message()).await;
    assert_eq!(drain(&ch, "q").await, ["bound"]);
}

#[tokio::test]
async fn exchange_bound_to_itself_delivers_once() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "x", ExchangeKind::Fanout, FieldTable::default()).await;
    bind_exchange(&ch, "x", "x", "").await;
    queue(&ch, "q").await;
    bind(&ch, "q", "x", "").await;
    publish(&ch, "x", "", b"once").await;
    assert_eq!(drain(&ch, "q").await, ["once"]);
}

// ---------------------------------------------------------------------------------------
// a publishing channel keeps its last routing result while the topology stays the same

/// Publishes twice with the same exchange and key (the second one may reuse the channel's
/// routing result), then checks where both went.
async fn publish_twice(ch: &Channel, exchange: &str, key: &str, body: &str) {
    publish(ch, exchange, key, body.as_bytes()).await;
    publish(ch, exchange, key, body.as_bytes()).await;
}

#[tokio::test]
async fn repeated_publishes_follow_topology_changes_made_elsewhere() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    // Topology changes come from another connection, between the publisher's messages.
    let admin_conn = common::lapin(&broker).await;
    let admin = admin_conn.create_channel().await.unwrap();
    exchange(&admin, "x", ExchangeKind::Direct, FieldTable::default()).await;
    queue(&admin, "a").await;
    bind(&admin, "a", "x", "k").await;
    publish_twice(&ch, "x", "k", "1").await;
    assert_eq!(drain(&ch, "a").await, ["1", "1"]);

    queue(&admin, "b").await;
    bind(&admin, "b", "x", "k").await;
    publish_twice(&ch, "x", "k", "2").await;
    assert_eq!(drain(&ch, "a").await, ["2", "2"]);
    assert_eq!(drain(&ch, "b").await, ["2", "2"]);

    within(admin.queue_unbind("a".into(), "x".into(), "k".into(), FieldTable::default()))
        .await
        .unwrap();
    publish_twice(&ch, "x", "k", "3").await;
    assert!(drain(&ch, "a").await.is_empty());
    assert_eq!(drain(&ch, "b").await, ["3", "3"]);

    within(admin.queue_delete("b".into(), Default::default()))
        .await
        .unwrap();
    // A deleted queue's messages come back.
    for _ in 0..2 {
        publish_unroutable(&ch, "x", "k", b"4").await;
    }

    // The default exchange: a queue declared after the first publish gets the next ones.
    publish_unroutable(&ch, "", "c", b"5").await;
    queue(&admin, "c").await;
    publish_twice(&ch, "", "c", "5").await;
    assert_eq!(drain(&ch, "c").await, ["5", "5"]);

    // An alternate exchange declared after a publish found it missing.
    exchange(
        &admin,
        "y",
        ExchangeKind::Direct,
        table(&[("alternate-exchange", long("ae"))]),
    )
    .await;
    publish_unroutable(&ch, "y", "z", b"6").await;
    exchange(&admin, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    queue(&admin, "d").await;
    bind(&admin, "d", "ae", "").await;
    publish_twice(&ch, "y", "z", "6").await;
    assert_eq!(drain(&ch, "d").await, ["6", "6"]);
}
