//! One shard's state and logic: its topics, their ring buffers, the consumers reading
//! them and the consumers' retry buffers.
//!
//! A [`Shard`] does no I/O and does not depend on executors. The server feeds it
//! [`Request`]s from connections on any core and routes the [`Event`]s it emits to the
//! connection each one names. Only the executor that owns the shard touches it, so
//! nothing here is locked or shared across threads.
//!
//! Every consumer reads its topic's ring buffer through a cursor. Delivery is paced by two
//! limits: a window of messages on their way to the socket, returned by
//! [`Request::Written`], and, with explicit acks, the consumer's maximum number of unacked
//! messages. A consumer held back by either stays behind in the ring buffer and, if the
//! messages it still needs are evicted, gets a gap notice instead of unbounded buffering.

pub mod retry;
pub mod ring;

use crate::protocol::{AckMode, ErrorCode, StartPosition};
use crate::topic::TopicName;
use bytes::Bytes;
use retry::RetryBuffer;
use ring::{Retention, RingBuffer, StoredMessage};
// foldhash 0.2 seeds every map from a random per-process and per-map seed, so clients
// cannot precompute colliding topic names or subscription ids. Its authors claim only
// minimal resistance to hash flooding, weaker than SipHash's, in exchange for speed.
use foldhash::{HashMap, HashMapExt};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A connection's address: the core that serves it and its id on that core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnAddr {
    pub core: u16,
    pub conn: u64,
}

/// A request from a connection to the shard that owns a topic.
#[derive(Debug)]
pub enum Request {
    /// Appends a message. A `request_id` of 0 requests no confirmation.
    Publish {
        from: ConnAddr,
        request_id: u64,
        topic: TopicName,
        payload: Bytes,
    },
    /// Registers a subscription, creating or re-attaching a consumer.
    Subscribe {
        from: ConnAddr,
        sub_id: u32,
        topic: TopicName,
        start: StartPosition,
        ack_mode: AckMode,
        max_in_flight: u32,
        consumer: Option<Box<str>>,
    },
    /// Ends a subscription and deletes its consumer, durable or not.
    Unsubscribe { from: ConnAddr, sub_id: u32 },
    /// The connection closed: durable consumers are kept for the idle timeout.
    Detach { from: ConnAddr, sub_id: u32 },
    /// Acknowledges one sequence number.
    Ack {
        from: ConnAddr,
        sub_id: u32,
        seq: u64,
    },
    /// Acknowledges every delivered sequence number up to `seq`.
    AckUpTo {
        from: ConnAddr,
        sub_id: u32,
        seq: u64,
    },
    /// The connection wrote this many delivered messages and payload bytes to its
    /// socket, which reopens the subscription's delivery window.
    Written {
        from: ConnAddr,
        sub_id: u32,
        messages: u32,
        bytes: u64,
    },
}

impl Request {
    /// Returns the connection the request came from.
    pub fn from(&self) -> ConnAddr {
        match self {
            Request::Publish { from, .. }
            | Request::Subscribe { from, .. }
            | Request::Unsubscribe { from, .. }
            | Request::Detach { from, .. }
            | Request::Ack { from, .. }
            | Request::AckUpTo { from, .. }
            | Request::Written { from, .. } => *from,
        }
    }
}

/// Something a shard sends to one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Published {
        request_id: u64,
        seq: u64,
        timestamp: u64,
    },
    Subscribed {
        sub_id: u32,
        next_seq: u64,
    },
    /// The subscription was not registered, so the connection removes `sub_id`.
    SubscribeFailed {
        sub_id: u32,
        code: ErrorCode,
        message: String,
    },
    Message {
        sub_id: u32,
        seq: u64,
        timestamp: u64,
        delivery_count: u32,
        payload: Bytes,
    },
    Gap {
        sub_id: u32,
        first: u64,
        last: u64,
    },
    Unsubscribed {
        sub_id: u32,
    },
    Error {
        code: ErrorCode,
        reference: u64,
        message: String,
    },
}

