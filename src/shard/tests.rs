//! Unit tests of the shard's delivery rules, driven without any I/O.

use super::*;

const CONN: ConnAddr = ConnAddr { core: 0, conn: 1 };
const OTHER_CONN: ConnAddr = ConnAddr { core: 1, conn: 7 };
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

fn config() -> ShardConfig {
    ShardConfig {
        retention: Retention {
            max_messages: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        },
        ack_timeout: ACK_TIMEOUT,
        max_in_flight: 1000,
        max_in_flight_bytes: 1 << 30,
        consumer_idle_timeout: Duration::from_secs(60),
        window_messages: 1 << 20,
        window_bytes: 1 << 30,
    }
}

struct Harness {
    shard: Shard,
    now: Instant,
    wall: u64,
    out: Output,
}

impl Harness {
    fn new(config: ShardConfig) -> Self {
        Harness {
            shard: Shard::new(config),
            now: Instant::now(),
            wall: 1_000_000,
            out: Output::new(),
        }
    }

    fn send(&mut self, request: Request) -> Vec<(ConnAddr, Event)> {
        self.shard
            .handle(request, self.now, self.wall, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn publish(&mut self, topic: &str, payload: &str) -> Vec<(ConnAddr, Event)> {
        self.wall += 1_000;
        self.send(Request::Publish {
            from: OTHER_CONN,
            request_id: 0,
            topic: TopicName::try_from(topic).unwrap(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        })
    }

    fn publish_many(&mut self, topic: &str, count: usize) {
        for i in 0..count {
            self.publish(topic, &format!("m{i}"));
        }
    }

    fn subscribe(&mut self, sub_id: u32, start: StartPosition, ack_mode: AckMode) -> Vec<Event> {
        self.subscribe_as(CONN, sub_id, start, ack_mode, None, 0)
    }

    fn subscribe_as(
        &mut self,
        from: ConnAddr,
        sub_id: u32,
        start: StartPosition,
        ack_mode: AckMode,
        consumer: Option<&str>,
        max_in_flight: u32,
    ) -> Vec<Event> {
        events(self.send(Request::Subscribe {
            from,
            sub_id,
            topic: TopicName::try_from("orders").unwrap(),
            start,
            ack_mode,
            max_in_flight,
            consumer: consumer.map(Box::from),
        }))
    }

    fn tick(&mut self, advance: Duration) -> Vec<Event> {
        self.now += advance;
        self.wall += advance.as_nanos() as u64;
        self.shard.tick(self.now, self.wall, &mut self.out);
        events(std::mem::take(&mut self.out))
    }
}

fn events(output: Vec<(ConnAddr, Event)>) -> Vec<Event> {
    output.into_iter().map(|(_, event)| event).collect()
}

/// Returns (seq, delivery_count) of every message event.
fn deliveries(events: &[Event]) -> Vec<(u64, u32)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Message {
                seq,
                delivery_count,
                ..
            } => Some((*seq, *delivery_count)),
            _ => None,
        })
        .collect()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    deliveries(events).into_iter().map(|(seq, _)| seq).collect()
}

fn gaps(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Gap { first, last, .. } => Some((*first, *last)),
            _ => None,
        })
        .collect()
}

