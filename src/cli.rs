//! The `pub` and `sub` subcommands: their arguments and what they do, on top of
//! [`Client`]. The binary parses the command line and calls [`run_pub`] or [`run_sub`].

use crate::client::{Client, ClientError, Event, Message, SubscribeOptions};
use crate::protocol::{AckMode, ErrorCode, StartPosition};
use clap::{Args, ValueEnum};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The broker address the subcommands connect to by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7878";

/// Arguments of `pubsub pub`.
#[derive(Debug, Clone, Args)]
pub struct PubArgs {
    /// Topic to publish to.
    pub topic: String,

    /// Message to publish. Without it, each line of standard input (or of --file) is
    /// published as one message, without its line ending.
    pub message: Option<String>,

    /// Read the messages from this file, one per line, instead of standard input.
    #[arg(long, value_name = "PATH", conflicts_with = "message")]
    pub file: Option<PathBuf>,

    /// Broker address, as HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub server: String,

    /// Wait for the broker to confirm each message and print its sequence number as
    /// "seq N".
    #[arg(long)]
    pub confirm: bool,
}

/// Arguments of `pubsub sub`.
#[derive(Debug, Clone, Args)]
pub struct SubArgs {
    /// Topic to subscribe to.
    pub topic: String,

    /// Where to start: new (only messages published from now on), earliest (the oldest
    /// retained message), seq:N (sequence number N), time:UNIX_MS (the first message
    /// published at or after this time, in milliseconds since the Unix epoch) or last:N
    /// (the last N messages). A durable consumer uses it only when it is created.
    #[arg(long, value_name = "POSITION", default_value = "new")]
    pub from: StartArg,

    /// Ack mode: none (each message counts as delivered once sent), or explicit (each
    /// message is acked after it is printed and redelivered if the ack does not arrive in
    /// time).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = AckArg::None)]
    pub ack: AckArg,

    /// Durable consumer name. The broker keeps the consumer's position and unacked
    /// messages after this command exits, for the broker's --consumer-idle-timeout, and a
    /// later `sub` with the same name continues where this one stopped.
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// Exit with status 0 after printing this many messages, redeliveries included.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Maximum number of unacked messages with --ack explicit; 0 uses the broker's
    /// default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_in_flight: u32,

    /// Broker address, as HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_ADDR)]
    pub server: String,
}

/// A `--from` value: where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartArg(pub StartPosition);

impl FromStr for StartArg {
    type Err = InvalidStartPosition;

    /// Parses `new`, `earliest`, `seq:N`, `time:UNIX_MS` or `last:N`. Milliseconds are
    /// converted to the nanoseconds the protocol carries.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidStartPosition {
            input: input.to_owned(),
            reason,
        };
        let number = |text: &str| text.parse::<u64>().map_err(|_| invalid(EXPECTED_FORMS));

        let position = match input.split_once(':') {
            None if input == "new" => StartPosition::New,
            None if input == "earliest" => StartPosition::Earliest,
            Some(("seq", seq)) => match number(seq)? {
                0 => return Err(invalid("sequence numbers start at 1")),
                seq => StartPosition::Sequence(seq),
            },
            Some(("time", millis)) => {
                let nanos = number(millis)?
                    .checked_mul(1_000_000)
                    .ok_or_else(|| invalid("the time is too far in the future"))?;
                StartPosition::Time(nanos)
            }
            Some(("last", count)) => StartPosition::Last(number(count)?),
            _ => return Err(invalid(EXPECTED_FORMS)),
        };
        Ok(StartArg(position))
    }
}

const EXPECTED_FORMS: &str = "expected new, earliest, seq:N, time:UNIX_MS or last:N";

/// A `--from` value that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStartPosition {
    /// The value as given.
    pub input: String,
    /// The rule the value breaks.
    pub reason: &'static str,
}

impl fmt::Display for InvalidStartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid start position {:?}: {}",
            self.input, self.reason
        )
    }
}

