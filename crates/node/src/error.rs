//! Why a client request could not be served, in terms the server maps to etcd's errors.

use ostrakon_raft::NodeId;

/// A request the node could not carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader is known.
    #[error("no leader")]
    NoLeader,
    /// The leader changed before the request was committed; it may or may not apply.
    #[error("leader changed")]
    LeaderChanged,
    /// The request did not finish in time; it may or may not apply.
    #[error("request timed out")]
    Timeout,
    /// The node is shutting down.
    #[error("server stopped")]
    Stopped,
    /// Too many uncommitted proposals.
    #[error("too many requests")]
    Overloaded,
    /// The state machine refused the request; nothing was applied. An etcd gRPC code and
    /// message.
    #[error("{message}")]
    Refused {
        /// The gRPC status code.
        code: i32,
        /// etcd's message.
        message: String,
    },
    /// This node is not the leader (internal: the handle forwards).
    #[error("not leader (leader is {0})")]
    NotLeader(NodeId),
    /// A membership change is still being carried out; a new one must wait.
    #[error("another membership change is in progress")]
    ChangeInProgress,
    /// The group is not hosted here.
    #[error("unknown group")]
    UnknownGroup,
}
