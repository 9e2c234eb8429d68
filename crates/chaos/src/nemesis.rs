//! Faults injected while the workloads run. A nemesis is a list of faults taken in turn:
//! every few seconds the next one is injected, held, and healed. Every fault loop is
//! bounded by the run's duration and stops by itself.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::Cluster;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the leader, restarted after a while.
    KillLeader,
    /// kill -9 of a random member.
    KillRandom,
    /// kill -9 of a minority of the members at once.
    KillMinority,
    /// SIGSTOP of the leader, then SIGCONT: a stalled leader that wakes up believing it
    /// still leads.
    PauseLeader,
    /// The leader cut off from every other member (iptables).
    PartitionLeader,
    /// A random minority cut off from the majority.
    PartitionHalves,
    /// The leader drops every packet from the other members; they still hear it.
    PartitionOneWay,
    /// Two sides that cannot reach each other and one member that reaches both.
    PartitionBridge,
    /// Each member reaches only its two neighbours on a ring (needs 5 members to differ
    /// from no partition).
    PartitionRing,
    /// Every peer link slowed by 50 to 200 ms.
    Delay,
    /// Every peer link loses packets (10%): retransmission stalls and resets.
    Loss,
    /// Every peer link into the leader swallows all traffic.
    Blackhole,
    /// A member restarted with its clock off by minutes and running at another rate.
    ClockSkew,
    /// Every fsync of a member's WAL fails: the member must exit, not go on.
    FsyncError,
    /// A member killed mid-write: its WAL ends in a torn record.
    TornTail,
    /// A member removed, wiped, added back as a learner and promoted.
    Membership,
    /// Leadership moved to a random follower.
    TransferLeader,
}

/// Every fault, by its command-line name.
pub const FAULTS: [(&str, Fault); 17] = [
    ("kill-leader", Fault::KillLeader),
    ("kill-random", Fault::KillRandom),
    ("kill-minority", Fault::KillMinority),
    ("pause-leader", Fault::PauseLeader),
    ("partition-leader", Fault::PartitionLeader),
    ("partition-halves", Fault::PartitionHalves),
    ("partition-one-way", Fault::PartitionOneWay),
    ("partition-bridge", Fault::PartitionBridge),
    ("partition-ring", Fault::PartitionRing),
    ("delay", Fault::Delay),
    ("loss", Fault::Loss),
    ("blackhole", Fault::Blackhole),
    ("clock-skew", Fault::ClockSkew),
    ("fsync-error", Fault::FsyncError),
    ("torn-tail", Fault::TornTail),
    ("membership", Fault::Membership),
    ("transfer-leader", Fault::TransferLeader),
];

impl Fault {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        FAULTS
            .iter()
            .find(|(_, fault)| *fault == self)
            .map(|(name, _)| *name)
            .expect("every fault is in FAULTS")
    }

    /// Whether the fault needs the hosts to be network namespaces.
    pub fn needs_namespaces(self) -> bool {
        matches!(
            self,
            Fault::PartitionLeader
                | Fault::PartitionHalves
                | Fault::PartitionOneWay
                | Fault::PartitionBridge
                | Fault::PartitionRing
        )
    }
}

/// The faults a run injects, in turn; empty for none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nemesis(pub Vec<Fault>);

impl std::str::FromStr for Nemesis {
    type Err = String;
    fn from_str(names: &str) -> Result<Self, String> {
        let mut faults = Vec::new();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "none" => {}
                "all" => faults.extend(FAULTS.iter().map(|(_, f)| *f)),
                "partitions" => faults.extend(
                    FAULTS
                        .iter()
                        .map(|(_, f)| *f)
                        .filter(|f| f.needs_namespaces()),
                ),
                _ => match FAULTS.iter().find(|(n, _)| *n == name) {
                    Some((_, fault)) => faults.push(*fault),
                    None => {
                        let known: Vec<&str> = FAULTS.iter().map(|(n, _)| *n).collect();
                        return Err(format!(
                            "unknown nemesis {name:?}; known: none, all, partitions, {}",
                            known.join(", ")
                        ));
                    }
                },
            }
        }
        Ok(Nemesis(faults))
    }
}

impl std::fmt::Display for Nemesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let names: Vec<&str> = self.0.iter().map(|fault| fault.name()).collect();
        write!(f, "{}", names.join(","))
    }
}

/// How long a fault is held.
const HOLD: Duration = Duration::from_secs(3);
/// Quiet time before each fault.
const BETWEEN: Duration = Duration::from_secs(3);
/// How long a member may take to exit after its fsync failed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A fault's window, in milliseconds since the run started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultWindow {
    /// The fault.
    pub fault: &'static str,
    /// What was done, to whom.
    pub what: String,
    /// When it started (after it was in place).
    pub start_ms: u64,
    /// When it was healed.
    pub end_ms: u64,
    /// Members that could not reach a majority during the window: they must not
    /// acknowledge a write invoked in it.
    pub cut_off: Vec<usize>,
    /// Broken expectations about the fault itself (a member that did not exit when its
    /// disk failed it, say).
    pub violations: Vec<String>,
}

