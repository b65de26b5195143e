//! The connection layer over real TCP: handshake, login, tuning, heartbeats, close in
//! both directions, shutdown and timeouts, with lapin, amqprs and a raw socket. Each test
//! names the RabbitMQ behaviour (rabbit_reader.erl unless said otherwise) it pins.

mod common;
mod raw;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use amqprs::connection::{Connection as AmqprsConnection, OpenConnectionArguments};
use amqprs::security::SecurityCredentials;
use bytes::Bytes;
use ferrymq::config::UserConfig;
use ferrymq_wire::{
    BasicGet, BasicPublish, ChannelClose, ChannelCloseOk, ConnectionClose, ConnectionTune,
    ConnectionUpdateSecret, FieldValue, Frame, Method, QueueDeclare, ShortStr, PROTOCOL_HEADER,
};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use raw::{ids, Login, RawClient, STEP};

use common::TestBroker;

const CONNECTION_FORCED: u16 = 320;
const ACCESS_REFUSED: u16 = 403;
const NOT_FOUND: u16 = 404;
const NOT_ALLOWED: u16 = 530;
const NOT_IMPLEMENTED: u16 = 540;

/// Bounds every client call, so a broker that never answers fails the test quickly.
async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {STEP:?}"))
}

/// The reply code of an error the broker sent (connection.close or channel.close).
fn lapin_reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

async fn lapin_connect(uri: &str) -> lapin::Result<lapin::Connection> {
    within(
        "lapin connect",
        lapin::Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
}

fn amqprs_args(addr: SocketAddr, user: &str, password: &str) -> OpenConnectionArguments {
    OpenConnectionArguments::new(&addr.ip().to_string(), addr.port(), user, password)
}

fn user(name: &str, password: &str, vhosts: Option<Vec<&str>>) -> UserConfig {
    UserConfig {
        name: name.into(),
        password: Some(password.into()),
        password_hash: None,
        tags: vec![],
        vhosts: vhosts.map(|v| v.into_iter().map(String::from).collect()),
        loopback_only: None,
    }
}

fn declare(queue: &str) -> Method {
    Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::from(queue),
        ..Default::default()
    })
}

fn get(queue: &str) -> Method {
    Method::BasicGet(BasicGet {
        queue: ShortStr::from(queue),
        no_ack: true,
        ..Default::default()
    })
}

fn publish(routing_key: &str) -> Method {
    Method::BasicPublish(BasicPublish {
        routing_key: ShortStr::from(routing_key),
        ..Default::default()
    })
}

fn close_method(code: u16) -> Method {
    Method::ConnectionClose(ConnectionClose {
        reply_code: code,
        reply_text: ShortStr::from("bye"),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// Open, properties, close

#[tokio::test]
async fn lapin_connects_opens_a_channel_and_closes_cleanly() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&broker.uri()).await.expect("connects");
    let ch = within("create_channel", conn.create_channel())
        .await
        .unwrap();
    assert!(ch.status().connected());
    within("channel close", ch.close(200, "bye".into()))
        .await
        .unwrap();
    within("connection close", conn.close(200, "bye".into()))
        .await
        .unwrap();
    assert!(!conn.status().connected());
    broker.shutdown().await;
}

// server_properties/1: product, version, platform, capabilities as RabbitMQ lists them.
#[tokio::test]
async fn amqprs_connects_and_sees_ferrymq_server_properties() {
    let broker = TestBroker::start().await;
    let conn = within(
        "amqprs open",
        AmqprsConnection::open(&amqprs_args(broker.addr, "guest", "guest")),
    )
    .await
    .expect("amqprs connects");
    let props = conn.server_properties();
    assert_eq!(props.product(), "ferrymq");
    assert_eq!(props.version(), env!("CARGO_PKG_VERSION"));
    let caps = props.capabilities();
    assert!(caps.publisher_confirms());
    assert!(caps.exchange_exchange_bindings());
    assert!(caps.basic_nack());
    assert!(caps.consumer_cancel_notify());
    assert!(caps.connection_blocked());
    assert!(caps.authentication_failure_close());
    assert!(caps.per_consumer_qos());
    let ch = within("open_channel", conn.open_channel(None))
        .await
        .unwrap();
    within("channel close", ch.close()).await.unwrap();
    within("connection close", conn.close()).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn connection_start_offers_0_9_plain_amqplain_and_capabilities() {
    let broker = TestBroker::start().await;
    let (_client, start) = RawClient::start(broker.addr).await;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = String::from_utf8(start.mechanisms.to_vec()).unwrap();
    let mechanisms: Vec<&str> = mechanisms.split(' ').collect();
    assert!(mechanisms.contains(&"PLAIN") && mechanisms.contains(&"AMQPLAIN"));
    assert_eq!(&start.locales[..], b"en_US");
    let props = &start.server_properties;
    assert_eq!(
        props.get("product").and_then(FieldValue::as_str),
        Some("ferrymq")
    );
    let caps = props
        .get("capabilities")
        .and_then(FieldValue::as_table)
        .expect("capabilities table");
    for name in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.get(name).and_then(FieldValue::as_bool),
            Some(true),
            "{name}"
        );
    }
}

