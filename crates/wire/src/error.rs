//! The codec's one error type: everything `connection.close` needs.
//!
//! Every decode failure in this crate is a hard (connection-level) error, so a
//! `WireError` carries the reply code, the class and method ids that the
//! broker echoes in `connection.close`, and the reply text.
//!
//! Reply codes follow what RabbitMQ sends (checked against rabbitmq-server
//! `deps/rabbit/src/rabbit_reader.erl`, `deps/rabbit_common/src/rabbit_command_assembler.erl`,
//! `rabbit_framing_amqp_0_9_1.erl` and `rabbit_misc.erl`):
//!
//! | failure | code | RabbitMQ source |
//! |---|---|---|
//! | bad frame-end octet, frame over frame-max, unknown frame type, header/heartbeat payload of the wrong size | 501 | `rabbit_reader:handle_input` / `frame_error(unknown_frame, ..)` |
//! | method arguments truncated, trailing bytes, bad UTF-8 in a shortstr | 501 | `decode_method_fields(Name, Bin) -> rabbit_misc:frame_error(..)` ("cannot decode"), `rabbit_binary_parser:assert_utf8` |
//! | heartbeat on a channel other than 0 | 505 | `rabbit_reader:handle_frame`: `heartbeat -> unexpected_frame(..)` |
//! | unknown class or method id | 540 | RabbitMQ sends nothing: `lookup_method_name` exits `{unknown_method_id, Id}` and the reader dies, closing TCP. We close politely with NOT_IMPLEMENTED instead. |
//! | unknown field-table type tag | 501 | RabbitMQ crashes (`parse_table` has no clause); we report it like every other undecodable method field. |

/// Reply codes used here; the full list from the spec is in [`crate::reply_code`].
pub const FRAME_ERROR: u16 = 501;
pub const SYNTAX_ERROR: u16 = 502;
pub const COMMAND_INVALID: u16 = 503;
pub const UNEXPECTED_FRAME: u16 = 505;
pub const NOT_IMPLEMENTED: u16 = 540;

/// A protocol violation detected while decoding: close the connection with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {text}")]
pub struct WireError {
    /// AMQP reply code (501 FRAME_ERROR, 505 UNEXPECTED_FRAME, 540 NOT_IMPLEMENTED, ...).
    pub code: u16,
    /// Class of the method being decoded, 0 when the failure is below the method layer.
    pub class_id: u16,
    /// Method being decoded, 0 when the failure is below the method layer.
    pub method_id: u16,
    /// Human-readable reply text for `connection.close`.
    pub text: String,
}

impl WireError {
    /// A reply with an explicit code.
    pub fn new(code: u16, class_id: u16, method_id: u16, text: impl Into<String>) -> Self {
        WireError {
            code,
            class_id,
            method_id,
            text: text.into(),
        }
    }

    /// 501 FRAME_ERROR below the method layer (framing, content header).
    pub fn frame_error(text: impl Into<String>) -> Self {
        Self::new(FRAME_ERROR, 0, 0, text)
    }

    /// 501 FRAME_ERROR while decoding the arguments of a known method
    /// (RabbitMQ's "cannot decode" for `class_id`.`method_id`).
    pub fn method_frame_error(class_id: u16, method_id: u16, text: impl Into<String>) -> Self {
        Self::new(FRAME_ERROR, class_id, method_id, text)
    }

    /// 502 SYNTAX_ERROR: a well-framed method whose field values are illegal.
    pub fn syntax_error(class_id: u16, method_id: u16, text: impl Into<String>) -> Self {
        Self::new(SYNTAX_ERROR, class_id, method_id, text)
    }

    /// 503 COMMAND_INVALID.
    pub fn command_invalid(class_id: u16, method_id: u16, text: impl Into<String>) -> Self {
        Self::new(COMMAND_INVALID, class_id, method_id, text)
    }

    /// 505 UNEXPECTED_FRAME.
    pub fn unexpected_frame(text: impl Into<String>) -> Self {
        Self::new(UNEXPECTED_FRAME, 0, 0, text)
    }

    /// 540 NOT_IMPLEMENTED.
    pub fn not_implemented(class_id: u16, method_id: u16, text: impl Into<String>) -> Self {
        Self::new(NOT_IMPLEMENTED, class_id, method_id, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_code_then_text() {
        let e = WireError::frame_error("bad frame end");
        assert_eq!(e.to_string(), "501 bad frame end");
        assert_eq!((e.class_id, e.method_id), (0, 0));
    }

    #[test]
    fn constructors_carry_their_reply_codes() {
        assert_eq!(WireError::syntax_error(50, 10, "x").code, 502);
        assert_eq!(WireError::command_invalid(50, 10, "x").code, 503);
        assert_eq!(WireError::unexpected_frame("x").code, 505);
        assert_eq!(WireError::not_implemented(99, 1, "x").code, 540);
        let e = WireError::method_frame_error(60, 40, "cannot decode");
        assert_eq!((e.code, e.class_id, e.method_id), (501, 60, 40));
    }
}
