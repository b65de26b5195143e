//! Connection negotiation: what the server offers in connection.start and connection.tune,
//! and how it checks the client's answers.
//!
//! ```text
//!   client                          server
//!   "AMQP" 0 0 9 1        ──▶
//!                         ◀──       connection.start (properties, capabilities, PLAIN AMQPLAIN)
//!   connection.start-ok   ──▶       (SASL response → user)
//!                         ◀──       connection.tune (channel_max, frame_max, heartbeat)
//!   connection.tune-ok    ──▶       (negotiated values checked)
//!   connection.open       ──▶       (vhost access checked)
//!                         ◀──       connection.open-ok
//! ```

use bytes::Bytes;
use ferrymq_wire::{
    ConnectionStart, ConnectionTune, ConnectionTuneOk, FieldTable, FieldValue, ShortStr,
};

use super::error::{code, AmqpError, AmqpResult};
use super::sasl;
use super::session::ClientCapabilities;
use crate::config::Config;

/// Capabilities advertised to clients; each is a feature this broker implements.
const SERVER_CAPABILITIES: [&str; 8] = [
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
];

pub fn connection_start() -> ConnectionStart {
    let mut capabilities = FieldTable::new();
    for name in SERVER_CAPABILITIES {
        capabilities.insert(ShortStr::from(name), FieldValue::Bool(true));
    }
    let mut properties = FieldTable::new();
    let text = |s: &str| FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()));
    properties.insert(ShortStr::from("product"), text("ferrymq"));
    properties.insert(ShortStr::from("version"), text(env!("CARGO_PKG_VERSION")));
    properties.insert(ShortStr::from("platform"), text("Rust"));
    properties.insert(
        ShortStr::from("information"),
        text("AMQP 0-9-1 broker compatible with RabbitMQ clients"),
    );
    properties.insert(
        ShortStr::from("capabilities"),
        FieldValue::Table(capabilities),
    );
    ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties: properties,
        mechanisms: Bytes::from_static(sasl::MECHANISMS.as_bytes()),
        locales: Bytes::from_static(b"en_US"),
    }
}

pub fn client_capabilities(client_properties: &FieldTable) -> (ClientCapabilities, bool) {
    let table = client_properties
        .get("capabilities")
        .and_then(FieldValue::as_table);
    let flag = |name: &str| {
        table
            .and_then(|t| t.get(name))
            .and_then(FieldValue::as_bool)
            .unwrap_or(false)
    };
    let capabilities = ClientCapabilities {
        consumer_cancel_notify: flag("consumer_cancel_notify"),
        connection_blocked: flag("connection.blocked"),
    };
    (capabilities, flag("authentication_failure_close"))
}

pub fn connection_tune(config: &Config) -> ConnectionTune {
    ConnectionTune {
        channel_max: config.channel_max,
        frame_max: config.frame_max_bytes,
        heartbeat: config.heartbeat_s,
    }
}

/// The values both sides use from now on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuned {
    pub channel_max: u16,
    pub frame_max_bytes: u32,
    pub heartbeat_s: u16,
}

/// Checks tune-ok against what we offered, as RabbitMQ does: a value below the protocol
/// minimum, or above (or, for 0 = "no limit", beyond) the server's limit is refused.
pub fn negotiate(offered: &ConnectionTune, ok: &ConnectionTuneOk) -> AmqpResult<Tuned> {
    // RabbitMQ's fail_negotiation names connection.tune (the offer), not tune-ok.
    let ids = (ConnectionTune::CLASS_ID, ConnectionTune::METHOD_ID);
    check_value(
        "frame_max",
        ok.frame_max,
        ferrymq_wire::FRAME_MIN_SIZE,
        offered.frame_max,
        ids,
    )?;
    check_value(
        "channel_max",
        u32::from(ok.channel_max),
        1,
        u32::from(offered.channel_max),
        ids,
    )?;
    let channel_max = if ok.channel_max == 0 {
        offered.channel_max
    } else {
        ok.channel_max
    };
    let frame_max_bytes = if ok.frame_max == 0 {
        offered.frame_max
    } else {
        ok.frame_max
    };
    Ok(Tuned {
        channel_max: if channel_max == 0 {
            u16::MAX
        } else {
            channel_max
        },
        frame_max_bytes,
        heartbeat_s: ok.heartbeat,
    })
}

fn check_value(field: &str, client: u32, min: u32, server: u32, ids: (u16, u16)) -> AmqpResult {
    if client != 0 && client < min {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "negotiated {field} = {client} is lower than the minimum allowed value ({min})"
            ),
            ids,
        ));
    }
    if server != 0 && (client == 0 || client > server) {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "negotiated {field} = {client} is higher than the maximum allowed value ({server})"
            ),
            ids,
        ));
    }
    Ok(())
}

/// Extracts credentials from start-ok; `None` for a malformed or unsupported response.
pub fn credentials(mechanism: &str, response: &[u8]) -> Option<sasl::Credentials> {
    sasl::parse(mechanism, response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> ConnectionTune {
        ConnectionTune {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
        }
    }

    #[test]
    fn client_values_within_limits_are_taken() {
        let ok = ConnectionTuneOk {
            channel_max: 10,
            frame_max: 4096,
            heartbeat: 0,
        };
        let tuned = negotiate(&offered(), &ok).unwrap();
        assert_eq!(
            tuned,
            Tuned {
                channel_max: 10,
                frame_max_bytes: 4096,
                heartbeat_s: 0
            }
        );
    }

    #[test]
    fn frame_max_below_minimum_or_above_offer_is_refused() {
        for frame_max in [100, 1_000_000, 0] {
            let ok = ConnectionTuneOk {
                channel_max: 10,
                frame_max,
                heartbeat: 0,
            };
            let Err(AmqpError::Connection(reason)) = negotiate(&offered(), &ok) else {
                panic!("accepted {frame_max}")
            };
            assert_eq!(reason.code, code::NOT_ALLOWED);
        }
    }
}
