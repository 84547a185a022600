//! Explicit acknowledgements: redelivery after the ack timeout, single and cumulative
//! acks, the in-flight limit, ack errors, and durable consumers that outlive their
//! connection.

mod common;

use common::*;
use pubsub::client::{Client, ClientError, Event, Message, SubscribeOptions, Subscription};
use pubsub::protocol::{AckMode, ErrorCode, StartPosition};
use pubsub::server::Server;
use std::collections::{BTreeSet, HashMap};
use std::thread;
use std::time::{Duration, Instant};

/// Ack timeout for tests that wait for redelivery.
const SHORT_ACK_TIMEOUT: Duration = Duration::from_millis(300);

/// Ack timeout for tests in which no redelivery may happen while they run.
const LONG_ACK_TIMEOUT: Duration = Duration::from_secs(30);

fn explicit(start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        start,
        ack_mode: AckMode::Explicit,
        ..SubscribeOptions::default()
    }
}

fn durable(name: &str, start: StartPosition) -> SubscribeOptions {
    SubscribeOptions {
        consumer: Some(name.to_owned()),
        ..explicit(start)
    }
}

/// Publishes `payload-N` for each N in `range` to `topic` with confirmation, and checks
/// that each gets sequence number N.
fn publish_numbered(client: &mut Client, topic: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        let published = client
            .publish_confirmed(topic, format!("payload-{i}").as_bytes())
            .expect("publish is confirmed");
        assert_eq!(
            published.seq, i,
            "{topic}: payload-{i} must get sequence number {i}"
        );
    }
}

