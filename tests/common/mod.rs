//! Shared set-up for the integration tests: a real broker on an ephemeral loopback port,
//! clients, a raw protocol connection for malformed input, and waits with deadlines.
//!
//! The tests run in parallel on small machines, so every wait for something that must
//! happen polls up to [`TIMEOUT`] instead of sleeping a fixed time.

#![allow(dead_code)]

use bytes::{BufMut, BytesMut};
use pubsub::client::{Client, ClientError, Event, Message, ServerError, SubscribeOptions};
use pubsub::protocol::{self, Decoder, ErrorCode, Frame, PROTOCOL_VERSION};
use pubsub::server::{Server, ServerConfig};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The bound on waits for something that must happen. It is far above the usual
/// latency because the tests share a few cores with each other.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a broker with `shards` unpinned executors on 127.0.0.1 and a free port, after
/// `adjust` has changed the default configuration.
pub fn start_broker(shards: usize, adjust: impl FnOnce(&mut ServerConfig)) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: shards,
        pin: false,
        ..ServerConfig::default()
    };
    adjust(&mut config);
    Server::start(config).expect("broker starts")
}

/// Connects a client to `server`.
pub fn connect(server: &Server) -> Client {
    Client::connect(server.local_addr()).expect("client connects")
}

/// Receives events until `count` messages have arrived or `timeout` passes, and returns
/// the messages and any other events in arrival order.
pub fn receive_messages(
    client: &mut Client,
    count: usize,
    timeout: Duration,
) -> (Vec<Message>, Vec<Event>) {
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut others = Vec::new();
    while messages.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.recv_timeout(left).expect("receive") {
            Some(Event::Message(message)) => messages.push(message),
            Some(other) => others.push(other),
            None => break,
        }
    }
    (messages, others)
}

/// Receives exactly `count` messages within [`TIMEOUT`], failing the test on a shortfall
/// or on any other event.
pub fn expect_messages(client: &mut Client, count: usize) -> Vec<Message> {
    let (messages, others) = receive_messages(client, count, TIMEOUT);
    assert!(
        others.is_empty(),
        "expected only messages, also got {others:?}"
    );
    assert_eq!(
        messages.len(),
        count,
        "expected {count} messages within {TIMEOUT:?}, got {:?}",
        seqs(&messages)
    );
    messages
}

/// Returns the next event, failing the test after `timeout`.
pub fn next_event(client: &mut Client, timeout: Duration) -> Event {
    client
        .recv_timeout(timeout)
        .expect("receive")
        .unwrap_or_else(|| panic!("no event within {timeout:?}"))
}

