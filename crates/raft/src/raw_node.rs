//! The application's handle on one group: inputs (`step`, `tick`, `propose`, ...) and
//! the `Ready` / `advance` cycle that makes the persistence order explicit.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::confchange::ConfChangeError;
use crate::config::{Config, ConfigError};
use crate::ids::{LogIndex, NodeId, Term};
use crate::log::RaftLog;
use crate::message::Message;
use crate::progress::ProgressState;
use crate::raft::{Proposal, ProposeError, Raft, ReadState, Role};
use crate::types::{ConfChange, ConfState, Entry, HardState, SnapshotMeta};

/// The durable state a group starts from.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// The persisted term, vote and commit index.
    pub hard_state: HardState,
    /// The latest persisted snapshot.
    pub snapshot: SnapshotMeta,
    /// The persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The index the application's state machine has applied (at least the snapshot's).
    pub applied: LogIndex,
    /// The membership as of `applied`.
    pub conf_state: ConfState,
}

impl InitialState {
    /// The index and term of the synthetic snapshot every founding member starts from.
    /// Starting at a snapshot (as TiKV does) means a member added later learns the
    /// founding membership from a snapshot rather than from entries nobody has.
    pub const BOOTSTRAP_INDEX: LogIndex = LogIndex(1);
    /// See `BOOTSTRAP_INDEX`.
    pub const BOOTSTRAP_TERM: Term = Term(1);

    /// A founding member of a new group with these voters.
    pub fn bootstrap(voters: impl IntoIterator<Item = NodeId>) -> InitialState {
        Self::founding(ConfState::with_voters(voters))
    }

    /// A founding member of a new group with this membership (learners included): the
    /// state every replica of a range created by a split starts from, with the
    /// membership of the range it split from.
    pub fn founding(conf_state: ConfState) -> InitialState {
        assert!(
            !conf_state.voters.is_empty() && !conf_state.is_joint(),
            "a group is founded with voters and not in a joint configuration"
        );
        InitialState {
            hard_state: HardState {
                term: Self::BOOTSTRAP_TERM,
                vote: NodeId::NONE,
                commit: Self::BOOTSTRAP_INDEX,
            },
            snapshot: SnapshotMeta {
                index: Self::BOOTSTRAP_INDEX,
                term: Self::BOOTSTRAP_TERM,
                conf_state: conf_state.clone(),
            },
            entries: Vec::new(),
            applied: Self::BOOTSTRAP_INDEX,
            conf_state,
        }
    }

    /// A member about to be added to an existing group: it knows nothing and will receive
    /// a snapshot from the leader.
    pub fn joining() -> InitialState {
        InitialState::default()
    }
}

/// Volatile state worth telling the application about when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The known leader, or `NodeId::NONE`.
    pub leader: NodeId,
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: Term,
}

/// Work for the application, in the order it must be done:
///
/// 1. send `messages` (they do not depend on this `Ready` being durable);
/// 2. persist `snapshot`, `entries` and `hard_state`, and sync them to disk;
/// 3. send `persisted_messages` (they promise that step 2 is durable);
/// 4. install `snapshot` in the state machine, then apply `committed_entries` and serve
///    `read_states` once applied;
/// 5. call `advance`.
///
/// No other input (`step`, `tick`, `propose`, ...) may be given between `ready` and
/// `advance`; `apply_conf_change` and `compact` may.
#[derive(Debug, Default)]
#[must_use = "a Ready must be persisted, sent and applied, then advanced"]
pub struct Ready {
    /// Role, leader or term changed.
    pub soft_state: Option<SoftState>,
    /// Persist if present.
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader: persist it and install it before applying entries.
    pub snapshot: Option<SnapshotMeta>,
    /// Entries to persist. They replace any persisted entries from `entries[0].index` on.
    pub entries: Vec<Entry>,
    /// Messages that may be sent at once.
    pub messages: Vec<Message>,
    /// Messages to send only after `hard_state`, `entries` and `snapshot` are durable:
    /// vote grants and append acknowledgements promise durability.
    pub persisted_messages: Vec<Message>,
    /// Entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Answers to read-index requests.
    pub read_states: Vec<ReadState>,
}

/// A point-in-time view of a group for status pages and tests.
#[derive(Clone, Debug)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current term.
    pub term: Term,
    /// Vote in the current term.
    pub vote: NodeId,
    /// Role.
    pub role: Role,
    /// Known leader.
    pub leader: NodeId,
    /// Commit index.
    pub commit: LogIndex,
    /// Index handed out for applying.
    pub applied: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Membership.
    pub conf_state: ConfState,
    /// Quiesced: neither ticking nor heartbeating until woken.
    pub quiesced: bool,
    /// Leader only: (member, match index, next index, state) per follower.
    pub progress: Vec<(NodeId, LogIndex, LogIndex, ProgressState)>,
}

