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
    /// Every member loses power at once: killed, and what it wrote without syncing is
    /// gone from its disk (a FUSE file system that caches unsynced data, crates/lazyfs).
    PowerLoss,
    /// The keyspace split at one of the workloads' keys (a register's, a Txn group's
    /// middle), and merged back before the window heals: writes, reads, transactions
    /// and watches meet a range that freezes and goes.
    SplitMerge,
}

/// Where the split-merge nemesis splits: between registers, at the set's keys, and
/// through Txn groups and the bank's accounts (whose transactions then span two ranges).
const SPLIT_MERGE_KEYS: [&str; 7] = [
    "chaos/register/3",
    "chaos/register/7",
    "chaos/set/",
    "chaos/txn/2/1",
    "chaos/txn/5/",
    "chaos/txn/9/2",
    "chaos/bank/5",
];

/// Every fault, by its command-line name.
pub const FAULTS: [(&str, Fault); 19] = [
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
    ("power-loss", Fault::PowerLoss),
    ("split-merge", Fault::SplitMerge),
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

/// The faults a run injects: steps taken in turn, each one fault or several injected
/// together (`partition-halves+delay`); empty for none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nemesis(pub Vec<Vec<Fault>>);

impl Nemesis {
    /// Every fault of every step.
    pub fn faults(&self) -> impl Iterator<Item = Fault> + '_ {
        self.0.iter().flatten().copied()
    }
}

fn known_names() -> String {
    let known: Vec<&str> = FAULTS.iter().map(|(n, _)| *n).collect();
    format!("none, all, partitions, {}", known.join(", "))
}

impl std::str::FromStr for Nemesis {
    type Err = String;
    fn from_str(names: &str) -> Result<Self, String> {
        let mut steps = Vec::new();
        for step in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match step {
                "none" => {}
                "all" => steps.extend(FAULTS.iter().map(|(_, f)| vec![*f])),
                "partitions" => steps.extend(
                    FAULTS
                        .iter()
                        .filter(|(_, f)| f.needs_namespaces())
                        .map(|(_, f)| vec![*f]),
                ),
                _ => {
                    let mut together = Vec::new();
                    for name in step.split('+').map(str::trim) {
                        match FAULTS.iter().find(|(n, _)| *n == name) {
                            Some((_, fault)) if !together.contains(fault) => together.push(*fault),
                            Some(_) => return Err(format!("{name:?} twice in {step:?}")),
                            None => {
                                return Err(format!(
                                    "unknown nemesis {name:?}; known: {} (join faults with + \
                                     to inject them together)",
                                    known_names()
                                ))
                            }
                        }
                    }
                    steps.push(together);
                }
            }
        }
        Ok(Nemesis(steps))
    }
}

impl std::fmt::Display for Nemesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let steps: Vec<String> = self.0.iter().map(|step| step_name(step)).collect();
        write!(f, "{}", steps.join(","))
    }
}

fn step_name(step: &[Fault]) -> String {
    let names: Vec<&str> = step.iter().map(|fault| fault.name()).collect();
    names.join("+")
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
    /// The fault (faults injected together are joined with +).
    pub fault: String,
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
        let Some(step) = nemesis.0.get(turn % nemesis.0.len().max(1)) else {
            continue;
        };
        turn += 1;
        let mut injected = Vec::new();
        for &fault in step {
            if let Some(window) = inject(cluster, fault, started).await {
                injected.push((fault, window));
            }
        }
        if injected.is_empty() {
            continue;
        }
        tokio::time::sleep(HOLD).await;
        let mut window = FaultWindow {
            fault: step_name(step),
            what: String::new(),
            // The step's window opens once its last fault is in place.
            start_ms: injected.iter().map(|(_, w)| w.start_ms).max().unwrap_or(0),
            end_ms: 0,
            cut_off: Vec::new(),
            violations: Vec::new(),
        };
        for (fault, mut part) in injected {
            check_effect(cluster, fault, &mut part).await;
            if !window.what.is_empty() {
                window.what.push_str(" + ");
            }
            window.what.push_str(&part.what);
            for member in part.cut_off {
                if !window.cut_off.contains(&member) {
                    window.cut_off.push(member);
                }
            }
            window.violations.extend(part.violations);
        }
        cluster.heal().await;
        window.end_ms = since(Instant::now());
        tracing::info!(fault = %window.fault, what = %window.what, "healed");
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
        Fault::SplitMerge => {
            let key = *SPLIT_MERGE_KEYS.choose(&mut rand::thread_rng())?;
            if let Err(error) = cluster.split(key, HOLD).await {
                tracing::info!(%error, "the split-merge nemesis could not split; skipped");
                return None;
            }
            cluster.split_to_undo = Some(key.to_string());
            (format!("split at {key:?}"), vec![])
        }
        Fault::PowerLoss => {
            if let Err(error) = cluster.cut_power() {
                tracing::error!(%error, "could not cut the power");
                return None;
            }
            let all: Vec<usize> = (0..n).collect();
            (
                format!(
                    "power cut: {} and their unsynced writes",
                    names(cluster, &all)
                ),
                vec![],
            )
        }
    };
    Some(FaultWindow {
        fault: fault.name().to_string(),
        what,
        // Recorded once the fault is in place.
        start_ms: Instant::now().duration_since(started).as_millis() as u64,
        end_ms: 0,
        cut_off,
        violations: Vec::new(),
    })
}

/// Checks, before healing, what the fault should have caused.
async fn check_effect(cluster: &mut Cluster, fault: Fault, window: &mut FaultWindow) {
    if let (Fault::SplitMerge, Some(key)) = (fault, cluster.split_to_undo.take()) {
        // Merged back within the window, under the workloads. A merge may fail (a
        // member down under another fault of the step): the ranges then stay split.
        match cluster.merge(&key, HOLD * 3).await {
            Ok(()) => window.what.push_str(", merged back"),
            Err(error) => window
                .what
                .push_str(&format!(", not merged back ({error})")),
        }
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_comma_separated_and_faults_joined_with_plus_go_together() {
        let nemesis: Nemesis = "partition-halves+delay, kill-leader".parse().unwrap();
        assert_eq!(
            nemesis.0,
            vec![
                vec![Fault::PartitionHalves, Fault::Delay],
                vec![Fault::KillLeader]
            ]
        );
        assert_eq!(nemesis.to_string(), "partition-halves+delay,kill-leader");
        let all: Nemesis = "all".parse().unwrap();
        assert_eq!(all.0.len(), FAULTS.len());
        let partitions: Nemesis = "partitions".parse().unwrap();
        assert!(partitions.faults().all(Fault::needs_namespaces));
        assert_eq!(partitions.0.len(), 5);
        assert!("none".parse::<Nemesis>().unwrap().0.is_empty());
    }

    #[test]
    fn unknown_and_repeated_faults_are_refused_with_the_known_names() {
        let error = "kill-everything".parse::<Nemesis>().unwrap_err();
        assert!(
            error.contains("known: none, all, partitions, kill-leader"),
            "{error}"
        );
        let error = "delay+delay".parse::<Nemesis>().unwrap_err();
        assert!(error.contains("twice"), "{error}");
    }
}
