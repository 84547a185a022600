//! A blocking client for the broker's wire protocol, built on `std::net::TcpStream` so that
//! it works from any thread and alongside any async runtime.
//!
//! A [`Client`] owns one connection: a read buffer that [`Decoder`] splits into frames, a
//! write buffer that batches outgoing frames, and a queue of events (MESSAGE, GAP and
//! ERROR frames) that arrived while a call waited for a specific reply. [`Client::recv`]
//! drains that queue before it reads the socket, so events come out in the order the
//! broker sent them.
//!
//! An ERROR frame's `reference` field carries a request id, a subscription id or a ping
//! token. To tell them apart, request ids start at 2^32 and ping tokens at 2^63, above
//! every subscription id (a `u32`).

use crate::protocol::{
    self, AckMode, DEFAULT_MAX_PAYLOAD, Decoder, ErrorCode, Frame, LEN_PREFIX, PROTOCOL_VERSION,
    StartPosition, frame_type,
};
use crate::topic::{self, TopicName};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The bound on connecting and on waiting for HELLO_OK in [`Client::connect`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default bound on each wait for a reply; see [`Client::set_default_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// [`Client::queue_publish`] flushes the write buffer once it contains this many bytes.
pub const WRITE_BUFFER_LIMIT: usize = 64 * 1024;

/// The minimum buffer space, in bytes, offered to each socket read.
const READ_CHUNK: usize = 32 * 1024;

const FIRST_REQUEST_ID: u64 = 1 << 32;
const FIRST_PING_TOKEN: u64 = 1 << 63;

/// The broker's limits and settings, as reported in its HELLO_OK frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The protocol version the broker speaks on this connection.
    pub version: u16,
    /// The largest payload the broker accepts, in bytes.
    pub max_payload: u32,
    /// The largest frame the broker accepts, in bytes after the length prefix.
    pub max_frame: u32,
    /// The number of shards (executor threads) the broker runs.
    pub shards: u16,
    /// How long an explicitly acked message waits for its ack before redelivery.
    pub ack_timeout: Duration,
}

/// The broker's confirmation of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The sequence number the message got in its topic.
    pub seq: u64,
    /// The broker's timestamp of the message, in nanoseconds since the Unix epoch.
    pub timestamp: u64,
}

/// A subscription the broker has registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The id that MESSAGE and GAP frames for this subscription carry.
    pub sub_id: u32,
    /// The sequence number the broker delivers first (a GAP may come before it).
    pub next_seq: u64,
}

/// Settings for [`Client::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The position where the subscription starts reading the topic. Default:
    /// [`StartPosition::New`].
    pub start: StartPosition,
    /// The acknowledgement mode. Default: [`AckMode::None`].
    pub ack_mode: AckMode,
    /// The durable consumer name, which follows the rules of topic names. `None` or an
    /// empty name makes a subscription that ends with the connection. Default: `None`.
    pub consumer: Option<String>,
    /// The maximum number of unacked messages in explicit ack mode; 0 selects the broker's
    /// default. Default: 0.
    pub max_in_flight: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            start: StartPosition::New,
            ack_mode: AckMode::None,
            consumer: None,
            max_in_flight: 0,
        }
    }
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subscription this message was delivered to.
    pub sub_id: u32,
    /// The message's sequence number in its topic.
    pub seq: u64,
    /// The broker's timestamp of the message, in nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// How many times the message has been delivered to this consumer, 1 on first delivery.
    pub delivery_count: u32,
    /// The message body.
    pub payload: Bytes,
}

/// Something the broker sent without being asked for it by the current call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message for one of this connection's subscriptions.
    Message(Message),
    /// Messages `first..=last` were evicted before they could be delivered to `sub_id`.
    Gap {
        /// The subscription that missed the messages.
        sub_id: u32,
        /// The first missing sequence number.
        first: u64,
        /// The last missing sequence number.
        last: u64,
    },
    /// An error that no waiting call claimed, such as the error for a bad ack or for a
    /// `publish` without confirmation.
    Error(ServerError),
}

