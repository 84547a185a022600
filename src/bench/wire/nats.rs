//! Core NATS text protocol (at-most-once), the subset a publisher and a subscriber need:
//! INFO, CONNECT, PUB, SUB, MSG, PING, PONG, +OK and -ERR. Control lines end in CRLF;
//! PUB and MSG name the payload size, and the payload is followed by CRLF.

use super::{
    BatchedWriter, Notices, Publisher, ReadBuffer, Subscriber, closed_error, is_timeout, open,
    protocol_error, read_until, spawn_drain,
};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// CONNECT options: no +OK per command, no echo of a connection's own publishes.
const CONNECT: &[u8] =
    b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"name\":\"pubsub-bench\"}\r\n";

/// One operation sent by a NATS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp<'a> {
    Info(&'a [u8]),
    Msg {
        subject: &'a [u8],
        sid: &'a [u8],
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// Parses the operation at the front of `buf`. Returns `Ok(None)` when it is incomplete,
/// else the operation and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(ServerOp<'_>, usize)>, String> {
    let Some(line_end) = find_crlf(buf) else {
        return Ok(None);
    };
    let line = &buf[..line_end];
    let after_line = line_end + 2;
    let (verb, rest) = match line.iter().position(|&b| b == b' ' || b == b'\t') {
        Some(space) => (&line[..space], trim(&line[space + 1..])),
        None => (line, &line[line.len()..]),
    };
    let op = if verb.eq_ignore_ascii_case(b"MSG") {
        let args: Vec<&[u8]> = rest
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|arg| !arg.is_empty())
            .collect();
        if args.len() != 3 && args.len() != 4 {
            return Err(format!(
                "MSG needs 3 or 4 arguments, got {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        let size = parse_size(args[args.len() - 1]).ok_or_else(|| {
            format!(
                "MSG has an invalid size: {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        let payload_end = after_line + size;
        if buf.len() < payload_end + 2 {
            return Ok(None);
        }
        if &buf[payload_end..payload_end + 2] != b"\r\n" {
            return Err("MSG payload is not followed by CRLF".into());
        }
        return Ok(Some((
            ServerOp::Msg {
                subject: args[0],
                sid: args[1],
                payload: &buf[after_line..payload_end],
            },
            payload_end + 2,
        )));
    } else if verb.eq_ignore_ascii_case(b"PING") {
        ServerOp::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        ServerOp::Pong
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        ServerOp::Ok
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        ServerOp::Err(rest)
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        ServerOp::Info(rest)
    } else {
        return Err(format!(
            "unknown NATS operation {:?}",
            String::from_utf8_lossy(verb)
        ));
    };
    Ok(Some((op, after_line)))
}

/// Appends `PUB subject size\r\npayload\r\n`.
pub fn encode_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    push_decimal(out, payload.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends `SUB subject sid\r\n`.
pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: usize) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    push_decimal(out, sid as u64);
    out.extend_from_slice(b"\r\n");
}

pub(super) fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20];
    let mut rest = value;
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

pub(super) fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|pair| pair == b"\r\n")
}

pub(super) fn parse_size(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 12 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Reads INFO, sends CONNECT, the commands in `extra` and a PING, and waits for the
/// PONG, which confirms that the server has handled everything before it.
fn handshake(stream: &mut TcpStream, input: &mut ReadBuffer, extra: &[u8]) -> io::Result<()> {
    read_until(stream, input, "the NATS INFO line", |bytes| {
        match parse(bytes) {
            Ok(Some((ServerOp::Info(_), used))) => Ok((used, Some(()))),
            Ok(Some((op, _))) => Err(protocol_error(format!(
                "expected INFO from the NATS server, got {op:?}"
            ))),
            Ok(None) => Ok((0, None)),
            Err(message) => Err(protocol_error(message)),
        }
    })?;
    let mut hello = CONNECT.to_vec();
    hello.extend_from_slice(extra);
    hello.extend_from_slice(b"PING\r\n");
    stream.write_all(&hello)?;
    read_until(stream, input, "the NATS PONG", |bytes| match parse(bytes) {
        Ok(Some((ServerOp::Pong, used))) => Ok((used, Some(()))),
        Ok(Some((ServerOp::Err(text), _))) => Err(io::Error::other(format!(
            "the NATS server returned an error: {}",
            String::from_utf8_lossy(text)
        ))),
        Ok(Some((_, used))) => Ok((used, None)),
        Ok(None) => Ok((0, None)),
        Err(message) => Err(protocol_error(message)),
    })
}

/// A core NATS publisher.
pub struct NatsPublisher {
    writer: BatchedWriter,
}

impl NatsPublisher {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let mut stream = open(addr)?;
        handshake(&mut stream, &mut ReadBuffer::default(), b"")?;
        let mut logged = false;
        spawn_drain(&stream, "nats", move |chunk| {
            if !logged && chunk.windows(4).any(|w| w == b"-ERR") {
                logged = true;
                tracing::warn!(reply = %String::from_utf8_lossy(chunk).trim(), "NATS server sent an error to a publisher");
            }
        })?;
        Ok(NatsPublisher {
            writer: BatchedWriter::new(stream),
        })
    }
}

