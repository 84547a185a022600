//! The generator's connections: one publisher and one subscriber type per protocol,
//! behind the [`Publisher`] and [`Subscriber`] traits, over blocking std sockets.
//!
//! Publishers append messages to a write buffer and write it with [`Publisher::flush`],
//! so a publisher that is behind schedule sends its backlog in few system calls.
//! Subscribers read once per [`Subscriber::poll`] and decode every whole message in what
//! they read, stamping all of them with the time the read returned.

mod nats;
mod pubsub;
pub mod relay;
mod resp;

use super::{AckArg, Protocol};
use crate::protocol::StartPosition;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bound on connecting and on each handshake or subscription confirmation.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Maximum time a subscriber's `poll` blocks, so that its thread notices the end of a run.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A publisher's write buffer is written out once it contains this many bytes.
pub const WRITE_CHUNK: usize = 64 * 1024;

/// A socket with a write buffer that is written out once it reaches [`WRITE_CHUNK`]
/// bytes, shared by the publishers of the peer protocols.
pub struct BatchedWriter {
    stream: TcpStream,
    output: Vec<u8>,
}

impl BatchedWriter {
    /// Wraps a connected socket.
    pub fn new(stream: TcpStream) -> Self {
        BatchedWriter {
            stream,
            output: Vec::with_capacity(2 * WRITE_CHUNK),
        }
    }

    /// Appends what `encode` writes to the buffer, and writes the buffer once it is full.
    pub fn queue(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        encode(&mut self.output);
        if self.output.len() >= WRITE_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes everything queued. The buffer is emptied even when the write fails, because
    /// the connection is then unusable.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.output);
        self.output.clear();
        result
    }
}

/// Minimum free space offered to each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// A connection that publishes.
pub trait Publisher: Send {
    /// Appends one message to the write buffer; writes the buffer once it is full.
    fn queue(&mut self, topic: &str, payload: &[u8]) -> io::Result<()>;
    /// Writes everything queued.
    fn flush(&mut self) -> io::Result<()>;
}

/// A connection that receives messages.
pub trait Subscriber: Send {
    /// Reads once, waiting at most [`POLL_INTERVAL`], and calls `on_message` with the
    /// payload of every whole message read and the time the read returned. Returns the
    /// number of messages; 0 when nothing arrived in time.
    fn poll(&mut self, on_message: &mut dyn FnMut(&[u8], Instant)) -> io::Result<usize>;

    /// Returns what the server reported besides messages.
    fn notices(&self) -> Notices;
}

/// Reports from the server besides messages, counted over a subscriber's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notices {
    /// Messages the server reported as not deliverable (pubsub GAP frames).
    pub gap_messages: u64,
    /// Error replies.
    pub errors: u64,
}

/// A subscriber's topics, start position and ack settings.
#[derive(Debug, Clone)]
pub struct SubscribeSpec {
    pub topics: Vec<String>,
    pub start: StartPosition,
    pub ack: AckArg,
    pub ack_every: u32,
    pub max_in_flight: u32,
}

/// Connects a publisher that speaks `protocol`.
pub fn connect_publisher(protocol: Protocol, addr: SocketAddr) -> io::Result<Box<dyn Publisher>> {
    Ok(match protocol {
        Protocol::Pubsub => Box::new(pubsub::PubsubPublisher::connect(addr)?),
        Protocol::Nats => Box::new(nats::NatsPublisher::connect(addr)?),
        Protocol::Redis => Box::new(resp::RedisPublisher::connect(addr)?),
        Protocol::Relay => Box::new(relay::RelayPublisher::connect(addr)?),
    })
}

/// Connects a subscriber that speaks `protocol` and returns once the server has confirmed
/// every subscription in `spec`.
pub fn connect_subscriber(
    protocol: Protocol,
    addr: SocketAddr,
    spec: &SubscribeSpec,
) -> io::Result<Box<dyn Subscriber>> {
    if protocol != Protocol::Pubsub {
        if spec.ack != AckArg::None {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "--ack explicit needs --protocol pubsub; {} has no acks",
                    protocol.name()
                ),
            ));
        }
        if spec.start != StartPosition::New {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} cannot replay; only pubsub has a start position",
                    protocol.name()
                ),
            ));
        }
    }
    Ok(match protocol {
        Protocol::Pubsub => Box::new(pubsub::PubsubSubscriber::connect(addr, spec)?),
        Protocol::Nats => Box::new(nats::NatsSubscriber::connect(addr, &spec.topics)?),
        Protocol::Redis => Box::new(resp::RedisSubscriber::connect(addr, &spec.topics)?),
        Protocol::Relay => Box::new(relay::RelaySubscriber::connect(addr)?),
    })
}

