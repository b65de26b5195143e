//! Errors on an AMQP connection, split the way the protocol splits them: a channel error
//! closes one channel (403-406), a connection error closes the connection (5xx, 320).

use ferrymq_broker::BrokerError;
use ferrymq_wire::WireError;

/// What goes into channel.close / connection.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl CloseReason {
    /// RabbitMQ prefixes the reply text with the code's name ("NOT_FOUND - no queue 'q'…");
    /// some clients and many users' log parsers look for it.
    pub fn reply_text(&self) -> String {
        let text = format!("{} - {}", code_name(self.code), self.text);
        // reply-text is a shortstr: at most 255 bytes, cut on a character boundary.
        let mut end = text.len().min(255);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmqpError {
    Channel(CloseReason),
    Connection(CloseReason),
}

impl AmqpError {
    pub fn channel(code: u16, text: impl Into<String>, method: (u16, u16)) -> Self {
        AmqpError::Channel(CloseReason {
            code,
            text: text.into(),
            class_id: method.0,
            method_id: method.1,
        })
    }

    pub fn connection(code: u16, text: impl Into<String>, method: (u16, u16)) -> Self {
        AmqpError::Connection(CloseReason {
            code,
            text: text.into(),
            class_id: method.0,
            method_id: method.1,
        })
    }

    /// Attaches the method that failed to a broker error, keeping its severity.
    pub fn from_broker(error: BrokerError, method: (u16, u16)) -> Self {
        if error.is_connection_error() {
            Self::connection(error.code, error.text, method)
        } else {
            Self::channel(error.code, error.text, method)
        }
    }
}

impl From<WireError> for AmqpError {
    fn from(e: WireError) -> Self {
        AmqpError::Connection(CloseReason {
            code: e.code,
            text: e.text,
            class_id: e.class_id,
            method_id: e.method_id,
        })
    }
}

pub type AmqpResult<T = ()> = Result<T, AmqpError>;

/// Reply-code names as RabbitMQ prints them.
pub fn code_name(code: u16) -> &'static str {
    match code {
        200 => "OK",
        311 => "CONTENT_TOO_LARGE",
        312 => "NO_ROUTE",
        313 => "NO_CONSUMERS",
        320 => "CONNECTION_FORCED",
        402 => "INVALID_PATH",
        403 => "ACCESS_REFUSED",
        404 => "NOT_FOUND",
        405 => "RESOURCE_LOCKED",
        406 => "PRECONDITION_FAILED",
        501 => "FRAME_ERROR",
        502 => "SYNTAX_ERROR",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        506 => "RESOURCE_ERROR",
        530 => "NOT_ALLOWED",
        540 => "NOT_IMPLEMENTED",
        541 => "INTERNAL_ERROR",
        _ => "ERROR",
    }
}

/// Reply codes used by the AMQP layer.
pub mod code {
    pub use ferrymq_broker::error::code::*;
    pub const NO_ROUTE: u16 = 312;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
}