impl Publisher for NatsPublisher {
    fn queue(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.writer
            .queue(|output| encode_pub(output, topic, payload))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// A core NATS subscriber; subscription ids are the topic's position in the list.
pub struct NatsSubscriber {
    stream: TcpStream,
    input: ReadBuffer,
    notices: Notices,
}

impl NatsSubscriber {
    pub fn connect(addr: SocketAddr, topics: &[String]) -> io::Result<Self> {
        let mut stream = open(addr)?;
        let mut input = ReadBuffer::default();
        let mut subs = Vec::new();
        for (sid, topic) in topics.iter().enumerate() {
            encode_sub(&mut subs, topic, sid + 1);
        }
        handshake(&mut stream, &mut input, &subs)?;
        Ok(NatsSubscriber {
            stream,
            input,
            notices: Notices::default(),
        })
    }
}

impl Subscriber for NatsSubscriber {
    fn poll(&mut self, on_message: &mut dyn FnMut(&[u8], Instant)) -> io::Result<usize> {
        match self.input.read_from(&mut self.stream) {
            Ok(0) => return Err(closed_error("NATS subscriber")),
            Ok(_) => {}
            Err(err) if is_timeout(&err) => return Ok(0),
            Err(err) => return Err(err),
        }
        let at = Instant::now();
        let mut count = 0;
        let mut pongs = 0;
        while let Some((op, used)) = parse(self.input.filled()).map_err(protocol_error)? {
            match op {
                ServerOp::Msg { payload, .. } => {
                    on_message(payload, at);
                    count += 1;
                }
                ServerOp::Ping => pongs += 1,
                ServerOp::Err(text) => {
                    self.notices.errors += 1;
                    tracing::warn!(reply = %String::from_utf8_lossy(text), "NATS server sent an error to a subscriber");
                }
                ServerOp::Info(_) | ServerOp::Pong | ServerOp::Ok => {}
            }
            self.input.consume(used);
        }
        for _ in 0..pongs {
            self.stream.write_all(b"PONG\r\n")?;
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
    fn pub_and_sub_encode() {
        let mut out = Vec::new();
        encode_pub(&mut out, "bench.1.0", b"hi\r\nx");
        assert_eq!(out, b"PUB bench.1.0 5\r\nhi\r\nx\r\n");
        out.clear();
        encode_sub(&mut out, "bench.1.0", 12);
        assert_eq!(out, b"SUB bench.1.0 12\r\n");
    }

    #[test]
    fn msg_parses_with_binary_payload() {
        let wire = b"MSG bench.1.0 3 5\r\nhi\r\nx\r\nPING\r\n";
        let (op, used) = parse(wire).unwrap().unwrap();
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: b"bench.1.0",
                sid: b"3",
                payload: b"hi\r\nx",
            }
        );
        assert_eq!(used, 26);
        let (op, used) = parse(&wire[used..]).unwrap().unwrap();
        assert_eq!(op, ServerOp::Ping);
        assert_eq!(used, 6);
    }

    #[test]
    fn msg_with_reply_subject_parses() {
        let (op, _) = parse(b"MSG a 1 inbox.9 2\r\nok\r\n").unwrap().unwrap();
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: b"a",
                sid: b"1",
                payload: b"ok",
            }
        );
    }

    #[test]
    fn partial_msg_waits() {
        let wire = b"MSG a 1 4\r\nabcd\r\n";
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(wire).unwrap().is_some());
    }

    #[test]
    fn control_lines_parse() {
        assert_eq!(
            parse(b"INFO {\"x\":1} \r\n").unwrap().unwrap().0,
            ServerOp::Info(b"{\"x\":1}")
        );
        assert_eq!(parse(b"+OK\r\n").unwrap().unwrap().0, ServerOp::Ok);
        assert_eq!(parse(b"pong\r\n").unwrap().unwrap().0, ServerOp::Pong);
        assert_eq!(
            parse(b"-ERR 'Slow Consumer'\r\n").unwrap().unwrap().0,
            ServerOp::Err(b"'Slow Consumer'")
        );
    }

    #[test]
    fn malformed_input_is_rejected() {
        assert!(parse(b"HELLO\r\n").is_err());
        assert!(parse(b"MSG a 1\r\n").is_err());
        assert!(parse(b"MSG a 1 x\r\n").is_err());
        assert!(parse(b"MSG a 1 2\r\nabXY").is_err());
    }

    #[test]
    fn decimal_encoding() {
        for value in [0u64, 7, 10, 65_536, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }
}
