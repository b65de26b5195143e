//! Shared by the integration tests: a broker on an ephemeral loopback port per test.
#![allow(dead_code)]

use std::net::SocketAddr;

use ferrymq::config::Config;
use ferrymq::server::{start, Running};

pub struct TestBroker {
    pub addr: SocketAddr,
    running: Option<Running>,
    data_dir: tempfile::TempDir,
    config: Config,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker with the test defaults changed by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestBroker {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_tests();
        config.data_dir = data_dir.path().to_path_buf();
        configure(&mut config);
        let running = start(config.clone()).await.expect("broker starts");
        TestBroker {
            addr: running.amqp_addr,
            running: Some(running),
            data_dir,
            config,
        }
    }

    /// Shuts down (connections get 320) and starts again on the same data directory, as a
    /// clean restart of the process would. The new broker listens on a new port.
    pub async fn restart(mut self) -> TestBroker {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        let running = start(self.config.clone()).await.expect("broker restarts");
        TestBroker {
            addr: running.amqp_addr,
            running: Some(running),
            data_dir: self.data_dir,
            config: self.config,
        }
    }

    /// The alarm limits of the running broker (change them to raise or clear alarms).
    pub fn alarm_limits(&self) -> ferrymq::alarm::SharedLimits {
        std::sync::Arc::clone(&self.running.as_ref().expect("running").alarm_limits)
    }

    /// Like [`TestBroker::restart`], running `between` on the data directory while the
    /// broker is down (to damage files the way a crash or a bad disk would).
    pub async fn restart_after(mut self, between: impl FnOnce(&std::path::Path)) -> TestBroker {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        between(self.data_dir.path());
        let running = start(self.config.clone()).await.expect("broker restarts");
        TestBroker {
            addr: running.amqp_addr,
            running: Some(running),
            data_dir: self.data_dir,
            config: self.config,
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    pub fn uri_for(&self, user: &str, password: &str, vhost: &str) -> String {
        let vhost = vhost.replace('/', "%2f");
        format!("amqp://{user}:{password}@{}/{vhost}", self.addr)
    }

    pub fn broker(&self) -> &std::sync::Arc<ferrymq_broker::Broker> {
        &self.running.as_ref().expect("running").broker
    }

    /// Graceful shutdown: connections get 320 CONNECTION_FORCED.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A connection and a channel with publisher confirms on.
pub async fn confirming_channel(broker: &TestBroker) -> (lapin::Connection, lapin::Channel) {
    let conn = lapin(broker).await;
    let ch = within(conn.create_channel()).await.unwrap();
    within(ch.confirm_select(lapin::options::ConfirmSelectOptions::default()))
        .await
        .unwrap();
    (conn, ch)
}

pub async fn lapin(broker: &TestBroker) -> lapin::Connection {
    lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default())
        .await
        .expect("lapin connects")
}

/// The longest one step of a test may take: a hang fails fast instead of blocking CI.
pub const STEP: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(STEP, future)
        .await
        .expect("step timed out")
}

/// The reply code of an AMQP error (channel.close / connection.close) seen by lapin.
pub fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

pub fn s(value: &str) -> lapin::types::ShortString {
    value.into()
}

pub async fn declare(ch: &lapin::Channel, queue: &str) {
    let options = lapin::options::QueueDeclareOptions::default();
    within(ch.queue_declare(s(queue), options, lapin::types::FieldTable::default()))
        .await
        .expect("queue.declare");
}

/// Ready messages, by a passive declare. Also a barrier: the broker handles a connection's
/// frames in order, so every publish sent before on this channel is enqueued by now.
pub async fn ready(ch: &lapin::Channel, queue: &str) -> u32 {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    within(ch.queue_declare(s(queue), options, lapin::types::FieldTable::default()))
        .await
        .expect("passive queue.declare")
        .message_count()
}
