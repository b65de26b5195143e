//! Dead-lettering: a message rejected, expired, dropped by a length limit or past its
//! delivery limit is republished to the queue's dead-letter exchange, carrying RabbitMQ's
//! `x-death` history so consumers of the dead-letter queue can see what happened.
//!
//! Headers written, as RabbitMQ 3.13+ writes them:
//! - `x-death`: an array of tables, most recent first, one per (queue, reason):
//!   `count` (long), `reason`, `queue`, `time` (timestamp, seconds), `exchange`,
//!   `routing-keys` (array), and `original-expiration` when the message had a per-message
//!   TTL (the `expiration` property itself is removed, so the copy does not expire again).
//!   A repeat of the same (queue, reason) increments `count` and moves its entry first.
//! - `x-first-death-reason` / `-queue` / `-exchange`: set once.
//! - `x-last-death-reason` / `-queue` / `-exchange`: overwritten each time.
//!
//! The queue task never waits on another queue (two queues dead-lettering into each other
//! would deadlock), so it hands each batch of dead letters to a short-lived task that
//! routes them and waits for mailbox room. Like RabbitMQ's default, this is at-most-once:
//! the source message is removed when it is handed over.

use std::sync::{Arc, Weak};

use ferrymq_wire::{FieldTable, FieldValue, ShortStr};

use crate::message::{header_strings, Message};
use crate::queue::QueueHandle;
use crate::vhost::VHost;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Dropped by x-max-length / x-max-length-bytes.
    Maxlen,
    /// Returned more often than x-delivery-limit allows.
    DeliveryLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone)]
pub struct DeadLetterTarget {
    pub exchange: ShortStr,
    /// Replaces the message's routing keys when set.
    pub routing_key: Option<ShortStr>,
}

/// The copy of `message` that goes to the dead-letter exchange.
pub fn dead_lettered(
    message: &Message,
    reason: Reason,
    queue: &str,
    target: &DeadLetterTarget,
    now_secs: u64,
) -> Message {
    let mut properties = message.properties.decode().unwrap_or_default();
    let mut headers = properties.headers.take().unwrap_or_default();
    let routing_keys = original_routing_keys(message, &headers);
    let original_expiration = properties.expiration.take();

    let mut deaths: Vec<FieldValue> = match headers.remove("x-death") {
        Some(FieldValue::Array(items)) => items,
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| {
        d.as_table().is_some_and(|t| {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        })
    });
    let entry = match same {
        Some(at) => {
            let FieldValue::Table(mut entry) = deaths.remove(at) else {
                unreachable!("matched a table")
            };
            let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            entry.insert("count", FieldValue::I64(count + 1));
            entry.insert("time", FieldValue::Timestamp(now_secs));
            entry
        }
        None => {
            let mut entry = FieldTable::new();
            entry.insert("count", FieldValue::I64(1));
            entry.insert("reason", longstr(reason.as_str()));
            entry.insert("queue", longstr(queue));
            entry.insert("time", FieldValue::Timestamp(now_secs));
            entry.insert("exchange", longstr(&message.exchange));
            entry.insert(
                "routing-keys",
                FieldValue::Array(routing_keys.iter().map(|k| longstr(k)).collect()),
            );
            if let Some(expiration) = &original_expiration {
                entry.insert("original-expiration", longstr(expiration));
            }
            entry
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    for (suffix, value) in [
        ("reason", reason.as_str()),
        ("queue", queue),
        ("exchange", message.exchange.as_str()),
    ] {
        let first = format!("x-first-death-{suffix}");
        if !headers.contains_key(&first) {
            headers.insert(first, longstr(value));
        }
        headers.insert(format!("x-last-death-{suffix}"), longstr(value));
    }
    properties.headers = Some(headers);
    let routing_key = target
        .routing_key
        .clone()
        .unwrap_or_else(|| message.routing_key.clone());
    Message::new(
        target.exchange.clone(),
        routing_key,
        properties.encode(),
        message.body.clone(),
    )
}

/// The routing key and CC keys the message was published with (BCC was removed at publish).
fn original_routing_keys(message: &Message, headers: &FieldTable) -> Vec<String> {
    let mut keys = vec![message.routing_key.to_string()];
    keys.extend(header_strings(headers.get("CC")));
    keys
}

fn longstr(value: &str) -> FieldValue {
    FieldValue::LongStr(bytes::Bytes::copy_from_slice(value.as_bytes()))
}

/// Routes dead letters through their exchange in a task of their own (see the module doc).
/// A missing dead-letter exchange drops them, as RabbitMQ does.
pub fn forward(vhost: Weak<VHost>, letters: Vec<Message>) {
    if letters.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let Some(vhost) = vhost.upgrade() else { return };
        let mut queues: Vec<Arc<QueueHandle>> = Vec::new();
        for letter in letters {
            let Some(exchange) = vhost.exchange(&letter.exchange) else {
                continue;
            };
            let headers = letter.properties.headers();
            let keys = headers
                .as_ref()
                .map(|h| original_routing_keys(&letter, h))
                .unwrap_or_else(|| vec![letter.routing_key.to_string()]);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            queues.clear();
            // A deduplication exchange on the way may drop a dead letter like any publish.
            let mut probe = crate::dedup::DedupProbe::new(&letter);
            vhost.route(&exchange, &keys, headers.as_ref(), &mut queues, &mut probe);
            let dedup = probe.outcome;
            let cycle = Cycle::of(headers.as_ref());
            queues.retain(|queue| {
                let drop = cycle.drops(&queue.name);
                if drop {
                    tracing::debug!(queue = %queue.name, "dead-letter cycle: message dropped");
                }
                !drop
            });
            let letter = Arc::new(letter);
            if !dedup.writes.is_empty() {
                dedup.enqueue_then_record(&mut queues, &letter, None).await;
            }
            for queue in queues.drain(..) {
                queue.publish(Arc::clone(&letter), None).await;
            }
        }
    });
}

