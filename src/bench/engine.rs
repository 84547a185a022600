//! Runs the latency (open loop) and throughput (closed loop) scenarios: one thread per
//! publisher and per subscriber connection, a coordinator that starts them together,
//! waits for the publishers and the outstanding deliveries, and settles the accounts.

use super::header::{HEADER_LEN, Header};
use super::layout::{Layout, topic_name};
use super::report::{self, LatencySummary, Summary, group_thousands, new_histogram};
use super::tracker::{Accounting, Arrival, Tracker};
use super::wire::{self, Notices, Publisher, SubscribeSpec, Subscriber};
use super::{AckArg, ConnectionArgs, FanArgs, LatencyArgs, Protocol};
use crate::protocol::StartPosition;
use hdrhistogram::Histogram;
use std::error::Error;
use std::io::{self, IsTerminal, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Time between the coordinator's checks of the run's progress.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Time between the start signal and the first scheduled message, so that every thread
/// is running when the schedule starts.
const START_DELAY: Duration = Duration::from_millis(50);

/// Most messages a closed-loop publisher queues between two checks of the window.
const CLOSED_LOOP_BATCH: u64 = 1024;

/// The last part of an open-loop publisher's wait that it spends yielding instead of
/// sleeping.
const SPIN_BEFORE_DUE: Duration = Duration::from_micros(200);

/// Publisher pacing.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// Fixed total rate in messages per second; latency is recorded after the warm-up.
    Open {
        rate: f64,
        warmup: Duration,
        duration: Duration,
    },
    /// As fast as a window of outstanding deliveries allows.
    Closed { window: u64, duration: Duration },
}

impl Pacing {
    fn total_time(&self) -> Duration {
        match *self {
            Pacing::Open {
                warmup, duration, ..
            } => warmup + duration,
            Pacing::Closed { duration, .. } => duration,
        }
    }
}

/// Everything a load run needs.
struct Plan {
    protocol: Protocol,
    connection: ConnectionArgs,
    layout: Layout,
    topic_names: Vec<String>,
    pacing: Pacing,
}

/// Counters shared by the threads of one run.
struct Shared {
    base: Instant,
    /// Deliveries the messages published so far should produce (sent × fan-out).
    expected_deliveries: AtomicU64,
    /// Arrivals, duplicates included.
    arrivals: AtomicU64,
    /// First arrivals of expected messages.
    distinct: AtomicU64,
    sent: AtomicU64,
    stop_subscribers: AtomicBool,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
}

impl Shared {
    fn fail(&self, thread: &str, err: &dyn std::fmt::Display) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert_with(|| format!("{thread} failed: {err}"));
        self.failed.store(true, Ordering::SeqCst);
    }

    fn elapsed_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// One publisher's result.
struct PublisherResult {
    /// Messages sent per topic index.
    sent: Vec<u64>,
    finished_ns: u64,
}

/// One subscriber's result.
struct SubscriberResult {
    tracker: Tracker,
    histogram: Histogram<u64>,
    notices: Notices,
    last_arrival_ns: u64,
}

/// The result of one load run.
struct Outcome {
    accounting: Accounting,
    histogram: Histogram<u64>,
    notices: Notices,
    sent: u64,
    /// From the first scheduled message to the last publisher's last flush.
    publish_time: Duration,
    /// From the first scheduled message to the last first arrival.
    delivery_time: Duration,
}

