//! One executor's state: the shard it owns, the connections it serves, and the routing
//! of requests and events between them and the other executors.
//!
//! Only this executor's thread touches a `Core`. Requests for a topic owned here go
//! straight into the shard. Requests for other shards, and events for connections served
//! elsewhere, are appended to a per-peer outbox. A sender task per peer moves each outbox
//! to the channel mesh as one batch, so a channel hop costs one wake-up per batch, not per
//! message. The receiver task per peer never awaits a send: it only appends to outboxes,
//! which is what keeps two executors with full channels from waiting on each other.

use super::Limits;
use super::connection::Connection;
use super::runtime::{self, MeshReceivers, MeshSenders, Notify};
use crate::shard::{ConnAddr, Event, Output, Request, Shard};
use foldhash::{HashMap, HashMapExt};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A message between executors.
#[derive(Debug)]
pub enum CoreMessage {
    /// For the shard of the receiving executor.
    Request(Request),
    /// For a connection served by the receiving executor.
    Event { conn: u64, event: Event },
}

/// The unit sent over a mesh channel.
pub type Batch = Vec<CoreMessage>;

/// Outbox length, in messages, above which connections on this executor stop reading
/// from their sockets until the sender tasks catch up.
const OUTBOX_HIGH_WATER: usize = 16 * 1024;

/// Payload bytes in one outbox above which connections on this executor stop reading.
const OUTBOX_HIGH_WATER_BYTES: usize = 8 * 1024 * 1024;

/// One executor's shard, connections and outboxes.
pub struct Core {
    /// This executor's index in the mesh, which is also the id of the shard it owns.
    pub id: u16,
    /// Number of shards in the broker.
    pub shards: usize,
    /// Broker-wide limits that connections enforce.
    pub limits: Limits,
    shard: RefCell<Shard>,
    connections: RefCell<HashMap<u64, Rc<Connection>>>,
    next_conn_id: Cell<u64>,
    outboxes: Vec<RefCell<Batch>>,
    /// Payload bytes of publishes and deliveries in each outbox.
    outbox_bytes: Vec<Cell<usize>>,
    outbox_ready: Vec<Notify>,
    /// Notified when a sender task empties an outbox.
    pub outbox_space: Notify,
    /// Reused for each local call into the shard, so a publish allocates no event vector.
    scratch: RefCell<Output>,
    stopping: Cell<bool>,
    /// Clock readings shared by a batch of requests; see [`Core::freeze_clock`].
    frozen_clock: Cell<Option<(Instant, u64)>>,
    /// Notified once when the executor begins to shut down.
    pub stop: Notify,
}

impl Core {
    /// Creates the state of executor `id` of `shards`.
    pub fn new(id: u16, shards: usize, shard: Shard, limits: Limits) -> Self {
        Core {
            id,
            shards,
            limits,
            shard: RefCell::new(shard),
            connections: RefCell::new(HashMap::new()),
            next_conn_id: Cell::new(1),
            outboxes: (0..shards).map(|_| RefCell::new(Vec::new())).collect(),
            outbox_bytes: (0..shards).map(|_| Cell::new(0)).collect(),
            outbox_ready: (0..shards).map(|_| Notify::default()).collect(),
            outbox_space: Notify::default(),
            scratch: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            frozen_clock: Cell::new(None),
            stop: Notify::default(),
        }
    }

    /// Registers a connection and returns its address.
    pub fn add_connection(&self, make: impl FnOnce(ConnAddr) -> Rc<Connection>) -> Rc<Connection> {
        let conn = self.next_conn_id.get();
        self.next_conn_id.set(conn + 1);
        let connection = make(ConnAddr {
            core: self.id,
            conn,
        });
        self.connections
            .borrow_mut()
            .insert(conn, connection.clone());
        connection
    }

    /// Forgets a closed connection; events still on their way to it are dropped.
    pub fn remove_connection(&self, conn: u64) {
        self.connections.borrow_mut().remove(&conn);
    }

    /// Returns the number of open connections on this executor.
    pub fn connection_count(&self) -> usize {
        self.connections.borrow().len()
    }

    /// Returns every open connection on this executor.
    pub fn connections(&self) -> Vec<Rc<Connection>> {
        self.connections.borrow().values().cloned().collect()
    }

    /// Sends `request` to the shard `owner`: handled at once when it is this executor's
    /// own shard, else queued for the peer.
    pub fn submit(&self, owner: usize, request: Request) {
        if owner == self.id as usize {
            let (now, wall) = self
                .frozen_clock
                .get()
                .unwrap_or_else(|| (Instant::now(), wall_clock_nanos()));
            let mut out = std::mem::take(&mut *self.scratch.borrow_mut());
            self.shard.borrow_mut().handle(request, now, wall, &mut out);
            self.route(&mut out);
            *self.scratch.borrow_mut() = out;
        } else {
            self.push_outbox(owner, CoreMessage::Request(request));
        }
    }

