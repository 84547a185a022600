//! Retention limits (count, bytes, age) and the GAP notices that replace evicted messages,
//! both for a start position that requests evicted history and for a subscriber that
//! stops reading.

mod common;

use common::*;
use pubsub::client::{Client, Event, Message, SubscribeOptions};
use pubsub::protocol::{AckMode, StartPosition};
use std::time::{Duration, Instant};

fn from(start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        start,
        ..SubscribeOptions::default()
    }
}

/// Subscribes from `start`, receives `count` messages and unsubscribes; returns the
/// subscription's `next_seq`, the GAP it got (if any) and the messages.
fn replay(
    client: &mut Client,
    topic: &str,
    start: StartPosition,
    count: usize,
) -> (u64, Option<(u64, u64)>, Vec<Message>) {
    let subscription = subscribe(client, topic, from(start));
    let (messages, others) = receive_messages(client, count, TIMEOUT);
    assert_eq!(
        messages.len(),
        count,
        "{start:?}: expected {count} messages, got {:?}",
        seqs(&messages)
    );
    let gap = match others.as_slice() {
        [] => None,
        [
            Event::Gap {
                sub_id,
                first,
                last,
            },
        ] => {
            assert_eq!(
                *sub_id, subscription.sub_id,
                "{start:?}: GAP for the wrong subscription"
            );
            Some((*first, *last))
        }
        other => panic!("{start:?}: expected at most one GAP besides messages, got {other:?}"),
    };
    assert_quiet(client, Duration::from_millis(50));
    client
        .unsubscribe(subscription.sub_id)
        .expect("unsubscribe is confirmed");
    (subscription.next_seq, gap, messages)
}