/// Runs `pubsub bench latency`.
pub fn run_latency(args: LatencyArgs) -> Result<(), Box<dyn Error>> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(format!(
            "--rate is {}; use a positive number of messages per second",
            args.rate
        )
        .into());
    }
    if args.duration.is_zero() {
        return Err("--duration is 0; measure for at least 1 ms".into());
    }
    let pacing = Pacing::Open {
        rate: args.rate,
        warmup: args.warmup,
        duration: args.duration,
    };
    let plan = make_plan(args.connection, &args.fan, pacing)?;
    let outcome = execute(&plan, "latency")?;
    let latency = LatencySummary::from_histogram(&outcome.histogram);

    let mut summary = base_summary(&plan, "latency");
    summary.number("rate", args.rate);
    summary.number("warmup_s", args.warmup.as_secs_f64());
    summary.number("duration_s", args.duration.as_secs_f64());
    add_outcome(&mut summary, &plan, &outcome);
    summary.latency(&latency);

    let mut rows = header_rows(&plan, &summary);
    rows.push((
        "rate".into(),
        format!(
            "{} msg/s target, {} msg/s sent",
            group_thousands(args.rate),
            group_thousands(outcome.sent as f64 / outcome.publish_time.as_secs_f64().max(1e-9))
        ),
    ));
    rows.extend(accounting_rows(&outcome));
    rows.extend(latency_rows(&latency));
    report::print_table(&title(&summary), &rows);

    if let Some(path) = &args.hgrm {
        let mut file = std::fs::File::create(path)
            .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
        report::write_hgrm(&outcome.histogram, &mut file)?;
    }
    finish(&plan, &summary, &outcome)
}

/// Runs `pubsub bench throughput` and `pubsub bench spread`.
pub fn run_throughput(
    connection: ConnectionArgs,
    fan: FanArgs,
    duration: Duration,
    window: u64,
    scenario: &str,
) -> Result<(), Box<dyn Error>> {
    if window == 0 {
        return Err("--window is 0; allow at least 1 message in flight".into());
    }
    if duration.is_zero() {
        return Err("--duration is 0; publish for at least 1 ms".into());
    }
    let pacing = Pacing::Closed { window, duration };
    let plan = make_plan(connection, &fan, pacing)?;
    let outcome = execute(&plan, scenario)?;

    let payload = plan.connection.payload as f64;
    let published = outcome.sent as f64 / outcome.publish_time.as_secs_f64().max(1e-9);
    let delivered =
        outcome.accounting.received as f64 / outcome.delivery_time.as_secs_f64().max(1e-9);
    let mut summary = base_summary(&plan, scenario);
    summary.count("window", window);
    summary.number("duration_s", duration.as_secs_f64());
    add_outcome(&mut summary, &plan, &outcome);
    summary.number("published_msgs_per_s", published);
    summary.number("delivered_msgs_per_s", delivered);
    summary.number("published_mb_per_s", published * payload / 1e6);
    summary.number("delivered_mb_per_s", delivered * payload / 1e6);

    let mut rows = header_rows(&plan, &summary);
    rows.push(("window".into(), format!("{window} deliveries in flight")));
    rows.extend(accounting_rows(&outcome));
    rows.push((
        "published".into(),
        format!(
            "{} msg/s, {:.1} MB/s",
            group_thousands(published),
            published * payload / 1e6
        ),
    ));
    rows.push((
        "delivered".into(),
        format!(
            "{} msg/s, {:.1} MB/s",
            group_thousands(delivered),
            delivered * payload / 1e6
        ),
    ));
    report::print_table(&title(&summary), &rows);
    finish(&plan, &summary, &outcome)
}

fn make_plan(
    connection: ConnectionArgs,
    fan: &FanArgs,
    pacing: Pacing,
) -> Result<Plan, Box<dyn Error>> {
    validate_connection(&connection)?;
    for (option, value) in [
        ("--publishers", fan.publishers),
        ("--subscribers", fan.subscribers),
        ("--topics", fan.topics),
    ] {
        if value == 0 || value > u16::MAX as usize {
            return Err(format!("{option} is {value}; use 1 to {}", u16::MAX).into());
        }
    }
    let protocol = connection.protocol;
    let layout = Layout::new(
        fan.publishers,
        fan.subscribers,
        fan.topics,
        protocol == Protocol::Relay,
    );
    let run_id = run_id();
    let topic_names = (0..fan.topics).map(|t| topic_name(&run_id, t)).collect();
    Ok(Plan {
        protocol,
        connection,
        layout,
        topic_names,
        pacing,
    })
}

/// Checks the options every scenario shares.
pub fn validate_connection(connection: &ConnectionArgs) -> Result<(), Box<dyn Error>> {
    if connection.payload < HEADER_LEN {
        return Err(format!(
            "--payload is {} bytes; use at least {HEADER_LEN}, the size of the header that \
             identifies each message",
            connection.payload
        )
        .into());
    }
    if connection.ack == AckArg::Explicit && connection.protocol != Protocol::Pubsub {
        return Err(format!(
            "--ack explicit needs --protocol pubsub; {} offers no acks",
            connection.protocol.name()
        )
        .into());
    }
    if connection.ack_every == 0 {
        return Err("--ack-every is 0; use 1 to ack each message".into());
    }
    Ok(())
}