/// Returns the next message, failing the test on any other event or after [`TIMEOUT`].
fn next_message(client: &mut Client) -> Message {
    match next_event(client, TIMEOUT) {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Connects and subscribes with a durable consumer name. The broker detaches a consumer
/// only after it reads the end of its previous connection, so CONSUMER_IN_USE right
/// after that connection closed is retried until [`TIMEOUT`].
fn attach(server: &Server, topic: &str, options: SubscribeOptions) -> (Client, Subscription) {
    let mut client = connect(server);
    let subscription = poll_until(
        "the previous connection of the consumer is detached",
        Duration::from_millis(20),
        || match client.subscribe(topic, options.clone()) {
            Ok(subscription) => Some(subscription),
            Err(ClientError::Server(err)) if err.code == ErrorCode::ConsumerInUse => None,
            Err(err) => panic!(
                "subscribe with consumer {:?} failed: {err}",
                options.consumer
            ),
        },
    );
    (client, subscription)
}

#[test]
fn unacked_message_is_redelivered() {
    let shards = 4;
    let server = start_broker(shards, |config| config.ack_timeout = SHORT_ACK_TIMEOUT);
    let mut subscriber = connect(&server);
    let mut publisher = connect(&server);
    // One topic on every shard, each with one unacked message.
    let mut expected = HashMap::new();
    for shard in 0..shards {
        let topic = topic_on_shard(shard, shards, 0);
        let subscription = subscribe(&mut subscriber, &topic, explicit(StartPosition::New));
        let published = publisher
            .publish_confirmed(&topic, topic.as_bytes())
            .unwrap();
        expected.insert(subscription.sub_id, (topic, published, 1u32));
    }

    // Receive until each message has been delivered three times: the first delivery
    // and two redeliveries.
    while expected.values().any(|(_, _, next_count)| *next_count <= 3) {
        let message = next_message(&mut subscriber);
        let (topic, published, next_count) = expected
            .get_mut(&message.sub_id)
            .unwrap_or_else(|| panic!("message for an unknown subscription: {message:?}"));
        assert_eq!(message.seq, published.seq, "{topic}: the same message");
        assert_eq!(
            message.delivery_count, *next_count,
            "{topic}: each redelivery counts one more"
        );
        assert_eq!(
            &message.payload[..],
            topic.as_bytes(),
            "{topic}: the same payload"
        );
        assert_eq!(
            message.timestamp, published.timestamp,
            "{topic}: the original timestamp"
        );
        *next_count += 1;
    }
    for (sub_id, (_, published, _)) in &expected {
        subscriber.ack(*sub_id, published.seq).unwrap();
    }
    // Redeliveries that crossed the acks on the wire may still arrive; after those, the
    // acked messages must stay quiet for several ack timeouts.
    let (_, others) = receive_messages(&mut subscriber, usize::MAX, SHORT_ACK_TIMEOUT);
    assert!(
        others.is_empty(),
        "unexpected events after the acks: {others:?}"
    );
    assert_quiet(&mut subscriber, SHORT_ACK_TIMEOUT * 3);
}

#[test]
fn redelivery_waits_for_ack_timeout() {
    let ack_timeout = Duration::from_secs(1);
    let server = start_broker(2, |config| config.ack_timeout = ack_timeout);
    let mut client = connect(&server);
    subscribe(&mut client, "patience", explicit(StartPosition::New));
    let before_publish = Instant::now();
    client.publish_confirmed("patience", b"m").unwrap();
    let first = next_message(&mut client);
    assert_eq!(first.delivery_count, 1, "first delivery");

    assert_quiet(&mut client, Duration::from_millis(300));
    let second = next_message(&mut client);
    let waited = before_publish.elapsed();
    assert_eq!(second.seq, first.seq, "the unacked message comes back");
    assert_eq!(second.delivery_count, 2, "second delivery");
    // The broker delivered the message after `before_publish`, so its ack deadline is
    // at least one ack timeout after that instant.
    assert!(
        waited >= ack_timeout,
        "redelivered after {waited:?}, before the ack timeout of {ack_timeout:?}"
    );
}

#[test]
fn ack_single_leaves_others_unacked() {
    let server = start_broker(2, |config| config.ack_timeout = SHORT_ACK_TIMEOUT);
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "single", explicit(StartPosition::New));
    publish_numbered(&mut client, "single", 1..=3);
    let messages = expect_messages(&mut client, 3);
    assert_eq!(seqs(&messages), vec![1, 2, 3], "first deliveries");
    client.ack(subscription.sub_id, 2).unwrap();

    let redelivered = expect_messages(&mut client, 2);
    assert_eq!(
        seqs(&redelivered),
        vec![1, 3],
        "only the unacked messages come back"
    );
    assert!(
        redelivered.iter().all(|m| m.delivery_count == 2),
        "redeliveries have delivery count 2: {redelivered:?}"
    );
    client.ack(subscription.sub_id, 1).unwrap();
    client.ack(subscription.sub_id, 3).unwrap();
    assert_quiet(&mut client, SHORT_ACK_TIMEOUT * 3);
}

#[test]
fn ack_up_to_is_cumulative() {
    let server = start_broker(2, |config| config.ack_timeout = SHORT_ACK_TIMEOUT);
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "cumulative", explicit(StartPosition::New));
    publish_numbered(&mut client, "cumulative", 1..=5);
    let messages = expect_messages(&mut client, 5);
    assert_eq!(seqs(&messages), vec![1, 2, 3, 4, 5], "first deliveries");
    client.ack_up_to(subscription.sub_id, 3).unwrap();

    let redelivered = expect_messages(&mut client, 2);
    assert_eq!(
        seqs(&redelivered),
        vec![4, 5],
        "messages above the cumulative ack come back"
    );
    client.ack_up_to(subscription.sub_id, 5).unwrap();
    assert_quiet(&mut client, SHORT_ACK_TIMEOUT * 3);
}

