//! `BasicProperties`: the 14 basic-class properties as owned, optional fields,
//! for when the broker must rewrite them (x-death headers, CC/BCC removal).
//! The layout is drawn in properties.rs; this writes exactly that layout
//! with one flags word (no continuation).

use bytes::{BufMut, BytesMut};

use crate::cursor::Cursor;
use crate::error::WireError;
use crate::field_table::FieldTable;
use crate::properties::{flag, Properties};
use crate::put::{put_shortstr, put_table};
use crate::short_str::ShortStr;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    /// The `type` property.
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

impl BasicProperties {
    fn flags(&self) -> u16 {
        let present = [
            self.content_type.is_some(),
            self.content_encoding.is_some(),
            self.headers.is_some(),
            self.delivery_mode.is_some(),
            self.priority.is_some(),
            self.correlation_id.is_some(),
            self.reply_to.is_some(),
            self.expiration.is_some(),
            self.message_id.is_some(),
            self.timestamp.is_some(),
            self.kind.is_some(),
            self.user_id.is_some(),
            self.app_id.is_some(),
            self.cluster_id.is_some(),
        ];
        present
            .iter()
            .enumerate()
            .filter(|(_, p)| **p)
            .fold(0, |flags, (i, _)| flags | flag(i))
    }

    /// Encodes into fresh raw properties.
    pub fn encode(&self) -> Properties {
        let mut dst = BytesMut::new();
        self.encode_into(&mut dst);
        Properties::from_bytes(dst.freeze())
    }

    /// Writes flags and values to `dst`.
    pub fn encode_into(&self, dst: &mut BytesMut) {
        dst.put_u16(self.flags());
        let strs_before_headers = [&self.content_type, &self.content_encoding];
        for s in strs_before_headers.into_iter().flatten() {
            put_shortstr(dst, s);
        }
        if let Some(h) = &self.headers {
            put_table(dst, h);
        }
        for o in [self.delivery_mode, self.priority].into_iter().flatten() {
            dst.put_u8(o);
        }
        let strs = [
            &self.correlation_id,
            &self.reply_to,
            &self.expiration,
            &self.message_id,
        ];
        for s in strs.into_iter().flatten() {
            put_shortstr(dst, s);
        }
        if let Some(t) = self.timestamp {
            dst.put_u64(t);
        }
        let strs = [&self.kind, &self.user_id, &self.app_id, &self.cluster_id];
        for s in strs.into_iter().flatten() {
            put_shortstr(dst, s);
        }
    }
}

impl Properties {
    /// Decodes every property (strings are slices of the raw bytes; the
    /// headers table allocates).
    pub fn decode(&self) -> Result<BasicProperties, WireError> {
        let (mut c, flags) = self.start()?;
        let str_at = |c: &mut Cursor, i: usize| -> Result<Option<ShortStr>, WireError> {
            if flags & flag(i) != 0 {
                c.shortstr().map(Some)
            } else {
                Ok(None)
            }
        };
        let content_type = str_at(&mut c, 0)?;
        let content_encoding = str_at(&mut c, 1)?;
        let headers = if flags & flag(2) != 0 {
            Some(c.table()?)
        } else {
            None
        };
        let delivery_mode = if flags & flag(3) != 0 {
            Some(c.octet()?)
        } else {
            None
        };
        let priority = if flags & flag(4) != 0 {
            Some(c.octet()?)
        } else {
            None
        };
        let correlation_id = str_at(&mut c, 5)?;
        let reply_to = str_at(&mut c, 6)?;
        let expiration = str_at(&mut c, 7)?;
        let message_id = str_at(&mut c, 8)?;
        let timestamp = if flags & flag(9) != 0 {
            Some(c.timestamp()?)
        } else {
            None
        };
        let kind = str_at(&mut c, 10)?;
        let user_id = str_at(&mut c, 11)?;
        let app_id = str_at(&mut c, 12)?;
        let cluster_id = str_at(&mut c, 13)?;
        c.finish()?;
        Ok(BasicProperties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        })
    }
}

