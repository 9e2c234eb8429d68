//! What one seed simulates: cluster shape, workload and fault knobs, all drawn from the seed.

use ostrakon_raft::{PlantedBug, ReadMode};
use ostrakon_ranges::{OracleBug, RangeBug};

use crate::rng::Rng;

/// A deliberate bug the checkers must catch: in the raft core or in the range layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// In the raft core.
    Raft(PlantedBug),
    /// In the timestamp oracle.
    Oracle(OracleBug),
    /// In the range layer's splits.
    Range(RangeBug),
    /// In the simulator's model of what the node's runtime does around the range
    /// layer's code (that runtime is not in the simulator).
    Node(NodeBug),
}

/// A bug planted in the simulator's model of the node's runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeBug {
    /// A follower that sent a read at a revision on to its range's leader reads its
    /// own replica as soon as the leader answers, without applying up to the index the
    /// leader answered (`NodeHandle::read_point_at` waits for it).
    BarrierReadBeforeApply,
}

impl From<NodeBug> for Bug {
    fn from(bug: NodeBug) -> Bug {
        Bug::Node(bug)
    }
}

impl From<PlantedBug> for Bug {
    fn from(bug: PlantedBug) -> Bug {
        Bug::Raft(bug)
    }
}

impl From<OracleBug> for Bug {
    fn from(bug: OracleBug) -> Bug {
        Bug::Oracle(bug)
    }
}

impl From<RangeBug> for Bug {
    fn from(bug: RangeBug) -> Bug {
        Bug::Range(bug)
    }
}

impl Bug {
    /// The raft core's bug, if that is where it is planted.
    pub fn raft(self) -> Option<PlantedBug> {
        match self {
            Bug::Raft(bug) => Some(bug),
            _ => None,
        }
    }

    /// The oracle's bug, if that is where it is planted.
    pub fn oracle(self) -> Option<OracleBug> {
        match self {
            Bug::Oracle(bug) => Some(bug),
            _ => None,
        }
    }

    /// The range layer's bug, if that is where it is planted.
    pub fn range(self) -> Option<RangeBug> {
        match self {
            Bug::Range(bug) => Some(bug),
            _ => None,
        }
    }

    /// The transaction protocol under which this bug can show: the node's variant for
    /// the bugs planted in its code, the key-lock variant for every other bug (their
    /// catch rates were measured under it).
    pub fn forced_protocol(self) -> TxnProtocol {
        if let Bug::Node(NodeBug::BarrierReadBeforeApply) = self {
            // Followers send reads on in the node's variant only.
            return TxnProtocol::WholeRange;
        }
        match self.range() {
            Some(
                RangeBug::TxnTakesLowestPrepare
                | RangeBug::BarrierSkipsFetchInFlight
                | RangeBug::FreshReadTakesFetchInFlight,
            ) => TxnProtocol::WholeRange,
            // Asks confirmed by their member's word are the node's fetches.
            _ if self.raft() == Some(PlantedBug::ConfirmationIgnoresTerm) => {
                TxnProtocol::WholeRange
            }
            _ => TxnProtocol::KeyLocks,
        }
    }
}

/// How transactions across ranges lock and where writes take their revisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnProtocol {
    /// The simulator's first variant: a transaction locks its keys at a revision its
    /// coordinator fetched, and every write's client fetches its own revision (read
    /// floors keep those above the reads served).
    KeyLocks,
    /// The node's: a transaction's lock freezes its whole range
    /// (`ostrakon_ranges::frozen_txn`), each range's leader fetches the revisions of the
    /// writes and prepares it proposes, and reads at a revision wait for the fetch in
    /// flight (`ostrakon_ranges::read_wait`).
    WholeRange,
}