/// Returns an id that makes this run's topic names unique on the server.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}-{:x}", std::process::id(), nanos % (1 << 48))
}

/// Connects every subscriber, then every publisher, runs the schedule, waits for the
/// outstanding deliveries and settles the accounts.
fn execute(plan: &Plan, scenario: &str) -> Result<Outcome, Box<dyn Error>> {
    let connection = &plan.connection;
    let layout = &plan.layout;
    let mut subscribers = Vec::new();
    for topics in &layout.subscriber_topics {
        let spec = SubscribeSpec {
            topics: topics
                .iter()
                .map(|&t| plan.topic_names[t].clone())
                .collect(),
            start: StartPosition::New,
            ack: connection.ack,
            ack_every: connection.ack_every,
            max_in_flight: connection.max_in_flight,
        };
        subscribers.push(wire::connect_subscriber(
            plan.protocol,
            connection.server,
            &spec,
        )?);
    }
    let mut publishers = Vec::new();
    for _ in &layout.publisher_topics {
        publishers.push(wire::connect_publisher(plan.protocol, connection.server)?);
    }

    let shared = Arc::new(Shared {
        base: Instant::now(),
        expected_deliveries: AtomicU64::new(0),
        arrivals: AtomicU64::new(0),
        distinct: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        stop_subscribers: AtomicBool::new(false),
        failure: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    let start_ns = shared.elapsed_ns() + START_DELAY.as_nanos() as u64;
    let record_from_ns = match plan.pacing {
        Pacing::Open { warmup, .. } => Some(start_ns + warmup.as_nanos() as u64),
        Pacing::Closed { .. } => None,
    };

    let subscriber_threads: Vec<JoinHandle<SubscriberResult>> = subscribers
        .into_iter()
        .enumerate()
        .map(|(index, subscriber)| {
            let tracker = Tracker::new(
                layout.topics,
                &layout.subscriber_topics[index],
                &layout.publisher_topics,
            );
            let shared = shared.clone();
            spawn(format!("bench-sub-{index}"), move || {
                run_subscriber(subscriber, tracker, &shared, record_from_ns)
            })
        })
        .collect::<io::Result<_>>()?;
    let publisher_threads: Vec<JoinHandle<PublisherResult>> = publishers
        .into_iter()
        .enumerate()
        .map(|(index, publisher)| {
            let job = PublisherJob {
                index,
                publishers: layout.publisher_topics.len(),
                topics: layout.publisher_topics[index].clone(),
                topic_names: plan.topic_names.clone(),
                fanout: layout.fanout.clone(),
                payload: connection.payload,
                pacing: plan.pacing,
                start_ns,
            };
            let shared = shared.clone();
            spawn(format!("bench-pub-{index}"), move || {
                run_publisher(publisher, job, &shared)
            })
        })
        .collect::<io::Result<_>>()?;

    let mut progress = Progress::new(scenario, plan.protocol, plan.pacing.total_time());
    while !publisher_threads.iter().all(|t| t.is_finished()) {
        std::thread::sleep(CHECK_INTERVAL);
        progress.update(&shared, start_ns);
    }
    let mut sent = Vec::new();
    let mut publish_end_ns = start_ns;
    for thread in publisher_threads {
        let result = thread.join().map_err(|_| "a publisher thread panicked")?;
        publish_end_ns = publish_end_ns.max(result.finished_ns);
        sent.push(result.sent);
    }

    // Every publisher has flushed: wait for the deliveries still on their way.
    let expected = shared.expected_deliveries.load(Ordering::SeqCst);
    let drain_deadline = Instant::now() + connection.drain_timeout;
    while shared.distinct.load(Ordering::SeqCst) < expected
        && Instant::now() < drain_deadline
        && !shared.failed.load(Ordering::SeqCst)
    {
        std::thread::sleep(CHECK_INTERVAL);
        progress.update(&shared, start_ns);
    }
    progress.finish();
    shared.stop_subscribers.store(true, Ordering::SeqCst);

    let mut accounting = Accounting::default();
    let mut histogram = new_histogram();
    let mut notices = Notices::default();
    let mut last_arrival_ns = start_ns;
    for thread in subscriber_threads {
        let result = thread.join().map_err(|_| "a subscriber thread panicked")?;
        accounting.add(&result.tracker.settle(&sent));
        histogram.add(&result.histogram)?;
        notices.gap_messages += result.notices.gap_messages;
        notices.errors += result.notices.errors;
        last_arrival_ns = last_arrival_ns.max(result.last_arrival_ns);
    }
    if let Some(failure) = shared
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(failure.into());
    }
    Ok(Outcome {
        accounting,
        histogram,
        notices,
        sent: shared.sent.load(Ordering::SeqCst),
        publish_time: Duration::from_nanos(publish_end_ns.saturating_sub(start_ns)),
        delivery_time: Duration::from_nanos(last_arrival_ns.saturating_sub(start_ns)),
    })
}

fn spawn<T: Send + 'static>(
    name: String,
    body: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name).spawn(move || {
        reduce_timer_slack();
        body()
    })
}