// handle_method0(connection.close) when running: channels shut down, then close-ok.
#[tokio::test]
async fn client_connection_close_gets_close_ok_and_eof() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    client.send(0, close_method(200)).await;
    match client.recv_method().await {
        (0, Method::ConnectionCloseOk(_)) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
    client.expect_eof(STEP).await;
}

// A connection error names the method that caused it: RabbitMQ 3.0+ refuses
// basic.publish immediate=true with 540 NOT_IMPLEMENTED against basic.publish.
#[tokio::test]
async fn server_close_on_error_names_class_and_method() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    let publish = Method::BasicPublish(BasicPublish {
        immediate: true,
        ..Default::default()
    });
    client.send(1, publish).await;
    client.send_header(1, 0).await;
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (NOT_IMPLEMENTED, 60, 40), "{close:?}");
    assert!(close.reply_text.as_str().starts_with("NOT_IMPLEMENTED - "));
}

// connection.update-secret is answered (RabbitMQ 3.8+; ours accepts any secret).
#[tokio::test]
async fn update_secret_is_acknowledged() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    let update = ConnectionUpdateSecret {
        new_secret: Bytes::from_static(b"token"),
        reason: ShortStr::from("refresh"),
    };
    client.send(0, Method::ConnectionUpdateSecret(update)).await;
    assert!(matches!(
        client.recv_method().await,
        (0, Method::ConnectionUpdateSecretOk(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Channels

#[tokio::test]
async fn channel_close_from_the_client_gets_close_ok() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    let close = ChannelClose {
        reply_code: 200,
        ..Default::default()
    };
    client.send(1, Method::ChannelClose(close)).await;
    assert!(matches!(
        client.recv_method().await,
        (1, Method::ChannelCloseOk(_))
    ));
    // The number is free again.
    client.open_channel(1).await;
}

// rabbit_channel: a channel error (404 on a passive declare) closes only the channel,
// naming the method; after close-ok the channel number can be reopened.
#[tokio::test]
async fn channel_close_from_the_server_names_the_method_and_frees_the_channel() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    client.open_channel(2).await;
    let passive = Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::from("missing"),
        passive: true,
        ..Default::default()
    });
    client.send(1, passive).await;
    let close = match client.recv_method().await {
        (1, Method::ChannelClose(close)) => close,
        other => panic!("expected channel.close, got {other:?}"),
    };
    assert_eq!(
        (close.reply_code, close.class_id, close.method_id),
        (NOT_FOUND, 50, 10)
    );
    assert_eq!(
        close.reply_text.as_str(),
        "NOT_FOUND - no queue 'missing' in vhost '/'"
    );
    // Until close-ok, the closing channel ignores everything else.
    client.send(1, declare("ignored")).await;
    client.send(1, Method::ChannelCloseOk(ChannelCloseOk)).await;
    client.send(2, declare("other")).await;
    match client.recv_method().await {
        (2, Method::QueueDeclareOk(ok)) => assert_eq!(ok.queue, "other"),
        other => panic!("channel 2 disturbed: {other:?}"),
    }
    client.open_channel(1).await;
    client
        .send(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: ShortStr::from("ignored"),
                passive: true,
                ..Default::default()
            }),
        )
        .await;
    assert!(
        matches!(client.recv_method().await, (1, Method::ChannelClose(c)) if c.reply_code == NOT_FOUND),
        "the declare sent while closing must have been ignored"
    );
}