#[test]
fn publish_numbers_from_one_and_confirms() {
    let mut h = Harness::new(config());
    for expected in 1..=3 {
        let out = h.send(Request::Publish {
            from: CONN,
            request_id: 40 + expected,
            topic: TopicName::try_from("orders").unwrap(),
            payload: Bytes::from_static(b"x"),
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, CONN);
        match &out[0].1 {
            Event::Published {
                request_id, seq, ..
            } => {
                assert_eq!(*request_id, 40 + expected);
                assert_eq!(*seq, expected);
            }
            other => panic!("expected Published, got {other:?}"),
        }
    }
}

#[test]
fn timestamps_never_go_backwards() {
    let mut h = Harness::new(config());
    h.publish("orders", "a");
    h.wall -= 500_000;
    h.publish("orders", "b");
    let out = h.subscribe(1, StartPosition::Earliest, AckMode::None);
    let stamps: Vec<u64> = out
        .iter()
        .filter_map(|e| match e {
            Event::Message { timestamp, .. } => Some(*timestamp),
            _ => None,
        })
        .collect();
    assert_eq!(stamps.len(), 2);
    assert!(stamps[1] >= stamps[0], "timestamps {stamps:?}");
}

#[test]
fn subscribe_new_sees_only_later_messages() {
    let mut h = Harness::new(config());
    h.publish_many("orders", 3);
    let out = h.subscribe(1, StartPosition::New, AckMode::None);
    assert_eq!(
        out,
        vec![Event::Subscribed {
            sub_id: 1,
            next_seq: 4
        }]
    );
    let live = events(h.publish("orders", "live"));
    assert_eq!(seqs(&live), vec![4]);
}

#[test]
fn earliest_replays_then_goes_live() {
    let mut h = Harness::new(config());
    h.publish_many("orders", 5);
    let out = h.subscribe(1, StartPosition::Earliest, AckMode::None);
    assert_eq!(
        out[0],
        Event::Subscribed {
            sub_id: 1,
            next_seq: 1
        }
    );
    assert_eq!(seqs(&out), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&events(h.publish("orders", "x"))), vec![6]);
}

#[test]
fn start_positions_resolve() {
    let mut h = Harness::new(config());
    h.publish_many("orders", 10);
    let out = h.subscribe(1, StartPosition::Sequence(7), AckMode::None);
    assert_eq!(seqs(&out), vec![7, 8, 9, 10]);
    let out = h.subscribe(2, StartPosition::Last(3), AckMode::None);
    assert_eq!(seqs(&out), vec![8, 9, 10]);
    let out = h.subscribe(3, StartPosition::Last(50), AckMode::None);
    assert_eq!(seqs(&out).len(), 10);
    // Message n was published at wall time 1_000_000 + 1_000 * n.
    let out = h.subscribe(4, StartPosition::Time(1_000_000 + 4_500), AckMode::None);
    assert_eq!(seqs(&out), vec![5, 6, 7, 8, 9, 10]);
    let out = h.subscribe(5, StartPosition::Sequence(12), AckMode::None);
    assert!(seqs(&out).is_empty());
    h.publish("orders", "11");
    let out = events(h.publish("orders", "12"));
    let to_sub5: Vec<u64> = deliveries(&out).into_iter().map(|(s, _)| s).collect();
    assert!(
        to_sub5.contains(&12),
        "seq:12 waits for message 12: {out:?}"
    );
}

#[test]
fn evicted_start_reports_exact_gap() {
    let mut cfg = config();
    cfg.retention.max_messages = 4;
    let mut h = Harness::new(cfg);
    h.publish_many("orders", 10);
    let out = h.subscribe(1, StartPosition::Sequence(2), AckMode::None);
    assert_eq!(gaps(&out), vec![(2, 6)]);
    assert_eq!(seqs(&out), vec![7, 8, 9, 10]);
    let gap_index = out
        .iter()
        .position(|e| matches!(e, Event::Gap { .. }))
        .unwrap();
    let first_message = out
        .iter()
        .position(|e| matches!(e, Event::Message { .. }))
        .unwrap();
    assert!(
        gap_index < first_message,
        "the gap precedes the first message"
    );

    let out = h.subscribe(2, StartPosition::Earliest, AckMode::None);
    assert!(gaps(&out).is_empty(), "earliest means the oldest retained");
    let out = h.subscribe(3, StartPosition::Last(6), AckMode::None);
    assert_eq!(gaps(&out), vec![(5, 6)]);
}

#[test]
fn time_start_before_evicted_reports_whole_evicted_range() {
    let mut cfg = config();
    cfg.retention.max_messages = 3;
    let mut h = Harness::new(cfg);
    h.publish_many("orders", 6);
    let out = h.subscribe(1, StartPosition::Time(0), AckMode::None);
    assert_eq!(gaps(&out), vec![(1, 3)]);
    assert_eq!(seqs(&out), vec![4, 5, 6]);
}