/// An ERROR frame from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The error code.
    pub code: ErrorCode,
    /// The request id, subscription id or ping token the error is about, or 0.
    pub reference: u64,
    /// The broker's description, lossily decoded as UTF-8.
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if self.reference != 0 {
            write!(f, " (reference {})", self.reference)?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// A failed client call.
#[derive(Debug)]
pub enum ClientError {
    /// A socket operation failed.
    Io(io::Error),
    /// The broker sent bytes that break the protocol; the connection is unusable.
    Protocol(String),
    /// The broker rejected the call with an ERROR frame.
    Server(ServerError),
    /// The broker closed the connection.
    Closed,
    /// The broker sent no reply within the timeout.
    Timeout,
    /// The topic name is invalid; nothing was sent.
    InvalidTopic(topic::InvalidTopic),
    /// The durable consumer name breaks the rules of topic names; nothing was sent.
    InvalidConsumer {
        /// The name as given.
        name: String,
        /// The rule the name breaks.
        reason: &'static str,
    },
    /// The payload is larger than the broker's maximum payload size; nothing was sent.
    PayloadTooLarge {
        /// The payload size, in bytes.
        size: usize,
        /// The broker's maximum payload size, in bytes.
        max: u32,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(err) => write!(f, "I/O error on the broker connection: {err}"),
            ClientError::Protocol(message) => write!(f, "broker protocol violation: {message}"),
            ClientError::Server(err) => write!(f, "broker returned an error: {err}"),
            ClientError::Closed => f.write_str("the broker closed the connection"),
            ClientError::Timeout => f.write_str("timed out waiting for the broker"),
            ClientError::InvalidTopic(err) => err.fmt(f),
            ClientError::InvalidConsumer { name, reason } => {
                write!(f, "consumer name {name:?} is invalid: {reason}")
            }
            ClientError::PayloadTooLarge { size, max } => write!(
                f,
                "payload of {size} bytes exceeds the broker's maximum payload size of {max} bytes"
            ),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(err) => Some(err),
            ClientError::Server(err) => Some(err),
            ClientError::InvalidTopic(err) => Some(err),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(err: io::Error) -> Self {
        ClientError::Io(err)
    }
}

impl From<topic::InvalidTopic> for ClientError {
    fn from(err: topic::InvalidTopic) -> Self {
        ClientError::InvalidTopic(err)
    }
}

impl From<ServerError> for ClientError {
    fn from(err: ServerError) -> Self {
        ClientError::Server(err)
    }
}

/// A blocking connection to the broker.
///
/// Calls that wait for a reply (`publish_confirmed`, `subscribe`, `unsubscribe`, `ping`)
/// queue any MESSAGE, GAP and ERROR frames that arrive first, and [`recv`](Client::recv)
/// returns those before it reads more. Every call that reads the socket first flushes
/// frames queued with [`queue_publish`](Client::queue_publish).
///
/// A connection that both publishes heavily and subscribes must keep reading its
/// deliveries, or use one connection for publishing and another for subscribing. The
/// broker stops reading from a connection whose outgoing queue is full, so a client that
/// only writes can block in `write` for good while its deliveries pile up.
///
/// Dropping the client flushes queued frames, waiting at most [`HANDSHAKE_TIMEOUT`] and
/// ignoring errors, and closes the connection.
///
/// ```no_run
/// use pubsub::client::{Client, Event, SubscribeOptions};
///
/// let mut client = Client::connect("127.0.0.1:7878")?;
/// let subscription = client.subscribe("orders", SubscribeOptions::default())?;
/// let published = client.publish_confirmed("orders", b"hello")?;
/// assert!(published.seq >= subscription.next_seq);
/// if let Event::Message(message) = client.recv()? {
///     println!("{} {:?}", message.seq, message.payload);
/// }
/// # Ok::<(), pubsub::client::ClientError>(())
/// ```
pub struct Client {
    stream: TcpStream,
    info: ServerInfo,
    decoder: Decoder,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Events that arrived while a call waited for a reply, oldest first.
    pending: VecDeque<Event>,
    /// The read timeout currently set on the socket, to skip redundant system calls.
    read_timeout: Option<Duration>,
    default_timeout: Option<Duration>,
    /// The last topic name that passed validation, so that repeated publishes to one
    /// topic validate it once.
    validated_topic: Option<String>,
    next_request_id: u64,
    next_ping_token: u64,
    next_sub_id: u32,
    /// Frames of unknown type skipped so far; only the first is logged as a warning.
    skipped_frames: u64,
}

impl Client {
    /// Connects to the broker, sets TCP_NODELAY, sends HELLO and waits for HELLO_OK.
    ///
    /// Each resolved address gets [`HANDSHAKE_TIMEOUT`] to connect, and the broker gets as
    /// long again to reply to HELLO. An ERROR reply, such as one for an unsupported
    /// version, is returned as [`ClientError::Server`].
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = connect_any(addr)?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            // Placeholder values until HELLO_OK replaces them.
            info: ServerInfo {
                version: PROTOCOL_VERSION,
                max_payload: DEFAULT_MAX_PAYLOAD,
                max_frame: protocol::max_frame_for(DEFAULT_MAX_PAYLOAD),
                shards: 0,
                ack_timeout: Duration::ZERO,
            },
            decoder: Decoder::new(DEFAULT_MAX_PAYLOAD),
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(WRITE_BUFFER_LIMIT),
            pending: VecDeque::new(),
            read_timeout: None,
            default_timeout: Some(DEFAULT_TIMEOUT),
            validated_topic: None,
            next_request_id: FIRST_REQUEST_ID,
            next_ping_token: FIRST_PING_TOKEN,
            next_sub_id: 1,
            skipped_frames: 0,
        };
        client.handshake()?;
        Ok(client)
    }

    /// Returns what the broker reported in HELLO_OK.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// Sets the bound on each wait for a reply in `publish_confirmed`, `subscribe`,
    /// `unsubscribe` and `ping`; `None` waits without limit. The default is
    /// [`DEFAULT_TIMEOUT`].
    pub fn set_default_timeout(&mut self, timeout: Option<Duration>) {
        self.default_timeout = timeout;
    }

    /// Publishes one message without confirmation (request id 0) and flushes it, together
    /// with anything queued before it.
    ///
    /// The broker reports a failure, if any, as an [`Event::Error`] with reference 0.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.append_publish(0, topic, payload)?;
        self.flush()
    }

    /// Appends one unconfirmed publish to the write buffer, which is flushed once it contains
    /// [`WRITE_BUFFER_LIMIT`] bytes, by [`flush`](Client::flush), and before any read.
    pub fn queue_publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), ClientError> {
        self.append_publish(0, topic, payload)?;
        if self.write_buf.len() >= WRITE_BUFFER_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes every queued frame to the socket.
    ///
    /// If the write fails, the queued frames are dropped, because the connection is then
    /// in an unknown state.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.write_buf);
        self.write_buf.clear();
        result.map_err(socket_error)
    }

    /// Publishes one message and waits for its sequence number and timestamp.
    ///
    /// An ERROR frame about this publish is returned as [`ClientError::Server`].
    pub fn publish_confirmed(
        &mut self,
        topic: &str,
        payload: &[u8],
    ) -> Result<Published, ClientError> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.append_publish(request_id, topic, payload)?;
        self.wait_reply(Awaited::Request(request_id), |frame| match *frame {
            Frame::Published {
                request_id: id,
                seq,
                timestamp,
            } if id == request_id => Some(Published { seq, timestamp }),
            _ => None,
        })
    }

    /// Subscribes to `topic` under the next subscription id (1, 2, 3, …) and waits until
    /// the broker has registered the subscription.
    ///
    /// Every message published after this returns reaches the subscription. An ERROR
    /// frame about the subscription id, such as CONSUMER_IN_USE, is returned as
    /// [`ClientError::Server`].
    pub fn subscribe(
        &mut self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let topic = TopicName::try_from(topic)?;
        let consumer = Bytes::from(options.consumer.unwrap_or_default());
        // The broker checks consumer names with the topic name rules.
        if !consumer.is_empty() {
            TopicName::new(consumer.clone()).map_err(|err| ClientError::InvalidConsumer {
                name: err.name,
                reason: err.reason,
            })?;
        }

        let sub_id = self.next_sub_id;
        self.next_sub_id = self.next_sub_id.checked_add(1).unwrap_or(1);
        Frame::Subscribe {
            sub_id,
            topic: topic.as_bytes().clone(),
            start: options.start,
            ack_mode: options.ack_mode,
            max_in_flight: options.max_in_flight,
            consumer,
        }
        .encode(&mut self.write_buf);

        let next_seq = self.wait_reply(Awaited::Subscribe(sub_id), |frame| match *frame {
            Frame::Subscribed {
                sub_id: id,
                next_seq,
            } if id == sub_id => Some(next_seq),
            _ => None,
        })?;
        Ok(Subscription { sub_id, next_seq })
    }

    /// Ends a subscription and waits for the broker's UNSUBSCRIBED.
    ///
    /// For a durable consumer this deletes the consumer and its retry buffer. Messages
    /// that arrived before UNSUBSCRIBED stay queued for [`recv`](Client::recv).
    pub fn unsubscribe(&mut self, sub_id: u32) -> Result<(), ClientError> {
        Frame::Unsubscribe { sub_id }.encode(&mut self.write_buf);
        self.wait_reply(Awaited::Unsubscribe(sub_id), |frame| match *frame {
            Frame::Unsubscribed { sub_id: id } if id == sub_id => Some(()),
            _ => None,
        })
    }

    /// Acknowledges one message of an explicit-ack subscription and flushes the ack.
    ///
    /// The broker reports a failure, if any, as an [`Event::Error`] whose reference is
    /// `sub_id`.
    pub fn ack(&mut self, sub_id: u32, seq: u64) -> Result<(), ClientError> {
        Frame::Ack { sub_id, seq }.encode(&mut self.write_buf);
        self.flush()
    }

    /// Acknowledges every message delivered to `sub_id` with a sequence number up to and
    /// including `seq`, and flushes the ack.
    pub fn ack_up_to(&mut self, sub_id: u32, seq: u64) -> Result<(), ClientError> {
        Frame::AckUpTo { sub_id, seq }.encode(&mut self.write_buf);
        self.flush()
    }

    /// Appends an ack of one message to the write buffer, which is flushed like
    /// [`queue_publish`](Client::queue_publish)'s. A consumer that acks every message of
    /// a read this way sends all those acks in one write.
    pub fn queue_ack(&mut self, sub_id: u32, seq: u64) -> Result<(), ClientError> {
        Frame::Ack { sub_id, seq }.encode(&mut self.write_buf);
        if self.write_buf.len() >= WRITE_BUFFER_LIMIT {
            self.flush()?;
        }
        Ok(())
    }

    /// Returns the next event, blocking until one arrives.
    pub fn recv(&mut self) -> Result<Event, ClientError> {
        // Without a deadline `recv_until` never returns `Ok(None)`.
        self.recv_until(None)?.ok_or(ClientError::Timeout)
    }

    /// Returns the next event, or `None` if none arrives within `timeout`.
    ///
    /// A zero timeout returns an event that is already queued or waiting in the socket,
    /// without blocking.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        self.recv_until(deadline_after(Some(timeout)))
    }

    /// Sends a PING and returns the time until the matching PONG arrived.
    ///
    /// Frames queued before the ping are flushed first, outside the measured time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        self.flush()?;
        let token = self.next_ping_token;
        self.next_ping_token += 1;
        Frame::Ping { token }.encode(&mut self.write_buf);

        let started = Instant::now();
        self.wait_reply(Awaited::Ping(token), |frame| match *frame {
            Frame::Pong { token: echoed } if echoed == token => Some(()),
            _ => None,
        })?;
        Ok(started.elapsed())
    }

    /// Flushes queued frames, then writes `bytes` to the socket unchanged. Meant for tests
    /// that send malformed input.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.flush()?;
        self.stream.write_all(bytes).map_err(socket_error)
    }

    fn handshake(&mut self) -> Result<(), ClientError> {
        Frame::Hello {
            version: PROTOCOL_VERSION,
        }
        .encode(&mut self.write_buf);
        self.flush()?;

        let frame = self.next_frame(deadline_after(Some(HANDSHAKE_TIMEOUT)))?;
        match frame {
            Frame::HelloOk {
                version,
                max_payload,
                max_frame,
                shards,
                ack_timeout_ms,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(ClientError::Protocol(format!(
                        "the broker replied to HELLO with protocol version {version}, but this \
                         client speaks only version {PROTOCOL_VERSION}"
                    )));
                }
                self.info = ServerInfo {
                    version,
                    max_payload,
                    max_frame,
                    shards,
                    ack_timeout: Duration::from_millis(ack_timeout_ms.into()),
                };
                self.decoder = Decoder::new(max_payload);
                Ok(())
            }
            Frame::Error {
                code,
                reference,
                message,
            } => Err(ClientError::Server(server_error(code, reference, &message))),
            other => Err(ClientError::Protocol(format!(
                "the broker replied to HELLO with frame type 0x{:02x} instead of HELLO_OK",
                other.type_code()
            ))),
        }
    }

    /// Validates a publish and appends it to the write buffer without flushing.
    fn append_publish(
        &mut self,
        request_id: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        if self.validated_topic.as_deref() != Some(topic) {
            TopicName::try_from(topic)?;
            self.validated_topic = Some(topic.to_owned());
        }
        if payload.len() > self.info.max_payload as usize {
            return Err(ClientError::PayloadTooLarge {
                size: payload.len(),
                max: self.info.max_payload,
            });
        }
        encode_publish(&mut self.write_buf, request_id, topic.as_bytes(), payload);
        Ok(())
    }

    /// Flushes, then reads frames until `extract` accepts one or an ERROR frame replies to
    /// `awaited`. Events read on the way are queued for `recv`.
    fn wait_reply<T>(
        &mut self,
        awaited: Awaited,
        extract: impl Fn(&Frame) -> Option<T>,
    ) -> Result<T, ClientError> {
        self.flush()?;
        let deadline = deadline_after(self.default_timeout);
        loop {
            let frame = self.next_frame(deadline)?;
            if let Some(reply) = extract(&frame) {
                return Ok(reply);
            }
            match classify(frame)? {
                Incoming::Event(Event::Error(err)) if awaited.is_answered_by(&err) => {
                    return Err(ClientError::Server(err));
                }
                Incoming::Event(event) => self.pending.push_back(event),
                Incoming::Reply(frame) => log_stray_reply(&frame),
            }
            // A broker that keeps sending deliveries must not stretch the wait forever.
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(ClientError::Timeout);
            }
        }
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<Event>, ClientError> {
        self.flush()?;
        if let Some(event) = self.pending.pop_front() {
            return Ok(Some(event));
        }
        loop {
            let frame = match self.next_frame(deadline) {
                Ok(frame) => frame,
                Err(ClientError::Timeout) => return Ok(None),
                Err(err) => return Err(err),
            };
            match classify(frame)? {
                Incoming::Event(event) => return Ok(Some(event)),
                Incoming::Reply(frame) => log_stray_reply(&frame),
            }
        }
    }

    /// Decodes the next frame, reading from the socket as needed. Frames of unknown type
    /// are skipped; any other decoding error means the broker broke the protocol.
    fn next_frame(&mut self, deadline: Option<Instant>) -> Result<Frame, ClientError> {
        loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => self.read_more(deadline)?,
                Err(err) if !err.fatal && err.code == ErrorCode::UnknownFrameType => {
                    self.skipped_frames += 1;
                    if self.skipped_frames == 1 {
                        warn!(error = %err, "skipped a frame of unknown type from the broker");
                    } else {
                        debug!(error = %err, skipped = self.skipped_frames, "skipped a frame");
                    }
                }
                Err(err) => {
                    return Err(ClientError::Protocol(format!(
                        "cannot decode a frame from the broker: {err}"
                    )));
                }
            }
        }
    }

    /// Reads once from the socket into the read buffer. After the deadline has passed, it
    /// still takes bytes that are already waiting, without blocking.
    fn read_more(&mut self, deadline: Option<Instant>) -> Result<(), ClientError> {
        let wait = deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()));
        let start = self.read_buf.len();
        let wanted = self.decoder.bytes_wanted(&self.read_buf).max(READ_CHUNK);
        // `Read::read` takes an initialized slice, so the spare room is zeroed first.
        self.read_buf.resize(start + wanted, 0);
        let result = self.read_at(start, wait);
        let read = *result.as_ref().unwrap_or(&0);
        self.read_buf.truncate(start + read);
        match result? {
            0 => Err(ClientError::Closed),
            _ => Ok(()),
        }
    }

    fn read_at(&mut self, start: usize, wait: Option<Duration>) -> Result<usize, ClientError> {
        // The socket rejects a zero read timeout, so a spent deadline becomes one
        // non-blocking read.
        let poll = wait.is_some_and(|wait| wait.is_zero());
        if poll {
            self.stream.set_nonblocking(true)?;
        } else if self.read_timeout != wait {
            self.stream.set_read_timeout(wait)?;
            self.read_timeout = wait;
        }
        let result = loop {
            match self.stream.read(&mut self.read_buf[start..]) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        if poll {
            self.stream.set_nonblocking(false)?;
        }
        result.map_err(socket_error)
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.stream.peer_addr().ok())
            .field("info", &self.info)
            .field("pending_events", &self.pending.len())
            .field("queued_bytes", &self.write_buf.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A broker that has stopped reading must not block the drop for good.
        let _ = self.stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
        if let Err(err) = self.flush() {
            debug!(error = %err, "failed to flush queued frames while closing the connection");
        }
    }
}