#[test]
fn ack_up_to_covers_only_delivered() {
    let server = start_broker(2, |config| config.ack_timeout = SHORT_ACK_TIMEOUT);
    let mut client = connect(&server);
    let options = SubscribeOptions {
        max_in_flight: 2,
        ..explicit(StartPosition::New)
    };
    let subscription = subscribe(&mut client, "ahead", options);
    publish_numbered(&mut client, "ahead", 1..=4);
    let messages = expect_messages(&mut client, 2);
    assert_eq!(
        seqs(&messages),
        vec![1, 2],
        "the in-flight limit holds back 3 and 4"
    );

    client.ack_up_to(subscription.sub_id, 4).unwrap();
    let mut first_deliveries = Vec::new();
    let mut redeliveries = Vec::new();
    let mut errors = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while redeliveries.len() < 2 && Instant::now() < deadline {
        match next_event(&mut client, TIMEOUT) {
            Event::Message(m) if m.delivery_count == 1 => first_deliveries.push(m.seq),
            Event::Message(m) => redeliveries.push(m.seq),
            Event::Error(err) => errors.push(err),
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(
        first_deliveries,
        vec![3, 4],
        "the cumulative ack freed the in-flight slots"
    );
    assert_eq!(
        redeliveries,
        vec![3, 4],
        "an ack up to 4 sent before 3 and 4 were delivered must not ack them"
    );
    assert_eq!(
        errors.len(),
        1,
        "an ACK_UP_TO past the delivered messages gets one error: {errors:?}"
    );
    assert_eq!(
        errors[0].code,
        ErrorCode::UnknownSequence,
        "the error about the ACK_UP_TO past the delivered messages"
    );
    assert!(
        !redeliveries.contains(&1) && !redeliveries.contains(&2),
        "messages 1 and 2 were acked"
    );
}

#[test]
fn max_in_flight_pauses_delivery() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut client = connect(&server);
    let options = SubscribeOptions {
        max_in_flight: 3,
        ..explicit(StartPosition::New)
    };
    let subscription = subscribe(&mut client, "paced", options);
    publish_numbered(&mut client, "paced", 1..=10);

    let messages = expect_messages(&mut client, 3);
    assert_eq!(
        seqs(&messages),
        vec![1, 2, 3],
        "three messages fill the in-flight limit"
    );
    assert_quiet(&mut client, Duration::from_millis(300));

    client.ack(subscription.sub_id, 1).unwrap();
    let messages = expect_messages(&mut client, 1);
    assert_eq!(seqs(&messages), vec![4], "one ack frees one slot");
    assert_quiet(&mut client, Duration::from_millis(300));

    client.ack_up_to(subscription.sub_id, 4).unwrap();
    let messages = expect_messages(&mut client, 3);
    assert_eq!(
        seqs(&messages),
        vec![5, 6, 7],
        "a cumulative ack frees three slots"
    );
    assert_quiet(&mut client, Duration::from_millis(300));

    client.ack_up_to(subscription.sub_id, 7).unwrap();
    let messages = expect_messages(&mut client, 3);
    assert_eq!(seqs(&messages), vec![8, 9, 10], "the rest follows");
    assert!(
        messages.iter().all(|m| m.delivery_count == 1),
        "no message was redelivered: {messages:?}"
    );
}

#[test]
fn max_in_flight_clamped_to_server() {
    let server = start_broker(2, |config| {
        config.ack_timeout = LONG_ACK_TIMEOUT;
        config.max_in_flight = 2;
    });
    let mut publisher = connect(&server);
    publish_numbered(&mut publisher, "clamped", 1..=6);
    for requested in [0, 2, 100] {
        let mut client = connect(&server);
        let options = SubscribeOptions {
            max_in_flight: requested,
            ..explicit(StartPosition::Earliest)
        };
        let subscription = subscribe(&mut client, "clamped", options);
        let messages = expect_messages(&mut client, 2);
        assert_eq!(
            seqs(&messages),
            vec![1, 2],
            "max_in_flight {requested} on a broker limit of 2"
        );
        assert_quiet(&mut client, Duration::from_millis(300));
        client.ack_up_to(subscription.sub_id, 2).unwrap();
        let messages = expect_messages(&mut client, 2);
        assert_eq!(
            seqs(&messages),
            vec![3, 4],
            "max_in_flight {requested}: acks reopen exactly two slots"
        );
        assert_quiet(&mut client, Duration::from_millis(100));
    }
}

#[test]
fn ack_unknown_sequence_is_rejected() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "unknown-seq", explicit(StartPosition::New));
    publish_numbered(&mut client, "unknown-seq", 1..=2);
    expect_messages(&mut client, 2);

    for seq in [0, 3, 1000] {
        client.ack(subscription.sub_id, seq).unwrap();
        let err = next_error(&mut client);
        assert_eq!(
            err.code,
            ErrorCode::UnknownSequence,
            "ack of never-delivered {seq}"
        );
        assert_eq!(
            err.reference,
            u64::from(subscription.sub_id),
            "the error names the subscription"
        );
    }
    client.ping().expect("the connection carries on");
    client.ack_up_to(subscription.sub_id, 2).unwrap();
    assert_quiet(&mut client, Duration::from_millis(200));
}

