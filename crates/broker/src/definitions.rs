//! Durable topology as commands, for the definitions log (`ferrymq_store::DefinitionsLog`).
//!
//! ```text
//!  command: ┌─────┬───────────────┬──────────────────────────────────────────────┐
//!           │ tag │ vhost shortstr│ fields by tag                                │
//!           │ u8  │ u8 len+bytes  │                                              │
//!           └─────┴───────────────┴──────────────────────────────────────────────┘
//!  1 exchange          name, type u8 (0 direct 1 fanout 2 topic 3 headers
//!                      4 x-delayed-message), flags u8
//!                      (bit 0 auto_delete, bit 1 internal), arguments (AMQP table)
//!  2 exchange deleted  name
//!  3 queue             name, flags u8 (bit 0 auto_delete), arguments (AMQP table)
//!  4 queue deleted     name
//!  5 binding           source, destination kind u8 (0 queue, 1 exchange), destination,
//!  6 unbinding         routing key, arguments (AMQP table)
//!  shortstr = u8 length + UTF-8 bytes; table = u32 length + AMQP field-table entries.
//! ```
//!
//! Only durable objects are recorded, and bindings only when both ends are durable, as in
//! RabbitMQ. The encoding reuses AMQP's so argument tables round-trip exactly.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferrymq_wire::{FieldTable, ShortStr};

use crate::exchange::ExchangeType;
use crate::vhost::DestinationName;

#[derive(Debug, Clone, PartialEq)]
pub enum Definition {
    Exchange {
        vhost: ShortStr,
        name: ShortStr,
        kind: ExchangeType,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    ExchangeDeleted {
        vhost: ShortStr,
        name: ShortStr,
    },
    Queue {
        vhost: ShortStr,
        name: ShortStr,
        auto_delete: bool,
        arguments: FieldTable,
    },
    QueueDeleted {
        vhost: ShortStr,
        name: ShortStr,
    },
    Binding(BindingDefinition),
    Unbinding(BindingDefinition),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDefinition {
    pub vhost: ShortStr,
    pub source: ShortStr,
    pub destination: DestinationName,
    pub routing_key: ShortStr,
    pub arguments: FieldTable,
}

/// A command that does not decode: the log entry passed its checksum, so this is a bug or
/// a log from a newer version.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("undecodable definition: {0}")]
pub struct DefinitionError(pub String);

impl Definition {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Definition::Exchange {
                vhost,
                name,
                kind,
                auto_delete,
                internal,
                arguments,
            } => {
                head(&mut out, 1, vhost);
                put_short(&mut out, name);
                out.put_u8(kind_code(*kind));
                out.put_u8(u8::from(*auto_delete) | (u8::from(*internal) << 1));
                arguments.encode(&mut out);
            }
            Definition::ExchangeDeleted { vhost, name } => {
                head(&mut out, 2, vhost);
                put_short(&mut out, name);
            }
            Definition::Queue {
                vhost,
                name,
                auto_delete,
                arguments,
            } => {
                head(&mut out, 3, vhost);
                put_short(&mut out, name);
                out.put_u8(u8::from(*auto_delete));
                arguments.encode(&mut out);
            }
            Definition::QueueDeleted { vhost, name } => {
                head(&mut out, 4, vhost);
                put_short(&mut out, name);
            }
            Definition::Binding(b) => encode_binding(&mut out, 5, b),
            Definition::Unbinding(b) => encode_binding(&mut out, 6, b),
        }
        out.freeze()
    }

    pub fn decode(mut src: Bytes) -> Result<Definition, DefinitionError> {
        let tag = get_u8(&mut src)?;
        let vhost = get_short(&mut src)?;
        let definition = match tag {
            1 => {
                let name = get_short(&mut src)?;
                let kind = kind_from_code(get_u8(&mut src)?)?;
                let flags = get_u8(&mut src)?;
                let arguments = get_table(&mut src)?;
                Definition::Exchange {
                    vhost,
                    name,
                    kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments,
                }
            }
            2 => Definition::ExchangeDeleted {
                vhost,
                name: get_short(&mut src)?,
            },
            3 => {
                let name = get_short(&mut src)?;
                let auto_delete = get_u8(&mut src)? & 1 != 0;
                Definition::Queue {
                    vhost,
                    name,
                    auto_delete,
                    arguments: get_table(&mut src)?,
                }
            }
            4 => Definition::QueueDeleted {
                vhost,
                name: get_short(&mut src)?,
            },
            5 | 6 => {
                let binding = decode_binding(vhost, &mut src)?;
                if tag == 5 {
                    Definition::Binding(binding)
                } else {
                    Definition::Unbinding(binding)
                }
            }
            other => return Err(DefinitionError(format!("unknown tag {other}"))),
        };
        if src.has_remaining() {
            return Err(DefinitionError("trailing bytes".into()));
        }
        Ok(definition)
    }
}

fn head(out: &mut BytesMut, tag: u8, vhost: &ShortStr) {
    out.put_u8(tag);
    put_short(out, vhost);
}

