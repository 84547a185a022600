//! The `pubsub` binary end to end: `serve` in a child process, `pub` and `sub` against it,
//! and a clean exit on SIGTERM.

mod common;

use common::TIMEOUT;
use pubsub::client::{Client, ClientError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_pubsub");

/// A `pubsub serve` child process, killed on drop so that a failing test leaves no
/// process behind.
struct Broker {
    child: Child,
    addr: SocketAddr,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Broker {
    /// Starts `pubsub serve` on a free loopback port with 2 unpinned shards and `extra`
    /// arguments, and waits until it accepts connections.
    fn start(extra: &[&str]) -> Broker {
        // The port is free when checked. Another process could take it before the broker
        // binds it, and then the start fails with an "address in use" message.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = Command::new(BINARY)
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--cores",
                "2",
                "--no-pin",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pubsub serve");
        let stderr = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        });
        let mut broker = Broker {
            child,
            addr,
            stderr,
        };
        broker.wait_until_accepting();
        broker
    }

    fn wait_until_accepting(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pubsub serve") {
                panic!(
                    "pubsub serve exited with {status} before accepting connections:\n{}",
                    self.take_stderr()
                );
            }
            if Client::connect(self.addr).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pubsub serve did not accept connections on {} within {TIMEOUT:?}",
                self.addr
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn server_arg(&self) -> String {
        self.addr.to_string()
    }

    /// Sends SIGTERM and returns the exit status, failing the test if the process is
    /// still running after [`TIMEOUT`].
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill only sends a signal. `pid` is this test's own child, which has not
        // been waited for yet, so the id cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM {pid} failed");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll pubsub serve") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pubsub serve still runs {TIMEOUT:?} after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Returns what the broker wrote to standard error. Call it after the broker exited.
    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|reader| reader.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The result of one `pubsub pub` or `pubsub sub` run.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `pubsub` with `args`, writing `stdin` to its standard input, and returns its
/// output. The process is killed and the test fails if it runs longer than [`TIMEOUT`].
fn run(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(BINARY)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pubsub");
    let mut input = child.stdin.take().expect("stdin pipe");
    input.write_all(stdin).expect("write standard input");
    drop(input);
    let pid = child.id() as libc::pid_t;
    let (done, result) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match result.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("wait for pubsub"),
        Err(_) => {
            // SAFETY: kill only sends a signal. The waiter thread has not reaped the child
            // yet, so `pid` still names it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waiter.join();
            panic!("pubsub {args:?} ran longer than {TIMEOUT:?}");
        }
    };
    let _ = waiter.join();
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `pubsub` and fails the test unless it exits with status 0.
fn run_ok(args: &[&str], stdin: &[u8]) -> Run {
    let result = run(args, stdin);
    assert!(
        result.status.success(),
        "pubsub {args:?} exited with {}; stderr:\n{}",
        result.status,
        result.stderr
    );
    result
}

#[test]
fn pub_and_sub_round_trip() {
    let mut broker = Broker::start(&[]);
    let server = broker.server_arg();

    let published = run_ok(
        &["pub", "cli-topic", "--server", &server],
        b"hello\nworld\r\n\nlast line without newline",
    );
    assert_eq!(published.stdout, "", "pub without --confirm prints nothing");

    let subscribed = run_ok(
        &[
            "sub",
            "cli-topic",
            "--from",
            "earliest",
            "--count",
            "4",
            "--server",
            &server,
        ],
        b"",
    );
    assert_eq!(
        subscribed.stdout, "1\thello\n2\tworld\n3\t\n4\tlast line without newline\n",
        "sub prints SEQ<TAB>PAYLOAD per message, line endings stripped by pub"
    );

    let confirmed = run_ok(
        &[
            "pub",
            "cli-topic",
            "one more",
            "--confirm",
            "--server",
            &server,
        ],
        b"",
    );
    assert_eq!(
        confirmed.stdout, "seq 5\n",
        "pub --confirm prints the sequence number"
    );

    let tail = run_ok(
        &[
            "sub",
            "cli-topic",
            "--from",
            "last:1",
            "--count",
            "1",
            "--server",
            &server,
        ],
        b"",
    );
    assert_eq!(tail.stdout, "5\tone more\n", "sub --from last:1");

    let status = broker.terminate();
    assert!(
        status.success(),
        "pubsub serve must exit 0 after SIGTERM, got {status}; stderr:\n{}",
        broker.take_stderr()
    );
}

#[test]
fn sub_receives_live_messages() {
    let broker = Broker::start(&[]);
    let server = broker.server_arg();
    let subscriber = {
        let server = server.clone();
        thread::spawn(move || run_ok(&["sub", "live", "--count", "2", "--server", &server], b""))
    };

    // The subscriber starts at "new" and its start-up time is unknown, so publish
    // until it has printed two messages, at most 200.
    let mut client = Client::connect(broker.addr).unwrap();
    let mut published = 0;
    while !subscriber.is_finished() && published < 200 {
        published += 1;
        client
            .publish_confirmed("live", format!("live-{published}").as_bytes())
            .unwrap();
        thread::sleep(Duration::from_millis(50));
    }
    let output = subscriber.join().expect("subscriber thread");
    let lines: Vec<&str> = output.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "sub --count 2 prints two lines: {lines:?}");
    let first: u64 = lines[0]
        .split_once('\t')
        .and_then(|(seq, _)| seq.parse().ok())
        .unwrap_or_else(|| panic!("line {:?} does not start with a sequence number", lines[0]));
    assert_eq!(
        lines,
        vec![
            format!("{first}\tlive-{first}"),
            format!("{}\tlive-{}", first + 1, first + 1)
        ],
        "two consecutive live messages"
    );
}

