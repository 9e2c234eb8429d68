//! A userspace TCP proxy in front of each member's peer port, so that faults the kernel
//! here cannot make (it has no netem) can be put on the peer links: delay, loss and a
//! blackhole. Every peer connection into a member passes its proxy; the proxy runs in the
//! member's network namespace, so iptables partitions still see the real sender.
//!
//! TCP hides packet loss behind retransmission, so "loss" is what a lossy link looks like
//! from above TCP: a chunk now and then held back for a retransmission timeout, and
//! rarely a connection reset. A blackhole delivers nothing: bytes are swallowed, new
//! connections hang, and when it heals the stalled connections are reset, as a peer's
//! keepalive would eventually do.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ChaosError;

/// The faults on one member's inbound peer links; changed while connections run.
#[derive(Default)]
pub struct LinkFaults {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    loss_per_mille: AtomicU32,
    blackhole: AtomicBool,
    /// Bumped when a blackhole heals: connections from an older epoch are reset.
    epoch: AtomicU64,
}

impl LinkFaults {
    /// Delays every chunk by `delay_ms` plus up to `jitter_ms`.
    pub fn set_delay(&self, delay_ms: u64, jitter_ms: u64) {
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.jitter_ms.store(jitter_ms, Ordering::SeqCst);
    }

    /// Loses chunks at this rate (per thousand).
    pub fn set_loss(&self, per_mille: u32) {
        self.loss_per_mille
            .store(per_mille.min(1000), Ordering::SeqCst);
    }

    /// Swallows everything until healed.
    pub fn set_blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    /// Removes every fault; connections stalled by a blackhole are reset.
    pub fn heal(&self) {
        self.set_delay(0, 0);
        self.set_loss(0);
        if self.blackhole.swap(false, Ordering::SeqCst) {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn chunk_delay(&self) -> Option<Duration> {
        let mut rng = rand::thread_rng();
        let mut delay_ms = self.delay_ms.load(Ordering::Relaxed);
        let jitter_ms = self.jitter_ms.load(Ordering::Relaxed);
        if jitter_ms > 0 {
            delay_ms += rng.gen_range(0..=jitter_ms);
        }
        let loss = self.loss_per_mille.load(Ordering::Relaxed);
        if loss > 0 && rng.gen_range(0..1000) < loss {
            // A lost segment costs a retransmission timeout.
            delay_ms += rng.gen_range(200..=600);
        }
        (delay_ms > 0).then(|| Duration::from_millis(delay_ms))
    }

    fn reset_now(&self) -> bool {
        let loss = self.loss_per_mille.load(Ordering::Relaxed);
        loss > 0 && rand::thread_rng().gen_range(0..20_000) < loss
    }
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Its faults, shared with its connections.
    pub faults: Arc<LinkFaults>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` and forwards to `forward`, both inside `namespace` if given.
    pub fn start(
        listen: SocketAddr,
        forward: SocketAddr,
        namespace: Option<File>,
    ) -> Result<Proxy, ChaosError> {
        let faults = Arc::new(LinkFaults::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_faults = faults.clone();
        let thread = std::thread::Builder::new()
            .name(format!("proxy-{listen}"))
            .spawn(move || {
                if let Some(namespace) = namespace {
                    // SAFETY: setns on this thread only, with an open namespace handle;
                    // sockets made here afterwards belong to that namespace.
                    let rc = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        let error = std::io::Error::last_os_error();
                        let _ = ready_tx.send(Err(format!("setns: {error}")));
                        return;
                    }
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::bind(listen).await {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = ready_tx.send(Err(format!("bind {listen}: {error}")));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, forward, thread_faults) => {}
                    }
                });
            })
            .map_err(|e| ChaosError::Network(e.to_string()))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Proxy {
                faults,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(error)) => Err(ChaosError::Network(format!("proxy: {error}"))),
            Err(_) => Err(ChaosError::Network("proxy thread died".into())),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, forward: SocketAddr, faults: Arc<LinkFaults>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let faults = faults.clone();
        tokio::spawn(async move {
            let epoch = faults.epoch.load(Ordering::SeqCst);
            // A blackholed member accepts nothing new: the dial hangs until healed.
            while faults.blackhole.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if faults.epoch.load(Ordering::SeqCst) != epoch {
                return;
            }
            let Ok(outbound) = TcpStream::connect(forward).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::select! {
                _ = pump(in_read, out_write, faults.clone(), epoch) => {}
                _ = pump(out_read, in_write, faults.clone(), epoch) => {}
            }
        });
    }
}

/// Copies one direction, applying the faults; returns when either side closes or the
/// connection is reset by a fault.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Arc<LinkFaults>,
    epoch: u64,
) {
    // Chunks pass to the writer with the instant they may be delivered, so a delay holds
    // back the stream without reordering it.
    let (chunks, mut queued) = tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
    let writer = async move {
        while let Some((at, chunk)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    let reader_faults = faults.clone();
    let reader = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut last_due = tokio::time::Instant::now();
        loop {
            let read = tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = wait_for_reset(&reader_faults, epoch) => return,
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if reader_faults.blackhole.load(Ordering::SeqCst) {
                continue;
            }
            if reader_faults.reset_now() {
                return;
            }
            let due = match reader_faults.chunk_delay() {
                Some(delay) => tokio::time::Instant::now() + delay,
                None => tokio::time::Instant::now(),
            };
            last_due = last_due.max(due);
            if chunks.send((last_due, buffer[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    // When the reader stops it drops its sender, and the writer delivers what is queued.
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        _ = wait_for_reset(&faults, epoch) => {}
    }
}

/// Resolves when the connection's blackhole has healed (its epoch is over).
async fn wait_for_reset(faults: &LinkFaults, epoch: u64) {
    while faults.epoch.load(Ordering::SeqCst) == epoch {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
