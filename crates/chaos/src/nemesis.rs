//! Faults injected while the workload runs. Every fault loop is bounded by the run's
//! duration and stops by itself.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::cluster::LocalCluster;

/// Which fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nemesis {
    /// No fault: the baseline.
    None,
    /// kill -9 of the current leader, restarted after a pause.
    KillLeader,
    /// kill -9 of a random member, restarted after a pause.
    KillRandom,
    /// SIGSTOP of the current leader, SIGCONT after a pause: a stalled leader that wakes
    /// up believing it still leads.
    PauseLeader,
}

impl std::str::FromStr for Nemesis {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "none" => Ok(Nemesis::None),
            "kill-leader" => Ok(Nemesis::KillLeader),
            "kill-random" => Ok(Nemesis::KillRandom),
            "pause-leader" => Ok(Nemesis::PauseLeader),
            other => Err(format!(
                "unknown nemesis {other:?}; known: none, kill-leader, kill-random, pause-leader"
            )),
        }
    }
}

/// How long a killed member stays down.
const DOWN: Duration = Duration::from_secs(2);
/// Pause between faults.
const BETWEEN: Duration = Duration::from_secs(3);

/// A fault's window, in milliseconds since the run started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    /// What was done.
    pub what: String,
    /// When it started.
    pub start_ms: u64,
    /// When it was healed.
    pub end_ms: u64,
}

/// Injects `nemesis` until `duration` has passed; returns the fault windows.
pub async fn run(
    cluster: &mut LocalCluster,
    nemesis: Nemesis,
    duration: Duration,
) -> Vec<FaultWindow> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut windows = Vec::new();
    let since = |at: Instant| at.duration_since(started).as_millis() as u64;
    loop {
        let wake = (Instant::now() + BETWEEN).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() + DOWN >= deadline || nemesis == Nemesis::None {
            if Instant::now() >= deadline {
                break;
            }
            continue;
        }
        let victim = match nemesis {
            Nemesis::KillLeader | Nemesis::PauseLeader => cluster.leader().await,
            Nemesis::KillRandom => Some(rand::thread_rng().gen_range(0..cluster.members.len())),
            Nemesis::None => None,
        };
        let Some(victim) = victim else { continue };
        let start = Instant::now();
        let what = if nemesis == Nemesis::PauseLeader {
            cluster.signal(victim, libc::SIGSTOP);
            tokio::time::sleep(DOWN).await;
            cluster.signal(victim, libc::SIGCONT);
            "pause (SIGSTOP)"
        } else {
            cluster.kill(victim);
            tokio::time::sleep(DOWN).await;
            cluster.restart(victim);
            "kill -9"
        };
        windows.push(FaultWindow {
            what: format!("{what} {}", cluster.members[victim].name),
            start_ms: since(start),
            end_ms: since(Instant::now()),
        });
    }
    windows
}
