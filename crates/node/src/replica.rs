//! One raft group on this node: its raft state, its state machine, and the clients
//! waiting on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use ostrakon_proto::peer::WriteRequest;
use ostrakon_raft::{
    next_conf_state, ConfChange, ConfChangeStep, ConfState, Entry, EntryPayload, GroupId, LogIndex,
    NodeId, ProposeError, RawNode, ReadState, Role, SnapshotMeta, Term,
};
use ostrakon_storage::mvcc::{apply_write, MvccStore, WriteOutcome};
use prost::Message as _;
use tokio::sync::watch;

use crate::error::NodeError;
use crate::input::{ConfResponder, ReadResponder, ReadWaiter, WriteResponder};
use crate::reconfig_check;
use crate::spans::{self, SpanContext, SpanKind};
use crate::status::GroupStatus;

/// A learner may be promoted once its log holds this share of the leader's (etcd's
/// `readyPercent`): a voter far behind would weaken the quorum while it catches up.
const PROMOTE_MATCH_SHARE: f64 = 0.9;

/// Bound on reads waiting for a read index, per group.
const PENDING_READS_MAX: usize = 65_536;

pub struct Replica {
    pub group: GroupId,
    /// The term this member gives its word of with requests to the group's leader,
    /// raised by the event loop before any message of a new term leaves.
    pub term_word: Arc<crate::member_word::TermWord>,
    pub node: RawNode,
    pub store: Arc<MvccStore>,
    /// The group's lease deadlines (kept while this member leads).
    pub(crate) lessor: Arc<crate::lessor::Lessor>,
    /// Proposals of this node awaiting apply, by log index. Invariant: keys are indexes
    /// raft assigned to this node's proposals while it led.
    proposals: BTreeMap<LogIndex, (Term, u64, WriteResponder)>,
    /// The transactions whose resolve or release this node proposed while it led and
    /// has not applied yet, by the entry's index: a prepare proposed behind them finds
    /// their locks gone when it applies (`unlocking`).
    unlocks_in_log: BTreeMap<LogIndex, ostrakon_ranges::txn::TxnId>,
    /// The term and index of the last prepare this node proposed while it led: until it
    /// applies, the range's line lets no other prepare in (`prepare_in_log`).
    prepare_proposed: (Term, LogIndex),
    /// The traced ones among them: the proposal's span and when it was proposed, for the
    /// WAL fsync and replication spans.
    traced: BTreeMap<LogIndex, (SpanContext, SystemTime)>,
    /// Each with the lowest index to answer (a read barrier's: its leader's last entry).
    reads: HashMap<u64, (ReadWaiter, LogIndex)>,
    next_read_id: u64,
    /// Received snapshot files, by the index they cover, until raft asks to install one.
    pub incoming_snapshots: HashMap<LogIndex, PathBuf>,
    pub status: Arc<RwLock<GroupStatus>>,
    pub applied_tx: watch::Sender<LogIndex>,
    /// The index of the latest snapshot file (and of the raft log's start).
    pub snapshot_index: LogIndex,
    /// A snapshot file is being written on another thread.
    pub snapshot_in_progress: bool,
    /// Bytes of entries applied since the state the latest snapshot froze: the raft log
    /// held in memory until the next one.
    pub log_bytes_since_snapshot: u64,
    /// The size of the latest snapshot file this member wrote (0 before the first).
    pub snapshot_file_bytes: u64,
    /// This node's membership change awaiting apply: its index, term and proposer.
    conf_proposal: Option<(LogIndex, Term, ConfResponder)>,
    /// etcd's `--strict-reconfig-check`: if set, voter changes are refused unless the
    /// new voters that are up form a quorum; a member is up if the leader heard from it
    /// within this many ticks.
    pub strict_reconfig_active_ticks: Option<u64>,
    /// The timestamp oracle, on the meta range's replicas only.
    pub timestamps: Option<crate::timestamps::TimestampService>,
    /// The hard state last written to the WAL (its commit index may lag raft's).
    pub wal_hard_state: ostrakon_raft::HardState,
    /// Ranges the splits applied since the event loop last looked created.
    split_offs: Vec<crate::split::SplitOff>,
    /// Committed entries not applied yet, from a merge on: its right range has not
    /// applied its freeze on this node (`crate::merge`). The event loop applies the
    /// merge once it has, then the rest.
    pub held_entries: Vec<Entry>,
    /// The index of a merge applied here until a snapshot at or after it is taken (one
    /// is started again if the first was taken before it).
    pub snapshot_due_for_merge: Option<LogIndex>,
    /// The merge entry this replica could not apply for want of a replica of its right
    /// range, once logged (`crate::merge::MergeStep::MissingRight`).
    pub missing_right_logged: Option<LogIndex>,
    /// The index of the latest split or merge of this range applied here (the applied
    /// index at start, not knowing): a snapshot before it holds another span.
    pub span_changed_at: LogIndex,
}

