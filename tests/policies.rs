//! Policies from the configuration file: the highest-priority matching policy fills in the
//! arguments of the queues and exchanges it matches, declared arguments win where RabbitMQ
//! says they do, and the policies apply again when durable definitions are restored.

mod common;

use common::{declare, ready, s, within, TestBroker};
use ferrymq::config::PolicyConfig;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

/// A policy written as it would be in the config file's `[[policies]]` table.
fn policy(toml_text: &str) -> PolicyConfig {
    toml::from_str(toml_text).expect("a valid policy table")
}

use common::confirming_channel as channel;

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, durable: bool, args: FieldTable) {
    let options = ExchangeDeclareOptions {
        durable,
        ..Default::default()
    };
    within(ch.exchange_declare(s(name), kind, options, args))
        .await
        .unwrap_or_else(|e| panic!("declaring {name}: {e}"));
}

async fn bind(ch: &Channel, queue: &str, exchange: &str) {
    within(ch.queue_bind(
        s(queue),
        s(exchange),
        s(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
}

/// Fanout exchanges `ae-low`, `ae-high`, `ae-arg`, each into a queue of the same name.
async fn alternates(ch: &Channel, durable: bool) {
    for name in ["ae-low", "ae-high", "ae-arg"] {
        exchange(
            ch,
            name,
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await;
        let options = QueueDeclareOptions {
            durable,
            ..Default::default()
        };
        within(ch.queue_declare(s(name), options, FieldTable::default()))
            .await
            .unwrap();
        bind(ch, name, name).await;
    }
}

async fn publish(ch: &Channel, exchange: &str, key: &str, props: BasicProperties) {
    let confirm = within(ch.basic_publish(
        s(exchange),
        s(key),
        BasicPublishOptions::default(),
        b"m",
        props,
    ))
    .await
    .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
}

/// Where an unroutable publish to `exchange` ended up: the alternate queue that got it.
async fn unroutable_lands_in(ch: &Channel, exchange: &str) -> Option<&'static str> {
    publish(ch, exchange, "nowhere", BasicProperties::default()).await;
    let mut landed = None;
    for name in ["ae-low", "ae-high", "ae-arg"] {
        if ready(ch, name).await > 0 {
            assert!(landed.is_none(), "reached more than one alternate");
            within(ch.queue_purge(s(name), Default::default()))
                .await
                .unwrap();
            landed = Some(name);
        }
    }
    landed
}

fn ae_policies() -> Vec<PolicyConfig> {
    vec![
        policy(
            r#"
            name = "low"
            pattern = "^app\\."
            apply-to = "exchanges"
            priority = 1
            definition = { alternate-exchange = "ae-low" }
            "#,
        ),
        policy(
            r#"
            name = "high"
            pattern = "^app\\.orders"
            apply-to = "exchanges"
            priority = 5
            definition = { alternate-exchange = "ae-high" }
            "#,
        ),
    ]
}

#[tokio::test]
async fn the_highest_priority_matching_policy_sets_the_alternate_exchange() {
    let broker = TestBroker::start_with(|config| config.policies = ae_policies()).await;
    let (_conn, ch) = channel(&broker).await;
    alternates(&ch, false).await;
    for name in ["app.orders", "app.billing", "other"] {
        exchange(
            &ch,
            name,
            ExchangeKind::Direct,
            false,
            FieldTable::default(),
        )
        .await;
    }
    assert_eq!(
        unroutable_lands_in(&ch, "app.orders").await,
        Some("ae-high")
    );
    assert_eq!(
        unroutable_lands_in(&ch, "app.billing").await,
        Some("ae-low")
    );
    assert_eq!(unroutable_lands_in(&ch, "other").await, None);
}

#[tokio::test]
async fn a_declared_alternate_exchange_wins_over_the_policy() {
    let broker = TestBroker::start_with(|config| config.policies = ae_policies()).await;
    let (_conn, ch) = channel(&broker).await;
    alternates(&ch, false).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(LongString::from("ae-arg")),
    );
    exchange(&ch, "app.orders", ExchangeKind::Direct, false, args).await;
    assert_eq!(unroutable_lands_in(&ch, "app.orders").await, Some("ae-arg"));
}

#[tokio::test]
async fn a_queue_policy_does_not_apply_to_exchanges() {
    let policies = vec![policy(
        r#"
        name = "queues-only"
        pattern = ".*"
        apply-to = "queues"
        priority = 9
        definition = { alternate-exchange = "ae-high" }
        "#,
    )];
    let broker = TestBroker::start_with(|config| config.policies = policies).await;
    let (_conn, ch) = channel(&broker).await;
    alternates(&ch, false).await;
    exchange(
        &ch,
        "app.orders",
        ExchangeKind::Direct,
        false,
        FieldTable::default(),
    )
    .await;
    assert_eq!(unroutable_lands_in(&ch, "app.orders").await, None);
}

#[tokio::test]
async fn policies_apply_to_restored_durable_exchanges() {
    let broker = TestBroker::start_with(|config| config.policies = ae_policies()).await;
    {
        let (_conn, ch) = channel(&broker).await;
        alternates(&ch, true).await;
        exchange(
            &ch,
            "app.orders",
            ExchangeKind::Direct,
            true,
            FieldTable::default(),
        )
        .await;
    }
    let broker = broker.restart().await;
    let (_conn, ch) = channel(&broker).await;
    assert_eq!(
        unroutable_lands_in(&ch, "app.orders").await,
        Some("ae-high")
    );
}

#[tokio::test]
async fn a_deduplication_policy_turns_on_queue_deduplication_for_matching_queues() {
    // The rabbitmq-message-deduplication plugin's policy key.
    let policies = vec![policy(
        r#"
        name = "dedup"
        pattern = "^dedup\\."
        apply-to = "queues"
        definition = { x-message-deduplication = true }
        "#,
    )];
    let broker = TestBroker::start_with(|config| config.policies = policies).await;
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "dedup.orders").await;
    declare(&ch, "plain").await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-deduplication-header".into(),
        AMQPValue::LongString(LongString::from("k")),
    );
    for queue in ["dedup.orders", "plain"] {
        for _ in 0..2 {
            publish(
                &ch,
                "",
                queue,
                BasicProperties::default().with_headers(headers.clone()),
            )
            .await;
        }
    }
    assert_eq!(ready(&ch, "dedup.orders").await, 1);
    assert_eq!(ready(&ch, "plain").await, 2);
}