#[test]
fn ack_before_start_is_unknown() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut client = connect(&server);
    publish_numbered(&mut client, "late-start", 1..=5);
    let subscription = subscribe(&mut client, "late-start", explicit(StartPosition::New));
    assert_eq!(
        subscription.next_seq, 6,
        "the subscription starts after message 5"
    );
    publish_numbered(&mut client, "late-start", 6..=6);
    let messages = expect_messages(&mut client, 1);
    assert_eq!(seqs(&messages), vec![6], "only message 6 is delivered");

    // Message 3 was published before the subscription started, so it was never
    // delivered to this consumer. The shard handles acks and sends their errors in order, so
    // the error about 777 marks the point by which the error about 3 must have arrived.
    client.ack(subscription.sub_id, 3).unwrap();
    client.ack(subscription.sub_id, 777).unwrap();
    let mut errors = Vec::new();
    loop {
        let err = next_error(&mut client);
        let marker = err.message.contains("777");
        errors.push(err);
        if marker {
            break;
        }
    }
    assert_eq!(
        errors.len(),
        2,
        "an ack of message 3, published before the subscription started and never \
         delivered to it, must get UNKNOWN_SEQUENCE before the ack of 777 does; got {errors:?}"
    );
    assert_eq!(
        errors[0].code,
        ErrorCode::UnknownSequence,
        "ack of never-delivered 3"
    );
    assert_eq!(
        errors[0].reference,
        u64::from(subscription.sub_id),
        "the error names the subscription"
    );
}

#[test]
fn double_ack_is_ignored() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "twice", explicit(StartPosition::New));
    publish_numbered(&mut client, "twice", 1..=2);
    expect_messages(&mut client, 2);

    client.ack(subscription.sub_id, 1).unwrap();
    client.ack(subscription.sub_id, 1).unwrap();
    client.ack_up_to(subscription.sub_id, 1).unwrap();
    client.ack_up_to(subscription.sub_id, 2).unwrap();
    client.ack(subscription.sub_id, 2).unwrap();
    // The shard handles acks and sends their errors in order, so the first error must be
    // the one about 777.
    client.ack(subscription.sub_id, 777).unwrap();
    let err = next_error(&mut client);
    assert_eq!(
        err.code,
        ErrorCode::UnknownSequence,
        "the ack of 777 is rejected"
    );
    assert!(
        err.message.contains("777"),
        "an ack of an already acked message produced an error: {err}"
    );
    assert_quiet(&mut client, Duration::from_millis(200));
}

#[test]
fn ack_in_none_mode_is_rejected() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "no-acks", SubscribeOptions::default());
    client.publish_confirmed("no-acks", b"m").unwrap();
    expect_messages(&mut client, 1);

    client.ack(subscription.sub_id, 1).unwrap();
    let err = next_error(&mut client);
    assert_eq!(err.code, ErrorCode::InvalidArgument, "ack in ack mode none");
    assert_eq!(
        err.reference,
        u64::from(subscription.sub_id),
        "names the subscription"
    );

    client.ack_up_to(subscription.sub_id, 1).unwrap();
    let err = next_error(&mut client);
    assert_eq!(
        err.code,
        ErrorCode::InvalidArgument,
        "ack_up_to in ack mode none"
    );
    assert_eq!(
        err.reference,
        u64::from(subscription.sub_id),
        "names the subscription"
    );

    client.publish_confirmed("no-acks", b"m2").unwrap();
    let messages = expect_messages(&mut client, 1);
    assert_eq!(seqs(&messages), vec![2], "the subscription carries on");
}

#[test]
fn ack_unknown_subscription_is_rejected() {
    let server = start_broker(2, |_| {});
    let mut client = connect(&server);
    for (name, result) in [
        ("ack", client.ack(42, 1)),
        ("ack_up_to", client.ack_up_to(43, 1)),
    ] {
        result.unwrap_or_else(|err| panic!("{name} could not be sent: {err}"));
    }
    for sub_id in [42, 43] {
        let err = next_error(&mut client);
        assert_eq!(
            err.code,
            ErrorCode::UnknownSubscription,
            "ack for subscription {sub_id}"
        );
        assert_eq!(
            err.reference, sub_id,
            "the error names subscription {sub_id}"
        );
    }
    client.ping().expect("the connection carries on");
}

#[test]
fn unsubscribe_stops_redelivery() {
    let server = start_broker(2, |config| config.ack_timeout = SHORT_ACK_TIMEOUT);
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "dropped", explicit(StartPosition::New));
    publish_numbered(&mut client, "dropped", 1..=2);
    expect_messages(&mut client, 2);
    client.unsubscribe(subscription.sub_id).unwrap();
    // Redeliveries sent before UNSUBSCRIBED stay queued in the client.
    let mut late = Vec::new();
    while let Some(event) = client.recv_timeout(Duration::ZERO).unwrap() {
        late.push(event);
    }
    assert!(
        late.len() <= 2,
        "at most one redelivery of each message before UNSUBSCRIBED: {late:?}"
    );
    assert_quiet(&mut client, SHORT_ACK_TIMEOUT * 3);
}

