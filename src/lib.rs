//! pubsub: an in-memory publish/subscribe broker with replay and at-least-once delivery,
//! built thread-per-core on glommio.
//!
//! Modules:
//! - [`protocol`]: the binary wire protocol, a pure encoder and decoder.
//! - [`topic`]: topic name validation and the topic-to-shard hash.
//! - [`shard`]: one shard's topics, ring buffers, consumers and retry buffers, with no I/O.
//! - [`server`]: executors, listeners, connections and cross-core routing.
//! - [`client`]: a blocking client over std networking.
//! - [`cli`]: the `pub` and `sub` subcommands of the `pubsub` command.
//! - [`bench`]: the `bench` subcommand, a load generator for the broker and its peers.

pub mod bench;
pub mod cli;
pub mod client;
pub mod protocol;
pub mod server;
pub mod shard;
pub mod topic;

/// Compiles the README's Rust example as a doctest, so the README cannot drift from the
/// API.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