#[tokio::test]
async fn a_policy_can_give_the_predeclared_exchanges_an_alternate() {
    let policies = vec![policy(
        r#"
        name = "amq"
        pattern = "^(amq\\.direct)?$"
        definition = { alternate-exchange = "ae-low" }
        "#,
    )];
    let broker = TestBroker::start_with(|config| config.policies = policies).await;
    let (_conn, ch) = channel(&broker).await;
    alternates(&ch, false).await;
    assert_eq!(unroutable_lands_in(&ch, "amq.direct").await, Some("ae-low"));
    // The default exchange never takes a policy (RabbitMQ), though the pattern matches "".
    assert_eq!(unroutable_lands_in(&ch, "").await, None);
}

/// The arguments queue `name` runs with (declared merged with policy): what the queue's
/// features (TTL, length limits, dead-lettering) read.
fn effective(broker: &TestBroker, name: &str) -> ferrymq_wire::FieldTable {
    let vhost = broker.broker().vhost("/").expect("default vhost");
    vhost.queue(name).expect("queue exists").arguments.clone()
}

fn long(n: i64) -> ferrymq_wire::FieldValue {
    ferrymq_wire::FieldValue::I64(n)
}

fn text(v: &str) -> ferrymq_wire::FieldValue {
    ferrymq_wire::FieldValue::LongStr(bytes::Bytes::from(v.to_string()))
}

fn queue_policies() -> Vec<PolicyConfig> {
    vec![
        policy(
            r#"
            name = "orders"
            pattern = "^orders\\."
            apply-to = "queues"
            priority = 1
            definition = { max-length = 100, message-ttl = 60000, dead-letter-exchange = "dlx" }
            "#,
        ),
        policy(
            r#"
            name = "orders-eu"
            pattern = "^orders\\.eu"
            apply-to = "queues"
            priority = 2
            definition = { max-length = 10 }
            "#,
        ),
    ]
}

