//! Wire protocol: frame types, an encoder and an incremental decoder, with no I/O.
//!
//! Every frame is `len: u32` (little-endian, the number of bytes that follow the length
//! field), then `type: u8`, then the body of that type. All integers are little-endian.
//! `docs/protocol.md` describes every frame; this module is the reference implementation
//! used by both the broker and the client.
//!
//! The decoder checks a frame's declared length against the maximum frame size before it
//! reserves any memory. Each error states whether the byte stream is still in sync, in
//! which case the frame was skipped and the connection can carry on.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// The magic bytes at the start of a `HELLO` body.
pub const MAGIC: [u8; 4] = *b"PSUB";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// The default maximum payload size of one message, in bytes (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024 * 1024;

/// Room in a frame for everything but the payload. The largest header is a
/// `SUBSCRIBE` with a 255-byte topic and a 255-byte consumer name: 531 bytes.
pub const FRAME_HEADROOM: u32 = 1024;

/// A `PUBLISH` frame longer than the maximum frame size but at most this many times that
/// size is skipped without being buffered, and the connection carries on. A longer
/// declared length is treated as lost framing.
pub const DISCARD_FACTOR: u32 = 16;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Returns the maximum frame size, counted after the length prefix, for a payload limit.
pub fn max_frame_for(max_payload: u32) -> u32 {
    max_payload.saturating_add(FRAME_HEADROOM)
}

/// Frame type codes as they appear on the wire.
pub mod frame_type {
    pub const HELLO: u8 = 0x01;
    pub const PING: u8 = 0x02;
    pub const PUBLISH: u8 = 0x03;
    pub const SUBSCRIBE: u8 = 0x04;
    pub const UNSUBSCRIBE: u8 = 0x05;
    pub const ACK: u8 = 0x06;
    pub const ACK_UP_TO: u8 = 0x07;
    pub const HELLO_OK: u8 = 0x81;
    pub const PONG: u8 = 0x82;
    pub const PUBLISHED: u8 = 0x83;
    pub const SUBSCRIBED: u8 = 0x84;
    pub const MESSAGE: u8 = 0x85;
    pub const GAP: u8 = 0x86;
    pub const UNSUBSCRIBED: u8 = 0x87;
    pub const ERROR: u8 = 0x88;
}

/// The start position of a new subscription in its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// Only messages published after the subscription is confirmed.
    New,
    /// The oldest retained message.
    Earliest,
    /// The message with this sequence number.
    Sequence(u64),
    /// The first message with a broker timestamp at or after this many nanoseconds since
    /// the Unix epoch.
    Time(u64),
    /// The last `n` messages.
    Last(u64),
}

impl StartPosition {
    fn encode(self) -> (u8, u64) {
        match self {
            StartPosition::New => (0, 0),
            StartPosition::Earliest => (1, 0),
            StartPosition::Sequence(seq) => (2, seq),
            StartPosition::Time(nanos) => (3, nanos),
            StartPosition::Last(n) => (4, n),
        }
    }

    fn decode(kind: u8, value: u64) -> Option<Self> {
        match kind {
            0 => Some(StartPosition::New),
            1 => Some(StartPosition::Earliest),
            2 => Some(StartPosition::Sequence(value)),
            3 => Some(StartPosition::Time(value)),
            4 => Some(StartPosition::Last(value)),
            _ => None,
        }
    }
}

/// The acknowledgement mode of a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// At-most-once: a message counts as done once it is written to the connection.
    None,
    /// At-least-once: a message stays in the consumer's retry buffer until it is acked.
    Explicit,
}

/// Error codes carried by `ERROR` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The `HELLO` frame had the wrong magic bytes or an unsupported version.
    UnsupportedVersion = 1,
    /// A frame's body does not match its type's layout.
    MalformedFrame = 2,
    /// A frame's declared length exceeds the limit; the connection is closed.
    FrameTooLarge = 3,
    /// The frame type is not known to this broker.
    UnknownFrameType = 4,
    /// The topic name is not 1 to 255 bytes of UTF-8 without whitespace or control
    /// characters.
    InvalidTopic = 5,
    /// The payload exceeds the broker's maximum payload size.
    PayloadTooLarge = 6,
    /// The frame names a subscription id that this connection does not have.
    UnknownSubscription = 7,
    /// An ack names a sequence number that was never delivered to the consumer.
    UnknownSequence = 8,
    /// The durable consumer name is attached to another live connection.
    ConsumerInUse = 9,
    /// The subscription id is already in use on this connection.
    SubscriptionExists = 10,
    /// A frame other than `HELLO` arrived before the handshake.
    HandshakeRequired = 11,
    /// A field has a value outside its allowed range.
    InvalidArgument = 12,
    /// The broker is shutting down.
    ShuttingDown = 13,
    /// The broker failed for a reason of its own.
    Internal = 14,
    /// The connection fell too far behind reading its deliveries and is being closed.
    SlowConsumer = 15,
}