#[tokio::test]
async fn lapin_channel_error_leaves_the_connection_usable() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&broker.uri()).await.unwrap();
    let ch = within("create_channel", conn.create_channel())
        .await
        .unwrap();
    let err = within(
        "passive declare",
        ch.queue_declare(
            "missing".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("missing queue");
    assert_eq!(lapin_reply_code(&err), Some(NOT_FOUND), "{err:?}");
    let ch2 = within("create_channel", conn.create_channel())
        .await
        .unwrap();
    within(
        "declare",
        ch2.queue_declare(
            "present".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert!(conn.status().connected());
}

#[tokio::test]
async fn hundred_channels_on_one_connection_are_each_usable() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&broker.uri()).await.unwrap();
    let mut channels = Vec::new();
    for _ in 0..100 {
        channels.push(
            within("create_channel", conn.create_channel())
                .await
                .unwrap(),
        );
    }
    let ids: std::collections::HashSet<u16> = channels.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), 100);
    for (i, ch) in channels.iter().enumerate() {
        let queue = format!("ch-{i}");
        within(
            "declare",
            ch.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(
            "publish",
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                queue.as_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
    }
    for (i, ch) in channels.iter().enumerate() {
        let queue = format!("ch-{i}");
        let got = within(
            "get",
            ch.basic_get(queue.as_str().into(), Default::default()),
        )
        .await
        .unwrap()
        .expect("a message");
        assert_eq!(got.delivery.data, queue.as_bytes());
    }
    within("close", conn.close(200, "bye".into()))
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Authentication and vhosts

// auth_fail with authentication_failure_close: connection.close 403 carrying only
// "Login was refused using authentication mechanism PLAIN…" (never why).
#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let err = lapin_connect(&broker.uri_for("guest", "wrong", "/"))
        .await
        .expect_err("wrong password");
    assert_eq!(lapin_reply_code(&err), Some(ACCESS_REFUSED), "{err:?}");

    let (mut client, _) = RawClient::start(broker.addr).await;
    let login = Login {
        response: raw::plain("guest", "wrong"),
        ..Login::default()
    };
    let close = match client.start_ok(&login).await {
        Some(Method::ConnectionClose(close)) => close,
        other => panic!("expected connection.close, got {other:?}"),
    };
    assert_eq!(close.reply_code, ACCESS_REFUSED);
    assert_eq!(
        close.reply_text.as_str(),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
         For details see the broker logfile."
    );
    client.close_ok_and_eof().await;
}

#[tokio::test]
async fn unknown_user_is_refused_with_403() {
    let broker = TestBroker::start().await;
    let err = lapin_connect(&broker.uri_for("nobody", "guest", "/"))
        .await
        .expect_err("unknown user");
    assert_eq!(lapin_reply_code(&err), Some(ACCESS_REFUSED), "{err:?}");
}

// Without authentication_failure_close RabbitMQ just closes the socket after a failed
// login: no connection.close the client would not expect.
#[tokio::test]
async fn client_without_auth_failure_close_only_sees_the_socket_close() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::start(broker.addr).await;
    let login = Login {
        response: raw::plain("guest", "wrong"),
        auth_failure_close: false,
        ..Login::default()
    };
    assert_eq!(client.start_ok(&login).await, None);

    // amqprs does not advertise the capability.
    let result = within(
        "amqprs open",
        AmqprsConnection::open(&amqprs_args(broker.addr, "guest", "wrong")),
    )
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn amqplain_login_works_with_amqprs_and_a_raw_client() {
    let broker = TestBroker::start().await;
    let mut args = amqprs_args(broker.addr, "guest", "guest");
    args.credentials(SecurityCredentials::new_amqplain("guest", "guest"));
    let conn = within("amqprs open", AmqprsConnection::open(&args))
        .await
        .expect("AMQPLAIN login");
    let ch = within("open_channel", conn.open_channel(None))
        .await
        .unwrap();
    within("channel close", ch.close()).await.unwrap();
    within("connection close", conn.close()).await.unwrap();

    let login = Login {
        mechanism: "AMQPLAIN",
        response: raw::amqplain("guest", "guest"),
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    client.open_channel(1).await;

    let (mut client, _) = RawClient::start(broker.addr).await;
    let wrong = Login {
        mechanism: "AMQPLAIN",
        response: raw::amqplain("guest", "nope"),
        ..Login::default()
    };
    match client.start_ok(&wrong).await {
        Some(Method::ConnectionClose(close)) => {
            assert_eq!(close.reply_code, ACCESS_REFUSED);
            assert!(close.reply_text.as_str().contains("AMQPLAIN"), "{close:?}");
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
}

#[tokio::test]
async fn unsupported_sasl_mechanism_never_reaches_tune() {
    let broker = TestBroker::start().await;
    let (mut client, _) = RawClient::start(broker.addr).await;
    let login = Login {
        mechanism: "EXTERNAL",
        response: Bytes::new(),
        ..Login::default()
    };
    match client.start_ok(&login).await {
        None | Some(Method::ConnectionClose(_)) => {}
        other => panic!("login without a supported mechanism went on: {other:?}"),
    }
}

/// A local address that is not loopback, if the machine has one (no packet is sent).
fn non_loopback_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

// loopback_users: guest only from localhost. The refusal is the same 403 text as any
// failed login (auth_fail's SafeMsg).
#[tokio::test]
async fn guest_is_refused_from_a_non_loopback_address() {
    let broker = TestBroker::start_with(|c| {
        c.amqp_listen = SocketAddr::from(([0, 0, 0, 0], 0));
        c.users.push(user("app", "secret", None));
    })
    .await;
    let outside: IpAddr = "192.0.2.77".parse().unwrap();
    let core = broker.broker();
    let err = core
        .authenticate("guest", b"guest", outside, "PLAIN")
        .expect_err("guest from outside");
    assert_eq!(err.code, ACCESS_REFUSED);
    assert!(core
        .authenticate("guest", b"guest", "127.0.0.1".parse().unwrap(), "PLAIN")
        .is_ok());
    assert!(core
        .authenticate("app", b"secret", outside, "PLAIN")
        .is_ok());

    // Over TCP, when this machine has a non-loopback address to connect from.
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no non-loopback address: TCP part skipped");
        return;
    };
    let addr = SocketAddr::new(ip, broker.addr.port());
    let (mut client, _) = RawClient::start(addr).await;
    let close = match client.start_ok(&Login::default()).await {
        Some(Method::ConnectionClose(close)) => close,
        other => panic!("guest from {ip} was not refused: {other:?}"),
    };
    assert_eq!(close.reply_code, ACCESS_REFUSED);
    assert!(
        !close.reply_text.as_str().contains("localhost"),
        "the refusal must not say why: {close:?}"
    );
    let login = Login {
        response: raw::plain("app", "secret"),
        ..Login::default()
    };
    let mut client = RawClient::open_with(addr, &login).await;
    client.open_channel(1).await;
}

// connection.open: "vhost nope not found" is 530 NOT_ALLOWED against connection.open.
#[tokio::test]
async fn unknown_vhost_is_refused_with_530() {
    let broker = TestBroker::start().await;
    let err = lapin_connect(&broker.uri_for("guest", "guest", "nope"))
        .await
        .expect_err("unknown vhost");
    assert_eq!(lapin_reply_code(&err), Some(NOT_ALLOWED), "{err:?}");

    let (mut client, _) = RawClient::start(broker.addr).await;
    let login = Login {
        vhost: "nope".into(),
        ..Login::default()
    };
    let Some(Method::ConnectionTune(tune)) = client.start_ok(&login).await else {
        panic!("no tune")
    };
    match client.tune_ok_and_open(&tune, &login).await {
        Method::ConnectionClose(close) => {
            assert_eq!(ids(&close), (NOT_ALLOWED, 10, 40), "{close:?}");
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
}

// check_vhost_access: a user without permissions on the vhost gets 530 too.
#[tokio::test]
async fn user_without_access_to_a_vhost_is_refused_with_530() {
    let broker = TestBroker::start_with(|c| {
        c.vhosts.push("prod".into());
        c.users.push(user("app", "secret", Some(vec!["prod"])));
    })
    .await;
    let err = lapin_connect(&broker.uri_for("app", "secret", "/"))
        .await
        .expect_err("no access to /");
    assert_eq!(lapin_reply_code(&err), Some(NOT_ALLOWED), "{err:?}");
    let conn = lapin_connect(&broker.uri_for("app", "secret", "prod"))
        .await
        .expect("access to prod");
    within("create_channel", conn.create_channel())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// Tuning

// The broker splits deliveries to fit the frame_max the client negotiated.
#[tokio::test]
async fn negotiated_frame_max_is_honoured_for_deliveries() {
    let broker = TestBroker::start().await;
    let login = Login {
        frame_max: Some(4096),
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    client.open_channel(1).await;
    client.send(1, declare("big")).await;
    client.recv_method().await;
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    client.send(1, publish("big")).await;
    client.send_header(1, body.len() as u64).await;
    for chunk in body.chunks(4088) {
        client.send_body(1, chunk).await;
    }
    client.send(1, get("big")).await;
    assert!(matches!(
        client.recv_method().await,
        (1, Method::BasicGetOk(_))
    ));
    let received = recv_content(&mut client, 4096).await;
    assert_eq!(received, body);
}

/// Reads a content header and its body frames, checking each frame fits `frame_max`.
async fn recv_content(client: &mut RawClient, frame_max: usize) -> Vec<u8> {
    let Some(Frame::Header { header, .. }) = client.recv().await else {
        panic!("expected a content header")
    };
    let mut body = Vec::new();
    while (body.len() as u64) < header.body_size {
        match client.recv().await {
            Some(Frame::Body { payload, .. }) => {
                assert!(payload.len() + 8 <= frame_max, "{} bytes", payload.len());
                body.extend_from_slice(&payload);
            }
            other => panic!("expected a body frame, got {other:?}"),
        }
    }
    body
}

// frame_max 0 means "no limit": a body goes out in one frame, not one frame per byte.
#[tokio::test]
async fn unlimited_frame_max_delivers_a_body_in_one_frame() {
    let broker = TestBroker::start_with(|c| c.frame_max_bytes = 0).await;
    let login = Login {
        frame_max: Some(0),
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    client.open_channel(1).await;
    client.send(1, declare("q")).await;
    client.recv_method().await;
    client.send(1, publish("q")).await;
    client.send_header(1, 300).await;
    client.send_body(1, &[9u8; 300]).await;
    client.send(1, get("q")).await;
    assert!(matches!(
        client.recv_method().await,
        (1, Method::BasicGetOk(_))
    ));
    assert!(matches!(client.recv().await, Some(Frame::Header { .. })));
    match client.recv().await {
        Some(Frame::Body { payload, .. }) => assert_eq!(payload.len(), 300),
        other => panic!("expected one body frame, got {other:?}"),
    }
}

// validate_negotiated_integer_value: above the offer (or 0 when the server has a limit)
// is 530 NOT_ALLOWED; RabbitMQ names connection.tune in the close.
#[tokio::test]
async fn tune_ok_above_the_offer_is_refused_with_530() {
    let broker = TestBroker::start().await;
    for login in [
        Login {
            frame_max: Some(1_000_000),
            ..Login::default()
        },
        Login {
            channel_max: Some(5000),
            ..Login::default()
        },
    ] {
        let (mut client, _) = RawClient::start(broker.addr).await;
        let Some(Method::ConnectionTune(tune)) = client.start_ok(&login).await else {
            panic!("no tune")
        };
        let close = match client.tune_ok_and_open(&tune, &login).await {
            Method::ConnectionClose(close) => close,
            other => panic!("expected connection.close, got {other:?}"),
        };
        assert_eq!(ids(&close), (NOT_ALLOWED, 10, 30), "{close:?}");
    }
}

#[tokio::test]
async fn tune_offers_the_configured_limits_and_lapin_uses_them() {
    let broker = TestBroker::start_with(|c| {
        c.channel_max = 16;
        c.frame_max_bytes = 8192;
        c.heartbeat_s = 7;
    })
    .await;
    let (mut client, _) = RawClient::start(broker.addr).await;
    let tune = match client.start_ok(&Login::default()).await {
        Some(Method::ConnectionTune(tune)) => tune,
        other => panic!("expected tune, got {other:?}"),
    };
    assert_eq!(
        tune,
        ConnectionTune {
            channel_max: 16,
            frame_max: 8192,
            heartbeat: 7
        }
    );
    let conn = lapin_connect(&broker.uri()).await.unwrap();
    let config = conn.configuration();
    assert_eq!(
        (config.channel_max(), config.frame_max(), config.heartbeat()),
        (16, 8192, 7)
    );
}

// RabbitMQ refuses a channel once channel_max channels are open: "number of channels
// opened (N) has reached the negotiated channel_max (N)", 530 NOT_ALLOWED.
#[tokio::test]
async fn channel_above_channel_max_is_refused_with_530() {
    let broker = TestBroker::start_with(|c| c.channel_max = 5).await;
    let mut client = RawClient::open(broker.addr).await;
    for id in 1..=5 {
        client.open_channel(id).await;
    }
    client
        .send(6, Method::ChannelOpen(Default::default()))
        .await;
    let close = client.expect_close().await;
    assert_eq!(close.reply_code, NOT_ALLOWED, "{close:?}");

    // lapin stops at the negotiated limit on its own.
    let conn = lapin_connect(&broker.uri()).await.unwrap();
    assert_eq!(conn.configuration().channel_max(), 5);
    let mut open = Vec::new();
    for _ in 0..5 {
        open.push(
            within("create_channel", conn.create_channel())
                .await
                .unwrap(),
        );
    }
    let sixth = within("create_channel", conn.create_channel()).await;
    assert!(sixth.is_err(), "{sixth:?}");
    assert!(conn.status().connected());
}

// ---------------------------------------------------------------------------------------
// Heartbeats

#[tokio::test]
async fn client_answering_heartbeats_stays_connected() {
    let broker = TestBroker::start_with(|c| c.heartbeat_s = 1).await;
    let conn = lapin_connect(&broker.uri()).await.unwrap();
    assert_eq!(conn.configuration().heartbeat(), 1);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(conn.status().connected());
    let ch = within("create_channel", conn.create_channel())
        .await
        .unwrap();
    within(
        "declare",
        ch.queue_declare(
            "alive".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
}

// rabbit_heartbeat: the broker heartbeats a quiet connection, and drops a peer that has
// been silent for two intervals.
#[tokio::test]
async fn silent_client_is_dropped_after_two_missed_heartbeats() {
    let broker = TestBroker::start_with(|c| c.heartbeat_s = 1).await;
    let login = Login {
        heartbeat: 1,
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    let started = Instant::now();
    let mut heartbeats = 0;
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(frame) = client.recv().await {
            match frame {
                Frame::Heartbeat { channel: 0 } => heartbeats += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "still connected after 4 s of silence");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "dropped after {elapsed:?}"
    );
    assert!(heartbeats >= 1, "the broker sent no heartbeat");
}

#[tokio::test]
async fn raw_client_sending_heartbeats_stays_connected() {
    let broker = TestBroker::start_with(|c| c.heartbeat_s = 1).await;
    let login = Login {
        heartbeat: 1,
        ..Login::default()
    };
    let mut client = RawClient::open_with(broker.addr, &login).await;
    let mut beat = bytes::BytesMut::new();
    ferrymq_wire::encode_heartbeat(&mut beat);
    for _ in 0..6 {
        client.write(&beat).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    client.open_channel(1).await;
}

// ---------------------------------------------------------------------------------------
// Shutdown and timeouts

// Shutdown closes every connection with 320 CONNECTION_FORCED and finishes promptly.
#[tokio::test]
async fn shutdown_sends_320_connection_forced_and_completes() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    let lapin = lapin_connect(&broker.uri()).await.unwrap();
    let started = Instant::now();
    let shutdown = tokio::spawn(broker.shutdown());
    let close = client.expect_close().await;
    assert_eq!(ids(&close), (CONNECTION_FORCED, 0, 0), "{close:?}");
    assert!(close
        .reply_text
        .as_str()
        .starts_with("CONNECTION_FORCED - "));
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown within 5 s")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!lapin.status().connected());
}

// A socket still in the handshake has nothing to lose: shutdown must not wait for its
// handshake timeout (or the shutdown deadline).
#[tokio::test]
async fn shutdown_does_not_wait_for_sockets_in_the_handshake() {
    let broker = TestBroker::start_with(|c| c.shutdown_timeout_ms = 5_000).await;
    let mut silent = RawClient::connect(broker.addr).await;
    let (mut started_only, _) = RawClient::start(broker.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    within("shutdown", broker.shutdown()).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "shutdown took {:?}",
        started.elapsed()
    );
    silent.expect_eof(STEP).await;
    started_only.expect_eof(STEP).await;
}

#[tokio::test]
async fn silent_socket_is_dropped_after_the_handshake_timeout() {
    let broker = TestBroker::start_with(|c| c.handshake_timeout_ms = 300).await;
    let mut silent = RawClient::connect(broker.addr).await;
    let started = Instant::now();
    silent.expect_eof(Duration::from_secs(2)).await;
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Also after connection.start, when the client never answers.
    let (mut stalled, _) = RawClient::start(broker.addr).await;
    stalled.expect_eof(Duration::from_secs(2)).await;
}

// ---------------------------------------------------------------------------------------
// Protocol header

// The spec (and rabbit_reader:refuse_connection): answer an unsupported header with the
// header we speak, then close.
#[tokio::test]
async fn unsupported_protocol_header_gets_ours_and_a_close() {
    let broker = TestBroker::start().await;
    for header in [
        &b"AMQP\x00\x00\x08\x00"[..],
        b"AMQP\x00\x01\x00\x00",
        b"HTTP/1.1",
    ] {
        let mut client = RawClient::connect(broker.addr).await;
        client.write(header).await;
        assert_eq!(
            client.read_raw(8).await,
            PROTOCOL_HEADER,
            "after {header:?}"
        );
        client.expect_eof(STEP).await;
    }
}

// rabbit_reader:version_negotiation({1, 1, 0, 9}): the AMQP 0-9 header is served as
// 0-9-1, so old 0-9 clients connect.
#[tokio::test]
async fn amqp_0_9_header_is_served_as_0_9_1() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    client.write(b"AMQP\x01\x01\x00\x09").await;
    assert!(matches!(
        client.recv_method().await,
        (0, Method::ConnectionStart(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Isolation

#[tokio::test]
async fn garbage_on_one_socket_does_not_disturb_other_clients() {
    let broker = TestBroker::start().await;
    let conn = lapin_connect(&broker.uri()).await.unwrap();
    let ch = within("create_channel", conn.create_channel())
        .await
        .unwrap();
    within(
        "confirm_select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    within(
        "declare",
        ch.queue_declare(
            "steady".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let addr = broker.addr;
    let vandal = tokio::spawn(async move {
        for round in 0..20u8 {
            let mut client = RawClient::open(addr).await;
            client.open_channel(1).await;
            let garbage: Vec<u8> = (0..512u32).map(|i| (i as u8).wrapping_mul(round)).collect();
            client.write_lossy(&garbage).await;
            let mut noise = RawClient::connect(addr).await;
            noise.write_lossy(&garbage).await;
        }
    });
    for i in 0..200u32 {
        let confirm = within(
            "publish",
            ch.basic_publish(
                "".into(),
                "steady".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            ),
        )
        .await
        .unwrap();
        assert!(within("confirm", confirm).await.unwrap().is_ack());
        let got = within("get", ch.basic_get("steady".into(), Default::default()))
            .await
            .unwrap()
            .expect("the message just published");
        assert_eq!(got.delivery.data, i.to_be_bytes());
        within("ack", got.delivery.acker.ack(Default::default()))
            .await
            .unwrap();
    }
    within("vandal", vandal).await.unwrap();
    assert!(conn.status().connected());
}

// ---------------------------------------------------------------------------------------
// Robustness of the connection task

// Clients may pipeline the whole handshake and their first commands in one write
// (frames already buffered behind connection.open must not be lost).
#[tokio::test]
async fn pipelined_handshake_and_first_commands_are_all_served() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::connect(broker.addr).await;
    let mut bytes = bytes::BytesMut::new();
    bytes.extend_from_slice(&PROTOCOL_HEADER);
    let login = Login::default();
    let start_ok = ferrymq_wire::ConnectionStartOk {
        client_properties: Default::default(),
        mechanism: ShortStr::from("PLAIN"),
        response: login.response.clone(),
        locale: ShortStr::from("en_US"),
    };
    let tune_ok = ferrymq_wire::ConnectionTuneOk {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 0,
    };
    let open = ferrymq_wire::ConnectionOpen {
        virtual_host: ShortStr::from("/"),
        ..Default::default()
    };
    for (channel, method) in [
        (0, Method::ConnectionStartOk(start_ok)),
        (0, Method::ConnectionTuneOk(tune_ok)),
        (0, Method::ConnectionOpen(open)),
        (1, Method::ChannelOpen(Default::default())),
        (1, declare("pipelined")),
    ] {
        bytes.extend_from_slice(&RawClient::method_bytes(channel, &method));
    }
    client.write(&bytes).await;
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let (channel, method) = client.recv_method().await;
        seen.push((channel, method.name()));
    }
    assert_eq!(
        seen,
        [
            (0, "connection.start"),
            (0, "connection.tune"),
            (0, "connection.open-ok"),
            (1, "channel.open-ok"),
            (1, "queue.declare-ok"),
        ]
    );
}

// After a connection error the broker has "lost sync": until close-ok nothing the client
// sends is acted on (rabbit_reader's closing state).
#[tokio::test]
async fn frames_after_a_connection_error_are_not_processed() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    client
        .send(1, Method::ChannelOpen(Default::default()))
        .await;
    let close = loop {
        match client.recv_method().await {
            (0, Method::ConnectionClose(close)) => break close,
            _ => continue,
        }
    };
    assert_eq!(close.reply_code, 504);
    client.send(1, declare("ghost")).await;
    client.close_ok_and_eof().await;

    let mut check = RawClient::open(broker.addr).await;
    check.open_channel(1).await;
    let passive = Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::from("ghost"),
        passive: true,
        ..Default::default()
    });
    check.send(1, passive).await;
    assert!(
        matches!(check.recv_method().await, (1, Method::ChannelClose(c)) if c.reply_code == NOT_FOUND),
        "a declare sent after connection.close was executed"
    );
}

// Both peers closing at once: each answers the other's connection.close with close-ok.
#[tokio::test]
async fn simultaneous_close_is_answered_with_close_ok() {
    let broker = TestBroker::start().await;
    let mut client = RawClient::open(broker.addr).await;
    client.open_channel(1).await;
    client
        .send(1, Method::ChannelOpen(Default::default()))
        .await;
    match client.recv_method().await {
        (0, Method::ConnectionClose(_)) => {}
        other => panic!("expected connection.close, got {other:?}"),
    }
    client.send(0, close_method(200)).await;
    match client.recv_method().await {
        (0, Method::ConnectionCloseOk(_)) => {}
        other => panic!("expected close-ok for our close, got {other:?}"),
    }
    client.expect_eof(STEP).await;
}

// A client that stops reading must not pin its connection task and socket forever when
// the broker closes: writing the close is bounded like waiting for close-ok.
#[tokio::test]
async fn client_that_stops_reading_is_dropped_when_the_broker_closes() {
    let broker = TestBroker::start().await;
    let (client, _) = {
        let mut client = RawClient::connect_small_window(broker.addr).await;
        client.write(&PROTOCOL_HEADER).await;
        let start = client.recv_method().await;
        (client, start)
    };
    let mut client = client.finish_handshake(&Login::default()).await;
    client.open_channel(1).await;
    client.send(1, declare("flood")).await;
    client.recv_method().await;
    let chunk = vec![0u8; 64 * 1024];
    for _ in 0..256 {
        client.send(1, publish("flood")).await;
        client.send_header(1, chunk.len() as u64).await;
        for part in chunk.chunks(131_072 - 8) {
            client.send_body(1, part).await;
        }
    }
    let consume = Method::BasicConsume(ferrymq_wire::BasicConsume {
        queue: ShortStr::from("flood"),
        no_ack: true,
        ..Default::default()
    });
    client.send(1, consume).await;
    // Let deliveries fill the socket, then make the broker close: it cannot write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut beat = bytes::BytesMut::new();
    ferrymq_wire::encode_frame_start(&mut beat, ferrymq_wire::frame_type::HEARTBEAT, 1, 0);
    beat.extend_from_slice(&[ferrymq_wire::FRAME_END]);
    client.write(&beat).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    // By now the broker has given up on us: draining ends in EOF without any close-ok
    // from our side, and without another close timeout.
    client.expect_eof(Duration::from_secs(2)).await;
}

// connections_max: sockets over the limit are dropped at accept; a closed connection
// frees its slot.
#[tokio::test]
async fn connection_limit_refuses_extra_sockets_and_frees_slots_on_close() {
    let broker = TestBroker::start_with(|c| c.connections_max = 2).await;
    let mut first = RawClient::open(broker.addr).await;
    let _second = RawClient::open(broker.addr).await;
    let mut third = RawClient::connect(broker.addr).await;
    third.write_lossy(&PROTOCOL_HEADER).await;
    third.expect_eof(STEP).await;
    first.send(0, close_method(200)).await;
    first.recv_method().await;
    first.expect_eof(STEP).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = RawClient::open(broker.addr).await;
    fourth.open_channel(1).await;
}
