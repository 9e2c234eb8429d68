//! A simulated machine: a durable disk that survives crashes, and running replicas of
//! ranges (each a raft group with its key-value state machine) that do not.

use std::collections::{BTreeMap, VecDeque};

use ostrakon_check::OpId;
use ostrakon_raft::{
    ConfChange, Entry, GroupId, HardState, LogIndex, Message, NodeId, RawNode, Ready, SnapshotMeta,
    Term,
};

use crate::kv::{Command, KvState};

/// What survives a crash, for one replica.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// Persisted term, vote and commit.
    pub hard_state: HardState,
    /// Persisted snapshot description.
    pub snapshot: SnapshotMeta,
    /// The state machine as of `snapshot.index`.
    pub snapshot_data: KvState,
    /// Persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl Disk {
    /// Whether the entry (index, term) is durable here, directly or inside the snapshot.
    /// A snapshot only ever covers committed entries, so it holds whatever committed
    /// entry sits at an index it covers.
    pub fn holds(&self, index: LogIndex, term: Term) -> bool {
        if index <= self.snapshot.index {
            return true;
        }
        // Entries are contiguous after the snapshot (asserted in `persist`): index directly.
        let position = (index.0 - self.snapshot.index.0 - 1) as usize;
        self.entries
            .get(position)
            .is_some_and(|e| e.index == index && e.term == term)
    }

    /// Makes a Ready's snapshot, entries and hard state durable.
    pub fn persist(&mut self, ready: &Ready, snapshot_data: Option<KvState>) {
        if let Some(meta) = &ready.snapshot {
            self.snapshot = meta.clone();
            self.snapshot_data = snapshot_data.expect("a snapshot arrives with its data");
            // Raft empties its log when it restores a snapshot.
            self.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            assert!(
                self.entries
                    .last()
                    .map_or(self.snapshot.index, |e| e.index)
                    .next()
                    == first.index,
                "persisted log would have a gap before {:?}",
                first.index
            );
            self.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
    }

    /// Drops entries covered by a new local snapshot.
    pub fn compact(&mut self, meta: SnapshotMeta, data: KvState) {
        self.entries.retain(|e| e.index > meta.index);
        self.snapshot = meta;
        self.snapshot_data = data;
    }
}

/// A client request as it reaches a node.
#[derive(Clone, Debug)]
pub enum Request {
    /// Read a register (linearizably, through ReadIndex).
    Read {
        /// The register.
        key: u64,
    },
    /// Replicate a write.
    Write(Command),
    /// Ask the timestamp oracle (on the meta range's leader) for `count` timestamps.
    Timestamps {
        /// How many.
        count: u64,
        /// A member's word that its meta term was this when it asked, after what the
        /// timestamps are for began (`ostrakon_raft::RawNode::read_index_confirmed_by`);
        /// clients' requests carry none.
        word: Option<AskWord>,
    },
    /// A command of two-phase commit, proposed by the range's leader.
    Txn(crate::txn_kv::TxnCommand),
    /// Read every register of the range as of `revision`, at its leader (one range of a
    /// read across ranges at one revision).
    ScanAt {
        /// The first register the client still needs (checked against the span).
        key: u64,
        /// The revision read at.
        revision: u64,
        /// Set when a follower sends the read on to its range's leader, as the node's
        /// read barrier (its word of its range term, read after the revision was handed
        /// out: `ostrakon_raft::RawNode::read_index_confirmed_by`); clients' reads carry
        /// none.
        word: Option<AskWord>,
        /// The follower that sent it on and the barrier's number there: the leader
        /// answers the follower with the index to read at (`Event::BarrierAnswer`), and
        /// the follower reads its own replica once it has applied that far, as the
        /// node's read barrier does.
        barrier: Option<(NodeId, u64)>,
    },
    /// A watcher's round in one range, at its leader: the range's history from `from`
    /// on, once the leader raised its floor to `revision` and applied what it had.
    WatchAt {
        /// The first register the watcher still needs this round.
        key: u64,
        /// The round's revision.
        revision: u64,
        /// The watcher's next revision.
        from: u64,
        /// At most about this many events (whole revisions, at least one).
        events_max: usize,
    },
}

