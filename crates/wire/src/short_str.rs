//! `ShortStr`: the AMQP shortstr, a UTF-8 string of at most 255 bytes.
//!
//! ```text
//! +--------+---------------------+
//! | len u8 | len bytes of UTF-8  |
//! +--------+---------------------+
//! ```
//!
//! Backed by `Bytes` so a decoded exchange name or routing key is a slice of
//! the frame it arrived in: cloning it bumps a reference count, never copies.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;

/// The longest shortstr the length octet can express.
pub const SHORT_STR_LEN_MAX_BYTES: usize = u8::MAX as usize;

/// Why bytes are not a valid shortstr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShortStrError {
    #[error("shortstr longer than 255 bytes ({0})")]
    TooLong(usize),
    #[error("malformed UTF-8 in shortstr")]
    InvalidUtf8,
}

/// A cheaply clonable UTF-8 string of at most 255 bytes.
///
/// Invariant: the bytes are valid UTF-8 and at most [`SHORT_STR_LEN_MAX_BYTES`] long;
/// every constructor checks it, so `as_str` never re-validates.
#[derive(Clone, Default)]
pub struct ShortStr(Bytes);

impl ShortStr {
    /// Wraps a static string without copying. Panics (at compile time in a
    /// `const`) if it is longer than 255 bytes.
    pub const fn from_static(s: &'static str) -> ShortStr {
        assert!(
            s.len() <= SHORT_STR_LEN_MAX_BYTES,
            "shortstr longer than 255 bytes"
        );
        ShortStr(Bytes::from_static(s.as_bytes()))
    }

    /// Validates `bytes` (length and UTF-8) and wraps them without copying.
    pub fn from_utf8(bytes: Bytes) -> Result<ShortStr, ShortStrError> {
        if bytes.len() > SHORT_STR_LEN_MAX_BYTES {
            return Err(ShortStrError::TooLong(bytes.len()));
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err(ShortStrError::InvalidUtf8);
        }
        Ok(ShortStr(bytes))
    }

    /// Copies `s` if it fits in a shortstr; use for untrusted input such as a
    /// longstr header value that is about to become a routing key.
    pub fn try_from_str(s: &str) -> Result<ShortStr, ShortStrError> {
        if s.len() > SHORT_STR_LEN_MAX_BYTES {
            return Err(ShortStrError::TooLong(s.len()));
        }
        Ok(ShortStr(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// A copy in an allocation of its own. A decoded shortstr is a slice of the frame it
    /// came in, which keeps the whole read buffer alive: anything kept for long (queue and
    /// exchange names, binding keys, consumer tags) is detached first.
    pub fn detached(&self) -> ShortStr {
        ShortStr(Bytes::copy_from_slice(&self.0))
    }

    pub fn as_str(&self) -> &str {
        // Validating again on every call cost ~125 instructions per call, about 5% of
        // the broker's per-message instructions (callgrind): names and consumer tags are
        // read, hashed and compared several times per message.
        // SAFETY: every constructor checks UTF-8 (see the type's invariant), the field is
        // private, and `Bytes` is immutable.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for ShortStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for ShortStr {
    /// Copies. (A blanket `From<&'static str>` would conflict with this; use
    /// [`ShortStr::from_static`] for zero-copy literals.) Panics if longer
    /// than 255 bytes; use [`ShortStr::try_from_str`] for peer-controlled text.
    fn from(s: &str) -> ShortStr {
        assert!(
            s.len() <= SHORT_STR_LEN_MAX_BYTES,
            "shortstr longer than 255 bytes"
        );
        ShortStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for ShortStr {
    /// Panics if longer than 255 bytes; use [`ShortStr::try_from_str`] for
    /// strings a peer controls.
    fn from(s: String) -> ShortStr {
        assert!(
            s.len() <= SHORT_STR_LEN_MAX_BYTES,
            "shortstr longer than 255 bytes"
        );
        ShortStr(Bytes::from(s))
    }
}

impl From<&String> for ShortStr {
    fn from(s: &String) -> ShortStr {
        ShortStr::from(s.clone())
    }
}

impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_str(), f)
    }
}

impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq for ShortStr {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for ShortStr {}

impl PartialEq<str> for ShortStr {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for ShortStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Hash for ShortStr {
    /// Hashes like `str` so `HashMap<ShortStr, _>::get(&str)` works (Borrow contract).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialOrd for ShortStr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortStr {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn decoded_bytes_are_shared_not_copied() {
        let frame = Bytes::from_static(b"xxamq.topicyy");
        let name = ShortStr::from_utf8(frame.slice(2..11)).unwrap();
        assert_eq!(name, "amq.topic");
        assert_eq!(name.as_bytes().as_ptr(), frame[2..].as_ptr());
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let bad = Bytes::from_static(&[0x66, 0xff, 0x6f]);
        assert_eq!(ShortStr::from_utf8(bad), Err(ShortStrError::InvalidUtf8));
    }

    #[test]
    fn over_255_bytes_is_rejected() {
        let long = "a".repeat(256);
        assert_eq!(
            ShortStr::try_from_str(&long),
            Err(ShortStrError::TooLong(256))
        );
        assert_eq!(
            ShortStr::from_utf8(Bytes::from(long)),
            Err(ShortStrError::TooLong(256))
        );
        assert!(ShortStr::try_from_str(&"a".repeat(255)).is_ok());
    }

    #[test]
    #[should_panic(expected = "longer than 255")]
    fn from_long_string_panics() {
        let _ = ShortStr::from("a".repeat(256));
    }

    #[test]
    fn hashes_and_orders_like_str() {
        let mut map = HashMap::new();
        map.insert(ShortStr::from("q1".to_string()), 1);
        assert_eq!(map.get("q1"), Some(&1));
        assert!(ShortStr::from_static("a") < ShortStr::from_static("b"));
        assert_eq!(format!("{:?}", ShortStr::from_static("q")), "\"q\"");
        assert_eq!(ShortStr::from_static("q").to_string(), "q");
        assert!(ShortStr::default().is_empty());
    }
}
