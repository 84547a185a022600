//! Starting and stopping the broker: configuration checks, a taken address, and graceful
//! shutdown with idle, silent, busy and stalled connections.

mod common;

use common::*;
use pubsub::client::{Client, ClientError, SubscribeOptions};
use pubsub::server::{Server, ServerConfig, ServerError};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

/// Fails the test unless `result` is the closed connection that follows a shutdown.
/// A reset counts too, because the broker may close a socket with unread bytes in it.
fn assert_closed<T: std::fmt::Debug>(result: Result<T, ClientError>, client_name: &str) {
    let closed = match &result {
        Err(ClientError::Closed) => true,
        Err(ClientError::Io(err)) => err.kind() == std::io::ErrorKind::ConnectionReset,
        _ => false,
    };
    assert!(
        closed,
        "the {client_name} must see the connection closed, got {result:?}"
    );
}

#[test]
fn invalid_config_is_rejected() {
    let cpus = pubsub::server::available_cpus();
    type Adjust = fn(&mut ServerConfig, usize);
    let cases: [(&str, Adjust); 7] = [
        ("zero cores", |config, _| config.cores = 0),
        ("more pinned cores than CPUs", |config, cpus| {
            config.pin = true;
            config.cores = cpus + 1;
        }),
        ("zero max payload", |config, _| config.max_payload = 0),
        ("max payload over 64 MiB", |config, _| {
            config.max_payload = 64 * 1024 * 1024 + 1
        }),
        ("zero retained messages", |config, _| {
            config.retain_messages = 0
        }),
        ("zero ack timeout", |config, _| {
            config.ack_timeout = Duration::ZERO
        }),
        ("zero max in-flight", |config, _| config.max_in_flight = 0),
    ];
    for (label, adjust) in cases {
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            cores: 1,
            pin: false,
            ..ServerConfig::default()
        };
        adjust(&mut config, cpus);
        let result = Server::start(config);
        assert!(
            matches!(result, Err(ServerError::InvalidConfig(_))),
            "{label}: expected InvalidConfig, got {:?}",
            result.as_ref().err()
        );
    }
}

#[test]
fn taken_address_is_rejected() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = holder.local_addr().unwrap();
    let config = ServerConfig {
        listen: addr,
        cores: 2,
        pin: false,
        ..ServerConfig::default()
    };
    let result = Server::start(config);
    assert!(
        matches!(result, Err(ServerError::AddressInUse(taken)) if taken == addr),
        "expected AddressInUse({addr}), got {:?}",
        result.as_ref().err()
    );
}

#[test]
fn shutdown_closes_client_connections() {
    let server = start_broker(2, |_| {});
    let addr = server.local_addr();
    let mut subscriber = connect(&server);
    subscribe(&mut subscriber, "closing", SubscribeOptions::default());
    let mut idle = connect(&server);
    // A connection that never finished its handshake must not hold the shutdown up for
    // the 10 s handshake timeout.
    let mut silent = RawConnection::connect(&server);

    server.shutdown().expect("shutdown returns Ok");

    assert_closed(subscriber.recv_timeout(TIMEOUT), "subscriber");
    assert_closed(idle.recv_timeout(TIMEOUT), "idle client");
    let frames = silent.expect_closed();
    assert!(
        frames.is_empty(),
        "a connection without handshake gets nothing: {frames:?}"
    );
    let reconnect = Client::connect(addr);
    assert!(
        reconnect.is_err(),
        "the broker must not accept connections after shutdown"
    );
}

#[test]
fn shutdown_handle_stops_wait() {
    let server = start_broker(2, |_| {});
    let handle = server.shutdown_handle();
    let mut client = connect(&server);
    let stopper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        handle.shutdown();
    });
    server
        .wait()
        .expect("wait returns Ok after a shutdown request");
    stopper.join().unwrap();
    assert_closed(client.recv_timeout(TIMEOUT), "client");
}

#[test]
fn shutdown_delivers_queued_messages() {
    // With one shard the broker encodes each delivery into the subscriber's output before
    // it confirms the publish, so every confirmed message is queued or sent when the
    // shutdown starts, and the shutdown flushes queued frames before closing.
    let server = start_broker(1, |_| {});
    let mut subscriber = connect(&server);
    subscribe(&mut subscriber, "last-words", SubscribeOptions::default());
    let mut publisher = connect(&server);
    for i in 1..=100 {
        publisher
            .publish_confirmed("last-words", format!("{i}").as_bytes())
            .unwrap();
    }
    server.shutdown().expect("shutdown returns Ok");

    let messages = expect_messages(&mut subscriber, 100);
    assert_eq!(
        seqs(&messages),
        (1..=100).collect::<Vec<u64>>(),
        "every confirmed message reaches the subscriber before the close"
    );
    assert_closed(subscriber.recv_timeout(TIMEOUT), "subscriber");
}

#[test]
fn shutdown_during_publishing() {
    for shards in [2, 4] {
        let server = start_broker(shards, |_| {});
        let publishers: Vec<_> = (0..4)
            .map(|index| {
                let mut client = connect(&server);
                thread::spawn(move || {
                    // Bounded: the broker closes the connection long before this ends.
                    for i in 0..1_000_000u64 {
                        let topic = format!("busy-{}", (index + i) % 8);
                        if let Err(err) = client.publish_confirmed(&topic, b"payload") {
                            return err;
                        }
                    }
                    panic!("publisher {index} was never disconnected");
                })
            })
            .collect();
        let mut subscriber = connect(&server);
        subscribe(&mut subscriber, "busy-0", SubscribeOptions::default());
        let (messages, _) = receive_messages(&mut subscriber, 100, TIMEOUT);
        assert_eq!(
            messages.len(),
            100,
            "publishing is under way ({shards} shards)"
        );

        server.shutdown().expect("shutdown under load returns Ok");
        for publisher in publishers {
            let err = publisher.join().expect("publisher thread");
            assert!(
                matches!(err, ClientError::Closed)
                    || matches!(&err, ClientError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset),
                "({shards} shards) a publisher must see the connection closed, got {err:?}"
            );
        }
    }
}

#[test]
fn shutdown_with_stalled_reader() {
    // A subscriber that never reads fills its socket buffers, so the broker's write to
    // it blocks. The shutdown must still finish.
    let server = start_broker(2, |config| {
        config.retain_messages = 100;
        config.retain_bytes = 64 * 1024 * 1024;
    });
    let mut stalled = connect(&server);
    subscribe(&mut stalled, "flood", SubscribeOptions::default());
    let mut publisher = connect(&server);
    let payload = vec![0u8; 64 * 1024];
    for _ in 0..500 {
        publisher.queue_publish("flood", &payload).unwrap();
    }
    publisher.publish_confirmed("flood", b"last").unwrap();

    server
        .shutdown()
        .expect("shutdown with a stalled reader returns Ok");
    drop(stalled);
}
