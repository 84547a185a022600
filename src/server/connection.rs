//! One client connection: the reader task that decodes frames and routes requests, the
//! writer task that sends the coalesced output, and the per-connection subscription table.
//!
//! The reader copies each payload out of the read buffer once, so a retained message
//! never pins a read buffer. Every frame for the client, whatever shard produced it, is
//! encoded into one write buffer. The writer sends the whole buffer with one write, so it
//! batches as many frames as arrived since its last write.

use super::core::Core;
use super::runtime::{self, Notify, ReadHalf, TcpStream, WriteHalf};
use crate::protocol::{self, Decoder, ErrorCode, Frame};
use crate::shard::{ConnAddr, Event, Request};
use crate::topic::{TopicName, shard_for};
use bytes::{Bytes, BytesMut};
use foldhash::{HashMap, HashMapExt};
use futures_lite::{AsyncReadExt, AsyncWriteExt, future};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Free space offered to each socket read. The read buffer grows by at most this much
/// per read, so a client that announces a large frame and sends nothing more costs this
/// much, not the announced size.
const READ_CHUNK: usize = 64 * 1024;

/// Encoded output, in bytes, above which the reader stops reading from the socket until
/// the writer catches up. Deliveries are bounded separately by each subscription's window.
const OUTPUT_HIGH_WATER: usize = 8 * 1024 * 1024;

/// Encoded output, in bytes, above which the connection is closed as a slow consumer.
/// Only a client with many subscriptions that stops reading gets here, because each
/// subscription's window bounds its own share.
const OUTPUT_HARD_LIMIT: usize = 64 * 1024 * 1024;

/// A write that makes no progress for this long fails and closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Write buffers larger than this are released after use instead of kept for reuse.
const KEPT_BUFFER_CAPACITY: usize = 1024 * 1024;

/// Time a new connection has to send `HELLO`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bad frames per connection logged at `warn`; later ones are logged at `debug` and
/// counted in the close message.
const LOGGED_BAD_FRAMES: u64 = 5;

/// State shared by a connection's reader, writer and the executor that routes to it.
pub struct Connection {
    addr: ConnAddr,
    peer: SocketAddr,
    output: RefCell<BytesMut>,
    output_ready: Notify,
    output_drained: Notify,
    subscriptions: RefCell<HashMap<u32, SubscriptionState>>,
    /// Subscriptions with deliveries in `output` not yet reported as written.
    unreported: RefCell<Vec<u32>>,
    closed: Cell<bool>,
    close_requested: Notify,
    bad_frames: Cell<u64>,
    /// The topic of the previous publish, validated, in its own allocation, with its
    /// owning shard. Publishers usually repeat a topic, which then skips validation and
    /// hashing, and requests never hold a slice of the read buffer.
    last_topic: RefCell<Option<(TopicName, usize)>>,
}

/// The connection's view of one of its subscriptions.
struct SubscriptionState {
    /// The shard that owns the topic; only its events are accepted for this id.
    owner: u16,
    /// Set once the owner confirmed the subscription; deliveries before that belong to
    /// an earlier subscription with the same id and are dropped.
    confirmed: bool,
    queued_messages: u32,
    queued_bytes: u64,
}

/// A delivery report for one subscription: messages and payload bytes written.
struct WrittenReport {
    sub_id: u32,
    owner: u16,
    messages: u32,
    bytes: u64,
}

impl Connection {
    fn new(addr: ConnAddr, peer: SocketAddr) -> Self {
        Connection {
            addr,
            peer,
            output: RefCell::new(BytesMut::with_capacity(READ_CHUNK)),
            output_ready: Notify::default(),
            output_drained: Notify::default(),
            subscriptions: RefCell::new(HashMap::new()),
            unreported: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            close_requested: Notify::default(),
            bad_frames: Cell::new(0),
            last_topic: RefCell::new(None),
        }
    }

    /// Validates a publish's topic and finds its owner, or sends INVALID_TOPIC.
    fn resolve_topic(
        &self,
        core: &Core,
        raw: &Bytes,
        request_id: u64,
    ) -> Option<(TopicName, usize)> {
        if let Some((topic, owner)) = &*self.last_topic.borrow()
            && topic.as_bytes()[..] == raw[..]
        {
            return Some((topic.clone(), *owner));
        }
        match TopicName::new(Bytes::copy_from_slice(raw)) {
            Ok(topic) => {
                let owner = shard_for(topic.as_bytes(), core.shards);
                *self.last_topic.borrow_mut() = Some((topic.clone(), owner));
                Some((topic, owner))
            }
            Err(err) => {
                self.reject_input(ErrorCode::InvalidTopic, request_id, err.to_string());
                None
            }
        }
    }

