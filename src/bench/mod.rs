//! The `pubsub bench` load generator: drives a running broker (or a peer: nats-server,
//! redis-server, or the built-in relay) over TCP and reports latency and throughput.
//!
//! Scenarios:
//! - `latency`: open loop at a fixed rate. Each message carries the time it was meant to
//!   be sent, and latency is receive time minus that time, so a stall in the broker shows
//!   in the tail instead of slowing the generator down (coordinated omission corrected).
//! - `throughput`: closed loop with a bounded window of messages in flight.
//! - `replay`: prefill one topic, then time a subscriber that reads it from the earliest
//!   message (pubsub only).
//! - `spread`: `throughput` over many topics, so that every shard owns some.
//!
//! Helpers:
//! - `relay-server`: a byte relay with no broker work, the floor of the machine.
//! - `jitter`: how often the machine itself stalls a running thread.
//! - `plot`: an SVG of several `.hgrm` files.
//! - `table`: a markdown table of several JSON summaries, with ratios to one of them.
//!
//! Every message starts with a 16-byte header (see [`header`]) that names its topic,
//! publisher and per-stream counter, so every subscriber accounts for each message it
//! should get: lost and duplicated messages are counted exactly.

mod engine;
mod header;
mod jitter;
mod layout;
mod plot;
mod relay;
mod replay;
mod report;
mod table;
mod tracker;
mod wire;

use clap::{Args, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use header::HEADER_LEN;

/// Arguments of `pubsub bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The scenarios and helpers of `pubsub bench`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Open loop at a fixed rate; reports latency percentiles corrected for coordinated
    /// omission, and lost and duplicated messages.
    Latency(LatencyArgs),
    /// Closed loop with a bounded window of messages in flight; reports messages/s and
    /// MB/s published and delivered.
    Throughput(ThroughputArgs),
    /// Prefills one topic with N messages, then times a subscriber that reads them all
    /// from the earliest one. The broker must retain at least N messages per topic.
    Replay(ReplayArgs),
    /// Closed-loop throughput over many topics, so that every shard owns some of them.
    Spread(SpreadArgs),
    /// Runs a TCP relay that forwards every publisher's frames to every subscriber with
    /// no broker work; `--protocol relay` drives it.
    RelayServer(RelayServerArgs),
    /// Measures how often and how long the machine stalls a thread that never blocks, a
    /// noise floor for the latencies measured on the same CPU.
    Jitter(JitterArgs),
    /// Draws the latency-by-percentile curves of one or more `.hgrm` files into one SVG.
    Plot(PlotArgs),
    /// Prints a markdown table of several JSON summaries, with each figure's ratio to the
    /// baseline's.
    Table(TableArgs),
}

/// The wire protocol the generator speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// This broker's binary protocol.
    Pubsub,
    /// Core NATS text protocol (at-most-once), as served by nats-server.
    Nats,
    /// RESP PUBLISH/SUBSCRIBE (at-most-once), as served by redis-server.
    Redis,
    /// The frames of `pubsub bench relay-server`.
    Relay,
}

impl Protocol {
    /// Returns the name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pubsub => "pubsub",
            Protocol::Nats => "nats",
            Protocol::Redis => "redis",
            Protocol::Relay => "relay",
        }
    }
}

/// Acknowledgement mode of the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// At-most-once: no acks.
    None,
    /// At-least-once: pubsub explicit acks, one ACK per message or one ACK_UP_TO every
    /// `--ack-every` messages.
    Explicit,
}

/// Options shared by every scenario that connects to a server.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Server address, as HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value = crate::server::DEFAULT_LISTEN)]
    pub server: SocketAddr,

    /// Protocol to speak to the server.
    #[arg(long, value_enum, default_value_t = Protocol::Pubsub)]
    pub protocol: Protocol,

    /// Payload size of each message in bytes, at least 16 (the header).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub payload: usize,

    /// Ack mode of the subscribers (pubsub only).
    #[arg(long, value_enum, default_value_t = AckArg::None)]
    pub ack: AckArg,

    /// With `--ack explicit`: ack each message (1), or send one cumulative ACK_UP_TO every
    /// K messages of a subscription.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub ack_every: u32,

    /// With `--ack explicit`: the maximum of unacked messages per subscription sent in
    /// SUBSCRIBE; 0 selects the broker's default (its --max-in-flight).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_in_flight: u32,

    /// Time to wait for outstanding deliveries after the last publish.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Exit 0 even when messages were lost, or duplicated without explicit acks. Meant
    /// for at-most-once peers driven past what they sustain.
    #[arg(long)]
    pub allow_loss: bool,

    /// Name of the system under test in reports and tables [default: the protocol].
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,

    /// Name of this run in reports and tables [default: the scenario].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Write a JSON summary of the run to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// How many connections publish and subscribe, and over how many topics.
