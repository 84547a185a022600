//! Malformed and hostile input on one connection. Each test checks the broker's reply
//! on that connection (an ERROR and either carrying on or closing), and that a bystander
//! publisher and subscriber on other connections are not disturbed.

mod common;

use common::*;
use pubsub::client::{ClientError, Event, SubscribeOptions};
use pubsub::protocol::{
    AckMode, DISCARD_FACTOR, ErrorCode, Frame, PROTOCOL_VERSION, StartPosition, frame_type,
    max_frame_for,
};
use std::time::Duration;

fn subscribe_frame(sub_id: u32, topic: &[u8], consumer: &[u8]) -> Frame {
    Frame::Subscribe {
        sub_id,
        topic: bytes::Bytes::copy_from_slice(topic),
        start: StartPosition::New,
        ack_mode: AckMode::None,
        max_in_flight: 0,
        consumer: bytes::Bytes::copy_from_slice(consumer),
    }
}

/// Returns the body of a SUBSCRIBE frame with raw start kind and ack mode bytes.
fn subscribe_body(start_kind: u8, ack_mode: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes());
    body.push(start_kind);
    body.extend_from_slice(&0u64.to_le_bytes());
    body.push(ack_mode);
    body.extend_from_slice(&0u32.to_le_bytes());
    body.push(1);
    body.push(b't');
    body.push(0);
    body
}

/// Asserts that the connection's next frames are exactly one ERROR with `code`, then the
/// end of the connection.
fn expect_error_then_closed(raw: &mut RawConnection, code: ErrorCode, case: &str) {
    let frames = raw.expect_closed();
    match frames.as_slice() {
        [Frame::Error { code: got, .. }] => {
            assert_eq!(*got, code, "{case}: wrong error code before closing");
        }
        other => panic!("{case}: expected one ERROR {code:?} and then the close, got {other:?}"),
    }
}

#[test]
fn unknown_frame_type_is_skipped() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let mut client = connect(&server);

    client.send_raw(&frame_bytes(0x42, &[1, 2, 3])).unwrap();
    let err = next_error(&mut client);
    assert_eq!(err.code, ErrorCode::UnknownFrameType, "type 0x42");
    client
        .ping()
        .expect("the connection carries on after an unknown frame type");

    // Types that only the broker sends are unknown as client requests.
    let pong = frame_bytes(frame_type::PONG, &7u64.to_le_bytes());
    client.send_raw(&pong).unwrap();
    let err = next_error(&mut client);
    assert_eq!(
        err.code,
        ErrorCode::UnknownFrameType,
        "a PONG sent by a client"
    );
    client
        .ping()
        .expect("the connection carries on after a broker-only frame type");

    let published = client.publish_confirmed("after-unknown", b"m").unwrap();
    assert_eq!(published.seq, 1, "publishing still works");
    bystander.check(&server);
}

#[test]
fn invalid_topic_is_rejected() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);

    let cases: [(&str, &[u8]); 7] = [
        ("empty", b""),
        ("space", b"a b"),
        ("tab", b"a\tb"),
        ("bell", b"bell\x07"),
        ("invalid UTF-8", b"\xff\xfe"),
        ("next line", "a\u{85}b".as_bytes()),
        ("non-breaking space", "a\u{a0}b".as_bytes()),
    ];
    for (index, (label, topic)) in cases.iter().enumerate() {
        let request_id = 100 + index as u64;
        raw.send_bytes(&publish_bytes(request_id, topic, b"m"));
        let (code, reference) = raw.expect_error();
        assert_eq!(code, ErrorCode::InvalidTopic, "publish to {label} topic");
        assert_eq!(
            reference, request_id,
            "the error names request {request_id}"
        );
    }
    raw.send_bytes(&publish_bytes(0, b"a b", b"m"));
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::InvalidTopic,
        "unconfirmed publish to an invalid topic"
    );
    assert_eq!(reference, 0, "an unconfirmed publish has request id 0");

    raw.send_frame(&subscribe_frame(9, b"a b", b""));
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::InvalidTopic,
        "subscribe to an invalid topic"
    );
    assert_eq!(reference, 9, "the error names subscription 9");
    raw.send_frame(&subscribe_frame(9, b"valid", b""));
    let frame = raw.expect_frame();
    assert!(
        matches!(frame, Frame::Subscribed { sub_id: 9, .. }),
        "the rejected subscription id is free for a valid subscribe, got {frame:?}"
    );
    raw.expect_pong(1);
    bystander.check(&server);
}

