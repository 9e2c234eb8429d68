//! The raft state machine of one group: roles, terms, and message dispatch. Election,
//! replication, reads and membership live in sibling modules as further `impl Raft` blocks.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{BugKind, Config};
use crate::ids::{LogIndex, NodeId, Term};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::Progress;
use crate::read_queue::ReadIndexState;
pub use crate::types::ReadState;
use crate::types::{ConfState, Entry, EntryPayload, HardState};

/// The role a node plays in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks, without bumping its term, whether it could win an election.
    PreCandidate,
    /// Campaigns for leadership in a new term.
    Candidate,
    /// Leads: the only role that appends entries.
    Leader,
}

/// Why a proposal (or a read, or a transfer) was refused. Nothing was appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader is known (an election is under way); retry later.
    NoLeader,
    /// This node is not the leader; `leader` is, as far as this node knows.
    NotLeader {
        /// The known leader.
        leader: NodeId,
    },
    /// Leadership is being transferred to `target`; retry at the new leader.
    TransferInProgress {
        /// The node leadership is moving to.
        target: NodeId,
    },
    /// A membership change is already in progress; retry once it is applied.
    ConfChangePending,
    /// Too many uncommitted bytes; retry once the log drains.
    Overloaded,
    /// The transfer target is not a voter of this group.
    NotAVoter {
        /// The node named.
        node: NodeId,
    },
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NoLeader => write!(f, "no leader"),
            ProposeError::NotLeader { leader } => {
                write!(f, "not the leader; the leader is node {leader}")
            }
            ProposeError::TransferInProgress { target } => {
                write!(f, "leadership is being transferred to node {target}")
            }
            ProposeError::ConfChangePending => write!(f, "a membership change is already pending"),
            ProposeError::Overloaded => write!(f, "too many uncommitted proposals"),
            ProposeError::NotAVoter { node } => write!(f, "node {node} is not a voter"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// Where a proposal landed. It succeeded if and only if the entry committed at `index`
/// has this `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The index the entry was appended at.
    pub index: LogIndex,
    /// The term it was appended in.
    pub term: Term,
}

/// A leadership transfer under way.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Transfer {
    pub target: NodeId,
    pub elapsed_ticks: u32,
}

/// The raft state machine of one group on one node.
pub struct Raft {
    pub(crate) config: Config,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) role: Role,
    /// Invariant: `role == Leader` implies `leader == config.id`.
    pub(crate) leader: NodeId,
    pub(crate) log: RaftLog,
    /// The membership as applied.
    pub(crate) conf: ConfState,
    /// The leader's view of every other member; empty unless leader.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Votes received in the current (pre-)campaign.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    pub(crate) election_elapsed_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    /// Drawn from `[election_ticks, 2 * election_ticks)` at every reset.
    pub(crate) randomized_election_ticks: u32,
    /// State of the caller-seeded generator for election timeouts.
    pub(crate) rng_state: u64,
    /// No new membership change may be proposed until `applied >= pending_conf_index`.
    pub(crate) pending_conf_index: LogIndex,
    pub(crate) transfer: Option<Transfer>,
    pub(crate) reads: ReadIndexState,
    /// Payload bytes proposed by this leader and not yet applied.
    pub(crate) uncommitted_bytes: u64,
    /// Set when new entries or a new commit index should be broadcast at the next flush;
    /// deferring the broadcast batches every proposal made between two `Ready`s.
    pub(crate) pending_broadcast: bool,
    /// Whether the current term and vote are durable. Until they are, every message waits
    /// behind the persistence barrier: a leader elected within one Ready (a single voter)
    /// must not replicate entries of a term it could forget in a crash.
    pub(crate) term_durable: bool,
    /// Ticks since this node started; the leader's lease is measured in them.
    pub(crate) now_ticks: u64,
    /// The leader told a transfer target to campaign in this term: the target will ask
    /// voters to disregard their leases, so this leader's lease is void.
    pub(crate) timeout_now_sent: bool,
    /// Idle: neither ticks nor heartbeats until woken (see `quiesce`).
    /// Invariant: only a leader or a follower with a known leader is quiesced.
    pub(crate) quiesced: bool,
    /// Follower: woken from quiescence by another member (a candidate's pre-vote) and
    /// not heard from its leader since. Its leader may still be asleep, holding no
    /// lease, so a report that the leader's node is down is acted on as if this member
    /// still slept (`report_node_down`).
    pub(crate) leader_unheard_since_wake: bool,
    /// Leader: quiescing heartbeats are out; it quiesces once every member acknowledged
    /// one (a member that missed it would keep a stale commit index, and a learner
    /// never times out to ask again).
    pub(crate) quiescing: Option<crate::quiescing::Quiescing>,
    /// Nodes the runtime's node liveness reports down (`report_node_down`) and not up
    /// since. A leader quiesces without waiting for them.
    pub(crate) down_peers: BTreeSet<NodeId>,
    /// Heartbeat acknowledgements of heartbeats sent before this tick are no evidence
    /// for a lease: raised when a quiesced leader wakes, since its clock stood still
    /// while its followers' liveness clocks ran.
    pub(crate) lease_floor_tick: u64,
    /// Messages that may leave now.
    pub(crate) msgs: Vec<Message>,
    /// Messages that may leave only once the entries and hard state are durable.
    pub(crate) msgs_after_persist: Vec<Message>,
}