impl Replica {
    pub fn new(
        group: GroupId,
        node: RawNode,
        store: Arc<MvccStore>,
        status: Arc<RwLock<GroupStatus>>,
        applied_tx: watch::Sender<LogIndex>,
        lessor: Arc<crate::lessor::Lessor>,
    ) -> Replica {
        let snapshot_index = node.snapshot_meta().index;
        let span_changed_at = store.applied_index();
        let term_word = Arc::new(crate::member_word::TermWord::new(node.term()));
        Replica {
            group,
            term_word,
            node,
            store,
            lessor,
            proposals: BTreeMap::new(),
            unlocks_in_log: BTreeMap::new(),
            prepare_proposed: (Term(0), LogIndex(0)),
            traced: BTreeMap::new(),
            reads: HashMap::new(),
            next_read_id: first_read_id(),
            incoming_snapshots: HashMap::new(),
            status,
            applied_tx,
            snapshot_index,
            snapshot_in_progress: false,
            log_bytes_since_snapshot: 0,
            snapshot_file_bytes: 0,
            conf_proposal: None,
            strict_reconfig_active_ticks: None,
            timestamps: None,
            wal_hard_state: ostrakon_raft::HardState::default(),
            split_offs: Vec::new(),
            held_entries: Vec::new(),
            snapshot_due_for_merge: None,
            missing_right_logged: None,
            span_changed_at,
        }
    }

    /// The ranges the splits applied since the last call created, for the event loop to
    /// host.
    pub fn take_split_offs(&mut self) -> Vec<crate::split::SplitOff> {
        std::mem::take(&mut self.split_offs)
    }

    /// A request for `count` timestamps from the oracle (the meta range's leader only).
    pub fn request_timestamps(
        &mut self,
        count: u64,
        respond: crate::timestamps::TimestampResponder,
        word: Option<crate::member_word::MemberWord>,
    ) {
        match &mut self.timestamps {
            Some(service) => service.request(&mut self.node, count, respond, word),
            None => respond.answer(Err(NodeError::UnknownGroup)),
        }
    }

    /// Work to hand raft before its Ready is taken: the oracle's read index for the
    /// timestamp requests that arrived this round.
    pub fn before_ready(&mut self) {
        if let Some(service) = &mut self.timestamps {
            service.confirm_arrived(&mut self.node);
        }
    }

    /// Work after the Ready is advanced (raft takes proposals again): the oracle serves
    /// what its read indexes and bounds now allow.
    pub fn after_advance(&mut self, me: NodeId) {
        if let Some(service) = &mut self.timestamps {
            if service.has_waiting() {
                service.serve(
                    &mut self.node,
                    self.store.oracle_bound(),
                    self.store.applied_index(),
                    me,
                );
            }
        }
    }