#[test]
fn retry_survives_ring_eviction() {
    let server = start_broker(2, |config| {
        config.ack_timeout = SHORT_ACK_TIMEOUT;
        config.retain_messages = 2;
    });
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "evicted", explicit(StartPosition::New));
    publish_numbered(&mut client, "evicted", 1..=1);
    let first = next_message(&mut client);
    assert_eq!(first.seq, 1, "first delivery");

    // Messages 2..=6 push message 1 out of the two-message ring buffer.
    publish_numbered(&mut client, "evicted", 2..=6);
    let mut later = BTreeSet::new();
    let redelivered = loop {
        let message = next_message(&mut client);
        if message.seq == 1 {
            break message;
        }
        client.ack(subscription.sub_id, message.seq).unwrap();
        later.insert(message.seq);
    };
    assert_eq!(redelivered.delivery_count, 2, "message 1 is redelivered");
    assert_eq!(
        &redelivered.payload[..],
        b"payload-1",
        "the retry buffer keeps the payload after the ring evicted it"
    );
    client.ack(subscription.sub_id, 1).unwrap();
    while later.len() < 5 {
        let message = next_message(&mut client);
        client.ack(subscription.sub_id, message.seq).unwrap();
        later.insert(message.seq);
    }
    assert_eq!(
        later.into_iter().collect::<Vec<_>>(),
        vec![2, 3, 4, 5, 6],
        "the later messages were delivered too"
    );
}

fn check_durable_consumer_resumes(shards: usize) {
    let server = start_broker(shards, |config| {
        config.ack_timeout = LONG_ACK_TIMEOUT;
        config.consumer_idle_timeout = Duration::from_secs(30);
    });
    let topic = topic_on_shard(shards - 1, shards, 1);
    let mut publisher = connect(&server);
    publish_numbered(&mut publisher, &topic, 1..=20);

    let (mut first, subscription) =
        attach(&server, &topic, durable("worker", StartPosition::Earliest));
    assert_eq!(
        subscription.next_seq, 1,
        "a new durable consumer starts at its start position"
    );
    let messages = expect_messages(&mut first, 10);
    assert_eq!(
        seqs(&messages),
        (1..=10).collect::<Vec<_>>(),
        "first connection"
    );
    first.ack_up_to(subscription.sub_id, 5).unwrap();
    first.ack(subscription.sub_id, 7).unwrap();
    drop(first);

    // Messages 11..=20 were sent to the first connection too, unread and unacked.
    let (mut second, subscription) = attach(&server, &topic, durable("worker", StartPosition::New));
    assert_eq!(
        subscription.next_seq, 21,
        "({shards} shards) after the redeliveries the consumer reads on from its cursor"
    );
    let expected: Vec<u64> = [6].into_iter().chain(8..=20).collect();
    let messages = expect_messages(&mut second, expected.len());
    assert_eq!(
        seqs(&messages),
        expected,
        "({shards} shards) every unacked message is redelivered on re-attach, at once and \
         long before the {LONG_ACK_TIMEOUT:?} ack timeout"
    );
    for message in &messages {
        assert_eq!(
            message.delivery_count, 2,
            "({shards} shards) message {} is a redelivery",
            message.seq
        );
        assert_eq!(
            message.sub_id, subscription.sub_id,
            "redeliveries carry the new subscription id"
        );
        assert_eq!(
            message.payload,
            format!("payload-{}", message.seq).as_bytes(),
            "redelivered payload of {}",
            message.seq
        );
    }
    second.ack_up_to(subscription.sub_id, 20).unwrap();

    publish_numbered(&mut publisher, &topic, 21..=21);
    let message = next_message(&mut second);
    assert_eq!(
        message.seq, 21,
        "({shards} shards) delivery continues from the cursor"
    );
    assert_eq!(message.delivery_count, 1, "a first delivery");
}

#[test]
fn durable_consumer_resumes_2_shards() {
    check_durable_consumer_resumes(2);
}

#[test]
fn durable_consumer_resumes_4_shards() {
    check_durable_consumer_resumes(4);
}