#[test]
fn retain_messages_keeps_newest() {
    for shards in [1, 2, 4] {
        let server = start_broker(shards, |config| config.retain_messages = 5);
        let mut client = connect(&server);
        let topic = topic_on_shard(shards - 1, shards, 0);
        let mut published = Vec::new();
        for i in 1..=12 {
            published.push(
                client
                    .publish_confirmed(&topic, format!("payload-{i}").as_bytes())
                    .unwrap(),
            );
        }
        let retained: Vec<u64> = (8..=12).collect();

        let (next_seq, gap, messages) = replay(&mut client, &topic, StartPosition::Earliest, 5);
        assert_eq!(next_seq, 8, "earliest is the oldest retained message");
        assert_eq!(gap, None, "earliest asks for nothing that was evicted");
        assert_eq!(
            seqs(&messages),
            retained,
            "earliest replays the newest five"
        );

        let evicted_starts = [
            ("seq:1", StartPosition::Sequence(1), (1, 7)),
            ("seq:6", StartPosition::Sequence(6), (6, 7)),
            ("last:10", StartPosition::Last(10), (3, 7)),
            (
                "time of message 1",
                StartPosition::Time(published[0].timestamp),
                (1, 7),
            ),
        ];
        for (label, start, missing) in evicted_starts {
            let (next_seq, gap, messages) = replay(&mut client, &topic, start, 5);
            assert_eq!(
                next_seq, 8,
                "{label} ({shards} shards): next_seq is the first retained message"
            );
            assert_eq!(
                gap,
                Some(missing),
                "{label} ({shards} shards): the GAP must name exactly the evicted range"
            );
            assert_eq!(
                seqs(&messages),
                retained,
                "{label} ({shards} shards): the retained messages follow the GAP"
            );
        }

        let (_, gap, messages) = replay(&mut client, &topic, StartPosition::Sequence(9), 4);
        assert_eq!(gap, None, "seq:9 is retained, so no GAP");
        assert_eq!(seqs(&messages), vec![9, 10, 11, 12], "seq:9 replays from 9");
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn gap_arrives_before_first_message() {
    let server = start_broker(2, |config| config.retain_messages = 3);
    let mut client = connect(&server);
    for i in 1..=10 {
        client
            .publish_confirmed("ordered", format!("{i}").as_bytes())
            .unwrap();
    }
    let subscription = subscribe(&mut client, "ordered", from(StartPosition::Sequence(2)));
    let first = next_event(&mut client, TIMEOUT);
    assert_eq!(
        first,
        Event::Gap {
            sub_id: subscription.sub_id,
            first: 2,
            last: 7
        },
        "the GAP must come before any message"
    );
    let messages = expect_messages(&mut client, 3);
    assert_eq!(
        seqs(&messages),
        vec![8, 9, 10],
        "retained messages after the GAP"
    );
}

#[test]
fn retain_bytes_evicts_oldest() {
    let server = start_broker(2, |config| config.retain_bytes = 1000);
    let mut client = connect(&server);
    for i in 1..=6u8 {
        client.publish_confirmed("bytes", &[i; 300]).unwrap();
    }
    // Three 300-byte payloads fit in 1000 bytes, a fourth would not.
    let (next_seq, gap, messages) = replay(&mut client, "bytes", StartPosition::Earliest, 3);
    assert_eq!(next_seq, 4, "the oldest retained message");
    assert_eq!(gap, None, "earliest gets no GAP");
    assert_eq!(
        seqs(&messages),
        vec![4, 5, 6],
        "the newest 900 bytes are retained"
    );
    for message in &messages {
        assert!(
            message.payload.iter().all(|&b| b == message.seq as u8),
            "message {} has another message's payload",
            message.seq
        );
    }

    let (_, gap, messages) = replay(&mut client, "bytes", StartPosition::Sequence(1), 3);
    assert_eq!(gap, Some((1, 3)), "seq:1 gets a GAP for the evicted bytes");
    assert_eq!(
        seqs(&messages),
        vec![4, 5, 6],
        "retained messages after the GAP"
    );
}

#[test]
fn retain_bytes_keeps_oversized_newest() {
    let server = start_broker(2, |config| config.retain_bytes = 100);
    let mut client = connect(&server);
    client.publish_confirmed("huge", &[1; 50]).unwrap();
    client.publish_confirmed("huge", &[2; 500]).unwrap();

    let (next_seq, gap, messages) = replay(&mut client, "huge", StartPosition::Earliest, 1);
    assert_eq!(next_seq, 2, "the older message was evicted");
    assert_eq!(gap, None, "earliest gets no GAP");
    assert_eq!(
        messages[0].payload.len(),
        500,
        "a message larger than retain_bytes is still retained while it is the newest"
    );

    client.publish_confirmed("huge", &[3; 10]).unwrap();
    let (next_seq, _, messages) = replay(&mut client, "huge", StartPosition::Earliest, 1);
    assert_eq!(
        next_seq, 3,
        "the oversized message goes once a newer one arrives"
    );
    assert_eq!(messages[0].payload.len(), 10, "the newest message");
}

#[test]
fn retain_age_evicts_expired() {
    let retain_age = Duration::from_secs(2);
    let server = start_broker(2, |config| config.retain_age = retain_age);
    let mut live = connect(&server);
    let live_subscription = subscribe(&mut live, "ttl", SubscribeOptions::default());
    let mut publisher = connect(&server);
    let before_publish = Instant::now();
    let published = publish_confirmed_all(&mut publisher, "ttl", &["a", "b", "c"]);

    // Far less than the age limit has passed, so everything is still retained.
    let mut early = connect(&server);
    let (next_seq, gap, messages) = replay(&mut early, "ttl", StartPosition::Earliest, 3);
    assert_eq!(
        next_seq, 1,
        "messages younger than the age limit are retained"
    );
    assert_eq!(gap, None, "nothing evicted yet");
    assert_eq!(seqs(&messages), vec![1, 2, 3], "all three replayed");

    poll_until(
        "messages older than retain_age are evicted",
        Duration::from_millis(100),
        || {
            let mut probe = connect(&server);
            let subscription = subscribe(&mut probe, "ttl", from(StartPosition::Earliest));
            (subscription.next_seq == 4).then_some(())
        },
    );
    let elapsed = before_publish.elapsed();
    // The slack allows for the broker's wall clock and this test's monotonic clock
    // drifting apart a little.
    assert!(
        elapsed + Duration::from_millis(200) >= retain_age,
        "messages were evicted after {elapsed:?}, before the age limit of {retain_age:?}"
    );

    let next = publisher.publish_confirmed("ttl", b"d").unwrap();
    assert_eq!(next.seq, 4, "sequence numbers continue after expiry");

    let mut late = connect(&server);
    let (next_seq, gap, messages) = replay(&mut late, "ttl", StartPosition::Earliest, 1);
    assert_eq!(next_seq, 4, "earliest skips the expired messages");
    assert_eq!(gap, None, "earliest gets no GAP");
    assert_eq!(
        seqs(&messages),
        vec![4],
        "earliest replays the message after expiry"
    );
    let (_, gap, messages) = replay(&mut late, "ttl", StartPosition::Sequence(1), 1);
    assert_eq!(
        gap,
        Some((1, 3)),
        "seq:1 gets a GAP for the expired messages"
    );
    assert_eq!(seqs(&messages), vec![4], "seq:1 continues after the GAP");
    let start = StartPosition::Time(published[0].timestamp);
    let (_, gap, messages) = replay(&mut late, "ttl", start, 1);
    assert_eq!(
        gap,
        Some((1, 3)),
        "time of message 1 gets a GAP for the expired messages"
    );
    assert_eq!(
        seqs(&messages),
        vec![4],
        "time of message 1 continues after the GAP"
    );

    let messages = expect_messages(&mut live, 4);
    assert_eq!(
        seqs(&messages),
        vec![1, 2, 3, 4],
        "a live subscriber gets every message regardless of expiry"
    );
    assert!(
        messages
            .iter()
            .all(|m| m.sub_id == live_subscription.sub_id),
        "live messages carry the live subscription id"
    );
}

#[test]
fn paused_consumer_gets_gap() {
    let server = start_broker(2, |config| {
        config.retain_messages = 5;
        config.ack_timeout = Duration::from_secs(30);
    });
    let mut client = connect(&server);
    let options = SubscribeOptions {
        ack_mode: AckMode::Explicit,
        max_in_flight: 2,
        ..SubscribeOptions::default()
    };
    let subscription = subscribe(&mut client, "paused", options);
    for i in 1..=20 {
        client
            .publish_confirmed("paused", format!("{i}").as_bytes())
            .unwrap();
    }
    let messages = expect_messages(&mut client, 2);
    assert_eq!(
        seqs(&messages),
        vec![1, 2],
        "the in-flight limit pauses delivery"
    );

    // While the consumer waited for acks, the ring buffer evicted 3..=15.
    client.ack_up_to(subscription.sub_id, 2).unwrap();
    let gap = next_event(&mut client, TIMEOUT);
    assert_eq!(
        gap,
        Event::Gap {
            sub_id: subscription.sub_id,
            first: 3,
            last: 15
        },
        "the paused consumer gets a GAP for the messages evicted meanwhile"
    );
    let messages = expect_messages(&mut client, 2);
    assert_eq!(
        seqs(&messages),
        vec![16, 17],
        "then retained messages, two at a time"
    );
    client.ack_up_to(subscription.sub_id, 17).unwrap();
    let messages = expect_messages(&mut client, 2);
    assert_eq!(seqs(&messages), vec![18, 19], "acks keep delivery going");
    client.ack_up_to(subscription.sub_id, 19).unwrap();
    let messages = expect_messages(&mut client, 1);
    assert_eq!(seqs(&messages), vec![20], "the last message");
}

/// A subscriber that stops reading while a publisher sends far more than the topic
/// retains must get a GAP for what it missed, not unbounded buffering in the broker.
fn check_slow_subscriber_gets_gap(shards: usize) {
    const RETAINED: usize = 50;
    const PAYLOAD_LEN: usize = 64 * 1024;
    // 1500 messages of 64 KiB are 96 MiB, far more than the socket buffers and the
    // broker's per-subscription delivery window (4 MiB) hold together.
    const SENT: u64 = 1500;
    let server = start_broker(shards, |config| {
        config.retain_messages = RETAINED;
        config.retain_bytes = 64 * 1024 * 1024;
    });
    let topic = topic_on_shard(shards - 1, shards, 1);
    let mut subscriber = connect(&server);
    let subscription = subscribe(&mut subscriber, &topic, SubscribeOptions::default());

    let mut publisher = connect(&server);
    let mut payload = vec![0u8; PAYLOAD_LEN];
    for seq in 1..=SENT {
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        publisher.queue_publish(&topic, &payload).unwrap();
    }
    payload[..8].copy_from_slice(&(SENT + 1).to_le_bytes());
    let last = publisher.publish_confirmed(&topic, &payload).unwrap().seq;
    assert_eq!(
        last,
        SENT + 1,
        "the publisher's messages were numbered without gaps"
    );

    // Now read everything the broker kept for the subscriber.
    let deadline = Instant::now() + 2 * TIMEOUT;
    let mut expected_next = 1;
    let mut gaps = Vec::new();
    let mut received = 0u64;
    while expected_next <= last {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = subscriber
            .recv_timeout(left)
            .expect("receive")
            .unwrap_or_else(|| {
                panic!("({shards} shards) stalled: message {expected_next} of {last} never came")
            });
        match event {
            Event::Message(message) => {
                assert_eq!(
                    message.seq, expected_next,
                    "({shards} shards) message {} arrived where {expected_next} was due: \
                     a skip without GAP, a repeat or a reorder",
                    message.seq
                );
                assert_eq!(
                    message.sub_id, subscription.sub_id,
                    "message for the wrong subscription"
                );
                assert_eq!(
                    message.payload[..8],
                    message.seq.to_le_bytes(),
                    "message {} carries another message's payload",
                    message.seq
                );
                received += 1;
                expected_next += 1;
            }
            Event::Gap {
                sub_id,
                first,
                last: gap_last,
            } => {
                assert_eq!(
                    sub_id, subscription.sub_id,
                    "GAP for the wrong subscription"
                );
                assert_eq!(
                    first, expected_next,
                    "({shards} shards) a GAP must start right after the last delivered message"
                );
                assert!(
                    gap_last >= first,
                    "({shards} shards) GAP {first}..={gap_last} is empty"
                );
                assert!(
                    gap_last < last,
                    "({shards} shards) GAP {first}..={gap_last} covers the newest message"
                );
                gaps.push((first, gap_last));
                expected_next = gap_last + 1;
            }
            Event::Error(err) => panic!("({shards} shards) unexpected error: {err}"),
        }
    }
    assert!(
        !gaps.is_empty(),
        "({shards} shards) the subscriber received all {received} messages without a GAP, \
         so the broker buffered {} MiB for a subscriber that did not read",
        (SENT as usize * PAYLOAD_LEN) >> 20
    );
    let skipped: u64 = gaps.iter().map(|(first, last)| last - first + 1).sum();
    assert_eq!(
        received + skipped,
        last,
        "({shards} shards) messages and GAPs must account for every sequence number"
    );

    // The subscription is still live after catching up.
    publisher.publish_confirmed(&topic, b"after").unwrap();
    let messages = expect_messages(&mut subscriber, 1);
    assert_eq!(seqs(&messages), vec![last + 1], "live delivery resumes");
}

#[test]
fn slow_subscriber_gets_gap_2_shards() {
    check_slow_subscriber_gets_gap(2);
}

#[test]
fn slow_subscriber_gets_gap_4_shards() {
    check_slow_subscriber_gets_gap(4);
}