/// Fault knobs, each named by what it does. Probabilities are per message (network) or per
/// nemesis step (everything else).
#[derive(Clone, Debug)]
pub struct FaultKnobs {
    /// A message is lost.
    pub drop_probability: f64,
    /// A message is delivered twice.
    pub duplicate_probability: f64,
    /// Network latency is uniform in `[delay_us_min, delay_us_max]`; the spread reorders.
    pub delay_us_min: u64,
    /// See `delay_us_min`.
    pub delay_us_max: u64,
    /// A nemesis step partitions the network (symmetric, one-way, leader isolated, or
    /// majority/minority).
    pub partition_probability: f64,
    /// A nemesis step crashes a node, losing everything it had not persisted.
    pub crash_probability: f64,
    /// A newly elected leader crashes within `leader_crash_delay_us_max` of winning,
    /// before its empty entry may have replicated (leader flapping: the Figure 8 chain).
    pub leader_crash_after_election_probability: f64,
    /// See `leader_crash_after_election_probability`.
    pub leader_crash_delay_us_max: u64,
    /// A nemesis step changes membership (remove a voter, add a learner, promote one).
    pub membership_change_probability: f64,
    /// A nemesis step asks the leader to transfer leadership.
    pub transfer_probability: f64,
    /// A nemesis step makes one node's disk slow for a while.
    pub slow_disk_probability: f64,
    /// Each node's clock runs up to this many percent fast or slow (its tick period is
    /// drawn once per node). Skewed clocks stretch the time a deposed leader keeps
    /// believing it leads.
    pub clock_drift_percent_max: u64,
    /// Persisting a Ready takes up to this long (uniform).
    pub fsync_latency_us_max: u64,
    /// Time between nemesis steps.
    pub nemesis_interval_us: u64,
}

/// Everything one seed runs with.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Founding voters.
    pub node_count: u64,
    /// Concurrent clients, each with at most one operation outstanding.
    pub client_count: u64,
    /// Registers the clients use; few keys make conflicts likely.
    pub key_count: u64,
    /// Length of the faulty phase.
    pub active_us: u64,
    /// Length of the healed phase at the end (clients keep going for part of it).
    pub settle_us: u64,
    /// A client gives up on a request after this long (outcome unknown).
    pub client_timeout_us: u64,
    /// Raft tick period; each node drifts from it (see `FaultKnobs::clock_drift_percent_max`).
    pub tick_us: u64,
    /// Raft: entries per append message.
    pub append_entries_max: usize,
    /// Raft: pipelined appends per follower.
    pub inflight_msgs_max: usize,
    /// A node snapshots and compacts once this many entries are applied past its snapshot.
    pub snapshot_every_entries: u64,
    /// Raft: how linearizable reads are confirmed. Lease reads assume bounded clock drift,
    /// so they are only drawn for seeds whose drift is within the lease's margin.
    pub read_mode: ReadMode,
    /// The faults.
    pub faults: FaultKnobs,
    /// A deliberate bug the checkers must catch.
    pub bug: Option<Bug>,
    /// Raft quiescence, with node liveness reporting dead nodes to raft.
    pub quiesce: bool,
    /// A client waits up to this long between operations (uniform); long pauses leave
    /// the group idle long enough to quiesce in the middle of the faults.
    pub client_think_us_max: u64,
    /// Clients asking the timestamp oracle (on the group's leader) for timestamps.
    pub timestamp_client_count: u64,
    /// The oracle persists its bound this far ahead of its clock; short windows make
    /// it raise the bound often, so leader changes meet bounds in flight.
    pub oracle_window_ms: u64,
    /// Each node's clock is set up to this far from true time (uniform, per node).
    pub clock_offset_ms_max: u64,
    /// Ranges holding the registers (besides the meta range, which holds the oracle's
    /// bound): each its own raft group on the same nodes.
    pub data_range_count: u64,
    /// A nemesis step splits a data range at a register inside it.
    pub split_probability: f64,
    /// Clients reading every register at one revision, range by range.
    pub scan_client_count: u64,
    /// Accounts (registers after the plain clients' ones) that bank clients move
    /// amounts between, by transactions across ranges.
    pub account_count: u64,
    /// Bank clients (none without accounts).
    pub bank_client_count: u64,
    /// Clients watching every register from the first revision on, in rounds merged
    /// from the ranges' histories (`ostrakon_ranges::watch_merge`).
    pub watch_client_count: u64,
    /// A range answers a watcher's round with at most about this many events (whole
    /// revisions, at least one): small limits cut histories short, so the merge must
    /// hold the other ranges back to them.
    pub watch_events_max: usize,
    /// A nemesis step merges two neighbouring data ranges (one merge in flight at a
    /// time; `merges`).
    pub merge_probability: f64,
    /// How transactions across ranges run.
    pub txn_protocol: TxnProtocol,
    /// A node's fetcher asks the member that last granted it again until it refuses,
    /// as TiKV's PD client keeps its leader, rather than the meta leader its replica
    /// knows: an asker's word may then be of a later term than the member asked.
    pub fetch_sticks_to_oracle: bool,
}

