//! The broker's only contact with glommio: executors, the cross-core channel mesh,
//! listeners, stream halves, timers and a wake-up primitive.
//!
//! glommio 0.9 is its last release on crates.io, so the rest of the server goes through
//! this module and could move to another thread-per-core runtime by changing it alone.

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{LocalExecutorBuilder, LocalExecutorPoolBuilder, Placement, PoolPlacement};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub use glommio::net::{TcpListener, TcpStream};

/// I/O memory registered per executor. The broker does socket I/O only, which does not
/// use registered buffers, so this stays far below a typical 8 MiB locked-memory limit.
const IO_MEMORY: usize = 64 * 1024;

/// Submission queue entries per io_uring ring.
const RING_DEPTH: usize = 256;

/// The placement of executors on CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// One executor per CPU, spread over the machine's topology.
    Pinned,
    /// Executors float; allows more executors than CPUs.
    Unpinned,
}

/// Checks on the calling thread that an executor can be built here, and turns the usual
/// io_uring set-up failures into an explanation.
pub fn probe_io_uring() -> io::Result<()> {
    let builder = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(IO_MEMORY)
        .ring_depth(RING_DEPTH);
    match builder.make() {
        Ok(_executor) => Ok(()),
        Err(err) => {
            let text = err.to_string();
            let errno = io::Error::from(err).raw_os_error();
            let hint = match errno {
                Some(libc_errno::ENOMEM) => {
                    "the locked-memory limit is too low (see `ulimit -l`; at least 512 KiB)"
                }
                Some(libc_errno::EPERM) => {
                    "io_uring is blocked, often by a container's seccomp filter"
                }
                Some(libc_errno::EINVAL) => {
                    "the kernel is too old for the io_uring features glommio needs"
                }
                Some(libc_errno::ENOSYS) => "the kernel was built without io_uring",
                _ => "io_uring could not be set up",
            };
            Err(io::Error::other(format!(
                "cannot start an executor: {hint} ({text})"
            )))
        }
    }
}

/// errno values used to explain io_uring failures; Linux numbers on every architecture
/// the broker supports.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOMEM: i32 = 12;
    pub const EINVAL: i32 = 22;
    pub const ENOSYS: i32 = 38;
}

/// Runs `make_future()` on `executors` executor threads and returns their join handles.
/// Each thread is named `pubsub-N`.
///
/// An executor with no work polls for `spin_before_park` before it sleeps in the kernel.
/// That trades CPU time for a shorter wake-up when work arrives. Zero disables spinning.
pub fn spawn_executors<G, F>(
    executors: usize,
    pinning: Pinning,
    spin_before_park: Duration,
    make_future: G,
) -> io::Result<ExecutorHandles>
where
    G: FnOnce() -> F + Clone + Send + 'static,
    F: Future<Output = ()> + 'static,
{
    let placement = match pinning {
        Pinning::Pinned => PoolPlacement::MaxSpread(executors, Some(allowed_cpus()?)),
        Pinning::Unpinned => PoolPlacement::Unbound(executors),
    };
    let mut builder = LocalExecutorPoolBuilder::new(placement)
        .name("pubsub")
        .io_memory(IO_MEMORY)
        .ring_depth(RING_DEPTH);
    if !spin_before_park.is_zero() {
        builder = builder.spin_before_park(spin_before_park);
    }
    let handles = builder
        .on_all_shards(make_future)
        .map_err(|err| io::Error::other(format!("cannot start executors: {err}")))?;
    Ok(ExecutorHandles(handles))
}

/// Returns the online CPUs this process may run on. glommio's own placement chooses
/// among all online CPUs, which would move a broker started under `taskset` off the CPUs
/// it was given.
fn allowed_cpus() -> io::Result<glommio::CpuSet> {
    let online = glommio::CpuSet::online()
        .map_err(|err| io::Error::other(format!("cannot read the online CPUs: {err}")))?;
    let Some(allowed) = core_affinity::get_core_ids() else {
        return Ok(online);
    };
    let allowed: Vec<usize> = allowed.into_iter().map(|core| core.id).collect();
    Ok(online.filter(|location| allowed.contains(&location.cpu)))
}

/// The threads of a running executor pool.
pub struct ExecutorHandles(glommio::PoolThreadHandles<()>);

impl ExecutorHandles {
    /// Waits for every executor thread to finish; returns one message per thread that
    /// failed or panicked.
    pub fn join(self) -> Vec<String> {
        self.0
            .join_all()
            .into_iter()
            .filter_map(|result| result.err().map(|err| err.to_string()))
            .collect()
    }
}

/// Creates the all-to-all channel mesh that carries batches between `peers` executors;
/// each channel buffers at most `capacity` batches.
pub fn mesh<T: Send + 'static>(
    peers: usize,
    capacity: usize,
) -> MeshBuilder<T, glommio::channels::channel_mesh::Full> {
    MeshBuilder::full(peers, capacity)
}

/// The sending side of the mesh on one executor.
pub type MeshSenders<T> = Senders<T>;
/// The receiving side of the mesh on one executor.
pub type MeshReceivers<T> = Receivers<T>;

/// Spawns a task on the current executor and lets it run on its own.
pub fn spawn<F: Future<Output = ()> + 'static>(future: F) {
    glommio::spawn_local(future).detach();
}

/// Spawns a task on the current executor and returns a handle that completes with it.
pub fn spawn_joinable<F: Future<Output = ()> + 'static>(future: F) -> glommio::Task<()> {
    glommio::spawn_local(future)
}

/// Lets every other ready task on this executor run before this one continues.
pub async fn yield_now() {
    glommio::executor().yield_now().await
}

/// Sleeps on the current executor's timer.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await
}

/// Yields to other tasks when this one has run for longer than the executor's preemption
/// interval.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await
}

/// Binds a listener with SO_REUSEPORT on the current executor.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).map_err(io::Error::from)
}

/// Accepts one connection on the current executor.
pub async fn accept(listener: &TcpListener) -> io::Result<TcpStream> {
    listener.accept().await.map_err(io::Error::from)
}

/// Splits a stream into a read half and a write half that separate tasks can own.
///
/// Both halves borrow the stream only inside one `poll_*` call, never across an await,
/// so on a single-threaded executor the `RefCell` is never borrowed twice at once. The
/// stream keeps separate readiness state for reads and writes, so each half's waker is
/// independent of the other's.
pub fn split(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let shared = Rc::new(RefCell::new(stream));
    (ReadHalf(shared.clone()), WriteHalf(shared))
}

/// The read side of a split stream.
pub struct ReadHalf(Rc<RefCell<TcpStream>>);

/// The write side of a split stream.
pub struct WriteHalf(Rc<RefCell<TcpStream>>);

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut stream = self.0.borrow_mut();
        Pin::new(&mut *stream).poll_close(cx)
    }
}

/// A wake-up signal for tasks on one executor.
///
/// A listener taken with [`Notify::listen`] completes once [`Notify::notify`] has been
/// called after it was taken. Take the listener, then check the condition, then await
/// the listener: a notification between the check and the await is not lost.
#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes every task waiting on a listener.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        // Waking only schedules the task on this executor; it does not poll it here, so
        // the borrow cannot be re-entered.
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Returns a future that completes at the next notification.
    pub fn listen(&self) -> Listener<'_> {
        Listener {
            notify: self,
            epoch: self.epoch.get(),
        }
    }
}

/// A pending wait on a [`Notify`].
pub struct Listener<'a> {
    notify: &'a Notify,
    epoch: u64,
}

impl Future for Listener<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
