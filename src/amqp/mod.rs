//! The AMQP 0-9-1 interface: accepts TCP connections and drives the broker core.
//!
//! # Layout
//! - [`listener`]: the accept loop, connection limit and graceful shutdown.
//! - [`connection`]: one task per connection: socket I/O, handshake, heartbeats, close.
//! - [`handshake`]: what the server offers (start, tune) and checks (start-ok, tune-ok).
//! - [`session`]: an open connection's channels and every channel-level method.
//! - [`channel`]: per-channel bookkeeping (content assembly, unacked tags, confirms, tx).
//! - [`outbox`]: outgoing frames, written with vectored writes.
//! - [`sasl`]: PLAIN and AMQPLAIN responses.
//! - [`error`]: channel vs connection errors and RabbitMQ's reply-text format.

pub mod channel;
pub mod connection;
pub mod error;
pub mod handshake;
pub mod listener;
pub mod outbox;
pub mod sasl;
pub mod session;

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use ferrymq_broker::Broker;

use crate::config::Config;

/// What every connection shares.
pub struct Server {
    pub broker: Arc<Broker>,
    pub config: Config,
    /// Memory and disk alarms: while one is raised, publishing connections are blocked.
    pub alarms: tokio::sync::watch::Receiver<crate::alarm::Alarms>,
    pub(crate) connections: AtomicU32,
}

impl Server {
    pub fn new(
        broker: Arc<Broker>,
        config: Config,
        alarms: tokio::sync::watch::Receiver<crate::alarm::Alarms>,
    ) -> Arc<Self> {
        Arc::new(Server {
            broker,
            config,
            alarms,
            connections: AtomicU32::new(0),
        })
    }
}
