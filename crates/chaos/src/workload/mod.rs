//! The workloads: clients that run while the nemesis injects faults, each recording every
//! operation's invocation, completion and outcome (ok, failed or unknown).
//!
//! - registers: read, write and compare-and-set of single keys;
//! - txn: the same on groups of keys written together by one Txn, read by one Range;
//! - set: unique elements added through one pinned member each, all read back at the end;
//! - watch: one watcher per member over every key the others write;
//! - timestamps: one client per member asks the timestamp oracle for timestamps;
//! - bank: transfers between accounts by Txn, and reads of every account at one revision
//!   that must always find the same total.
//!
//! Besides its own typed history, every operation goes on a shared timeline (for the
//! revision checker, availability per fault and the report's plots).

pub(crate) mod bank;
pub(crate) mod register;
pub(crate) mod set;
pub(crate) mod timestamps;
pub(crate) mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// How long a client waits for one operation.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// Operations per client at most, so a run is bounded even if the clock misbehaves.
pub(crate) const OPERATIONS_PER_CLIENT_MAX: usize = 200_000;
/// Every key the workloads write is under this prefix (the watchers watch it).
pub(crate) const KEY_PREFIX: &str = "chaos/";

/// How an operation ended, as the timeline keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Completed with a result.
    Ok,
    /// Definitely not applied.
    Failed,
    /// The client never learned.
    Unknown,
}

/// One operation of any workload.
#[derive(Clone, Debug)]
pub struct TimelineOp {
    /// The workload's name.
    pub workload: &'static str,
    /// The client.
    pub client: u64,
    /// The member the client is pinned to, if it is pinned.
    pub member: Option<usize>,
    /// Whether it writes.
    pub write: bool,
    /// When it was sent, in microseconds since the run started.
    pub invoked_us: u64,
    /// When its outcome arrived (None when it never did).
    pub completed_us: Option<u64>,
    /// How it ended.
    pub ended: Ended,
    /// The response header's revision, when it completed.
    pub revision: Option<i64>,
}

/// What every client shares: the clock, the timeline and the stop flag.
pub struct Recorder {
    started: Instant,
    timeline: Mutex<Vec<TimelineOp>>,
    stop: AtomicBool,
}

impl Recorder {
    pub(crate) fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            started: Instant::now(),
            timeline: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        })
    }

    /// Microseconds since the run started.
    pub(crate) fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// When the run started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn record(&self, op: TimelineOp) {
        self.timeline.lock().unwrap().push(op);
    }

    pub(crate) fn take_timeline(&self) -> Vec<TimelineOp> {
        std::mem::take(&mut *self.timeline.lock().unwrap())
    }
}

/// Connects to `endpoints` (all members, or one for a pinned client).
pub(crate) async fn connect(endpoints: &[String]) -> Option<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OPERATION_TIMEOUT);
    etcd_client::Client::connect(endpoints.to_vec(), Some(options))
        .await
        .ok()
}

/// What a failed write means. Only errors that prove the request never reached a server
/// (it could not connect) or was never proposed (no leader) count as failed; anything
/// else (a timeout, a lost leader, a broken connection) may have applied: unknown. A
/// wrong "failed" could only make a correct history look wrong, never hide a bug.
pub(crate) fn write_error_is_definite(error: &etcd_client::Error) -> bool {
    let text = error.to_string();
    let never_sent = text.contains("tcp connect error")
        || text.contains("error trying to connect")
        || text.contains("Connection refused");
    let never_proposed = text.contains("etcdserver: no leader");
    never_sent || never_proposed
}

/// The running workloads.
pub struct Workloads {
    recorder: Arc<Recorder>,
    registers: register::RegisterWorkload,
    txns: register::RegisterWorkload,
    set: set::SetWorkload,
    timestamps: timestamps::TimestampWorkload,
    bank: bank::BankWorkload,
    /// The watchers: stopped only after the cluster has healed and converged.
    pub watch: watch::WatchWorkload,
}

/// What the stopped writers recorded.
pub struct Recorded {
    /// Single-key registers.
    pub registers: register::Recorded,
    /// Multi-key registers written by Txn.
    pub txns: register::Recorded,
    /// The set's elements.
    pub set: set::Recorded,
    /// The timestamp requests.
    pub timestamps: timestamps::Recorded,
    /// The bank's transfers and reads.
    pub bank: bank::Recorded,
}

impl Workloads {
    /// Starts every workload against `cluster`.
    pub async fn start(cluster: &Cluster, clients: usize, keys: u64) -> Workloads {
        let recorder = Recorder::new();
        let watch = watch::WatchWorkload::start(cluster).await;
        // Opened before the others start, so the faults meet its transfers.
        let bank = bank::BankWorkload::start(cluster, recorder.clone()).await;
        Workloads {
            registers: register::RegisterWorkload::start(
                cluster,
                recorder.clone(),
                register::Shape::SingleKeys,
                clients,
                keys,
            ),
            txns: register::RegisterWorkload::start(
                cluster,
                recorder.clone(),
                register::Shape::TxnGroups,
                2,
                3,
            ),
            set: set::SetWorkload::start(cluster, recorder.clone()),
            timestamps: timestamps::TimestampWorkload::start(cluster, recorder.clone()),
            bank,
            watch,
            recorder,
        }
    }

    /// The clock the workloads record with.
    pub fn recorder(&self) -> Arc<Recorder> {
        self.recorder.clone()
    }

    /// Stops the writing clients (not the watchers); pending operations are unknown.
    pub async fn stop_writers(&mut self) -> Recorded {
        self.recorder.stop.store(true, Ordering::SeqCst);
        Recorded {
            registers: self.registers.stop().await,
            txns: self.txns.stop().await,
            set: self.set.stop().await,
            timestamps: self.timestamps.stop().await,
            bank: self.bank.stop().await,
        }
    }
}