#[test]
fn durable_consumer_receives_all_across_reconnects() {
    let shards = 2;
    let server = start_broker(shards, |config| {
        config.ack_timeout = LONG_ACK_TIMEOUT;
        config.consumer_idle_timeout = Duration::from_secs(30);
    });
    let topic = "at-least-once";
    let total = 300u64;
    let publisher = {
        let mut client = connect(&server);
        thread::spawn(move || {
            for i in 1..=total {
                client
                    .publish(topic, format!("payload-{i}").as_bytes())
                    .unwrap();
                if i % 10 == 0 {
                    thread::sleep(Duration::from_millis(2));
                }
            }
            client.ping().unwrap();
        })
    };

    let mut processed = BTreeSet::new();
    let mut connections = 0;
    let deadline = Instant::now() + 3 * TIMEOUT;
    while (processed.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "after {connections} connections only {} of {total} messages were processed",
            processed.len()
        );
        connections += 1;
        let (mut client, subscription) =
            attach(&server, topic, durable("flaky", StartPosition::Earliest));
        // Process up to 40 messages, then drop the connection without acking the last
        // three: they must come back on the next connection.
        for index in 0..40 {
            let Some(event) = client.recv_timeout(Duration::from_millis(500)).unwrap() else {
                break;
            };
            let Event::Message(message) = event else {
                panic!("unexpected event {event:?}");
            };
            assert_eq!(
                message.payload,
                format!("payload-{}", message.seq).as_bytes(),
                "payload of {}",
                message.seq
            );
            if index < 37 {
                processed.insert(message.seq);
                client.ack(subscription.sub_id, message.seq).unwrap();
            }
        }
    }
    publisher.join().expect("publisher thread");
    assert_eq!(
        processed.into_iter().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "every message was processed at least once over {connections} connections"
    );
}

#[test]
fn durable_consumer_in_use_rejected() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut publisher = connect(&server);
    let (mut owner, owned) = attach(&server, "exclusive", durable("solo", StartPosition::New));

    let mut rival = connect(&server);
    let result = rival.subscribe("exclusive", durable("solo", StartPosition::New));
    let err = server_error(result);
    assert_eq!(
        err.code,
        ErrorCode::ConsumerInUse,
        "a second live attach is rejected"
    );
    assert_eq!(
        err.reference, 1,
        "the error names the rival's subscription id"
    );
    let err = server_error(owner.subscribe("exclusive", durable("solo", StartPosition::New)));
    assert_eq!(
        err.code,
        ErrorCode::ConsumerInUse,
        "a second attach on the same connection is rejected"
    );
    subscribe(
        &mut rival,
        "other-topic",
        durable("solo", StartPosition::New),
    );

    publish_numbered(&mut publisher, "exclusive", 1..=1);
    let message = next_message(&mut owner);
    assert_eq!(
        message.sub_id, owned.sub_id,
        "the first attach keeps receiving"
    );
    assert_quiet(&mut rival, Duration::from_millis(200));

    drop(owner);
    let (mut successor, _) = attach(&server, "exclusive", durable("solo", StartPosition::New));
    let message = next_message(&mut successor);
    assert_eq!(
        message.seq, 1,
        "the unacked message moves to the next attach"
    );
    assert_eq!(message.delivery_count, 2, "as a redelivery");
}

#[test]
fn concurrent_attach_has_one_winner() {
    let server = start_broker(4, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
    let contenders: Vec<_> = (0..6)
        .map(|_| {
            let mut client = connect(&server);
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                let outcome =
                    match client.subscribe("contested", durable("only", StartPosition::New)) {
                        Ok(subscription) => Ok(subscription.sub_id),
                        Err(ClientError::Server(err)) => Err(err.code),
                        Err(err) => panic!("subscribe failed without an ERROR answer: {err}"),
                    };
                // The client is returned so that the winner's connection stays open
                // until every outcome is in.
                (client, outcome)
            })
        })
        .collect();
    let (_clients, outcomes): (Vec<Client>, Vec<Result<u32, ErrorCode>>) = contenders
        .into_iter()
        .map(|handle| handle.join().expect("contender thread"))
        .unzip();
    let winners = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(winners, 1, "exactly one attach wins: {outcomes:?}");
    for outcome in &outcomes {
        if let Err(code) = outcome {
            assert_eq!(
                *code,
                ErrorCode::ConsumerInUse,
                "the others get CONSUMER_IN_USE: {outcomes:?}"
            );
        }
    }
}