#[test]
fn oversized_payload_is_rejected() {
    let max_payload = 1024;
    let server = start_broker(2, |config| config.max_payload = max_payload);
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, hello_ok) = RawConnection::handshake(&server);
    let Frame::HelloOk { max_frame, .. } = hello_ok else {
        unreachable!()
    };
    assert_eq!(max_frame, max_frame_for(max_payload), "HELLO_OK max_frame");

    // One byte over the payload limit, inside the maximum frame.
    raw.send_bytes(&publish_bytes(
        7,
        b"big",
        &vec![b'x'; max_payload as usize + 1],
    ));
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::PayloadTooLarge,
        "payload one byte over the limit"
    );
    assert_eq!(reference, 7, "the error names request 7");

    // A frame ten times the maximum frame size is skipped as it arrives.
    let huge = publish_bytes(8, b"big", &vec![b'y'; 10 * max_frame as usize]);
    for chunk in huge.chunks(3000) {
        raw.send_bytes(chunk);
    }
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::PayloadTooLarge,
        "frame over the maximum frame size"
    );
    assert_eq!(reference, 8, "the error names request 8");
    raw.expect_pong(2);

    raw.send_bytes(&publish_bytes(9, b"big", &vec![b'z'; max_payload as usize]));
    let frame = raw.expect_frame();
    assert!(
        matches!(
            frame,
            Frame::Published {
                request_id: 9,
                seq: 1,
                ..
            }
        ),
        "a payload at the limit is accepted, and the rejected ones were not stored: {frame:?}"
    );
    bystander.check(&server);
}

#[test]
fn publish_beyond_discard_limit_closes() {
    let max_payload = 1024;
    let server = start_broker(2, |config| config.max_payload = max_payload);
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    let discard_limit = max_frame_for(max_payload) * DISCARD_FACTOR;

    // A PUBLISH exactly at the discard limit is still skipped.
    let payload_len = discard_limit as usize - (1 + 8 + 1 + 3);
    raw.send_bytes(&publish_bytes(4, b"big", &vec![0; payload_len]));
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::PayloadTooLarge,
        "PUBLISH at the discard limit"
    );
    assert_eq!(reference, 4, "the error names request 4");
    raw.expect_pong(1);

    // One byte more and the framing is no longer trusted.
    let mut header = Vec::new();
    header.extend_from_slice(&(discard_limit + 1).to_le_bytes());
    header.push(frame_type::PUBLISH);
    header.extend_from_slice(&5u64.to_le_bytes());
    raw.send_bytes(&header);
    expect_error_then_closed(
        &mut raw,
        ErrorCode::FrameTooLarge,
        "PUBLISH beyond the discard limit",
    );
    bystander.check(&server);
}

#[test]
fn malformed_body_is_rejected() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);

    // A PUBLISH whose request id is readable gets its id as the reference; every other
    // malformed frame gets 0.
    let mut topic_past_end = 77u64.to_le_bytes().to_vec();
    topic_past_end.extend_from_slice(&[200, b'a', b'b']);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        (
            "ACK without sequence number",
            frame_bytes(frame_type::ACK, &1u32.to_le_bytes()),
            0,
        ),
        (
            "PING with a short token",
            frame_bytes(frame_type::PING, &[1, 2, 3]),
            0,
        ),
        (
            "PING with trailing bytes",
            frame_bytes(frame_type::PING, &[0; 9]),
            0,
        ),
        (
            "PUBLISH without request id",
            frame_bytes(frame_type::PUBLISH, &[1, 2, 3]),
            0,
        ),
        (
            "PUBLISH topic past the end",
            frame_bytes(frame_type::PUBLISH, &topic_past_end),
            77,
        ),
        (
            "SUBSCRIBE with ack mode 7",
            frame_bytes(frame_type::SUBSCRIBE, &subscribe_body(0, 7)),
            0,
        ),
        (
            "SUBSCRIBE with start kind 9",
            frame_bytes(frame_type::SUBSCRIBE, &subscribe_body(9, 0)),
            0,
        ),
        (
            "UNSUBSCRIBE without id",
            frame_bytes(frame_type::UNSUBSCRIBE, &[]),
            0,
        ),
        (
            "HELLO without version",
            frame_bytes(frame_type::HELLO, b"PSUB"),
            0,
        ),
    ];
    for (label, bytes, expected_reference) in &cases {
        raw.send_bytes(bytes);
        let (code, reference) = raw.expect_error();
        assert_eq!(code, ErrorCode::MalformedFrame, "{label}");
        assert_eq!(
            reference, *expected_reference,
            "reference of the error about {label}"
        );
    }
    raw.expect_pong(3);
    raw.send_frame(&subscribe_frame(1, b"t", b""));
    let frame = raw.expect_frame();
    assert!(
        matches!(frame, Frame::Subscribed { sub_id: 1, .. }),
        "the malformed SUBSCRIBE registered nothing, so id 1 is free: {frame:?}"
    );
    bystander.check(&server);
}