#[test]
fn sub_durable_consumer_resumes() {
    let broker = Broker::start(&[]);
    let server = broker.server_arg();
    run_ok(&["pub", "jobs", "--server", &server], b"a\nb\nc\n");
    let durable = |count: &str| {
        run_ok(
            &[
                "sub",
                "jobs",
                "--from",
                "earliest",
                "--ack",
                "explicit",
                "--consumer",
                "worker",
                "--count",
                count,
                "--server",
                &server,
            ],
            b"",
        )
    };
    let first = durable("2");
    assert_eq!(first.stdout, "1\ta\n2\tb\n", "first run reads two messages");
    // Message 3 was sent to the first run as well but never acked, so the second run
    // gets it again as a redelivery.
    let second = durable("1");
    assert_eq!(
        second.stdout, "3\tc\t(redelivery 2)\n",
        "the second run resumes after the acked messages"
    );
}

#[test]
fn sub_reports_gap_on_stderr() {
    let broker = Broker::start(&["--retain-messages", "2"]);
    let server = broker.server_arg();
    run_ok(&["pub", "short", "--server", &server], b"a\nb\nc\nd\ne\n");
    let result = run_ok(
        &[
            "sub", "short", "--from", "seq:1", "--count", "2", "--server", &server,
        ],
        b"",
    );
    assert_eq!(
        result.stdout, "4\td\n5\te\n",
        "only the two retained messages are printed"
    );
    assert!(
        result.stderr.contains("gap: messages 1..=3"),
        "the evicted range is reported on standard error: {:?}",
        result.stderr
    );
}

#[test]
fn pub_many_lines_arrive_intact() {
    let broker = Broker::start(&[]);
    let server = broker.server_arg();
    let lines: Vec<String> = (1..=5000)
        .map(|i| format!("line {i} {}", "x".repeat(i % 50)))
        .collect();
    let input = lines.join("\n") + "\n";
    run_ok(&["pub", "bulk", "--server", &server], input.as_bytes());

    let result = run_ok(
        &[
            "sub", "bulk", "--from", "earliest", "--count", "5000", "--server", &server,
        ],
        b"",
    );
    let printed: Vec<&str> = result.stdout.lines().collect();
    assert_eq!(
        printed.len(),
        lines.len(),
        "one output line per published line"
    );
    for (index, (printed, line)) in printed.iter().zip(&lines).enumerate() {
        assert_eq!(
            *printed,
            format!("{}\t{line}", index + 1),
            "line {} came back changed",
            index + 1
        );
    }
}