    /// Proposes a membership change (this node must lead); the responder gets the
    /// membership once the change applies. One change at a time: while one is in flight or
    /// the group is joint, `ChangeInProgress`. `started`: the members that published their
    /// name (the member registry is the data range's, whatever group changes).
    /// `nodes_down`: peers node liveness calls
    /// down, never counted as up by the strict reconfiguration check.
    ///
    /// Refused while the log holds a merge above its snapshot: a member added then would
    /// be sent that snapshot and replay the merge without a replica of the merged range
    /// (the merge was committed, or applied before a restart, but no snapshot covers it
    /// yet). Returns that merge's index then: the caller takes a snapshot after it.
    #[must_use]
    pub fn propose_conf_change(
        &mut self,
        change: ConfChange,
        respond: ConfResponder,
        nodes_down: &BTreeSet<NodeId>,
        started: &BTreeSet<NodeId>,
    ) -> Option<LogIndex> {
        if let Err(error) = self.check_conf_change(&change, nodes_down, started) {
            let _ = respond.send(Err(error));
            return None;
        }
        if let Some(merge) = self.merge_above_snapshot() {
            // Retried by the caller once a snapshot holding the merge is taken.
            let _ = respond.send(Err(NodeError::ChangeInProgress));
            return Some(merge);
        }
        match self.node.propose_conf_change(change) {
            Ok(proposal) => {
                self.conf_proposal = Some((proposal.index, proposal.term, respond));
            }
            Err(ProposeError::ConfChangePending) => {
                let _ = respond.send(Err(NodeError::ChangeInProgress));
            }
            Err(error) => {
                let _ = respond.send(Err(propose_error(error)));
            }
        }
        None
    }

    /// The last merge entry in the raft log above its snapshot, if any (read only for a
    /// membership change: a range's log past its snapshot is short).
    pub fn merge_above_snapshot(&self) -> Option<LogIndex> {
        let first = self.node.snapshot_meta().index.0 + 1;
        let last = self.node.last_index().0;
        (first..=last).rev().map(LogIndex).find(|&index| {
            self.node
                .log_entry(index)
                .is_some_and(|entry| match &entry.payload {
                    EntryPayload::Normal(data) => WriteRequest::decode(data.as_ref())
                        .is_ok_and(|write| crate::merge::is_merge(&write)),
                    _ => false,
                })
        })
    }

    fn check_conf_change(
        &self,
        change: &ConfChange,
        nodes_down: &BTreeSet<NodeId>,
        started: &BTreeSet<NodeId>,
    ) -> Result<(), NodeError> {
        if self.node.role() != Role::Leader {
            return Err(NodeError::NotLeader(self.node.leader()));
        }
        let conf = self.node.conf_state();
        if conf.is_joint() || self.conf_proposal.is_some() {
            return Err(NodeError::ChangeInProgress);
        }
        let next = next_conf_state(conf, change).map_err(|error| NodeError::Refused {
            code: tonic::Code::FailedPrecondition as i32,
            message: format!("ostrakon: {error}"),
        })?;
        let ConfChange::Change(steps) = change else {
            return Ok(());
        };
        for step in steps {
            if let ConfChangeStep::AddVoter(id) = step {
                if conf.is_learner(*id) && !self.learner_is_ready(*id) {
                    return Err(NodeError::Refused {
                        code: tonic::Code::FailedPrecondition as i32,
                        message:
                            "etcdserver: can only promote a learner member which is in sync with leader"
                                .into(),
                    });
                }
            }
        }
        if let Some(active_ticks) = self.strict_reconfig_active_ticks {
            // A leader that was quiesced heard nothing while asleep, so what it heard last
            // may be old: node liveness has the fresher word on who is down.
            let mut active = self.node.recently_active(active_ticks);
            active.retain(|id| !nodes_down.contains(id));
            let liveness = reconfig_check::MemberLiveness {
                started,
                active: &active,
            };
            reconfig_check::check(conf, &next, &liveness)?;
        }
        Ok(())
    }

    /// Whether a membership change this node proposed awaits apply.
    pub fn has_conf_proposal(&self) -> bool {
        self.conf_proposal.is_some()
    }