#[test]
fn pipelined_errors_precede_pong() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    // One write with three bad frames and a PING: the broker reads them in order and
    // sends the errors it finds while reading before the PONG.
    let mut batch = publish_bytes(31, b"bad topic", b"m");
    batch.extend_from_slice(&frame_bytes(0x42, &[]));
    batch.extend_from_slice(&frame_bytes(frame_type::ACK, &[0; 12]));
    batch.extend_from_slice(&frame_bytes(frame_type::PING, &32u64.to_le_bytes()));
    raw.send_bytes(&batch);

    let expected = [
        (ErrorCode::InvalidTopic, 31),
        (ErrorCode::UnknownFrameType, 0),
        (ErrorCode::UnknownSubscription, 0),
    ];
    for (code, reference) in expected {
        assert_eq!(
            raw.expect_error(),
            (code, reference),
            "errors arrive in the order of the frames, before the PONG"
        );
    }
    assert_eq!(
        raw.expect_frame(),
        Frame::Pong { token: 32 },
        "the PONG comes last"
    );
    bystander.check(&server);
}

#[test]
fn unknown_subscription_is_rejected() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    let cases = [
        ("ACK", Frame::Ack { sub_id: 5, seq: 1 }, 5),
        ("ACK_UP_TO", Frame::AckUpTo { sub_id: 6, seq: 1 }, 6),
        ("UNSUBSCRIBE", Frame::Unsubscribe { sub_id: 7 }, 7),
    ];
    for (label, frame, sub_id) in cases {
        raw.send_frame(&frame);
        let (code, reference) = raw.expect_error();
        assert_eq!(code, ErrorCode::UnknownSubscription, "{label}");
        assert_eq!(reference, sub_id, "{label} names subscription {sub_id}");
    }
    raw.expect_pong(4);
    bystander.check(&server);
}

#[test]
fn duplicate_subscription_id_is_rejected() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    raw.send_frame(&subscribe_frame(3, b"first", b""));
    let frame = raw.expect_frame();
    assert!(
        matches!(frame, Frame::Subscribed { sub_id: 3, .. }),
        "first subscribe: {frame:?}"
    );
    raw.send_frame(&subscribe_frame(3, b"second", b""));
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::SubscriptionExists,
        "a second subscribe with id 3"
    );
    assert_eq!(reference, 3, "the error names subscription 3");

    let mut publisher = connect(&server);
    publisher.publish_confirmed("second", b"not for 3").unwrap();
    publisher.publish_confirmed("first", b"for 3").unwrap();
    let frame = raw.expect_frame();
    let Frame::Message {
        sub_id, payload, ..
    } = frame
    else {
        panic!("expected a message for subscription 3, got {frame:?}");
    };
    assert_eq!(sub_id, 3, "delivered to subscription 3");
    assert_eq!(
        &payload[..],
        b"for 3",
        "subscription 3 still reads its first topic"
    );
    bystander.check(&server);
}

#[test]
fn invalid_consumer_name_is_rejected() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let long_name = "n".repeat(256);
    let names: [(&str, &[u8]); 3] = [("space", b"a b"), ("tab", b"tab\t"), ("bell", b"bell\x07")];

    // The client checks names with the topic name rules before sending.
    let mut client = connect(&server);
    for (label, name) in names {
        let options = SubscribeOptions {
            consumer: Some(String::from_utf8(name.to_vec()).unwrap()),
            ack_mode: AckMode::Explicit,
            ..SubscribeOptions::default()
        };
        let result = client.subscribe("named", options);
        assert!(
            matches!(result, Err(ClientError::InvalidConsumer { .. })),
            "the client must reject consumer name with {label}, got {result:?}"
        );
    }
    let options = SubscribeOptions {
        consumer: Some(long_name),
        ..SubscribeOptions::default()
    };
    let result = client.subscribe("named", options);
    assert!(
        matches!(result, Err(ClientError::InvalidConsumer { .. })),
        "the client must reject a 256-byte consumer name, got {result:?}"
    );
    client.ping().expect("the connection carries on");

    // The broker checks them too.
    let (mut raw, _) = RawConnection::handshake(&server);
    for (index, (label, name)) in names.iter().enumerate() {
        let sub_id = 20 + index as u32;
        raw.send_frame(&subscribe_frame(sub_id, b"named", name));
        let (code, reference) = raw.expect_error();
        assert_eq!(
            code,
            ErrorCode::InvalidArgument,
            "consumer name with {label}"
        );
        assert_eq!(
            reference,
            u64::from(sub_id),
            "the error names subscription {sub_id}"
        );
    }
    raw.expect_pong(6);
    bystander.check(&server);
}

