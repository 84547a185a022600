//! Topic names and the topic-to-shard mapping.
//!
//! This is the one place that decides which shard owns a topic. Every front end and, in
//! time, every node routes with [`shard_for`], so the hash below must stay fixed: changing
//! it moves topics between shards.

use bytes::Bytes;
use std::fmt;

/// The maximum length of a topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// A validated topic name: 1 to 255 bytes of UTF-8 with no whitespace or control
/// characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicName(Bytes);

/// A rejected topic name and the reason it was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTopic {
    /// The name as received, lossily decoded for display.
    pub name: String,
    /// The rule the name breaks.
    pub reason: &'static str,
}

impl fmt::Display for InvalidTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "topic name {:?} is invalid: {}", self.name, self.reason)
    }
}

impl std::error::Error for InvalidTopic {}

impl TopicName {
    /// Validates `raw` as a topic name without copying it.
    pub fn new(raw: Bytes) -> Result<Self, InvalidTopic> {
        let reject = |reason| InvalidTopic {
            name: String::from_utf8_lossy(&raw[..raw.len().min(300)]).into_owned(),
            reason,
        };
        if raw.is_empty() {
            return Err(reject("it is empty"));
        }
        if raw.len() > MAX_TOPIC_LEN {
            return Err(reject("it is longer than 255 bytes"));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| reject("it is not valid UTF-8"))?;
        if text.chars().any(char::is_whitespace) {
            return Err(reject("whitespace is not allowed"));
        }
        if text.chars().any(char::is_control) {
            return Err(reject("control characters are not allowed"));
        }
        Ok(TopicName(raw))
    }

    /// Returns the name as text.
    pub fn as_str(&self) -> &str {
        // Construction through `new` checked that the bytes are UTF-8, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Returns the name's bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl TryFrom<&str> for TopicName {
    type Error = InvalidTopic;

    fn try_from(name: &str) -> Result<Self, InvalidTopic> {
        TopicName::new(Bytes::copy_from_slice(name.as_bytes()))
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returns the 64-bit FNV-1a hash of `bytes`.
///
/// FNV-1a (offset basis 0xcbf29ce484222325, prime 0x100000001b3) is fixed by its
/// specification, so a topic hashes the same on every run, build and machine.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Returns the shard, in `0..shards`, that owns `topic`: `fnv1a64(topic) % shards`.
pub fn shard_for(topic: &[u8], shards: usize) -> usize {
    debug_assert!(shards > 0);
    (fnv1a64(topic) % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 64-bit test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shard_for_is_in_range_and_spreads() {
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            let shard = shard_for(format!("topic-{i}").as_bytes(), 4);
            seen[shard] += 1;
        }
        for count in seen {
            assert!(count > 150, "uneven spread: {seen:?}");
        }
    }

    #[test]
    fn valid_names_pass() {
        for name in ["a", "orders.eu-1", "ünïcode/ok", &"x".repeat(255)] {
            assert!(TopicName::try_from(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names_are_rejected() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "it is empty"),
            (&[b'x'; 256], "it is longer than 255 bytes"),
            (b"a b", "whitespace is not allowed"),
            (b"a\tb", "whitespace is not allowed"),
            (b"a\x07b", "control characters are not allowed"),
            (b"\xff", "it is not valid UTF-8"),
        ];
        for (raw, reason) in cases {
            let err = TopicName::new(Bytes::copy_from_slice(raw)).unwrap_err();
            assert_eq!(err.reason, reason, "{raw:?}");
        }
    }
}
