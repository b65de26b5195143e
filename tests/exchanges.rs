//! exchange.declare / delete / bind / unbind over real TCP with lapin, checked against
//! RabbitMQ's behaviour (`rabbit_channel.erl`, `rabbit_exchange.erl`): reply codes, which
//! errors close the channel and which the connection, and RabbitMQ's wording where clients
//! and operators match on it.

mod common;

use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind, ExchangeKind};

/// Every broker round trip must answer well within this; a hang fails the test fast.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_TIMEOUT, future)
        .await
        .expect("the broker did not answer in time")
}

/// The reply code and text the broker closed the channel or connection with.
fn closed_with<T: std::fmt::Debug>(result: lapin::Result<T>) -> (u16, String) {
    let error = result.expect_err("the broker should have refused this");
    match error.kind() {
        ErrorKind::ProtocolError(e) => (e.get_id(), e.get_message().to_string()),
        other => panic!("expected an AMQP error, got {other:?}"),
    }
}

fn options(durable: bool, auto_delete: bool, internal: bool) -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable,
        auto_delete,
        internal,
        ..Default::default()
    }
}

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn declare(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap_or_else(|e| panic!("declaring exchange {name}: {e}"));
}

async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = within(conn.create_channel()).await.unwrap();
    let result = within(ch.exchange_declare(
        name.into(),
        ExchangeKind::Direct,
        passive(),
        FieldTable::default(),
    ))
    .await;
    match result {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(closed_with::<()>(Err(e)).0, 404);
            false
        }
    }
}

async fn declare_queue(ch: &Channel, name: &str) {
    within(ch.queue_declare(
        name.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

async fn bind_queue(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    within(ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    ))
    .await
    .unwrap();
}

/// basic.get on the publishing channel: the broker handles a channel's frames in order,
/// so a publish sent before it has been routed and enqueued by then.
async fn get(ch: &Channel, queue: &str) -> Option<Vec<u8>> {
    within(ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .map(|m| m.delivery.data)
}

/// Publishes in confirm mode and returns how the broker closed the channel for it. The
/// refusal of an asynchronous publish arrives as channel.close; the pending confirm is the
/// one place lapin reports it without racing the close.
async fn publish_refused(ch: &Channel, exchange: &str) -> (u16, String) {
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    let confirm = within(ch.basic_publish(
        exchange.into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    closed_with(within(confirm).await)
}

fn alternate(name: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(LongString::from(name)),
    );
    args
}

#[tokio::test]
async fn declares_every_exchange_type() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    for (name, kind) in [
        ("x.direct", ExchangeKind::Direct),
        ("x.fanout", ExchangeKind::Fanout),
        ("x.topic", ExchangeKind::Topic),
        ("x.headers", ExchangeKind::Headers),
    ] {
        declare(&ch, name, kind).await;
        assert!(exchange_exists(&conn, name).await, "{name}");
    }
}

#[tokio::test]
async fn passive_declare_of_missing_exchange_is_404_on_the_channel_only() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.exchange_declare(
        "nope".into(),
        ExchangeKind::Direct,
        passive(),
        FieldTable::default(),
    ))
    .await;
    // rabbit_exchange:lookup_or_die → not_found "no exchange 'nope' in vhost '/'".
    let (code, text) = closed_with(result);
    assert_eq!(code, 404);
    assert_eq!(text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
    assert!(!ch.status().connected());
    assert!(conn.status().connected());
    let again = within(conn.create_channel()).await.unwrap();
    declare(&again, "after", ExchangeKind::Fanout).await;
}

#[tokio::test]
async fn redeclare_with_other_type_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x", ExchangeKind::Direct).await;
    let result = within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    // rabbit_misc:assert_field_equivalence wording.
    let (code, text) = closed_with(result);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': \
         received 'fanout' but current is 'direct'"
    );
    assert!(conn.status().connected());
}