#[test]
fn age_eviction_runs_on_tick() {
    let mut cfg = config();
    cfg.retention.max_age = Duration::from_secs(1);
    let mut h = Harness::new(cfg);
    h.publish_many("orders", 3);
    h.tick(Duration::from_secs(2));
    assert_eq!(h.shard.stats().retained_messages, 0);
    let out = h.subscribe(1, StartPosition::Sequence(1), AckMode::None);
    assert_eq!(gaps(&out), vec![(1, 3)]);
}

#[test]
fn window_pauses_until_written() {
    let mut cfg = config();
    cfg.window_messages = 2;
    let mut h = Harness::new(cfg);
    h.publish_many("orders", 5);
    let out = h.subscribe(1, StartPosition::Earliest, AckMode::None);
    assert_eq!(seqs(&out), vec![1, 2]);
    let out = events(h.send(Request::Written {
        from: CONN,
        sub_id: 1,
        messages: 2,
        bytes: 4,
    }));
    assert_eq!(seqs(&out), vec![3, 4]);
}

#[test]
fn slow_subscriber_gets_gap_not_unbounded_buffer() {
    let mut cfg = config();
    cfg.window_messages = 2;
    cfg.retention.max_messages = 5;
    let mut h = Harness::new(cfg);
    let out = h.subscribe(1, StartPosition::New, AckMode::None);
    assert!(seqs(&out).is_empty());
    h.publish_many("orders", 20);
    let out = events(h.send(Request::Written {
        from: CONN,
        sub_id: 1,
        messages: 2,
        bytes: 4,
    }));
    assert_eq!(gaps(&out), vec![(3, 15)]);
    assert_eq!(seqs(&out), vec![16, 17]);
}

#[test]
fn max_in_flight_pauses_until_ack() {
    let mut h = Harness::new(config());
    h.publish_many("orders", 5);
    let out = h.subscribe_as(CONN, 1, StartPosition::Earliest, AckMode::Explicit, None, 2);
    assert_eq!(seqs(&out), vec![1, 2]);
    let out = events(h.send(Request::Ack {
        from: CONN,
        sub_id: 1,
        seq: 1,
    }));
    assert_eq!(seqs(&out), vec![3]);
    let out = events(h.send(Request::AckUpTo {
        from: CONN,
        sub_id: 1,
        seq: 3,
    }));
    assert_eq!(seqs(&out), vec![4, 5]);
}

#[test]
fn client_max_in_flight_is_capped() {
    let mut cfg = config();
    cfg.max_in_flight = 3;
    let mut h = Harness::new(cfg);
    h.publish_many("orders", 10);
    let out = h.subscribe_as(
        CONN,
        1,
        StartPosition::Earliest,
        AckMode::Explicit,
        None,
        500,
    );
    assert_eq!(seqs(&out), vec![1, 2, 3]);
}

#[test]
fn ack_timeout_redelivers_with_count() {
    let mut h = Harness::new(config());
    h.subscribe(1, StartPosition::New, AckMode::Explicit);
    h.publish_many("orders", 2);
    h.send(Request::Ack {
        from: CONN,
        sub_id: 1,
        seq: 2,
    });
    assert!(h.tick(ACK_TIMEOUT / 2).is_empty());
    let out = h.tick(ACK_TIMEOUT);
    assert_eq!(deliveries(&out), vec![(1, 2)]);
    let out = h.tick(ACK_TIMEOUT + Duration::from_millis(1));
    assert_eq!(deliveries(&out), vec![(1, 3)]);
    h.send(Request::Ack {
        from: CONN,
        sub_id: 1,
        seq: 1,
    });
    assert!(h.tick(ACK_TIMEOUT * 2).is_empty());
}

