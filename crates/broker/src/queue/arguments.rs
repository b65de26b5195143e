//! The `x-` arguments that shape a queue's behaviour, checked at declare time with
//! RabbitMQ's rules and wording, and parsed once when the queue task starts.
//!
//! RabbitMQ answers a bad argument with 406 and
//! `invalid arg '<name>' for queue '<q>' in vhost '<v>': <reason>`, where the reason is an
//! Erlang term such as `{value_negative,-1}` or `{unacceptable_type,longstr}`; clients and
//! their users match on these texts, so they are reproduced as printed.

use ferrymq_wire::{FieldTable, FieldValue, ShortStr};

use crate::error::{BrokerError, Result};
use crate::exchange::field_type_name;

/// The highest priority RabbitMQ supports.
pub const MAX_PRIORITY_LEVEL: i64 = 255;

/// What happens to a publish that would take the queue past a length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages to make room: RabbitMQ's default.
    #[default]
    DropHead,
    /// Refuse the new message (basic.nack under confirms).
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-max-priority`: 0 for a plain queue.
    pub max_priority: u8,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: the queue is deleted after this long unused.
    pub expires_ms: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<ShortStr>,
    pub dead_letter_routing_key: Option<ShortStr>,
    /// `x-delivery-limit`: returns to the queue a message survives.
    pub delivery_limit: Option<u64>,
}

impl QueueArgs {
    /// Checks declared arguments as RabbitMQ does before creating the queue.
    pub fn validate(arguments: &FieldTable, queue: &str, vhost: &str) -> Result<()> {
        let invalid = |name: &str, reason: String| {
            BrokerError::precondition_failed(format!(
                "invalid arg '{name}' for queue '{queue}' in vhost '{vhost}': {reason}"
            ))
        };
        for (name, value) in arguments.iter() {
            let name = name.as_str();
            let check = match name {
                "x-expires" => positive_int(value),
                "x-message-ttl" | "x-max-length" | "x-max-length-bytes" | "x-delivery-limit" => {
                    non_negative_int(value)
                }
                "x-max-priority" => non_negative_int(value).and_then(|()| match value.as_i64() {
                    Some(n) if n > MAX_PRIORITY_LEVEL => {
                        Err(format!("{{value_too_large,{n},{MAX_PRIORITY_LEVEL}}}"))
                    }
                    _ => Ok(()),
                }),
                "x-dead-letter-exchange" | "x-dead-letter-routing-key" | "x-queue-mode" => {
                    longstr(value)
                }
                "x-overflow" => longstr(value).and_then(|()| match value.as_str() {
                    Some("drop-head" | "reject-publish" | "reject-publish-dlx") => Ok(()),
                    other => Err(format!(
                        "{{invalid_overflow,<<\"{}\">>}}",
                        other.unwrap_or("")
                    )),
                }),
                "x-single-active-consumer" => match value {
                    FieldValue::Bool(_) => Ok(()),
                    other => Err(format!("{{unacceptable_type,{}}}", field_type_name(other))),
                },
                _ => Ok(()),
            };
            check.map_err(|reason| invalid(name, reason))?;
        }
        if arguments.contains_key("x-dead-letter-routing-key")
            && !arguments.contains_key("x-dead-letter-exchange")
        {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".to_string(),
            ));
        }
        Ok(())
    }

    /// Reads the arguments in force (declared ones were validated; policy values are taken
    /// as far as they make sense).
    pub fn parse(arguments: &FieldTable) -> QueueArgs {
        let uint = |name: &str| {
            arguments
                .get(name)
                .and_then(FieldValue::as_i64)
                .and_then(|n| u64::try_from(n).ok())
        };
        let string = |name: &str| {
            arguments
                .get(name)
                .and_then(FieldValue::as_str)
                .map(ShortStr::from)
        };
        QueueArgs {
            max_priority: uint("x-max-priority").map_or(0, |n| n.min(255) as u8),
            message_ttl_ms: uint("x-message-ttl"),
            expires_ms: uint("x-expires").filter(|&ms| ms > 0),
            max_length: uint("x-max-length"),
            max_length_bytes: uint("x-max-length-bytes"),
            overflow: match arguments.get("x-overflow").and_then(FieldValue::as_str) {
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                _ => Overflow::DropHead,
            },
            dead_letter_exchange: string("x-dead-letter-exchange"),
            dead_letter_routing_key: string("x-dead-letter-routing-key"),
            delivery_limit: uint("x-delivery-limit"),
        }
    }

    pub fn has_length_limit(&self) -> bool {
        self.max_length.is_some() || self.max_length_bytes.is_some()
    }
}

fn int(value: &FieldValue) -> std::result::Result<i64, String> {
    value
        .as_i64()
        .ok_or_else(|| format!("{{unacceptable_type,{}}}", field_type_name(value)))
}

fn non_negative_int(value: &FieldValue) -> std::result::Result<(), String> {
    match int(value)? {
        n if n < 0 => Err(format!("{{value_negative,{n}}}")),
        _ => Ok(()),
    }
}

fn positive_int(value: &FieldValue) -> std::result::Result<(), String> {
    match int(value)? {
        0 => Err("{value_zero,0}".to_string()),
        n if n < 0 => Err(format!("{{value_negative,{n}}}")),
        _ => Ok(()),
    }
}

fn longstr(value: &FieldValue) -> std::result::Result<(), String> {
    match value {
        FieldValue::LongStr(_) => Ok(()),
        other => Err(format!("{{unacceptable_type,{}}}", field_type_name(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| (ShortStr::from(*k), v.clone()))
            .collect()
    }

    #[test]
    fn rabbitmq_reasons_for_bad_values() {
        let cases = [
            (
                ("x-message-ttl", FieldValue::I32(-1)),
                "{value_negative,-1}",
            ),
            (("x-expires", FieldValue::I32(0)), "{value_zero,0}"),
            (
                ("x-max-priority", FieldValue::I32(256)),
                "{value_too_large,256,255}",
            ),
            (
                ("x-max-length", FieldValue::LongStr("5".into())),
                "{unacceptable_type,longstr}",
            ),
            (
                ("x-overflow", FieldValue::LongStr("drop-tail".into())),
                "{invalid_overflow,<<\"drop-tail\">>}",
            ),
        ];
        for ((name, value), reason) in cases {
            let err = QueueArgs::validate(&table(&[(name, value)]), "q", "/").unwrap_err();
            assert_eq!(err.code, 406);
            assert_eq!(
                err.text,
                format!("invalid arg '{name}' for queue 'q' in vhost '/': {reason}")
            );
        }
    }

    #[test]
    fn parses_what_it_validated() {
        let args = table(&[
            ("x-max-priority", FieldValue::U8(10)),
            ("x-message-ttl", FieldValue::I64(500)),
            (
                "x-overflow",
                FieldValue::LongStr("reject-publish-dlx".into()),
            ),
            ("x-dead-letter-exchange", FieldValue::LongStr("dlx".into())),
            ("x-delivery-limit", FieldValue::I16(3)),
        ]);
        QueueArgs::validate(&args, "q", "/").unwrap();
        let parsed = QueueArgs::parse(&args);
        assert_eq!(parsed.max_priority, 10);
        assert_eq!(parsed.message_ttl_ms, Some(500));
        assert_eq!(parsed.overflow, Overflow::RejectPublishDlx);
        assert_eq!(parsed.dead_letter_exchange.as_deref(), Some("dlx"));
        assert_eq!(parsed.delivery_limit, Some(3));
    }
}
