//! The task that acts on lease deadlines for a group: it sweeps the lessor for expired
//! leases and proposes their revokes, and checkpoints remaining TTLs, while this member
//! leads. (A task per group for now; with many groups the event loop's timers will
//! drive it instead.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use ostrakon_proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use ostrakon_proto::peer::write_request;
use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::MvccStore;

use crate::handle::NodeHandle;
use crate::lessor::Lessor;

/// How often the leader looks for expired leases.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// How often the leader records remaining TTLs in the log.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// Proposes the revoke of an expired lease, again while a transaction across ranges
/// holds the range (its keys wait for it to end, within the request timeout).
async fn revoke_expired(handle: NodeHandle, group: GroupId, id: i64) {
    let revoke = write_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
    let deadline = tokio::time::Instant::now() + handle.request_timeout();
    loop {
        match crate::txn_coordinator::propose(&handle, group, &revoke, 0).await {
            Ok(ostrakon_storage::mvcc::WriteOutcome::Error(error))
                if error.retry == ostrakon_proto::peer::Retry::Locked as i32
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(LOCKED_REVOKE_PAUSE).await;
            }
            Err(error) => {
                tracing::debug!(lease = id, %error, "revoking an expired lease failed; will retry");
                return;
            }
            Ok(_) => return,
        }
    }
}

/// How long the revoke of an expired lease waits before trying a locked range again.
const LOCKED_REVOKE_PAUSE: Duration = Duration::from_millis(5);

/// Runs a group's lessor: sweeps for expired leases, proposes their revokes, and
/// checkpoints remaining TTLs, while this member leads. Ends when the node stops.
pub async fn run(handle: NodeHandle, group: GroupId, lessor: Arc<Lessor>, store: Arc<MvccStore>) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        sweep.tick().await;
        let Ok(status) = handle.status(group) else {
            return;
        };
        let leading = status.is_leader.then_some(status.term);
        let now = Instant::now();
        for id in lessor.sweep(&store, leading, now) {
            let handle = handle.clone();
            tokio::spawn(revoke_expired(handle, group, id));
        }
        if leading.is_some() && now.duration_since(last_checkpoint) >= CHECKPOINT_INTERVAL {
            last_checkpoint = now;
            let checkpoints = lessor.checkpoints(now);
            if !checkpoints.is_empty() {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let request = write_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                        checkpoints,
                    });
                    let _ = handle.write(group, request).await;
                });
            }
        }
    }
}