impl ErrorCode {
    /// Maps a wire value to a code; unknown values become `Internal`.
    pub fn from_u16(value: u16) -> Self {
        use ErrorCode::*;
        match value {
            1 => UnsupportedVersion,
            2 => MalformedFrame,
            3 => FrameTooLarge,
            4 => UnknownFrameType,
            5 => InvalidTopic,
            6 => PayloadTooLarge,
            7 => UnknownSubscription,
            8 => UnknownSequence,
            9 => ConsumerInUse,
            10 => SubscriptionExists,
            11 => HandshakeRequired,
            12 => InvalidArgument,
            13 => ShuttingDown,
            15 => SlowConsumer,
            _ => Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::MalformedFrame => "malformed frame",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnknownFrameType => "unknown frame type",
            ErrorCode::InvalidTopic => "invalid topic",
            ErrorCode::PayloadTooLarge => "payload too large",
            ErrorCode::UnknownSubscription => "unknown subscription",
            ErrorCode::UnknownSequence => "unknown sequence number",
            ErrorCode::ConsumerInUse => "consumer in use",
            ErrorCode::SubscriptionExists => "subscription exists",
            ErrorCode::HandshakeRequired => "handshake required",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::Internal => "internal error",
            ErrorCode::SlowConsumer => "slow consumer",
        };
        f.write_str(name)
    }
}

/// One protocol frame. Byte fields are slices of the decoded buffer, so decoding copies
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → broker, first frame on every connection.
    Hello { version: u16 },
    /// Client → broker. The broker replies with a `Pong` carrying the same token.
    Ping { token: u64 },
    /// Client → broker. A `request_id` of 0 requests no confirmation.
    Publish {
        request_id: u64,
        topic: Bytes,
        payload: Bytes,
    },
    /// Client → broker. `max_in_flight` 0 selects the broker's default.
    Subscribe {
        sub_id: u32,
        topic: Bytes,
        start: StartPosition,
        ack_mode: AckMode,
        max_in_flight: u32,
        consumer: Bytes,
    },
    /// Client → broker.
    Unsubscribe { sub_id: u32 },
    /// Client → broker: acknowledges one sequence number.
    Ack { sub_id: u32, seq: u64 },
    /// Client → broker: acknowledges every delivered sequence number up to `seq`.
    AckUpTo { sub_id: u32, seq: u64 },
    /// Broker → client, the reply to `Hello`.
    HelloOk {
        version: u16,
        max_payload: u32,
        max_frame: u32,
        shards: u16,
        ack_timeout_ms: u32,
    },
    /// Broker → client.
    Pong { token: u64 },
    /// Broker → client: the publish with `request_id` got sequence number `seq`.
    Published {
        request_id: u64,
        seq: u64,
        timestamp: u64,
    },
    /// Broker → client: the owning shard registered the subscription. `next_seq` is the
    /// sequence number it will deliver first (a gap notice may come before it).
    Subscribed { sub_id: u32, next_seq: u64 },
    /// Broker → client: one message. `delivery_count` is 1 on first delivery.
    Message {
        sub_id: u32,
        seq: u64,
        timestamp: u64,
        delivery_count: u32,
        payload: Bytes,
    },
    /// Broker → client: messages `first..=last` were evicted before they could be
    /// delivered to this subscription.
    Gap { sub_id: u32, first: u64, last: u64 },
    /// Broker → client.
    Unsubscribed { sub_id: u32 },
    /// Broker → client. `reference` is the request id, subscription id or ping token the
    /// error is about, or 0.
    Error {
        code: ErrorCode,
        reference: u64,
        message: Bytes,
    },
}

