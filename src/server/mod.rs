//! The broker process: one glommio executor per shard, each accepting connections on the
//! same address and owning the topics that [`crate::topic::shard_for`] maps to it.
//!
//! [`Server::start`] checks the configuration, starts the executors, waits until every
//! one is listening and returns. [`Server::shutdown`] stops accepting, lets connections
//! flush what is queued and joins the executor threads. A panic on any executor shuts the
//! whole broker down and is reported by [`Server::wait`].

mod connection;
mod core;
pub mod runtime;

use crate::shard::ring::Retention;
use crate::shard::{Shard, ShardConfig};
use core::{Batch, Core};
use runtime::Pinning;
use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// Capacity of each cross-core channel, in batches. A batch contains everything queued
/// for the peer since the previous send, so a few suffice. Because readers pause at 8 MiB
/// of queued payload, this bounds a channel to about 128 MiB.
const MESH_CAPACITY: usize = 16;

/// Time allowed for every executor to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Upper bound of the ack and idle timeouts, far beyond any real use and far below the
/// range where adding it to the current time could overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Time connections get to flush their output during shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Broker settings. [`ServerConfig::default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address every executor listens on.
    pub listen: SocketAddr,
    /// Number of shards, one executor each.
    pub cores: usize,
    /// Pin one executor per CPU. Requires `cores` ≤ the number of CPUs.
    pub pin: bool,
    /// Maximum payload size, in bytes.
    pub max_payload: u32,
    /// Maximum messages retained per topic.
    pub retain_messages: usize,
    /// Maximum payload bytes retained per topic.
    pub retain_bytes: usize,
    /// Maximum age of a retained message.
    pub retain_age: Duration,
    /// Time a delivered message may stay unacked before it is redelivered.
    pub ack_timeout: Duration,
    /// Default and upper bound of unacked messages per consumer.
    pub max_in_flight: u32,
    /// Maximum payload bytes of unacked messages per consumer; one message is always
    /// allowed.
    pub max_in_flight_bytes: usize,
    /// Time a durable consumer outlives its connection.
    pub consumer_idle_timeout: Duration,
    /// Time an idle executor busy-polls before sleeping; zero sleeps at once.
    pub spin_before_park: Duration,
}

/// The default listen address of the broker and the default server address of the CLI.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

impl Default for ServerConfig {
    fn default() -> Self {
        let cores = available_cpus();
        ServerConfig {
            listen: DEFAULT_LISTEN.parse().expect("valid literal address"),
            cores,
            pin: true,
            max_payload: crate::protocol::DEFAULT_MAX_PAYLOAD,
            retain_messages: 10_000,
            retain_bytes: 1024 * 1024,
            retain_age: Duration::from_secs(3600),
            ack_timeout: Duration::from_secs(30),
            max_in_flight: 1000,
            max_in_flight_bytes: 8 * 1024 * 1024,
            consumer_idle_timeout: Duration::from_secs(300),
            spin_before_park: Duration::ZERO,
        }
    }
}

/// Returns the number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ServerError> {
        let invalid = |message: String| Err(ServerError::InvalidConfig(message));
        if self.cores == 0 || self.cores > u16::MAX as usize {
            return invalid(format!("cores is {}; use 1 to 65535", self.cores));
        }
        let cpus = available_cpus();
        if self.pin && self.cores > cpus {
            return invalid(format!(
                "cannot pin {} executors on {cpus} CPUs; use --cores {cpus} or less, or --no-pin",
                self.cores
            ));
        }
        if self.max_payload == 0 || self.max_payload > 64 * 1024 * 1024 {
            return invalid(format!(
                "max payload is {} bytes; use 1 byte to 64 MiB",
                self.max_payload
            ));
        }
        if self.retain_messages == 0 {
            return invalid("retain-messages is 0; retain at least 1 message".into());
        }
        if self.ack_timeout.is_zero() || self.ack_timeout > MAX_TIMEOUT {
            return invalid(format!(
                "ack timeout is {:?}; use 1 ms to 7 days",
                self.ack_timeout
            ));
        }
        if self.consumer_idle_timeout > MAX_TIMEOUT {
            return invalid(format!(
                "consumer idle timeout is {:?}; use at most 7 days",
                self.consumer_idle_timeout
            ));
        }
        if self.spin_before_park > Duration::from_secs(1) {
            return invalid(format!(
                "spin before park is {:?}; use at most 1 s",
                self.spin_before_park
            ));
        }
        if self.max_in_flight == 0 {
            return invalid("max in-flight is 0; allow at least 1 unacked message".into());
        }
        Ok(())
    }

    fn shard_config(&self) -> ShardConfig {
        ShardConfig {
            retention: Retention {
                max_messages: self.retain_messages,
                max_bytes: self.retain_bytes,
                max_age: self.retain_age,
            },
            ack_timeout: self.ack_timeout,
            max_in_flight: self.max_in_flight,
            max_in_flight_bytes: self.max_in_flight_bytes,
            consumer_idle_timeout: self.consumer_idle_timeout,
            window_messages: 4096,
            window_bytes: (1024 * 1024).max(self.max_payload as u64),
        }
    }

    /// Returns the period of each shard's timer work (ack timeouts, age eviction, idle consumers):
    /// a tenth of the ack timeout, between 5 ms and 100 ms.
    fn tick_interval(&self) -> Duration {
        (self.ack_timeout / 10).clamp(Duration::from_millis(5), Duration::from_millis(100))
    }
}

