//! The data raft persists and replicates: entries, hard state, membership, snapshots.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::ids::{LogIndex, NodeId, Term};

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// The empty entry a new leader appends to commit entries of earlier terms (5.4.2).
    Empty,
    /// An application command, opaque to raft.
    Normal(Bytes),
    /// A membership change; takes effect when the application applies it.
    ConfChange(ConfChange),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position in the log.
    pub index: LogIndex,
    /// The content.
    pub payload: EntryPayload,
}

impl Entry {
    /// Payload size counted against byte limits (commands only; control entries count 0).
    pub fn payload_bytes(&self) -> u64 {
        match &self.payload {
            EntryPayload::Normal(data) => data.len() as u64,
            EntryPayload::Empty | EntryPayload::ConfChange(_) => 0,
        }
    }
}

/// The state that must be durable before a node sends messages that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// Whom this node voted for in `term`, or `NodeId::NONE`.
    pub vote: NodeId,
    /// The highest index known committed. Persisting it is an optimisation (it can be
    /// re-learned from the leader) but it must never be persisted above the durable log.
    pub commit: LogIndex,
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeStep {
    /// Make the node a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Make the node a learner (demoting it if it is a voter).
    AddLearner(NodeId),
    /// Remove the node from the group.
    Remove(NodeId),
}

/// A membership change, replicated as a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Apply these steps together. If the set of voters changes, the group enters the
    /// joint configuration (old and new voters must both agree) and the leader leaves it
    /// automatically once the change is applied.
    Change(Vec<ConfChangeStep>),
    /// Leave the joint configuration: from now on only the new voters decide.
    LeaveJoint,
}

/// The membership of a group.
///
/// Invariant: a node is in at most one of `voters ∪ voters_outgoing`, `learners`,
/// `learners_next`; `learners_next` is empty unless the configuration is joint.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct ConfState {
    /// The (incoming) voters.
    pub voters: BTreeSet<NodeId>,
    /// The outgoing voters while in a joint configuration; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: BTreeSet<NodeId>,
}

impl ConfState {
    /// A configuration of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        ConfState {
            voters: voters.into_iter().collect(),
            ..ConfState::default()
        }
    }

    /// Whether the group is in a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Whether `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner (now or after leaving the joint configuration).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id) || self.learners_next.contains(&id)
    }

    /// Every member the leader replicates to, in id order, without duplicates.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(&self.voters_outgoing)
            .chain(&self.learners)
            .chain(&self.learners_next)
            .copied()
            .collect()
    }
}

/// Describes a snapshot; the bytes themselves are the application's business.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers.
    pub index: LogIndex,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The membership as of `index`.
    pub conf_state: ConfState,
}

/// The answer to a read-index request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's request id.
    pub request_id: u64,
    /// Serve the read once applied >= this index. `None`: leadership was lost or never
    /// known before the read could be confirmed; retry.
    pub index: Option<LogIndex>,
}