impl std::error::Error for InvalidStartPosition {}

/// A `--ack` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// At-most-once: no acks.
    None,
    /// At-least-once: ack each message after printing it.
    Explicit,
}

impl From<AckArg> for AckMode {
    fn from(arg: AckArg) -> Self {
        match arg {
            AckArg::None => AckMode::None,
            AckArg::Explicit => AckMode::Explicit,
        }
    }
}

/// A failure of `pub` or `sub`, with the step that failed.
#[derive(Debug)]
pub enum CliError {
    /// Connecting to the broker failed.
    Connect {
        /// The address as given.
        addr: String,
        /// The underlying error.
        source: ClientError,
    },
    /// Publishing failed; `line` is the 1-based input line, when reading lines.
    Publish {
        /// The input line of the message, if it came from a file or standard input.
        line: Option<u64>,
        /// The underlying error.
        source: ClientError,
    },
    /// The broker reported errors about unconfirmed publishes.
    Rejected {
        /// How many ERROR frames arrived.
        errors: usize,
    },
    /// Subscribing failed.
    Subscribe {
        /// The topic.
        topic: String,
        /// The underlying error.
        source: ClientError,
    },
    /// Receiving or acking messages failed.
    Receive(ClientError),
    /// Reading the messages to publish failed.
    ReadInput {
        /// The file, or `None` for standard input.
        path: Option<PathBuf>,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing to standard output failed.
    WriteOutput(io::Error),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Connect { addr, source } => {
                write!(
                    f,
                    "failed to connect to the broker at {addr}: {source}; check that \
                     `pubsub serve` is running there and that --server is HOST:PORT"
                )
            }
            CliError::Publish {
                line: Some(line),
                source,
            } => write!(f, "failed to publish the message on line {line}: {source}"),
            CliError::Publish { line: None, source } => write!(f, "failed to publish: {source}"),
            CliError::Rejected { errors } => write!(
                f,
                "the broker reported {errors} error(s) about the published messages; see above"
            ),
            CliError::Subscribe { topic, source } => {
                write!(f, "failed to subscribe to {topic:?}: {source}")
            }
            CliError::Receive(source) => write!(f, "failed to receive messages: {source}"),
            CliError::ReadInput {
                path: Some(path),
                source,
            } => write!(f, "failed to read {}: {source}", path.display()),
            CliError::ReadInput { path: None, source } => {
                write!(f, "failed to read standard input: {source}")
            }
            CliError::WriteOutput(source) => {
                write!(f, "failed to write to standard output: {source}")
            }
        }
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CliError::Connect { source, .. }
            | CliError::Publish { source, .. }
            | CliError::Subscribe { source, .. }
            | CliError::Receive(source) => Some(source),
            CliError::ReadInput { source, .. } | CliError::WriteOutput(source) => Some(source),
            CliError::Rejected { .. } => None,
        }
    }
}

/// Runs `pubsub pub`: publishes the message argument, or each input line as a message.
pub fn run_pub(args: PubArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(&args.server)?;
    let mut stdout = io::stdout().lock();

    match &args.message {
        Some(message) => publish_one(&mut client, &args, None, message.as_bytes(), &mut stdout)?,
        None => {
            let input = open_input(args.file.as_ref())?;
            publish_lines(&mut client, &args, input, &mut stdout)?;
        }
    }

    if !args.confirm {
        check_unconfirmed(&mut client, &mut io::stderr().lock())?;
    }
    Ok(())
}

/// Runs `pubsub sub`: prints each message as `SEQ<TAB>PAYLOAD` on standard output, and
/// gap notices and broker errors on standard error, until `--count` messages or until
/// the connection ends.
pub fn run_sub(args: SubArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut client = connect(&args.server)?;
    let sub_id = subscribe(&mut client, &args)?;
    print_messages(
        &mut client,
        &args,
        sub_id,
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )?;
    Ok(())
}