impl Request {
    /// The register the request is about, if any.
    pub fn key(&self) -> Option<u64> {
        match self {
            Request::Read { key } | Request::ScanAt { key, .. } | Request::WatchAt { key, .. } => {
                Some(*key)
            }
            Request::Write(Command::Put { key, .. } | Command::Cas { key, .. }) => Some(*key),
            Request::Write(
                Command::OracleBound { .. }
                | Command::Split { .. }
                | Command::Freeze { .. }
                | Command::Unfreeze { .. }
                | Command::Merge(_)
                | Command::FenceMerge { .. },
            )
            | Request::Timestamps { .. }
            | Request::Txn(_) => None,
        }
    }
}

/// Something for one of a node's replicas to handle, queued while it is busy persisting.
#[derive(Clone, Debug)]
pub enum Input {
    /// A raft message, with the snapshot data if it is `InstallSnapshot`.
    Message(Message, Option<Box<KvState>>),
    /// One raft tick.
    Tick,
    /// A client request, routed by the client to this range.
    Request {
        /// The client.
        client: u64,
        /// Its operation.
        op: OpId,
        /// What it asks.
        request: Request,
    },
    /// The nemesis proposes a membership change (only acted on by a leader).
    ConfChange(ConfChange),
    /// The simulator's own progress probe write (only acted on by a leader).
    Probe,
    /// The nemesis proposes a command of the range layer, such as a split (only acted on
    /// by a leader).
    Propose(Command),
    /// The nemesis asks for a leadership transfer (only acted on by a leader).
    Transfer(NodeId),
    /// The snapshot stream to this node ended, delivered or not (as a runtime's
    /// transport reports it).
    SnapshotReport(NodeId, bool),
    /// Node liveness: this node has heard nothing from that one for an election timeout.
    NodeDown(NodeId),
    /// Node liveness: this node hears from that one again after reporting it down.
    NodeUp(NodeId),
    /// The oracle granted the revision of a write or prepare this range's leader
    /// fetched: proposed if the leadership that fetched it still leads.
    Granted(FetchedWrite),
    /// A read at a revision held for a fetch in flight, released once the fetch's
    /// writes were proposed (queued behind them).
    ReadAt(HeldRead),
    /// A fresh read with the revision its fetch gave it, queued behind the fetch's
    /// writes.
    FreshAt(FreshRead, u64, Option<AskWord>),
    /// A left range's replica here holds a merge whose freeze, at this entry of this
    /// range's log, is committed (the left range committed the merge after it): the
    /// replica may not have heard so from a leader gone since (`RawNode::commit_known`).
    CommitKnown(LogIndex, Term),
}

/// A member's word with its oracle ask or forwarded read (as the node's `MemberWord`),
/// and what the checker knows of the moment it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AskWord {
    /// The asking member.
    pub member: NodeId,
    /// Its term of the range, as its event loop last raised it (`Running::meta_word`,
    /// `Replica::term_word`).
    pub term: ostrakon_raft::Term,
    /// The range's highest commit anywhere when the word was given: the request began
    /// then, so its read index must not be below it (the stale-read check's floor).
    pub commit_floor: LogIndex,
}

/// A client operation waiting at a replica.
#[derive(Clone, Copy, Debug)]
pub struct Waiting {
    /// The client.
    pub client: u64,
    /// Its operation.
    pub op: OpId,
    /// For reads: the register.
    pub key: u64,
    /// For reads: the highest commit index any replica of the range knew when the read
    /// arrived. Every entry up to it was committed before the read began, so a
    /// linearizable read index is at least this (a deposed leader answering from a
    /// stale lease is not).
    pub read_floor: LogIndex,
    /// For timestamp requests: how many were asked for (None: a register operation).
    pub timestamps: Option<u64>,
    /// For reads at a revision: the revision.
    pub scan_at: Option<u64>,
    /// Answered only once the replica has applied this far (a read at a revision: the
    /// leader's last index when the read raised its floor, so that writes proposed
    /// before, possibly below the read's revision, are seen).
    pub wait_index: LogIndex,
    /// For a watcher's round: its next revision and how many events it takes at most
    /// (a read at `scan_at` that answers with the history rather than the values).
    pub watch_from: Option<(u64, usize)>,
    /// For a fresh read of a register: the revision it reads at.
    pub fresh_at: Option<u64>,
    /// For a read barrier a follower sent its range's leader: where the leader's answer
    /// goes (the follower answers the client).
    pub answer_to: Option<BarrierFrom>,
}

/// A read barrier's way back: the follower that sent it, the leader it reached, and its
/// number at the follower.
#[derive(Clone, Copy, Debug)]
pub struct BarrierFrom {
    /// The follower waiting for the answer.
    pub follower: NodeId,
    /// The leader answering.
    pub leader: NodeId,
    /// The barrier's number at the follower.
    pub barrier: u64,
}

