//! One raft group on this node: its raft state, its state machine, and the clients
//! waiting on it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use ostrakon_proto::peer::WriteRequest;
use ostrakon_raft::{
    Entry, EntryPayload, GroupId, LogIndex, NodeId, ProposeError, RawNode, ReadState, Role,
    SnapshotMeta, Term,
};
use ostrakon_storage::mvcc::{apply_write, MvccStore, WriteOutcome};
use prost::Message as _;
use tokio::sync::{oneshot, watch};

use crate::error::NodeError;
use crate::handle::GroupStatus;

/// Where a proposer waits for its write's outcome.
pub type WriteResponder = oneshot::Sender<Result<WriteOutcome, NodeError>>;
/// Where a reader waits for its read index.
pub type ReadResponder = oneshot::Sender<Result<LogIndex, NodeError>>;

/// Bound on reads waiting for a read index, per group.
const PENDING_READS_MAX: usize = 65_536;

pub struct Replica {
    pub group: GroupId,
    pub node: RawNode,
    pub store: Arc<MvccStore>,
    /// Proposals of this node awaiting apply, by log index. Invariant: keys are indexes
    /// raft assigned to this node's proposals while it led.
    proposals: BTreeMap<LogIndex, (Term, u64, WriteResponder)>,
    reads: HashMap<u64, ReadResponder>,
    next_read_id: u64,
    /// Received snapshot files, by the index they cover, until raft asks to install one.
    pub incoming_snapshots: HashMap<LogIndex, PathBuf>,
    pub status: Arc<RwLock<GroupStatus>>,
    pub applied_tx: watch::Sender<LogIndex>,
    /// The index of the latest snapshot file (and of the raft log's start).
    pub snapshot_index: LogIndex,
    /// A snapshot file is being written on another thread.
    pub snapshot_in_progress: bool,
}

impl Replica {
    pub fn new(
        group: GroupId,
        node: RawNode,
        store: Arc<MvccStore>,
        status: Arc<RwLock<GroupStatus>>,
        applied_tx: watch::Sender<LogIndex>,
    ) -> Replica {
        let snapshot_index = node.snapshot_meta().index;
        Replica {
            group,
            node,
            store,
            proposals: BTreeMap::new(),
            reads: HashMap::new(),
            next_read_id: 1,
            incoming_snapshots: HashMap::new(),
            status,
            applied_tx,
            snapshot_index,
            snapshot_in_progress: false,
        }
    }

    /// Proposes a write; the responder is answered when it is applied (or fails).
    pub fn propose(&mut self, write: WriteRequest, respond: WriteResponder) {
        let id = write.id;
        match self.node.propose(Bytes::from(write.encode_to_vec())) {
            Ok(proposal) => {
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
        if self.reads.len() >= PENDING_READS_MAX {
            let _ = respond.send(Err(NodeError::Overloaded));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.node.read_index(id) {
            Ok(()) => {
                self.reads.insert(id, respond);
            }
            Err(error) => {
                let _ = respond.send(Err(propose_error(error)));
            }
        }
    }

    pub fn answer_reads(&mut self, read_states: Vec<ReadState>) {
        for state in read_states {
            let Some(respond) = self.reads.remove(&state.request_id) else {
                continue;
            };
            let _ = respond.send(state.index.ok_or(NodeError::LeaderChanged));
        }
    }

    /// Applies committed entries to the state machine and answers their proposers.
    pub fn apply(&mut self, entries: Vec<Entry>, me: NodeId) {
        for entry in entries {
            assert!(
                entry.index > self.store.applied_index(),
                "entry {} applied twice (applied {})",
                entry.index,
                self.store.applied_index()
            );
            let outcome = match &entry.payload {
                EntryPayload::Empty => {
                    self.store.set_applied(entry.index, entry.term);
                    None
                }
                EntryPayload::Normal(data) => {
                    let write = WriteRequest::decode(data.as_ref())
                        .expect("entries hold writes this server encoded");
                    let outcome = apply_write(&self.store, entry.index, entry.term, &write);
                    (write.origin == me.0).then_some((write.id, outcome))
                }
                EntryPayload::ConfChange(change) => {
                    let conf_state = self
                        .node
                        .apply_conf_change(change)
                        .expect("a committed configuration change applies");
                    self.store
                        .apply_conf_state(entry.index, entry.term, conf_state);
                    None
                }
            };
            self.answer_proposals(&entry, outcome);
        }
        let applied = self.store.applied_index();
        self.applied_tx.send_replace(applied);
    }

    fn answer_proposals(&mut self, entry: &Entry, outcome: Option<(u64, WriteOutcome)>) {
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
            } else {
                // Another leader's entry took this index: ours will never apply.
                let _ = respond.send(Err(NodeError::LeaderChanged));
            }
        }
    }

    /// Fails every waiting client (on shutdown).
    pub fn fail_all(&mut self, error: NodeError) {
        for (_, (_, _, respond)) in std::mem::take(&mut self.proposals) {
            let _ = respond.send(Err(error.clone()));
        }
        for (_, respond) in self.reads.drain() {
            let _ = respond.send(Err(error.clone()));
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
        ProposeError::TransferInProgress { .. } => NodeError::LeaderChanged,
        ProposeError::Overloaded | ProposeError::ConfChangePending => NodeError::Overloaded,
        ProposeError::NotAVoter { .. } => NodeError::NoLeader,
    }
}