impl Raft {
    /// A node with the given durable state. `conf` is the membership as of `log.applied()`.
    pub(crate) fn new(
        config: Config,
        hard_state: HardState,
        log: RaftLog,
        conf: ConfState,
        seed: u64,
    ) -> Raft {
        if let Err(err) = config.validate() {
            panic!("{err}");
        }
        assert!(
            hard_state.commit <= log.last_index(),
            "hard state commit beyond the log"
        );
        let mut raft = Raft {
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: NodeId::NONE,
            log,
            conf,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_ticks: config.election_ticks,
            // splitmix64 must not start from zero-ish constants; mix the id in.
            rng_state: seed ^ 0x9E37_79B9_7F4A_7C15 ^ config.id.0.rotate_left(17),
            pending_conf_index: LogIndex(0),
            transfer: None,
            reads: ReadIndexState::default(),
            uncommitted_bytes: 0,
            pending_broadcast: false,
            term_durable: true,
            now_ticks: 0,
            timeout_now_sent: false,
            quiesced: false,
            leader_unheard_since_wake: false,
            quiescing: None,
            down_peers: BTreeSet::new(),
            lease_floor_tick: 0,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            config,
        };
        raft.log.commit_to(hard_state.commit);
        raft.reset_randomized_election_timeout();
        raft
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub(crate) fn has_bug(&self, bug: BugKind) -> bool {
        self.config.has_bug(bug)
    }

    /// The durable part of the state.
    pub(crate) fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    /// Whether this node may campaign: it is a voter (learners and removed nodes never do).
    pub(crate) fn is_promotable(&self) -> bool {
        self.conf.is_voter(self.config.id)
    }

    /// Members other than this node, in id order.
    pub(crate) fn peers(&self) -> BTreeSet<NodeId> {
        let mut members = self.conf.members();
        members.remove(&self.config.id);
        members
    }

    // --- Role changes: the only place `role` is written. -------------------------------

    fn reset(&mut self, term: Term) {
        if self.term != term {
            assert!(
                term > self.term,
                "term must not go back: {:?} -> {term:?}",
                self.term
            );
            self.term = term;
            self.vote = NodeId::NONE;
            self.term_durable = false;
        }
        self.timeout_now_sent = false;
        self.quiesced = false;
        self.leader_unheard_since_wake = false;
        self.quiescing = None;
        self.leader = NodeId::NONE;
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.reset_randomized_election_timeout();
        self.votes.clear();
        self.progress.clear();
        self.transfer = None;
        self.pending_broadcast = false;
        self.uncommitted_bytes = 0;
    }

    /// Follow `leader` (or no one) in `term`.
    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        let (previous_leader, previous_term) = (self.leader, self.term);
        self.fail_pending_reads();
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if previous_leader != leader || previous_term != term {
            // The leader that had our forwarded reads may have lost them with its term.
            self.fail_forwarded_reads();
        }
    }