/// Events produced by one call into a shard, each with the connection it goes to, in
/// the order they must be delivered.
pub type Output = Vec<(ConnAddr, Event)>;

/// Per-shard settings, shared by every topic and consumer of the shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub retention: Retention,
    /// Time a delivered message may stay unacked before it is redelivered.
    pub ack_timeout: Duration,
    /// Default and upper bound of a consumer's unacked messages.
    pub max_in_flight: u32,
    /// Maximum payload bytes of a consumer's unacked messages. One message is always
    /// allowed, so a payload larger than this still gets delivered.
    pub max_in_flight_bytes: usize,
    /// Time a durable consumer outlives its connection.
    pub consumer_idle_timeout: Duration,
    /// Maximum messages per subscription sent to a connection and not yet written.
    pub window_messages: u32,
    /// Maximum payload bytes per subscription sent to a connection and not yet written.
    pub window_bytes: u64,
}

/// Counts that describe a shard's contents, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    pub topics: usize,
    pub consumers: usize,
    pub retained_messages: usize,
    pub retained_bytes: usize,
    pub unacked_messages: usize,
}

/// The topics owned by one shard.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    topics: HashMap<Rc<str>, Topic>,
    /// Live subscriptions by connection and subscription id.
    subscriptions: HashMap<(ConnAddr, u32), (Rc<str>, u64)>,
    next_consumer_id: u64,
}

#[derive(Debug, Default)]
struct Topic {
    ring: RingBuffer,
    consumers: HashMap<u64, Consumer>,
    durable: HashMap<Box<str>, u64>,
    last_timestamp: u64,
}

#[derive(Debug)]
struct Consumer {
    name: Option<Box<str>>,
    /// The live subscription, or `None` for a durable consumer whose connection closed.
    attached: Option<(ConnAddr, u32)>,
    detached_at: Option<Instant>,
    ack_mode: AckMode,
    max_in_flight: u32,
    /// Sequence number of the next message to take from the ring buffer.
    cursor: u64,
    /// The cursor when the consumer was created; nothing below it was delivered.
    start_seq: u64,
    /// Messages with an older timestamp are skipped: the `time:T` start, for messages
    /// published after the subscription but stamped before T. 0 for other starts.
    min_timestamp: u64,
    retry: RetryBuffer,
    /// Unacked sequence numbers waiting to be sent again.
    redeliver: VecDeque<u64>,
    window_messages: u32,
    window_bytes: u64,
}

impl Shard {
    /// Creates an empty shard.
    pub fn new(config: ShardConfig) -> Self {
        Shard {
            config,
            topics: HashMap::new(),
            subscriptions: HashMap::new(),
            next_consumer_id: 1,
        }
    }

    /// Returns the shard's settings.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// Handles one request at monotonic time `now` and wall-clock time `wall_nanos`
    /// (nanoseconds since the Unix epoch), appending the resulting events to `out`.
    pub fn handle(&mut self, request: Request, now: Instant, wall_nanos: u64, out: &mut Output) {
        match request {
            Request::Publish {
                from,
                request_id,
                topic,
                payload,
            } => self.publish(from, request_id, &topic, payload, now, wall_nanos, out),
            Request::Subscribe {
                from,
                sub_id,
                topic,
                start,
                ack_mode,
                max_in_flight,
                consumer,
            } => {
                let spec = SubscribeSpec {
                    start,
                    ack_mode,
                    max_in_flight,
                    consumer,
                };
                self.subscribe(from, sub_id, &topic, spec, now, out)
            }
            Request::Unsubscribe { from, sub_id } => self.unsubscribe(from, sub_id, out),
            Request::Detach { from, sub_id } => self.detach(from, sub_id, now),
            Request::Ack { from, sub_id, seq } => self.ack(from, sub_id, seq, false, now, out),
            Request::AckUpTo { from, sub_id, seq } => self.ack(from, sub_id, seq, true, now, out),
            Request::Written {
                from,
                sub_id,
                messages,
                bytes,
            } => self.written(from, sub_id, messages, bytes, now, out),
        }
    }

