//! Evidence that ostrakon keeps its promises under faults, gathered on real processes in
//! the manner of Jepsen and of etcd's robustness tests.
//!
//! A run starts a cluster of `ostrakon server` processes, one per host (a network
//! namespace of its own, or a pair of ports on loopback without root), starts the
//! workloads (registers, Txn groups, a set, watches), and lets a nemesis inject faults in
//! turn: partitions, crashes, pauses, slow and lossy links, clock skew, disk faults,
//! membership changes and leadership transfers. Then it stops the writers, heals
//! everything, and checks: linearizability per key, nothing lost, nothing applied twice,
//! revisions never going back, the watch guarantees, convergence of every member, and
//! that members cut off from the majority acknowledged no write. The verdict is JSON; the
//! report an HTML page with the timeline.

mod cluster;
mod convergence;
mod disk;
mod membership;
mod nemesis;
mod netns;
mod proxy;
mod report;
mod torn;
mod verdict;
mod workload;

pub use cluster::{Cluster, Network};
pub use nemesis::{Fault, FaultWindow, Nemesis, FAULTS};
pub use proxy::{LinkFaults, Proxy};
pub use report::html_report;
pub use verdict::Verdict;

use std::path::PathBuf;
use std::time::Duration;

/// libfaketime, as Debian's `libfaketime` package installs it (the multi-threaded build).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// How long the cluster may take to settle after healing.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a run waits for watches to catch up beyond `SETTLE_TIMEOUT`.
const CATCH_UP_EXTRA_MAX: Duration = Duration::from_secs(120);

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The `ostrakon` binary the members run.
    pub binary: PathBuf,
    /// Members in the cluster.
    pub nodes: usize,
    /// How long the workloads and the nemesis run.
    pub duration: Duration,
    /// The faults to inject, in turn.
    pub nemesis: Nemesis,
    /// Where the hosts live.
    pub network: Network,
    /// Concurrent register clients.
    pub clients: usize,
    /// Registers (keys) the register clients share.
    pub keys: u64,
    /// Keys to split the keyspace at before the workloads start (each range with its
    /// own raft group; a Txn group's keys split apart commit through two-phase commit).
    pub split_at: Vec<String>,
}

impl RunConfig {
    /// The power-loss disks' file system: `ostrakon-lazyfs`, beside the `ostrakon`
    /// binary (cargo builds them into one directory).
    pub fn lazyfs(&self) -> PathBuf {
        self.binary.with_file_name("ostrakon-lazyfs")
    }
}

/// Why a run could not be carried out (distinct from a failing verdict).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A member could not be started or reached.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The hosts' network could not be set up.
    #[error("network: {0}")]
    Network(String),
    /// The settings ask for something this machine cannot do.
    #[error("{0}")]
    Unsupported(String),
}

/// Checks that this machine can run `config`; the error says what to do.
pub fn preflight(config: &RunConfig) -> Result<(), ChaosError> {
    if config.network == Network::Namespaces {
        if let Some(reason) = netns::unavailable_reason() {
            return Err(ChaosError::Unsupported(reason));
        }
    }
    let partitions: Vec<&str> = config
        .nemesis
        .faults()
        .filter(|f| f.needs_namespaces())
        .map(|f| f.name())
        .collect();
    if config.network == Network::Loopback && !partitions.is_empty() {
        return Err(ChaosError::Unsupported(format!(
            "{} need network namespaces: run as root without --network loopback",
            partitions.join(", ")
        )));
    }
    if config.nemesis.faults().any(|f| f == Fault::PowerLoss) {
        if let Some(reason) = disk::unavailable_reason(&config.lazyfs()) {
            return Err(ChaosError::Unsupported(reason));
        }
    }
    if config.nemesis.faults().any(|f| f == Fault::ClockSkew)
        && !std::path::Path::new(LIBFAKETIME).exists()
    {
        return Err(ChaosError::Unsupported(format!(
            "clock-skew needs libfaketime ({LIBFAKETIME}): install Debian's faketime \
             (scripts/install-test-tools.sh does)"
        )));
    }
    Ok(())
}

/// Starts a cluster, runs the workloads and the nemesis for the duration, heals, and
/// checks everything that was recorded.
pub async fn run(config: &RunConfig) -> Result<Verdict, ChaosError> {
    preflight(config)?;
    let work = tempfile::Builder::new()
        .prefix("ostrakon-chaos-")
        .tempdir()
        .map_err(|e| ChaosError::Cluster(e.to_string()))?;
    let lazyfs = config.lazyfs();
    let power_cuts = config.nemesis.faults().any(|f| f == Fault::PowerLoss);
    let mut cluster = Cluster::start(
        &config.binary,
        config.nodes,
        config.network,
        work.path(),
        power_cuts.then_some(lazyfs.as_path()),
    )
    .await?;
    for key in &config.split_at {
        cluster.split(key, SETTLE_TIMEOUT).await?;
    }
    let mut workloads = workload::Workloads::start(&cluster, config.clients, config.keys).await;
    let recorder = workloads.recorder();
    let faults = nemesis::run(
        &mut cluster,
        &config.nemesis,
        config.duration,
        recorder.started(),
    )
    .await;
    let recorded = workloads.stop_writers().await;
    cluster.heal().await;
    let _ = cluster.wait_for_leader(SETTLE_TIMEOUT).await;
    let convergence = convergence::check(&cluster, SETTLE_TIMEOUT).await;
    let endpoints = cluster.endpoints();
    let final_set = workload::set::read_final(&endpoints).await;
    let final_bank = workload::bank::read_final(&endpoints).await;
    // The watches must bring every write: up to the last one under the prefix (the
    // keyspace's revision may be above it with nothing to watch there).
    let target = workload::watch::last_write_revision(&endpoints)
        .await
        .map_or(convergence.revision, |last| last.min(convergence.revision));
    // Catching up a watch takes time in proportion to the history: allow a second per
    // 5,000 revisions beyond the fixed settling time, two minutes at most. (Once the
    // keyspace splits, revisions are the oracle's timestamps, far above any count of
    // writes: uncapped, a watcher that never caught up held the run for ever.)
    let catch_up =
        SETTLE_TIMEOUT + Duration::from_secs(target.max(0) as u64 / 5000).min(CATCH_UP_EXTRA_MAX);
    let watched = workloads.watch.finish(target, catch_up).await;
    let watch_start = workloads.watch.start_revision;
    let reference = workload::watch::reference(&endpoints, watch_start, target, catch_up).await;
    let watched = watched
        .into_iter()
        .enumerate()
        .map(|(i, (responses, caught_up))| (cluster.members[i].name.clone(), responses, caught_up))
        .collect();
    let evidence = verdict::Evidence {
        recorded,
        timeline: recorder.take_timeline(),
        faults,
        convergence,
        final_set,
        final_bank,
        watch_start,
        watched,
        reference,
    };
    let mut verdict = verdict::judge(evidence, config);
    drop(cluster);
    if !verdict.valid {
        // Kept with the members' logs, so a failure found by a test that overwrites its
        // verdict file can still be read.
        let saved = serde_json::to_string_pretty(&verdict.json).unwrap_or_default();
        let _ = std::fs::write(work.path().join("verdict.json"), saved);
        verdict.logs = Some(work.keep());
    }
    Ok(verdict)
}