    /// Asks the reader to stop; the writer then flushes what is queued and closes.
    pub fn request_close(&self) {
        self.close_requested.notify();
    }

    /// Encodes an event from shard `source_shard` into the output.
    pub fn deliver(&self, event: Event, source_shard: u16) {
        if self.closed.get() {
            return;
        }
        match event {
            Event::Message {
                sub_id,
                seq,
                timestamp,
                delivery_count,
                payload,
            } => {
                if self.output.borrow().len() > OUTPUT_HARD_LIMIT {
                    self.close_slow_consumer();
                    return;
                }
                let mut subscriptions = self.subscriptions.borrow_mut();
                let Some(state) = subscriptions.get_mut(&sub_id) else {
                    return;
                };
                if !state.confirmed || state.owner != source_shard {
                    return;
                }
                let mut output = self.output.borrow_mut();
                protocol::encode_message(
                    &mut output,
                    sub_id,
                    seq,
                    timestamp,
                    delivery_count,
                    &payload,
                );
                if state.queued_messages == 0 {
                    self.unreported.borrow_mut().push(sub_id);
                }
                state.queued_messages += 1;
                state.queued_bytes += payload.len() as u64;
            }
            Event::Gap {
                sub_id,
                first,
                last,
            } => {
                let accepted = self
                    .subscriptions
                    .borrow()
                    .get(&sub_id)
                    .is_some_and(|s| s.confirmed && s.owner == source_shard);
                if accepted {
                    self.queue_frame(&Frame::Gap {
                        sub_id,
                        first,
                        last,
                    });
                }
            }
            Event::Subscribed { sub_id, next_seq } => {
                if let Some(state) = self.subscriptions.borrow_mut().get_mut(&sub_id)
                    && state.owner == source_shard
                {
                    state.confirmed = true;
                }
                self.queue_frame(&Frame::Subscribed { sub_id, next_seq });
            }
            Event::SubscribeFailed {
                sub_id,
                code,
                message,
            } => {
                let mut subscriptions = self.subscriptions.borrow_mut();
                if subscriptions
                    .get(&sub_id)
                    .is_some_and(|s| !s.confirmed && s.owner == source_shard)
                {
                    subscriptions.remove(&sub_id);
                }
                drop(subscriptions);
                tracing::debug!(conn = self.addr.conn, sub_id, %code, %message, "subscribe rejected");
                self.queue_error(code, sub_id as u64, message);
            }
            Event::Published {
                request_id,
                seq,
                timestamp,
            } => self.queue_frame(&Frame::Published {
                request_id,
                seq,
                timestamp,
            }),
            Event::Unsubscribed { sub_id } => self.queue_frame(&Frame::Unsubscribed { sub_id }),
            Event::Error {
                code,
                reference,
                message,
            } => {
                tracing::debug!(conn = self.addr.conn, %code, reference, %message, "request rejected");
                self.queue_error(code, reference, message);
            }
        }
        self.output_ready.notify();
    }

    /// Drops the queued output, which holds only whole frames, queues an error frame in
    /// its place and closes the connection.
    fn close_slow_consumer(&self) {
        let queued = {
            let mut output = self.output.borrow_mut();
            let queued = output.len();
            output.clear();
            queued
        };
        tracing::warn!(
            conn = self.addr.conn,
            peer = %self.peer,
            queued_bytes = queued,
            "closing slow consumer: output above {OUTPUT_HARD_LIMIT} bytes"
        );
        self.queue_error(
            ErrorCode::SlowConsumer,
            0,
            format!(
                "the connection fell {queued} bytes behind (limit {OUTPUT_HARD_LIMIT}); \
                 read faster or spread subscriptions over more connections"
            ),
        );
        self.closed.set(true);
        self.request_close();
    }

    fn queue_frame(&self, frame: &Frame) {
        frame.encode(&mut self.output.borrow_mut());
        self.output_ready.notify();
    }

