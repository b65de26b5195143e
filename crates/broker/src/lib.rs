//! ferrymq's broker core: vhosts, exchanges, queues, bindings and consumers, independent of
//! any wire protocol. The AMQP layer (and later the HTTP API) drive it through the same
//! calls; it answers with [`BrokerError`]s already shaped as AMQP reply codes.
//!
//! # Layout
//! - [`broker`]: the root object: vhosts and users.
//! - [`vhost`]: one namespace: declare/delete, bindings, routing of a publish to queues.
//! - [`direct_reply`]: `amq.rabbitmq.reply-to`, replies routed straight to a requesting channel.
//! - [`dedup`]: message deduplication (exchange type and queue argument of the plugin).
//! - [`definitions`]: durable topology as commands for the definitions log.
//! - [`exchange`]: exchange types and their routing indexes (`direct`, `fanout`, `topic`, `headers`).
//!   `delayed`: the `x-delayed-message` exchange's scheduler task, holding messages until due.
//! - [`queue`]: one task per queue owning its messages and consumers; [`queue::QueueHandle`] to talk to it.
//! - [`client`]: how queues reach a connection (deliveries, confirms) and the credit that bounds it.
//! - [`policy`]: RabbitMQ-style policies and the effective arguments they give.
//! - [`message`]: an immutable published message shared by every queue it reaches.
//! - [`storage`]: durable definitions and the directories of durable queues.
//! - [`auth`]: users and RabbitMQ-compatible password hashes.
//! - [`error`]: [`BrokerError`], a reply code and RabbitMQ's wording.

pub mod auth;
pub mod broker;
pub mod client;
pub mod dedup;
pub mod definitions;
pub mod direct_reply;
pub mod error;
pub mod exchange;
pub mod message;
pub mod policy;
pub mod queue;
pub mod storage;
pub mod topology;
pub mod vhost;

pub use broker::Broker;
pub use error::{BrokerError, Result};
pub use message::Message;
