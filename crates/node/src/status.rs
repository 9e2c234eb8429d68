//! A group's state as the event loop publishes it after every round, for readers on
//! other threads.

use ostrakon_raft::NodeId;
use ostrakon_raft::{LogIndex, Term};

/// A group's state as last published by the event loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The current term.
    pub term: Term,
    /// The known leader, or `NodeId::NONE`.
    pub leader: NodeId,
    /// Whether this node leads the group.
    pub is_leader: bool,
    /// The commit index.
    pub commit: LogIndex,
    /// The applied index.
    pub applied: LogIndex,
    /// Whether this node is a learner of the group.
    pub is_learner: bool,
}
