//! pubsub connections. Publishers use the project's [`Client`]; subscribers speak the
//! protocol with [`crate::protocol`] directly, so that with explicit acks every ACK for
//! one read goes out in one write instead of one write per ACK as `Client::ack` does.

use super::{
    Notices, Publisher, ReadBuffer, SubscribeSpec, Subscriber, closed_error, is_timeout, open,
    protocol_error, read_until,
};
use crate::bench::AckArg;
use crate::client::{Client, ClientError};
use crate::protocol::{AckMode, DEFAULT_MAX_PAYLOAD, Decoder, Frame, PROTOCOL_VERSION};
use bytes::{Bytes, BytesMut};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

/// A publisher on the project's blocking client.
pub struct PubsubPublisher {
    client: Client,
}

impl PubsubPublisher {
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        let client = Client::connect(addr).map_err(client_error)?;
        Ok(PubsubPublisher { client })
    }
}

impl Publisher for PubsubPublisher {
    fn queue(&mut self, topic: &str, payload: &[u8]) -> io::Result<()> {
        self.client
            .queue_publish(topic, payload)
            .map_err(client_error)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.client.flush().map_err(client_error)
    }
}

fn client_error(err: ClientError) -> io::Error {
    match err {
        ClientError::Io(err) => err,
        other => io::Error::other(other.to_string()),
    }
}

/// Acks not yet sent for one subscription.
#[derive(Debug, Default, Clone, Copy)]
struct AckState {
    /// Messages received since the last ACK_UP_TO.
    unacked: u32,
    /// Highest sequence number received.
    last_seq: u64,
}

/// A subscriber that decodes frames with [`Decoder`] and batches its acks per read.
pub struct PubsubSubscriber {
    stream: TcpStream,
    input: ReadBuffer,
    frames: BytesMut,
    decoder: Decoder,
    output: BytesMut,
    /// `None` without acks; else 1 (ACK per message) or K (ACK_UP_TO every K).
    ack_every: Option<u32>,
    /// Indexed by subscription id − 1.
    acks: Vec<AckState>,
    notices: Notices,
}

impl PubsubSubscriber {
    /// Connects, sends HELLO and subscribes to every topic in `spec` with subscription
    /// ids 1, 2, …; returns once every SUBSCRIBED has arrived.
    pub fn connect(addr: SocketAddr, spec: &SubscribeSpec) -> io::Result<Self> {
        let stream = open(addr)?;
        let ack_mode = match spec.ack {
            AckArg::None => AckMode::None,
            AckArg::Explicit => AckMode::Explicit,
        };
        let mut subscriber = PubsubSubscriber {
            stream,
            input: ReadBuffer::default(),
            frames: BytesMut::with_capacity(128 * 1024),
            decoder: Decoder::new(DEFAULT_MAX_PAYLOAD),
            output: BytesMut::with_capacity(64 * 1024),
            ack_every: (spec.ack == AckArg::Explicit).then_some(spec.ack_every.max(1)),
            acks: vec![AckState::default(); spec.topics.len()],
            notices: Notices::default(),
        };
        Frame::Hello {
            version: PROTOCOL_VERSION,
        }
        .encode(&mut subscriber.output);
        subscriber.write_output()?;
        let max_payload = subscriber.wait_for("HELLO_OK", |frame| match frame {
            Frame::HelloOk { max_payload, .. } => Ok(Some(*max_payload)),
            _ => Ok(None),
        })?;
        subscriber.decoder = Decoder::new(max_payload);

        for (index, topic) in spec.topics.iter().enumerate() {
            Frame::Subscribe {
                sub_id: index as u32 + 1,
                topic: Bytes::copy_from_slice(topic.as_bytes()),
                start: spec.start,
                ack_mode,
                max_in_flight: spec.max_in_flight,
                consumer: Bytes::new(),
            }
            .encode(&mut subscriber.output);
        }
        subscriber.write_output()?;
        let mut confirmed = 0;
        subscriber.wait_for("SUBSCRIBED", |frame| {
            if let Frame::Subscribed { .. } = frame {
                confirmed += 1;
            }
            Ok((confirmed == spec.topics.len()).then_some(()))
        })?;
        Ok(subscriber)
    }

