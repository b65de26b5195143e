//! Errors the core raises, already shaped as AMQP reply codes.
//!
//! The core is protocol-agnostic, but RabbitMQ's reply codes are the lingua franca of its
//! clients (and of its HTTP API), so a broker error carries the code and RabbitMQ's wording.
//! Codes 403-406 close only the channel; 5xx codes close the whole connection.

use std::fmt;

/// AMQP reply codes the core raises (the full list lives in `ferrymq_wire`).
pub mod code {
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const COMMAND_INVALID: u16 = 503;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
    pub const RESOURCE_ERROR: u16 = 506;
    pub const INTERNAL_ERROR: u16 = 541;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    pub code: u16,
    pub text: String,
}

impl BrokerError {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        BrokerError {
            code,
            text: text.into(),
        }
    }
    pub fn access_refused(text: impl Into<String>) -> Self {
        Self::new(code::ACCESS_REFUSED, text)
    }
    pub fn not_found(text: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, text)
    }
    pub fn resource_locked(text: impl Into<String>) -> Self {
        Self::new(code::RESOURCE_LOCKED, text)
    }
    pub fn precondition_failed(text: impl Into<String>) -> Self {
        Self::new(code::PRECONDITION_FAILED, text)
    }
    pub fn command_invalid(text: impl Into<String>) -> Self {
        Self::new(code::COMMAND_INVALID, text)
    }
    pub fn not_allowed(text: impl Into<String>) -> Self {
        Self::new(code::NOT_ALLOWED, text)
    }
    pub fn internal(text: impl Into<String>) -> Self {
        Self::new(code::INTERNAL_ERROR, text)
    }

    /// RabbitMQ's "no queue 'q' in vhost '/'" wording, which clients and docs quote.
    pub fn no_queue(queue: &str, vhost: &str) -> Self {
        Self::not_found(format!("no queue '{queue}' in vhost '{vhost}'"))
    }
    pub fn no_exchange(exchange: &str, vhost: &str) -> Self {
        Self::not_found(format!("no exchange '{exchange}' in vhost '{vhost}'"))
    }

    /// 5xx codes are connection errors; everything else closes only the channel.
    pub fn is_connection_error(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for BrokerError {}

pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