#[tokio::test]
async fn queue_policies_fill_in_the_arguments_of_matching_queues_only() {
    let broker = TestBroker::start_with(|config| config.policies = queue_policies()).await;
    let (_conn, ch) = channel(&broker).await;
    for name in ["orders.us", "orders.eu", "payments"] {
        declare(&ch, name).await;
    }
    let us = effective(&broker, "orders.us");
    assert_eq!(us.get("x-max-length"), Some(&long(100)));
    assert_eq!(us.get("x-message-ttl"), Some(&long(60000)));
    assert_eq!(us.get("x-dead-letter-exchange"), Some(&text("dlx")));
    // Only the highest-priority policy applies: nothing of "orders" reaches orders.eu.
    let eu = effective(&broker, "orders.eu");
    assert_eq!(eu.get("x-max-length"), Some(&long(10)));
    assert_eq!(eu.get("x-message-ttl"), None);
    assert_eq!(eu.get("x-dead-letter-exchange"), None);
    assert!(effective(&broker, "payments").is_empty());
}

#[tokio::test]
async fn limits_take_the_lower_of_argument_and_policy_and_other_keys_keep_the_argument() {
    let broker = TestBroker::start_with(|config| config.policies = queue_policies()).await;
    let (_conn, ch) = channel(&broker).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(5));
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(120_000));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("my-dlx")),
    );
    within(ch.queue_declare(s("orders.us"), QueueDeclareOptions::default(), args.clone()))
        .await
        .unwrap();
    let us = effective(&broker, "orders.us");
    assert_eq!(
        us.get("x-max-length"),
        Some(&ferrymq_wire::FieldValue::I32(5))
    );
    assert_eq!(us.get("x-message-ttl"), Some(&long(60000)));
    assert_eq!(us.get("x-dead-letter-exchange"), Some(&text("my-dlx")));
    // Redeclaring with the declared arguments is equivalent: the policy is not part of them.
    within(ch.queue_declare(s("orders.us"), QueueDeclareOptions::default(), args))
        .await
        .unwrap();
}

#[tokio::test]
async fn queue_policies_apply_again_when_a_durable_queue_is_restored() {
    let broker = TestBroker::start_with(|config| config.policies = queue_policies()).await;
    {
        let (_conn, ch) = channel(&broker).await;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within(ch.queue_declare(s("orders.eu"), durable, FieldTable::default()))
            .await
            .unwrap();
    }
    let broker = broker.restart().await;
    assert_eq!(
        effective(&broker, "orders.eu").get("x-max-length"),
        Some(&long(10))
    );
}

#[tokio::test]
async fn a_max_length_policy_limits_matching_queues_only() {
    let policies = vec![policy(
        "name = \"len\"\npattern = \"^limited$\"\napply-to = \"queues\"\ndefinition = { max-length = 2 }",
    )];
    let broker = TestBroker::start_with(|c| c.policies = policies).await;
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "limited").await;
    declare(&ch, "free").await;
    for queue in ["limited", "free"] {
        for _ in 0..5 {
            publish(&ch, "", queue, BasicProperties::default()).await;
        }
    }
    assert_eq!(ready(&ch, "limited").await, 2);
    assert_eq!(ready(&ch, "free").await, 5);
}

#[tokio::test]
async fn a_lower_declared_max_length_wins_over_the_policy() {
    let policies = vec![policy(
        "name = \"len\"\npattern = \".*\"\ndefinition = { max-length = 3 }",
    )];
    let broker = TestBroker::start_with(|c| c.policies = policies).await;
    let (_conn, ch) = channel(&broker).await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    within(ch.queue_declare(s("q"), QueueDeclareOptions::default(), arguments))
        .await
        .unwrap();
    for _ in 0..5 {
        publish(&ch, "", "q", BasicProperties::default()).await;
    }
    assert_eq!(ready(&ch, "q").await, 1);
}

#[tokio::test]
async fn ttl_and_dead_letter_policies_dead_letter_expired_messages() {
    let policies = vec![policy(
        "name = \"ttl\"\npattern = \"^short$\"\napply-to = \"queues\"\ndefinition = { message-ttl = 100, dead-letter-exchange = \"dlx\" }",
    )];
    let broker = TestBroker::start_with(|c| c.policies = policies).await;
    let (_conn, ch) = channel(&broker).await;
    exchange(
        &ch,
        "dlx",
        ExchangeKind::Fanout,
        false,
        FieldTable::default(),
    )
    .await;
    declare(&ch, "dead").await;
    bind(&ch, "dead", "dlx").await;
    declare(&ch, "short").await;
    publish(&ch, "", "short", BasicProperties::default()).await;
    within(async {
        while ready(&ch, "dead").await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(ready(&ch, "short").await, 0);
}
