mod common;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test]
async fn lapin_declares_publishes_and_gets() {
    let broker = common::TestBroker::start().await;
    let conn = common::lapin(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "smoke".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    ch.basic_publish(
        "".into(),
        "smoke".into(),
        BasicPublishOptions::default(),
        b"hi",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get("smoke".into(), Default::default())
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.delivery.data, b"hi");
    broker.shutdown().await;
}