#[derive(Debug, Clone, Args)]
pub struct FanArgs {
    /// Publisher connections, one thread each.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub publishers: usize,

    /// Subscriber connections, one thread each. With at least as many topics as
    /// subscribers, each topic has one subscriber; with fewer, each subscriber takes one
    /// topic and topics are shared (fan-out).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub subscribers: usize,

    /// Topics, spread over publishers and subscribers the same way.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub topics: usize,
}

/// Arguments of `pubsub bench latency`.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub fan: FanArgs,

    /// Total publish rate over all publishers, in messages per second.
    #[arg(long, value_name = "MSG_PER_S", default_value_t = 50_000.0)]
    pub rate: f64,

    /// Measured time, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Time at the start whose messages are sent and accounted for but not recorded in
    /// the histogram.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Write the latency distribution in HdrHistogram's percentile format to this file.
    #[arg(long, value_name = "PATH")]
    pub hgrm: Option<PathBuf>,
}

/// Arguments of `pubsub bench throughput`.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub fan: FanArgs,

    /// Time the publishers publish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Maximum of messages published and not yet delivered, over all publishers; a
    /// publisher waits while the window is full.
    #[arg(long, value_name = "MESSAGES", default_value_t = 8000)]
    pub window: u64,
}

/// Arguments of `pubsub bench spread`: `throughput` with more topics and connections by
/// default.
#[derive(Debug, Clone, Args)]
pub struct SpreadArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Publisher connections, one thread each.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub publishers: usize,

    /// Subscriber connections, one thread each.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub subscribers: usize,

    /// Topics; the broker's hash spreads them over its shards.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub topics: usize,

    /// Time the publishers publish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Maximum of messages published and not yet delivered, over all publishers.
    #[arg(long, value_name = "MESSAGES", default_value_t = 8000)]
    pub window: u64,
}

/// Arguments of `pubsub bench replay`.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Messages to prefill and replay. The broker needs --retain-messages at least this
    /// and --retain-bytes at least this times the payload size.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    pub messages: u64,

    /// Process id of the broker, to read its resident memory (VmRSS in
    /// /proc/PID/status) before and after the prefill.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,

    /// Upper bound on the prefill and on the replay, each.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `pubsub bench relay-server`.
#[derive(Debug, Clone, Args)]
pub struct RelayServerArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7879")]
    pub listen: SocketAddr,

    /// Exit after this long, so that a forgotten relay does not run for good.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub exit_after: Duration,
}

/// Arguments of `pubsub bench jitter`.
#[derive(Debug, Clone, Args)]
pub struct JitterArgs {
    /// Time to spin.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Write a JSON summary to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
}

/// Arguments of `pubsub bench plot`.
#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// SVG file to write.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,

    /// Title drawn above the plot.
    #[arg(long, default_value = "Latency by percentile")]
    pub title: String,

    /// `.hgrm` files, one curve each, as PATH or LABEL=PATH; without a label the curve is
    /// named after the file.
    #[arg(required = true, value_name = "RUN.hgrm")]
    pub inputs: Vec<String>,
}

/// Arguments of `pubsub bench table`.
#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// Label of the system every ratio is taken against.
    #[arg(long, default_value = "pubsub")]
    pub baseline: String,

    /// JSON summaries written with `--json`.
    #[arg(required = true, value_name = "RUN.json")]
    pub inputs: Vec<PathBuf>,
}

/// Runs one `pubsub bench` command.
pub fn run(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    match args.command {
        BenchCommand::Latency(args) => engine::run_latency(args),
        BenchCommand::Throughput(args) => {
            let fan = args.fan.clone();
            engine::run_throughput(
                args.connection,
                fan,
                args.duration,
                args.window,
                "throughput",
            )
        }
        BenchCommand::Spread(args) => {
            let fan = FanArgs {
                publishers: args.publishers,
                subscribers: args.subscribers,
                topics: args.topics,
            };
            engine::run_throughput(args.connection, fan, args.duration, args.window, "spread")
        }
        BenchCommand::Replay(args) => replay::run(args),
        BenchCommand::RelayServer(args) => relay::serve(args.listen, args.exit_after),
        BenchCommand::Jitter(args) => jitter::run(&args),
        BenchCommand::Plot(args) => plot::run(&args),
        BenchCommand::Table(args) => table::run(&args),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("invalid duration {text:?}: {err}; use e.g. 500ms, 10s, 2m"))
}