    pub(crate) fn learner_is_ready(&self, learner: NodeId) -> bool {
        let status = self.node.status();
        let leader_match = status.last_index.0 as f64;
        status
            .progress
            .iter()
            .find(|(id, ..)| *id == learner)
            .is_some_and(|(_, match_index, ..)| {
                match_index.0 as f64 >= leader_match * PROMOTE_MATCH_SHARE
            })
    }

    fn answer_conf_proposal(
        &mut self,
        entry: &Entry,
        outcome: Option<Result<ConfState, NodeError>>,
    ) {
        let Some((index, term, _)) = &self.conf_proposal else {
            return;
        };
        if *index > entry.index {
            return;
        }
        let ours = *index == entry.index && *term == entry.term;
        let (_, _, respond) = self.conf_proposal.take().expect("checked above");
        let _ = respond.send(match outcome {
            Some(result) if ours => result,
            // Another leader's entry took the index: the change will never apply.
            _ => Err(NodeError::LeaderChanged),
        });
    }

    /// Proposes a write; the responder is answered when it is applied (or fails).
    pub fn propose(&mut self, write: WriteRequest, respond: WriteResponder) {
        let id = write.id;
        let traced = spans::parse_parent(&write.trace_parent);
        let unlocks = unlocked_txn(&write);
        let prepares = matches!(
            write.request,
            Some(ostrakon_proto::peer::write_request::Request::TxnPrepare(_))
        );
        match self.node.propose(Bytes::from(write.encode_to_vec())) {
            Ok(proposal) => {
                if let Some(txn) = unlocks {
                    self.unlocks_in_log.insert(proposal.index, txn);
                }
                if prepares {
                    self.prepare_proposed = (proposal.term, proposal.index);
                }
                if let Some(span) = traced {
                    self.traced
                        .insert(proposal.index, (span, SystemTime::now()));
                }
                let replaced = self
                    .proposals
                    .insert(proposal.index, (proposal.term, id, respond));
                assert!(
                    replaced.is_none(),
                    "two proposals at index {}",
                    proposal.index
                );
            }
            Err(error) => {
                let _ = respond.send(Err(propose_error(error)));
            }
        }
    }

    /// Asks raft for a linearizable read point.
    pub fn read_index(&mut self, respond: ReadResponder) {
        self.read_index_at_least(LogIndex(0), respond, None);
    }

