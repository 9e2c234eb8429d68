//! Why a client request could not be served, in terms the server maps to etcd's errors.

use std::path::PathBuf;

use ostrakon_storage::wal::WalError;

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
    /// The request never took effect and never will: it was refused before it entered
    /// the log (a leadership transfer was under way, or the member asked was not the
    /// leader), or another leader's entry took its log index. Safe to try again.
    #[error("leader changed")]
    Dropped,
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
    /// The request's keys fall in more than one range, which the request cannot span
    /// (yet: docs/RANGES.md).
    #[error("ostrakon: the request's keys fall in more than one range; requests across ranges are not supported yet")]
    SpansRanges,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The WAL could not be recovered.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The state machine could not be opened.
    #[error("opening the state machine at {0}: {1}")]
    Store(PathBuf, String),
    /// A directory could not be created.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Raft refused the configuration.
    #[error("raft configuration: {0}")]
    Raft(String),
    /// The data directory's state contradicts itself.
    #[error("{0}")]
    Inconsistent(String),
}