    /// Reads frames until `accept` returns a value; an ERROR frame fails the wait. Other
    /// frames read meanwhile, messages included, are dropped, so callers start publishing
    /// only after every subscription is confirmed.
    fn wait_for<T>(
        &mut self,
        awaited: &str,
        mut accept: impl FnMut(&Frame) -> io::Result<Option<T>>,
    ) -> io::Result<T> {
        let frames = &mut self.frames;
        let decoder = &mut self.decoder;
        read_until(&mut self.stream, &mut self.input, awaited, |bytes| {
            frames.extend_from_slice(bytes);
            let used = bytes.len();
            while let Some(frame) = decoder
                .decode(frames)
                .map_err(|err| protocol_error(format!("cannot decode a frame: {err}")))?
            {
                if let Frame::Error { code, message, .. } = &frame {
                    return Err(io::Error::other(format!(
                        "the broker returned an error while waiting for {awaited}: {code}: {}",
                        String::from_utf8_lossy(message)
                    )));
                }
                if let Some(value) = accept(&frame)? {
                    return Ok((used, Some(value)));
                }
            }
            Ok((used, None))
        })
    }

    fn write_output(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = self.stream.write_all(&self.output);
        self.output.clear();
        result
    }

    /// Notes a delivery and queues the ACK or ACK_UP_TO it calls for.
    fn note_delivery(&mut self, sub_id: u32, seq: u64) {
        let Some(every) = self.ack_every else {
            return;
        };
        if every == 1 {
            Frame::Ack { sub_id, seq }.encode(&mut self.output);
            return;
        }
        let Some(state) = self.acks.get_mut(sub_id as usize - 1) else {
            return;
        };
        state.unacked += 1;
        state.last_seq = state.last_seq.max(seq);
        if state.unacked >= every {
            state.unacked = 0;
            Frame::AckUpTo {
                sub_id,
                seq: state.last_seq,
            }
            .encode(&mut self.output);
        }
    }

    /// Acks the remainder of every subscription when no message arrived for a poll
    /// interval, so that a tail shorter than K is not redelivered after the ack timeout.
    fn ack_idle(&mut self) {
        for (index, state) in self.acks.iter_mut().enumerate() {
            if state.unacked > 0 {
                state.unacked = 0;
                Frame::AckUpTo {
                    sub_id: index as u32 + 1,
                    seq: state.last_seq,
                }
                .encode(&mut self.output);
            }
        }
    }
}

impl Subscriber for PubsubSubscriber {
    fn poll(&mut self, on_message: &mut dyn FnMut(&[u8], Instant)) -> io::Result<usize> {
        match self.input.read_from(&mut self.stream) {
            Ok(0) => return Err(closed_error("subscriber")),
            Ok(_) => {}
            Err(err) if is_timeout(&err) => {
                if self.ack_every.is_some_and(|every| every > 1) {
                    self.ack_idle();
                    self.write_output()?;
                }
                return Ok(0);
            }
            Err(err) => return Err(err),
        }
        let at = Instant::now();
        self.frames.extend_from_slice(self.input.filled());
        let read = self.input.filled().len();
        self.input.consume(read);

        let mut count = 0;
        loop {
            let frame = self
                .decoder
                .decode(&mut self.frames)
                .map_err(|err| protocol_error(format!("cannot decode a frame: {err}")))?;
            match frame {
                Some(Frame::Message {
                    sub_id,
                    seq,
                    payload,
                    ..
                }) => {
                    on_message(&payload, at);
                    count += 1;
                    self.note_delivery(sub_id, seq);
                }
                Some(Frame::Gap { first, last, .. }) => {
                    self.notices.gap_messages += last.saturating_sub(first) + 1;
                }
                Some(Frame::Error { code, message, .. }) => {
                    self.notices.errors += 1;
                    if self.notices.errors == 1 {
                        tracing::warn!(%code, message = %String::from_utf8_lossy(&message), "broker sent an error to a subscriber");
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        self.write_output()?;
        Ok(count)
    }

    fn notices(&self) -> Notices {
        self.notices
    }
}