#[test]
fn second_hello_is_rejected() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    raw.send_frame(&Frame::Hello {
        version: PROTOCOL_VERSION,
    });
    let (code, _) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::InvalidArgument,
        "HELLO after the handshake"
    );
    raw.expect_pong(5);
    bystander.check(&server);
}

#[test]
fn bad_magic_after_handshake_continues() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);

    // Before the handshake this HELLO closes the connection (see `bad_hello_closes`).
    // After it, the frame's length is sound, so the broker skips it and carries on.
    let mut bad_magic = b"HTTP".to_vec();
    bad_magic.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    raw.send_bytes(&frame_bytes(frame_type::HELLO, &bad_magic));
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::UnsupportedVersion,
        "HELLO with bad magic after the handshake"
    );
    assert_eq!(reference, 0, "an error about HELLO has reference 0");
    raw.expect_pong(7);

    raw.send_frame(&subscribe_frame(1, b"after-bad-magic", b""));
    let frame = raw.expect_frame();
    assert!(
        matches!(frame, Frame::Subscribed { sub_id: 1, .. }),
        "the connection still accepts requests after the bad HELLO: {frame:?}"
    );
    bystander.check(&server);
}

#[test]
fn zero_length_frame_closes() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    raw.send_bytes(&[0, 0, 0, 0, frame_type::PING]);
    expect_error_then_closed(&mut raw, ErrorCode::MalformedFrame, "frame length 0");
    bystander.check(&server);
}

#[test]
fn oversized_request_frame_closes() {
    let server = start_broker(2, |config| config.max_payload = 1024);
    let bystander = Bystander::start(&server, "bystander");
    let max_frame = max_frame_for(1024);
    for kind in [frame_type::SUBSCRIBE, frame_type::PING, 0x42] {
        let (mut raw, _) = RawConnection::handshake(&server);
        let mut header = (max_frame + 1).to_le_bytes().to_vec();
        header.push(kind);
        raw.send_bytes(&header);
        expect_error_then_closed(
            &mut raw,
            ErrorCode::FrameTooLarge,
            &format!("type 0x{kind:02x} over the maximum frame size"),
        );
    }
    bystander.check(&server);
}

#[test]
fn first_frame_must_be_hello() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let first_frames = [
        ("PING", Frame::Ping { token: 1 }),
        (
            "PUBLISH",
            Frame::Publish {
                request_id: 1,
                topic: bytes::Bytes::from_static(b"bystander"),
                payload: bytes::Bytes::from_static(b"before hello"),
            },
        ),
        ("SUBSCRIBE", subscribe_frame(1, b"bystander", b"")),
    ];
    for (label, frame) in first_frames {
        let mut raw = RawConnection::connect(&server);
        raw.send_frame(&frame);
        expect_error_then_closed(&mut raw, ErrorCode::HandshakeRequired, label);
    }
    // The PUBLISH before HELLO must not have reached the bystander's topic.
    bystander.check(&server);
}

#[test]
fn bad_hello_closes() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");

    let mut bad_magic = b"HTTP".to_vec();
    bad_magic.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    let mut raw = RawConnection::connect(&server);
    raw.send_bytes(&frame_bytes(frame_type::HELLO, &bad_magic));
    expect_error_then_closed(&mut raw, ErrorCode::UnsupportedVersion, "bad magic");

    let mut raw = RawConnection::connect(&server);
    raw.send_frame(&Frame::Hello {
        version: PROTOCOL_VERSION + 1,
    });
    expect_error_then_closed(&mut raw, ErrorCode::UnsupportedVersion, "unknown version");

    let mut raw = RawConnection::connect(&server);
    raw.send_bytes(&frame_bytes(frame_type::HELLO, b"PS"));
    expect_error_then_closed(&mut raw, ErrorCode::MalformedFrame, "truncated HELLO");

    let mut raw = RawConnection::connect(&server);
    raw.send_bytes(&frame_bytes(0x42, b"PSUB\x01\x00"));
    expect_error_then_closed(&mut raw, ErrorCode::UnknownFrameType, "unknown type first");
    bystander.check(&server);
}