impl Frame {
    /// Returns the wire type code of this frame.
    pub fn type_code(&self) -> u8 {
        use frame_type::*;
        match self {
            Frame::Hello { .. } => HELLO,
            Frame::Ping { .. } => PING,
            Frame::Publish { .. } => PUBLISH,
            Frame::Subscribe { .. } => SUBSCRIBE,
            Frame::Unsubscribe { .. } => UNSUBSCRIBE,
            Frame::Ack { .. } => ACK,
            Frame::AckUpTo { .. } => ACK_UP_TO,
            Frame::HelloOk { .. } => HELLO_OK,
            Frame::Pong { .. } => PONG,
            Frame::Published { .. } => PUBLISHED,
            Frame::Subscribed { .. } => SUBSCRIBED,
            Frame::Message { .. } => MESSAGE,
            Frame::Gap { .. } => GAP,
            Frame::Unsubscribed { .. } => UNSUBSCRIBED,
            Frame::Error { .. } => ERROR,
        }
    }

    /// Appends this frame, length prefix included, to `dst`.
    ///
    /// Topic and consumer names longer than 255 bytes cannot be encoded; callers validate
    /// them first, and this function truncates the length byte rather than panic.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32_le(0);
        dst.put_u8(self.type_code());
        match self {
            Frame::Hello { version } => {
                dst.put_slice(&MAGIC);
                dst.put_u16_le(*version);
            }
            Frame::Ping { token } | Frame::Pong { token } => dst.put_u64_le(*token),
            Frame::Publish {
                request_id,
                topic,
                payload,
            } => {
                dst.put_u64_le(*request_id);
                put_short_bytes(dst, topic);
                dst.put_slice(payload);
            }
            Frame::Subscribe {
                sub_id,
                topic,
                start,
                ack_mode,
                max_in_flight,
                consumer,
            } => {
                let (kind, value) = start.encode();
                dst.put_u32_le(*sub_id);
                dst.put_u8(kind);
                dst.put_u64_le(value);
                dst.put_u8(match ack_mode {
                    AckMode::None => 0,
                    AckMode::Explicit => 1,
                });
                dst.put_u32_le(*max_in_flight);
                put_short_bytes(dst, topic);
                put_short_bytes(dst, consumer);
            }
            Frame::Unsubscribe { sub_id }
            | Frame::Subscribed { sub_id, .. }
            | Frame::Unsubscribed { sub_id } => {
                dst.put_u32_le(*sub_id);
                if let Frame::Subscribed { next_seq, .. } = self {
                    dst.put_u64_le(*next_seq);
                }
            }
            Frame::Ack { sub_id, seq } | Frame::AckUpTo { sub_id, seq } => {
                dst.put_u32_le(*sub_id);
                dst.put_u64_le(*seq);
            }
            Frame::HelloOk {
                version,
                max_payload,
                max_frame,
                shards,
                ack_timeout_ms,
            } => {
                dst.put_u16_le(*version);
                dst.put_u32_le(*max_payload);
                dst.put_u32_le(*max_frame);
                dst.put_u16_le(*shards);
                dst.put_u32_le(*ack_timeout_ms);
            }
            Frame::Published {
                request_id,
                seq,
                timestamp,
            } => {
                dst.put_u64_le(*request_id);
                dst.put_u64_le(*seq);
                dst.put_u64_le(*timestamp);
            }
            Frame::Message {
                sub_id,
                seq,
                timestamp,
                delivery_count,
                payload,
            } => {
                encode_message_body(dst, *sub_id, *seq, *timestamp, *delivery_count, payload);
            }
            Frame::Gap {
                sub_id,
                first,
                last,
            } => {
                dst.put_u32_le(*sub_id);
                dst.put_u64_le(*first);
                dst.put_u64_le(*last);
            }
            Frame::Error {
                code,
                reference,
                message,
            } => {
                dst.put_u16_le(*code as u16);
                dst.put_u64_le(*reference);
                dst.put_slice(message);
            }
        }
        let len = (dst.len() - start - LEN_PREFIX) as u32;
        dst[start..start + LEN_PREFIX].copy_from_slice(&len.to_le_bytes());
    }
}