/// Limits the connections enforce and announce in `HELLO_OK`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_payload: u32,
    pub ack_timeout: Duration,
}

/// A failure to start the broker, or a failure that stopped it.
#[derive(Debug)]
pub enum ServerError {
    /// A setting is out of range.
    InvalidConfig(String),
    /// The listen address is taken by another process.
    AddressInUse(SocketAddr),
    /// An executor could not be created or could not listen.
    Startup(String),
    /// An executor panicked or failed while running.
    Failed(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::InvalidConfig(message) => write!(f, "invalid configuration: {message}"),
            ServerError::AddressInUse(addr) => write!(
                f,
                "address {addr} is already in use; stop the other process or pick another \
                 address with --listen"
            ),
            ServerError::Startup(message) => write!(f, "broker failed to start: {message}"),
            ServerError::Failed(message) => write!(f, "broker failed: {message}"),
        }
    }
}

impl std::error::Error for ServerError {}

/// Stop and failure state, shared by the executor threads and the `Server` handle.
#[derive(Debug, Default)]
struct Control {
    stop_requested: AtomicBool,
    failure: Mutex<Option<String>>,
}

impl Control {
    fn fail(&self, message: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        failure.get_or_insert(message);
        self.stop_requested.store(true, Ordering::SeqCst);
    }
}

/// A handle that stops the broker from any thread.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<Control>);

impl ShutdownHandle {
    /// Asks every executor to stop; returns at once.
    pub fn shutdown(&self) {
        self.0.stop_requested.store(true, Ordering::SeqCst);
    }
}

/// A running broker.
pub struct Server {
    local_addr: SocketAddr,
    control: Arc<Control>,
    executors: Option<runtime::ExecutorHandles>,
}

thread_local! {
    /// The broker that the current executor thread belongs to, for the panic hook.
    static EXECUTOR_CONTROL: RefCell<Option<Arc<Control>>> = const { RefCell::new(None) };
}

impl Server {
    /// Starts the broker and returns once every executor is listening.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        config.validate()?;
        check_address_free(config.listen)?;
        runtime::probe_io_uring().map_err(|err| ServerError::Startup(err.to_string()))?;
        install_panic_hook();

        let control = Arc::new(Control::default());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<SocketAddr, String>>();
        let bound_addr = Arc::new(Mutex::new(None::<SocketAddr>));
        let mesh = runtime::mesh::<Batch>(config.cores, MESH_CAPACITY);
        let pinning = if config.pin {
            Pinning::Pinned
        } else {
            Pinning::Unpinned
        };

        let executor_config = config.clone();
        let executor_control = control.clone();
        let executors =
            runtime::spawn_executors(config.cores, pinning, config.spin_before_park, move || {
                run_executor(
                    executor_config,
                    executor_control,
                    mesh,
                    bound_addr,
                    ready_tx,
                )
            })
            .map_err(|err| ServerError::Startup(err.to_string()))?;