#[test]
fn ack_errors_and_duplicates() {
    let mut h = Harness::new(config());
    h.subscribe(1, StartPosition::New, AckMode::Explicit);
    h.publish("orders", "a");
    let ack = |seq| Request::Ack {
        from: CONN,
        sub_id: 1,
        seq,
    };
    assert!(events(h.send(ack(1))).is_empty());
    assert!(
        events(h.send(ack(1))).is_empty(),
        "a repeated ack is ignored"
    );
    let out = events(h.send(ack(9)));
    assert!(
        matches!(
            out.as_slice(),
            [Event::Error {
                code: ErrorCode::UnknownSequence,
                reference: 1,
                ..
            }]
        ),
        "{out:?}"
    );
    let out = events(h.send(Request::Ack {
        from: CONN,
        sub_id: 5,
        seq: 1,
    }));
    assert!(
        matches!(
            out.as_slice(),
            [Event::Error {
                code: ErrorCode::UnknownSubscription,
                ..
            }]
        ),
        "{out:?}"
    );
    h.subscribe(2, StartPosition::New, AckMode::None);
    let out = events(h.send(Request::Ack {
        from: CONN,
        sub_id: 2,
        seq: 1,
    }));
    assert!(
        matches!(
            out.as_slice(),
            [Event::Error {
                code: ErrorCode::InvalidArgument,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn durable_consumer_gets_unacked_at_once_on_reattach() {
    let mut h = Harness::new(config());
    h.subscribe_as(
        CONN,
        1,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    h.publish_many("orders", 3);
    h.send(Request::Ack {
        from: CONN,
        sub_id: 1,
        seq: 2,
    });
    h.send(Request::Detach {
        from: CONN,
        sub_id: 1,
    });
    h.publish_many("orders", 1);

    let out = h.subscribe_as(
        OTHER_CONN,
        9,
        StartPosition::Earliest,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    assert_eq!(
        out[0],
        Event::Subscribed {
            sub_id: 9,
            next_seq: 4
        }
    );
    assert_eq!(deliveries(&out), vec![(1, 2), (3, 2), (4, 1)]);
}

#[test]
fn durable_consumer_rejects_second_attach() {
    let mut h = Harness::new(config());
    h.subscribe_as(
        CONN,
        1,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    let out = h.subscribe_as(
        OTHER_CONN,
        2,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    assert!(
        matches!(
            out.as_slice(),
            [Event::SubscribeFailed {
                code: ErrorCode::ConsumerInUse,
                sub_id: 2,
                ..
            }]
        ),
        "{out:?}"
    );
    let out = h.subscribe_as(
        OTHER_CONN,
        3,
        StartPosition::New,
        AckMode::None,
        Some("other"),
        0,
    );
    assert!(
        matches!(out.as_slice(), [Event::Subscribed { .. }]),
        "{out:?}"
    );
}

#[test]
fn durable_consumer_expires_after_idle_timeout() {
    let mut h = Harness::new(config());
    h.subscribe_as(
        CONN,
        1,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    h.publish_many("orders", 2);
    h.send(Request::Detach {
        from: CONN,
        sub_id: 1,
    });
    h.tick(Duration::from_secs(61));
    assert_eq!(h.shard.stats().consumers, 0);
    let out = h.subscribe_as(
        CONN,
        2,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    assert_eq!(
        out,
        vec![Event::Subscribed {
            sub_id: 2,
            next_seq: 3
        }]
    );
}

#[test]
fn retry_buffer_outlives_ring_eviction() {
    let mut cfg = config();
    cfg.retention.max_messages = 2;
    let mut h = Harness::new(cfg);
    h.subscribe(1, StartPosition::New, AckMode::Explicit);
    h.publish("orders", "keep-me");
    h.publish_many("orders", 5);
    let out = h.tick(ACK_TIMEOUT);
    let redelivered: Vec<&Event> = out
        .iter()
        .filter(|e| matches!(e, Event::Message { seq: 1, .. }))
        .collect();
    assert_eq!(redelivered.len(), 1, "{out:?}");
    match redelivered[0] {
        Event::Message {
            payload,
            delivery_count,
            ..
        } => {
            assert_eq!(&payload[..], b"keep-me");
            assert_eq!(*delivery_count, 2);
        }
        _ => unreachable!(),
    }
}

#[test]
fn unsubscribe_deletes_durable_consumer() {
    let mut h = Harness::new(config());
    h.subscribe_as(
        CONN,
        1,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    h.publish_many("orders", 2);
    let out = events(h.send(Request::Unsubscribe {
        from: CONN,
        sub_id: 1,
    }));
    assert_eq!(out, vec![Event::Unsubscribed { sub_id: 1 }]);
    assert_eq!(h.shard.stats().consumers, 0);
    let out = h.subscribe_as(
        CONN,
        1,
        StartPosition::New,
        AckMode::Explicit,
        Some("billing"),
        0,
    );
    assert_eq!(
        out,
        vec![Event::Subscribed {
            sub_id: 1,
            next_seq: 3
        }]
    );
}

#[test]
fn anonymous_consumer_is_dropped_on_detach() {
    let mut h = Harness::new(config());
    h.subscribe(1, StartPosition::New, AckMode::Explicit);
    h.publish_many("orders", 2);
    h.send(Request::Detach {
        from: CONN,
        sub_id: 1,
    });
    assert_eq!(h.shard.stats().consumers, 0);
    assert_eq!(h.shard.stats().unacked_messages, 0);
}

#[test]
fn duplicate_subscription_id_is_rejected() {
    let mut h = Harness::new(config());
    h.subscribe(1, StartPosition::New, AckMode::None);
    let out = h.subscribe(1, StartPosition::New, AckMode::None);
    assert!(
        matches!(
            out.as_slice(),
            [Event::SubscribeFailed {
                code: ErrorCode::SubscriptionExists,
                ..
            }]
        ),
        "{out:?}"
    );
}

#[test]
fn ack_below_start_is_unknown() {
    let mut h = Harness::new(config());
    h.publish_many("orders", 5);
    h.subscribe(1, StartPosition::New, AckMode::Explicit);
    h.publish("orders", "six");
    for request in [
        Request::Ack {
            from: CONN,
            sub_id: 1,
            seq: 3,
        },
        Request::AckUpTo {
            from: CONN,
            sub_id: 1,
            seq: 5,
        },
    ] {
        let out = events(h.send(request));
        assert!(
            matches!(
                out.as_slice(),
                [Event::Error {
                    code: ErrorCode::UnknownSequence,
                    ..
                }]
            ),
            "{out:?}"
        );
    }
    assert_eq!(
        h.shard.stats().unacked_messages,
        1,
        "message 6 stays unacked"
    );
}

#[test]
fn in_flight_bytes_pause_delivery() {
    let mut cfg = config();
    cfg.max_in_flight_bytes = 5;
    let mut h = Harness::new(cfg);
    for payload in ["abc", "def", "ghijklmnop", "q"] {
        h.publish("orders", payload);
    }
    let out = h.subscribe(1, StartPosition::Earliest, AckMode::Explicit);
    assert_eq!(seqs(&out), vec![1, 2], "3 + 3 bytes reach the 5-byte limit");
    let out = events(h.send(Request::AckUpTo {
        from: CONN,
        sub_id: 1,
        seq: 2,
    }));
    assert_eq!(
        seqs(&out),
        vec![3],
        "one message is allowed even above the limit"
    );
    let out = events(h.send(Request::Ack {
        from: CONN,
        sub_id: 1,
        seq: 3,
    }));
    assert_eq!(seqs(&out), vec![4]);
}

#[test]
fn future_time_start_skips_older_messages() {
    let mut h = Harness::new(config());
    h.publish_many("orders", 2);
    let start = h.wall + 10_000;
    let out = h.subscribe(1, StartPosition::Time(start), AckMode::None);
    assert!(seqs(&out).is_empty());
    let out = events(h.publish("orders", "before"));
    assert!(
        seqs(&out).is_empty(),
        "stamped before the start time: {out:?}"
    );
    h.wall = start;
    let out = events(h.publish("orders", "at"));
    assert_eq!(seqs(&out), vec![4]);
}
