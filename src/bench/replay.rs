//! `pubsub bench replay`: prefills one topic, then times a new subscriber that reads it
//! from the earliest retained message. With `--broker-pid` it also reads the broker's
//! resident memory before and after the prefill, which gives the memory each retained
//! message costs, and again after the replay, which shows what delivering a retained
//! message adds to it.

use super::engine::{add_environment, run_id, validate_connection, write_json};
use super::header::Header;
use super::layout::topic_name;
use super::report::{Summary, group_thousands, print_table};
use super::tracker::{Arrival, Tracker};
use super::wire::{self, SubscribeSpec};
use super::{AckArg, Protocol, ReplayArgs};
use crate::client::Client;
use crate::protocol::StartPosition;
use std::error::Error;
use std::time::{Duration, Instant};

/// Messages queued between two checks of the prefill deadline.
const DEADLINE_CHECK_EVERY: u64 = 4096;

/// Pause after the prefill before memory is read, so the broker has handled every
/// message the last confirmation did not wait for.
const SETTLE_TIME: Duration = Duration::from_millis(200);

/// Runs the replay scenario.
pub fn run(args: ReplayArgs) -> Result<(), Box<dyn Error>> {
    let connection = &args.connection;
    validate_connection(connection)?;
    if connection.protocol != Protocol::Pubsub {
        return Err(format!(
            "replay needs --protocol pubsub; {} keeps no messages to replay",
            connection.protocol.name()
        )
        .into());
    }
    if args.messages == 0 || args.messages > u64::from(u32::MAX) {
        return Err(format!("--messages is {}; use 1 to {}", args.messages, u32::MAX).into());
    }
    let topic = topic_name(&run_id(), 0);
    let total = args.messages;

    let rss_before = args.broker_pid.map(read_rss).transpose()?;
    let prefill_time = prefill(
        connection.server,
        &topic,
        connection.payload,
        total,
        args.timeout,
    )?;
    std::thread::sleep(SETTLE_TIME);
    let rss_after = args.broker_pid.map(read_rss).transpose()?;

    let replay = replay(&args, &topic)?;
    let rss_replayed = args.broker_pid.map(read_rss).transpose()?;
    let lost = total - replay.received;

    let payload = connection.payload as f64;
    let prefill_rate = total as f64 / prefill_time.as_secs_f64().max(1e-9);
    let replay_rate = replay.received as f64 / replay.time.as_secs_f64().max(1e-9);
    let mut summary = Summary::default();
    summary.text(
        "name",
        connection.name.clone().unwrap_or_else(|| "replay".into()),
    );
    summary.text(
        "label",
        connection.label.clone().unwrap_or_else(|| "pubsub".into()),
    );
    summary.text("scenario", "replay");
    summary.text("protocol", "pubsub");
    summary.text("server", connection.server.to_string());
    add_environment(&mut summary);
    summary.count("payload_bytes", connection.payload as u64);
    summary.text(
        "ack",
        match connection.ack {
            AckArg::None => "none",
            AckArg::Explicit => "explicit",
        },
    );
    summary.count("replay_messages", total);
    summary.count("received", replay.received);
    summary.count("lost", lost);
    summary.count("duplicated", replay.duplicated);
    summary.count("gap_messages", replay.gap_messages);
    summary.number("prefill_s", prefill_time.as_secs_f64());
    summary.number("prefill_msgs_per_s", prefill_rate);
    summary.number("replay_s", replay.time.as_secs_f64());
    summary.number("replay_msgs_per_s", replay_rate);
    summary.number("replay_mb_per_s", replay_rate * payload / 1e6);

    let mut rows = vec![
        ("server".into(), format!("{} (pubsub)", connection.server)),
        (
            "date".into(),
            summary.get_text("date").unwrap_or_default().to_owned(),
        ),
        ("payload".into(), format!("{} bytes", connection.payload)),
        (
            "prefill".into(),
            format!(
                "{} messages in {:.3} s, {} msg/s",
                group_thousands(total as f64),
                prefill_time.as_secs_f64(),
                group_thousands(prefill_rate)
            ),
        ),
        (
            "replay".into(),
            format!(
                "{} messages in {:.3} s, {} msg/s, {:.1} MB/s",
                group_thousands(replay.received as f64),
                replay.time.as_secs_f64(),
                group_thousands(replay_rate),
                replay_rate * payload / 1e6
            ),
        ),
        ("lost".into(), group_thousands(lost as f64)),
        (
            "duplicated".into(),
            group_thousands(replay.duplicated as f64),
        ),
    ];
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let per_message = after.saturating_sub(before) as f64 / total as f64;
        summary.count("broker_rss_before_bytes", before);
        summary.count("broker_rss_after_bytes", after);
        summary.number("broker_rss_per_message_bytes", per_message);
        summary.number("broker_overhead_per_message_bytes", per_message - payload);
        rows.push((
            "broker memory".into(),
            format!(
                "VmRSS {:.1} → {:.1} MiB: {:.1} bytes per message, {:.1} beyond the payload",
                before as f64 / 1048576.0,
                after as f64 / 1048576.0,
                per_message,
                per_message - payload
            ),
        ));
        if let Some(replayed) = rss_replayed {
            let per_message = replayed.saturating_sub(before) as f64 / total as f64;
            summary.count("broker_rss_after_replay_bytes", replayed);
            summary.number(
                "broker_overhead_per_delivered_message_bytes",
                per_message - payload,
            );
            rows.push((
                "after replay".into(),
                format!(
                    "VmRSS {:.1} MiB: {:.1} bytes per retained message beyond the payload",
                    replayed as f64 / 1048576.0,
                    per_message - payload
                ),
            ));
        }
    }
    print_table(
        &format!("replay / {}", summary.get_text("label").unwrap_or_default()),
        &rows,
    );
    write_json(connection, &summary)?;

    if replay.gap_messages > 0 {
        return Err(format!(
            "the broker evicted {} of the {total} prefilled messages before the replay; start \
             it with --retain-messages {total} and --retain-bytes of at least {}",
            replay.gap_messages,
            total * connection.payload as u64
        )
        .into());
    }
    if lost > 0 && !connection.allow_loss {
        return Err(format!("{lost} of {total} messages did not arrive within --timeout").into());
    }
    Ok(())
}