#[tokio::test]
async fn redeclare_with_other_flags_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x", ExchangeKind::Topic).await;
    for (field, changed) in [
        ("durable", options(true, false, false)),
        ("auto_delete", options(false, true, false)),
        ("internal", options(false, false, true)),
    ] {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Topic,
            changed,
            FieldTable::default(),
        ))
        .await;
        let (code, text) = closed_with(result);
        assert_eq!(code, 406, "{field}");
        assert!(
            text.contains(&format!("inequivalent arg '{field}' for exchange 'x'")),
            "{text}"
        );
    }
    assert!(conn.status().connected());
}

#[tokio::test]
async fn redeclare_with_other_alternate_exchange_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        alternate("ae1"),
    ))
    .await
    .unwrap();
    let result = within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        alternate("ae2"),
    ))
    .await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 406);
    assert!(
        text.contains("inequivalent arg 'alternate-exchange'"),
        "{text}"
    );
}

#[tokio::test]
async fn redeclare_with_same_properties_is_ok() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    for _ in 0..2 {
        within(ch.exchange_declare(
            "x".into(),
            ExchangeKind::Headers,
            options(true, false, false),
            alternate("ae"),
        ))
        .await
        .unwrap();
    }
    // A passive declare ignores type and flags (rabbit_channel: passive = true clause).
    within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Fanout,
        passive(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn unknown_exchange_type_is_connection_error_503() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Custom("x-no-such-type".into()),
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    // rabbit_exchange:check_type → command_invalid, a hard error.
    let (code, text) = closed_with(result);
    assert_eq!(code, 503);
    assert!(
        text.contains("unknown exchange type 'x-no-such-type'"),
        "{text}"
    );
    within(async {
        while conn.status().connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn declaring_amq_prefixed_exchange_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.exchange_declare(
        "amq.mine".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    // rabbit_channel:check_name.
    let (code, text) = closed_with(result);
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - exchange name 'amq.mine' contains reserved prefix 'amq.*'"
    );
    assert!(conn.status().connected());
}

#[tokio::test]
async fn declaring_the_default_exchange_is_403_even_passively() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    for passive in [false, true] {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = within(ch.exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await;
        // rabbit_channel:check_not_default_exchange runs for both declare clauses.
        let (code, text) = closed_with(result);
        assert_eq!(code, 403, "passive={passive}");
        assert_eq!(
            text,
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        );
    }
}

#[tokio::test]
async fn predeclared_exchanges_exist() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    for name in [
        "amq.direct",
        "amq.fanout",
        "amq.topic",
        "amq.headers",
        "amq.match",
    ] {
        assert!(exchange_exists(&conn, name).await, "{name}");
    }
    // Redeclaring an existing amq.* exchange with its own properties is allowed: the
    // reserved-prefix check only applies on creation (rabbit_channel comment on check_name).
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_declare(
        "amq.topic".into(),
        ExchangeKind::Topic,
        options(true, false, false),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn predeclared_exchanges_route_by_their_type() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, "q").await;
    bind_queue(&ch, "q", "amq.direct", "k").await;
    bind_queue(&ch, "q", "amq.fanout", "ignored").await;
    bind_queue(&ch, "q", "amq.topic", "a.*").await;
    publish(&ch, "amq.direct", "k", b"direct").await;
    publish(&ch, "amq.fanout", "anything", b"fanout").await;
    publish(&ch, "amq.topic", "a.b", b"topic").await;
    publish(&ch, "amq.topic", "b.a", b"not routed").await;
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"direct"[..]));
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"fanout"[..]));
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"topic"[..]));
    assert_eq!(get(&ch, "q").await, None);
}

#[tokio::test]
async fn amq_default_publishes_like_the_default_exchange() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare_queue(&ch, "q").await;
    publish(&ch, "", "q", b"one").await;
    publish(&ch, "amq.default", "q", b"two").await;
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"one"[..]));
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"two"[..]));
}

