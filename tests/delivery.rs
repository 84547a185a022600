//! Publish and subscribe through a real broker: sequence numbers, start positions, the
//! switch from replay to live delivery, several shards, and client-side checks.

mod common;

use common::*;
use pubsub::client::{ClientError, Event, SubscribeOptions};
use pubsub::protocol::{StartPosition, max_frame_for};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn from(start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        start,
        ..SubscribeOptions::default()
    }
}

/// Publishes `payload-1` … `payload-count` to `topic` with confirmation.
fn publish_numbered(client: &mut pubsub::client::Client, topic: &str, count: u64) {
    for i in 1..=count {
        client
            .publish_confirmed(topic, format!("payload-{i}").as_bytes())
            .expect("publish is confirmed");
    }
}

#[test]
fn sequence_numbers_start_at_one() {
    for shards in [1, 2, 4] {
        let server = start_broker(shards, |_| {});
        let mut publisher = connect(&server);
        for shard in 0..shards {
            let topic = topic_on_shard(shard, shards, 0);
            let published = publish_confirmed_all(&mut publisher, &topic, &["a", "b", "c", "d"]);
            let seqs: Vec<u64> = published.iter().map(|p| p.seq).collect();
            assert_eq!(
                seqs,
                vec![1, 2, 3, 4],
                "topic {topic} on shard {shard} of {shards} numbered its messages wrongly"
            );
            for pair in published.windows(2) {
                assert!(
                    pair[0].timestamp <= pair[1].timestamp,
                    "timestamps of topic {topic} went backwards: {published:?}"
                );
            }
        }
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn message_carries_published_fields() {
    for shards in [1, 2, 4] {
        let server = start_broker(shards, |_| {});
        let mut subscriber = connect(&server);
        let mut publisher = connect(&server);
        for shard in 0..shards {
            let topic = topic_on_shard(shard, shards, 1);
            let subscription = subscribe(&mut subscriber, &topic, SubscribeOptions::default());
            assert_eq!(
                subscription.next_seq, 1,
                "a new subscription to an empty topic starts at sequence number 1"
            );
            let published = publisher
                .publish_confirmed(&topic, format!("to shard {shard}").as_bytes())
                .unwrap();

            let messages = expect_messages(&mut subscriber, 1);
            let message = &messages[0];
            assert_eq!(message.sub_id, subscription.sub_id, "wrong subscription id");
            assert_eq!(
                message.seq, published.seq,
                "MESSAGE seq differs from PUBLISHED"
            );
            assert_eq!(
                message.timestamp, published.timestamp,
                "MESSAGE timestamp differs from PUBLISHED"
            );
            assert_eq!(message.delivery_count, 1, "first delivery has count 1");
            assert_eq!(
                payloads(&messages),
                vec![format!("to shard {shard}")],
                "wrong payload on shard {shard} of {shards}"
            );
        }
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn payloads_round_trip_unchanged() {
    let max_payload = 64 * 1024;
    let server = start_broker(2, |config| config.max_payload = max_payload);
    let mut subscriber = connect(&server);
    let mut publisher = connect(&server);
    // The maximum topic length with the maximum payload gives the maximum PUBLISH frame.
    let topic = &"p".repeat(255);
    subscribe(&mut subscriber, topic, SubscribeOptions::default());

    let every_byte: Vec<u8> = (0..=255u8).collect();
    let largest: Vec<u8> = (0..max_payload).map(|i| (i % 251) as u8).collect();
    let cases: Vec<Vec<u8>> = vec![Vec::new(), b"x".to_vec(), every_byte, largest];
    for payload in &cases {
        publisher.publish_confirmed(topic, payload).unwrap();
    }
    let messages = expect_messages(&mut subscriber, cases.len());
    for (message, payload) in messages.iter().zip(&cases) {
        assert_eq!(
            message.payload.len(),
            payload.len(),
            "payload of message {} changed size",
            message.seq
        );
        assert!(
            message.payload[..] == payload[..],
            "payload of message {} changed content",
            message.seq
        );
    }
}

#[test]
fn client_rejects_oversized_payload() {
    let server = start_broker(1, |config| config.max_payload = 1000);
    let mut client = connect(&server);
    let result = client.publish_confirmed("big", &[0u8; 1001]);
    assert!(
        matches!(
            result,
            Err(ClientError::PayloadTooLarge {
                size: 1001,
                max: 1000
            })
        ),
        "a payload one byte over the maximum must fail before sending, got {result:?}"
    );
    let published = client
        .publish_confirmed("big", &[0u8; 1000])
        .expect("the connection still works and the maximum payload is accepted");
    assert_eq!(
        published.seq, 1,
        "the rejected payload must not have been published"
    );
}

#[test]
fn client_rejects_invalid_topic() {
    let server = start_broker(1, |_| {});
    let mut client = connect(&server);
    let too_long = "x".repeat(256);
    for topic in [
        "",
        "a b",
        "tab\there",
        "bell\u{7}",
        "line\n",
        too_long.as_str(),
    ] {
        let result = client.publish(topic, b"m");
        assert!(
            matches!(result, Err(ClientError::InvalidTopic(_))),
            "publish to {topic:?} must be rejected by the client, got {result:?}"
        );
        let result = client.subscribe(topic, SubscribeOptions::default());
        assert!(
            matches!(result, Err(ClientError::InvalidTopic(_))),
            "subscribe to {topic:?} must be rejected by the client, got {result:?}"
        );
    }
    let longest = "y".repeat(255);
    for topic in [longest.as_str(), "ünïcode/ok", "a.b-c_d:e"] {
        let published = client
            .publish_confirmed(topic, b"m")
            .unwrap_or_else(|err| panic!("valid topic {topic:?} was rejected: {err}"));
        assert_eq!(published.seq, 1, "first message of {topic:?}");
    }
}

#[test]
fn server_info_reports_config() {
    let server = start_broker(3, |config| {
        config.max_payload = 5000;
        config.ack_timeout = Duration::from_millis(1234);
    });
    let mut client = connect(&server);
    let info = client.server_info().clone();
    assert_eq!(info.shards, 3, "shard count");
    assert_eq!(info.max_payload, 5000, "maximum payload");
    assert_eq!(info.max_frame, max_frame_for(5000), "maximum frame");
    assert_eq!(info.ack_timeout, Duration::from_millis(1234), "ack timeout");
    client.ping().expect("PING is answered");
}

#[test]
fn concurrent_publishers_share_sequence() {
    for shards in [2, 4] {
        let server = start_broker(shards, |_| {});
        let publishers = 4;
        let per_publisher = 200u64;
        for shard in 0..shards {
            let topic = topic_on_shard(shard, shards, 2);
            let mut subscriber = connect(&server);
            subscribe(&mut subscriber, &topic, SubscribeOptions::default());

            let handles: Vec<_> = (0..publishers)
                .map(|publisher_id| {
                    let mut client = connect(&server);
                    let topic = topic.clone();
                    thread::spawn(move || {
                        (0..per_publisher)
                            .map(|i| {
                                let payload = format!("{publisher_id}:{i}");
                                client
                                    .publish_confirmed(&topic, payload.as_bytes())
                                    .unwrap()
                                    .seq
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            let mut confirmed: Vec<u64> = handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("publisher thread"))
                .collect();
            confirmed.sort_unstable();
            let total = publishers * per_publisher;
            let expected: Vec<u64> = (1..=total).collect();
            assert_eq!(
                confirmed, expected,
                "confirmed sequence numbers of {topic} ({shards} shards) have gaps or repeats"
            );

            let messages = expect_messages(&mut subscriber, total as usize);
            assert_eq!(
                seqs(&messages),
                expected,
                "the subscriber of {topic} ({shards} shards) got messages out of order"
            );
            // Each connection's publishes keep their order in the topic.
            let mut next_index: HashMap<String, u64> = HashMap::new();
            for payload in payloads(&messages) {
                let (publisher_id, index) = payload.split_once(':').unwrap();
                let index: u64 = index.parse().unwrap();
                let expected_index = next_index.entry(publisher_id.to_owned()).or_insert(0);
                assert_eq!(
                    index, *expected_index,
                    "publisher {publisher_id}'s messages were reordered in {topic}"
                );
                *expected_index += 1;
            }
        }
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn subscribed_before_subscribe_returns() {
    for shards in [2, 4] {
        let server = start_broker(shards, |_| {});
        let mut publisher = connect(&server);
        for round in 0..40 {
            let topic = topic_on_shard(round % shards, shards, 3);
            // A new connection each round lands on a core chosen by the kernel, so
            // subscriber, publisher and topic owner vary between cores.
            let mut subscriber = connect(&server);
            let subscription = subscribe(&mut subscriber, &topic, SubscribeOptions::default());
            publisher
                .publish(&topic, format!("round {round}").as_bytes())
                .unwrap();

            let messages = expect_messages(&mut subscriber, 1);
            assert_eq!(
                messages[0].seq, subscription.next_seq,
                "round {round} ({shards} shards): the message published right after \
                 subscribe returned was not the first delivered"
            );
            assert_eq!(
                payloads(&messages),
                vec![format!("round {round}")],
                "round {round} ({shards} shards): wrong payload"
            );
        }
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn start_new_skips_history() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    publish_numbered(&mut client, "history", 3);
    let subscription = subscribe(&mut client, "history", from(StartPosition::New));
    assert_eq!(
        subscription.next_seq, 4,
        "new starts after the last message"
    );
    assert_quiet(&mut client, Duration::from_millis(200));
    client.publish_confirmed("history", b"live").unwrap();
    let messages = expect_messages(&mut client, 1);
    assert_eq!(seqs(&messages), vec![4], "only the live message arrives");
}

#[test]
fn start_earliest_replays_then_live() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    publish_numbered(&mut client, "replay", 3);
    let subscription = subscribe(&mut client, "replay", from(StartPosition::Earliest));
    assert_eq!(
        subscription.next_seq, 1,
        "earliest starts at the oldest message"
    );
    client.publish_confirmed("replay", b"payload-4").unwrap();
    let messages = expect_messages(&mut client, 4);
    assert_eq!(seqs(&messages), vec![1, 2, 3, 4], "replay then live");
    assert_eq!(
        payloads(&messages),
        vec!["payload-1", "payload-2", "payload-3", "payload-4"],
        "replayed payloads"
    );
}

#[test]
fn start_sequence_replays_from_n() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    publish_numbered(&mut client, "by-seq", 5);
    let subscription = subscribe(&mut client, "by-seq", from(StartPosition::Sequence(3)));
    assert_eq!(subscription.next_seq, 3, "seq:3 starts at 3");
    client.publish_confirmed("by-seq", b"payload-6").unwrap();
    let messages = expect_messages(&mut client, 4);
    assert_eq!(
        seqs(&messages),
        vec![3, 4, 5, 6],
        "seq:3 replays 3..=5, then live"
    );
    assert_quiet(&mut client, Duration::from_millis(100));
}

#[test]
fn start_sequence_ahead_waits() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    publish_numbered(&mut client, "ahead", 2);
    let subscription = subscribe(&mut client, "ahead", from(StartPosition::Sequence(5)));
    assert_eq!(subscription.next_seq, 5, "seq:5 starts at 5");
    publish_numbered(&mut client, "ahead", 4);
    let messages = expect_messages(&mut client, 2);
    assert_eq!(
        seqs(&messages),
        vec![5, 6],
        "messages before the requested sequence number are not delivered"
    );
    assert_quiet(&mut client, Duration::from_millis(100));
}

#[test]
fn start_last_replays_tail() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    publish_numbered(&mut client, "tail", 5);

    let last_two = subscribe(&mut client, "tail", from(StartPosition::Last(2)));
    assert_eq!(last_two.next_seq, 4, "last:2 of 5 starts at 4");
    let messages = expect_messages(&mut client, 2);
    assert_eq!(seqs(&messages), vec![4, 5], "last:2 replays the last two");

    let more_than_all = subscribe(&mut client, "tail", from(StartPosition::Last(100)));
    assert_eq!(
        more_than_all.next_seq, 1,
        "last:100 of 5 with nothing evicted starts at 1"
    );
    let messages = expect_messages(&mut client, 5);
    assert_eq!(
        seqs(&messages),
        vec![1, 2, 3, 4, 5],
        "last:100 replays everything"
    );

    let none = subscribe(&mut client, "tail", from(StartPosition::Last(0)));
    assert_eq!(none.next_seq, 6, "last:0 starts with the next message");
    assert_quiet(&mut client, Duration::from_millis(200));

    client.publish_confirmed("tail", b"payload-6").unwrap();
    let messages = expect_messages(&mut client, 3);
    let mut received: Vec<(u32, u64)> = messages.iter().map(|m| (m.sub_id, m.seq)).collect();
    received.sort_unstable();
    assert_eq!(
        received,
        vec![
            (last_two.sub_id, 6),
            (more_than_all.sub_id, 6),
            (none.sub_id, 6)
        ],
        "every subscription continues live after its replay"
    );
}

#[test]
fn start_time_finds_first_at_or_after() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    let mut published = Vec::new();
    for i in 1..=5 {
        published.push(
            client
                .publish_confirmed("by-time", format!("payload-{i}").as_bytes())
                .unwrap(),
        );
        // Distinct timestamps make the expected start unambiguous. The expected start is
        // computed from the confirmed timestamps, so equal ones would work too.
        thread::sleep(Duration::from_millis(2));
    }
    let first_at_or_after = |nanos: u64| {
        published
            .iter()
            .find(|p| p.timestamp >= nanos)
            .map_or(6, |p| p.seq)
    };

    let cases = [
        ("time of message 3", published[2].timestamp),
        ("just after message 3", published[2].timestamp + 1),
        ("time 0", 0),
    ];
    for (label, nanos) in cases {
        let expected_start = first_at_or_after(nanos);
        let subscription = subscribe(&mut client, "by-time", from(StartPosition::Time(nanos)));
        assert_eq!(
            subscription.next_seq, expected_start,
            "{label}: time:{nanos} must start at the first message at or after it"
        );
        let count = (6 - expected_start) as usize;
        let messages = expect_messages(&mut client, count);
        let expected: Vec<u64> = (expected_start..6).collect();
        assert_eq!(seqs(&messages), expected, "{label}: replayed messages");
    }

    let future = subscribe(
        &mut client,
        "by-time",
        from(StartPosition::Time(published[4].timestamp + 1)),
    );
    assert_eq!(future.next_seq, 6, "a time after every message starts live");
    assert_quiet(&mut client, Duration::from_millis(200));
}

/// Returns the wall-clock time in nanoseconds since the Unix epoch, the clock the broker
/// stamps messages with.
fn wall_clock_nanos() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the system clock is after 1970");
    u64::try_from(since_epoch.as_nanos()).expect("the time fits in u64 nanoseconds")
}

#[test]
fn start_time_in_future_waits() {
    let server = start_broker(2, |_| {});
    let mut subscriber = connect(&server);
    let mut publisher = connect(&server);
    let start = wall_clock_nanos() + Duration::from_secs(2).as_nanos() as u64;
    let subscription = subscribe(&mut subscriber, "future", from(StartPosition::Time(start)));
    assert_eq!(
        subscription.next_seq, 1,
        "a future start on an empty topic reads from sequence number 1"
    );

    let early = publish_confirmed_all(&mut publisher, "future", &["early-1", "early-2", "early-3"]);
    for published in &early {
        assert!(
            published.timestamp < start,
            "precondition: message {} was stamped {} ns, not before the start {start} ns; \
             publishing took more than 2 s",
            published.seq,
            published.timestamp
        );
    }
    assert_quiet(&mut subscriber, Duration::from_millis(300));

    // Wait on the same clock as the broker until the start has passed.
    poll_until(
        "the wall clock passes the start time",
        Duration::from_millis(20),
        || (wall_clock_nanos() > start).then_some(()),
    );
    let late = publisher
        .publish_confirmed("future", b"late")
        .expect("publish after the start is confirmed");
    assert!(
        late.timestamp >= start,
        "precondition: the message published after the start was stamped {} ns, before it",
        late.timestamp
    );
    let messages = expect_messages(&mut subscriber, 1);
    assert_eq!(
        seqs(&messages),
        vec![late.seq],
        "only the message stamped at or after the start is delivered"
    );
    assert_eq!(
        payloads(&messages),
        vec!["late".to_owned()],
        "the delivered message is the late one"
    );
    assert_eq!(
        messages[0].sub_id, subscription.sub_id,
        "the message carries the subscription id"
    );
    assert_quiet(&mut subscriber, Duration::from_millis(100));
}

#[test]
fn replay_switches_to_live_exactly() {
    for shards in [2, 4] {
        const AFTER_SUBSCRIBE: u64 = 500;
        const MAX_MESSAGES: u64 = 200_000;
        // Nothing is evicted, so earliest always means sequence number 1.
        let server = start_broker(shards, |config| {
            config.retain_messages = MAX_MESSAGES as usize;
            config.retain_bytes = 64 * 1024 * 1024;
        });
        let topic = topic_on_shard(shards - 1, shards, 4);
        // The publisher runs until every subscription exists, then publishes
        // `AFTER_SUBSCRIBE` more, so each subscription switches from replay to live in
        // the middle of the stream.
        let flushed = Arc::new(AtomicU64::new(0));
        let subscribed = Arc::new(AtomicBool::new(false));

        let publisher = {
            let mut client = connect(&server);
            let topic = topic.clone();
            let flushed = flushed.clone();
            let subscribed = subscribed.clone();
            thread::spawn(move || {
                let mut stop_at = MAX_MESSAGES;
                let mut seq = 0;
                while seq < stop_at {
                    seq += 1;
                    client
                        .queue_publish(&topic, format!("payload-{seq}").as_bytes())
                        .unwrap();
                    if seq % 20 == 0 {
                        client.flush().unwrap();
                        flushed.store(seq, Ordering::SeqCst);
                        // Pacing keeps the stream going while the subscriptions are made.
                        thread::sleep(Duration::from_millis(1));
                        if stop_at == MAX_MESSAGES && subscribed.load(Ordering::SeqCst) {
                            stop_at = seq + AFTER_SUBSCRIBE;
                        }
                    }
                }
                client.flush().unwrap();
                client.ping().unwrap();
                seq
            })
        };

        poll_until(
            "the publisher has sent 100 messages",
            Duration::from_millis(1),
            || (flushed.load(Ordering::SeqCst) >= 100).then_some(()),
        );
        let mut subscribers = Vec::new();
        for start in [
            StartPosition::Earliest,
            StartPosition::New,
            StartPosition::Last(50),
            StartPosition::Earliest,
        ] {
            let mut client = connect(&server);
            let subscription = subscribe(&mut client, &topic, from(start));
            subscribers.push((start, client, subscription));
            thread::sleep(Duration::from_millis(3));
        }
        subscribed.store(true, Ordering::SeqCst);
        let total = publisher.join().expect("publisher thread");

        for (start, mut client, subscription) in subscribers {
            let first = subscription.next_seq;
            if start == StartPosition::Earliest {
                assert_eq!(first, 1, "earliest must start at 1 ({shards} shards)");
            }
            assert!(
                first > 1 || start == StartPosition::Earliest,
                "{start:?} ({shards} shards) started at 1, before the publisher's first 100"
            );
            assert!(
                first + AFTER_SUBSCRIBE <= total + 1,
                "{start:?} ({shards} shards) started at {first}, after the stream ended at \
                 {total}"
            );
            let count = (total + 1 - first) as usize;
            let messages = expect_messages(&mut client, count);
            let expected: Vec<u64> = (first..=total).collect();
            assert!(
                seqs(&messages) == expected,
                "{start:?} from {first} ({shards} shards): sequence numbers skip or repeat \
                 at the switch from replay to live"
            );
            for message in &messages {
                assert_eq!(
                    message.payload,
                    format!("payload-{}", message.seq).as_bytes(),
                    "payload of message {} does not match its sequence number",
                    message.seq
                );
            }
            assert_quiet(&mut client, Duration::from_millis(50));
        }
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn two_subscriptions_on_one_connection() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    let first = subscribe(&mut client, "shared", SubscribeOptions::default());
    let second = subscribe(&mut client, "shared", SubscribeOptions::default());
    assert_ne!(
        first.sub_id, second.sub_id,
        "each subscription gets its own id"
    );
    client.publish_confirmed("shared", b"m").unwrap();
    let messages = expect_messages(&mut client, 2);
    let mut sub_ids: Vec<u32> = messages.iter().map(|m| m.sub_id).collect();
    sub_ids.sort_unstable();
    assert_eq!(
        sub_ids,
        vec![first.sub_id, second.sub_id],
        "each subscription gets its own copy"
    );
}

#[test]
fn unsubscribe_stops_delivery() {
    for shards in [1, 2, 4] {
        let server = start_broker(shards, |_| {});
        let mut subscriber = connect(&server);
        let mut publisher = connect(&server);
        let topic = topic_on_shard(shards - 1, shards, 5);
        let other_topic = topic_on_shard(0, shards, 6);
        let dropped = subscribe(&mut subscriber, &topic, SubscribeOptions::default());
        let remaining = subscribe(&mut subscriber, &other_topic, SubscribeOptions::default());
        subscriber
            .unsubscribe(dropped.sub_id)
            .expect("unsubscribe is confirmed");

        publisher
            .publish_confirmed(&topic, b"after unsubscribe")
            .unwrap();
        publisher
            .publish_confirmed(&other_topic, b"still subscribed")
            .unwrap();
        let messages = expect_messages(&mut subscriber, 1);
        assert_eq!(
            messages[0].sub_id, remaining.sub_id,
            "only the remaining subscription gets messages ({shards} shards)"
        );
        assert_quiet(&mut subscriber, Duration::from_millis(200));

        let again = subscriber.unsubscribe(dropped.sub_id);
        let err = server_error(again);
        assert_eq!(
            err.code,
            pubsub::protocol::ErrorCode::UnknownSubscription,
            "unsubscribing twice names an unknown subscription"
        );
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn fan_out_reaches_every_subscriber() {
    for shards in [2, 4] {
        let server = start_broker(shards, |_| {});
        let topic = topic_on_shard(0, shards, 7);
        // Separate connections spread over the executors, so deliveries cross cores.
        let mut subscribers: Vec<_> = (0..8)
            .map(|_| {
                let mut client = connect(&server);
                let subscription = subscribe(&mut client, &topic, SubscribeOptions::default());
                (client, subscription)
            })
            .collect();
        let mut publisher = connect(&server);
        let total = 500u64;
        for i in 1..=total {
            publisher
                .queue_publish(&topic, format!("payload-{i}").as_bytes())
                .unwrap();
        }
        publisher.flush().unwrap();

        let expected: Vec<u64> = (1..=total).collect();
        for (index, (client, subscription)) in subscribers.iter_mut().enumerate() {
            let messages = expect_messages(client, total as usize);
            assert!(
                seqs(&messages) == expected,
                "subscriber {index} ({shards} shards) lost or reordered messages"
            );
            assert!(
                messages.iter().all(|m| m.sub_id == subscription.sub_id),
                "subscriber {index} ({shards} shards) got another subscription's messages"
            );
        }
        server.shutdown().expect("broker stops cleanly");
    }
}

#[test]
fn many_topics_keep_separate_sequences() {
    let shards = 4;
    let server = start_broker(shards, |_| {});
    let mut subscriber = connect(&server);
    let topics: Vec<String> = (0..64).map(|i| format!("topic-{i}")).collect();
    let mut topic_of = HashMap::new();
    for topic in &topics {
        let subscription = subscribe(&mut subscriber, topic, SubscribeOptions::default());
        topic_of.insert(subscription.sub_id, topic.clone());
    }
    let mut publisher = connect(&server);
    let rounds = 10u64;
    for round in 1..=rounds {
        for topic in &topics {
            publisher
                .queue_publish(topic, format!("{topic}/{round}").as_bytes())
                .unwrap();
        }
    }
    publisher.flush().unwrap();

    let messages = expect_messages(&mut subscriber, topics.len() * rounds as usize);
    let mut next_seq: HashMap<&str, u64> = HashMap::new();
    for message in &messages {
        let topic = topic_of[&message.sub_id].as_str();
        let expected = next_seq.entry(topic).or_insert(1);
        assert_eq!(
            message.seq, *expected,
            "{topic}: sequence numbers are per topic, in order, without gaps"
        );
        assert_eq!(
            message.payload,
            format!("{topic}/{expected}").as_bytes(),
            "{topic}: message {expected} has another message's payload"
        );
        *expected += 1;
    }
}

#[test]
fn pipelined_publishes_confirmed_in_order() {
    let shards = 4;
    let server = start_broker(shards, |_| {});
    for shard in 0..shards {
        let topic = topic_on_shard(shard, shards, 8);
        let (mut raw, _) = RawConnection::handshake(&server);
        // 200 confirmed publishes in one write, so they are in flight together.
        let mut batch = Vec::new();
        for request_id in 1..=200u64 {
            batch.extend_from_slice(&publish_bytes(request_id, topic.as_bytes(), b"m"));
        }
        raw.send_bytes(&batch);
        for expected in 1..=200u64 {
            let frame = raw.expect_frame();
            let pubsub::protocol::Frame::Published {
                request_id, seq, ..
            } = frame
            else {
                panic!("expected PUBLISHED, got {frame:?}");
            };
            assert_eq!(
                request_id, expected,
                "{topic} on shard {shard}: confirmations arrive in publish order"
            );
            assert_eq!(
                seq, expected,
                "{topic} on shard {shard}: publish order is sequence order"
            );
        }
    }
}

#[test]
fn subscription_id_reused_after_unsubscribe() {
    let server = start_broker(2, |_| {});
    let (mut raw, _) = RawConnection::handshake(&server);
    let mut publisher = connect(&server);
    let subscribe_frame = |topic: &'static [u8]| pubsub::protocol::Frame::Subscribe {
        sub_id: 1,
        topic: bytes::Bytes::from_static(topic),
        start: StartPosition::New,
        ack_mode: pubsub::protocol::AckMode::None,
        max_in_flight: 0,
        consumer: bytes::Bytes::new(),
    };
    raw.send_frame(&subscribe_frame(b"old"));
    assert!(
        matches!(
            raw.expect_frame(),
            pubsub::protocol::Frame::Subscribed { sub_id: 1, .. }
        ),
        "first subscription with id 1"
    );
    raw.send_frame(&pubsub::protocol::Frame::Unsubscribe { sub_id: 1 });
    assert_eq!(
        raw.expect_frame(),
        pubsub::protocol::Frame::Unsubscribed { sub_id: 1 },
        "UNSUBSCRIBED frees id 1"
    );
    raw.send_frame(&subscribe_frame(b"new"));
    assert!(
        matches!(
            raw.expect_frame(),
            pubsub::protocol::Frame::Subscribed { sub_id: 1, .. }
        ),
        "id 1 is accepted again"
    );

    publisher
        .publish_confirmed("old", b"from the old topic")
        .unwrap();
    publisher
        .publish_confirmed("new", b"from the new topic")
        .unwrap();
    let frame = raw.expect_frame();
    let pubsub::protocol::Frame::Message {
        sub_id, payload, ..
    } = frame
    else {
        panic!("expected a message, got {frame:?}");
    };
    assert_eq!(sub_id, 1, "delivered under id 1");
    assert_eq!(
        &payload[..],
        b"from the new topic",
        "id 1 now reads only the new topic"
    );
    raw.expect_pong(1);
}

#[test]
fn error_event_does_not_end_receive() {
    // The ack names an unknown subscription, so the broker replies with an ERROR, which
    // `publish_confirmed` queues while it waits. The delivery after it must follow it.
    let server = start_broker(1, |_| {});
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "events", SubscribeOptions::default());
    client.ack(subscription.sub_id + 100, 1).unwrap();
    client.publish_confirmed("events", b"after error").unwrap();
    let first = next_event(&mut client, TIMEOUT);
    assert!(
        matches!(first, Event::Error(_)),
        "the error comes first, got {first:?}"
    );
    let messages = expect_messages(&mut client, 1);
    assert_eq!(
        payloads(&messages),
        vec!["after error"],
        "delivery after an error"
    );
}
