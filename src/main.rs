//! The `pubsub` command: runs the broker (`serve`) and talks to one (`pub`, `sub`).

use clap::{Args, Parser, Subcommand};
use pubsub::cli::{self, PubArgs, SubArgs};
use pubsub::server::{Server, ServerConfig, available_cpus};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "pubsub",
    version,
    about = "In-memory publish/subscribe broker with replay and at-least-once delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Publish one message, or one message per line of standard input or a file.
    Pub(PubArgs),
    /// Subscribe to a topic and print its messages.
    Sub(SubArgs),
    /// Drive a running broker and report latency and throughput.
    Bench(pubsub::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = pubsub::server::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Number of shards, one executor thread each [default: all CPUs available to the process].
    #[arg(long)]
    cores: Option<usize>,
    /// Do not pin executors to CPUs; needed for more shards than CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Maximum payload of one message, in bytes.
    #[arg(long, default_value_t = pubsub::protocol::DEFAULT_MAX_PAYLOAD)]
    max_payload: u32,
    /// Maximum messages retained per topic.
    #[arg(long, default_value_t = 10_000)]
    retain_messages: usize,
    /// Maximum payload bytes retained per topic.
    #[arg(long, default_value_t = 1024 * 1024)]
    retain_bytes: usize,
    /// Maximum age of a retained message (e.g. 500ms, 30s, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    retain_age: Duration,
    /// Time a delivered message may stay unacked before it is redelivered.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    ack_timeout: Duration,
    /// Default and maximum number of unacked messages per consumer.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: u32,
    /// Maximum payload bytes of unacked messages per consumer; one message is always
    /// delivered even if it is larger.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_in_flight_bytes: usize,
    /// Time a durable consumer's cursor and unacked messages are kept after its
    /// connection closes.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    consumer_idle_timeout: Duration,
    /// Time an idle executor keeps polling before it sleeps (e.g. 50us). Lowers the
    /// latency of the next message at the cost of CPU time; 0 sleeps at once.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    spin_before_park: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("invalid duration {text:?}: {err}; use e.g. 250ms, 30s, 5m, 1h"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Pub(args) => cli::run_pub(args),
        Command::Sub(args) => cli::run_sub(args),
        Command::Bench(args) => pubsub::bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let cpus = available_cpus();
    let cores = args.cores.unwrap_or(cpus);
    let config = ServerConfig {
        listen: args.listen,
        cores,
        pin: !args.no_pin,
        max_payload: args.max_payload,
        retain_messages: args.retain_messages,
        retain_bytes: args.retain_bytes,
        retain_age: args.retain_age,
        ack_timeout: args.ack_timeout,
        max_in_flight: args.max_in_flight,
        max_in_flight_bytes: args.max_in_flight_bytes,
        consumer_idle_timeout: args.consumer_idle_timeout,
        spin_before_park: args.spin_before_park,
    };

    // Executor threads inherit the signal mask, so blocking here leaves SIGINT and
    // SIGTERM to the waiting thread below.
    let signals = block_shutdown_signals()?;
    let server = Server::start(config)?;
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("pubsub-signals".into())
        .spawn(move || {
            let signal = wait_for_signal(&signals);
            tracing::info!(signal, "shutdown signal received; stopping");
            handle.shutdown();
        })?;
    server.wait()?;
    Ok(())
}

fn block_shutdown_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset/sigaddset initialise the set before use, and pthread_sigmask
    // only reads it; all pointers are to this stack frame.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Blocks until SIGINT or SIGTERM arrives; returns the signal's name.
fn wait_for_signal(set: &libc::sigset_t) -> &'static str {
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is an initialised signal set and `signal` a valid out-pointer.
    let rc = unsafe { libc::sigwait(set, &mut signal) };
    match (rc, signal) {
        (0, libc::SIGINT) => "SIGINT",
        (0, libc::SIGTERM) => "SIGTERM",
        _ => "unknown",
    }
}
