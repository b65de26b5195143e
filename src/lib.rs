//! ferrymq: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
//!
//! # Layout
//! - `crates/wire` ([`ferrymq_wire`]): the sans-IO codec: frames, methods, field tables, properties.
//! - `crates/broker` ([`ferrymq_broker`]): the protocol-agnostic core: vhosts, exchanges, queues.
//! - [`alarm`]: memory and disk alarms that block publishers.
//! - [`amqp`]: the AMQP interface: listener, connections, channels.
//! - [`config`]: flags, environment and TOML file.
//! - [`server`]: wiring it together: start, run, shut down.

pub mod alarm;
pub mod amqp;
pub mod config;
pub mod server;