#[test]
fn pub_reads_file() {
    let broker = Broker::start(&[]);
    let server = broker.server_arg();
    let path = std::env::temp_dir().join(format!("pubsub-cli-test-{}.txt", std::process::id()));
    std::fs::write(&path, "from\na file\n").expect("write the input file");
    let published = run(
        &[
            "pub",
            "filed",
            "--file",
            path.to_str().unwrap(),
            "--server",
            &server,
        ],
        b"",
    );
    let _ = std::fs::remove_file(&path);
    assert!(
        published.status.success(),
        "pub --file failed: {published:?}"
    );
    let result = run_ok(
        &[
            "sub", "filed", "--from", "earliest", "--count", "2", "--server", &server,
        ],
        b"",
    );
    assert_eq!(result.stdout, "1\tfrom\n2\ta file\n", "the file's lines");

    let missing = run(
        &[
            "pub",
            "filed",
            "--file",
            "/nonexistent/input.txt",
            "--server",
            &server,
        ],
        b"",
    );
    assert!(
        !missing.status.success(),
        "a missing file fails: {missing:?}"
    );
    assert!(
        missing.stderr.contains("/nonexistent/input.txt"),
        "the error names the file: {:?}",
        missing.stderr
    );
}

#[test]
fn sub_without_broker_fails() {
    // Nothing listens on a port that was just released.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port();
    let server = format!("127.0.0.1:{port}");
    let result = run(
        &["sub", "nothing", "--count", "1", "--server", &server],
        b"",
    );
    assert!(
        !result.status.success(),
        "sub without a broker must fail: {result:?}"
    );
    assert!(
        result.stderr.contains(&server),
        "the error names the address: {:?}",
        result.stderr
    );
}

#[test]
fn pub_invalid_topic_fails() {
    let broker = Broker::start(&[]);
    let server = broker.server_arg();
    let result = run(&["pub", "bad topic", "message", "--server", &server], b"");
    assert!(
        !result.status.success(),
        "pub to an invalid topic must fail: {result:?}"
    );
    assert!(
        result.stderr.contains("invalid"),
        "the error names the problem: {:?}",
        result.stderr
    );
}

#[test]
fn serve_rejects_taken_port() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = holder.local_addr().unwrap().to_string();
    let result = run(
        &["serve", "--listen", &addr, "--cores", "1", "--no-pin"],
        b"",
    );
    assert!(
        !result.status.success(),
        "serve on a taken port must fail: {result:?}"
    );
    assert!(
        result.stderr.contains("already in use"),
        "the error says the address is in use: {:?}",
        result.stderr
    );
}

#[test]
fn sigterm_closes_client_connections() {
    let mut broker = Broker::start(&[]);
    let mut client = Client::connect(broker.addr).unwrap();
    client.ping().unwrap();
    let status = broker.terminate();
    assert!(
        status.success(),
        "pubsub serve must exit 0 after SIGTERM, got {status}; stderr:\n{}",
        broker.take_stderr()
    );
    let result = client.recv_timeout(TIMEOUT);
    assert!(
        matches!(result, Err(ClientError::Closed)),
        "a connected client sees the connection closed, got {result:?}"
    );
}

#[test]
fn pub_forwards_slow_pipe_lines() {
    let broker = Broker::start(&[]);
    let mut subscriber = Client::connect(broker.addr).unwrap();
    subscriber
        .subscribe("slow-pipe", pubsub::client::SubscribeOptions::default())
        .unwrap();
    let mut publisher = Command::new(BINARY)
        .args(["pub", "slow-pipe", "--server", &broker.server_arg()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pubsub pub");
    let mut stdin = publisher.stdin.take().unwrap();
    stdin.write_all(b"first line\n").unwrap();
    stdin.flush().unwrap();

    // stdin stays open, as with `tail -f`: the line must arrive before end of input.
    let event = subscriber.recv_timeout(TIMEOUT).unwrap();
    let payload = match event {
        Some(pubsub::client::Event::Message(message)) => message.payload,
        other => panic!("expected the first line as a message, got {other:?}"),
    };
    assert_eq!(
        &payload[..],
        b"first line",
        "the line arrives while stdin is open"
    );

    drop(stdin);
    let status = publisher.wait().unwrap();
    assert!(status.success(), "pub exits 0 at end of input: {status}");
}