impl Waiting {
    /// A register operation's request, with nothing else to wait for.
    pub fn register(client: u64, op: OpId, key: u64, read_floor: LogIndex) -> Waiting {
        Waiting {
            client,
            op,
            key,
            read_floor,
            timestamps: None,
            scan_at: None,
            wait_index: LogIndex(0),
            watch_from: None,
            fresh_at: None,
            answer_to: None,
        }
    }
}

/// A write or prepare a range's leader holds until the oracle grants its revision (the
/// node's variant, `TxnProtocol::WholeRange`).
#[derive(Clone, Debug)]
pub struct FetchedWrite {
    /// The range it goes to.
    pub group: GroupId,
    /// A register write or a transaction's prepare.
    pub request: Request,
    /// The client waiting for it.
    pub waiting: Waiting,
    /// The term of the leadership that fetches its revision.
    pub term: Term,
}

impl ostrakon_ranges::read_wait::Stamped for FetchedWrite {
    fn stamp(&mut self, revision: u64) {
        match &mut self.request {
            Request::Write(command) => *command = command.with_revision(revision),
            Request::Txn(crate::txn_kv::TxnCommand::Prepare { revision: r, .. }) => *r = revision,
            other => panic!("{other:?} takes no revision"),
        }
    }
}

/// A read at a revision a range's leader holds until the fetch in flight when it
/// arrived is answered (the node's variant).
#[derive(Clone, Copy, Debug)]
pub struct HeldRead {
    /// The range read.
    pub group: GroupId,
    /// Its read index request's id.
    pub request_id: u64,
    /// The client waiting for it (with the revision and the watch round, if any).
    pub waiting: Waiting,
    /// The word of the follower that sent it on, if one did.
    pub word: Option<AskWord>,
}

/// A linearizable read of a register at its range's leader (the node's variant): it
/// takes the last timestamp of the node's next fetch as its revision.
#[derive(Clone, Copy, Debug)]
pub struct FreshRead {
    /// The range read.
    pub group: GroupId,
    /// Its read index request's id.
    pub request_id: u64,
    /// The client waiting for it.
    pub waiting: Waiting,
    /// The term of the leadership it arrived at.
    pub term: Term,
}

/// The node's revision fetcher: writes, barriers and fresh reads.
pub type Revisions = ostrakon_ranges::read_wait::RevisionFetcher<FetchedWrite, HeldRead, FreshRead>;

/// One range's replica on a running node: its raft group and state machine.
pub struct Replica {
    /// The raft group.
    pub raw: RawNode,
    /// The term this replica gives its word of with the reads it sends on to its
    /// range's leader: raised when a Ready is taken, before its messages leave (the
    /// node's `TermWord`), from the recovered term at start.
    pub term_word: Term,
    /// The state machine.
    pub kv: KvState,
    /// Index of the last entry applied to `kv`. Invariant: never decreases while up.
    pub applied: LogIndex,
    /// The Ready being persisted, with the snapshot data it carries.
    pub busy: Option<(Ready, Option<KvState>)>,
    /// Applying a persisted Ready's entries, before `advance`: an input now (a merge
    /// held on another range telling this one its freeze committed) waits in the inbox.
    pub applying: bool,
    /// Inputs that arrived while busy or applying.
    pub inbox: VecDeque<Input>,
    /// Snapshot data received with `InstallSnapshot`, until raft hands it out.
    pub incoming_snapshot: Option<(LogIndex, KvState)>,
    /// Client writes proposed here: index → (term, waiting client).
    pub proposals: BTreeMap<LogIndex, (Term, Waiting)>,
    /// While leading: the resolves and releases it proposed that have not applied yet,
    /// by log index (the node's `Replica::unlocking`): a prepare held off only by their
    /// locks is proposed behind them.
    pub unlocks_in_log: BTreeMap<LogIndex, ostrakon_ranges::txn::TxnId>,
    /// Client reads waiting for their read index: request id → client.
    pub reads: BTreeMap<u64, Waiting>,
    /// Reads with a read index, waiting for applied to reach it.
    pub reads_waiting_apply: Vec<(LogIndex, Waiting)>,
    /// The membership before the last change this replica applied. A write committed
    /// just before a change is applied was counted under this configuration; only one
    /// change is in flight at a time, so no older configuration can have counted it.
    pub conf_before_last_change: ostrakon_raft::ConfState,
    /// The timestamp oracle (the range layer's real code), used while leading the meta
    /// range.
    pub oracle: ostrakon_ranges::Oracle,
    /// Timestamp requests whose read index has applied, to be served (or, at the
    /// oracle's bound, waiting for the next bound to apply).
    pub timestamps_confirmed: Vec<Waiting>,
    /// The range layer's read floor, while leading a data range.
    pub floor: ostrakon_ranges::read_floor::ReadFloor,
    /// The oracle request in flight for the floor of the current leadership, if any.
    pub floor_fetch: Option<u64>,
    /// While leading: when it first saw each transaction's lock (a lock held too long
    /// is pushed: its primary is asked how the transaction ended).
    pub locks_seen_us: BTreeMap<ostrakon_ranges::txn::TxnId, u64>,
    /// The pushes in flight: request number by transaction.
    pub pushes: BTreeMap<ostrakon_ranges::txn::TxnId, u64>,
    /// While leading: when it last proposed a transaction horizon.
    pub horizon_proposed_us: u64,
    /// Committed entries not applied yet because the first is a merge whose right
    /// range's replica here has not applied its freeze (`ostrakon_ranges::merge`).
    pub held: VecDeque<Entry>,
}