fn encode_binding(out: &mut BytesMut, tag: u8, b: &BindingDefinition) {
    head(out, tag, &b.vhost);
    put_short(out, &b.source);
    let (kind, name) = match &b.destination {
        DestinationName::Queue(name) => (0, name),
        DestinationName::Exchange(name) => (1, name),
    };
    out.put_u8(kind);
    put_short(out, name);
    put_short(out, &b.routing_key);
    b.arguments.encode(out);
}

fn decode_binding(vhost: ShortStr, src: &mut Bytes) -> Result<BindingDefinition, DefinitionError> {
    let source = get_short(src)?;
    let destination = match get_u8(src)? {
        0 => DestinationName::Queue(get_short(src)?),
        1 => DestinationName::Exchange(get_short(src)?),
        other => return Err(DefinitionError(format!("unknown destination kind {other}"))),
    };
    let routing_key = get_short(src)?;
    let arguments = get_table(src)?;
    Ok(BindingDefinition {
        vhost,
        source,
        destination,
        routing_key,
        arguments,
    })
}

fn kind_code(kind: ExchangeType) -> u8 {
    match kind {
        ExchangeType::Direct => 0,
        ExchangeType::Fanout => 1,
        ExchangeType::Topic => 2,
        ExchangeType::Headers => 3,
        // Not 4: codes are on disk forever, and other plugin types are being added beside.
        ExchangeType::Deduplication => 8,
        ExchangeType::Delayed => 4,
    }
}

fn kind_from_code(code: u8) -> Result<ExchangeType, DefinitionError> {
    match code {
        0 => Ok(ExchangeType::Direct),
        1 => Ok(ExchangeType::Fanout),
        2 => Ok(ExchangeType::Topic),
        3 => Ok(ExchangeType::Headers),
        8 => Ok(ExchangeType::Deduplication),
        4 => Ok(ExchangeType::Delayed),
        other => Err(DefinitionError(format!("unknown exchange type {other}"))),
    }
}

fn put_short(out: &mut BytesMut, s: &ShortStr) {
    out.put_u8(s.len() as u8);
    out.put_slice(s.as_bytes());
}

fn get_u8(src: &mut Bytes) -> Result<u8, DefinitionError> {
    if !src.has_remaining() {
        return Err(DefinitionError("truncated".into()));
    }
    Ok(src.get_u8())
}

fn get_short(src: &mut Bytes) -> Result<ShortStr, DefinitionError> {
    let len = get_u8(src)? as usize;
    if src.remaining() < len {
        return Err(DefinitionError("truncated string".into()));
    }
    ShortStr::from_utf8(src.split_to(len)).map_err(|e| DefinitionError(format!("{e:?}")))
}

fn get_table(src: &mut Bytes) -> Result<FieldTable, DefinitionError> {
    if src.remaining() < 4 {
        return Err(DefinitionError("truncated table".into()));
    }
    let len = src.get_u32() as usize;
    if src.remaining() < len {
        return Err(DefinitionError("truncated table".into()));
    }
    FieldTable::decode(src.split_to(len)).map_err(|e| DefinitionError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_wire::FieldValue;

    fn args() -> FieldTable {
        let mut t = FieldTable::new();
        t.insert("x-message-ttl", FieldValue::I32(60_000));
        t.insert(
            "x-dead-letter-exchange",
            FieldValue::LongStr(Bytes::from_static(b"dlx")),
        );
        t
    }

    #[test]
    fn every_definition_round_trips() {
        let vhost = ShortStr::from("/");
        let binding = BindingDefinition {
            vhost: vhost.clone(),
            source: "orders".into(),
            destination: DestinationName::Exchange("audit".into()),
            routing_key: "eu.#".into(),
            arguments: args(),
        };
        let all = vec![
            Definition::Exchange {
                vhost: vhost.clone(),
                name: "orders".into(),
                kind: ExchangeType::Topic,
                auto_delete: true,
                internal: true,
                arguments: args(),
            },
            Definition::ExchangeDeleted {
                vhost: vhost.clone(),
                name: "orders".into(),
            },
            Definition::Queue {
                vhost: vhost.clone(),
                name: "q".into(),
                auto_delete: false,
                arguments: args(),
            },
            Definition::QueueDeleted {
                vhost: vhost.clone(),
                name: "q".into(),
            },
            Definition::Binding(binding.clone()),
            Definition::Unbinding(BindingDefinition {
                destination: DestinationName::Queue("q".into()),
                ..binding
            }),
        ];
        for definition in all {
            assert_eq!(Definition::decode(definition.encode()).unwrap(), definition);
        }
    }

    #[test]
    fn truncated_or_unknown_input_is_an_error_not_a_panic() {
        let encoded = Definition::QueueDeleted {
            vhost: "/".into(),
            name: "q".into(),
        }
        .encode();
        for cut in 0..encoded.len() {
            assert!(Definition::decode(encoded.slice(..cut)).is_err());
        }
        assert!(Definition::decode(Bytes::from_static(&[9, 0])).is_err());
    }
}
