//! What crosses the wire between members besides raft messages: node errors as codes,
//! forwarded writes' outcomes, and the words a removed member is refused with. Shared by
//! the client side (`mod.rs`) and the server side (`service.rs`), which import it and
//! not each other.

use ostrakon_proto::peer::{self as pb, write_response, ForwardResponse, WriteResponse};
use ostrakon_storage::mvcc::WriteOutcome;

use crate::error::NodeError;

/// The answer to a removed member's messages (etcd's words); the sender stops on it.
pub(super) const MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";

/// The answer to a snapshot the receiver dropped because it overlaps another range there
/// (`SnapshotVerdict::Overlaps`); the sender's leader may take a fresh snapshot on it.
pub(super) const SNAPSHOT_OVERLAPS: &str = "the snapshot overlaps another range here";

/// Node errors that cross the wire, as negative codes (etcd's gRPC codes are positive).
const REMOTE_NOT_LEADER: i32 = -1;
const REMOTE_NO_LEADER: i32 = -2;
const REMOTE_LEADER_CHANGED: i32 = -3;
const REMOTE_OVERLOADED: i32 = -4;
const REMOTE_STOPPED: i32 = -5;
const REMOTE_CHANGE_IN_PROGRESS: i32 = -6;
const REMOTE_DROPPED: i32 = -7;

/// A node error for the wire; `Refused` keeps etcd's code and message.
pub(super) fn encode_node_error(error: NodeError) -> pb::Error {
    let code = match error {
        NodeError::SpansRanges => {
            return pb::Error {
                code: tonic::Code::FailedPrecondition as i32,
                message: error.to_string(),
                ..Default::default()
            }
        }
        NodeError::Refused { code, message } => {
            return pb::Error {
                code,
                message,
                ..Default::default()
            }
        }
        NodeError::NotLeader(_) => REMOTE_NOT_LEADER,
        NodeError::Dropped => REMOTE_DROPPED,
        NodeError::NoLeader | NodeError::UnknownGroup => REMOTE_NO_LEADER,
        NodeError::LeaderChanged | NodeError::Timeout => REMOTE_LEADER_CHANGED,
        NodeError::Overloaded => REMOTE_OVERLOADED,
        NodeError::Stopped => REMOTE_STOPPED,
        NodeError::ChangeInProgress => REMOTE_CHANGE_IN_PROGRESS,
    };
    pb::Error {
        code,
        ..Default::default()
    }
}

/// The node error a remote member reported. A remote "not leader" means the leader this
/// member believed in is gone and nothing was proposed there (dropped: safe to retry); a
/// remote that stopped may have proposed it.
pub(super) fn decode_node_error(error: pb::Error) -> NodeError {
    match error.code {
        REMOTE_NOT_LEADER | REMOTE_DROPPED => NodeError::Dropped,
        REMOTE_LEADER_CHANGED | REMOTE_STOPPED => NodeError::LeaderChanged,
        REMOTE_NO_LEADER => NodeError::NoLeader,
        REMOTE_OVERLOADED => NodeError::Overloaded,
        REMOTE_CHANGE_IN_PROGRESS => NodeError::ChangeInProgress,
        code => NodeError::Refused {
            code,
            message: error.message,
        },
    }
}

pub(super) fn encode_forward_response(outcome: Result<WriteOutcome, NodeError>) -> ForwardResponse {
    let response = match outcome {
        Ok(outcome) => outcome,
        Err(error) => WriteOutcome::Error(encode_node_error(error)),
    };
    ForwardResponse {
        response: Some(WriteResponse {
            response: Some(response),
        }),
    }
}

pub(super) fn decode_forward_response(
    response: ForwardResponse,
) -> Result<WriteOutcome, NodeError> {
    let outcome = response
        .response
        .and_then(|r| r.response)
        .ok_or(NodeError::LeaderChanged)?;
    match outcome {
        // An etcd error is the write's outcome; an internal one is the forward's failure.
        write_response::Response::Error(error) if error.code >= 0 => {
            Ok(write_response::Response::Error(error))
        }
        write_response::Response::Error(error) => Err(decode_node_error(error)),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_raft::NodeId;

    /// A forwarded write's error keeps what the retry depends on: whether the write may
    /// have applied. Dropped and "not leader" (nothing proposed there) come back as
    /// Dropped, which is tried again; a leader change or a stop mid-write stays
    /// LeaderChanged, which is not.
    #[test]
    fn a_remote_error_says_whether_the_write_may_have_applied() {
        let round_trip = |error: NodeError| decode_node_error(encode_node_error(error));
        assert_eq!(round_trip(NodeError::Dropped), NodeError::Dropped);
        assert_eq!(
            round_trip(NodeError::NotLeader(NodeId(3))),
            NodeError::Dropped
        );
        assert_eq!(
            round_trip(NodeError::LeaderChanged),
            NodeError::LeaderChanged
        );
        assert_eq!(round_trip(NodeError::Timeout), NodeError::LeaderChanged);
        assert_eq!(round_trip(NodeError::Stopped), NodeError::LeaderChanged);
        assert_eq!(round_trip(NodeError::NoLeader), NodeError::NoLeader);
        assert_eq!(round_trip(NodeError::Overloaded), NodeError::Overloaded);
        let refused = NodeError::Refused {
            code: tonic::Code::InvalidArgument as i32,
            message: "etcdserver: key is not provided".into(),
        };
        assert_eq!(round_trip(refused.clone()), refused);
    }
}
