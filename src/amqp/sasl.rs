//! SASL responses of connection.start-ok.
//!
//! ```text
//! PLAIN:    [authzid] NUL authcid NUL password          (RFC 4616)
//! AMQPLAIN: a field table without its length prefix: LOGIN → longstr, PASSWORD → longstr
//! ```

use bytes::Bytes;
use ferrymq_wire::{FieldTable, FieldValue};

pub const MECHANISMS: &str = "PLAIN AMQPLAIN";

#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Vec<u8>,
}

/// Returns `None` for an unknown mechanism or a malformed response.
pub fn parse(mechanism: &str, response: &[u8]) -> Option<Credentials> {
    match mechanism {
        "PLAIN" => parse_plain(response),
        "AMQPLAIN" => parse_amqplain(response),
        _ => None,
    }
}

fn parse_plain(response: &[u8]) -> Option<Credentials> {
    let mut parts = response.split(|&b| b == 0);
    let (_authzid, username, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(Credentials {
        username: String::from_utf8(username.to_vec()).ok()?,
        password: password.to_vec(),
    })
}

fn parse_amqplain(response: &[u8]) -> Option<Credentials> {
    let table = FieldTable::decode(Bytes::copy_from_slice(response)).ok()?;
    let username = table.get("LOGIN")?.as_str()?.to_string();
    let password = match table.get("PASSWORD")? {
        FieldValue::LongStr(b) => b.to_vec(),
        _ => return None,
    };
    Some(Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_response_splits_on_nul() {
        let creds = parse("PLAIN", b"\0guest\0secret").unwrap();
        assert_eq!(
            creds,
            Credentials {
                username: "guest".into(),
                password: b"secret".to_vec()
            }
        );
        assert!(parse("PLAIN", b"guest").is_none());
        assert!(parse("PLAIN", b"\0a\0b\0c").is_none());
    }

    #[test]
    fn unknown_mechanism_is_refused() {
        assert!(parse("EXTERNAL", b"").is_none());
    }
}