#[test]
fn pipelined_unsubscribe_deletes_consumer() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut publisher = connect(&server);
    publish_numbered(&mut publisher, "pipelined", 1..=2);
    let (mut raw, _) = RawConnection::handshake(&server);
    raw.send_frame(&pubsub::protocol::Frame::Subscribe {
        sub_id: 1,
        topic: bytes::Bytes::from_static(b"pipelined"),
        start: StartPosition::Earliest,
        ack_mode: AckMode::Explicit,
        max_in_flight: 0,
        consumer: bytes::Bytes::from_static(b"brief"),
    });
    raw.send_frame(&pubsub::protocol::Frame::Unsubscribe { sub_id: 1 });
    let mut frames = Vec::new();
    loop {
        let frame = raw.expect_frame();
        let done = frame == pubsub::protocol::Frame::Unsubscribed { sub_id: 1 };
        frames.push(frame);
        if done {
            break;
        }
    }
    assert!(
        matches!(
            frames.first(),
            Some(pubsub::protocol::Frame::Subscribed { sub_id: 1, .. })
        ),
        "SUBSCRIBED comes first: {frames:?}"
    );

    // The consumer was deleted, so a new attach starts fresh from earliest.
    let (mut client, subscription) = attach(
        &server,
        "pipelined",
        durable("brief", StartPosition::Earliest),
    );
    assert_eq!(subscription.next_seq, 1, "a fresh consumer");
    let messages = expect_messages(&mut client, 2);
    assert!(
        messages.iter().all(|m| m.delivery_count == 1),
        "no redeliveries from the deleted consumer: {messages:?}"
    );
}

#[test]
fn unsubscribe_deletes_durable_consumer() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let mut client = connect(&server);
    publish_numbered(&mut client, "deleted", 1..=3);
    let first = subscribe(
        &mut client,
        "deleted",
        durable("temp", StartPosition::Earliest),
    );
    expect_messages(&mut client, 3);
    client.unsubscribe(first.sub_id).unwrap();

    let second = subscribe(
        &mut client,
        "deleted",
        durable("temp", StartPosition::Earliest),
    );
    assert_eq!(
        second.next_seq, 1,
        "a fresh consumer starts at its start position"
    );
    let messages = expect_messages(&mut client, 3);
    assert_eq!(seqs(&messages), vec![1, 2, 3], "replayed from earliest");
    assert!(
        messages.iter().all(|m| m.delivery_count == 1),
        "no redeliveries from the deleted consumer: {messages:?}"
    );
}

#[test]
fn durable_consumer_expires_when_idle() {
    let idle_timeout = Duration::from_millis(300);
    let server = start_broker(2, |config| {
        config.ack_timeout = LONG_ACK_TIMEOUT;
        config.consumer_idle_timeout = idle_timeout;
    });
    let mut publisher = connect(&server);
    publish_numbered(&mut publisher, "idle", 1..=3);
    let (mut client, _) = attach(&server, "idle", durable("sleepy", StartPosition::Earliest));
    expect_messages(&mut client, 3);
    drop(client);

    // Each attempt that finds the old consumer re-attaches it and restarts its idle
    // time, so attempts are spaced further apart than the idle timeout.
    let (mut client, subscription) = poll_until(
        "the idle durable consumer is dropped",
        idle_timeout * 2,
        || {
            let (client, subscription) =
                attach(&server, "idle", durable("sleepy", StartPosition::Earliest));
            (subscription.next_seq == 1).then_some((client, subscription))
        },
    );
    let messages = expect_messages(&mut client, 3);
    assert_eq!(
        seqs(&messages),
        vec![1, 2, 3],
        "the new consumer starts from earliest"
    );
    assert!(
        messages
            .iter()
            .all(|m| m.delivery_count == 1 && m.sub_id == subscription.sub_id),
        "no redeliveries from the expired consumer: {messages:?}"
    );
}

#[test]
fn durable_ack_mode_mismatch_rejected() {
    let server = start_broker(2, |config| config.ack_timeout = LONG_ACK_TIMEOUT);
    let (client, _) = attach(&server, "modes", durable("strict", StartPosition::New));
    drop(client);
    let mut client = connect(&server);
    let options = SubscribeOptions {
        ack_mode: AckMode::None,
        ..durable("strict", StartPosition::New)
    };
    let err = poll_until(
        "the first connection is detached",
        Duration::from_millis(20),
        || {
            let err = server_error(client.subscribe("modes", options.clone()));
            (err.code != ErrorCode::ConsumerInUse).then_some(err)
        },
    );
    assert_eq!(
        err.code,
        ErrorCode::InvalidArgument,
        "re-attaching with another ack mode is rejected"
    );
}