/// Injects the nemesis's faults in turn until `duration` has passed (measured from
/// `started`); returns the fault windows. Each fault is healed before the next.
pub async fn run(
    cluster: &mut Cluster,
    nemesis: &Nemesis,
    duration: Duration,
    started: Instant,
) -> Vec<FaultWindow> {
    let deadline = started + duration;
    let since = |at: Instant| at.duration_since(started).as_millis() as u64;
    let mut windows = Vec::new();
    let mut turn = 0;
    loop {
        let wake = (Instant::now() + BETWEEN).min(deadline);
        tokio::time::sleep_until(wake.into()).await;
        if Instant::now() + HOLD >= deadline {
            break;
        }
        let Some(&fault) = nemesis.0.get(turn % nemesis.0.len().max(1)) else {
            continue;
        };
        turn += 1;
        let Some(mut window) = inject(cluster, fault, started).await else {
            continue;
        };
        tokio::time::sleep(HOLD).await;
        heal(cluster, fault, &mut window).await;
        window.end_ms = since(Instant::now());
        tracing::info!(fault = fault.name(), what = %window.what, "healed");
        windows.push(window);
    }
    windows
}

fn others(cluster: &Cluster, of: usize) -> Vec<usize> {
    (0..cluster.members.len()).filter(|&i| i != of).collect()
}

fn random_member(cluster: &Cluster) -> usize {
    rand::thread_rng().gen_range(0..cluster.members.len())
}

/// Cuts both directions between every member of `a` and every member of `b`.
fn cut(cluster: &Cluster, a: &[usize], b: &[usize]) -> Result<(), crate::ChaosError> {
    let netns = cluster
        .netns
        .as_ref()
        .expect("partition faults are refused without namespaces");
    for &x in a {
        for &y in b {
            netns.drop_from(x, y)?;
            netns.drop_from(y, x)?;
        }
    }
    Ok(())
}

fn names(cluster: &Cluster, members: &[usize]) -> String {
    let names: Vec<&str> = members
        .iter()
        .map(|&i| cluster.members[i].name.as_str())
        .collect();
    names.join(" ")
}