    /// Runs the periodic work: evicts expired messages, redelivers messages whose ack
    /// timeout passed and drops durable consumers idle for longer than their timeout.
    pub fn tick(&mut self, now: Instant, wall_nanos: u64, out: &mut Output) {
        let config = &self.config;
        for topic in self.topics.values_mut() {
            topic
                .ring
                .evict_expired(wall_nanos, config.retention.max_age);
            let mut expired_durable = Vec::new();
            for (&id, consumer) in topic.consumers.iter_mut() {
                if consumer.attached.is_none() {
                    let idle_since = consumer.detached_at.unwrap_or(now);
                    if now.saturating_duration_since(idle_since) >= config.consumer_idle_timeout {
                        expired_durable.push(id);
                    }
                    continue;
                }
                let waiting = consumer.redeliver.len();
                consumer.retry.take_expired(now, &mut consumer.redeliver);
                consumer.retry.compact();
                if consumer.redeliver.len() > waiting {
                    consumer.pump(&topic.ring, config, now, out);
                }
            }
            for id in expired_durable {
                if let Some(consumer) = topic.consumers.remove(&id)
                    && let Some(name) = &consumer.name
                {
                    topic.durable.remove(name);
                    tracing::info!(
                        consumer = %name,
                        unacked = consumer.retry.len(),
                        "durable consumer dropped after its idle timeout"
                    );
                }
            }
        }
    }

    /// Returns counts of what the shard holds.
    pub fn stats(&self) -> ShardStats {
        let mut stats = ShardStats {
            topics: self.topics.len(),
            ..ShardStats::default()
        };
        for topic in self.topics.values() {
            stats.consumers += topic.consumers.len();
            stats.retained_messages += topic.ring.len();
            stats.retained_bytes += topic.ring.bytes();
            stats.unacked_messages += topic
                .consumers
                .values()
                .map(|c| c.retry.len())
                .sum::<usize>();
        }
        stats
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        from: ConnAddr,
        request_id: u64,
        name: &TopicName,
        payload: Bytes,
        now: Instant,
        wall_nanos: u64,
        out: &mut Output,
    ) {
        if !self.topics.contains_key(name.as_str()) {
            self.topic_key(name);
        }
        let Some(topic) = self.topics.get_mut(name.as_str()) else {
            return;
        };
        let timestamp = wall_nanos.max(topic.last_timestamp);
        topic.last_timestamp = timestamp;
        let message = StoredMessage { timestamp, payload };
        let seq = topic.ring.push(message, &self.config.retention);
        if request_id != 0 {
            out.push((
                from,
                Event::Published {
                    request_id,
                    seq,
                    timestamp,
                },
            ));
        }
        for consumer in topic.consumers.values_mut() {
            consumer.pump(&topic.ring, &self.config, now, out);
        }
    }