    fn queue_error(&self, code: ErrorCode, reference: u64, message: String) {
        self.queue_frame(&Frame::Error {
            code,
            reference,
            message: Bytes::from(message),
        });
    }

    /// Sends an error frame for bad client input and logs it, at `warn` for the first few
    /// per connection.
    fn reject_input(&self, code: ErrorCode, reference: u64, message: String) {
        let count = self.bad_frames.get() + 1;
        self.bad_frames.set(count);
        if count <= LOGGED_BAD_FRAMES {
            tracing::warn!(conn = self.addr.conn, peer = %self.peer, %code, reference, %message, "bad input from client");
        } else {
            tracing::debug!(conn = self.addr.conn, peer = %self.peer, %code, reference, %message, "bad input from client");
        }
        self.queue_error(code, reference, message);
    }

    /// Moves the delivery counts of everything now in `output` into `reports`.
    fn take_reports(&self, reports: &mut Vec<WrittenReport>) {
        let mut subscriptions = self.subscriptions.borrow_mut();
        for sub_id in self.unreported.borrow_mut().drain(..) {
            if let Some(state) = subscriptions.get_mut(&sub_id) {
                reports.push(WrittenReport {
                    sub_id,
                    owner: state.owner,
                    messages: std::mem::take(&mut state.queued_messages),
                    bytes: std::mem::take(&mut state.queued_bytes),
                });
            }
        }
    }
}

/// Serves one accepted connection until it closes.
pub async fn serve(core: Rc<Core>, stream: TcpStream) {
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(err) => {
            tracing::debug!(error = %err, "connection closed before it could be served");
            return;
        }
    };
    if let Err(err) = stream.set_nodelay(true) {
        tracing::warn!(%peer, error = %err, "cannot set TCP_NODELAY");
    }
    if let Err(err) = stream.set_write_timeout(Some(WRITE_TIMEOUT)) {
        tracing::warn!(%peer, error = %err, "cannot set the write timeout");
    }
    let connection = core.add_connection(|addr| Rc::new(Connection::new(addr, peer)));
    let conn = connection.addr.conn;
    tracing::debug!(shard = core.id, conn, %peer, "connection opened");

    let (reader, writer) = runtime::split(stream);
    let writer = runtime::spawn_joinable(run_writer(core.clone(), connection.clone(), writer));
    let reason = run_reader(&core, &connection, reader).await;

    let subscriptions: Vec<(u32, SubscriptionState)> =
        connection.subscriptions.borrow_mut().drain().collect();
    for (sub_id, state) in subscriptions {
        core.submit(
            state.owner as usize,
            Request::Detach {
                from: connection.addr,
                sub_id,
            },
        );
    }
    connection.closed.set(true);
    connection.output_ready.notify();
    // The connection stays registered until its writer has flushed, so that shutdown
    // waits for the flush.
    writer.await;
    core.remove_connection(conn);
    let bad_frames = connection.bad_frames.get();
    tracing::debug!(shard = core.id, conn, %peer, reason, bad_frames, "connection closed");
}

