//! etcd's errors, and the one mapping from internal errors to gRPC statuses.
//!
//! The codes and messages are etcd's (`api/v3rpc/rpctypes`): etcd clients recognise
//! errors by them, so they must match exactly.

use ostrakon_node::NodeError;
use ostrakon_storage::mvcc::MvccError;
use tonic::{Code, Status};

/// An error a client request gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A Txn has more than `--max-txn-ops` operations in one list.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A Txn writes one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The request is larger than `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// `ignore_value` with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// The state machine refused the request.
    #[error("{0}")]
    Mvcc(MvccError),
    /// The node could not serve the request.
    #[error("{0}")]
    Node(NodeError),
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        ApiError::Node(error)
    }
}

impl From<ostrakon_storage::mvcc::auth::AuthError> for ApiError {
    fn from(error: ostrakon_storage::mvcc::auth::AuthError) -> Self {
        ApiError::Mvcc(MvccError::Auth(error))
    }
}

impl From<MvccError> for ApiError {
    fn from(error: MvccError) -> Self {
        ApiError::Mvcc(error)
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let (code, message): (Code, &str) = match &error {
            // These variants' Display is etcd's message.
            ApiError::EmptyKey
            | ApiError::TooManyOps
            | ApiError::DuplicateKey
            | ApiError::RequestTooLarge
            | ApiError::ValueProvided
            | ApiError::LeaseProvided => return Status::invalid_argument(error.to_string()),
            ApiError::Mvcc(mvcc) => {
                let (code, message) = ostrakon_storage::mvcc::etcd_status(mvcc);
                return Status::new(Code::from_i32(code), message);
            }
            ApiError::Node(node) => match node {
                NodeError::NoLeader | NodeError::NotLeader(_) | NodeError::UnknownGroup => {
                    (Code::Unavailable, "etcdserver: no leader")
                }
                NodeError::LeaderChanged | NodeError::Dropped => {
                    (Code::Unavailable, "etcdserver: leader changed")
                }
                NodeError::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
                NodeError::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
                NodeError::Overloaded => (Code::ResourceExhausted, "etcdserver: too many requests"),
                NodeError::ChangeInProgress => (
                    Code::FailedPrecondition,
                    "ostrakon: another membership change is in progress; retry",
                ),
                NodeError::Refused { code, message } => {
                    return Status::new(Code::from_i32(*code), message.clone())
                }
                NodeError::SpansRanges => {
                    return Status::failed_precondition(node.to_string());
                }
            },
        };
        Status::new(code, message)
    }
}