    fn subscribe(
        &mut self,
        from: ConnAddr,
        sub_id: u32,
        name: &TopicName,
        spec: SubscribeSpec,
        now: Instant,
        out: &mut Output,
    ) {
        let fail = |code, message: String| {
            (
                from,
                Event::SubscribeFailed {
                    sub_id,
                    code,
                    message,
                },
            )
        };
        if self.subscriptions.contains_key(&(from, sub_id)) {
            let message = format!("subscription id {sub_id} is already in use on this connection");
            out.push(fail(ErrorCode::SubscriptionExists, message));
            return;
        }
        let max_in_flight = match spec.max_in_flight {
            0 => self.config.max_in_flight,
            n => n.min(self.config.max_in_flight),
        };
        let key = self.topic_key(name);
        let topic = self
            .topics
            .get_mut(&key)
            .expect("topic_key inserted the topic");

        let existing = spec
            .consumer
            .as_ref()
            .and_then(|n| topic.durable.get(n).copied());
        let consumer_id = match existing {
            Some(id) => {
                let consumer = topic
                    .consumers
                    .get_mut(&id)
                    .expect("durable index is in sync");
                if let Err((code, message)) = consumer.reattach(from, sub_id, &spec, name) {
                    out.push(fail(code, message));
                    return;
                }
                consumer.max_in_flight = max_in_flight;
                tracing::debug!(
                    topic = %name, consumer = ?consumer.name, sub_id, conn = from.conn,
                    unacked = consumer.retry.len(), "durable consumer re-attached"
                );
                id
            }
            None => {
                let id = self.next_consumer_id;
                self.next_consumer_id += 1;
                let cursor = resolve_start(&topic.ring, spec.start);
                let consumer = Consumer {
                    name: spec.consumer.clone(),
                    attached: Some((from, sub_id)),
                    detached_at: None,
                    ack_mode: spec.ack_mode,
                    max_in_flight,
                    cursor,
                    start_seq: cursor,
                    min_timestamp: match spec.start {
                        StartPosition::Time(nanos) => nanos,
                        _ => 0,
                    },
                    retry: RetryBuffer::default(),
                    redeliver: VecDeque::new(),
                    window_messages: 0,
                    window_bytes: 0,
                };
                if let Some(consumer_name) = &spec.consumer {
                    topic.durable.insert(consumer_name.clone(), id);
                }
                topic.consumers.insert(id, consumer);
                id
            }
        };
        self.subscriptions
            .insert((from, sub_id), (key.clone(), consumer_id));

        let consumer = topic
            .consumers
            .get_mut(&consumer_id)
            .expect("just inserted");
        let next_seq = consumer.cursor.max(topic.ring.first_seq());
        out.push((from, Event::Subscribed { sub_id, next_seq }));
        consumer.pump(&topic.ring, &self.config, now, out);
    }

    fn unsubscribe(&mut self, from: ConnAddr, sub_id: u32, out: &mut Output) {
        let Some((key, consumer_id)) = self.subscriptions.remove(&(from, sub_id)) else {
            out.push((from, unknown_subscription(sub_id)));
            return;
        };
        if let Some(topic) = self.topics.get_mut(&key)
            && let Some(consumer) = topic.consumers.remove(&consumer_id)
            && let Some(name) = consumer.name
        {
            topic.durable.remove(&name);
        }
        out.push((from, Event::Unsubscribed { sub_id }));
    }

    fn detach(&mut self, from: ConnAddr, sub_id: u32, now: Instant) {
        let Some((key, consumer_id)) = self.subscriptions.remove(&(from, sub_id)) else {
            return;
        };
        let Some(topic) = self.topics.get_mut(&key) else {
            return;
        };
        let durable = topic
            .consumers
            .get(&consumer_id)
            .is_some_and(|c| c.name.is_some());
        if durable {
            let consumer = topic
                .consumers
                .get_mut(&consumer_id)
                .expect("checked above");
            consumer.attached = None;
            consumer.detached_at = Some(now);
            consumer.redeliver.clear();
            consumer.window_messages = 0;
            consumer.window_bytes = 0;
        } else {
            topic.consumers.remove(&consumer_id);
        }
    }

