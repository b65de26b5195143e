//! Shared by the integration tests: a broker on an ephemeral loopback port per test.
#![allow(dead_code)]

use std::net::SocketAddr;

use ferrymq::config::Config;
use ferrymq::server::{start, Running};

pub struct TestBroker {
    pub addr: SocketAddr,
    running: Option<Running>,
    _data_dir: tempfile::TempDir,
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
        let running = start(config).await.expect("broker starts");
        TestBroker {
            addr: running.amqp_addr,
            running: Some(running),
            _data_dir: data_dir,
        }
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

pub async fn lapin(broker: &TestBroker) -> lapin::Connection {
    lapin::Connection::connect(&broker.uri(), lapin::ConnectionProperties::default())
        .await
        .expect("lapin connects")
}