#[tokio::test]
async fn publish_to_missing_exchange_is_404() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let (code, text) = publish_refused(&ch, "nope").await;
    assert_eq!(code, 404);
    assert_eq!(text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
    assert!(conn.status().connected());
}

#[tokio::test]
async fn publish_to_internal_exchange_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_declare(
        "inside".into(),
        ExchangeKind::Fanout,
        options(false, false, true),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // rabbit_channel:check_internal_exchange.
    let (code, text) = publish_refused(&ch, "inside").await;
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - cannot publish to internal exchange 'inside' in vhost '/'"
    );
    assert!(conn.status().connected());
}

#[tokio::test]
async fn internal_exchange_receives_through_an_exchange_binding() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "front", ExchangeKind::Direct).await;
    within(ch.exchange_declare(
        "inside".into(),
        ExchangeKind::Fanout,
        options(false, false, true),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_bind(
        "inside".into(),
        "front".into(),
        "k".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare_queue(&ch, "q").await;
    bind_queue(&ch, "q", "inside", "").await;
    publish(&ch, "front", "k", b"via").await;
    assert_eq!(get(&ch, "q").await.as_deref(), Some(&b"via"[..]));
}

#[tokio::test]
async fn deleting_a_missing_exchange_is_ok() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_delete("nope".into(), ExchangeDeleteOptions::default()))
        .await
        .unwrap();
    // Also with if_unused (rabbit_exchange:ensure_deleted treats not_found as ok).
    within(ch.exchange_delete(
        "nope".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert!(ch.status().connected());
}

#[tokio::test]
async fn delete_if_unused_with_bindings_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x", ExchangeKind::Direct).await;
    declare_queue(&ch, "q").await;
    bind_queue(&ch, "q", "x", "k").await;
    let result = within(ch.exchange_delete(
        "x".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - exchange 'x' in vhost '/' in use"
    );
    assert!(exchange_exists(&conn, "x").await);
}

#[tokio::test]
async fn delete_if_unused_without_bindings_deletes() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x", ExchangeKind::Direct).await;
    // Being the destination of an exchange binding does not make it "used": RabbitMQ
    // checks bindings whose source is the exchange only.
    within(ch.exchange_bind(
        "x".into(),
        "amq.fanout".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_delete(
        "x".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert!(!exchange_exists(&conn, "x").await);
}

#[tokio::test]
async fn deleting_an_amq_exchange_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.exchange_delete("amq.direct".into(), Default::default())).await;
    // rabbit_channel:check_exchange_deletion.
    let (code, text) = closed_with(result);
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"
    );
    assert!(exchange_exists(&conn, "amq.direct").await);
}

#[tokio::test]
async fn deleting_the_default_exchange_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let result = within(ch.exchange_delete("".into(), Default::default())).await;
    let (code, text) = closed_with(result);
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
}

#[tokio::test]
async fn deleting_an_exchange_removes_its_bindings() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "x", ExchangeKind::Direct).await;
    declare_queue(&ch, "q").await;
    bind_queue(&ch, "q", "x", "k").await;
    within(ch.exchange_delete("x".into(), Default::default()))
        .await
        .unwrap();
    declare(&ch, "x", ExchangeKind::Direct).await;
    publish(&ch, "x", "k", b"lost").await;
    assert_eq!(get(&ch, "q").await, None);
}

#[tokio::test]
async fn auto_delete_exchange_goes_away_with_its_last_binding() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_declare(
        "ad".into(),
        ExchangeKind::Direct,
        options(false, true, false),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Never bound: it stays (RabbitMQ deletes on the removal of the last binding only).
    assert!(exchange_exists(&conn, "ad").await);
    declare_queue(&ch, "q").await;
    bind_queue(&ch, "q", "ad", "a").await;
    bind_queue(&ch, "q", "ad", "b").await;
    within(ch.queue_unbind("q".into(), "ad".into(), "a".into(), FieldTable::default()))
        .await
        .unwrap();
    assert!(exchange_exists(&conn, "ad").await, "one binding is left");
    within(ch.queue_unbind("q".into(), "ad".into(), "b".into(), FieldTable::default()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, "ad").await);
}