    fn ack(
        &mut self,
        from: ConnAddr,
        sub_id: u32,
        seq: u64,
        cumulative: bool,
        now: Instant,
        out: &mut Output,
    ) {
        let Some((ring, consumer)) =
            consumer_mut(&mut self.topics, &self.subscriptions, from, sub_id)
        else {
            out.push((from, unknown_subscription(sub_id)));
            return;
        };
        if consumer.ack_mode == AckMode::None {
            let message = format!("subscription {sub_id} uses ack mode none, so it takes no acks");
            out.push((from, error(ErrorCode::InvalidArgument, sub_id, message)));
            return;
        }
        let delivered_below = consumer.cursor;
        if cumulative {
            consumer
                .retry
                .ack_up_to(seq.min(delivered_below.saturating_sub(1)));
        } else {
            consumer.retry.ack(seq);
        }
        // Numbers from the consumer's start up to its cursor were delivered or skipped by a
        // gap notice. Acking one of them again is harmless, so it is ignored.
        if seq < consumer.start_seq || seq >= delivered_below {
            let delivered = if delivered_below > consumer.start_seq {
                format!("{}..={}", consumer.start_seq, delivered_below - 1)
            } else {
                "nothing yet".to_string()
            };
            let message = format!(
                "sequence number {seq} was never delivered to subscription {sub_id}; it has \
                 delivered {delivered}"
            );
            out.push((from, error(ErrorCode::UnknownSequence, sub_id, message)));
        }
        consumer.pump(ring, &self.config, now, out);
    }

    fn written(
        &mut self,
        from: ConnAddr,
        sub_id: u32,
        messages: u32,
        bytes: u64,
        now: Instant,
        out: &mut Output,
    ) {
        // A late report from a connection that has since closed finds nothing, because
        // `Detach` removed its subscription and reset the window.
        let Some((ring, consumer)) =
            consumer_mut(&mut self.topics, &self.subscriptions, from, sub_id)
        else {
            return;
        };
        consumer.window_messages = consumer.window_messages.saturating_sub(messages);
        consumer.window_bytes = consumer.window_bytes.saturating_sub(bytes);
        consumer.pump(ring, &self.config, now, out);
    }

    /// Returns the map key of `name`, creating the topic if it does not exist.
    fn topic_key(&mut self, name: &TopicName) -> Rc<str> {
        if let Some((key, _)) = self.topics.get_key_value(name.as_str()) {
            return key.clone();
        }
        let key: Rc<str> = Rc::from(name.as_str());
        self.topics.insert(key.clone(), Topic::default());
        tracing::debug!(topic = %name, "topic created");
        key
    }
}

/// Finds the consumer behind a live subscription, with its topic's ring buffer.
fn consumer_mut<'a>(
    topics: &'a mut HashMap<Rc<str>, Topic>,
    subscriptions: &HashMap<(ConnAddr, u32), (Rc<str>, u64)>,
    from: ConnAddr,
    sub_id: u32,
) -> Option<(&'a RingBuffer, &'a mut Consumer)> {
    let (key, consumer_id) = subscriptions.get(&(from, sub_id))?;
    let topic = topics.get_mut(key)?;
    let consumer = topic.consumers.get_mut(consumer_id)?;
    Some((&topic.ring, consumer))
}

/// The consumer-facing fields of a subscribe request.
struct SubscribeSpec {
    start: StartPosition,
    ack_mode: AckMode,
    max_in_flight: u32,
    consumer: Option<Box<str>>,
}

impl Consumer {
    /// Attaches a durable consumer to a new subscription and queues every unacked
    /// message for immediate redelivery.
    fn reattach(
        &mut self,
        from: ConnAddr,
        sub_id: u32,
        spec: &SubscribeSpec,
        topic: &TopicName,
    ) -> Result<(), (ErrorCode, String)> {
        let name = self.name.as_deref().unwrap_or_default();
        if self.attached.is_some() {
            return Err((
                ErrorCode::ConsumerInUse,
                format!(
                    "consumer {name:?} on topic {topic:?} is attached to another live \
                     connection; close that subscription first or pick another name"
                ),
            ));
        }
        if self.ack_mode != spec.ack_mode {
            return Err((
                ErrorCode::InvalidArgument,
                format!(
                    "consumer {name:?} on topic {topic:?} was created with ack mode {}; \
                     subscribe with the same ack mode or pick another name",
                    match self.ack_mode {
                        AckMode::None => "none",
                        AckMode::Explicit => "explicit",
                    }
                ),
            ));
        }
        self.attached = Some((from, sub_id));
        self.detached_at = None;
        self.window_messages = 0;
        self.window_bytes = 0;
        self.redeliver = self.retry.sequence_numbers().collect();
        Ok(())
    }