/// Lowers this thread's timer slack from Linux's default 50 µs to 1 ns, so that a
/// publisher's sleep ends when its next message is due instead of up to 50 µs later.
fn reduce_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and changes only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

fn run_subscriber(
    mut subscriber: Box<dyn Subscriber>,
    mut tracker: Tracker,
    shared: &Shared,
    record_from_ns: Option<u64>,
) -> SubscriberResult {
    let mut histogram = new_histogram();
    let mut last_arrival = shared.base;
    while !shared.stop_subscribers.load(Ordering::Relaxed) && !shared.failed.load(Ordering::Relaxed)
    {
        let mut fresh = 0u64;
        let result = subscriber.poll(&mut |payload, at| {
            let Some(header) = Header::read(payload) else {
                tracker.record_malformed();
                return;
            };
            if tracker.record(&header) != Arrival::New {
                return;
            }
            fresh += 1;
            last_arrival = at;
            if record_from_ns.is_some_and(|from| header.intended_ns >= from) {
                let arrived_ns = at.duration_since(shared.base).as_nanos() as u64;
                let latency_us = arrived_ns.saturating_sub(header.intended_ns) / 1000;
                histogram.saturating_record(latency_us);
            }
        });
        match result {
            Ok(count) => {
                shared.arrivals.fetch_add(count as u64, Ordering::Relaxed);
                shared.distinct.fetch_add(fresh, Ordering::SeqCst);
            }
            Err(err) => {
                shared.fail("a subscriber", &err);
                break;
            }
        }
    }
    SubscriberResult {
        tracker,
        histogram,
        notices: subscriber.notices(),
        last_arrival_ns: last_arrival.duration_since(shared.base).as_nanos() as u64,
    }
}

/// One publisher's share of the schedule.
struct PublisherJob {
    index: usize,
    publishers: usize,
    topics: Vec<usize>,
    topic_names: Vec<String>,
    fanout: Vec<u64>,
    payload: usize,
    pacing: Pacing,
    start_ns: u64,
}

/// A publisher's message stream: the payload buffer and the per-topic counters.
struct Stream<'a> {
    job: &'a PublisherJob,
    payload: Vec<u8>,
    /// Messages sent per topic index.
    sent: Vec<u64>,
    next: usize,
}

impl Stream<'_> {
    /// Queues the next message, meant to be sent at `intended_ns`, and returns the
    /// deliveries it should produce.
    fn queue(&mut self, publisher: &mut dyn Publisher, intended_ns: u64) -> io::Result<u64> {
        let topic = self.job.topics[self.next];
        self.next = (self.next + 1) % self.job.topics.len();
        let counter = self.sent[topic];
        self.sent[topic] += 1;
        Header {
            intended_ns,
            counter: counter as u32,
            publisher: self.job.index as u16,
            topic: topic as u16,
        }
        .write(&mut self.payload);
        publisher.queue(&self.job.topic_names[topic], &self.payload)?;
        Ok(self.job.fanout[topic])
    }
}