impl Replica {
    /// Whether this replica, leading, proposed a resolve or release of `txn` that has
    /// not applied yet: a prepare proposed now applies after it.
    pub fn unlocking(&self, txn: ostrakon_ranges::txn::TxnId) -> bool {
        self.unlocks_in_log
            .values()
            .any(|&unlocked| unlocked == txn)
    }

    /// Forgets the unlocks at or below `applied`: applied, or replaced by another
    /// leader's entries, their locks are the state machine's to tell now.
    pub fn forget_applied_unlocks(&mut self) {
        self.unlocks_in_log = self.unlocks_in_log.split_off(&self.applied.next());
    }
}

/// A node while it is up: its replicas, and node liveness (shared by all of them).
pub struct Running {
    /// The replicas, by range.
    pub replicas: BTreeMap<GroupId, Replica>,
    /// Node liveness: when each other node was last heard from (any message or ping).
    /// A node never heard from counts from `started_us`.
    pub heard_us: BTreeMap<NodeId, u64>,
    /// When this life started.
    pub started_us: u64,
    /// Nodes reported down to raft and not heard from since.
    pub down: std::collections::BTreeSet<NodeId>,
    /// When this node next looks at its ranges' leaders, to spread them.
    pub next_spread_us: u64,
    /// The load it served as leader at its last look, and when (what the runtime gossips
    /// to the other nodes).
    pub leading_load: Option<(f64, u64)>,
    /// The loads it handed other nodes lately.
    pub handoffs: ostrakon_ranges::leader_balance::RecentHandoffs,
    /// Since when (as its looks saw) it leads each range it leads: its rate of a range
    /// it just took ramps up over the runtime's 10 s window.
    pub led_since_us: BTreeMap<GroupId, u64>,
    /// The revisions its range leaders fetch for their writes (the node's variant).
    pub revisions: Revisions,
    /// Its fetch in flight to the oracle, if any: the request's number and the
    /// fetcher's number of the fetch.
    pub fetch_request: Option<(u64, u64)>,
    /// The member that last granted this node's fetch, asked first while the scenario's
    /// fetchers stick to it (`Scenario::fetch_sticks_to_oracle`).
    pub last_oracle: Option<NodeId>,
    /// The meta range's term this node gives its word of with its oracle asks, raised
    /// as the node's event loop raises it: when a Ready of its meta replica is taken,
    /// before the Ready's messages leave (the node's `TermWord::raise`); from the
    /// recovered term at start. Term 0: no word.
    pub meta_word: ostrakon_raft::Term,
    /// The reads this node sent on to their ranges' leaders as read barriers, by the
    /// barrier's number: their range and client, until the leader's answer arrives.
    pub barriers_sent: BTreeMap<u64, (GroupId, Waiting)>,
}

/// A simulated machine.
pub struct SimNode {
    /// Durable state, one disk area per replica it holds.
    pub disks: BTreeMap<GroupId, Disk>,
    /// The process, when up.
    pub running: Option<Running>,
    /// Incremented at every crash, so events scheduled for a previous life are ignored.
    pub epoch: u64,
    /// This node's tick period (drifts from the nominal one like a real clock).
    pub tick_us: u64,
    /// Persist latency is uniform in `[0, fsync_latency_us_max]`.
    pub fsync_latency_us_max: u64,
    /// How far this node's wall clock is ahead of true time (clocks are skewed).
    pub clock_offset_ms: u64,
}