impl From<BasicProperties> for Properties {
    fn from(p: BasicProperties) -> Properties {
        p.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{field_table, short_str, ss, ss_from, table_from_oracle, table_to_oracle};
    use amq_protocol::frame::WriteContext;
    use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
    use bytes::Bytes;
    use proptest::option::of;
    use proptest::prelude::*;

    fn basic_properties() -> impl Strategy<Value = BasicProperties> {
        let a = (
            of(short_str()),
            of(short_str()),
            of(field_table()),
            of(any::<u8>()),
            of(any::<u8>()),
        );
        let b = (
            of(short_str()),
            of(short_str()),
            of(short_str()),
            of(short_str()),
            of(any::<u64>()),
        );
        let c = (
            of(short_str()),
            of(short_str()),
            of(short_str()),
            of(short_str()),
        );
        (a, b, c).prop_map(
            |((ct, ce, h, dm, p), (ci, rt, ex, mi, ts), (k, ui, ai, cl))| BasicProperties {
                content_type: ct,
                content_encoding: ce,
                headers: h,
                delivery_mode: dm,
                priority: p,
                correlation_id: ci,
                reply_to: rt,
                expiration: ex,
                message_id: mi,
                timestamp: ts,
                kind: k,
                user_id: ui,
                app_id: ai,
                cluster_id: cl,
            },
        )
    }

    fn to_oracle(p: &BasicProperties) -> AMQPProperties {
        let mut o = AMQPProperties::default();
        macro_rules! set {
            ($field:ident, $with:ident, $conv:expr) => {
                if let Some(v) = &p.$field {
                    o = o.$with($conv(v));
                }
            };
        }
        set!(content_type, with_content_type, ss);
        set!(content_encoding, with_content_encoding, ss);
        set!(headers, with_headers, table_to_oracle);
        set!(delivery_mode, with_delivery_mode, |v: &u8| *v);
        set!(priority, with_priority, |v: &u8| *v);
        set!(correlation_id, with_correlation_id, ss);
        set!(reply_to, with_reply_to, ss);
        set!(expiration, with_expiration, ss);
        set!(message_id, with_message_id, ss);
        set!(timestamp, with_timestamp, |v: &u64| *v);
        set!(kind, with_type, ss);
        set!(user_id, with_user_id, ss);
        set!(app_id, with_app_id, ss);
        set!(cluster_id, with_cluster_id, ss);
        o
    }

    fn from_oracle(o: &AMQPProperties) -> BasicProperties {
        BasicProperties {
            content_type: o.content_type().as_ref().map(ss_from),
            content_encoding: o.content_encoding().as_ref().map(ss_from),
            headers: o.headers().as_ref().map(table_from_oracle),
            delivery_mode: *o.delivery_mode(),
            priority: *o.priority(),
            correlation_id: o.correlation_id().as_ref().map(ss_from),
            reply_to: o.reply_to().as_ref().map(ss_from),
            expiration: o.expiration().as_ref().map(ss_from),
            message_id: o.message_id().as_ref().map(ss_from),
            timestamp: *o.timestamp(),
            kind: o.kind().as_ref().map(ss_from),
            user_id: o.user_id().as_ref().map(ss_from),
            app_id: o.app_id().as_ref().map(ss_from),
            cluster_id: o.cluster_id().as_ref().map(ss_from),
        }
    }

    #[test]
    fn flags_put_the_first_property_in_the_top_bit() {
        let p = BasicProperties {
            content_type: Some("a".into()),
            ..Default::default()
        }
        .encode();
        assert_eq!(p.as_bytes(), &[0x80, 0x00, 1, b'a']);
        let p = BasicProperties {
            cluster_id: Some("a".into()),
            ..Default::default()
        }
        .encode();
        assert_eq!(p.as_bytes(), &[0x00, 0x04, 1, b'a']);
    }

    proptest! {
        #[test]
        fn basic_properties_round_trip_through_raw_bytes(p in basic_properties()) {
            let raw = p.encode();
            prop_assert!(raw.validate().is_ok());
            prop_assert_eq!(raw.decode().unwrap(), p.clone());
            prop_assert_eq!(raw.content_type(), p.content_type.clone());
            prop_assert_eq!(raw.headers(), p.headers.clone());
            prop_assert_eq!(raw.timestamp(), p.timestamp);
            prop_assert_eq!(raw.cluster_id(), p.cluster_id.clone());
        }

        #[test]
        fn amq_protocol_parses_our_properties(p in basic_properties()) {
            let raw = p.encode();
            let (rest, parsed) = parse_properties(raw.as_bytes()).unwrap();
            prop_assert!(rest.is_empty());
            prop_assert_eq!(parsed, to_oracle(&p));
        }

        #[test]
        fn we_decode_amq_protocol_properties(p in basic_properties()) {
            let theirs = to_oracle(&p);
            let ctx = gen_properties(&theirs)(WriteContext::from(Vec::new())).unwrap();
            let raw = Properties::from_bytes(Bytes::from(ctx.write));
            prop_assert!(raw.validate().is_ok());
            let decoded = raw.decode().unwrap();
            prop_assert_eq!(&decoded, &from_oracle(&theirs));
            prop_assert_eq!(to_oracle(&decoded), theirs);
        }
    }
}
