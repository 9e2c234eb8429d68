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
            tokio::spawn(async move {
                let revoke = write_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
                if let Err(error) = handle.write(group, revoke).await {
                    tracing::debug!(lease = id, %error, "revoking an expired lease failed; will retry");
                }
            });
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