#[test]
fn durable_gap_after_eviction() {
    let server = start_broker(2, |config| {
        config.ack_timeout = LONG_ACK_TIMEOUT;
        config.retain_messages = 2;
    });
    let mut publisher = connect(&server);
    // The in-flight limit of 3 keeps the first connection from taking messages 4 and
    // later, whenever the broker notices that it closed.
    let limited = SubscribeOptions {
        max_in_flight: 3,
        ..durable("behind", StartPosition::New)
    };
    let (mut first, _) = attach(&server, "lagging", limited);
    publish_numbered(&mut publisher, "lagging", 1..=3);
    expect_messages(&mut first, 3);
    publish_numbered(&mut publisher, "lagging", 4..=13);
    drop(first);

    let (mut second, subscription) =
        attach(&server, "lagging", durable("behind", StartPosition::New));
    let redelivered = expect_messages(&mut second, 3);
    assert_eq!(
        seqs(&redelivered),
        vec![1, 2, 3],
        "unacked messages come back first"
    );
    assert!(
        redelivered.iter().all(|m| m.delivery_count == 2),
        "from the retry buffer, though the ring evicted them: {redelivered:?}"
    );
    assert_eq!(
        payloads(&redelivered),
        vec!["payload-1", "payload-2", "payload-3"],
        "redelivered payloads"
    );
    let gap = next_event(&mut second, TIMEOUT);
    assert_eq!(
        gap,
        Event::Gap {
            sub_id: subscription.sub_id,
            first: 4,
            last: 11
        },
        "the cursor's evicted messages are reported as a GAP"
    );
    let messages = expect_messages(&mut second, 2);
    assert_eq!(seqs(&messages), vec![12, 13], "then the retained messages");
}

#[test]
fn durable_none_mode_resumes_at_cursor() {
    let server = start_broker(2, |config| {
        config.consumer_idle_timeout = Duration::from_secs(30)
    });
    let mut publisher = connect(&server);
    let options = SubscribeOptions {
        consumer: Some("reader".into()),
        start: StartPosition::Earliest,
        ..SubscribeOptions::default()
    };
    publish_numbered(&mut publisher, "cursor", 1..=3);
    let (mut first, _) = attach(&server, "cursor", options.clone());
    expect_messages(&mut first, 3);
    drop(first);

    let (mut second, subscription) = attach(&server, "cursor", options);
    assert_eq!(
        subscription.next_seq, 4,
        "the consumer resumes at its cursor, not at its start position"
    );
    assert_quiet(&mut second, Duration::from_millis(200));
    publish_numbered(&mut publisher, "cursor", 4..=5);
    let messages = expect_messages(&mut second, 2);
    assert_eq!(
        seqs(&messages),
        vec![4, 5],
        "delivery continues at the cursor"
    );
    assert!(
        messages.iter().all(|m| m.delivery_count == 1),
        "ack mode none never redelivers: {messages:?}"
    );
}

#[test]
fn queued_acks_prevent_redelivery() {
    let server = start_broker(2, |config| config.ack_timeout = Duration::from_millis(300));
    let mut consumer = connect(&server);
    let mut publisher = connect(&server);
    let options = SubscribeOptions {
        ack_mode: AckMode::Explicit,
        ..SubscribeOptions::default()
    };
    let subscription = consumer.subscribe("queued-acks", options).unwrap();
    for i in 0..10 {
        publisher
            .publish_confirmed("queued-acks", format!("m{i}").as_bytes())
            .unwrap();
    }

    let (messages, others) = receive_messages(&mut consumer, 10, Duration::from_secs(10));
    assert!(others.is_empty(), "unexpected events: {others:?}");
    assert_eq!(messages.len(), 10, "every message arrives once");
    for message in &messages {
        consumer
            .queue_ack(subscription.sub_id, message.seq)
            .unwrap();
    }
    // The ping flushes the queued acks before it waits for its reply.
    consumer.ping().unwrap();
    assert_quiet(&mut consumer, Duration::from_millis(900));
}