fn run_publisher(
    mut publisher: Box<dyn Publisher>,
    job: PublisherJob,
    shared: &Shared,
) -> PublisherResult {
    let mut stream = Stream {
        job: &job,
        payload: vec![b'x'; job.payload],
        sent: vec![0; job.fanout.len()],
        next: 0,
    };
    let result = match job.pacing {
        Pacing::Open {
            rate,
            warmup,
            duration,
        } => publish_open_loop(
            &mut *publisher,
            &mut stream,
            shared,
            rate,
            warmup + duration,
        ),
        Pacing::Closed { window, duration } => {
            publish_closed_loop(&mut *publisher, &mut stream, shared, window, duration)
        }
    };
    if let Err(err) = result {
        shared.fail(&format!("publisher {}", job.index), &err);
    }
    let sent = stream.sent;
    PublisherResult {
        sent,
        finished_ns: shared.elapsed_ns(),
    }
}

/// Sends message `i` of this publisher at `start + offset + i × interval`. A publisher
/// behind schedule sends every message that is due in one write, each still stamped with
/// its own scheduled time, and never skips one.
fn publish_open_loop(
    publisher: &mut dyn Publisher,
    stream: &mut Stream<'_>,
    shared: &Shared,
    rate: f64,
    total_time: Duration,
) -> io::Result<()> {
    let job = stream.job;
    let publishers = job.publishers as f64;
    let interval_ns = 1e9 * publishers / rate;
    let offset_ns = 1e9 * job.index as f64 / rate;
    let total = ((total_time.as_secs_f64() * rate - job.index as f64) / publishers)
        .ceil()
        .max(0.0) as u64;
    let intended = |i: u64| job.start_ns + (offset_ns + i as f64 * interval_ns) as u64;

    let mut i = 0u64;
    while i < total {
        if shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = shared.elapsed_ns();
        let due = intended(i);
        if due > now {
            wait_ns(due - now);
            continue;
        }
        let mut queued = 0u64;
        let mut deliveries = 0u64;
        while i < total && intended(i) <= now {
            deliveries += stream.queue(publisher, intended(i))?;
            queued += 1;
            i += 1;
        }
        publisher.flush()?;
        shared
            .expected_deliveries
            .fetch_add(deliveries, Ordering::SeqCst);
        shared.sent.fetch_add(queued, Ordering::Relaxed);
    }
    Ok(())
}

/// Publishes as fast as the window of outstanding deliveries allows, until `duration`
/// has passed since the start.
fn publish_closed_loop(
    publisher: &mut dyn Publisher,
    stream: &mut Stream<'_>,
    shared: &Shared,
    window: u64,
    duration: Duration,
) -> io::Result<()> {
    let start_ns = stream.job.start_ns;
    let end_ns = start_ns + duration.as_nanos() as u64;
    let now = shared.elapsed_ns();
    if now < start_ns {
        sleep_ns(start_ns - now);
    }
    loop {
        let now = shared.elapsed_ns();
        if now >= end_ns || shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let in_flight = shared
            .expected_deliveries
            .load(Ordering::SeqCst)
            .saturating_sub(shared.arrivals.load(Ordering::SeqCst));
        if in_flight >= window {
            // A sleep here would last far longer than it takes a subscriber to drain the
            // window, and would then limit the measured rate.
            std::thread::yield_now();
            continue;
        }
        let batch = (window - in_flight).min(CLOSED_LOOP_BATCH);
        let mut deliveries = 0u64;
        for _ in 0..batch {
            deliveries += stream.queue(publisher, now)?;
        }
        // Counted before the flush, so that subscribers never see more arrivals than
        // expected deliveries.
        shared
            .expected_deliveries
            .fetch_add(deliveries, Ordering::SeqCst);
        shared.sent.fetch_add(batch, Ordering::Relaxed);
        publisher.flush()?;
    }
}

fn sleep_ns(ns: u64) {
    std::thread::sleep(Duration::from_nanos(ns));
}

