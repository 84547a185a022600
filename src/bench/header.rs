//! The 16-byte header at the start of every benchmark payload, little-endian:
//!
//! | bytes  | field                                                             |
//! |--------|-------------------------------------------------------------------|
//! | 0..8   | intended send time, nanoseconds since the run's start `Instant`   |
//! | 8..12  | counter: the message's index in its (topic, publisher) stream     |
//! | 12..14 | publisher index                                                   |
//! | 14..16 | topic index                                                       |
//!
//! The rest of the payload is filler. The header is 16 bytes so that the smallest
//! benchmark payload, 16 bytes, still identifies every message.

/// Header size in bytes, and so the smallest payload the generator sends.
pub const HEADER_LEN: usize = 16;

/// The fields of one benchmark message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// When the message was meant to be sent, in nanoseconds since the run's start.
    pub intended_ns: u64,
    /// Index of the message in its (topic, publisher) stream, from 0.
    pub counter: u32,
    pub publisher: u16,
    pub topic: u16,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `payload`.
    ///
    /// Panics if `payload` is shorter than the header; callers size payloads first.
    pub fn write(&self, payload: &mut [u8]) {
        payload[0..8].copy_from_slice(&self.intended_ns.to_le_bytes());
        payload[8..12].copy_from_slice(&self.counter.to_le_bytes());
        payload[12..14].copy_from_slice(&self.publisher.to_le_bytes());
        payload[14..16].copy_from_slice(&self.topic.to_le_bytes());
    }

    /// Reads the header from the start of `payload`; `None` when it is too short.
    pub fn read(payload: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            intended_ns: u64::from_le_bytes(bytes[0..8].try_into().ok()?),
            counter: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            publisher: u16::from_le_bytes(bytes[12..14].try_into().ok()?),
            topic: u16::from_le_bytes(bytes[14..16].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = Header {
            intended_ns: 0x0102_0304_0506_0708,
            counter: 77,
            publisher: 3,
            topic: 65535,
        };
        let mut payload = vec![b'x'; 20];
        header.write(&mut payload);
        assert_eq!(Header::read(&payload), Some(header));
        assert_eq!(&payload[16..], b"xxxx", "filler after the header changed");
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(Header::read(&[0u8; 15]), None);
    }
}
