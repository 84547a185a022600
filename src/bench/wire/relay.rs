//! Client side of the relay protocol of `pubsub bench relay-server`.
//!
//! A connection's first byte names its role: `P` (publisher) or `S` (subscriber). The
//! relay replies to a subscriber with `K` once it is registered. A publisher then sends
//! frames `len: u32 LE, topic_len: u8, topic, payload`, where `len` counts the bytes after
//! the length field, and the relay copies every whole frame to every subscriber.

use super::{
    BatchedWriter, Notices, Publisher, ReadBuffer, Subscriber, closed_error, is_timeout, open,
    protocol_error, read_until,
};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// The role byte of a publisher connection.
pub const ROLE_PUBLISHER: u8 = b'P';
/// The role byte of a subscriber connection.
pub const ROLE_SUBSCRIBER: u8 = b'S';
/// The relay's reply once a subscriber is registered.
pub const SUBSCRIBED: u8 = b'K';
/// The largest frame the relay and its clients accept, in bytes after the length field.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Appends one relay frame. `topic` must be at most 255 bytes.
pub fn encode_frame(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    let topic = &topic.as_bytes()[..topic.len().min(255)];
    let len = 1 + topic.len() + payload.len();
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(topic.len() as u8);
    out.extend_from_slice(topic);
    out.extend_from_slice(payload);
}

/// Returns the length of the longest prefix of `buf` made of whole frames, or an error
/// when a frame declares more than [`MAX_FRAME`] bytes.
pub fn whole_frames_len(buf: &[u8]) -> Result<usize, String> {
    let mut pos = 0;
    while let Some(prefix) = buf.get(pos..pos + 4) {
        let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "relay frame declares {len} bytes, above {MAX_FRAME}"
            ));
        }
        if pos + 4 + len > buf.len() {
            break;
        }
        pos += 4 + len;
    }
    Ok(pos)
}

/// One relay frame: its topic, its payload and the bytes it takes on the wire.
type ParsedFrame<'a> = (&'a [u8], &'a [u8], usize);

/// Splits the frame at the front of `buf` into its topic and payload; `Ok(None)` when it
/// is incomplete.
pub fn parse_frame(buf: &[u8]) -> Result<Option<ParsedFrame<'_>>, String> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(format!(
            "relay frame declares {len} bytes; expected 1 to {MAX_FRAME}"
        ));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let topic_len = body[0] as usize;
    if 1 + topic_len > body.len() {
        return Err("relay frame topic is longer than the frame".into());
    }
    Ok(Some((
        &body[1..1 + topic_len],
        &body[1 + topic_len..],
        4 + len,
    )))
}

/// A relay publisher.
pub struct RelayPublisher {
    writer: BatchedWriter,
}

impl RelayPublisher {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let mut stream = open(addr)?;
        stream.write_all(&[ROLE_PUBLISHER])?;
        Ok(RelayPublisher {
            writer: BatchedWriter::new(stream),
        })
    }
}

impl Publisher for RelayPublisher {
    fn queue(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.writer
            .queue(|output| encode_frame(output, topic, payload))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// A relay subscriber; it receives every publisher's frames, whatever their topic.
pub struct RelaySubscriber {
    stream: TcpStream,
    input: ReadBuffer,
}

impl RelaySubscriber {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let mut stream = open(addr)?;
        stream.write_all(&[ROLE_SUBSCRIBER])?;
        let mut input = ReadBuffer::default();
        read_until(
            &mut stream,
            &mut input,
            "the relay's confirmation",
            |bytes| match bytes.first() {
                None => Ok((0, None)),
                Some(&SUBSCRIBED) => Ok((1, Some(()))),
                Some(other) => Err(protocol_error(format!(
                    "expected the relay's confirmation byte 'K', got 0x{other:02x}"
                ))),
            },
        )?;
        Ok(RelaySubscriber { stream, input })
    }
}

impl Subscriber for RelaySubscriber {
    fn poll(&mut self, on_message: &mut dyn FnMut(&[u8], Instant)) -> io::Result<usize> {
        match self.input.read_from(&mut self.stream) {
            Ok(0) => return Err(closed_error("relay subscriber")),
            Ok(_) => {}
            Err(err) if is_timeout(&err) => return Ok(0),
            Err(err) => return Err(err),
        }
        let at = Instant::now();
        let mut count = 0;
        while let Some((_topic, payload, used)) =
            parse_frame(self.input.filled()).map_err(protocol_error)?
        {
            on_message(payload, at);
            count += 1;
            self.input.consume(used);
        }
        Ok(count)
    }

    fn notices(&self) -> Notices {
        Notices::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, "t.1", b"payload");
        encode_frame(&mut wire, "t.2", b"");
        let (topic, payload, used) = parse_frame(&wire).unwrap().unwrap();
        assert_eq!(topic, b"t.1");
        assert_eq!(payload, b"payload");
        let (topic, payload, rest) = parse_frame(&wire[used..]).unwrap().unwrap();
        assert_eq!(topic, b"t.2");
        assert_eq!(payload, b"");
        assert_eq!(used + rest, wire.len());
    }

    #[test]
    fn whole_frames_stop_before_partial_one() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, "a", b"1234");
        let first = wire.len();
        encode_frame(&mut wire, "a", b"5678");
        for cut in 0..wire.len() {
            let expected = if cut < first {
                0
            } else if cut < wire.len() {
                first
            } else {
                wire.len()
            };
            assert_eq!(
                whole_frames_len(&wire[..cut]).unwrap(),
                expected,
                "cut at {cut}"
            );
        }
        assert_eq!(whole_frames_len(&wire).unwrap(), wire.len());
    }

    #[test]
    fn oversized_and_empty_frames_are_rejected() {
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(whole_frames_len(&huge).is_err());
        assert!(parse_frame(&huge).is_err());
        assert!(parse_frame(&[0, 0, 0, 0]).is_err());
        assert!(parse_frame(&[2, 0, 0, 0, 5, b'x']).is_err());
    }
}
