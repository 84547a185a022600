//! Starting and stopping the broker: configuration checks, a taken address, a restart on
//! the same port, and graceful shutdown with idle, silent, busy and stalled connections.

mod common;

use common::*;
use pubsub::client::{Client, ClientError, SubscribeOptions};
use pubsub::protocol::{Frame, frame_type};
use pubsub::server::{Server, ServerConfig, ServerError};
use std::net::{SocketAddr, TcpListener};
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

/// Returns a configuration with two unpinned shards listening on `addr`.
fn config_on(addr: SocketAddr) -> ServerConfig {
    ServerConfig {
        listen: addr,
        cores: 2,
        pin: false,
        ..ServerConfig::default()
    }
}

/// Returns a loopback address whose port was free when this function returned. Nothing
/// reserves the port afterwards.
fn free_loopback_addr() -> SocketAddr {
    let probe = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    probe.local_addr().expect("read the bound address")
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
fn running_broker_port_is_rejected() {
    let server = start_broker(2, |_| {});
    let addr = server.local_addr();
    let result = Server::start(config_on(addr));
    assert!(
        matches!(result, Err(ServerError::AddressInUse(taken)) if taken == addr),
        "a second broker on the port of a running one: expected AddressInUse({addr}), got {:?}",
        result.as_ref().err()
    );
    let mut client = connect(&server);
    client
        .ping()
        .expect("the running broker still serves after the rejected start");
}

#[test]
fn restart_on_same_port() {
    let addr = free_loopback_addr();
    let first = Server::start(config_on(addr)).expect("the first broker starts on a free port");
    let mut subscriber = connect(&first);
    subscribe(
        &mut subscriber,
        "before-restart",
        SubscribeOptions::default(),
    );
    let mut publisher = connect(&first);
    for i in 1..=20 {
        publisher
            .publish_confirmed("before-restart", format!("{i}").as_bytes())
            .expect("publish to the first broker is confirmed");
    }
    let messages = expect_messages(&mut subscriber, 20);
    assert_eq!(
        seqs(&messages),
        (1..=20).collect::<Vec<u64>>(),
        "the first broker delivers before the shutdown"
    );

    first.shutdown().expect("the first broker stops cleanly");
    // The broker closed first, so once the subscriber closes its end the broker's end of
    // that connection goes to TIME_WAIT. The publisher keeps its end open, so the
    // broker's end of that connection stays in FIN_WAIT2. Both sockets are still bound
    // to the port.
    assert_closed(subscriber.recv_timeout(TIMEOUT), "subscriber");
    drop(subscriber);

    let second = Server::start(config_on(addr)).unwrap_or_else(|err| {
        panic!("a broker must start on {addr} right after the previous one stopped: {err}")
    });
    assert_eq!(
        second.local_addr(),
        addr,
        "the second broker listens on the same address"
    );
    let mut subscriber = connect(&second);
    let subscription = subscribe(
        &mut subscriber,
        "after-restart",
        SubscribeOptions::default(),
    );
    let mut new_publisher = connect(&second);
    let published = new_publisher
        .publish_confirmed("after-restart", b"after")
        .expect("publish to the second broker is confirmed");
    assert_eq!(
        published.seq, 1,
        "the second broker starts with empty topics"
    );
    let messages = expect_messages(&mut subscriber, 1);
    assert_eq!(
        messages[0].sub_id, subscription.sub_id,
        "the message carries the subscription id"
    );
    assert_eq!(
        payloads(&messages),
        vec!["after".to_owned()],
        "the second broker delivers the message"
    );

    drop(publisher);
    second.shutdown().expect("the second broker stops cleanly");
}

#[test]
fn unfinished_max_frame_blocks_nobody() {
    let server = start_broker(2, |_| {});
    let bystander = Bystander::start(&server, "bystander");
    // Each connection announces a PUBLISH of the maximum frame size, sends only the
    // 5-byte header and then nothing. With four such connections both executors most
    // likely serve one, because the kernel spreads connections over the listeners.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let (mut raw, hello_ok) = RawConnection::handshake(&server);
        let Frame::HelloOk { max_frame, .. } = hello_ok else {
            unreachable!("handshake returns HELLO_OK")
        };
        let mut header = max_frame.to_le_bytes().to_vec();
        header.push(frame_type::PUBLISH);
        raw.send_bytes(&header);
        stalled.push(raw);
    }
    for raw in &mut stalled {
        let reply = raw.next_frame(Duration::from_millis(100));
        assert!(
            matches!(reply, Ok(None)),
            "the broker waits for the rest of a frame within the limit without replying, \
             got {reply:?}"
        );
    }

    let mut subscriber = connect(&server);
    let subscription = subscribe(
        &mut subscriber,
        "beside-stalled",
        SubscribeOptions::default(),
    );
    let mut publisher = connect(&server);
    publisher
        .publish_confirmed("beside-stalled", b"m")
        .expect("a publish beside the unfinished frames is confirmed");
    let messages = expect_messages(&mut subscriber, 1);
    assert_eq!(
        messages[0].sub_id, subscription.sub_id,
        "the message beside the unfinished frames reaches its subscription"
    );

    drop(stalled);
    bystander.check(&server);
    server
        .shutdown()
        .expect("the broker stops cleanly after the unfinished frames were abandoned");
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
