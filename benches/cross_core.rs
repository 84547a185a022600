//! One round trip between two glommio executors over a channel mesh, the way the broker's
//! executors exchange batches: executor A sends a value to B, B sends it back.
//!
//! Each executor runs on its own CPU when the machine has two. Without spinning, an idle
//! executor parks in io_uring, so each hop includes waking the other thread. The
//! `spin_50us` variant keeps each executor spinning for 50 µs before it parks.

use criterion::{Criterion, criterion_group, criterion_main};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Values a mesh channel holds.
const CHANNEL_CAPACITY: usize = 64;

/// A pair of executors: send a round-trip count to `commands`, read the elapsed time
/// from `results`.
struct Pair {
    commands: mpsc::Sender<u64>,
    results: mpsc::Receiver<Duration>,
    handles: Vec<ExecutorJoinHandle<()>>,
}

fn builder(cpu: usize, name: &str, spin: Option<Duration>) -> LocalExecutorBuilder {
    let two_cpus = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let placement = if two_cpus {
        Placement::Fixed(cpu)
    } else {
        Placement::Unbound
    };
    let builder = LocalExecutorBuilder::new(placement).name(name);
    match spin {
        Some(spin) => builder.spin_before_park(spin),
        None => builder,
    }
}

fn start_pair(spin: Option<Duration>) -> Pair {
    let mesh = MeshBuilder::<u64, _>::full(2, CHANNEL_CAPACITY);
    let (commands, command_rx) = mpsc::channel::<u64>();
    let (result_tx, results) = mpsc::channel::<Duration>();

    let echo_mesh = mesh.clone();
    let echo = builder(1, "echo", spin)
        .spawn(move || async move {
            let (senders, receivers) = echo_mesh.join().await.expect("mesh join");
            let peer = 1 - senders.peer_id();
            while let Ok(Some(value)) = receivers.recv_from(peer).await {
                if senders.send_to(peer, value).await.is_err() {
                    break;
                }
            }
        })
        .expect("echo executor");
    let driver = builder(0, "driver", spin)
        .spawn(move || async move {
            let (senders, receivers) = mesh.join().await.expect("mesh join");
            let peer = 1 - senders.peer_id();
            // Blocking here is fine: this executor has no other task to run.
            while let Ok(round_trips) = command_rx.recv() {
                let started = Instant::now();
                for value in 0..round_trips {
                    senders
                        .send_to(peer, value)
                        .await
                        .expect("echo executor is running");
                    receivers
                        .recv_from(peer)
                        .await
                        .expect("echo executor is running");
                }
                if result_tx.send(started.elapsed()).is_err() {
                    break;
                }
            }
            senders.close();
        })
        .expect("driver executor");
    Pair {
        commands,
        results,
        handles: vec![driver, echo],
    }
}

fn cross_core(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross_core");
    for (name, spin) in [
        ("park", None),
        ("spin_50us", Some(Duration::from_micros(50))),
    ] {
        let pair = start_pair(spin);
        group.bench_function(format!("round_trip/{name}"), |b| {
            b.iter_custom(|round_trips| {
                pair.commands
                    .send(round_trips)
                    .expect("driver executor is running");
                pair.results.recv().expect("driver executor is running")
            })
        });
        drop(pair.commands);
        for handle in pair.handles {
            handle.join().expect("executor thread");
        }
    }
    group.finish();
}

criterion_group!(benches, cross_core);
criterion_main!(benches);
