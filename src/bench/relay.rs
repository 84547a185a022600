//! `pubsub bench relay-server`: a TCP relay that copies every publisher's frames to every
//! subscriber. It keeps no messages, routes no topics and sends no acks, so a run against
//! it measures the sockets, the scheduler and the load generator: the floor any broker
//! on this machine starts from.
//!
//! One thread per connection. A publisher thread reads, cuts what it read at the last
//! whole frame (frames from several publishers must not interleave) and writes that
//! prefix to each subscriber in turn, each behind its own lock. A subscriber that fails a
//! write is dropped.

use super::wire::relay::{ROLE_PUBLISHER, ROLE_SUBSCRIBER, SUBSCRIBED, whole_frames_len};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Time a new connection has to send its role byte.
const ROLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Size of each publisher read.
const READ_CHUNK: usize = 64 * 1024;

type SubscriberList = Arc<RwLock<Vec<Arc<Mutex<TcpStream>>>>>;

/// Runs the relay on `listen` until the process is stopped or `exit_after` has passed.
pub fn serve(listen: SocketAddr, exit_after: Duration) -> Result<(), Box<dyn std::error::Error>> {
    let listener =
        TcpListener::bind(listen).map_err(|err| format!("cannot listen on {listen}: {err}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, exit_after_s = exit_after.as_secs(), "relay listening");
    std::thread::Builder::new()
        .name("relay-exit".into())
        .spawn(move || {
            std::thread::sleep(exit_after);
            tracing::info!(%addr, "relay exiting after --exit-after");
            std::process::exit(0);
        })?;

    let subscribers: SubscriberList = Arc::default();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "relay accept failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let subscribers = subscribers.clone();
        std::thread::Builder::new()
            .name("relay-conn".into())
            .spawn(move || {
                let peer = stream.peer_addr().ok();
                if let Err(err) = serve_connection(stream, &subscribers) {
                    tracing::debug!(?peer, error = %err, "relay connection ended");
                }
            })?;
    }
    Ok(())
}

fn serve_connection(mut stream: TcpStream, subscribers: &SubscriberList) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(ROLE_TIMEOUT))?;
    let mut role = [0u8; 1];
    stream.read_exact(&mut role)?;
    stream.set_read_timeout(None)?;
    match role[0] {
        ROLE_SUBSCRIBER => {
            stream.write_all(&[SUBSCRIBED])?;
            subscribers
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::new(Mutex::new(stream)));
            Ok(())
        }
        ROLE_PUBLISHER => relay_publisher(stream, subscribers),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown role byte 0x{other:02x}; expected 'P' or 'S'"),
        )),
    }
}

fn relay_publisher(mut stream: TcpStream, subscribers: &SubscriberList) -> io::Result<()> {
    let mut buffer = vec![0u8; 2 * READ_CHUNK];
    let mut filled = 0;
    loop {
        if buffer.len() - filled < READ_CHUNK {
            buffer.resize(filled + 2 * READ_CHUNK, 0);
        }
        let read = match stream.read(&mut buffer[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        filled += read;
        let whole = whole_frames_len(&buffer[..filled])
            .map_err(|message| io::Error::new(io::ErrorKind::InvalidData, message))?;
        if whole == 0 {
            continue;
        }
        broadcast(&buffer[..whole], subscribers);
        buffer.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

/// Writes `bytes` to every subscriber and drops the ones whose write fails.
fn broadcast(bytes: &[u8], subscribers: &SubscriberList) {
    let mut failed = Vec::new();
    {
        let list = subscribers.read().unwrap_or_else(|e| e.into_inner());
        for subscriber in list.iter() {
            let mut socket = subscriber.lock().unwrap_or_else(|e| e.into_inner());
            if socket.write_all(bytes).is_err() {
                failed.push(subscriber.clone());
            }
        }
    }
    if !failed.is_empty() {
        let mut list = subscribers.write().unwrap_or_else(|e| e.into_inner());
        list.retain(|subscriber| !failed.iter().any(|gone| Arc::ptr_eq(gone, subscriber)));
        tracing::debug!(
            dropped = failed.len(),
            "relay dropped subscribers whose write failed"
        );
    }
}