impl Scenario {
    /// Every register: the plain clients' and the accounts.
    pub fn total_keys(&self) -> u64 {
        self.key_count + self.account_count
    }
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn from_seed(rng: &mut Rng, bug: Option<Bug>) -> Scenario {
        let faults = FaultKnobs {
            drop_probability: rng.pick(&[0.0, 0.01, 0.05, 0.1]),
            duplicate_probability: rng.pick(&[0.0, 0.01, 0.05]),
            delay_us_min: 100,
            delay_us_max: rng.pick(&[1_000, 5_000, 20_000]),
            partition_probability: rng.pick(&[0.1, 0.3, 0.5]),
            crash_probability: rng.pick(&[0.1, 0.3, 0.5]),
            leader_crash_after_election_probability: rng.pick(&[0.0, 0.2, 0.5]),
            leader_crash_delay_us_max: rng.pick(&[500, 2_000, 20_000]),
            membership_change_probability: rng.pick(&[0.0, 0.1, 0.3]),
            transfer_probability: rng.pick(&[0.0, 0.1, 0.2]),
            slow_disk_probability: rng.pick(&[0.0, 0.1]),
            clock_drift_percent_max: rng.pick(&[10, 30, 50]),
            fsync_latency_us_max: rng.pick(&[100, 500, 2_000, 10_000]),
            nemesis_interval_us: rng.pick(&[200_000, 500_000, 1_000_000]),
        };
        let read_mode = if faults.clock_drift_percent_max <= 10 && rng.chance(0.5) {
            ReadMode::LeaseBased
        } else {
            ReadMode::ReadIndex
        };
        let mut scenario = Scenario {
            read_mode,
            node_count: rng.pick(&[3, 3, 5]),
            client_count: rng.range(2, 6),
            key_count: rng.range(1, 4),
            active_us: 10_000_000,
            settle_us: 4_000_000,
            client_timeout_us: 2_000_000,
            tick_us: 10_000,
            append_entries_max: rng.pick(&[1, 4, 64]),
            inflight_msgs_max: rng.pick(&[1, 4, 64]),
            snapshot_every_entries: rng.pick(&[20, 100, 1_000_000]),
            faults,
            bug,
            quiesce: rng.chance(0.75),
            client_think_us_max: rng.pick(&[20_000, 20_000, 300_000]),
            timestamp_client_count: rng.pick(&[0, 1, 2]),
            oracle_window_ms: rng.pick(&[20, 100, 1_000]),
            clock_offset_ms_max: rng.pick(&[0, 20, 500]),
            data_range_count: rng.pick(&[1, 2, 3]),
            split_probability: rng.pick(&[0.0, 0.3, 0.6]),
            scan_client_count: rng.pick(&[0, 1, 2]),
            account_count: rng.pick(&[0, 2, 4, 6]),
            bank_client_count: rng.range(1, 4),
            // Drawn apart (`draw_watchers`), so that the other knobs of a seed stay
            // what they were before watchers existed.
            watch_client_count: 0,
            watch_events_max: usize::MAX,
            // Drawn apart too (`draw_merges`).
            merge_probability: 0.0,
            // And this (`draw_txn_protocol`).
            txn_protocol: TxnProtocol::KeyLocks,
            // And this (`draw_txn_protocol`, after the protocol).
            fetch_sticks_to_oracle: false,
        };
        if scenario.account_count == 0 {
            scenario.bank_client_count = 0;
        } else {
            // Transfers are checked for isolation by reads at one revision.
            scenario.scan_client_count = scenario.scan_client_count.max(1);
        }
        if bug.is_some_and(|b| b.oracle().is_some()) {
            // A bug in the oracle needs someone asking it; and, to show, a leader
            // handing out past its bound often (short windows), then a successor whose
            // clock is behind it (offsets larger than the window) starting from the
            // bound. 20 of 200 seeds catch it, against 5 with the drawn knobs.
            scenario.timestamp_client_count = scenario.timestamp_client_count.max(4);
            scenario.oracle_window_ms = 20;
            scenario.clock_offset_ms_max = scenario.clock_offset_ms_max.max(500);
        }
        if bug.is_some_and(|b| b.range().is_some()) {
            // A bug in splits needs splits; one in reads at a revision needs them.
            scenario.split_probability = scenario.split_probability.max(0.6);
            scenario.scan_client_count = scenario.scan_client_count.max(2);
            scenario.account_count = scenario.account_count.max(4);
            scenario.bank_client_count = scenario.bank_client_count.max(2);
            // And leaderships that move (a new leader must learn its floor).
            scenario.faults.transfer_probability = scenario.faults.transfer_probability.max(0.2);
        }
        scenario
    }