/// Opens a TCP connection with TCP_NODELAY and the subscriber read timeout.
fn open(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot connect to {addr}: {err}; is the server running?"),
        )
    })?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    Ok(stream)
}

/// Returns true for the errors a read with a timeout returns when nothing arrived.
fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn closed_error(connection: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the server closed the {connection} connection"),
    )
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn timeout_error(awaited: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "timed out after {} s waiting for {awaited}",
            CONNECT_TIMEOUT.as_secs()
        ),
    )
}

/// A read buffer that keeps unparsed bytes at its front and reads after them.
#[derive(Debug)]
pub struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            data: vec![0; 2 * READ_CHUNK],
            start: 0,
            end: 0,
        }
    }
}

impl ReadBuffer {
    /// Returns the bytes read and not yet consumed.
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Drops `n` bytes from the front of [`filled`](ReadBuffer::filled).
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `source` after the unconsumed bytes, moving them to the front or
    /// growing the buffer when less than [`READ_CHUNK`] bytes are free. Returns the
    /// number of bytes read; 0 means end of stream.
    pub fn read_from(&mut self, source: &mut impl Read) -> io::Result<usize> {
        if self.data.len() - self.end < READ_CHUNK {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.data.len() - self.end < READ_CHUNK {
                self.data.resize(self.end + 2 * READ_CHUNK, 0);
            }
        }
        let read = source.read(&mut self.data[self.end..])?;
        self.end += read;
        Ok(read)
    }
}

/// Reads into `buffer` and hands the filled bytes to `parse` until it returns a value,
/// for at most [`CONNECT_TIMEOUT`]. `parse` returns how many bytes it consumed.
fn read_until<T>(
    stream: &mut TcpStream,
    buffer: &mut ReadBuffer,
    awaited: &str,
    mut parse: impl FnMut(&[u8]) -> io::Result<(usize, Option<T>)>,
) -> io::Result<T> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        loop {
            let (used, value) = parse(buffer.filled())?;
            buffer.consume(used);
            if let Some(value) = value {
                return Ok(value);
            }
            if used == 0 {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(timeout_error(awaited));
        }
        match buffer.read_from(stream) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the server closed the connection while the generator waited for {awaited}"
                    ),
                ));
            }
            Ok(_) => {}
            Err(err) if is_timeout(&err) => {}
            Err(err) => return Err(err),
        }
    }
}

/// Spawns a thread that reads and discards what the server sends on a publisher
/// connection, so that replies never fill the socket. The thread calls `inspect` on each
/// chunk and ends when the connection closes.
fn spawn_drain(
    stream: &TcpStream,
    name: &str,
    mut inspect: impl FnMut(&[u8]) + Send + 'static,
) -> io::Result<()> {
    let mut reader = stream.try_clone()?;
    reader.set_read_timeout(None)?;
    std::thread::Builder::new()
        .name(format!("bench-drain-{name}"))
        .spawn(move || {
            let mut chunk = vec![0u8; READ_CHUNK];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => inspect(&chunk[..n]),
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_keeps_partial_data() {
        let mut buffer = ReadBuffer::default();
        let mut source: &[u8] = b"hello world";
        assert_eq!(buffer.read_from(&mut source).unwrap(), 11);
        buffer.consume(6);
        assert_eq!(buffer.filled(), b"world");
        buffer.consume(5);
        assert!(buffer.filled().is_empty());
    }

    #[test]
    fn read_buffer_grows_for_large_input() {
        let mut buffer = ReadBuffer::default();
        let big = vec![7u8; 5 * READ_CHUNK];
        let mut source: &[u8] = &big;
        let mut total = 0;
        while total < big.len() {
            total += buffer.read_from(&mut source).unwrap();
        }
        assert_eq!(buffer.filled().len(), big.len());
        assert!(buffer.filled().iter().all(|&b| b == 7));
    }
}