/// Waits about `ns` nanoseconds before the next scheduled message. A long wait sleeps
/// through all but its last [`SPIN_BEFORE_DUE`], and the caller yields the CPU in a loop
/// for the rest. A sleep can end tens of microseconds late, while a yield returns within
/// a few and still lets a subscriber thread on the same CPU run.
fn wait_ns(ns: u64) {
    let spin = SPIN_BEFORE_DUE.as_nanos() as u64;
    if ns > spin {
        sleep_ns(ns - spin);
    } else {
        std::thread::yield_now();
    }
}

/// The progress line on stderr: rewritten in place on a terminal, else one line every
/// five seconds. Runs shorter than three seconds print none.
struct Progress {
    label: String,
    total: Duration,
    last_print: Instant,
    terminal: bool,
    printed: bool,
}

impl Progress {
    fn new(scenario: &str, protocol: Protocol, total: Duration) -> Progress {
        Progress {
            label: format!("{scenario} ({})", protocol.name()),
            total,
            last_print: Instant::now(),
            terminal: io::stderr().is_terminal(),
            printed: false,
        }
    }

    fn update(&mut self, shared: &Shared, start_ns: u64) {
        if self.total < Duration::from_secs(3) {
            return;
        }
        let every = if self.terminal {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if self.last_print.elapsed() < every {
            return;
        }
        self.last_print = Instant::now();
        let elapsed = Duration::from_nanos(shared.elapsed_ns().saturating_sub(start_ns));
        let line = format!(
            "{}: {:.0}/{:.0} s, sent {}, received {}",
            self.label,
            elapsed.as_secs_f64().min(self.total.as_secs_f64()),
            self.total.as_secs_f64(),
            shared.sent.load(Ordering::Relaxed),
            shared.distinct.load(Ordering::Relaxed),
        );
        let mut stderr = io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r{line}\x1b[K");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        self.printed = true;
    }

    fn finish(&mut self) {
        if self.terminal && self.printed {
            eprintln!();
        }
    }
}

/// Returns the fields every load-run summary starts with.
fn base_summary(plan: &Plan, scenario: &str) -> Summary {
    let connection = &plan.connection;
    let mut summary = Summary::default();

    summary.text(
        "name",
        connection
            .name
            .clone()
            .unwrap_or_else(|| scenario.to_owned()),
    );
    summary.text(
        "label",
        connection
            .label
            .clone()
            .unwrap_or_else(|| plan.protocol.name().to_owned()),
    );
    summary.text("scenario", scenario);
    summary.text("protocol", plan.protocol.name());
    summary.text("server", connection.server.to_string());
    add_environment(&mut summary);

    summary.count("payload_bytes", connection.payload as u64);
    summary.count("publishers", plan.layout.publisher_topics.len() as u64);
    summary.count("subscribers", plan.layout.subscriber_topics.len() as u64);
    summary.count("topics", plan.layout.topics as u64);

    summary.text(
        "ack",
        match connection.ack {
            AckArg::None => "none",
            AckArg::Explicit => "explicit",
        },
    );
    if connection.ack == AckArg::Explicit {
        summary.count("ack_every", u64::from(connection.ack_every));
    }
    summary
}

/// Adds the date, the generator's CPUs and the machine's description.
pub fn add_environment(summary: &mut Summary) {
    summary.text(
        "date",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    );
    summary.text("machine", machine_description());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    summary.count("generator_cpus", cpus as u64);
}

/// Returns e.g. "AMD EPYC 7B13, 2 CPUs, 24 GiB", from /proc/cpuinfo and /proc/meminfo.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let memory_gib = (memory_kib as f64 / (1024.0 * 1024.0)).round();
    format!("{model}, {cpus} CPUs, {memory_gib} GiB")
}

fn add_outcome(summary: &mut Summary, plan: &Plan, outcome: &Outcome) {
    let accounting = &outcome.accounting;
    summary.count("sent", outcome.sent);
    summary.count("expected", accounting.expected);
    summary.count("received", accounting.received);
    summary.count("lost", accounting.lost);
    summary.count("duplicated", accounting.duplicated);
    summary.count("unexpected", accounting.unexpected);
    if plan.protocol == Protocol::Pubsub {
        summary.count("gap_messages", outcome.notices.gap_messages);
    }
    summary.count("server_errors", outcome.notices.errors);
    summary.number("publish_s", outcome.publish_time.as_secs_f64());
    summary.number("delivery_s", outcome.delivery_time.as_secs_f64());
}

fn title(summary: &Summary) -> String {
    format!(
        "{} / {}",
        summary.get_text("name").unwrap_or_default(),
        summary.get_text("label").unwrap_or_default()
    )
}

fn header_rows(plan: &Plan, summary: &Summary) -> Vec<(String, String)> {
    let connection = &plan.connection;
    let ack = match connection.ack {
        AckArg::None => "none".to_owned(),
        AckArg::Explicit if connection.ack_every == 1 => "explicit, each message".to_owned(),
        AckArg::Explicit => format!("explicit, cumulative every {}", connection.ack_every),
    };
    vec![
        (
            "server".into(),
            format!("{} ({})", connection.server, plan.protocol.name()),
        ),
        (
            "date".into(),
            summary.get_text("date").unwrap_or_default().to_owned(),
        ),
        (
            "connections".into(),
            format!(
                "{} publishers, {} subscribers, {} topics",
                plan.layout.publisher_topics.len(),
                plan.layout.subscriber_topics.len(),
                plan.layout.topics
            ),
        ),
        ("payload".into(), format!("{} bytes", connection.payload)),
        ("ack".into(), ack),
    ]
}

fn accounting_rows(outcome: &Outcome) -> Vec<(String, String)> {
    let accounting = &outcome.accounting;
    let mut rows = vec![
        ("sent".into(), group_thousands(outcome.sent as f64)),
        (
            "received".into(),
            format!(
                "{} of {} expected",
                group_thousands(accounting.received as f64),
                group_thousands(accounting.expected as f64)
            ),
        ),
        ("lost".into(), group_thousands(accounting.lost as f64)),
        (
            "duplicated".into(),
            group_thousands(accounting.duplicated as f64),
        ),
    ];
    if accounting.unexpected > 0 {
        rows.push((
            "unexpected".into(),
            group_thousands(accounting.unexpected as f64),
        ));
    }
    if outcome.notices.gap_messages > 0 {
        rows.push((
            "gap notices".into(),
            format!(
                "{} messages",
                group_thousands(outcome.notices.gap_messages as f64)
            ),
        ));
    }
    if outcome.notices.errors > 0 {
        rows.push(("server errors".into(), outcome.notices.errors.to_string()));
    }
    rows
}

fn latency_rows(latency: &LatencySummary) -> Vec<(String, String)> {
    let us = |value: u64| format!("{} µs", group_thousands(value as f64));
    vec![
        (
            "latency count".into(),
            group_thousands(latency.count as f64),
        ),
        ("p50".into(), us(latency.p50)),
        ("p90".into(), us(latency.p90)),
        ("p99".into(), us(latency.p99)),
        ("p99.9".into(), us(latency.p999)),
        ("p99.99".into(), us(latency.p9999)),
        ("max".into(), us(latency.max)),
    ]
}

/// Writes the JSON summary and turns lost or unexpected messages into an error, unless
/// `--allow-loss`. Duplicates are an error only without explicit acks, where the broker
/// never redelivers.
fn finish(plan: &Plan, summary: &Summary, outcome: &Outcome) -> Result<(), Box<dyn Error>> {
    write_json(&plan.connection, summary)?;
    let accounting = &outcome.accounting;
    let duplicates_wrong = plan.connection.ack == AckArg::None && accounting.duplicated > 0;
    if plan.connection.allow_loss {
        return Ok(());
    }
    if accounting.lost > 0 || accounting.unexpected > 0 || duplicates_wrong {
        return Err(format!(
            "{} of {} expected deliveries lost, {} duplicated, {} unexpected; rerun with a \
             lower --rate or --window, or pass --allow-loss to accept loss",
            accounting.lost, accounting.expected, accounting.duplicated, accounting.unexpected
        )
        .into());
    }
    if accounting.expected == 0 {
        return Err("no message was published; check --duration and --rate".into());
    }
    Ok(())
}

/// Writes `summary` to `--json`, if given.
pub fn write_json(connection: &ConnectionArgs, summary: &Summary) -> Result<(), Box<dyn Error>> {
    if let Some(path) = &connection.json {
        std::fs::write(path, summary.to_json())
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    }
    Ok(())
}