        let mut server = Server {
            local_addr: config.listen,
            control,
            executors: Some(executors),
        };
        for _ in 0..config.cores {
            match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
                Ok(Ok(addr)) => server.local_addr = addr,
                Ok(Err(message)) => {
                    server.control.fail(message.clone());
                    return Err(ServerError::Startup(message));
                }
                Err(_) => {
                    let message = format!(
                        "not every executor was listening within {} s",
                        STARTUP_TIMEOUT.as_secs()
                    );
                    server.control.fail(message.clone());
                    return Err(ServerError::Startup(message));
                }
            }
        }
        tracing::info!(
            addr = %server.local_addr,
            shards = config.cores,
            pinned = config.pin,
            max_payload = config.max_payload,
            retain_messages = config.retain_messages,
            retain_bytes = config.retain_bytes,
            retain_age_s = config.retain_age.as_secs_f64(),
            ack_timeout_ms = config.ack_timeout.as_millis() as u64,
            "broker started"
        );
        Ok(server)
    }

    /// Returns the address the broker listens on, with the real port when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns a handle that stops the broker from another thread or a signal handler.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.control.clone())
    }

    /// Stops the broker and waits for it to finish.
    pub fn shutdown(self) -> Result<(), ServerError> {
        self.control.stop_requested.store(true, Ordering::SeqCst);
        self.wait()
    }

    /// Waits until the broker stops, because of [`ShutdownHandle::shutdown`] or a
    /// failure on one executor.
    pub fn wait(mut self) -> Result<(), ServerError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ServerError> {
        let Some(executors) = self.executors.take() else {
            return Ok(());
        };
        let thread_errors = executors.join();
        let failure = self
            .control
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match (failure, thread_errors.first()) {
            (Some(message), _) => Err(ServerError::Failed(message)),
            (None, Some(message)) => Err(ServerError::Failed(message.clone())),
            (None, None) => {
                tracing::info!(addr = %self.local_addr, "broker stopped");
                Ok(())
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.executors.is_some() {
            self.control.stop_requested.store(true, Ordering::SeqCst);
            if let Err(err) = self.join() {
                tracing::error!(error = %err, "broker stopped with an error");
            }
        }
    }
}

/// Fails when something already accepts connections on `addr`. Executors bind with
/// SO_REUSEPORT, which would otherwise share the port with another broker silently.
///
/// A connection attempt, unlike a test bind, is not blocked by the TIME_WAIT sockets
/// that a broker stopped moments ago leaves behind.
fn check_address_free(addr: SocketAddr) -> Result<(), ServerError> {
    if addr.port() == 0 {
        return Ok(());
    }
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match std::net::TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
        Ok(_) => Err(ServerError::AddressInUse(addr)),
        Err(_) => Ok(()),
    }
}

/// Installs, once per process, a panic hook that logs the panic and stops the broker the
/// panicking executor belongs to.
fn install_panic_hook() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let control = EXECUTOR_CONTROL.with(|c| c.borrow().clone());
            if let Some(control) = control {
                let thread = std::thread::current();
                let message = format!(
                    "executor thread {} panicked: {info}",
                    thread.name().unwrap_or("unnamed")
                );
                tracing::error!(%message, "shutting the broker down after a panic");
                control.fail(message);
            }
        }));
    });
}