/// Subscribes with the options in `args` and returns the subscription id.
fn subscribe(client: &mut Client, args: &SubArgs) -> Result<u32, CliError> {
    let options = SubscribeOptions {
        start: args.from.0,
        ack_mode: args.ack.into(),
        consumer: args.consumer.clone(),
        max_in_flight: args.max_in_flight,
    };
    // A durable consumer whose previous connection just closed can still look attached
    // until the broker has processed that close. Retry briefly before reporting
    // CONSUMER_IN_USE.
    let deadline = std::time::Instant::now() + CONSUMER_IN_USE_RETRY;
    loop {
        match client.subscribe(&args.topic, options.clone()) {
            Ok(subscription) => return Ok(subscription.sub_id),
            Err(ClientError::Server(err))
                if err.code == ErrorCode::ConsumerInUse && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => {
                return Err(CliError::Subscribe {
                    topic: args.topic.clone(),
                    source,
                });
            }
        }
    }
}

/// How long `sub` retries a subscribe rejected with CONSUMER_IN_USE.
const CONSUMER_IN_USE_RETRY: Duration = Duration::from_secs(2);

/// Prints events until `--count` messages have been printed, acking each message after
/// printing it with `--ack explicit`.
fn print_messages(
    client: &mut Client,
    args: &SubArgs,
    sub_id: u32,
    out: &mut impl Write,
    diagnostics: &mut impl Write,
) -> Result<(), CliError> {
    let mut printed = 0u64;
    while args.count != Some(printed) {
        match client.recv().map_err(CliError::Receive)? {
            Event::Message(message) => {
                match print_message(out, &message) {
                    Ok(()) => {}
                    // The reader went away (for example `| head`); stop quietly.
                    Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(err) => return Err(CliError::WriteOutput(err)),
                }
                if args.ack == AckArg::Explicit {
                    client.ack(sub_id, message.seq).map_err(CliError::Receive)?;
                }
                printed += 1;
            }
            Event::Gap { first, last, .. } => {
                let _ = writeln!(
                    diagnostics,
                    "gap: messages {first}..={last} were evicted before delivery"
                );
            }
            Event::Error(err) => {
                let _ = writeln!(diagnostics, "error from broker: {err}");
            }
        }
    }
    Ok(())
}

fn connect(addr: &str) -> Result<Client, CliError> {
    Client::connect(addr).map_err(|source| CliError::Connect {
        addr: addr.to_owned(),
        source,
    })
}

/// Publishes one message, waiting for and printing its sequence number with --confirm.
fn publish_one(
    client: &mut Client,
    args: &PubArgs,
    line: Option<u64>,
    payload: &[u8],
    stdout: &mut impl Write,
) -> Result<(), CliError> {
    let failed = |source| CliError::Publish { line, source };
    if args.confirm {
        let published = client
            .publish_confirmed(&args.topic, payload)
            .map_err(failed)?;
        writeln!(stdout, "seq {}", published.seq).map_err(CliError::WriteOutput)?;
        stdout.flush().map_err(CliError::WriteOutput)
    } else if line.is_some() {
        client.queue_publish(&args.topic, payload).map_err(failed)
    } else {
        client.publish(&args.topic, payload).map_err(failed)
    }
}

/// Publishes each line of `input` as one message, without its `\n` or `\r\n` ending.
///
/// Lines that are already read are sent in batches, but queued lines are flushed before
/// every read that may block, so a slow pipe such as `tail -f` is forwarded line by line.
fn publish_lines(
    client: &mut Client,
    args: &PubArgs,
    input: impl Read,
    stdout: &mut impl Write,
) -> Result<(), CliError> {
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        if input.buffer().is_empty() {
            client
                .flush()
                .map_err(|source| CliError::Publish { line: None, source })?;
        }
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|source| CliError::ReadInput {
                path: args.file.clone(),
                source,
            })?;
        if read == 0 {
            break;
        }
        number += 1;
        publish_one(client, args, Some(number), strip_line_ending(&line), stdout)?;
    }
    client
        .flush()
        .map_err(|source| CliError::Publish { line: None, source })
}

