//! Wire codec: encoding and decoding one PUBLISH frame and a batch of them, and encoding
//! one MESSAGE frame the way the broker does on delivery.

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pubsub::protocol::{DEFAULT_MAX_PAYLOAD, Decoder, Frame, encode_message};
use std::hint::black_box;

/// Frames per batch: about what one 16 KiB socket read contains at this payload size.
const BATCH: usize = 64;

fn publish_frame(payload_len: usize) -> Frame {
    Frame::Publish {
        request_id: 0,
        topic: Bytes::from_static(b"bench.orders.eu-1"),
        payload: Bytes::from(vec![b'x'; payload_len]),
    }
}

fn encoded(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for frame in frames {
        frame.encode(&mut buf);
    }
    buf
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for payload_len in [16usize, 64, 1024] {
        let frame = publish_frame(payload_len);
        let mut out = BytesMut::with_capacity(4096);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encode_publish/{payload_len}B"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&frame).encode(&mut out);
                black_box(out.len())
            })
        });

        let wire = encoded(std::slice::from_ref(&frame));
        let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
        group.bench_function(format!("decode_publish/{payload_len}B"), |b| {
            b.iter_batched_ref(
                || wire.clone(),
                |buf| black_box(decoder.decode(buf).expect("valid frame")),
                BatchSize::SmallInput,
            )
        });

        let payload = vec![b'x'; payload_len];
        group.bench_function(format!("encode_message/{payload_len}B"), |b| {
            b.iter(|| {
                out.clear();
                encode_message(
                    &mut out,
                    1,
                    black_box(42),
                    1_700_000_000_000_000_000,
                    1,
                    &payload,
                );
                black_box(out.len())
            })
        });
    }

    let frames: Vec<Frame> = (0..BATCH).map(|_| publish_frame(64)).collect();
    let mut out = BytesMut::with_capacity(16 * 1024);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("encode_publish_batch/{BATCH}x64B"), |b| {
        b.iter(|| {
            out.clear();
            for frame in &frames {
                frame.encode(&mut out);
            }
            black_box(out.len())
        })
    });
    let wire = encoded(&frames);
    let mut decoder = Decoder::new(DEFAULT_MAX_PAYLOAD);
    group.bench_function(format!("decode_publish_batch/{BATCH}x64B"), |b| {
        b.iter_batched_ref(
            || wire.clone(),
            |buf| {
                let mut count = 0;
                while let Some(frame) = decoder.decode(buf).expect("valid frames") {
                    black_box(frame);
                    count += 1;
                }
                assert_eq!(count, BATCH);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