/// Runs one executor from start to end: join the mesh, listen, serve, stop.
async fn run_executor(
    config: ServerConfig,
    control: Arc<Control>,
    mesh: glommio::channels::channel_mesh::MeshBuilder<
        Batch,
        glommio::channels::channel_mesh::Full,
    >,
    bound_addr: Arc<Mutex<Option<SocketAddr>>>,
    ready: mpsc::Sender<Result<SocketAddr, String>>,
) {
    EXECUTOR_CONTROL.with(|c| *c.borrow_mut() = Some(control.clone()));
    let (senders, receivers) = match mesh.join().await {
        Ok(pair) => pair,
        Err(err) => {
            let _ = ready.send(Err(format!(
                "cannot join the cross-core channel mesh: {err}"
            )));
            return;
        }
    };
    let id = senders.peer_id();
    // The first timer sleep on a fresh executor can take tens of milliseconds; take that
    // hit now instead of on the first ack timeout.
    runtime::sleep(Duration::from_millis(1)).await;

    let listener = match listen(id, &config, &control, &bound_addr).await {
        Ok(listener) => listener,
        Err(message) => {
            let _ = ready.send(Err(message));
            return;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);

    let limits = Limits {
        max_payload: config.max_payload,
        ack_timeout: config.ack_timeout,
    };
    let core = Rc::new(Core::new(
        id as u16,
        config.cores,
        Shard::new(config.shard_config()),
        limits,
    ));
    let senders = Rc::new(senders);
    let receivers = Rc::new(receivers);
    for peer in (0..config.cores).filter(|&peer| peer != id) {
        runtime::spawn(core.clone().run_sender(peer, senders.clone()));
        runtime::spawn(core.clone().run_receiver(peer, receivers.clone()));
    }
    runtime::spawn(core.clone().run_ticker(config.tick_interval()));
    runtime::spawn(watch_for_stop(core.clone(), control.clone()));
    tracing::info!(shard = id, %addr, "executor listening");
    let _ = ready.send(Ok(addr));

    accept_until_stopped(&core, &listener).await;
    drop(listener);
    drain_connections(&core).await;
    let stats = core.shard_stats();
    tracing::info!(
        shard = id,
        topics = stats.topics,
        consumers = stats.consumers,
        retained_messages = stats.retained_messages,
        unacked_messages = stats.unacked_messages,
        "executor stopped"
    );
}

/// Binds the listener. Executor 0 binds first and publishes the real address, so that
/// with port 0 every executor shares the port the kernel chose.
async fn listen(
    id: usize,
    config: &ServerConfig,
    control: &Control,
    bound_addr: &Mutex<Option<SocketAddr>>,
) -> Result<runtime::TcpListener, String> {
    let addr = if id == 0 {
        config.listen
    } else {
        loop {
            if let Some(addr) = *bound_addr.lock().unwrap_or_else(|e| e.into_inner()) {
                break addr;
            }
            if control.stop_requested.load(Ordering::SeqCst) {
                return Err("stopped before executor 0 was listening".into());
            }
            runtime::sleep(Duration::from_millis(1)).await;
        }
    };
    let listener = runtime::bind(addr).map_err(|err| format!("cannot listen on {addr}: {err}"))?;
    if id == 0 {
        let local = listener
            .local_addr()
            .map_err(|err| format!("cannot read the listening address: {err}"))?;
        *bound_addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(local);
    }
    Ok(listener)
}

async fn accept_until_stopped(core: &Rc<Core>, listener: &runtime::TcpListener) {
    let mut last_logged: Option<std::time::Instant> = None;
    let mut suppressed = 0u64;
    loop {
        let stop = core.stop.listen();
        if core.is_stopping() {
            return;
        }
        let accept = async { Some(runtime::accept(listener).await) };
        let stopped = async {
            stop.await;
            None
        };
        match futures_lite::future::or(accept, stopped).await {
            None => return,
            Some(Ok(stream)) => runtime::spawn(connection::serve(core.clone(), stream)),
            Some(Err(err)) => {
                // Typically EMFILE: back off briefly instead of spinning, and log at most
                // once a second with the count of failures not logged.
                let now = std::time::Instant::now();
                if last_logged.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                    tracing::warn!(shard = core.id, error = %err, suppressed, "accept failed");
                    last_logged = Some(now);
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                runtime::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Polls the broker-wide stop flag and starts this executor's shutdown when it is set.
async fn watch_for_stop(core: Rc<Core>, control: Arc<Control>) {
    while !control.stop_requested.load(Ordering::SeqCst) {
        runtime::sleep(Duration::from_millis(20)).await;
    }
    core.begin_stop();
    for connection in core.connections() {
        connection.request_close();
    }
}

/// Waits until every connection on this executor has flushed and closed, or the grace
/// period ends.
async fn drain_connections(core: &Core) {
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while core.connection_count() > 0 && std::time::Instant::now() < deadline {
        runtime::sleep(Duration::from_millis(10)).await;
    }
    // Let writers finish their last write after their readers have gone.
    runtime::sleep(Duration::from_millis(50)).await;
    if core.connection_count() > 0 {
        tracing::warn!(
            shard = core.id,
            connections = core.connection_count(),
            "connections still open after the shutdown grace period"
        );
    }
}