/// Opens `path`, or standard input when there is none.
fn open_input(path: Option<&PathBuf>) -> Result<Box<dyn Read>, CliError> {
    let Some(path) = path else {
        return Ok(Box::new(io::stdin().lock()));
    };
    let file = File::open(path).map_err(|source| CliError::ReadInput {
        path: Some(path.clone()),
        source,
    })?;
    Ok(Box::new(file))
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reports errors about unconfirmed publishes. A ping round trip makes the broker read
/// every publish sent before it; ERROR frames it sends about them before the PONG are
/// printed and fail the command. Errors that arrive after the PONG go unseen.
fn check_unconfirmed(client: &mut Client, diagnostics: &mut impl Write) -> Result<(), CliError> {
    client
        .ping()
        .map_err(|source| CliError::Publish { line: None, source })?;
    let mut errors = 0;
    loop {
        match client.recv_timeout(Duration::ZERO) {
            Ok(Some(Event::Error(err))) => {
                let _ = writeln!(diagnostics, "error from broker: {err}");
                errors += 1;
            }
            Ok(Some(_)) => {}
            // Nothing more is waiting, or the broker closed after it replied to the ping.
            Ok(None) | Err(ClientError::Closed) => break,
            Err(source) => return Err(CliError::Publish { line: None, source }),
        }
    }
    match errors {
        0 => Ok(()),
        errors => Err(CliError::Rejected { errors }),
    }
}

/// Writes `SEQ<TAB>PAYLOAD`, with `<TAB>(redelivery N)` for a redelivered message, and
/// flushes so that each message shows at once.
fn print_message(out: &mut impl Write, message: &Message) -> io::Result<()> {
    let payload = String::from_utf8_lossy(&message.payload);
    if message.delivery_count > 1 {
        writeln!(
            out,
            "{}\t{}\t(redelivery {})",
            message.seq, payload, message.delivery_count
        )?;
    } else {
        writeln!(out, "{}\t{}", message.seq, payload)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake_broker::{fake_broker, message};
    use crate::protocol::{ErrorCode, Frame};
    use bytes::Bytes;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct PubCommand {
        #[command(flatten)]
        args: PubArgs,
    }

    #[derive(Debug, Parser)]
    struct SubCommand {
        #[command(flatten)]
        args: SubArgs,
    }

    #[test]
    fn start_positions_parse() {
        let cases = [
            ("new", StartPosition::New),
            ("earliest", StartPosition::Earliest),
            ("seq:17", StartPosition::Sequence(17)),
            (
                "time:1700000000123",
                StartPosition::Time(1_700_000_000_123_000_000),
            ),
            ("last:5", StartPosition::Last(5)),
            ("last:0", StartPosition::Last(0)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<StartArg>().unwrap().0, expected, "{input}");
        }
    }

    #[test]
    fn bad_start_positions_are_rejected() {
        let cases = [
            ("x", EXPECTED_FORMS),
            ("", EXPECTED_FORMS),
            ("seq:", EXPECTED_FORMS),
            ("seq:-1", EXPECTED_FORMS),
            ("seq:abc", EXPECTED_FORMS),
            ("seq:0", "sequence numbers start at 1"),
            ("time:18446744073710", "the time is too far in the future"),
            ("last:5:6", EXPECTED_FORMS),
            ("New", EXPECTED_FORMS),
            ("new:1", EXPECTED_FORMS),
        ];
        for (input, reason) in cases {
            let err = input.parse::<StartArg>().unwrap_err();
            assert_eq!(err.reason, reason, "{input}");
        }
    }

    #[test]
    fn start_position_error_message() {
        let err = "x".parse::<StartArg>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid start position \"x\": expected new, earliest, seq:N, time:UNIX_MS or last:N"
        );
    }

    #[test]
    fn sub_defaults() {
        let command = SubCommand::try_parse_from(["sub", "orders"]).unwrap();
        assert_eq!(command.args.topic, "orders");
        assert_eq!(command.args.from, StartArg(StartPosition::New));
        assert_eq!(command.args.ack, AckArg::None);
        assert_eq!(command.args.consumer, None);
        assert_eq!(command.args.count, None);
        assert_eq!(command.args.max_in_flight, 0);
        assert_eq!(command.args.server, DEFAULT_ADDR);
    }

    #[test]
    fn sub_options_parse() {
        let command = SubCommand::try_parse_from([
            "sub",
            "orders",
            "--from",
            "last:3",
            "--ack",
            "explicit",
            "--consumer",
            "billing",
            "--count",
            "10",
            "--max-in-flight",
            "4",
            "--server",
            "127.0.0.1:9000",
        ])
        .unwrap();
        assert_eq!(command.args.from, StartArg(StartPosition::Last(3)));
        assert_eq!(command.args.ack, AckArg::Explicit);
        assert_eq!(command.args.consumer.as_deref(), Some("billing"));
        assert_eq!(command.args.count, Some(10));
        assert_eq!(command.args.max_in_flight, 4);
        assert_eq!(command.args.server, "127.0.0.1:9000");
    }

    #[test]
    fn sub_rejects_bad_from() {
        let err = SubCommand::try_parse_from(["sub", "orders", "--from", "yesterday"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid start position \"yesterday\""),
            "{err}"
        );
    }

    #[test]
    fn pub_message_conflicts_with_file() {
        let result = PubCommand::try_parse_from(["pub", "orders", "hello", "--file", "x.txt"]);
        assert!(result.is_err());
        let command = PubCommand::try_parse_from(["pub", "orders", "--confirm"]).unwrap();
        assert_eq!(command.args.message, None);
        assert!(command.args.confirm);
        assert_eq!(command.args.server, DEFAULT_ADDR);
    }

    #[test]
    fn line_endings_are_stripped() {
        assert_eq!(strip_line_ending(b"abc\n"), b"abc");
        assert_eq!(strip_line_ending(b"abc\r\n"), b"abc");
        assert_eq!(strip_line_ending(b"abc"), b"abc");
        assert_eq!(strip_line_ending(b"\n"), b"");
        assert_eq!(strip_line_ending(b"a\rb\n"), b"a\rb");
    }

    #[test]
    fn message_lines_format() {
        let mut message = Message {
            sub_id: 1,
            seq: 42,
            timestamp: 0,
            delivery_count: 1,
            payload: Bytes::from_static(b"hello \xff"),
        };
        let mut out = Vec::new();
        print_message(&mut out, &message).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "42\thello \u{fffd}\n");

        message.delivery_count = 3;
        let mut out = Vec::new();
        print_message(&mut out, &message).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "42\thello \u{fffd}\t(redelivery 3)\n"
        );
    }

    fn sub_args(count: Option<u64>) -> SubArgs {
        SubArgs {
            topic: "orders".into(),
            from: StartArg(StartPosition::Last(2)),
            ack: AckArg::Explicit,
            consumer: Some("billing".into()),
            count,
            max_in_flight: 16,
            server: DEFAULT_ADDR.into(),
        }
    }

    fn pub_args(confirm: bool) -> PubArgs {
        PubArgs {
            topic: "orders".into(),
            message: None,
            file: None,
            server: DEFAULT_ADDR.into(),
            confirm,
        }
    }

    #[test]
    fn sub_prints_acks_and_stops_at_count() {
        let (addr, broker) = fake_broker(true, |broker| {
            assert_eq!(
                broker.expect_frame(),
                Frame::Subscribe {
                    sub_id: 1,
                    topic: Bytes::from_static(b"orders"),
                    start: StartPosition::Last(2),
                    ack_mode: AckMode::Explicit,
                    max_in_flight: 16,
                    consumer: Bytes::from_static(b"billing"),
                }
            );
            broker.send(Frame::Subscribed {
                sub_id: 1,
                next_seq: 5,
            });
            broker.send(message(1, 5));
            broker.send(Frame::Gap {
                sub_id: 1,
                first: 6,
                last: 7,
            });
            broker.send(Frame::Message {
                sub_id: 1,
                seq: 8,
                timestamp: 0,
                delivery_count: 2,
                payload: Bytes::from_static(b"m8"),
            });
            broker.send(Frame::Error {
                code: ErrorCode::UnknownSequence,
                reference: 1,
                message: Bytes::from_static(b"sequence number 3 was never delivered"),
            });
            broker.send(message(1, 9));
            broker.send(message(1, 10));
            for seq in [5, 8, 9] {
                assert_eq!(broker.expect_frame(), Frame::Ack { sub_id: 1, seq });
            }
            assert_eq!(broker.read_frame(), None);
        });
        let args = sub_args(Some(3));
        let mut client = Client::connect(addr).unwrap();
        let sub_id = subscribe(&mut client, &args).unwrap();
        let mut out = Vec::new();
        let mut diagnostics = Vec::new();
        print_messages(&mut client, &args, sub_id, &mut out, &mut diagnostics).unwrap();
        drop(client);
        broker.join().unwrap();

        assert_eq!(
            String::from_utf8(out).unwrap(),
            "5\tm5\n8\tm8\t(redelivery 2)\n9\tm9\n"
        );
        assert_eq!(
            String::from_utf8(diagnostics).unwrap(),
            "gap: messages 6..=7 were evicted before delivery\n\
             error from broker: unknown sequence number: sequence number 3 was never \
             delivered (reference 1)\n"
        );
    }

    #[test]
    fn pub_lines_are_queued_then_checked() {
        let (addr, broker) = fake_broker(true, |broker| {
            let mut payloads = Vec::new();
            for _ in 0..4 {
                let Frame::Publish {
                    request_id,
                    topic,
                    payload,
                } = broker.expect_frame()
                else {
                    panic!("expected PUBLISH");
                };
                assert_eq!(request_id, 0);
                assert_eq!(&topic[..], b"orders");
                payloads.push(payload);
            }
            assert_eq!(payloads, [&b"a"[..], b"b", b"", b"last"]);

            let Frame::Ping { token } = broker.expect_frame() else {
                panic!("expected PING");
            };
            broker.send(Frame::Error {
                code: ErrorCode::Internal,
                reference: 0,
                message: Bytes::from_static(b"shard 1 failed"),
            });
            broker.send(Frame::Pong { token });
        });
        let args = pub_args(false);
        let mut client = Client::connect(addr).unwrap();
        let mut out = Vec::new();
        let input = &b"a\nb\r\n\nlast"[..];
        publish_lines(&mut client, &args, input, &mut out).unwrap();
        assert!(out.is_empty());

        let mut diagnostics = Vec::new();
        let result = check_unconfirmed(&mut client, &mut diagnostics);
        assert!(
            matches!(result, Err(CliError::Rejected { errors: 1 })),
            "{result:?}"
        );
        assert_eq!(
            String::from_utf8(diagnostics).unwrap(),
            "error from broker: internal error: shard 1 failed\n"
        );
        broker.join().unwrap();
    }

    #[test]
    fn pub_confirm_prints_sequence_numbers() {
        let (addr, broker) = fake_broker(true, |broker| {
            for seq in [10, 11] {
                let Frame::Publish { request_id, .. } = broker.expect_frame() else {
                    panic!("expected PUBLISH");
                };
                assert_ne!(request_id, 0);
                broker.send(Frame::Published {
                    request_id,
                    seq,
                    timestamp: 0,
                });
            }
        });
        let args = pub_args(true);
        let mut client = Client::connect(addr).unwrap();
        let mut out = Vec::new();
        publish_lines(&mut client, &args, &b"x\ny\n"[..], &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "seq 10\nseq 11\n");
        broker.join().unwrap();
    }
}
