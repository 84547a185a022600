//! Shard internals with no I/O: the ring buffer, the retry buffer, the topic-to-shard
//! hash, and one message from PUBLISH request to encoded MESSAGE frame.

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pubsub::protocol::{AckMode, StartPosition, encode_message};
use pubsub::shard::retry::RetryBuffer;
use pubsub::shard::ring::{Retention, RingBuffer, StoredMessage};
use pubsub::shard::{ConnAddr, Event, Output, Request, Shard, ShardConfig};
use pubsub::topic::{TopicName, shard_for};
use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Messages in a full ring buffer: the broker's default --retain-messages.
const RING_CAPACITY: usize = 10_000;

fn stored(timestamp: u64) -> StoredMessage {
    StoredMessage {
        timestamp,
        payload: Bytes::from_static(&[b'x'; 64]),
    }
}

fn full_ring() -> (RingBuffer, Retention) {
    let retention = Retention {
        max_messages: RING_CAPACITY,
        max_bytes: usize::MAX,
        max_age: Duration::from_secs(3600),
    };
    let mut ring = RingBuffer::new();
    for timestamp in 0..RING_CAPACITY as u64 {
        ring.push(stored(timestamp * 1000), &retention);
    }
    (ring, retention)
}

fn ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));

    let (mut ring, retention) = full_ring();
    let mut timestamp = RING_CAPACITY as u64 * 1000;
    group.bench_function("push_with_eviction", |b| {
        b.iter(|| {
            timestamp += 1000;
            black_box(ring.push(stored(timestamp), &retention))
        })
    });

    let (ring, _) = full_ring();
    let first = ring.first_seq();
    let mut step = 0u64;
    group.bench_function("get_by_seq", |b| {
        b.iter(|| {
            // A stride coprime with the capacity visits every slot.
            step = (step + 7919) % RING_CAPACITY as u64;
            black_box(ring.get(first + step).map(|m| m.timestamp))
        })
    });
    group.bench_function("seq_at_or_after_time", |b| {
        b.iter(|| {
            step = (step + 7919) % RING_CAPACITY as u64;
            black_box(ring.seq_at_or_after(step * 1000 + 1))
        })
    });
    group.finish();
}

fn retry(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry");
    let now = Instant::now();
    let deadline = now + Duration::from_secs(30);

    group.throughput(Throughput::Elements(1));
    let mut buffer = RetryBuffer::default();
    let mut seq = 0u64;
    group.bench_function("insert_then_ack", |b| {
        b.iter(|| {
            seq += 1;
            buffer.insert(seq, stored(seq), deadline);
            black_box(buffer.ack(seq));
            buffer.compact();
        })
    });

    for unacked in [100u64, 1000] {
        group.throughput(Throughput::Elements(unacked));
        group.bench_function(format!("cumulative_ack/{unacked}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut buffer = RetryBuffer::default();
                    for seq in 1..=unacked {
                        buffer.insert(seq, stored(seq), deadline);
                    }
                    buffer
                },
                |buffer| black_box(buffer.ack_up_to(unacked)),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("timeout_scan/{unacked}_expired"), |b| {
            b.iter_batched_ref(
                || {
                    let mut buffer = RetryBuffer::default();
                    for seq in 1..=unacked {
                        buffer.insert(seq, stored(seq), now);
                    }
                    (buffer, VecDeque::with_capacity(unacked as usize))
                },
                |(buffer, due)| {
                    buffer.take_expired(deadline, due);
                    black_box(due.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn hash(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic");
    group.throughput(Throughput::Elements(1));
    for name in [
        "t",
        "orders.eu-1.created",
        "a-much-longer-topic-name.with.several.levels.of.hierarchy",
    ] {
        group.bench_function(format!("shard_for/{}B", name.len()), |b| {
            b.iter(|| black_box(shard_for(black_box(name.as_bytes()), 8)))
        });
    }
    group.finish();
}

/// Creates a shard with one subscriber on `topic` and a delivery window that never
/// closes, so that every publish delivers one message.
fn shard_with_subscriber(topic: &TopicName, ack_mode: AckMode) -> (Shard, ConnAddr) {
    let mut shard = Shard::new(ShardConfig {
        retention: Retention {
            max_messages: RING_CAPACITY,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
        },
        ack_timeout: Duration::from_secs(30),
        max_in_flight: u32::MAX,
        max_in_flight_bytes: usize::MAX,
        consumer_idle_timeout: Duration::from_secs(300),
        window_messages: u32::MAX,
        window_bytes: u64::MAX,
    });
    let subscriber = ConnAddr { core: 0, conn: 2 };
    let mut out = Output::new();
    shard.handle(
        Request::Subscribe {
            from: subscriber,
            sub_id: 1,
            topic: topic.clone(),
            start: StartPosition::New,
            ack_mode,
            max_in_flight: 0,
            consumer: None,
        },
        Instant::now(),
        0,
        &mut out,
    );
    assert!(
        matches!(out.as_slice(), [(_, Event::Subscribed { .. })]),
        "subscribe failed: {out:?}"
    );
    (shard, subscriber)
}

fn publish_to_delivery(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_to_delivery");
    group.throughput(Throughput::Elements(1));
    let topic = TopicName::try_from("bench.orders").expect("valid topic");
    let publisher = ConnAddr { core: 0, conn: 1 };
    let payload = [b'x'; 64];

    for (name, ack_mode) in [
        ("ack_none", AckMode::None),
        ("ack_explicit", AckMode::Explicit),
    ] {
        let (mut shard, subscriber) = shard_with_subscriber(&topic, ack_mode);
        let mut out = Output::new();
        let mut wire = BytesMut::with_capacity(64 * 1024);
        let mut wall = 1u64;
        // The payload copy out of the read buffer, the shard's work and the MESSAGE
        // encoding: what the broker does per message on one core, sockets aside. With
        // explicit acks the subscriber's ACK of the message is handled too.
        group.bench_function(format!("64B/{name}"), |b| {
            b.iter(|| {
                wall += 1;
                shard.handle(
                    Request::Publish {
                        from: publisher,
                        request_id: 0,
                        topic: topic.clone(),
                        payload: Bytes::copy_from_slice(&payload),
                    },
                    Instant::now(),
                    wall,
                    &mut out,
                );
                wire.clear();
                let mut delivered = 0;
                for (_, event) in out.drain(..) {
                    if let Event::Message {
                        sub_id,
                        seq,
                        timestamp,
                        delivery_count,
                        payload,
                    } = event
                    {
                        encode_message(&mut wire, sub_id, seq, timestamp, delivery_count, &payload);
                        delivered = seq;
                    }
                }
                if ack_mode == AckMode::Explicit {
                    let ack = Request::Ack {
                        from: subscriber,
                        sub_id: 1,
                        seq: delivered,
                    };
                    shard.handle(ack, Instant::now(), wall, &mut out);
                    assert!(out.is_empty(), "ack failed: {out:?}");
                }
                black_box(wire.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ring, retry, hash, publish_to_delivery);
criterion_main!(benches);