    fn window_open(&self, config: &ShardConfig) -> bool {
        self.window_messages < config.window_messages && self.window_bytes < config.window_bytes
    }

    fn charge_window(&mut self, payload_len: usize) {
        self.window_messages += 1;
        self.window_bytes += payload_len as u64;
    }

    /// Sends what the consumer may receive now: redeliveries first, then messages from
    /// the ring buffer at its cursor, until the delivery window or the in-flight limit
    /// is full or the consumer has caught up.
    fn pump(&mut self, ring: &RingBuffer, config: &ShardConfig, now: Instant, out: &mut Output) {
        let Some((addr, sub_id)) = self.attached else {
            return;
        };
        let deadline = now + config.ack_timeout;
        while self.window_open(config) {
            let Some(seq) = self.redeliver.pop_front() else {
                break;
            };
            if let Some(entry) = self.retry.redeliver(seq, deadline) {
                let payload = entry.message.payload.clone();
                let event = Event::Message {
                    sub_id,
                    seq,
                    timestamp: entry.message.timestamp,
                    delivery_count: entry.delivery_count,
                    payload,
                };
                let len = entry.message.payload.len();
                out.push((addr, event));
                self.charge_window(len);
            }
        }
        if !self.redeliver.is_empty() {
            return;
        }
        let explicit = self.ack_mode == AckMode::Explicit;
        while self.window_open(config) && self.cursor < ring.next_seq() {
            if explicit
                && !self.retry.is_empty()
                && (self.retry.len() >= self.max_in_flight as usize
                    || self.retry.bytes() >= config.max_in_flight_bytes)
            {
                break;
            }
            if self.cursor < ring.first_seq() {
                let first = self.cursor;
                let last = ring.first_seq() - 1;
                out.push((
                    addr,
                    Event::Gap {
                        sub_id,
                        first,
                        last,
                    },
                ));
                self.cursor = ring.first_seq();
                continue;
            }
            let Some(message) = ring.get(self.cursor) else {
                break;
            };
            if message.timestamp < self.min_timestamp {
                self.cursor += 1;
                continue;
            }
            let event = Event::Message {
                sub_id,
                seq: self.cursor,
                timestamp: message.timestamp,
                delivery_count: 1,
                payload: message.payload.clone(),
            };
            out.push((addr, event));
            self.charge_window(message.payload.len());
            if explicit {
                self.retry.insert(self.cursor, message.clone(), deadline);
            }
            self.cursor += 1;
        }
    }
}

/// Returns the cursor a new consumer starts at. A cursor below the ring buffer's first
/// sequence number makes the first pump send a gap notice for the evicted range.
fn resolve_start(ring: &RingBuffer, start: StartPosition) -> u64 {
    match start {
        StartPosition::New => ring.next_seq(),
        StartPosition::Earliest => ring.first_seq(),
        StartPosition::Sequence(seq) => seq.max(1),
        StartPosition::Time(nanos) => {
            // Evicted messages keep no timestamps, so when one at or after `nanos` may
            // have been evicted, the gap covers every evicted message.
            if ring.first_seq() > 1 && nanos <= ring.last_evicted_timestamp() {
                1
            } else {
                ring.seq_at_or_after(nanos)
            }
        }
        StartPosition::Last(count) => ring.next_seq().saturating_sub(count).max(1),
    }
}

fn unknown_subscription(sub_id: u32) -> Event {
    error(
        ErrorCode::UnknownSubscription,
        sub_id,
        format!("subscription {sub_id} does not exist on this connection"),
    )
}

fn error(code: ErrorCode, sub_id: u32, message: String) -> Event {
    Event::Error {
        code,
        reference: sub_id as u64,
        message,
    }
}

#[cfg(test)]
mod tests;
