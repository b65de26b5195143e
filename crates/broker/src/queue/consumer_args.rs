//! The arguments behind consumer features, read and checked the way RabbitMQ does
//! (`rabbit_amqqueue:check_consume_arguments` / `check_declare_arguments`):
//!
//! | argument | where | type | invalid type |
//! |---|---|---|---|
//! | `x-priority` | basic.consume | any integer, may be negative (default 0) | 406 |
//! | `x-single-active-consumer` | queue.declare | bool | 406 (checked with the other queue arguments, `arguments.rs`) |
//! | `x-consumer-timeout` | basic.consume, queue.declare | integer ms | ignored (RabbitMQ does not check it) |

use std::time::Duration;

use ferrymq_wire::{FieldTable, FieldValue};

use crate::error::{BrokerError, Result};
use crate::exchange::field_type_name;

pub const PRIORITY: &str = "x-priority";
pub const SINGLE_ACTIVE_CONSUMER: &str = "x-single-active-consumer";
pub const CONSUMER_TIMEOUT: &str = "x-consumer-timeout";

/// RabbitMQ's "invalid arg" channel error (406).
fn invalid_arg(key: &str, queue: &str, vhost: &str, error: &str) -> BrokerError {
    BrokerError::precondition_failed(format!(
        "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {error}"
    ))
}

/// The consumer's `x-priority` (0 when absent). A non-integer is refused with RabbitMQ's
/// text, whose error term is a formatted string and so prints quoted.
pub fn priority(arguments: &FieldTable, queue: &str, vhost: &str) -> Result<i64> {
    match arguments.get(PRIORITY) {
        None => Ok(0),
        Some(value) => value.as_i64().ok_or_else(|| {
            let error = format!("\"expected integer, got {}\"", field_type_name(value));
            invalid_arg(PRIORITY, queue, vhost, &error)
        }),
    }
}

/// Whether the queue was declared with `x-single-active-consumer = true`.
pub fn single_active_consumer(queue_arguments: &FieldTable) -> bool {
    queue_arguments
        .get(SINGLE_ACTIVE_CONSUMER)
        .and_then(FieldValue::as_bool)
        .unwrap_or(false)
}

/// The delivery acknowledgement timeout that applies, by RabbitMQ's precedence: the
/// consumer's `x-consumer-timeout`, else the queue's, else the broker default
/// (`consumer_timeout_ms`). A level that is absent, not an integer or negative is skipped;
/// 0 at the level that applies means no timeout (as `consumer_timeout_ms = 0`).
pub fn ack_timeout(
    consumer_arguments: Option<&FieldTable>,
    queue_arguments: &FieldTable,
    default_ms: u64,
) -> Option<Duration> {
    let level = |table: Option<&FieldTable>| {
        table
            .and_then(|t| t.get(CONSUMER_TIMEOUT))
            .and_then(FieldValue::as_i64)
            .and_then(|ms| u64::try_from(ms).ok())
    };
    let ms = level(consumer_arguments)
        .or_else(|| level(Some(queue_arguments)))
        .unwrap_or(default_ms);
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn table(key: &str, value: FieldValue) -> FieldTable {
        let mut t = FieldTable::new();
        t.insert(key, value);
        t
    }

    #[test]
    fn priority_accepts_every_integer_type_and_negatives() {
        assert_eq!(priority(&FieldTable::new(), "q", "/").unwrap(), 0);
        assert_eq!(
            priority(&table(PRIORITY, FieldValue::I8(-3)), "q", "/").unwrap(),
            -3
        );
        assert_eq!(
            priority(&table(PRIORITY, FieldValue::U32(7)), "q", "/").unwrap(),
            7
        );
    }

    #[test]
    fn priority_of_another_type_is_refused_with_rabbitmq_text() {
        let args = table(PRIORITY, FieldValue::LongStr(Bytes::from_static(b"10")));
        let error = priority(&args, "q", "/").unwrap_err();
        assert_eq!(error.code, 406);
        assert_eq!(
            error.text,
            "invalid arg 'x-priority' for queue 'q' in vhost '/': \"expected integer, got longstr\""
        );
    }

    #[test]
    fn ack_timeout_follows_consumer_then_queue_then_default() {
        let consumer = table(CONSUMER_TIMEOUT, FieldValue::I64(100));
        let queue = table(CONSUMER_TIMEOUT, FieldValue::I32(200));
        let ms = Duration::from_millis;
        assert_eq!(ack_timeout(Some(&consumer), &queue, 300), Some(ms(100)));
        assert_eq!(ack_timeout(None, &queue, 300), Some(ms(200)));
        assert_eq!(ack_timeout(None, &FieldTable::new(), 300), Some(ms(300)));
        assert_eq!(ack_timeout(None, &FieldTable::new(), 0), None);
        // A negative or non-integer level is skipped, not an error.
        let bad = table(CONSUMER_TIMEOUT, FieldValue::I64(-1));
        assert_eq!(ack_timeout(Some(&bad), &queue, 0), Some(ms(200)));
        // 0 where it applies switches the timeout off, even over a default.
        let off = table(CONSUMER_TIMEOUT, FieldValue::U8(0));
        assert_eq!(ack_timeout(None, &off, 300), None);
    }
}