    /// Reads both clocks once for the requests submitted until the returned guard drops.
    /// A batch decoded from one socket read takes microseconds, so its messages may
    /// share a timestamp; timestamps stay non-decreasing per topic either way.
    pub fn freeze_clock(&self) -> FrozenClock<'_> {
        self.frozen_clock
            .set(Some((Instant::now(), wall_clock_nanos())));
        FrozenClock(self)
    }

    /// Returns true while any outbox is over its high-water mark in messages or bytes.
    pub fn outboxes_full(&self) -> bool {
        self.outboxes
            .iter()
            .zip(&self.outbox_bytes)
            .any(|(outbox, bytes)| {
                outbox.borrow().len() > OUTBOX_HIGH_WATER || bytes.get() > OUTBOX_HIGH_WATER_BYTES
            })
    }

    /// Returns true when any outbox contains messages that its sender task has not taken.
    pub fn has_queued_outbox(&self) -> bool {
        self.outboxes
            .iter()
            .any(|outbox| !outbox.borrow().is_empty())
    }

    /// Returns true once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Starts shutdown on this executor: listeners and connection readers stop.
    pub fn begin_stop(&self) {
        if !self.stopping.replace(true) {
            self.stop.notify();
        }
    }

    /// Delivers or forwards every event in `out`, leaving it empty.
    fn route(&self, out: &mut Output) {
        for (addr, event) in out.drain(..) {
            if addr.core == self.id {
                self.deliver(addr.conn, event, self.id);
            } else {
                self.push_outbox(
                    addr.core as usize,
                    CoreMessage::Event {
                        conn: addr.conn,
                        event,
                    },
                );
            }
        }
    }

    fn deliver(&self, conn: u64, event: Event, source_shard: u16) {
        let connection = self.connections.borrow().get(&conn).cloned();
        if let Some(connection) = connection {
            connection.deliver(event, source_shard);
        }
    }

    fn push_outbox(&self, peer: usize, message: CoreMessage) {
        let payload_len = match &message {
            CoreMessage::Request(Request::Publish { payload, .. }) => payload.len(),
            CoreMessage::Event {
                event: Event::Message { payload, .. },
                ..
            } => payload.len(),
            _ => 0,
        };
        let bytes = &self.outbox_bytes[peer];
        bytes.set(bytes.get() + payload_len);
        let mut outbox = self.outboxes[peer].borrow_mut();
        outbox.push(message);
        if outbox.len() == 1 {
            self.outbox_ready[peer].notify();
        }
    }

    /// Moves this executor's outbox for `peer` into the mesh, one batch per send, until
    /// the executor stops.
    pub async fn run_sender(self: Rc<Self>, peer: usize, senders: Rc<MeshSenders<Batch>>) {
        loop {
            let ready = self.outbox_ready[peer].listen();
            let batch = std::mem::take(&mut *self.outboxes[peer].borrow_mut());
            if batch.is_empty() {
                ready.await;
                continue;
            }
            // The batch's bytes stay counted until the channel has taken it, so readers
            // keep pausing while the peer is behind.
            let sent_bytes = self.outbox_bytes[peer].get();
            if senders.send_to(peer, batch).await.is_err() {
                // The peer's receiver is gone, which happens only while the broker
                // shuts down.
                tracing::debug!(
                    shard = self.id,
                    peer,
                    "peer channel closed; dropping its outbox"
                );
                return;
            }
            let bytes = &self.outbox_bytes[peer];
            bytes.set(bytes.get().saturating_sub(sent_bytes));
            self.outbox_space.notify();
        }
    }

    /// Handles every batch that `peer` sends to this executor.
    pub async fn run_receiver(self: Rc<Self>, peer: usize, receivers: Rc<MeshReceivers<Batch>>) {
        let mut out = Output::new();
        loop {
            let batch = match receivers.recv_from(peer).await {
                Ok(Some(batch)) => batch,
                Ok(None) | Err(_) => return,
            };
            let now = Instant::now();
            let wall = wall_clock_nanos();
            for message in batch {
                match message {
                    CoreMessage::Request(request) => {
                        self.shard.borrow_mut().handle(request, now, wall, &mut out);
                        self.route(&mut out);
                    }
                    CoreMessage::Event { conn, event } => self.deliver(conn, event, peer as u16),
                }
            }
            runtime::yield_if_needed().await;
        }
    }

    /// Runs the shard's periodic work every `interval` until the executor stops.
    pub async fn run_ticker(self: Rc<Self>, interval: std::time::Duration) {
        let mut out = Output::new();
        while !self.is_stopping() {
            runtime::sleep(interval).await;
            self.shard
                .borrow_mut()
                .tick(Instant::now(), wall_clock_nanos(), &mut out);
            self.route(&mut out);
        }
    }

    /// Returns the shard's counts.
    pub fn shard_stats(&self) -> crate::shard::ShardStats {
        self.shard.borrow().stats()
    }
}

/// Keeps the executor's clock readings fixed while it lives; see [`Core::freeze_clock`].
pub struct FrozenClock<'a>(&'a Core);

impl Drop for FrozenClock<'_> {
    fn drop(&mut self) {
        self.0.frozen_clock.set(None);
    }
}

/// Returns the wall-clock time in nanoseconds since the Unix epoch, or 0 if the clock is
/// set before 1970.
pub fn wall_clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