/// One raft group as the application drives it.
pub struct RawNode {
    raft: Raft,
    prev_soft_state: SoftState,
    prev_hard_state: HardState,
    /// Between `ready` and `advance`.
    ready_in_flight: bool,
}

impl RawNode {
    /// Starts a group member from its durable state. `seed` drives the randomized
    /// election timeouts: different members must get different seeds.
    pub fn new(config: Config, state: InitialState, seed: u64) -> Result<RawNode, ConfigError> {
        config.validate()?;
        let log = RaftLog::restore(
            state.snapshot,
            state.entries,
            state.hard_state.commit,
            state.applied,
        );
        let raft = Raft::new(config, state.hard_state, log, state.conf_state, seed);
        let prev_soft_state = soft_state(&raft);
        let prev_hard_state = raft.hard_state();
        Ok(RawNode {
            raft,
            prev_soft_state,
            prev_hard_state,
            ready_in_flight: false,
        })
    }

    fn assert_not_in_ready(&self) {
        assert!(
            !self.ready_in_flight,
            "input given between ready() and advance()"
        );
    }

    /// Handles a message from another member.
    pub fn step(&mut self, message: Message) {
        self.assert_not_in_ready();
        self.raft.step(message);
    }

    /// Records that the entry at `index` of `term` is committed, as the application
    /// learned elsewhere (a merge: the left range's log commits only after the right
    /// range's freeze entry committed, and the right range's leader may be gone before
    /// this member heard its commit index). Ignored unless this log holds that entry:
    /// by log matching, the entries up to it are then the committed ones. Returns
    /// whether the commit index rose.
    pub fn commit_known(&mut self, index: LogIndex, term: Term) -> bool {
        self.assert_not_in_ready();
        if self.raft.log.term(index) != Some(term) {
            return false;
        }
        self.raft.log.commit_to(index)
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.assert_not_in_ready();
        self.raft.tick();
    }

    /// Starts an election now, as if the election timeout had elapsed: pre-vote first if
    /// enabled, and voters that heard from a leader recently refuse. No-op on a leader or
    /// a non-voter.
    pub fn campaign(&mut self) {
        self.assert_not_in_ready();
        if self.raft.role != Role::Leader && self.raft.is_promotable() {
            self.raft.campaign(false);
        }
    }

    /// Starts an election as a leadership-transfer target does: no pre-vote, and voters
    /// are asked to disregard their leader lease. For operators recovering a group whose
    /// leader is known dead, and for tests.
    pub fn force_campaign(&mut self) {
        self.assert_not_in_ready();
        if self.raft.role != Role::Leader && self.raft.is_promotable() {
            self.raft.campaign(true);
        }
    }

    /// Proposes an application command.
    pub fn propose(&mut self, data: Bytes) -> Result<Proposal, ProposeError> {
        self.assert_not_in_ready();
        self.raft.wake_leader();
        self.raft.propose(data)
    }