/// The call that `wait_reply` waits on, which decides whether an ERROR frame is its reply.
#[derive(Debug, Clone, Copy)]
enum Awaited {
    Request(u64),
    Subscribe(u32),
    Unsubscribe(u32),
    Ping(u64),
}

impl Awaited {
    /// Returns true when `err` is the reply to this call. Acks run without waiting and
    /// their errors carry a subscription id too, so error codes that only an ack earns
    /// are not taken as the reply to SUBSCRIBE or UNSUBSCRIBE.
    fn is_answered_by(self, err: &ServerError) -> bool {
        match self {
            Awaited::Request(id) | Awaited::Ping(id) => err.reference == id,
            Awaited::Subscribe(sub_id) => {
                err.reference == u64::from(sub_id)
                    && !matches!(
                        err.code,
                        ErrorCode::UnknownSequence | ErrorCode::UnknownSubscription
                    )
            }
            Awaited::Unsubscribe(sub_id) => {
                err.reference == u64::from(sub_id)
                    && !matches!(
                        err.code,
                        ErrorCode::UnknownSequence | ErrorCode::InvalidArgument
                    )
            }
        }
    }
}

/// A frame from the broker, sorted by who consumes it.
enum Incoming {
    /// MESSAGE, GAP or ERROR: returned by `recv`.
    Event(Event),
    /// PUBLISHED, SUBSCRIBED, UNSUBSCRIBED or PONG: the reply to a call.
    Reply(Frame),
}