#[test]
fn http_request_closes() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let mut raw = RawConnection::connect(&server);
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    // "GET " read as a length is about 542 MB, far over the maximum frame size.
    expect_error_then_closed(&mut raw, ErrorCode::FrameTooLarge, "an HTTP request");
    bystander.check(&server);
}

#[test]
fn frames_split_into_single_bytes() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let mut raw = RawConnection::connect(&server);

    let mut stream = Vec::new();
    stream.extend_from_slice(&frame_bytes(frame_type::HELLO, b"PSUB\x01\x00"));
    stream.extend_from_slice(&publish_bytes(11, b"trickle", b"one byte at a time"));
    stream.extend_from_slice(&frame_bytes(frame_type::PING, &12u64.to_le_bytes()));
    for byte in &stream {
        raw.send_bytes(std::slice::from_ref(byte));
        std::thread::sleep(Duration::from_millis(1));
    }

    let hello_ok = raw.expect_frame();
    assert!(
        matches!(hello_ok, Frame::HelloOk { .. }),
        "HELLO in single bytes: {hello_ok:?}"
    );
    let published = raw.expect_frame();
    assert!(
        matches!(
            published,
            Frame::Published {
                request_id: 11,
                seq: 1,
                ..
            }
        ),
        "PUBLISH in single bytes: {published:?}"
    );
    let pong = raw.expect_frame();
    assert_eq!(pong, Frame::Pong { token: 12 }, "PING in single bytes");
    bystander.check(&server);
}

#[test]
fn extreme_field_values_are_handled() {
    let server = start_broker(2, |config| config.ack_timeout = Duration::from_secs(30));
    let bystander = Bystander::start(&server, "bystander");
    let mut publisher = connect(&server);
    for i in 1..=3 {
        publisher
            .publish_confirmed("extreme", format!("{i}").as_bytes())
            .unwrap();
    }

    let (mut raw, _) = RawConnection::handshake(&server);
    let starts = [
        (1, StartPosition::Sequence(u64::MAX), u64::MAX),
        (2, StartPosition::Last(u64::MAX), 1),
        (3, StartPosition::Time(u64::MAX), 4),
    ];
    for (sub_id, start, _) in starts {
        raw.send_frame(&Frame::Subscribe {
            sub_id,
            topic: bytes::Bytes::from_static(b"extreme"),
            start,
            ack_mode: AckMode::Explicit,
            max_in_flight: u32::MAX,
            consumer: bytes::Bytes::new(),
        });
    }
    // Every subscription is confirmed, and subscription 2 replays messages 1..=3.
    let mut next_seqs = std::collections::HashMap::new();
    let mut replayed = Vec::new();
    while next_seqs.len() < starts.len() || replayed.len() < 3 {
        match raw.expect_frame() {
            Frame::Subscribed { sub_id, next_seq } => {
                next_seqs.insert(sub_id, next_seq);
            }
            Frame::Message { sub_id, seq, .. } => replayed.push((sub_id, seq)),
            other => panic!("expected SUBSCRIBED or MESSAGE, got {other:?}"),
        }
    }
    for (sub_id, start, expected_next) in starts {
        assert_eq!(next_seqs[&sub_id], expected_next, "next_seq of {start:?}");
    }
    replayed.sort_unstable();
    assert_eq!(
        replayed,
        vec![(2, 1), (2, 2), (2, 3)],
        "last:u64::MAX replays everything"
    );
    for sub_id in 1..=3 {
        raw.send_frame(&Frame::Ack {
            sub_id,
            seq: u64::MAX,
        });
        let (code, reference) = raw.expect_error();
        assert_eq!(
            code,
            ErrorCode::UnknownSequence,
            "ACK of u64::MAX on {sub_id}"
        );
        assert_eq!(reference, u64::from(sub_id), "the error names {sub_id}");
        raw.send_frame(&Frame::AckUpTo {
            sub_id,
            seq: u64::MAX,
        });
        let (code, _) = raw.expect_error();
        assert_eq!(
            code,
            ErrorCode::UnknownSequence,
            "ACK_UP_TO of u64::MAX on {sub_id}"
        );
    }
    raw.send_frame(&Frame::Ack {
        sub_id: u32::MAX,
        seq: 1,
    });
    let (code, reference) = raw.expect_error();
    assert_eq!(
        code,
        ErrorCode::UnknownSubscription,
        "ACK on sub_id u32::MAX"
    );
    assert_eq!(reference, u64::from(u32::MAX), "the error names u32::MAX");
    raw.send_frame(&Frame::Ping { token: u64::MAX });
    assert_eq!(
        raw.expect_frame(),
        Frame::Pong { token: u64::MAX },
        "PING with token u64::MAX"
    );

    let published = publisher.publish_confirmed("extreme", b"4").unwrap();
    assert_eq!(published.seq, 4, "the topic carries on");
    bystander.check(&server);
}

