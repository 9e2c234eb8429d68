//! What every service does the same way: etcd's response header, and writes whose
//! refusal becomes etcd's error.

use ostrakon_node::{NodeError, NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::{alarm_request, AlarmRequest, AlarmType, ResponseHeader};
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_storage::mvcc::{Revision, WriteOutcome};

use crate::errors::ApiError;

/// etcd's header: cluster and member ids, the revision the response reflects, and the
/// raft term.
pub fn header(node: &NodeHandle, revision: Revision) -> Option<ResponseHeader> {
    let term = node
        .status(DEFAULT_GROUP)
        .map(|s| s.term.0)
        .unwrap_or_default();
    Some(ResponseHeader {
        cluster_id: node.cluster_id(),
        member_id: node.id().0,
        revision: revision.0,
        raft_term: term,
    })
}

/// The header at the keyspace's current revision (the highest of its ranges').
pub fn current_header(node: &NodeHandle) -> Option<ResponseHeader> {
    header(node, node.current_revision())
}

/// Proposes a write (forwarded to the leader if need be); a refusal by the state machine
/// becomes its etcd error.
pub async fn write(node: &NodeHandle, write: Write) -> Result<WriteOutcome, ApiError> {
    write_checked(node, write, 0).await
}

/// `write`, refused at apply if the auth store moved past `auth_revision` (the revision
/// the caller's permissions were checked at; 0: not checked).
pub async fn write_checked(
    node: &NodeHandle,
    write: Write,
    auth_revision: u64,
) -> Result<WriteOutcome, ApiError> {
    refuse_on_learner(node)?;
    check_quota(node, &write).await?;
    match node.write_routed(write, auth_revision).await? {
        WriteOutcome::Error(error) => Err(ApiError::Node(NodeError::Refused {
            code: error.code,
            message: error.message,
        })),
        outcome => Ok(outcome),
    }
}

/// A learner serves only serializable reads and status, as in etcd: it is not part of
/// the quorum, and clients should not depend on it.
pub fn refuse_on_learner(node: &NodeHandle) -> Result<(), ApiError> {
    if node.status(DEFAULT_GROUP)?.is_learner {
        return Err(ApiError::Node(NodeError::Refused {
            code: tonic::Code::Unavailable as i32,
            message: "etcdserver: rpc not supported for learner".into(),
        }));
    }
    Ok(())
}

/// etcd's space quota: a write that adds data to a store already past the quota raises
/// the NOSPACE alarm (through raft, so every member refuses such writes until an operator
/// disarms it) and is refused. Reads, deletes and compaction go on.
async fn check_quota(node: &NodeHandle, write: &Write) -> Result<(), ApiError> {
    if !ostrakon_storage::mvcc::adds_data(write) {
        return Ok(());
    }
    let store = node.store(DEFAULT_GROUP)?;
    let request_bytes = write.encoded_len() as u64;
    if store.disk_bytes() + request_bytes <= node.quota_backend_bytes() {
        return Ok(());
    }
    tracing::warn!(
        size_bytes = store.disk_bytes(),
        quota_bytes = node.quota_backend_bytes(),
        "the space quota is reached; raising the NOSPACE alarm"
    );
    let alarm = Write::Alarm(AlarmRequest {
        action: alarm_request::AlarmAction::Activate as i32,
        member_id: node.id().0,
        alarm: AlarmType::Nospace as i32,
    });
    // Routed as a client's alarm request is: on a keyspace in ranges, every range's log
    // takes NOSPACE in (a write gate) before this answers.
    node.write_routed(alarm, 0).await?;
    Err(ApiError::Mvcc(ostrakon_storage::mvcc::MvccError::NoSpace))
}