/// Puts `fault` in place; None when it cannot be injected now (no leader to target).
async fn inject(cluster: &mut Cluster, fault: Fault, started: Instant) -> Option<FaultWindow> {
    let n = cluster.members.len();
    let minority = (n - 1) / 2;
    let leader = match fault {
        Fault::KillLeader
        | Fault::PauseLeader
        | Fault::PartitionLeader
        | Fault::PartitionOneWay
        | Fault::Blackhole
        | Fault::FsyncError
        | Fault::TransferLeader => Some(cluster.wait_for_leader(HOLD).await.ok()?),
        _ => None,
    };
    let mut shuffled: Vec<usize> = (0..n).collect();
    shuffled.shuffle(&mut rand::thread_rng());
    let (what, cut_off): (String, Vec<usize>) = match fault {
        Fault::KillLeader | Fault::KillRandom => {
            let victim = leader.unwrap_or_else(|| random_member(cluster));
            cluster.kill(victim);
            (format!("kill -9 {}", cluster.members[victim].name), vec![])
        }
        Fault::KillMinority => {
            let victims = &shuffled[..minority.max(1)];
            for &victim in victims {
                cluster.kill(victim);
            }
            (format!("kill -9 {}", names(cluster, victims)), vec![])
        }
        Fault::PauseLeader => {
            let victim = leader.expect("looked up above");
            cluster.signal(victim, libc::SIGSTOP);
            (format!("SIGSTOP {}", cluster.members[victim].name), vec![])
        }
        Fault::PartitionLeader => {
            let victim = leader.expect("looked up above");
            cut(cluster, &[victim], &others(cluster, victim)).ok()?;
            (
                format!("isolate leader {}", cluster.members[victim].name),
                vec![victim],
            )
        }
        Fault::PartitionHalves => {
            let (small, large) = shuffled.split_at(minority.max(1));
            cut(cluster, small, large).ok()?;
            (
                format!("{} | {}", names(cluster, small), names(cluster, large)),
                small.to_vec(),
            )
        }
        Fault::PartitionOneWay => {
            let victim = leader.expect("looked up above");
            let netns = cluster.netns.as_ref().expect("refused without namespaces");
            for from in others(cluster, victim) {
                netns.drop_from(victim, from).ok()?;
            }
            // Whatever it sends, it can learn nothing back: it cannot commit anything.
            (
                format!("{} hears no one (one way)", cluster.members[victim].name),
                vec![victim],
            )
        }
        Fault::PartitionBridge => {
            let bridge = shuffled[0];
            let rest = &shuffled[1..];
            let (left, right) = rest.split_at(rest.len() / 2);
            cut(cluster, left, right).ok()?;
            (
                format!(
                    "{} | {} | {} (bridge {})",
                    names(cluster, left),
                    cluster.members[bridge].name,
                    names(cluster, right),
                    cluster.members[bridge].name
                ),
                vec![],
            )
        }
        Fault::PartitionRing => {
            let netns = cluster.netns.as_ref().expect("refused without namespaces");
            for (position, &member) in shuffled.iter().enumerate() {
                let before = shuffled[(position + n - 1) % n];
                let after = shuffled[(position + 1) % n];
                for &other in &shuffled {
                    if other != member && other != before && other != after {
                        netns.drop_from(member, other).ok()?;
                    }
                }
            }
            (format!("ring {}", names(cluster, &shuffled)), vec![])
        }
        Fault::Delay => {
            for member in &cluster.members {
                member.link.set_delay(50, 150);
            }
            ("peer links +50..200 ms".to_string(), vec![])
        }
        Fault::Loss => {
            for member in &cluster.members {
                member.link.set_loss(100);
            }
            ("peer links lose 10%".to_string(), vec![])
        }
        Fault::Blackhole => {
            let victim = leader.expect("looked up above");
            cluster.members[victim].link.set_blackhole();
            // Not cut off: its own connections out still carry writes it forwards to a
            // new leader, and their answers back.
            (
                format!("blackhole into leader {}", cluster.members[victim].name),
                vec![],
            )
        }
        Fault::ClockSkew => {
            let victim = random_member(cluster);
            let offset_s: i64 = rand::thread_rng().gen_range(-600..=600);
            let rate = *[0.5, 0.8, 1.25, 2.0]
                .choose(&mut rand::thread_rng())
                .expect("not empty");
            let skew = format!("{offset_s:+} x{rate}");
            cluster.kill(victim);
            cluster.members[victim].start_env = vec![
                ("LD_PRELOAD".into(), crate::LIBFAKETIME.into()),
                ("FAKETIME".into(), skew.clone()),
                ("FAKETIME_NO_CACHE".into(), "1".into()),
            ];
            cluster.restart(victim);
            (
                format!(
                    "{} restarted with clock {skew} (seconds, rate)",
                    cluster.members[victim].name
                ),
                vec![],
            )
        }
        Fault::FsyncError => {
            let victim = leader.expect("looked up above");
            let trigger = cluster.members[victim].fsync_trigger.clone();
            cluster.members[victim].last_exit = None;
            std::fs::write(&trigger, b"fail").ok()?;
            (
                format!("fsync fails on leader {}", cluster.members[victim].name),
                vec![],
            )
        }
        Fault::TornTail => {
            let victim = random_member(cluster);
            cluster.kill(victim);
            let torn = crate::torn::tear_wal_tail(&cluster.wal_dir(victim));
            cluster.restart(victim);
            (
                format!(
                    "kill -9 {} with a torn WAL tail ({torn})",
                    cluster.members[victim].name
                ),
                vec![],
            )
        }
        Fault::Membership => {
            let victim = random_member(cluster);
            let what = crate::membership::replace(cluster, victim).await;
            (what, vec![])
        }
        Fault::TransferLeader => {
            let from = leader.expect("looked up above");
            let to = *others(cluster, from).choose(&mut rand::thread_rng())?;
            let what = crate::membership::move_leader(cluster, from, to).await;
            (what, vec![])
        }
    };
    Some(FaultWindow {
        fault: fault.name(),
        what,
        // Recorded once the fault is in place.
        start_ms: Instant::now().duration_since(started).as_millis() as u64,
        end_ms: 0,
        cut_off,
        violations: Vec::new(),
    })
}

/// Lifts the fault, after checking what it should have caused.
async fn heal(cluster: &mut Cluster, fault: Fault, window: &mut FaultWindow) {
    if fault == Fault::FsyncError {
        let victim = cluster
            .members
            .iter()
            .position(|m| std::fs::metadata(&m.fsync_trigger).is_ok())
            .expect("the trigger was written at injection");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while !cluster.reap(victim) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match cluster.members[victim].last_exit.take() {
            Some(how) => {
                window.what.push_str(&format!("; it exited ({how})"));
                if how != "exit code 71" {
                    window
                        .violations
                        .push(format!("after a failed fsync the member ended with {how}"));
                }
            }
            _ => window.violations.push(format!(
                "{} went on after its fsync failed (did not exit within {EXIT_TIMEOUT:?})",
                cluster.members[victim].name
            )),
        }
    }
    cluster.heal().await;
}