/// Reads and handles frames until the client leaves, framing is lost or the broker
/// stops; returns why it ended.
async fn run_reader(core: &Core, connection: &Connection, mut reader: ReadHalf) -> &'static str {
    let mut decoder = Decoder::new(core.limits.max_payload);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut handshake_done = false;
    let handshake_deadline = std::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        // Back-pressure: stop reading while this connection's output or this executor's
        // outboxes are over their limits.
        while connection.output.borrow().len() > OUTPUT_HIGH_WATER || core.outboxes_full() {
            let drained = connection.output_drained.listen();
            let space = core.outbox_space.listen();
            let stop = connection.close_requested.listen();
            if core.is_stopping() || connection.closed.get() {
                return "broker stopping";
            }
            future::or(future::or(drained, space), stop).await;
        }

        let start = buffer.len();
        buffer.resize(start + READ_CHUNK, 0);
        // Shutdown reaches readers through `request_close`; `is_stopping` covers a
        // connection accepted just before shutdown began.
        let stop = connection.close_requested.listen();
        if core.is_stopping() || connection.closed.get() {
            return "broker stopping";
        }
        let read = async { Some(reader.read(&mut buffer[start..]).await) };
        let stopped = async {
            stop.await;
            None
        };
        let timeout = async {
            if handshake_done {
                future::pending::<()>().await;
            }
            runtime::sleep(handshake_deadline.saturating_duration_since(std::time::Instant::now()))
                .await;
            Some(Err(std::io::ErrorKind::TimedOut.into()))
        };
        let result = future::or(future::or(read, stopped), timeout).await;
        let read = match result {
            None => {
                buffer.truncate(start);
                return "broker stopping";
            }
            Some(Ok(0)) => return "closed by client",
            Some(Ok(n)) => n,
            Some(Err(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
                connection.reject_input(
                    ErrorCode::HandshakeRequired,
                    0,
                    format!(
                        "no HELLO within {} s of connecting",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ),
                );
                return "handshake timed out";
            }
            Some(Err(err)) => {
                tracing::debug!(conn = connection.addr.conn, error = %err, "read failed");
                return "read failed";
            }
        };
        buffer.truncate(start + read);

        // Every request decoded from this read shares one reading of the clocks.
        let clock = core.freeze_clock();
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    if !handshake_done {
                        if !handshake(core, connection, frame) {
                            return "handshake failed";
                        }
                        handshake_done = true;
                        continue;
                    }
                    handle_frame(core, connection, frame);
                }
                Ok(None) => break,
                Err(err) => {
                    connection.reject_input(err.code, err.reference, err.message);
                    if err.fatal {
                        return "framing lost";
                    }
                    if !handshake_done {
                        return "handshake failed";
                    }
                }
            }
        }

        drop(clock);

        // A socket with data always has more to read, so without this the reader would
        // starve the sender tasks that move its requests to other executors.
        if core.has_queued_outbox() {
            runtime::yield_now().await;
        }
    }
}

/// Replies to the first frame; returns false when it is not a valid `HELLO`.
fn handshake(core: &Core, connection: &Connection, frame: Frame) -> bool {
    match frame {
        Frame::Hello { version } if version == protocol::PROTOCOL_VERSION => {
            connection.queue_frame(&Frame::HelloOk {
                version,
                max_payload: core.limits.max_payload,
                max_frame: protocol::max_frame_for(core.limits.max_payload),
                shards: core.shards as u16,
                ack_timeout_ms: core.limits.ack_timeout.as_millis().min(u32::MAX as u128) as u32,
            });
            true
        }
        Frame::Hello { version } => {
            connection.reject_input(
                ErrorCode::UnsupportedVersion,
                0,
                format!(
                    "protocol version {version} is not supported; this broker speaks version {}",
                    protocol::PROTOCOL_VERSION
                ),
            );
            false
        }
        other => {
            connection.reject_input(
                ErrorCode::HandshakeRequired,
                0,
                format!(
                    "the first frame must be HELLO (type 0x01), got type 0x{:02x}",
                    other.type_code()
                ),
            );
            false
        }
    }
}