    /// Ask for pre-votes for `term + 1` without changing the term or the vote.
    pub(crate) fn become_pre_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not pre-campaign");
        self.fail_forwarded_reads();
        self.votes.clear();
        self.leader = NodeId::NONE;
        self.quiesced = false;
        self.leader_unheard_since_wake = false;
        self.role = Role::PreCandidate;
    }

    /// Campaign in a new term, voting for ourselves.
    pub(crate) fn become_candidate(&mut self) {
        assert_ne!(self.role, Role::Leader, "a leader does not campaign");
        self.fail_forwarded_reads();
        let term = self.term.next();
        self.reset(term);
        self.vote = self.config.id;
        self.role = Role::Candidate;
    }

    /// Lead the current term: reset every follower's progress and append the empty entry
    /// that will commit entries of earlier terms (5.4.2).
    pub(crate) fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = self.config.id;
        let next = self.log.last_index().next();
        for id in self.peers() {
            let mut progress = Progress::new(next, self.config.inflight_msgs_max);
            progress.recent_active = true;
            self.progress.insert(id, progress);
        }
        // A membership change may sit unapplied in the log; refuse new ones until it is applied.
        self.pending_conf_index = self.log.last_index();
        self.append_entry(EntryPayload::Empty);
    }

    // --- Leader helpers shared by several modules ---------------------------------------

    /// Appends an entry in the current term and schedules its broadcast.
    pub(crate) fn append_entry(&mut self, payload: EntryPayload) -> LogIndex {
        assert_eq!(self.role, Role::Leader);
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.term,
            index,
            payload,
        };
        self.uncommitted_bytes += entry.payload_bytes();
        self.log.append_own(entry);
        self.pending_broadcast = true;
        // A single-voter group commits as soon as its own write is durable (in advance).
        index
    }

    /// The index this node acknowledges for itself: what is durable, since a write counts
    /// toward the quorum only once it survives a crash.
    pub(crate) fn self_acked(&self) -> LogIndex {
        if self.has_bug(BugKind::AckBeforePersist) {
            return self.log.last_index();
        }
        self.log.persisted()
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        assert_ne!(to, self.config.id, "a node does not message itself");
        let message = Message {
            group: self.config.group,
            from: self.config.id,
            to,
            term: self.term,
            body,
        };
        self.queue(message);
    }

    /// Queues a message on the right side of the persistence barrier.
    pub(crate) fn queue(&mut self, message: Message) {
        let early_ok = match message.body {
            MessageBody::AppendResponse { .. } => self.has_bug(BugKind::AckBeforePersist),
            MessageBody::VoteResponse { .. } => self.has_bug(BugKind::VoteNotPersisted),
            ref body => body.may_send_before_persist() && self.term_durable,
        };
        if early_ok {
            self.msgs.push(message);
        } else {
            // Vote grants and append acknowledgements promise durable state.
            self.msgs_after_persist.push(message);
        }
    }

    // --- Timers -------------------------------------------------------------------------

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        if self.quiesced {
            // The runtime need not tick a quiesced group at all; if it does, time stands
            // still for it, as it would have.
            return;
        }
        self.now_ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => self.tick_election(),
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks < self.randomized_election_ticks {
            return;
        }
        if self.is_promotable() {
            self.election_elapsed_ticks = 0;
            self.campaign(false);
        } else if self.maybe_ask_leader_for_news() {
            self.election_elapsed_ticks = 0;
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.config.election_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.maybe_keep_leadership() {
                return;
            }
        }
        if let Some(transfer) = self.transfer.as_mut() {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= self.config.transfer_timeout_ticks {
                // Give up: the target did not take over in time; accept proposals again.
                self.transfer = None;
            }
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed_ticks = 0;
            if self.maybe_quiesce() {
                return;
            }
            let last_index = self.log.last_index();
            for progress in self.progress.values_mut() {
                progress.note_periodic_heartbeat(last_index);
            }
            let round = self.reads.round_in_flight();
            self.bcast_heartbeat(round);
        }
    }

    /// Check-quorum: step down unless a quorum was heard from since the last check.
    fn maybe_keep_leadership(&mut self) -> bool {
        let me = self.config.id;
        let active =
            |id: NodeId| Some(id == me || self.progress.get(&id).is_some_and(|p| p.recent_active));
        if crate::quorum::vote_result(&self.conf, active) != crate::quorum::VoteResult::Won {
            let term = self.term;
            self.become_follower(term, NodeId::NONE);
            return false;
        }
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
        true
    }

    pub(crate) fn reset_randomized_election_timeout(&mut self) {
        // splitmix64: tiny, deterministic given the caller's seed.
        self.rng_state = self.rng_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let election_ticks = self.config.election_ticks;
        self.randomized_election_ticks = election_ticks + (z % u64::from(election_ticks)) as u32;
    }

    // --- Message dispatch ---------------------------------------------------------------

    /// Handles a message from another member of the group.
    pub fn step(&mut self, m: Message) {
        assert_eq!(
            m.to, self.config.id,
            "message for {:?} delivered to {:?}",
            m.to, self.config.id
        );
        assert_eq!(m.group, self.config.group, "message for another group");
        if self.quiesced && !self.is_quiesced_traffic(&m) {
            if self.role == Role::Follower && m.from != self.leader {
                self.leader_unheard_since_wake = true;
            }
            self.wake();
        }
        if m.from == self.leader && m.term >= self.term {
            self.leader_unheard_since_wake = false;
        }
        if self.down_peers.remove(&m.from) && self.role == Role::Leader {
            // A message from a member reported down shows it is up, whether or not the
            // runtime has said so yet: the leader must not quiesce without it.
            self.wake();
        }
        if let MessageBody::ReadIndexResponse { request_id, index } = m.body {
            // A refusal is meaningful in any term: one sent just before the leader's term
            // ended must still reach the waiting read. An index only from this node's
            // leader in its term (forwarded reads are failed when either changes): an
            // answer to a message this node sent before it restarted, under an id it
            // reuses now, was confirmed by its word of that time, not this read's (found
            // by review).
            if index.is_none() || (m.term == self.term && m.from == self.leader) {
                self.handle_read_index_response(request_id, index);
            }
            return;
        }
        if let (MessageBody::ReadIndex { request_id }, true) = (&m.body, m.term < self.term) {
            // Forwarded to a leader of an older term: refuse, so the follower retries now
            // rather than waiting for a leader change.
            self.refuse_read_index(m.from, *request_id);
            return;
        }
        if m.term > self.term {
            if !self.step_higher_term(&m) {
                return;
            }
        } else if m.term < self.term {
            self.step_lower_term(&m);
            return;
        }
        if let MessageBody::RequestVote {
            pre_vote,
            last_index,
            last_term,
            ..
        } = m.body
        {
            self.handle_vote_request(&m, pre_vote, last_index, last_term);
            return;
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    /// A message from a higher term. Returns whether to go on processing it.
    fn step_higher_term(&mut self, m: &Message) -> bool {
        match m.body {
            MessageBody::RequestVote {
                pre_vote, transfer, ..
            } => {
                if !transfer && self.in_leader_lease() {
                    // We heard from a leader within the election timeout: a vote request
                    // now comes from a node that is disrupting a healthy leader.
                    return false;
                }
                if pre_vote {
                    return true; // A pre-vote never changes our term.
                }
                self.become_follower(m.term, NodeId::NONE);
                true
            }
            MessageBody::VoteResponse {
                pre_vote: true,
                granted: true,
            } => {
                // Granted pre-votes carry the term we would campaign in.
                true
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(m.term, m.from);
                true
            }
            _ => {
                self.become_follower(m.term, NodeId::NONE);
                true
            }
        }
    }

    /// A message from a lower term: tell stale leaders and pre-candidates about ours.
    fn step_lower_term(&mut self, m: &Message) {
        match m.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                // A leader cut off by a partition may never hear a vote request; this
                // answer tells it a newer term exists so it steps down.
                self.send(
                    m.from,
                    MessageBody::AppendResponse {
                        index: self.log.last_index(),
                        reject: None,
                    },
                );
            }
            MessageBody::RequestVote { pre_vote: true, .. } => {
                self.send(
                    m.from,
                    MessageBody::VoteResponse {
                        pre_vote: true,
                        granted: false,
                    },
                );
            }
            _ => {}
        }
    }

    /// With check-quorum, a follower that heard from its leader within the election
    /// timeout refuses to help depose it.
    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed_ticks < self.config.election_ticks
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.election_elapsed_ticks = 0;
                self.leader = m.from;
                self.handle_append(m.from, prev_index, prev_term, &entries, commit);
            }
            MessageBody::Heartbeat {
                commit,
                read_round,
                sent_tick,
                quiesce,
            } => {
                self.election_elapsed_ticks = 0;
                self.leader = m.from;
                self.handle_heartbeat(m.from, commit, read_round, sent_tick);
                if quiesce {
                    self.maybe_quiesce_follower(commit);
                }
            }
            MessageBody::InstallSnapshot { meta } => {
                self.election_elapsed_ticks = 0;
                self.leader = m.from;
                self.handle_snapshot(m.from, meta);
            }
            MessageBody::TimeoutNow => {
                if self.is_promotable() {
                    // Leadership transfer: campaign at once, skipping pre-vote and leases.
                    self.campaign(true);
                }
            }
            MessageBody::ReadIndex { request_id } => self.refuse_read_index(m.from, request_id),
            MessageBody::AppendResponse { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::VoteResponse { .. }
            | MessageBody::RequestVote { .. }
            | MessageBody::ReadIndexResponse { .. } => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // A leader exists in our term (or the term we pre-campaign for): follow it.
                let term = m.term;
                self.become_follower(term, m.from);
                self.step_follower(m);
            }
            // Only answers to the round we are in count.
            MessageBody::VoteResponse { pre_vote, granted }
                if pre_vote == (self.role == Role::PreCandidate) =>
            {
                self.handle_vote_response(m.from, granted);
            }
            MessageBody::ReadIndex { request_id } => self.refuse_read_index(m.from, request_id),
            _ => {}
        }
    }

    fn step_leader(&mut self, m: Message) {
        if let Some(progress) = self.progress.get_mut(&m.from) {
            progress.recent_active = true;
            progress.heard_at_tick = Some(self.now_ticks);
        }
        match m.body {
            MessageBody::AppendResponse { index, reject } => {
                self.handle_append_response(m.from, index, reject)
            }
            MessageBody::HeartbeatResponse {
                read_round,
                sent_tick,
            } => self.handle_heartbeat_response(m.from, read_round, sent_tick),
            MessageBody::ReadIndex { request_id } => {
                self.handle_forwarded_read_index(m.from, request_id)
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                panic!(
                    "two leaders in term {:?}: {:?} and {:?} (election safety violated)",
                    self.term, self.config.id, m.from
                );
            }
            _ => {}
        }
    }

    /// Sends whatever was deferred: the batched broadcast of new entries and commit
    /// index, and the heartbeat that confirms queued reads. Called before building a `Ready`.
    pub(crate) fn flush(&mut self) {
        if self.role == Role::Leader && self.pending_broadcast {
            self.pending_broadcast = false;
            self.bcast_append();
        }
        self.flush_read_round();
    }
}