    /// Proposes a membership change.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposal, ProposeError> {
        self.assert_not_in_ready();
        self.raft.wake_leader();
        self.raft.propose_conf_change(change)
    }

    /// Applies a committed membership change (call while applying its entry).
    pub fn apply_conf_change(&mut self, change: &ConfChange) -> Result<ConfState, ConfChangeError> {
        self.raft.apply_conf_change(change)
    }

    /// Requests a linearizable read point; answered in `Ready::read_states`.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), ProposeError> {
        self.assert_not_in_ready();
        self.raft.wake_leader();
        self.raft.read_index(request_id)
    }

    /// Requests a linearizable read point as `read_index` does, with `confirmer`'s word
    /// that its term was `confirmer_term` at a moment after the read began (its vote
    /// for any later leader had not left it then). On a leader of that term to whom
    /// that member and itself are a quorum, the word stands for the member's answer to
    /// a heartbeat round, and the read is answered at the commit index without one
    /// (docs/PERFORMANCE.md, "An ask confirms its oracle"); otherwise it is a plain
    /// `read_index`. Returns whether the word stood for the round.
    pub fn read_index_confirmed_by(
        &mut self,
        request_id: u64,
        confirmer: NodeId,
        confirmer_term: Term,
    ) -> Result<bool, ProposeError> {
        self.assert_not_in_ready();
        self.raft.wake_leader();
        self.raft
            .read_index_confirmed_by(request_id, confirmer, confirmer_term)
    }

    /// Starts a leadership transfer to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.assert_not_in_ready();
        self.raft.wake_leader();
        self.raft.transfer_leader(target)
    }

    /// Drops log entries up to `index`, now captured in a snapshot with `conf_state`.
    pub fn compact(&mut self, index: LogIndex, conf_state: ConfState) {
        self.raft.compact(index, conf_state);
    }

    /// A snapshot stream to `to` ended, `delivered` or not. Must be called for every
    /// `InstallSnapshot` the runtime sends.
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        self.assert_not_in_ready();
        self.raft.report_snapshot(to, delivered);
    }

    /// A message to `to` could not be delivered.
    pub fn report_unreachable(&mut self, to: NodeId) {
        self.assert_not_in_ready();
        self.raft.report_unreachable(to);
    }

    /// The runtime's node liveness says `node`'s process is down: a follower quiesced
    /// under a leader there wakes and forgets it, so the group elects another leader.
    /// Must be called for every node that goes down when `Config::quiesce` is on.
    pub fn report_node_down(&mut self, node: NodeId) {
        self.assert_not_in_ready();
        self.raft.report_node_down(node);
    }

    /// The runtime's node liveness hears from `node` again after reporting it down: a
    /// quiesced leader wakes to bring that member up to date. Must be called for every
    /// node reported down that comes back.
    pub fn report_node_up(&mut self, node: NodeId) {
        self.assert_not_in_ready();
        self.raft.report_node_up(node);
    }

    /// Whether this member is quiesced: it need not be ticked until an input wakes it.
    pub fn is_quiesced(&self) -> bool {
        self.raft.is_quiesced()
    }

    /// Whether `ready` would return any work. Cheap: the event loop polls it.
    pub fn has_ready(&self) -> bool {
        let raft = &self.raft;
        !raft.msgs.is_empty()
            || !raft.msgs_after_persist.is_empty()
            || raft.log.has_ready_work()
            || !raft.reads.ready.is_empty()
            || raft.reads.has_unsent()
            || (raft.role == Role::Leader && raft.pending_broadcast)
            || self.hard_state_to_persist() != self.prev_hard_state
            || soft_state(raft) != self.prev_soft_state
    }

    fn hard_state_to_persist(&self) -> HardState {
        HardState {
            vote: self.raft.vote_to_persist(),
            ..self.raft.hard_state()
        }
    }

    /// Collects the work to do; see `Ready` for the order.
    pub fn ready(&mut self) -> Ready {
        self.assert_not_in_ready();
        self.raft.flush();
        let soft = soft_state(&self.raft);
        let hard = self.hard_state_to_persist();
        let raft = &mut self.raft;
        let committed_entries = raft.log.take_committed(raft.config.apply_bytes_max);
        if raft.role == Role::Leader {
            let applied_bytes: u64 = committed_entries.iter().map(Entry::payload_bytes).sum();
            raft.uncommitted_bytes = raft.uncommitted_bytes.saturating_sub(applied_bytes);
        }
        let ready = Ready {
            soft_state: (soft != self.prev_soft_state).then_some(soft),
            hard_state: (hard != self.prev_hard_state).then_some(hard),
            snapshot: raft.log.take_pending_snapshot(),
            entries: raft.log.take_unstable(),
            messages: std::mem::take(&mut raft.msgs),
            persisted_messages: std::mem::take(&mut raft.msgs_after_persist),
            committed_entries,
            read_states: std::mem::take(&mut raft.reads.ready),
        };
        self.prev_soft_state = soft;
        self.prev_hard_state = hard;
        self.ready_in_flight = true;
        ready
    }

    /// The last `Ready` is persisted, sent and applied.
    pub fn advance(&mut self) {
        assert!(self.ready_in_flight, "advance() without ready()");
        self.ready_in_flight = false;
        let raft = &mut self.raft;
        raft.log.mark_persisted();
        raft.term_durable = true;
        if raft.role == Role::Leader {
            // Our own write is durable now and counts toward the quorum.
            if raft.maybe_commit() {
                raft.pending_broadcast = true;
            }
            raft.maybe_leave_joint();
        }
    }

    /// A snapshot of the group's state.
    pub fn status(&self) -> Status {
        let raft = &self.raft;
        Status {
            id: raft.id(),
            term: raft.term,
            vote: raft.vote,
            role: raft.role,
            leader: raft.leader,
            commit: raft.log.committed(),
            applied: raft.log.applied(),
            last_index: raft.log.last_index(),
            conf_state: raft.conf.clone(),
            quiesced: raft.quiesced,
            progress: raft
                .progress
                .iter()
                .map(|(&id, p)| (id, p.match_index, p.next_index, p.state))
                .collect(),
        }
    }

    /// Leader only: the members known to be up and reachable now, this node included:
    /// those it heard from within the last `within_ticks` ticks.
    /// Empty when not leading. For refusing membership changes that would leave the
    /// members that are up short of a quorum.
    pub fn recently_active(&self, within_ticks: u64) -> BTreeSet<NodeId> {
        let raft = &self.raft;
        if raft.role != Role::Leader {
            return BTreeSet::new();
        }
        let since_tick = raft.now_ticks.saturating_sub(within_ticks);
        let mut active: BTreeSet<NodeId> = raft
            .progress
            .iter()
            .filter(|(_, p)| p.heard_at_tick.is_some_and(|tick| tick >= since_tick))
            .map(|(&id, _)| id)
            .collect();
        active.insert(raft.id());
        active
    }

    /// Leader only: the member a leadership transfer in progress hands over to.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.raft.transfer.as_ref().map(|transfer| transfer.target)
    }

    /// Leader only: the voters holding every committed entry, not being sent a
    /// snapshot, not reported down, and heard from within `within_ticks` ticks (this node
    /// not included): those a leadership transfer brings up to date within a round trip
    /// (an exact match with the last index would leave a busy range's followers never
    /// eligible, as entries are always in flight).
    pub fn caught_up_voters(&self, within_ticks: u64) -> Vec<NodeId> {
        let raft = &self.raft;
        if raft.role != Role::Leader {
            return Vec::new();
        }
        let committed = raft.log.committed();
        let since_tick = raft.now_ticks.saturating_sub(within_ticks);
        raft.progress
            .iter()
            .filter(|(id, p)| {
                raft.conf.voters.contains(id)
                    && !raft.down_peers.contains(id)
                    && p.match_index >= committed
                    && !matches!(p.state, ProgressState::Snapshot { .. })
                    && p.heard_at_tick.is_some_and(|tick| tick >= since_tick)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// The role of this node.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// The known leader, or `NodeId::NONE`.
    pub fn leader(&self) -> NodeId {
        self.raft.leader
    }

    /// The term of the entry at `index`, if it is in the log (or is the snapshot's).
    pub fn log_term(&self, index: LogIndex) -> Option<Term> {
        self.raft.log.term(index)
    }

    /// The entry at `index`, if it is in the log.
    pub fn log_entry(&self, index: LogIndex) -> Option<&Entry> {
        self.raft.log.entry(index)
    }

    /// The last index in the log.
    pub fn last_index(&self) -> LogIndex {
        self.raft.log.last_index()
    }

    /// The first index still in the log.
    pub fn first_index(&self) -> LogIndex {
        self.raft.log.first_index()
    }

    /// The commit index.
    pub fn commit(&self) -> LogIndex {
        self.raft.log.committed()
    }

    /// The membership as applied.
    pub fn conf_state(&self) -> &ConfState {
        &self.raft.conf
    }

    /// The latest snapshot's description.
    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        self.raft.log.snapshot()
    }

    /// What the entries held in memory weigh (payloads and a fixed cost per entry).
    pub fn log_bytes(&self) -> u64 {
        self.raft.log.bytes()
    }

    /// How far the log may be compacted without sending a snapshot to a follower that
    /// keeps up: as a leader, the lowest match index of the followers heard from within
    /// `within_ticks` ticks and not reported down (a follower away that long is sent a
    /// snapshot anyway, as TiKV's raft log GC does once the log is too large); a
    /// follower being sent a snapshot counts at that snapshot's index, so the snapshot
    /// it waits for (a file written when it was first needed) is not compacted past
    /// before it is sent. Otherwise no limit (`LogIndex(u64::MAX)`).
    pub fn compaction_floor(&self, within_ticks: u64) -> LogIndex {
        let raft = &self.raft;
        if raft.role != Role::Leader {
            return LogIndex(u64::MAX);
        }
        let since_tick = raft.now_ticks.saturating_sub(within_ticks);
        raft.progress
            .iter()
            .filter(|(id, p)| {
                !raft.down_peers.contains(id)
                    && p.heard_at_tick.is_some_and(|tick| tick >= since_tick)
            })
            .map(|(_, p)| match p.state {
                ProgressState::Snapshot { pending_index } => pending_index,
                _ => p.match_index,
            })
            .min()
            .unwrap_or(LogIndex(u64::MAX))
    }
}

fn soft_state(raft: &Raft) -> SoftState {
    SoftState {
        leader: raft.leader,
        role: raft.role,
        term: raft.term,
    }
}