/// Handles one frame after the handshake. An error gets an error frame and the
/// connection carries on.
fn handle_frame(core: &Core, connection: &Connection, frame: Frame) {
    let from = connection.addr;
    match frame {
        Frame::Publish {
            request_id,
            topic,
            payload,
        } => {
            let Some((topic, owner)) = connection.resolve_topic(core, &topic, request_id) else {
                return;
            };
            // The one copy of the payload: out of the read buffer into its own allocation,
            // shared from here on by the ring buffer, retry buffers and deliveries.
            let payload = Bytes::copy_from_slice(&payload);
            core.submit(
                owner,
                Request::Publish {
                    from,
                    request_id,
                    topic,
                    payload,
                },
            );
        }
        Frame::Subscribe {
            sub_id,
            topic,
            start,
            ack_mode,
            max_in_flight,
            consumer,
        } => subscribe(
            core,
            connection,
            sub_id,
            topic,
            start,
            ack_mode,
            max_in_flight,
            consumer,
        ),
        Frame::Unsubscribe { sub_id } => {
            let removed = connection.subscriptions.borrow_mut().remove(&sub_id);
            match removed {
                Some(state) => {
                    core.submit(state.owner as usize, Request::Unsubscribe { from, sub_id })
                }
                None => reject_unknown_subscription(connection, sub_id),
            }
        }
        Frame::Ack { sub_id, seq } | Frame::AckUpTo { sub_id, seq } => {
            let cumulative = matches!(frame, Frame::AckUpTo { .. });
            let owner = connection
                .subscriptions
                .borrow()
                .get(&sub_id)
                .map(|s| s.owner);
            let Some(owner) = owner else {
                reject_unknown_subscription(connection, sub_id);
                return;
            };
            let request = if cumulative {
                Request::AckUpTo { from, sub_id, seq }
            } else {
                Request::Ack { from, sub_id, seq }
            };
            core.submit(owner as usize, request);
        }
        Frame::Ping { token } => connection.queue_frame(&Frame::Pong { token }),
        Frame::Hello { .. } => connection.reject_input(
            ErrorCode::InvalidArgument,
            0,
            "HELLO was already received on this connection".into(),
        ),
        other => connection.reject_input(
            ErrorCode::UnknownFrameType,
            0,
            format!(
                "frame type 0x{:02x} is sent only by the broker, not by clients",
                other.type_code()
            ),
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn subscribe(
    core: &Core,
    connection: &Connection,
    sub_id: u32,
    topic: Bytes,
    start: protocol::StartPosition,
    ack_mode: protocol::AckMode,
    max_in_flight: u32,
    consumer: Bytes,
) {
    let reference = sub_id as u64;
    let topic = match TopicName::new(topic) {
        Ok(topic) => topic,
        Err(err) => {
            connection.reject_input(ErrorCode::InvalidTopic, reference, err.to_string());
            return;
        }
    };
    let consumer = if consumer.is_empty() {
        None
    } else {
        match TopicName::new(consumer) {
            Ok(name) => Some(Box::from(name.as_str())),
            Err(err) => {
                let message = format!("consumer name {:?} is invalid: {}", err.name, err.reason);
                connection.reject_input(ErrorCode::InvalidArgument, reference, message);
                return;
            }
        }
    };
    let owner = shard_for(topic.as_bytes(), core.shards);
    {
        let mut subscriptions = connection.subscriptions.borrow_mut();
        if subscriptions.contains_key(&sub_id) {
            drop(subscriptions);
            let message = format!("subscription id {sub_id} is already in use on this connection");
            connection.reject_input(ErrorCode::SubscriptionExists, reference, message);
            return;
        }
        subscriptions.insert(
            sub_id,
            SubscriptionState {
                owner: owner as u16,
                confirmed: false,
                queued_messages: 0,
                queued_bytes: 0,
            },
        );
    }
    core.submit(
        owner,
        Request::Subscribe {
            from: connection.addr,
            sub_id,
            topic,
            start,
            ack_mode,
            max_in_flight,
            consumer,
        },
    );
}

fn reject_unknown_subscription(connection: &Connection, sub_id: u32) {
    connection.reject_input(
        ErrorCode::UnknownSubscription,
        sub_id as u64,
        format!("subscription {sub_id} does not exist on this connection"),
    );
}

/// Writes the connection's output until the connection closes, reporting written
/// deliveries back to their shards after each write.
async fn run_writer(core: Rc<Core>, connection: Rc<Connection>, mut writer: WriteHalf) {
    let mut spare = BytesMut::with_capacity(READ_CHUNK);
    let mut reports = Vec::new();
    loop {
        let ready = connection.output_ready.listen();
        if connection.output.borrow().is_empty() {
            if connection.closed.get() {
                break;
            }
            ready.await;
            continue;
        }
        // Everything encoded since the last write goes out in this one write.
        let buffer = std::mem::replace(&mut *connection.output.borrow_mut(), spare);
        connection.take_reports(&mut reports);
        if let Err(err) = writer.write_all(&buffer).await {
            tracing::debug!(conn = connection.addr.conn, error = %err, "write failed; closing");
            connection.closed.set(true);
            connection.output.borrow_mut().clear();
            connection.request_close();
            break;
        }
        connection.output_drained.notify();
        for report in reports.drain(..) {
            core.submit(
                report.owner as usize,
                Request::Written {
                    from: connection.addr,
                    sub_id: report.sub_id,
                    messages: report.messages,
                    bytes: report.bytes,
                },
            );
        }
        spare = buffer;
        spare.clear();
        if spare.capacity() > KEPT_BUFFER_CAPACITY {
            spare = BytesMut::with_capacity(READ_CHUNK);
        }
    }
    let _ = writer.close().await;
}
