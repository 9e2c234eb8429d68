//! Evidence that ostrakon keeps its promises under faults, gathered on real processes in
//! the manner of Jepsen: a cluster of `ostrakon server` processes, clients that record
//! every operation's invocation and outcome (ok, failed or unknown), a nemesis that
//! injects faults while they run, and checkers that decide whether the history is
//! linearizable. Issue 5 builds this out; this first part runs on loopback with the
//! crash nemeses (kill -9 of the leader or of a random member, then restart) and the
//! register workload (read, write, compare-and-set on a few keys).

mod cluster;
mod nemesis;
mod verdict;
mod workload;

pub use cluster::{LocalCluster, Member};
pub use nemesis::Nemesis;
pub use verdict::Verdict;
pub use workload::RegisterWorkload;

use std::path::PathBuf;
use std::time::Duration;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The `ostrakon` binary the members run.
    pub binary: PathBuf,
    /// Members in the cluster.
    pub nodes: usize,
    /// How long the workload and the nemesis run.
    pub duration: Duration,
    /// The fault to inject.
    pub nemesis: Nemesis,
    /// Concurrent clients.
    pub clients: usize,
    /// Registers (keys) the clients share.
    pub keys: u64,
}

/// Why a run could not be carried out (distinct from a failing verdict).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A member could not be started or reached.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// Starts a cluster, runs the workload and the nemesis for the duration, heals, and
/// checks the history.
pub async fn run(config: &RunConfig) -> Result<Verdict, ChaosError> {
    let mut cluster = LocalCluster::start(&config.binary, config.nodes).await?;
    let workload = RegisterWorkload::start(&cluster, config.clients, config.keys);
    let faults = nemesis::run(&mut cluster, config.nemesis, config.duration).await;
    let history = workload.stop().await;
    cluster.heal().await;
    Ok(verdict::judge(history, faults, config))
}