    /// Asks raft for a linearizable read point, answering at least `lowest`. With the
    /// word of the member the read came from (`crate::member_word`), where that word
    /// stands for a heartbeat round, raft answers in this round's Ready.
    pub fn read_index_at_least(
        &mut self,
        lowest: LogIndex,
        respond: impl Into<ReadWaiter>,
        word: Option<crate::member_word::MemberWord>,
    ) {
        let respond = respond.into();
        if self.reads.len() >= PENDING_READS_MAX {
            respond.answer(Err(NodeError::Overloaded));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        let asked = match word {
            Some(word) => self
                .node
                .read_index_confirmed_by(id, word.member, word.term)
                .map(|confirmed| {
                    if confirmed {
                        crate::metrics::metrics().reads_confirmed_by_word.inc();
                    }
                }),
            None => self.node.read_index(id),
        };
        match asked {
            Ok(()) => {
                self.reads.insert(id, (respond, lowest));
            }
            Err(error) => respond.answer(Err(propose_error(error))),
        }
    }

    pub fn answer_reads(&mut self, read_states: Vec<ReadState>) {
        for state in read_states {
            if let Some(service) = &mut self.timestamps {
                if service.read_state(&state) {
                    continue;
                }
            }
            let Some((respond, lowest)) = self.reads.remove(&state.request_id) else {
                continue;
            };
            let index = state.index.map(|index| index.max(lowest));
            respond.answer(index.ok_or(NodeError::LeaderChanged));
        }
    }

    /// Applies committed entries to the state machine and answers their proposers, up
    /// to a merge: that entry and those after it are held (`held_entries`) for the
    /// event loop, which applies the merge with the right range's replica.
    pub fn apply(&mut self, entries: Vec<Entry>, me: NodeId) {
        if !self.held_entries.is_empty() {
            self.held_entries.extend(entries);
            return;
        }
        let mut entries = entries.into_iter();
        while let Some(entry) = entries.next() {
            let write = match &entry.payload {
                EntryPayload::Normal(data) => Some(
                    WriteRequest::decode(data.as_ref())
                        .expect("entries hold writes this server encoded"),
                ),
                _ => None,
            };
            if write.as_ref().is_some_and(crate::merge::is_merge) {
                self.held_entries.push(entry);
                self.held_entries.extend(entries);
                break;
            }
            if let EntryPayload::Normal(data) = &entry.payload {
                self.log_bytes_since_snapshot += data.len() as u64;
            }
            assert!(
                entry.index > self.store.applied_index(),
                "entry {} applied twice (applied {})",
                entry.index,
                self.store.applied_index()
            );
            let mut conf_outcome = None;
            let outcome = match &entry.payload {
                EntryPayload::Empty => {
                    self.store.set_applied(entry.index, entry.term);
                    None
                }
                EntryPayload::Normal(_) => {
                    let write = write.expect("decoded above");
                    let mut span = spans::parse_parent(&write.trace_parent).and_then(|parent| {
                        self.record_replication(&entry, parent);
                        spans::start(Some(parent), "mvcc.apply", SpanKind::Internal)
                    });
                    let outcome = match &write.request {
                        Some(ostrakon_proto::peer::write_request::Request::Split(split)) => {
                            let conf = self.node.conf_state().clone();
                            let (outcome, split_off) = crate::split::apply_split(
                                &self.store,
                                entry.index,
                                entry.term,
                                split,
                                &conf,
                            );
                            if split_off.is_some() {
                                self.span_changed_at = entry.index;
                            }
                            self.split_offs.extend(split_off);
                            outcome
                        }
                        _ => apply_write(&self.store, entry.index, entry.term, &write),
                    };
                    self.note_lease_change(&write, &outcome);
                    if let Some(span) = &mut span {
                        span.set_attribute("raft.index", entry.index.0);
                        span.set_attribute("raft.member", format!("{:x}", me.0));
                    }
                    (write.origin == me.0).then_some((write.id, outcome))
                }
                EntryPayload::ConfChange(change) => {
                    conf_outcome = Some(self.apply_conf_change(&entry, change));
                    None
                }
            };
            self.answer_proposals(&entry, outcome);
            self.answer_conf_proposal(&entry, conf_outcome);
        }
        let applied = self.store.applied_index();
        // Applied (or, if another leader replaced them, never to be): their locks are
        // the store's to tell now.
        self.unlocks_in_log = self.unlocks_in_log.split_off(&LogIndex(applied.0 + 1));
        self.applied_tx.send_replace(applied);
    }

    /// Whether this node, leading, proposed a resolve or release of `txn` that has not
    /// applied yet: a prepare proposed now applies after it.
    pub fn unlocking(&self, txn: ostrakon_ranges::txn::TxnId) -> bool {
        self.unlocks_in_log
            .values()
            .any(|&unlocked| unlocked == txn)
    }

    /// Whether a prepare this node proposed in its current term has not applied yet:
    /// whole ranges are locked, so a prepare proposed behind it would be refused.
    pub fn prepare_in_log(&self) -> bool {
        let (term, index) = self.prepare_proposed;
        term == self.node.term() && index > self.store.applied_index()
    }

    /// Keeps the leader's lease deadlines in step with grants and revokes as they apply.
    fn note_lease_change(&self, write: &WriteRequest, outcome: &WriteOutcome) {
        use ostrakon_proto::peer::write_request::Request;
        match (&write.request, outcome) {
            (Some(Request::LeaseGrant(_)), WriteOutcome::LeaseGrant(granted)) => {
                self.lessor
                    .applied_grant(granted.id, granted.ttl, std::time::Instant::now());
            }
            (Some(Request::LeaseRevoke(revoke)), WriteOutcome::LeaseRevoke(_)) => {
                self.lessor.applied_revoke(revoke.id);
            }
            // A revoke across ranges, committed here (the first data range, its primary).
            // The record is answered again to a late abort or a repeated commit: a lease
            // granted anew under the same id since then keeps its deadline.
            (_, WriteOutcome::TxnDecided(decided)) if decided.committed => {
                for &id in decided.writes.iter().flat_map(|w| &w.revoked_leases) {
                    if self.store.lease(id).is_none() {
                        self.lessor.applied_revoke(id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Applies a committed membership change. One that does not fit the membership it
    /// meets (proposals are checked, but a new leader may find one of its predecessor's)
    /// changes nothing, identically on every member.
    fn apply_conf_change(
        &mut self,
        entry: &Entry,
        change: &ConfChange,
    ) -> Result<ConfState, NodeError> {
        match self.node.apply_conf_change(change) {
            Ok(conf_state) => {
                tracing::info!(
                    group = self.group.0,
                    index = entry.index.0,
                    ?conf_state,
                    "membership changed"
                );
                self.store
                    .apply_conf_state(entry.index, entry.term, conf_state.clone());
                Ok(conf_state)
            }
            Err(error) => {
                tracing::warn!(group = self.group.0, index = entry.index.0, %error, "a committed membership change is void");
                self.store.set_applied(entry.index, entry.term);
                Err(NodeError::Refused {
                    code: tonic::Code::FailedPrecondition as i32,
                    message: format!("ostrakon: {error}"),
                })
            }
        }
    }

    /// On the member that proposed a traced entry, the span of its replication: from the
    /// proposal until this member learned that a majority had it durably.
    fn record_replication(&mut self, entry: &Entry, parent: SpanContext) {
        let Some(&(proposal, proposed_at)) = self.traced.get(&entry.index) else {
            return;
        };
        if proposal != parent {
            return; // another leader's entry took the index
        }
        if let Some(mut span) = spans::start_at(
            Some(parent),
            "raft.replicate",
            SpanKind::Internal,
            proposed_at,
        ) {
            span.set_attribute("raft.index", entry.index.0);
            span.set_attribute("raft.term", entry.term.0);
        }
    }

    /// The WAL fsync spans of this member's traced proposals among `entries`, which the
    /// group commit between `started` and `ended` made durable, with `synced` others.
    pub fn record_fsync(
        &self,
        entries: &[Entry],
        synced: usize,
        started: SystemTime,
        ended: SystemTime,
    ) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        for (index, (parent, _)) in self.traced.range(first.index..=last.index) {
            if let Some(mut span) =
                spans::start_at(Some(*parent), "wal.fsync", SpanKind::Internal, started)
            {
                span.set_attribute("raft.index", index.0);
                span.set_attribute("wal.entries_synced", synced as u64);
                span.end_at(ended);
            }
        }
    }

    /// Whether any traced proposal awaits apply (only then are fsyncs timed for spans).
    pub fn has_traced(&self) -> bool {
        !self.traced.is_empty()
    }

    /// Answers the proposer of a merge the event loop applied (the first held entry),
    /// and applies the entries held after it.
    pub fn finish_merge(&mut self, outcome: WriteOutcome, me: NodeId) {
        let mut held = std::mem::take(&mut self.held_entries).into_iter();
        let entry = held.next().expect("a merge is held");
        let EntryPayload::Normal(data) = &entry.payload else {
            unreachable!("a held merge is a normal entry")
        };
        self.log_bytes_since_snapshot += data.len() as u64;
        let write = WriteRequest::decode(data.as_ref()).expect("a held merge decodes");
        let answer = (write.origin == me.0).then_some((write.id, outcome));
        self.answer_proposals(&entry, answer);
        self.apply(held.collect(), me);
        let applied = self.store.applied_index();
        self.applied_tx.send_replace(applied);
    }

    fn answer_proposals(&mut self, entry: &Entry, outcome: Option<(u64, WriteOutcome)>) {
        while let Some(first) = self.traced.first_entry() {
            if *first.key() > entry.index {
                break;
            }
            first.remove();
        }
        while let Some(first) = self.proposals.first_entry() {
            if *first.key() > entry.index {
                break;
            }
            let (index, (term, id, respond)) = first.remove_entry();
            let ours = index == entry.index
                && term == entry.term
                && outcome
                    .as_ref()
                    .is_some_and(|(applied_id, _)| *applied_id == id);
            if ours {
                let (_, outcome) = outcome.clone().expect("checked above");
                let _ = respond.send(Ok(outcome));
            } else if index == entry.index {
                // Another leader's entry took this index: ours will never apply.
                let _ = respond.send(Err(NodeError::Dropped));
            } else {
                // A snapshot covered the index: ours may be in it.
                let _ = respond.send(Err(NodeError::LeaderChanged));
            }
        }
    }

    /// Fails every waiting client (on shutdown).
    pub fn fail_all(&mut self, error: NodeError) {
        self.traced.clear();
        for (_, (_, _, respond)) in std::mem::take(&mut self.proposals) {
            let _ = respond.send(Err(error.clone()));
        }
        for (_, (respond, _)) in self.reads.drain() {
            respond.answer(Err(error.clone()));
        }
        if let Some((_, _, respond)) = self.conf_proposal.take() {
            let _ = respond.send(Err(error.clone()));
        }
        if let Some(service) = &mut self.timestamps {
            service.fail_all(error);
        }
    }

    /// Publishes the group's state for the handle; runs every round, so it reads raft's
    /// cheap accessors rather than building a full `Status`.
    pub fn publish_status(&self, me: NodeId) {
        let mut shared = self.status.write().unwrap();
        shared.term = self.node.term();
        shared.leader = self.node.leader();
        shared.is_leader = self.node.role() == Role::Leader;
        shared.commit = self.node.commit();
        shared.applied = self.store.applied_index();
        shared.is_learner = self.node.conf_state().is_learner(me);
        if self.group != crate::DEFAULT_GROUP {
            return; // etcd's metrics are of the data
        }
        let metrics = crate::metrics::metrics();
        metrics.proposals_committed.set(shared.commit.0 as i64);
        metrics.proposals_applied.set(shared.applied.0 as i64);
    }

    /// The membership and term of the applied state, for a snapshot at `applied`.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        let applied = self.store.applied();
        SnapshotMeta {
            index: applied.index,
            term: applied.term,
            conf_state: applied.conf_state,
        }
    }
}

pub(crate) fn propose_error(error: ProposeError) -> NodeError {
    match error {
        ProposeError::NoLeader => NodeError::NoLeader,
        ProposeError::NotLeader { leader } => NodeError::NotLeader(leader),
        ProposeError::TransferInProgress { .. } => NodeError::Dropped,
        ProposeError::Overloaded | ProposeError::ConfChangePending => NodeError::Overloaded,
        ProposeError::NotAVoter { .. } => NodeError::NoLeader,
    }
}

/// The transaction a write resolves or releases, whose lock goes when it applies.
fn unlocked_txn(write: &WriteRequest) -> Option<ostrakon_ranges::txn::TxnId> {
    use ostrakon_proto::peer::write_request::Request;
    let record = match &write.request {
        Some(Request::TxnResolve(decide)) => decide.txn.as_ref(),
        Some(Request::TxnRelease(release)) => release.txn.as_ref(),
        _ => None,
    }?;
    Some(ostrakon_storage::mvcc::txn_tables::txn_id_of(record))
}

/// Where this run's read ids start: far from an earlier run's (the clock's nanoseconds
/// and the process id), so that an answer to a read index a previous run of this
/// member forwarded cannot be taken for a read of this run (raft also takes an index
/// only from its leader in its term).
fn first_read_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    ((nanos ^ (u64::from(std::process::id()) << 40)) >> 2).max(1)
}