    /// The merges' knob, from its own generator (see `from_seed`): none in a third of
    /// the seeds, so the seeds from before merges existed still run as they did.
    pub fn draw_merges(&mut self, rng: &mut Rng) {
        self.merge_probability = rng.pick(&[0.0, 0.3, 0.6]);
        if self
            .bug
            .and_then(Bug::range)
            .is_some_and(|bug| bug == RangeBug::MergeSkipsFreezeWait)
        {
            // Merges that go through: no transaction holding keys (a range with a lock
            // refuses to freeze) and memberships that stay alike (ranges with different
            // members refuse to merge).
            self.merge_probability = 0.6;
            self.data_range_count = self.data_range_count.max(2);
            self.account_count = 0;
            self.bank_client_count = 0;
            self.faults.membership_change_probability = 0.0;
            // Writes for the freeze to follow (`merges::maybe_freeze_behind_write`), and
            // ranges calm enough between faults for their merges to go through.
            self.client_count = self.client_count.max(5);
            self.client_think_us_max = 20_000;
            self.key_count = 6;
            self.node_count = 3;
            self.faults.partition_probability = self.faults.partition_probability.min(0.1);
            self.faults.crash_probability = self.faults.crash_probability.min(0.1);
            self.faults.nemesis_interval_us = self.faults.nemesis_interval_us.max(500_000);
            self.faults.leader_crash_after_election_probability = 0.0;
        }
    }

    /// The transaction protocol, from its own generator (see `from_seed`): the node's
    /// in half the seeds. A planted bug of the node's variant forces it (with the
    /// workload that meets it); every other planted bug keeps the key-lock variant, and
    /// so the seeds at which it was measured to be caught.
    pub fn draw_txn_protocol(&mut self, rng: &mut Rng) {
        self.txn_protocol = rng.pick(&[TxnProtocol::KeyLocks, TxnProtocol::WholeRange]);
        self.fetch_sticks_to_oracle = rng.chance(0.5);
        let Some(bug) = self.bug else {
            return;
        };
        self.txn_protocol = bug.forced_protocol();
        if self.txn_protocol == TxnProtocol::WholeRange {
            self.client_think_us_max = 20_000;
            self.scan_client_count = self.scan_client_count.max(2);
            if self.bug == Some(Bug::Range(RangeBug::FreshReadTakesFetchInFlight)) {
                // Busy clients over several ranges: reads arrive while a fetch is in
                // flight, and other leaders' writes are acknowledged meanwhile.
                self.client_count = self.client_count.max(5);
                self.key_count = self.key_count.max(3);
                self.data_range_count = self.data_range_count.max(3);
                // And a write on another range that can go round (oracle, log, answer,
                // the client's next read) while one answer from the oracle is still on
                // its way: quick disks and clients, and no lost or doubled messages
                // (a fetch asked again takes later timestamps and hides the bug). 20 of
                // 200 seeds catch it, against 2 with the drawn knobs.
                self.client_think_us_max = 2_000;
                self.faults.fsync_latency_us_max = 100;
                self.faults.drop_probability = 0.0;
                self.faults.duplicate_probability = 0.0;
            }
            if self.bug == Some(Bug::Raft(PlantedBug::ConfirmationIgnoresTerm)) {
                // Three members, so that an asker and the leader are a quorum; busy
                // range leaders fetching while the meta range's leadership moves.
                self.node_count = 3;
                self.fetch_sticks_to_oracle = true;
                self.client_count = self.client_count.max(5);
                self.key_count = self.key_count.max(3);
                self.data_range_count = self.data_range_count.max(3);
                self.faults.partition_probability = 0.5;
                self.faults.nemesis_interval_us = 200_000;
                // Quick clients: a forwarded read confirmed on its member's word ends
                // sooner than after a heartbeat round, so a client's next step comes
                // sooner too, and rarer interleavings need more of them.
                self.client_think_us_max = 2_000;
            }
        }
    }

    /// The watchers' knobs, from their own generator (see `from_seed`).
    pub fn draw_watchers(&mut self, rng: &mut Rng) {
        self.watch_client_count = rng.pick(&[0, 1, 1, 2]);
        self.watch_events_max = rng.pick(&[1, 2, 4, 64]);
        if self
            .bug
            .and_then(Bug::range)
            .is_some_and(|bug| bug == RangeBug::WatchReleasesEarly)
        {
            // Merging needs several ranges, and their histories cut short.
            self.watch_client_count = self.watch_client_count.max(2);
            self.watch_events_max = self.watch_events_max.min(2);
            self.data_range_count = self.data_range_count.max(2);
        }
    }
}