/// RabbitMQ drops a dead letter that would come back to a queue it already died in, unless
/// a rejection is part of the history (then a consumer, not a timer, drives the cycle).
struct Cycle {
    queues: Vec<String>,
    rejected: bool,
}

impl Cycle {
    fn of(headers: Option<&FieldTable>) -> Cycle {
        let deaths = headers
            .and_then(|h| h.get("x-death"))
            .and_then(FieldValue::as_array)
            .unwrap_or_default();
        let tables = deaths.iter().filter_map(FieldValue::as_table);
        let mut cycle = Cycle {
            queues: Vec::new(),
            rejected: false,
        };
        for death in tables {
            if let Some(queue) = death.get("queue").and_then(FieldValue::as_str) {
                cycle.queues.push(queue.to_string());
            }
            cycle.rejected |= death.get("reason").and_then(FieldValue::as_str) == Some("rejected");
        }
        cycle
    }

    fn drops(&self, queue: &str) -> bool {
        !self.rejected && self.queues.iter().any(|q| q == queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_wire::{BasicProperties, Properties};

    fn message(properties: Properties) -> Message {
        Message::new(
            ShortStr::from("orders"),
            ShortStr::from("eu"),
            properties,
            bytes::Bytes::from_static(b"body"),
        )
    }

    fn headers(m: &Message) -> FieldTable {
        m.properties.headers().unwrap()
    }

    #[test]
    fn first_death_writes_the_whole_history() {
        let props = BasicProperties {
            expiration: Some(ShortStr::from("60000")),
            ..Default::default()
        };
        let target = DeadLetterTarget {
            exchange: ShortStr::from("dlx"),
            routing_key: None,
        };
        let dead = dead_lettered(&message(props.encode()), Reason::Expired, "q1", &target, 42);
        assert_eq!(dead.exchange.as_str(), "dlx");
        assert_eq!(dead.routing_key.as_str(), "eu");
        assert_eq!(dead.properties.expiration(), None);
        let h = headers(&dead);
        let deaths = h.get("x-death").unwrap().as_array().unwrap();
        let entry = deaths[0].as_table().unwrap();
        assert_eq!(entry.get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(entry.get("reason").unwrap().as_str(), Some("expired"));
        assert_eq!(entry.get("queue").unwrap().as_str(), Some("q1"));
        assert_eq!(entry.get("exchange").unwrap().as_str(), Some("orders"));
        assert_eq!(entry.get("time"), Some(&FieldValue::Timestamp(42)));
        assert_eq!(
            entry.get("original-expiration").unwrap().as_str(),
            Some("60000")
        );
        assert_eq!(h.get("x-first-death-queue").unwrap().as_str(), Some("q1"));
        assert_eq!(
            h.get("x-last-death-reason").unwrap().as_str(),
            Some("expired")
        );
    }

    #[test]
    fn repeated_deaths_count_and_cycles_are_detected() {
        let target = DeadLetterTarget {
            exchange: ShortStr::from(""),
            routing_key: Some(ShortStr::from("q1")),
        };
        let once = dead_lettered(
            &message(Properties::empty()),
            Reason::Expired,
            "q1",
            &target,
            1,
        );
        let other = dead_lettered(&once, Reason::Maxlen, "q2", &target, 2);
        let twice = dead_lettered(&other, Reason::Expired, "q1", &target, 3);
        let h = headers(&twice);
        let deaths: Vec<&FieldTable> = h
            .get("x-death")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_table().unwrap())
            .collect();
        assert_eq!(deaths.len(), 2);
        assert_eq!(deaths[0].get("queue").unwrap().as_str(), Some("q1"));
        assert_eq!(deaths[0].get("count"), Some(&FieldValue::I64(2)));
        assert_eq!(
            h.get("x-first-death-reason").unwrap().as_str(),
            Some("expired")
        );
        assert_eq!(h.get("x-last-death-queue").unwrap().as_str(), Some("q1"));
        assert!(Cycle::of(Some(&h)).drops("q1"));
        assert!(!Cycle::of(Some(&h)).drops("q3"));
        let rejected = dead_lettered(&twice, Reason::Rejected, "q2", &target, 4);
        assert!(!Cycle::of(Some(&headers(&rejected))).drops("q1"));
    }
}