/// Appends a `MESSAGE` frame without building a [`Frame`] first; this is the delivery hot
/// path, which copies the payload once into the connection's write buffer.
pub fn encode_message(
    dst: &mut BytesMut,
    sub_id: u32,
    seq: u64,
    timestamp: u64,
    delivery_count: u32,
    payload: &[u8],
) {
    let len = 1 + MESSAGE_HEADER_LEN + payload.len();
    dst.reserve(LEN_PREFIX + len);
    dst.put_u32_le(len as u32);
    dst.put_u8(frame_type::MESSAGE);
    encode_message_body(dst, sub_id, seq, timestamp, delivery_count, payload);
}

/// Bytes of a `MESSAGE` body before the payload.
const MESSAGE_HEADER_LEN: usize = 4 + 8 + 8 + 4;

fn encode_message_body(
    dst: &mut BytesMut,
    sub_id: u32,
    seq: u64,
    timestamp: u64,
    delivery_count: u32,
    payload: &[u8],
) {
    dst.put_u32_le(sub_id);
    dst.put_u64_le(seq);
    dst.put_u64_le(timestamp);
    dst.put_u32_le(delivery_count);
    dst.put_slice(payload);
}

fn put_short_bytes(dst: &mut BytesMut, bytes: &[u8]) {
    let len = bytes.len().min(u8::MAX as usize);
    dst.put_u8(len as u8);
    dst.put_slice(&bytes[..len]);
}

/// A decoding failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The error code to report to the peer.
    pub code: ErrorCode,
    /// The request id or subscription id the error is about, when the frame got far
    /// enough to name one, else 0.
    pub reference: u64,
    /// A description of the problem for the peer and the log.
    pub message: String,
    /// True when the byte stream can no longer be split into frames: the caller sends an
    /// error frame and closes the connection.
    pub fatal: bool,
}

impl DecodeError {
    fn skipped(code: ErrorCode, reference: u64, message: String) -> Self {
        DecodeError {
            code,
            reference,
            message,
            fatal: false,
        }
    }