#[tokio::test]
async fn auto_delete_exchange_goes_away_when_its_last_queue_is_deleted() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_declare(
        "ad".into(),
        ExchangeKind::Fanout,
        options(false, true, false),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare_queue(&ch, "q").await;
    bind_queue(&ch, "q", "ad", "").await;
    within(ch.queue_delete("q".into(), QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, "ad").await);
}

#[tokio::test]
async fn exchange_bind_with_missing_source_or_destination_is_404() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    declare(&setup, "x", ExchangeKind::Direct).await;
    for (destination, source, missing) in [("x", "nope", "nope"), ("nope", "x", "nope")] {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = within(ch.exchange_bind(
            destination.into(),
            source.into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ))
        .await;
        let (code, text) = closed_with(result);
        assert_eq!(code, 404);
        assert_eq!(
            text,
            format!("NOT_FOUND - no exchange '{missing}' in vhost '/'")
        );
    }
}

#[tokio::test]
async fn exchange_bind_to_or_from_the_default_exchange_is_403() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let setup = conn.create_channel().await.unwrap();
    declare(&setup, "x", ExchangeKind::Fanout).await;
    // rabbit_channel:binding_action_with_checks checks both ends.
    for (destination, source) in [("x", ""), ("", "x")] {
        let ch = within(conn.create_channel()).await.unwrap();
        let result = within(ch.exchange_bind(
            destination.into(),
            source.into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ))
        .await;
        let (code, text) = closed_with(result);
        assert_eq!(code, 403, "{destination:?} <- {source:?}");
        assert_eq!(
            text,
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        );
    }
}

#[tokio::test]
async fn exchange_unbind_of_a_missing_binding_is_ok() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "a", ExchangeKind::Direct).await;
    declare(&ch, "b", ExchangeKind::Direct).await;
    within(ch.exchange_unbind(
        "b".into(),
        "a".into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert!(ch.status().connected());
}

#[tokio::test]
async fn auto_delete_exchange_goes_away_with_its_last_exchange_binding() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    within(ch.exchange_declare(
        "ad".into(),
        ExchangeKind::Fanout,
        options(false, true, false),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    declare(&ch, "sink", ExchangeKind::Fanout).await;
    within(ch.exchange_bind(
        "sink".into(),
        "ad".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    // Deleting the destination removes the binding, which was the source's last.
    within(ch.exchange_delete("sink".into(), Default::default()))
        .await
        .unwrap();
    assert!(!exchange_exists(&conn, "ad").await);
}

#[tokio::test]
async fn deleting_an_exchange_unbinds_it_from_its_sources() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "src", ExchangeKind::Fanout).await;
    declare(&ch, "mid", ExchangeKind::Fanout).await;
    within(ch.exchange_bind(
        "mid".into(),
        "src".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.exchange_delete("mid".into(), Default::default()))
        .await
        .unwrap();
    // src has no bindings left, so an if_unused delete succeeds.
    within(ch.exchange_delete(
        "src".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert!(!exchange_exists(&conn, "src").await);
}

#[tokio::test]
async fn alternate_exchange_argument_of_the_wrong_type_is_406() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("alternate-exchange".into(), AMQPValue::LongInt(7));
    let result = within(ch.exchange_declare(
        "x".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        args,
    ))
    .await;
    // rabbit_channel exchange.declare: rabbit_misc:r_arg → {error, {invalid_type, Type}}.
    let (code, text) = closed_with(result);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' in \
         exchange 'x' in vhost '/'"
    );
    assert!(!exchange_exists(&conn, "x").await);
}