fn classify(frame: Frame) -> Result<Incoming, ClientError> {
    let event = match frame {
        Frame::Message {
            sub_id,
            seq,
            timestamp,
            delivery_count,
            payload,
        } => Event::Message(Message {
            sub_id,
            seq,
            timestamp,
            delivery_count,
            payload,
        }),
        Frame::Gap {
            sub_id,
            first,
            last,
        } => Event::Gap {
            sub_id,
            first,
            last,
        },
        Frame::Error {
            code,
            reference,
            message,
        } => Event::Error(server_error(code, reference, &message)),
        Frame::Published { .. }
        | Frame::Subscribed { .. }
        | Frame::Unsubscribed { .. }
        | Frame::Pong { .. } => return Ok(Incoming::Reply(frame)),
        other => {
            return Err(ClientError::Protocol(format!(
                "the broker sent frame type 0x{:02x}, which it never sends after the handshake",
                other.type_code()
            )));
        }
    };
    Ok(Incoming::Event(event))
}

/// Logs a reply that no call waits for, such as one that arrived after its call timed out.
fn log_stray_reply(frame: &Frame) {
    debug!(
        frame_type = frame.type_code(),
        "dropped a reply that no call is waiting for"
    );
}

fn server_error(code: ErrorCode, reference: u64, message: &[u8]) -> ServerError {
    ServerError {
        code,
        reference,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}

/// Appends a PUBLISH frame; the same bytes as `Frame::Publish::encode`, without first
/// copying the payload into a `Bytes`. `topic` must be at most 255 bytes.
fn encode_publish(dst: &mut BytesMut, request_id: u64, topic: &[u8], payload: &[u8]) {
    debug_assert!(topic.len() <= topic::MAX_TOPIC_LEN);
    let len = 1 + 8 + 1 + topic.len() + payload.len();
    dst.reserve(LEN_PREFIX + len);
    dst.put_u32_le(len as u32);
    dst.put_u8(frame_type::PUBLISH);
    dst.put_u64_le(request_id);
    dst.put_u8(topic.len() as u8);
    dst.put_slice(topic);
    dst.put_slice(payload);
}

/// Maps a socket error to the client's terms: a read timeout becomes `Timeout` and a
/// reset or broken connection becomes `Closed`.
fn socket_error(err: io::Error) -> ClientError {
    match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => ClientError::Closed,
        _ => ClientError::Io(err),
    }
}

/// Tries each address `addr` resolves to, in order, each for at most [`HANDSHAKE_TIMEOUT`].
fn connect_any(addr: impl ToSocketAddrs) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    let mut last_err = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, HANDSHAKE_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => {
                debug!(%addr, error = %err, "failed to connect");
                last_err = Some(err);
            }
        }
    }
    Err(ClientError::Io(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to no socket address",
        )
    })))
}

/// Returns the instant `timeout` from now; `None` when there is no timeout or the
/// instant is too far away to represent.
fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| Instant::now().checked_add(timeout))
}

#[cfg(test)]
pub(crate) mod fake_broker;

#[cfg(test)]
mod tests;