    fn fatal(code: ErrorCode, message: String) -> Self {
        DecodeError {
            code,
            reference: 0,
            message,
            fatal: true,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for DecodeError {}

/// Splits a byte stream into frames.
///
/// Feed it the connection's read buffer; it consumes whole frames from the front and
/// leaves partial ones in place. After a non-fatal error the offending frame has been
/// consumed (or is being skipped) and decoding can go on.
#[derive(Debug)]
pub struct Decoder {
    max_frame: u32,
    max_payload: u32,
    /// Bytes of an oversized frame that are still to be thrown away as they arrive.
    discard_remaining: u64,
}

impl Decoder {
    /// Creates a decoder that accepts payloads of up to `max_payload` bytes.
    pub fn new(max_payload: u32) -> Self {
        Decoder {
            max_frame: max_frame_for(max_payload),
            max_payload,
            discard_remaining: 0,
        }
    }

    /// Returns the largest frame, counted after the length prefix, this decoder accepts.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Returns how many more bytes the buffer needs before the next call can make
    /// progress, as a hint for sizing reads. Never more than one maximum frame.
    pub fn bytes_wanted(&self, buf: &BytesMut) -> usize {
        if self.discard_remaining > 0 {
            return self.discard_remaining.min(self.max_frame as u64) as usize;
        }
        if buf.len() < LEN_PREFIX {
            return LEN_PREFIX - buf.len();
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let total = LEN_PREFIX + len.min(self.max_frame) as usize;
        total.saturating_sub(buf.len())
    }

    /// Decodes the next frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` contains no whole frame yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if self.discard_remaining > 0 {
            let n = (self.discard_remaining as usize).min(buf.len());
            buf.advance(n);
            self.discard_remaining -= n as u64;
            if self.discard_remaining > 0 {
                return Ok(None);
            }
        }
        if buf.len() < LEN_PREFIX + 1 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let kind = buf[4];
        if len == 0 {
            return Err(DecodeError::fatal(
                ErrorCode::MalformedFrame,
                "frame length is 0; every frame needs at least a type byte".into(),
            ));
        }
        if len > self.max_frame {
            return self.reject_oversized(buf, len, kind);
        }
        let total = LEN_PREFIX + len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(LEN_PREFIX + 1);
        decode_body(kind, frame, self.max_payload).map(Some)
    }

    /// Handles a declared length above the maximum frame size. A `PUBLISH` within the
    /// discard limit is skipped as it arrives, so the connection stays usable. Any other
    /// frame this large means the stream cannot be trusted.
    fn reject_oversized(
        &mut self,
        buf: &mut BytesMut,
        len: u32,
        kind: u8,
    ) -> Result<Option<Frame>, DecodeError> {
        let discard_limit = self.max_frame as u64 * DISCARD_FACTOR as u64;
        if kind != frame_type::PUBLISH || len as u64 > discard_limit {
            return Err(DecodeError::fatal(
                ErrorCode::FrameTooLarge,
                format!(
                    "frame of type 0x{kind:02x} declares {len} bytes, above the maximum \
                     frame size of {} bytes; closing the connection",
                    self.max_frame
                ),
            ));
        }
        // The request id follows the type byte; wait for it so the error can name it.
        if buf.len() < LEN_PREFIX + 1 + 8 {
            return Ok(None);
        }
        let request_id = u64::from_le_bytes(buf[5..13].try_into().expect("8 bytes"));
        let total = LEN_PREFIX as u64 + len as u64;
        let available = buf.len() as u64;
        let consumed = available.min(total);
        buf.advance(consumed as usize);
        self.discard_remaining = total - consumed;
        Err(DecodeError::skipped(
            ErrorCode::PayloadTooLarge,
            request_id,
            format!(
                "publish frame of {len} bytes exceeds the maximum payload size of {} bytes; \
                 the message was dropped",
                self.max_payload
            ),
        ))
    }
}

/// Decodes a frame body of type `kind`. Any error here leaves framing intact because the
/// whole frame has already been consumed.
fn decode_body(kind: u8, mut body: Bytes, max_payload: u32) -> Result<Frame, DecodeError> {
    use frame_type::*;
    let malformed = |what: &str| {
        DecodeError::skipped(
            ErrorCode::MalformedFrame,
            0,
            format!("frame of type 0x{kind:02x} is malformed: {what}"),
        )
    };
    let mut reader = BodyReader { body: &mut body };
    let frame = match kind {
        HELLO => {
            let magic = reader.bytes(4).ok_or_else(|| malformed("missing magic"))?;
            if magic[..] != MAGIC {
                // The frame's length was sound, so the stream is still in sync; the
                // connection closes this only when it is the handshake.
                return Err(DecodeError::skipped(
                    ErrorCode::UnsupportedVersion,
                    0,
                    "HELLO does not start with the magic bytes \"PSUB\"; this is not a \
                     pubsub client"
                        .into(),
                ));
            }
            let version = reader.u16().ok_or_else(|| malformed("missing version"))?;
            Frame::Hello { version }
        }
        PING | PONG => {
            let token = reader.u64().ok_or_else(|| malformed("missing token"))?;
            if kind == PING {
                Frame::Ping { token }
            } else {
                Frame::Pong { token }
            }
        }
        PUBLISH => {
            let request_id = reader
                .u64()
                .ok_or_else(|| malformed("missing request id"))?;
            let topic = reader.short_bytes().ok_or_else(|| DecodeError {
                reference: request_id,
                ..malformed("topic length exceeds the frame")
            })?;
            let payload = reader.rest();
            if payload.len() > max_payload as usize {
                return Err(DecodeError::skipped(
                    ErrorCode::PayloadTooLarge,
                    request_id,
                    format!(
                        "payload of {} bytes exceeds the maximum payload size of {max_payload} \
                         bytes; the message was dropped",
                        payload.len()
                    ),
                ));
            }
            Frame::Publish {
                request_id,
                topic,
                payload,
            }
        }
        SUBSCRIBE => decode_subscribe(&mut reader).map_err(&malformed)?,
        UNSUBSCRIBE | UNSUBSCRIBED => {
            let sub_id = reader
                .u32()
                .ok_or_else(|| malformed("missing subscription id"))?;
            if kind == UNSUBSCRIBE {
                Frame::Unsubscribe { sub_id }
            } else {
                Frame::Unsubscribed { sub_id }
            }
        }
        ACK | ACK_UP_TO => {
            let sub_id = reader
                .u32()
                .ok_or_else(|| malformed("missing subscription id"))?;
            let seq = reader
                .u64()
                .ok_or_else(|| malformed("missing sequence number"))?;
            if kind == ACK {
                Frame::Ack { sub_id, seq }
            } else {
                Frame::AckUpTo { sub_id, seq }
            }
        }
        HELLO_OK => Frame::HelloOk {
            version: reader.u16().ok_or_else(|| malformed("missing version"))?,
            max_payload: reader
                .u32()
                .ok_or_else(|| malformed("missing max payload"))?,
            max_frame: reader.u32().ok_or_else(|| malformed("missing max frame"))?,
            shards: reader
                .u16()
                .ok_or_else(|| malformed("missing shard count"))?,
            ack_timeout_ms: reader
                .u32()
                .ok_or_else(|| malformed("missing ack timeout"))?,
        },
        PUBLISHED => Frame::Published {
            request_id: reader
                .u64()
                .ok_or_else(|| malformed("missing request id"))?,
            seq: reader
                .u64()
                .ok_or_else(|| malformed("missing sequence number"))?,
            timestamp: reader.u64().ok_or_else(|| malformed("missing timestamp"))?,
        },
        SUBSCRIBED => Frame::Subscribed {
            sub_id: reader
                .u32()
                .ok_or_else(|| malformed("missing subscription id"))?,
            next_seq: reader
                .u64()
                .ok_or_else(|| malformed("missing sequence number"))?,
        },
        MESSAGE => Frame::Message {
            sub_id: reader
                .u32()
                .ok_or_else(|| malformed("missing subscription id"))?,
            seq: reader
                .u64()
                .ok_or_else(|| malformed("missing sequence number"))?,
            timestamp: reader.u64().ok_or_else(|| malformed("missing timestamp"))?,
            delivery_count: reader
                .u32()
                .ok_or_else(|| malformed("missing delivery count"))?,
            payload: reader.rest(),
        },
        GAP => Frame::Gap {
            sub_id: reader
                .u32()
                .ok_or_else(|| malformed("missing subscription id"))?,
            first: reader
                .u64()
                .ok_or_else(|| malformed("missing first sequence number"))?,
            last: reader
                .u64()
                .ok_or_else(|| malformed("missing last sequence number"))?,
        },
        ERROR => Frame::Error {
            code: ErrorCode::from_u16(reader.u16().ok_or_else(|| malformed("missing code"))?),
            reference: reader.u64().ok_or_else(|| malformed("missing reference"))?,
            message: reader.rest(),
        },
        other => {
            return Err(DecodeError::skipped(
                ErrorCode::UnknownFrameType,
                0,
                format!("unknown frame type 0x{other:02x}; the frame was skipped"),
            ));
        }
    };
    if !reader.body.is_empty() {
        return Err(malformed("trailing bytes after the last field"));
    }
    Ok(frame)
}

fn decode_subscribe(reader: &mut BodyReader<'_>) -> Result<Frame, &'static str> {
    let sub_id = reader.u32().ok_or("missing subscription id")?;
    let start_kind = reader.u8().ok_or("missing start position")?;
    let start_value = reader.u64().ok_or("missing start value")?;
    let ack_mode = match reader.u8().ok_or("missing ack mode")? {
        0 => AckMode::None,
        1 => AckMode::Explicit,
        _ => return Err("ack mode must be 0 (none) or 1 (explicit)"),
    };
    let max_in_flight = reader.u32().ok_or("missing max in-flight")?;
    let topic = reader
        .short_bytes()
        .ok_or("topic length exceeds the frame")?;
    let consumer = reader
        .short_bytes()
        .ok_or("consumer name length exceeds the frame")?;
    let start = StartPosition::decode(start_kind, start_value)
        .ok_or("start position kind must be 0 to 4")?;
    Ok(Frame::Subscribe {
        sub_id,
        topic,
        start,
        ack_mode,
        max_in_flight,
        consumer,
    })
}

/// Reads fixed-size fields from a frame body, returning `None` when the body is too short.
struct BodyReader<'a> {
    body: &'a mut Bytes,
}

impl BodyReader<'_> {
    fn u8(&mut self) -> Option<u8> {
        (self.body.remaining() >= 1).then(|| self.body.get_u8())
    }

    fn u16(&mut self) -> Option<u16> {
        (self.body.remaining() >= 2).then(|| self.body.get_u16_le())
    }

    fn u32(&mut self) -> Option<u32> {
        (self.body.remaining() >= 4).then(|| self.body.get_u32_le())
    }

    fn u64(&mut self) -> Option<u64> {
        (self.body.remaining() >= 8).then(|| self.body.get_u64_le())
    }

    fn bytes(&mut self, len: usize) -> Option<Bytes> {
        (self.body.remaining() >= len).then(|| self.body.split_to(len))
    }

    fn short_bytes(&mut self) -> Option<Bytes> {
        let len = self.u8()? as usize;
        self.bytes(len)
    }

    fn rest(&mut self) -> Bytes {
        self.body.split_off(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: &Frame) -> Frame {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        let decoded = decoder.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
        decoded
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let mut full = BytesMut::new();
        Frame::Ping { token: 7 }.encode(&mut full);
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(decoder.decode(&mut part).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn zero_length_is_fatal() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 1][..]);
        let err = Decoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(err.fatal);
        assert_eq!(err.code, ErrorCode::MalformedFrame);
    }

    #[test]
    fn huge_non_publish_is_fatal() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(u32::MAX);
        buf.put_u8(frame_type::SUBSCRIBE);
        let err = Decoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(err.fatal);
        assert_eq!(err.code, ErrorCode::FrameTooLarge);
    }

