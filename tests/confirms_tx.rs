//! Publisher confirms and transactions over real TCP. RabbitMQ's behaviour is the
//! reference (rabbit_channel.erl, rabbitmq.com/docs/confirms); each test names the rule.
//!
//! Confirm frames are checked with a raw client (module `raw` below, over `ferrymq_wire`)
//! so that every basic.ack, its `multiple` flag and its position relative to basic.return
//! are visible; lapin covers the same features as an application sees them.

mod common;

use std::collections::BTreeSet;

use common::{declare, ready, reply_code, s, within, TestBroker};
use ferrymq_wire::Method;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

async fn channel(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("channel.open")
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

async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<lapin::message::BasicGetMessage> {
    within(ch.basic_get(s(queue), BasicGetOptions { no_ack }))
        .await
        .expect("basic.get")
}

async fn get_body(ch: &Channel, queue: &str) -> Option<String> {
    get(ch, queue, true)
        .await
        .map(|m| String::from_utf8(m.delivery.data).unwrap())
}

/// Records confirms as they arrive: each sequence number must be settled exactly once, and
/// a `multiple` ack settles everything unsettled up to its tag.
#[derive(Default)]
struct ConfirmLog {
    acked: BTreeSet<u64>,
    published: u64,
}

impl ConfirmLog {
    fn ack(&mut self, tag: u64, multiple: bool) {
        assert!(
            tag >= 1 && tag <= self.published,
            "ack for unknown seq {tag}"
        );
        if multiple {
            let newly: Vec<u64> = (1..=tag).filter(|t| !self.acked.contains(t)).collect();
            assert!(!newly.is_empty(), "multiple ack {tag} settles nothing new");
            self.acked.extend(newly);
        } else {
            assert!(self.acked.insert(tag), "seq {tag} acked twice");
        }
    }

    fn all_acked(&self) -> bool {
        self.acked.len() as u64 == self.published
    }
}

/// Reads frames until every publish is acked, then checks that nothing else arrives.
async fn collect_confirms(raw: &mut raw::Raw, log: &mut ConfirmLog) {
    while !log.all_acked() {
        match raw.recv_method().await {
            (1, Method::BasicAck(ack)) => log.ack(ack.delivery_tag, ack.multiple),
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    raw.assert_quiet().await;
}

async fn raw_confirm_channel(broker: &TestBroker) -> raw::Raw {
    let mut raw = raw::Raw::open(broker).await;
    raw.send(
        1,
        Method::ConfirmSelect(ferrymq_wire::ConfirmSelect { nowait: false }),
    )
    .await;
    match raw.recv_method().await {
        (1, Method::ConfirmSelectOk(_)) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    raw
}

// ---------------------------------------------------------------------------------------
// publisher confirms

#[tokio::test]
async fn every_publish_is_acked_exactly_once() {
    let broker = TestBroker::start().await;
    let mut raw = raw_confirm_channel(&broker).await;
    raw.declare_queue(1, "q").await;
    let mut log = ConfirmLog::default();
    // Sequence numbers start at 1 on confirm.select and count every basic.publish.
    for i in 0..1_000 {
        raw.publish(1, "", "q", false, format!("m{i}").as_bytes())
            .await;
        log.published += 1;
    }
    collect_confirms(&mut raw, &mut log).await;
    let conn = common::lapin(&broker).await;
    assert_eq!(ready(&channel(&conn).await, "q").await, 1_000);
}

#[tokio::test]
async fn unroutable_publish_is_acked() {
    let broker = TestBroker::start().await;
    let mut raw = raw_confirm_channel(&broker).await;
    raw.publish(1, "amq.direct", "nowhere", false, b"x").await;
    // rabbitmq.com/docs/confirms: "For unroutable messages, the broker will issue a
    // confirm once the exchange verifies a message won't route to any queue".
    match raw.recv_method().await {
        // RabbitMQ's coalesce_and_send marks an ack `multiple` whenever nothing below it
        // is unconfirmed, even for a single message; either flag settles exactly seq 1.
        (1, Method::BasicAck(ack)) => assert_eq!(ack.delivery_tag, 1),
        other => panic!("expected basic.ack, got {other:?}"),
    }
    raw.assert_quiet().await;
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_before_it_is_acked() {
    let broker = TestBroker::start().await;
    let mut raw = raw_confirm_channel(&broker).await;
    raw.publish(1, "amq.direct", "nowhere", true, b"back").await;
    // "basic.return is sent to the client before basic.ack" (rabbitmq.com confirms).
    match raw.recv_method().await {
        (1, Method::BasicReturn(ret)) => {
            assert_eq!(ret.reply_code, 312);
            assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(ret.exchange.as_str(), "amq.direct");
            assert_eq!(ret.routing_key.as_str(), "nowhere");
        }
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert_eq!(raw.content().await, b"back");
    match raw.recv_method().await {
        (1, Method::BasicAck(ack)) => assert_eq!(ack.delivery_tag, 1),
        other => panic!("expected basic.ack, got {other:?}"),
    }
    raw.assert_quiet().await;
}

#[tokio::test]
async fn publishes_fanned_out_to_three_queues_are_acked_once() {
    let broker = TestBroker::start().await;
    let mut raw = raw_confirm_channel(&broker).await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    within(ch.exchange_declare(
        s("fan"),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for q in ["q1", "q2", "q3"] {
        declare(&ch, q).await;
        within(ch.queue_bind(
            s(q),
            s("fan"),
            s(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    let mut log = ConfirmLog::default();
    for i in 0..300 {
        raw.publish(1, "fan", "", false, format!("m{i}").as_bytes())
            .await;
        log.published += 1;
    }
    // A message is confirmed when every queue it was routed to has it: one ack per
    // publish, never one per queue.
    collect_confirms(&mut raw, &mut log).await;
    for q in ["q1", "q2", "q3"] {
        assert_eq!(ready(&ch, q).await, 300);
    }
}

#[tokio::test]
async fn mixed_routable_and_unroutable_publishes_are_all_acked_in_one_sequence() {
    let broker = TestBroker::start().await;
    let mut raw = raw_confirm_channel(&broker).await;
    raw.declare_queue(1, "q").await;
    let mut log = ConfirmLog::default();
    for i in 0..200 {
        let key = if i % 3 == 0 { "nowhere" } else { "q" };
        raw.publish(1, "", key, false, b"x").await;
        log.published += 1;
    }
    collect_confirms(&mut raw, &mut log).await;
}

#[tokio::test]
async fn lapin_sees_every_publish_confirmed() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    declare(&ch, "q").await;
    let mut pending = Vec::new();
    for i in 0..500 {
        let confirm = within(ch.basic_publish(
            s(""),
            s("q"),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        pending.push(confirm);
    }
    for confirm in pending {
        let confirmation = within(confirm).await.unwrap();
        assert!(
            matches!(confirmation, Confirmation::Ack(None)),
            "{confirmation:?}"
        );
    }
    // Mandatory and unroutable: acked, carrying the returned message.
    let confirm = within(ch.basic_publish(
        s("amq.direct"),
        s("nowhere"),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        b"back",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    match within(confirm).await.unwrap() {
        Confirmation::Ack(Some(returned)) => {
            assert_eq!(returned.data, b"back");
            assert_eq!(returned.reply_code, 312);
        }
        other => panic!("expected an ack with the returned message, got {other:?}"),
    }
    assert_eq!(ready(&ch, "q").await, 500);
}

#[tokio::test]
async fn confirm_select_on_a_transactional_channel_is_406() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    within(ch.tx_select()).await.unwrap();
    // rabbit_channel: precondition_failed("cannot switch from tx to confirm mode").
    let err = within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect_err("refused");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
}

#[tokio::test]
async fn tx_select_on_a_confirm_channel_is_406() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    // rabbit_channel: precondition_failed("cannot switch from confirm to tx mode").
    let err = within(ch.tx_select()).await.expect_err("refused");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    // A channel error only: the connection goes on.
    let ch = channel(&conn).await;
    declare(&ch, "still-works").await;
}

// ---------------------------------------------------------------------------------------
// transactions

#[tokio::test]
async fn transactional_publishes_are_invisible_until_commit() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let observer = channel(&conn).await;
    declare(&observer, "q").await;
    let tx = channel(&conn).await;
    within(tx.tx_select()).await.unwrap();
    for i in 0..3 {
        publish(&tx, "q", &format!("m{i}")).await;
    }
    ready(&tx, "q").await;
    assert_eq!(ready(&observer, "q").await, 0);
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(ready(&observer, "q").await, 3);
    for i in 0..3 {
        assert_eq!(get_body(&observer, "q").await, Some(format!("m{i}")));
    }
    // After a commit a new transaction starts at once: the channel stays transactional.
    publish(&tx, "q", "m3").await;
    assert_eq!(ready(&observer, "q").await, 0);
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(ready(&observer, "q").await, 1);
}

#[tokio::test]
async fn rollback_discards_transactional_publishes() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    within(ch.tx_select()).await.unwrap();
    publish(&ch, "q", "dropped").await;
    within(ch.tx_rollback()).await.unwrap();
    publish(&ch, "q", "kept").await;
    within(ch.tx_commit()).await.unwrap();
    assert_eq!(ready(&ch, "q").await, 1);
    assert_eq!(get_body(&ch, "q").await.as_deref(), Some("kept"));
}

#[tokio::test]
async fn uncommitted_publishes_are_dropped_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "q").await;
    let tx = channel(&conn).await;
    within(tx.tx_select()).await.unwrap();
    publish(&tx, "q", "never").await;
    within(tx.close(200, s("bye"))).await.unwrap();
    assert_eq!(ready(&ch, "q").await, 0);
}

/// Two messages fetched with acks on a transactional channel.
async fn two_unacked_in_a_tx(conn: &Connection) -> (Channel, Channel, Vec<u64>) {
    let observer = channel(conn).await;
    declare(&observer, "q").await;
    publish(&observer, "q", "m0").await;
    publish(&observer, "q", "m1").await;
    ready(&observer, "q").await;
    let tx = channel(conn).await;
    within(tx.tx_select()).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..2 {
        tags.push(get(&tx, "q", false).await.unwrap().delivery.delivery_tag);
    }
    (observer, tx, tags)
}

#[tokio::test]
async fn acks_in_a_transaction_take_effect_at_commit() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let (observer, tx, tags) = two_unacked_in_a_tx(&conn).await;
    within(tx.basic_ack(tags[0], BasicAckOptions::default()))
        .await
        .unwrap();
    within(tx.tx_commit()).await.unwrap();
    // m0 is acked for good; m1 was never acked and comes back when the channel closes.
    within(tx.close(200, s("bye"))).await.unwrap();
    assert_eq!(ready(&observer, "q").await, 1);
    assert_eq!(get_body(&observer, "q").await.as_deref(), Some("m1"));
}

#[tokio::test]
async fn rolled_back_acks_leave_the_messages_unacked() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let (observer, tx, tags) = two_unacked_in_a_tx(&conn).await;
    within(tx.basic_ack(tags[1], BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    within(tx.tx_rollback()).await.unwrap();
    // rabbit_channel tx.rollback puts the acked tags back into the unacked queue: they can
    // be acked again, and the rest stays unacked.
    within(tx.basic_ack(tags[0], BasicAckOptions::default()))
        .await
        .unwrap();
    within(tx.tx_commit()).await.unwrap();
    within(tx.close(200, s("bye"))).await.unwrap();
    assert_eq!(ready(&observer, "q").await, 1);
    let back = get(&observer, "q", true).await.unwrap();
    assert_eq!(back.delivery.data, b"m1");
    assert!(back.delivery.redelivered);
}

#[tokio::test]
async fn uncommitted_acks_are_forgotten_when_the_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let (observer, tx, tags) = two_unacked_in_a_tx(&conn).await;
    within(tx.basic_ack(0, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    let _ = tags;
    within(tx.close(200, s("bye"))).await.unwrap();
    assert_eq!(ready(&observer, "q").await, 2);
}

#[tokio::test]
async fn nack_with_requeue_in_a_transaction_requeues_at_commit() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let (observer, tx, tags) = two_unacked_in_a_tx(&conn).await;
    within(tx.basic_nack(
        tags[0],
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    assert_eq!(ready(&observer, "q").await, 0);
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(ready(&observer, "q").await, 1);
    let back = get(&observer, "q", true).await.unwrap();
    assert_eq!(back.delivery.data, b"m0");
    assert!(back.delivery.redelivered);
}

#[tokio::test]
async fn acking_the_same_tag_twice_in_a_transaction_is_406() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.declare_queue(1, "q").await;
    raw.publish(1, "", "q", false, b"m0").await;
    raw.publish(1, "", "q", false, b"m1").await;
    raw.send(1, Method::TxSelect(ferrymq_wire::TxSelect)).await;
    match raw.recv_method().await {
        (1, Method::TxSelectOk(_)) => {}
        other => panic!("expected tx.select-ok, got {other:?}"),
    }
    raw.consume(1, "q", "c", false).await;
    raw.expect_delivery().await;
    raw.expect_delivery().await;
    // rabbit_channel collects acked tags out of the unacked queue when the ack arrives,
    // also in a transaction: the second ack of tag 1 is an unknown delivery tag.
    let ack = |tag| {
        Method::BasicAck(ferrymq_wire::BasicAck {
            delivery_tag: tag,
            multiple: false,
        })
    };
    raw.send(1, ack(1)).await;
    raw.send(1, ack(1)).await;
    let close = raw.expect_channel_close(1).await;
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (406, 60, 80)
    );
}

#[tokio::test]
async fn commit_and_rollback_without_select_are_406() {
    let broker = TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    // rabbit_channel: precondition_failed("channel is not transactional").
    let ch = channel(&conn).await;
    let err = within(ch.tx_commit()).await.expect_err("refused");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    let ch = channel(&conn).await;
    let err = within(ch.tx_rollback()).await.expect_err("refused");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
}

#[tokio::test]
async fn mandatory_unroutable_publish_in_a_transaction_is_returned_at_commit() {
    let broker = TestBroker::start().await;
    let mut raw = raw::Raw::open(&broker).await;
    raw.send(1, Method::TxSelect(ferrymq_wire::TxSelect)).await;
    match raw.recv_method().await {
        (1, Method::TxSelectOk(_)) => {}
        other => panic!("expected tx.select-ok, got {other:?}"),
    }
    raw.publish(1, "amq.direct", "nowhere", true, b"back").await;
    raw.assert_quiet().await;
    raw.send(1, Method::TxCommit(ferrymq_wire::TxCommit)).await;
    match raw.recv_method().await {
        (1, Method::BasicReturn(ret)) => assert_eq!(ret.reply_code, 312),
        other => panic!("expected basic.return, got {other:?}"),
    }
    assert_eq!(raw.content().await, b"back");
    match raw.recv_method().await {
        (1, Method::TxCommitOk(_)) => {}
        other => panic!("expected tx.commit-ok, got {other:?}"),
    }
}

#[path = "wire_client/mod.rs"]
mod raw;
