//! RESP2 PUBLISH and SUBSCRIBE, as served by redis-server (at-most-once pub/sub).
//!
//! A subscriber receives pushes as 3-element arrays: `subscribe CHANNEL COUNT` to confirm
//! each channel and `message CHANNEL PAYLOAD` for each message. A publisher gets one
//! integer reply per PUBLISH, the number of subscribers reached; a drain thread reads and
//! drops those.

use super::nats::{find_crlf, parse_size, push_decimal};
use super::{
    BatchedWriter, Notices, Publisher, ReadBuffer, Subscriber, closed_error, is_timeout, open,
    protocol_error, read_until, spawn_drain,
};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// The largest array the parser takes; pub/sub pushes have 3 (or 4 for pattern
/// messages) elements.
const MAX_ARRAY: usize = 4;

/// One RESP value other than an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    /// A bulk string; `None` is the null bulk string.
    Bulk(Option<&'a [u8]>),
}

/// One RESP value as the parser returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Scalar(Scalar<'a>),
    /// An array of up to [`MAX_ARRAY`] scalars; `len` of them are set.
    Array {
        items: [Scalar<'a>; MAX_ARRAY],
        len: usize,
    },
}

/// Parses the value at the front of `buf`. Returns `Ok(None)` when it is incomplete, else
/// the value and the bytes it took. Nested arrays and arrays longer than [`MAX_ARRAY`]
/// are rejected.
pub fn parse(buf: &[u8]) -> Result<Option<(Value<'_>, usize)>, String> {
    if buf.first() != Some(&b'*') {
        return Ok(parse_scalar(buf)?.map(|(scalar, used)| (Value::Scalar(scalar), used)));
    }
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let len = parse_size(&buf[1..line_end]).ok_or_else(|| {
        format!(
            "invalid array length {:?}",
            String::from_utf8_lossy(&buf[..line_end])
        )
    })?;
    if len > MAX_ARRAY {
        return Err(format!(
            "array of {len} elements; at most {MAX_ARRAY} are expected"
        ));
    }
    let mut items = [Scalar::Bulk(None); MAX_ARRAY];
    let mut used = line_end + 2;
    for item in items.iter_mut().take(len) {
        if buf.get(used) == Some(&b'*') {
            return Err("nested arrays are not expected".into());
        }
        let Some((scalar, size)) = parse_scalar(&buf[used..])? else {
            return Ok(None);
        };
        *item = scalar;
        used += size;
    }
    Ok(Some((Value::Array { items, len }, used)))
}

fn parse_scalar(buf: &[u8]) -> Result<Option<(Scalar<'_>, usize)>, String> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let line = &buf[1..line_end];
    let after_line = line_end + 2;
    let scalar = match kind {
        b'+' => Scalar::Simple(line),
        b'-' => Scalar::Error(line),
        b':' => {
            let text = std::str::from_utf8(line).map_err(|_| "integer reply is not ASCII")?;
            Scalar::Integer(
                text.parse()
                    .map_err(|_| format!("invalid integer reply {text:?}"))?,
            )
        }
        b'$' if line == b"-1" => Scalar::Bulk(None),
        b'$' => {
            let size = parse_size(line).ok_or_else(|| {
                format!("invalid bulk length {:?}", String::from_utf8_lossy(line))
            })?;
            let end = after_line + size;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string is not followed by CRLF".into());
            }
            return Ok(Some((Scalar::Bulk(Some(&buf[after_line..end])), end + 2)));
        }
        other => return Err(format!("unknown RESP type byte 0x{other:02x}")),
    };
    Ok(Some((scalar, after_line)))
}

/// Appends a command as an array of bulk strings.
pub fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    push_decimal(out, parts.len() as u64);
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.push(b'$');
        push_decimal(out, part.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// A redis-server publisher.
pub struct RedisPublisher {
    writer: BatchedWriter,
}

impl RedisPublisher {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = open(addr)?;
        let mut logged = false;
        spawn_drain(&stream, "redis", move |chunk| {
            // Replies are integers (`:N`), so a line that starts with `-` is an error.
            let error = chunk.first() == Some(&b'-') || chunk.windows(2).any(|w| w == b"\n-");
            if !logged && error {
                logged = true;
                tracing::warn!(reply = %String::from_utf8_lossy(chunk).trim(), "redis-server sent an error to a publisher");
            }
        })?;
        Ok(RedisPublisher {
            writer: BatchedWriter::new(stream),
        })
    }
}

