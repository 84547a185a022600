//! Shared set-up for the integration tests: a real broker on an ephemeral loopback port.

#![allow(dead_code)]

use pubsub::client::{Client, Event, Message};
use pubsub::server::{Server, ServerConfig};
use std::time::{Duration, Instant};

/// Starts a broker with `shards` unpinned executors on 127.0.0.1 and a free port, after
/// `adjust` has changed the default configuration.
pub fn start_broker(shards: usize, adjust: impl FnOnce(&mut ServerConfig)) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: shards,
        pin: false,
        ..ServerConfig::default()
    };
    adjust(&mut config);
    Server::start(config).expect("broker starts")
}

/// Connects a client to `server`.
pub fn connect(server: &Server) -> Client {
    Client::connect(server.local_addr()).expect("client connects")
}

/// Receives events until `count` messages have arrived or `timeout` passes; returns the
/// messages and any other events in arrival order.
pub fn receive_messages(
    client: &mut Client,
    count: usize,
    timeout: Duration,
) -> (Vec<Message>, Vec<Event>) {
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    let mut others = Vec::new();
    while messages.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match client.recv_timeout(left).expect("receive") {
            Some(Event::Message(message)) => messages.push(message),
            Some(other) => others.push(other),
            None => break,
        }
    }
    (messages, others)
}

/// Returns the next event, failing the test after `timeout`.
pub fn next_event(client: &mut Client, timeout: Duration) -> Event {
    client
        .recv_timeout(timeout)
        .expect("receive")
        .unwrap_or_else(|| panic!("no event within {timeout:?}"))
}

/// Asserts that no event arrives within `wait`.
pub fn assert_quiet(client: &mut Client, wait: Duration) {
    if let Some(event) = client.recv_timeout(wait).expect("receive") {
        panic!("expected no event within {wait:?}, got {event:?}");
    }
}

/// Returns a topic name owned by `shard` of `shards`, distinct per `index`.
pub fn topic_on_shard(shard: usize, shards: usize, index: usize) -> String {
    (0..)
        .map(|i| format!("t{index}-{i}"))
        .find(|name| pubsub::topic::shard_for(name.as_bytes(), shards) == shard)
        .unwrap()
}

/// Returns the payloads of `messages` as strings.
pub fn payloads(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}
