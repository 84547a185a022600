//! Client tests against a scripted fake broker on a loopback socket, so that each test
//! controls exactly which frames arrive and in what order.

use super::fake_broker::{MAX_PAYLOAD, fake_broker, message};
use super::*;
use std::io::Read;

#[test]
fn connect_stores_server_info() {
    let (addr, broker) = fake_broker(true, |_| {});
    let client = Client::connect(addr).unwrap();
    let info = client.server_info();
    assert_eq!(info.version, PROTOCOL_VERSION);
    assert_eq!(info.max_payload, MAX_PAYLOAD);
    assert_eq!(info.max_frame, MAX_PAYLOAD + protocol::FRAME_HEADROOM);
    assert_eq!(info.shards, 2);
    assert_eq!(info.ack_timeout, Duration::from_millis(1500));
    drop(client);
    broker.join().unwrap();
}

#[test]
fn connect_returns_handshake_error() {
    let (addr, broker) = fake_broker(false, |broker| {
        broker.expect_frame();
        broker.send(Frame::Error {
            code: ErrorCode::UnsupportedVersion,
            reference: 0,
            message: Bytes::from_static(b"version 1 is not supported"),
        });
    });
    match Client::connect(addr) {
        Err(ClientError::Server(err)) => {
            assert_eq!(err.code, ErrorCode::UnsupportedVersion);
            assert_eq!(err.message, "version 1 is not supported");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    broker.join().unwrap();
}

#[test]
fn connect_rejects_other_version() {
    let (addr, broker) = fake_broker(false, |broker| {
        broker.expect_frame();
        broker.send(Frame::HelloOk {
            version: PROTOCOL_VERSION + 1,
            max_payload: MAX_PAYLOAD,
            max_frame: protocol::max_frame_for(MAX_PAYLOAD),
            shards: 1,
            ack_timeout_ms: 1,
        });
    });
    let result = Client::connect(addr);
    assert!(
        matches!(result, Err(ClientError::Protocol(_))),
        "{result:?}"
    );
    broker.join().unwrap();
}

#[test]
fn invalid_publish_sends_nothing() {
    let (addr, broker) = fake_broker(true, |broker| {
        // The ping must be the first frame: the rejected publishes were never sent.
        let before = broker.answer_ping();
        assert_eq!(before, Vec::new());
    });
    let mut client = Client::connect(addr).unwrap();

    let result = client.publish("a b", b"x");
    assert!(
        matches!(result, Err(ClientError::InvalidTopic(_))),
        "{result:?}"
    );
    let result = client.queue_publish("", b"x");
    assert!(
        matches!(result, Err(ClientError::InvalidTopic(_))),
        "{result:?}"
    );
    let result = client.publish_confirmed("t", &[0; MAX_PAYLOAD as usize + 1]);
    match result {
        Err(ClientError::PayloadTooLarge { size, max }) => {
            assert_eq!(size, MAX_PAYLOAD as usize + 1);
            assert_eq!(max, MAX_PAYLOAD);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    for (name, reason) in [
        ("c".repeat(256), "it is longer than 255 bytes"),
        ("a b".to_owned(), "whitespace is not allowed"),
    ] {
        let options = SubscribeOptions {
            consumer: Some(name),
            ..SubscribeOptions::default()
        };
        match client.subscribe("t", options) {
            Err(ClientError::InvalidConsumer { reason: got, .. }) => assert_eq!(got, reason),
            other => panic!("expected InvalidConsumer, got {other:?}"),
        }
    }

    client.ping().unwrap();
    drop(client);
    broker.join().unwrap();
}

#[test]
fn publish_frames_match_codec() {
    let mut direct = BytesMut::new();
    encode_publish(&mut direct, 42, b"orders", b"payload");
    let mut via_frame = BytesMut::new();
    Frame::Publish {
        request_id: 42,
        topic: Bytes::from_static(b"orders"),
        payload: Bytes::from_static(b"payload"),
    }
    .encode(&mut via_frame);
    assert_eq!(direct, via_frame);
}

#[test]
fn publish_confirmed_queues_events_in_order() {
    let (addr, broker) = fake_broker(true, |broker| {
        let Frame::Publish {
            request_id,
            topic,
            payload,
        } = broker.expect_frame()
        else {
            panic!("expected PUBLISH");
        };
        assert!(request_id >= FIRST_REQUEST_ID);
        assert_eq!(&topic[..], b"orders");
        assert_eq!(&payload[..], b"hello");

        broker.send(message(1, 5));
        broker.send(Frame::Gap {
            sub_id: 1,
            first: 6,
            last: 9,
        });
        // Same number as a subscription id, so it must not be taken as the reply.
        broker.send(Frame::Error {
            code: ErrorCode::UnknownSequence,
            reference: 1,
            message: Bytes::from_static(b"never delivered"),
        });
        // A confirmation of some other request is dropped.
        broker.send(Frame::Published {
            request_id: request_id + 100,
            seq: 1,
            timestamp: 1,
        });
        broker.send(Frame::Published {
            request_id,
            seq: 77,
            timestamp: 123_456,
        });
        broker.send(message(1, 10));
    });
    let mut client = Client::connect(addr).unwrap();

    let published = client.publish_confirmed("orders", b"hello").unwrap();
    assert_eq!(
        published,
        Published {
            seq: 77,
            timestamp: 123_456
        }
    );

    let Event::Message(first) = client.recv().unwrap() else {
        panic!("expected a message first");
    };
    assert_eq!(first.seq, 5);
    assert_eq!(&first.payload[..], b"m5");
    assert_eq!(
        client.recv().unwrap(),
        Event::Gap {
            sub_id: 1,
            first: 6,
            last: 9
        }
    );
    let Event::Error(err) = client.recv().unwrap() else {
        panic!("expected an error third");
    };
    assert_eq!(err.code, ErrorCode::UnknownSequence);
    assert_eq!(err.reference, 1);
    let Event::Message(after) = client.recv().unwrap() else {
        panic!("expected the message sent after PUBLISHED");
    };
    assert_eq!(after.seq, 10);

    broker.join().unwrap();
    assert!(matches!(client.recv(), Err(ClientError::Closed)));
}

#[test]
fn publish_confirmed_returns_its_error() {
    let (addr, broker) = fake_broker(true, |broker| {
        let Frame::Publish { request_id, .. } = broker.expect_frame() else {
            panic!("expected PUBLISH");
        };
        broker.send(Frame::Error {
            code: ErrorCode::ShuttingDown,
            reference: request_id,
            message: Bytes::from_static(b"broker is shutting down"),
        });
    });
    let mut client = Client::connect(addr).unwrap();
    match client.publish_confirmed("t", b"x") {
        Err(ClientError::Server(err)) => assert_eq!(err.code, ErrorCode::ShuttingDown),
        other => panic!("expected a server error, got {other:?}"),
    }
    broker.join().unwrap();
}

#[test]
fn subscribe_sends_options_and_numbers_ids() {
    let (addr, broker) = fake_broker(true, |broker| {
        let frame = broker.expect_frame();
        assert_eq!(
            frame,
            Frame::Subscribe {
                sub_id: 1,
                topic: Bytes::from_static(b"orders"),
                start: StartPosition::Last(3),
                ack_mode: AckMode::Explicit,
                max_in_flight: 8,
                consumer: Bytes::from_static(b"billing"),
            }
        );
        broker.send(Frame::Subscribed {
            sub_id: 1,
            next_seq: 40,
        });

        let Frame::Subscribe {
            sub_id, consumer, ..
        } = broker.expect_frame()
        else {
            panic!("expected SUBSCRIBE");
        };
        assert_eq!(sub_id, 2);
        assert!(consumer.is_empty());
        broker.send(Frame::Error {
            code: ErrorCode::ConsumerInUse,
            reference: 2,
            message: Bytes::from_static(b"consumer is attached elsewhere"),
        });
    });
    let mut client = Client::connect(addr).unwrap();

    let options = SubscribeOptions {
        start: StartPosition::Last(3),
        ack_mode: AckMode::Explicit,
        consumer: Some("billing".into()),
        max_in_flight: 8,
    };
    let subscription = client.subscribe("orders", options).unwrap();
    assert_eq!(
        subscription,
        Subscription {
            sub_id: 1,
            next_seq: 40
        }
    );

    match client.subscribe("orders", SubscribeOptions::default()) {
        Err(ClientError::Server(err)) => {
            assert_eq!(err.code, ErrorCode::ConsumerInUse);
            assert_eq!(err.reference, 2);
        }
        other => panic!("expected CONSUMER_IN_USE, got {other:?}"),
    }
    broker.join().unwrap();
}

#[test]
fn unsubscribe_skips_ack_errors() {
    let (addr, broker) = fake_broker(true, |broker| {
        assert_eq!(broker.expect_frame(), Frame::Ack { sub_id: 3, seq: 9 });
        assert_eq!(broker.expect_frame(), Frame::AckUpTo { sub_id: 3, seq: 12 });
        assert_eq!(broker.expect_frame(), Frame::Unsubscribe { sub_id: 3 });
        broker.send(Frame::Error {
            code: ErrorCode::UnknownSequence,
            reference: 3,
            message: Bytes::from_static(b"sequence number 9 was never delivered"),
        });
        broker.send(Frame::Unsubscribed { sub_id: 3 });
        assert_eq!(broker.expect_frame(), Frame::Unsubscribe { sub_id: 4 });
        broker.send(Frame::Error {
            code: ErrorCode::UnknownSubscription,
            reference: 4,
            message: Bytes::from_static(b"no subscription 4"),
        });
    });
    let mut client = Client::connect(addr).unwrap();

    client.ack(3, 9).unwrap();
    client.ack_up_to(3, 12).unwrap();
    client.unsubscribe(3).unwrap();
    let Event::Error(err) = client.recv().unwrap() else {
        panic!("expected the ack error to be queued");
    };
    assert_eq!(err.code, ErrorCode::UnknownSequence);

    match client.unsubscribe(4) {
        Err(ClientError::Server(err)) => assert_eq!(err.code, ErrorCode::UnknownSubscription),
        other => panic!("expected UNKNOWN_SUBSCRIPTION, got {other:?}"),
    }
    broker.join().unwrap();
}

#[test]
fn recv_timeout_returns_none_then_event() {
    let (addr, broker) = fake_broker(true, |broker| {
        broker.answer_ping();
        broker.send(message(1, 1));
        broker.send(message(1, 2));
        broker.answer_ping();
        // Keep the connection open until the client closes it.
        assert_eq!(broker.read_frame(), None);
    });
    let mut client = Client::connect(addr).unwrap();

    let started = Instant::now();
    assert_eq!(
        client.recv_timeout(Duration::from_millis(50)).unwrap(),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert_eq!(client.recv_timeout(Duration::ZERO).unwrap(), None);

    client.ping().unwrap();
    let first = client.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(
        first,
        Some(Event::Message(Message { seq: 1, .. }))
    ));
    // The ping makes sure the second message has arrived before the zero-timeout poll.
    client.ping().unwrap();
    let second = client.recv_timeout(Duration::ZERO).unwrap();
    assert!(matches!(
        second,
        Some(Event::Message(Message { seq: 2, .. }))
    ));
    assert_eq!(client.recv_timeout(Duration::ZERO).unwrap(), None);

    drop(client);
    broker.join().unwrap();
}

#[test]
fn reply_wait_times_out() {
    let (addr, broker) = fake_broker(true, |broker| {
        assert!(matches!(broker.expect_frame(), Frame::Ping { .. }));
        // Stay silent until the client gives up and closes.
        assert_eq!(broker.read_frame(), None);
    });
    let mut client = Client::connect(addr).unwrap();
    client.set_default_timeout(Some(Duration::from_millis(100)));

    let started = Instant::now();
    assert!(matches!(client.ping(), Err(ClientError::Timeout)));
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(client);
    broker.join().unwrap();
}

#[test]
fn late_reply_after_timeout_is_dropped() {
    let (addr, broker) = fake_broker(true, |broker| {
        let Frame::Ping { token: first } = broker.expect_frame() else {
            panic!("expected PING");
        };
        let Frame::Ping { token: second } = broker.expect_frame() else {
            panic!("expected PING");
        };
        broker.send(Frame::Pong { token: first });
        broker.send(message(1, 1));
        broker.send(Frame::Pong { token: second });
    });
    let mut client = Client::connect(addr).unwrap();
    client.set_default_timeout(Some(Duration::from_millis(50)));
    assert!(matches!(client.ping(), Err(ClientError::Timeout)));

    client.set_default_timeout(Some(Duration::from_secs(5)));
    client.ping().unwrap();
    let event = client.recv().unwrap();
    assert!(matches!(event, Event::Message(Message { seq: 1, .. })));
    broker.join().unwrap();
}

#[test]
fn closed_connection_keeps_queued_error() {
    let (addr, broker) = fake_broker(true, |broker| {
        broker.expect_frame();
        broker.send(Frame::Error {
            code: ErrorCode::ShuttingDown,
            reference: 0,
            message: Bytes::from_static(b"broker is shutting down"),
        });
    });
    let mut client = Client::connect(addr).unwrap();
    assert!(matches!(client.ping(), Err(ClientError::Closed)));
    let Event::Error(err) = client.recv().unwrap() else {
        panic!("expected the queued error");
    };
    assert_eq!(err.code, ErrorCode::ShuttingDown);
    assert!(matches!(client.recv(), Err(ClientError::Closed)));
    broker.join().unwrap();
}

#[test]
fn zero_length_frame_is_protocol_error() {
    let (addr, broker) = fake_broker(true, |broker| {
        broker.send_raw(&[0, 0, 0, 0, frame_type::MESSAGE]);
    });
    let mut client = Client::connect(addr).unwrap();
    let result = client.recv();
    assert!(
        matches!(result, Err(ClientError::Protocol(_))),
        "{result:?}"
    );
    broker.join().unwrap();
}

#[test]
fn client_frame_from_broker_is_protocol_error() {
    let (addr, broker) = fake_broker(true, |broker| {
        broker.send(Frame::Unsubscribe { sub_id: 1 });
    });
    let mut client = Client::connect(addr).unwrap();
    let result = client.recv();
    assert!(
        matches!(result, Err(ClientError::Protocol(_))),
        "{result:?}"
    );
    broker.join().unwrap();
}

#[test]
fn unknown_frame_type_is_skipped() {
    let (addr, broker) = fake_broker(true, |broker| {
        broker.send_raw(&[3, 0, 0, 0, 0x99, 0xaa, 0xbb]);
        broker.send(message(1, 1));
    });
    let mut client = Client::connect(addr).unwrap();
    let event = client.recv().unwrap();
    assert!(matches!(event, Event::Message(Message { seq: 1, .. })));
    broker.join().unwrap();
}

#[test]
fn queue_publish_flushes_at_limit() {
    const PAYLOAD: usize = 900;
    let frame_len = LEN_PREFIX + 1 + 8 + 1 + 1 + PAYLOAD;
    let per_flush = WRITE_BUFFER_LIMIT.div_ceil(frame_len);
    let total = per_flush + 3;

    let (addr, broker) = fake_broker(true, move |broker| {
        let before = broker.answer_ping();
        assert_eq!(before.len(), total);
        for frame in before {
            let Frame::Publish {
                request_id,
                payload,
                ..
            } = frame
            else {
                panic!("expected PUBLISH");
            };
            assert_eq!(request_id, 0);
            assert_eq!(payload.len(), PAYLOAD);
        }
    });
    let mut client = Client::connect(addr).unwrap();

    for i in 1..per_flush {
        client.queue_publish("t", &[7; PAYLOAD]).unwrap();
        assert_eq!(client.write_buf.len(), i * frame_len);
    }
    client.queue_publish("t", &[7; PAYLOAD]).unwrap();
    assert_eq!(
        client.write_buf.len(),
        0,
        "buffer was not flushed at the limit"
    );
    for _ in 0..3 {
        client.queue_publish("t", &[7; PAYLOAD]).unwrap();
    }
    assert_eq!(client.write_buf.len(), 3 * frame_len);

    client.ping().unwrap();
    drop(client);
    broker.join().unwrap();
}

#[test]
fn large_message_is_read_whole() {
    let payload = Bytes::from(vec![b'z'; MAX_PAYLOAD as usize]);
    let sent = payload.clone();
    let (addr, broker) = fake_broker(true, move |broker| {
        for seq in 1..=3 {
            broker.send(Frame::Message {
                sub_id: 1,
                seq,
                timestamp: 0,
                delivery_count: 2,
                payload: sent.clone(),
            });
        }
    });
    let mut client = Client::connect(addr).unwrap();
    for seq in 1..=3 {
        let Event::Message(message) = client.recv().unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(message.seq, seq);
        assert_eq!(message.delivery_count, 2);
        assert_eq!(message.payload, payload);
    }
    broker.join().unwrap();
}

#[test]
fn send_raw_writes_bytes_unchanged() {
    let (addr, broker) = fake_broker(true, |broker| {
        let mut raw = [0u8; 5];
        broker.stream.read_exact(&mut raw).unwrap();
        assert_eq!(raw, [1, 2, 3, 4, 5]);
    });
    let mut client = Client::connect(addr).unwrap();
    client.send_raw(&[1, 2, 3, 4, 5]).unwrap();
    broker.join().unwrap();
}

#[test]
fn error_display_names_code_and_reference() {
    let err = ServerError {
        code: ErrorCode::InvalidTopic,
        reference: 4,
        message: "topic name \"a b\" is invalid".into(),
    };
    assert_eq!(
        err.to_string(),
        "invalid topic: topic name \"a b\" is invalid (reference 4)"
    );
    let too_large = ClientError::PayloadTooLarge { size: 10, max: 5 };
    assert_eq!(
        too_large.to_string(),
        "payload of 10 bytes exceeds the broker's maximum payload size of 5 bytes"
    );
}