impl Publisher for RedisPublisher {
    fn queue(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.writer
            .queue(|output| encode_command(output, &[b"PUBLISH", topic.as_bytes(), payload]))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// A redis-server subscriber.
pub struct RedisSubscriber {
    stream: TcpStream,
    input: ReadBuffer,
    notices: Notices,
}

impl RedisSubscriber {
    /// Sends one SUBSCRIBE for every channel and waits for each confirmation.
    pub fn connect(addr: SocketAddr, topics: &[String]) -> io::Result<Self> {
        let mut stream = open(addr)?;
        let mut command = Vec::new();
        let mut parts: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        parts.extend(topics.iter().map(|topic| topic.as_bytes()));
        encode_command(&mut command, &parts);
        stream.write_all(&command)?;

        let mut input = ReadBuffer::default();
        let mut confirmed = 0;
        read_until(
            &mut stream,
            &mut input,
            "SUBSCRIBE confirmations",
            |bytes| match parse(bytes).map_err(protocol_error)? {
                None => Ok((0, None)),
                Some((Value::Array { items, len: 3 }, used))
                    if items[0] == Scalar::Bulk(Some(b"subscribe")) =>
                {
                    confirmed += 1;
                    Ok((used, (confirmed == topics.len()).then_some(())))
                }
                Some((Value::Scalar(Scalar::Error(text)), _)) => Err(io::Error::other(format!(
                    "redis-server rejected SUBSCRIBE: {}",
                    String::from_utf8_lossy(text)
                ))),
                Some((other, _)) => Err(protocol_error(format!(
                    "expected a subscribe confirmation from redis-server, got {other:?}"
                ))),
            },
        )?;
        Ok(RedisSubscriber {
            stream,
            input,
            notices: Notices::default(),
        })
    }
}

impl Subscriber for RedisSubscriber {
    fn poll(&mut self, on_message: &mut dyn FnMut(&[u8], Instant)) -> io::Result<usize> {
        match self.input.read_from(&mut self.stream) {
            Ok(0) => return Err(closed_error("redis subscriber")),
            Ok(_) => {}
            Err(err) if is_timeout(&err) => return Ok(0),
            Err(err) => return Err(err),
        }
        let at = Instant::now();
        let mut count = 0;
        while let Some((value, used)) = parse(self.input.filled()).map_err(protocol_error)? {
            match value {
                Value::Array { items, len: 3 } if items[0] == Scalar::Bulk(Some(b"message")) => {
                    if let Scalar::Bulk(Some(payload)) = items[2] {
                        on_message(payload, at);
                        count += 1;
                    }
                }
                Value::Scalar(Scalar::Error(text)) => {
                    self.notices.errors += 1;
                    tracing::warn!(reply = %String::from_utf8_lossy(text), "redis-server sent an error to a subscriber");
                }
                _ => {}
            }
            self.input.consume(used);
        }
        Ok(count)
    }

    fn notices(&self) -> Notices {
        self.notices
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_encodes_as_bulk_array() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn message_push_parses() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n:1\r\n";
        let (value, used) = parse(wire).unwrap().unwrap();
        let Value::Array { items, len } = value else {
            panic!("expected an array, got {value:?}");
        };
        assert_eq!(len, 3);
        assert_eq!(items[0], Scalar::Bulk(Some(b"message")));
        assert_eq!(items[1], Scalar::Bulk(Some(b"ch")));
        assert_eq!(items[2], Scalar::Bulk(Some(b"a\r\nb")));
        assert_eq!(used, wire.len() - 4);
        let (value, _) = parse(&wire[used..]).unwrap().unwrap();
        assert_eq!(value, Value::Scalar(Scalar::Integer(1)));
    }

    #[test]
    fn subscribe_confirmation_parses() {
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nx\r\n:2\r\n";
        let (value, used) = parse(wire).unwrap().unwrap();
        assert_eq!(used, wire.len());
        let Value::Array { items, len } = value else {
            panic!("expected an array, got {value:?}");
        };
        assert_eq!(len, 3);
        assert_eq!(items[2], Scalar::Integer(2));
    }

    #[test]
    fn partial_values_wait() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\nabcd\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn scalars_parse() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap().unwrap().0,
            Value::Scalar(Scalar::Simple(b"OK"))
        );
        assert_eq!(
            parse(b"-ERR wrong\r\n").unwrap().unwrap().0,
            Value::Scalar(Scalar::Error(b"ERR wrong"))
        );
        assert_eq!(
            parse(b":-5\r\n").unwrap().unwrap().0,
            Value::Scalar(Scalar::Integer(-5))
        );
        assert_eq!(
            parse(b"$-1\r\n").unwrap().unwrap().0,
            Value::Scalar(Scalar::Bulk(None))
        );
    }

    #[test]
    fn unexpected_shapes_are_rejected() {
        assert!(parse(b"*9\r\n").is_err());
        assert!(parse(b"*2\r\n*1\r\n").is_err());
        assert!(parse(b"?\r\n").is_err());
        assert!(parse(b"$2\r\nabXY").is_err());
        assert!(parse(b":x\r\n").is_err());
    }
}