/// Publishes `total` messages to `topic` and returns the time taken. The last one is
/// confirmed, and its confirmation shows that the broker has stored every one before it.
fn prefill(
    server: std::net::SocketAddr,
    topic: &str,
    payload_len: usize,
    total: u64,
    timeout: Duration,
) -> Result<Duration, Box<dyn Error>> {
    let mut client = Client::connect(server)?;
    let mut payload = vec![b'x'; payload_len];
    let started = Instant::now();
    for counter in 0..total {
        Header {
            intended_ns: 0,
            counter: counter as u32,
            publisher: 0,
            topic: 0,
        }
        .write(&mut payload);
        if counter + 1 == total {
            let published = client.publish_confirmed(topic, &payload)?;
            if published.seq != total {
                return Err(format!(
                    "the last prefilled message got sequence number {}, expected {total}; \
                     another client is publishing to {topic}",
                    published.seq
                )
                .into());
            }
        } else {
            client.queue_publish(topic, &payload)?;
        }
        if counter % DEADLINE_CHECK_EVERY == 0 && started.elapsed() > timeout {
            return Err(format!(
                "prefill did not finish within {} s; {counter} of {total} messages were queued",
                timeout.as_secs()
            )
            .into());
        }
    }
    Ok(started.elapsed())
}

struct ReplayOutcome {
    received: u64,
    duplicated: u64,
    gap_messages: u64,
    /// From the start of the connection to the last new message.
    time: Duration,
}

fn replay(args: &ReplayArgs, topic: &str) -> Result<ReplayOutcome, Box<dyn Error>> {
    let connection = &args.connection;
    let spec = SubscribeSpec {
        topics: vec![topic.to_owned()],
        start: StartPosition::Earliest,
        ack: connection.ack,
        ack_every: connection.ack_every,
        max_in_flight: connection.max_in_flight,
    };
    let started = Instant::now();
    let mut subscriber = wire::connect_subscriber(Protocol::Pubsub, connection.server, &spec)?;
    let mut tracker = Tracker::new(1, &[0], &[vec![0]]);
    let mut received = 0u64;
    let mut last_arrival = started;
    let deadline = started + args.timeout;
    while received < args.messages && Instant::now() < deadline {
        subscriber.poll(&mut |payload, at| {
            let arrival = match Header::read(payload) {
                Some(header) => tracker.record(&header),
                None => {
                    tracker.record_malformed();
                    Arrival::Unexpected
                }
            };
            if arrival == Arrival::New {
                received += 1;
                last_arrival = at;
            }
        })?;
        if subscriber.notices().gap_messages > 0 {
            break;
        }
    }
    let accounting = tracker.settle(&[vec![args.messages]]);
    Ok(ReplayOutcome {
        received: accounting.received,
        duplicated: accounting.duplicated,
        gap_messages: subscriber.notices().gap_messages,
        time: last_arrival.duration_since(started),
    })
}

/// Returns the resident set size of process `pid` in bytes, from VmRSS in
/// /proc/PID/status.
fn read_rss(pid: u32) -> Result<u64, Box<dyn Error>> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .map_err(|err| format!("cannot read {path}: {err}; is --broker-pid right?"))?;
    parse_vm_rss(&status).ok_or_else(|| format!("{path} has no VmRSS line").into())
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_parses_from_status() {
        let status = "Name:\tpubsub\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }
}