    #[test]
    fn oversized_publish_is_skipped() {
        let mut decoder = Decoder::new(16);
        let mut buf = BytesMut::new();
        Frame::Publish {
            request_id: 9,
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from(vec![b'x'; 4000]),
        }
        .encode(&mut buf);
        Frame::Ping { token: 3 }.encode(&mut buf);

        // Feed the bytes in small pieces, as a socket would.
        let mut stream = BytesMut::new();
        let mut errors = Vec::new();
        let mut frames = Vec::new();
        for chunk in buf.chunks(100) {
            stream.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut stream) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => break,
                    Err(err) => errors.push(err),
                }
            }
        }
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].code, ErrorCode::PayloadTooLarge);
        assert_eq!(errors[0].reference, 9);
        assert!(!errors[0].fatal);
        assert_eq!(frames, vec![Frame::Ping { token: 3 }]);
    }

    #[test]
    fn payload_over_limit_within_frame_is_skipped() {
        let mut decoder = Decoder::new(16);
        let mut buf = BytesMut::new();
        Frame::Publish {
            request_id: 4,
            topic: Bytes::from_static(b"t"),
            payload: Bytes::from(vec![b'x'; 17]),
        }
        .encode(&mut buf);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err.code, ErrorCode::PayloadTooLarge);
        assert_eq!(err.reference, 4);
        assert!(!err.fatal);
        assert!(buf.is_empty());
    }

    #[test]
    fn unknown_type_is_skipped() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(3);
        buf.put_u8(0x42);
        buf.put_u16_le(0);
        Frame::Ping { token: 1 }.encode(&mut buf);
        let mut decoder = Decoder::new(1024);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownFrameType);
        assert!(!err.fatal);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Frame::Ping { token: 1 })
        );
    }

    #[test]
    fn truncated_body_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1 + 4);
        buf.put_u8(frame_type::ACK);
        buf.put_u32_le(1);
        let err = Decoder::new(1024).decode(&mut buf).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedFrame);
        assert!(!err.fatal);
    }

    #[test]
    fn topic_length_past_body_is_malformed() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1 + 8 + 1 + 2);
        buf.put_u8(frame_type::PUBLISH);
        buf.put_u64_le(0);
        buf.put_u8(200);
        buf.put_slice(b"ab");
        let err = Decoder::new(1024).decode(&mut buf).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedFrame);
        assert!(!err.fatal);
    }

    #[test]
    fn malformed_publish_names_request_id() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1 + 8 + 1);
        buf.put_u8(frame_type::PUBLISH);
        buf.put_u64_le(77);
        buf.put_u8(5);
        let err = Decoder::new(1024).decode(&mut buf).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedFrame);
        assert_eq!(err.reference, 77);
    }

    #[test]
    fn bad_magic_keeps_framing() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(1 + 6);
        buf.put_u8(frame_type::HELLO);
        buf.put_slice(b"HTTP");
        buf.put_u16_le(1);
        let err = Decoder::new(1024).decode(&mut buf).unwrap_err();
        assert!(
            !err.fatal,
            "the length was sound, so the next frame can be read"
        );
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert!(buf.is_empty());
    }

    #[test]
    fn encode_message_matches_frame() {
        let mut direct = BytesMut::new();
        encode_message(&mut direct, 3, 10, 20, 2, b"hi");
        let mut via_frame = BytesMut::new();
        Frame::Message {
            sub_id: 3,
            seq: 10,
            timestamp: 20,
            delivery_count: 2,
            payload: Bytes::from_static(b"hi"),
        }
        .encode(&mut via_frame);
        assert_eq!(direct, via_frame);
    }

    fn short_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..=255).prop_map(Bytes::from)
    }

    fn payload() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from)
    }

    fn start_position() -> impl Strategy<Value = StartPosition> {
        prop_oneof![
            Just(StartPosition::New),
            Just(StartPosition::Earliest),
            any::<u64>().prop_map(StartPosition::Sequence),
            any::<u64>().prop_map(StartPosition::Time),
            any::<u64>().prop_map(StartPosition::Last),
        ]
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        (1u16..=15).prop_map(ErrorCode::from_u16)
    }

    fn any_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            any::<u16>().prop_map(|version| Frame::Hello { version }),
            any::<u64>().prop_map(|token| Frame::Ping { token }),
            any::<u64>().prop_map(|token| Frame::Pong { token }),
            (any::<u64>(), short_bytes(), payload()).prop_map(|(request_id, topic, payload)| {
                Frame::Publish {
                    request_id,
                    topic,
                    payload,
                }
            }),
            (
                any::<u32>(),
                short_bytes(),
                start_position(),
                any::<bool>(),
                any::<u32>(),
                short_bytes()
            )
                .prop_map(
                    |(sub_id, topic, start, explicit, max_in_flight, consumer)| {
                        Frame::Subscribe {
                            sub_id,
                            topic,
                            start,
                            ack_mode: if explicit {
                                AckMode::Explicit
                            } else {
                                AckMode::None
                            },
                            max_in_flight,
                            consumer,
                        }
                    }
                ),
            any::<u32>().prop_map(|sub_id| Frame::Unsubscribe { sub_id }),
            any::<u32>().prop_map(|sub_id| Frame::Unsubscribed { sub_id }),
            (any::<u32>(), any::<u64>()).prop_map(|(sub_id, seq)| Frame::Ack { sub_id, seq }),
            (any::<u32>(), any::<u64>()).prop_map(|(sub_id, seq)| Frame::AckUpTo { sub_id, seq }),
            (
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u16>(),
                any::<u32>()
            )
                .prop_map(
                    |(version, max_payload, max_frame, shards, ack_timeout_ms)| Frame::HelloOk {
                        version,
                        max_payload,
                        max_frame,
                        shards,
                        ack_timeout_ms,
                    }
                ),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(request_id, seq, timestamp)| {
                Frame::Published {
                    request_id,
                    seq,
                    timestamp,
                }
            }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(sub_id, next_seq)| Frame::Subscribed { sub_id, next_seq }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                payload()
            )
                .prop_map(|(sub_id, seq, timestamp, delivery_count, payload)| {
                    Frame::Message {
                        sub_id,
                        seq,
                        timestamp,
                        delivery_count,
                        payload,
                    }
                }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(sub_id, first, last)| {
                Frame::Gap {
                    sub_id,
                    first,
                    last,
                }
            }),
            (error_code(), any::<u64>(), payload()).prop_map(|(code, reference, message)| {
                Frame::Error {
                    code,
                    reference,
                    message,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_frame_round_trips(frame in any_frame()) {
            prop_assert_eq!(round_trip(&frame), frame);
        }

        #[test]
        fn stream_of_frames_round_trips_in_any_chunking(
            frames in proptest::collection::vec(any_frame(), 1..20),
            chunk in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                frame.encode(&mut wire);
            }
            let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
            let mut stream = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                stream.extend_from_slice(piece);
                while let Some(frame) = decoder.decode(&mut stream).unwrap() {
                    decoded.push(frame);
                }
            }
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut decoder = Decoder::new(256);
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(err) if err.fatal => break,
                    Err(_) => {}
                }
            }
        }
    }
}
