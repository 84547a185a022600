//! A connection with many subscriptions that stops reading: the broker closes it with
//! ERROR SLOW_CONSUMER once its queued output passes 64 MiB, and other connections carry
//! on.

mod common;

use common::*;
use pubsub::client::SubscribeOptions;
use pubsub::protocol::{AckMode, ErrorCode, Frame, StartPosition};
use std::io;
use std::time::{Duration, Instant};

/// Subscriptions on the connection that stops reading, one topic each. With the default
/// maximum payload each subscription's delivery window is 1 MiB, so together they can
/// queue 128 MiB, twice the broker's 64 MiB limit on a connection's output. The margin
/// covers the deliveries in the broker's current write to the socket, which hold window
/// space but do not count towards the limit.
const SUBSCRIPTIONS: u32 = 128;

const PAYLOAD_LEN: usize = 64 * 1024;

/// Publishes per topic. Sixteen 64 KiB messages fill a 1 MiB window, and the other four
/// are margin.
const ROUNDS: usize = 20;

/// The bound on reading the stalled connection once publishing is done. The broker
/// closes a connection without an ERROR when a write to it makes no progress for 30 s,
/// and that clock starts during publishing, so this read must start well before then.
const READ_DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn slow_consumer_is_closed() {
    let server = start_broker(2, |config| {
        // Deliveries leave as messages are published, so retention only bounds the
        // broker's memory here.
        config.retain_messages = 4;
    });
    let bystander = Bystander::start(&server, "bystander");

    let topics: Vec<String> = (0..SUBSCRIPTIONS).map(|i| format!("slow-{i}")).collect();
    let (mut stalled, _) = RawConnection::handshake(&server);
    for (sub_id, topic) in (1..).zip(&topics) {
        stalled.send_frame(&Frame::Subscribe {
            sub_id,
            topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
            start: StartPosition::New,
            ack_mode: AckMode::None,
            max_in_flight: 0,
            consumer: bytes::Bytes::new(),
        });
    }
    for _ in 0..SUBSCRIPTIONS {
        let frame = stalled.expect_frame();
        assert!(
            matches!(frame, Frame::Subscribed { next_seq: 1, .. }),
            "expected SUBSCRIBED with next_seq 1, got {frame:?}"
        );
    }

    // From here on the stalled connection reads nothing until publishing is done.
    let mut publisher = connect(&server);
    let mut payload = vec![0u8; PAYLOAD_LEN];
    for round in 1..=ROUNDS as u64 {
        for topic in &topics {
            payload[..8].copy_from_slice(&round.to_le_bytes());
            let published = publisher
                .publish_confirmed(topic, &payload)
                .expect("publishes are confirmed while a subscriber stalls");
            assert_eq!(
                published.seq, round,
                "topic {topic} skipped or repeated a sequence number"
            );
        }
    }

    // The stalled connection first gets what the socket buffers and the broker's current
    // write contain, then the ERROR that replaced the rest of its queued output, then the
    // end of the stream.
    let deadline = Instant::now() + READ_DEADLINE;
    let mut delivered = 0u64;
    let error = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stalled.next_frame(left) {
            Ok(Some(Frame::Message { sub_id, .. })) => {
                assert!(
                    (1..=SUBSCRIPTIONS).contains(&sub_id),
                    "MESSAGE for unknown subscription {sub_id}"
                );
                delivered += 1;
            }
            Ok(Some(Frame::Gap { .. })) => {}
            Ok(Some(Frame::Error {
                code,
                reference,
                message,
            })) => break (code, reference, message),
            Ok(Some(other)) => panic!("expected MESSAGE, GAP or ERROR, got {other:?}"),
            Ok(None) => panic!(
                "the connection is still open after {delivered} messages and \
                 {READ_DEADLINE:?} without ERROR SLOW_CONSUMER"
            ),
            Err(err) => panic!(
                "the connection ended without ERROR SLOW_CONSUMER after {delivered} messages: \
                 {err}"
            ),
        }
    };
    let (code, reference, message) = error;
    assert_eq!(
        code,
        ErrorCode::SlowConsumer,
        "the stalled connection gets SLOW_CONSUMER after {delivered} messages: {message:?}"
    );
    assert_eq!(
        reference, 0,
        "an error about the whole connection has reference 0"
    );
    match stalled.next_frame(TIMEOUT) {
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {}
        other => panic!("expected the end of the stream after SLOW_CONSUMER, got {other:?}"),
    }

    // The topics and the rest of the broker carry on.
    let mut subscriber = connect(&server);
    let subscription = subscribe(&mut subscriber, &topics[0], SubscribeOptions::default());
    let published = publisher
        .publish_confirmed(&topics[0], b"after the close")
        .expect("publish after the close is confirmed");
    assert_eq!(
        published.seq,
        ROUNDS as u64 + 1,
        "the topic numbering continues after the close"
    );
    let messages = expect_messages(&mut subscriber, 1);
    assert_eq!(
        messages[0].sub_id, subscription.sub_id,
        "a new subscriber of a stalled topic receives new messages"
    );
    bystander.check(&server);
}