/// Returns `len` pseudo-random bytes from xorshift64 seeded with `seed`.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

#[test]
fn random_garbage_is_survived() {
    for shards in [2, 4] {
        let server = start_broker(shards, |config| config.max_payload = 4096);
        let bystander = Bystander::start(&server, "bystander");
        for seed in 1..=40u64 {
            let (mut raw, _) = RawConnection::handshake(&server);
            let mut bytes = garbage(seed, 8 * 1024);
            // Half the runs start with a plausible frame header, so the garbage reaches
            // the body decoders and not only the length check.
            if seed % 2 == 0 {
                let kind = [
                    frame_type::PUBLISH,
                    frame_type::SUBSCRIBE,
                    frame_type::ACK,
                    frame_type::UNSUBSCRIBE,
                ][(seed / 2 % 4) as usize];
                bytes[..4].copy_from_slice(&(20 + (seed as u32 % 40)).to_le_bytes());
                bytes[4] = kind;
            }
            // The broker may close the connection part way through; a failed write
            // then is expected.
            let _ = raw.try_send_bytes(&bytes);
            // Read the broker's replies until it goes quiet or closes the connection.
            while let Ok(Some(_)) = raw.next_frame(Duration::from_millis(20)) {}
        }
        bystander.check(&server);
        server
            .shutdown()
            .expect("the broker stops cleanly after garbage input");
    }
}

#[test]
fn disconnect_mid_frame_publishes_nothing() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let (mut raw, _) = RawConnection::handshake(&server);
    let frame = publish_bytes(1, b"half", b"payload that never fully arrives");
    raw.send_bytes(&frame[..frame.len() / 2]);
    raw.shutdown_write();
    drop(raw);

    let mut client = connect(&server);
    let published = client.publish_confirmed("half", b"whole").unwrap();
    assert_eq!(published.seq, 1, "the half-sent PUBLISH must not be stored");
    bystander.check(&server);
}

#[test]
fn silent_clients_do_not_block_others() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let silent: Vec<RawConnection> = (0..4).map(|_| RawConnection::connect(&server)).collect();
    let mut half_hello = RawConnection::connect(&server);
    let hello = frame_bytes(frame_type::HELLO, b"PSUB\x01\x00");
    half_hello.send_bytes(&hello[..6]);

    bystander.check(&server);
    let mut client = connect(&server);
    let subscription = subscribe(&mut client, "busy", SubscribeOptions::default());
    client.publish_confirmed("busy", b"m").unwrap();
    let event = next_event(&mut client, TIMEOUT);
    assert!(
        matches!(&event, Event::Message(m) if m.sub_id == subscription.sub_id),
        "a new connection is served while others stay silent: {event:?}"
    );
    drop(silent);
}

#[test]
fn handshake_timeout_closes_silent_client() {
    // The broker allows 10 s for HELLO, so this test waits at least that long.
    let handshake_timeout = Duration::from_secs(10);
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    let connected = std::time::Instant::now();
    let mut raw = RawConnection::connect(&server);
    let frame = raw
        .next_frame(handshake_timeout + TIMEOUT)
        .expect("the broker must send an ERROR before closing a silent connection")
        .unwrap_or_else(|| {
            panic!("the broker kept a silent connection open past the handshake timeout")
        });
    let waited = connected.elapsed();
    assert!(
        matches!(
            frame,
            Frame::Error {
                code: ErrorCode::HandshakeRequired,
                ..
            }
        ),
        "expected ERROR HANDSHAKE_REQUIRED, got {frame:?}"
    );
    assert!(
        waited >= handshake_timeout,
        "the silent connection was rejected after {waited:?}, before the handshake timeout"
    );
    let rest = raw.expect_closed();
    assert!(rest.is_empty(), "nothing follows the ERROR: {rest:?}");
    bystander.check(&server);
}