/// Returns the next event, which must be an ERROR, failing the test otherwise.
pub fn next_error(client: &mut Client) -> ServerError {
    match next_event(client, TIMEOUT) {
        Event::Error(err) => err,
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

/// Asserts that no event arrives within `wait`.
pub fn assert_quiet(client: &mut Client, wait: Duration) {
    if let Some(event) = client.recv_timeout(wait).expect("receive") {
        panic!("expected no event within {wait:?}, got {event:?}");
    }
}

/// Returns the ERROR reply inside a failed call, failing the test on success or on
/// any other kind of failure.
pub fn server_error<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ServerError {
    match result {
        Err(ClientError::Server(err)) => err,
        other => panic!("expected an ERROR reply from the broker, got {other:?}"),
    }
}

/// Returns a topic name owned by `shard` of `shards`, distinct per `index`.
pub fn topic_on_shard(shard: usize, shards: usize, index: usize) -> String {
    (0..)
        .map(|i| format!("t{index}-{i}"))
        .find(|name| pubsub::topic::shard_for(name.as_bytes(), shards) == shard)
        .unwrap()
}

/// Returns the payloads of `messages` as strings.
pub fn payloads(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Returns the sequence numbers of `messages`.
pub fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Publishes `payloads` with confirmation and returns their sequence numbers and
/// timestamps.
pub fn publish_confirmed_all(
    client: &mut Client,
    topic: &str,
    payloads: &[&str],
) -> Vec<pubsub::client::Published> {
    payloads
        .iter()
        .map(|payload| {
            client
                .publish_confirmed(topic, payload.as_bytes())
                .expect("publish is confirmed")
        })
        .collect()
}

/// Subscribes with `options`, failing the test when the broker rejects it.
pub fn subscribe(
    client: &mut Client,
    topic: &str,
    options: SubscribeOptions,
) -> pubsub::client::Subscription {
    client
        .subscribe(topic, options)
        .unwrap_or_else(|err| panic!("subscribe to {topic:?} failed: {err}"))
}

/// Calls `attempt` until it returns `Some`, failing the test with `what` after
/// [`TIMEOUT`]. `pause` separates the attempts.
pub fn poll_until<T>(what: &str, pause: Duration, mut attempt: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = attempt() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting until {what}"
        );
        std::thread::sleep(pause);
    }
}

/// A publisher and a subscriber on their own connections. Tests that feed one connection
/// bad input use it to check that the broker still serves other connections and that
/// their messages are not lost.
pub struct Bystander {
    topic: String,
    publisher: Client,
    subscriber: Client,
    sub_id: u32,
    published: u64,
}

impl Bystander {
    /// Connects, subscribes to `topic` and publishes three messages.
    pub fn start(server: &Server, topic: &str) -> Self {
        let mut subscriber = connect(server);
        let sub_id = subscribe(&mut subscriber, topic, SubscribeOptions::default()).sub_id;
        let mut bystander = Bystander {
            topic: topic.to_owned(),
            publisher: connect(server),
            subscriber,
            sub_id,
            published: 0,
        };
        bystander.publish(3);
        bystander
    }

    fn publish(&mut self, count: u64) {
        for _ in 0..count {
            let expected = self.published + 1;
            let published = self
                .publisher
                .publish_confirmed(&self.topic, format!("bystander-{expected}").as_bytes())
                .expect("bystander publish is confirmed");
            assert_eq!(
                published.seq, expected,
                "bystander topic {:?} skipped or repeated a sequence number",
                self.topic
            );
            self.published = expected;
        }
    }

    /// Publishes three more messages, checks that the subscriber received every message
    /// in order, and that a new connection can ping and publish.
    pub fn check(mut self, server: &Server) {
        self.publish(3);
        let count = self.published as usize;
        let messages = expect_messages(&mut self.subscriber, count);
        let expected: Vec<u64> = (1..=self.published).collect();
        assert_eq!(
            seqs(&messages),
            expected,
            "the bystander subscriber lost or reordered messages"
        );
        for message in &messages {
            assert_eq!(
                message.sub_id, self.sub_id,
                "a bystander message carries the wrong subscription id"
            );
            assert_eq!(
                message.payload,
                format!("bystander-{}", message.seq).as_bytes(),
                "bystander message {} has the wrong payload",
                message.seq
            );
        }

        let mut fresh = connect(server);
        fresh.ping().expect("a new connection gets a PONG");
        let published = fresh
            .publish_confirmed(&self.topic, b"from a new connection")
            .expect("a new connection can publish");
        assert_eq!(
            published.seq,
            self.published + 1,
            "a publish from a new connection got the wrong sequence number"
        );
    }
}

/// A connection that speaks the wire protocol frame by frame, for sending input that
/// [`Client`] does not produce and for reading exactly what the broker sends back.
pub struct RawConnection {
    stream: TcpStream,
    decoder: Decoder,
    buffer: BytesMut,
}

impl RawConnection {
    /// Opens a TCP connection and sends nothing.
    pub fn connect(server: &Server) -> Self {
        let stream = TcpStream::connect(server.local_addr()).expect("TCP connect");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        RawConnection {
            stream,
            decoder: Decoder::new(protocol::DEFAULT_MAX_PAYLOAD),
            buffer: BytesMut::new(),
        }
    }

    /// Opens a TCP connection, completes the handshake and returns the connection with
    /// the broker's HELLO_OK.
    pub fn handshake(server: &Server) -> (Self, Frame) {
        let mut raw = RawConnection::connect(server);
        raw.send_frame(&Frame::Hello {
            version: PROTOCOL_VERSION,
        });
        let hello_ok = raw.expect_frame();
        let Frame::HelloOk { max_payload, .. } = hello_ok else {
            panic!("expected HELLO_OK, got {hello_ok:?}");
        };
        raw.decoder = Decoder::new(max_payload);
        (raw, hello_ok)
    }

    /// Encodes and sends one frame.
    pub fn send_frame(&mut self, frame: &Frame) {
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes);
        self.send_bytes(&bytes);
    }

    /// Sends `bytes` unchanged, failing the test when the socket write fails.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.try_send_bytes(bytes).expect("socket write");
    }

    /// Sends `bytes` unchanged.
    pub fn try_send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Closes the sending direction, so the broker reads end of file.
    pub fn shutdown_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shut down the write direction");
    }

    /// Returns the next frame, `Ok(None)` when none arrives within `timeout`, or `Err`
    /// when the broker closed the connection or reset it.
    pub fn next_frame(&mut self, timeout: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.buffer) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(err) => panic!("the broker sent an undecodable frame: {err}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the broker closed the connection",
                    ));
                }
                Ok(n) => self.buffer.put_slice(&chunk[..n]),
                Err(err)
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Returns the next frame, failing the test when none arrives within [`TIMEOUT`] or
    /// the connection closes.
    pub fn expect_frame(&mut self) -> Frame {
        match self.next_frame(TIMEOUT) {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("no frame from the broker within {TIMEOUT:?}"),
            Err(err) => panic!("the connection ended while a frame was expected: {err}"),
        }
    }

    /// Returns the code and reference of the next frame, which must be an ERROR.
    pub fn expect_error(&mut self) -> (ErrorCode, u64) {
        match self.expect_frame() {
            Frame::Error {
                code, reference, ..
            } => (code, reference),
            other => panic!("expected an ERROR frame, got {other:?}"),
        }
    }

    /// Waits until the broker closes the connection and returns the frames that arrived
    /// before; fails the test when the connection is still open after [`TIMEOUT`].
    pub fn expect_closed(&mut self) -> Vec<Frame> {
        let deadline = Instant::now() + TIMEOUT;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => panic!(
                    "the connection is still open after {TIMEOUT:?}; frames so far: {frames:?}"
                ),
                Err(_) => return frames,
            }
        }
    }

    /// Sends a PING and fails the test unless the next frame is the matching PONG.
    pub fn expect_pong(&mut self, token: u64) {
        self.send_frame(&Frame::Ping { token });
        let frame = self.expect_frame();
        assert_eq!(
            frame,
            Frame::Pong { token },
            "the connection no longer answers PING"
        );
    }
}

/// Returns a PUBLISH frame of `topic` and `payload`, length prefix included, without the
/// checks that [`Frame::encode`] callers make.
pub fn publish_bytes(request_id: u64, topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let len = (1 + 8 + 1 + topic.len() + payload.len()) as u32;
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.push(protocol::frame_type::PUBLISH);
    bytes.extend_from_slice(&request_id.to_le_bytes());
    bytes.push(topic.len() as u8);
    bytes.extend_from_slice(topic);
    bytes.extend_from_slice(payload);
    bytes
}

/// Returns a frame of type `kind` with `body`, length prefix included.
pub fn frame_bytes(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&((1 + body.len()) as u32).to_le_bytes());
    bytes.push(kind);
    bytes.extend_from_slice(body);
    bytes
}
