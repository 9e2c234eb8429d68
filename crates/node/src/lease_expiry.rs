//! The task that acts on lease deadlines for a group: it sweeps the lessor for expired
//! leases and proposes their revokes, and checkpoints remaining TTLs, while this member
//! leads. (A task per group for now; with many groups the event loop's timers will
//! drive it instead.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use ostrakon_proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use ostrakon_proto::peer::write_request;
use ostrakon_raft::{GroupId, Term};
use ostrakon_storage::mvcc::{MvccStore, WriteOutcome};

use crate::handle::NodeHandle;
use crate::lessor::Lessor;

/// How often the leader looks for expired leases.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Revokes an expired lease as a client's revoke goes: on a keyspace in ranges, a
/// transaction over the first range and the ranges holding the lease's keys, tried
/// again while a transaction across ranges holds one (within the request timeout).
async fn revoke_expired(handle: NodeHandle, group: GroupId, term: Term, id: i64) {
    let revoke = write_request::Request::LeaseRevoke(LeaseRevokeRequest { id });
    match handle.revoke_while_leading(revoke, group, term).await {
        Ok(WriteOutcome::Error(error)) => {
            tracing::debug!(
                lease = id,
                ?error,
                "revoking an expired lease was refused; will retry"
            );
        }
        Err(error) => {
            tracing::debug!(lease = id, %error, "revoking an expired lease failed; will retry");
        }
        Ok(_) => {}
    }
}

/// Revokes expired leases: side by side on a keyspace of one range (each is one raft
/// entry), one after the other on a keyspace in ranges (each is a transaction locking
/// the first range, which holds the leases). Only while this member's leadership of
/// `group` in `term`, whose deadlines found them expired, is confirmed by a read index:
/// a leader deposed without knowing it yet (paused, partitioned) kept deadlines that
/// keep-alives answered by its successor have moved, and its revokes, forwarded to that
/// successor, would take leases their holders were just told they keep (found by
/// review, 2026-12-06).
async fn revoke_all_expired(handle: NodeHandle, group: GroupId, term: Term, expired: Vec<i64>) {
    if handle.data_ranges().len() > 1 {
        for id in expired {
            revoke_expired(handle.clone(), group, term, id).await;
        }
        return;
    }
    let mut revokes = tokio::task::JoinSet::new();
    for id in expired {
        revokes.spawn(revoke_expired(handle.clone(), group, term, id));
    }
    while revokes.join_next().await.is_some() {}
}

/// Runs a group's lessor: sweeps for expired leases, proposes their revokes, and
/// checkpoints remaining TTLs, while this member leads. Ends when the node stops.
pub async fn run(handle: NodeHandle, group: GroupId, lessor: Arc<Lessor>, store: Arc<MvccStore>) {
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut revoking: Option<tokio::task::JoinHandle<()>> = None;
    // One write of checkpoints at a time, so that they apply in the order they were
    // taken: a clear that overtook the checkpoint it clears left that record in place
    // after the renewal (found by review).
    let mut checkpointing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = sweep.tick() => {}
            // A keep-alive waits for the clear it queued.
            _ = lessor.clear_wanted.notified() => {}
        }
        let Ok(status) = handle.status(group) else {
            return;
        };
        let leading = status.is_leader.then_some(status.term);
        if let Some(term) = leading.filter(|term| !lessor.keeps_term(*term)) {
            // A leadership new here takes over the deadlines only once it has applied
            // every entry committed before it (a read index): a grant, a revoke or a
            // checkpoint its predecessor committed would otherwise be missing from them,
            // and a lease would start from a stale remaining TTL or not at all.
            if !handle.confirm_leading(group, term).await {
                // Not known either way (deposed, or a read index that failed): nothing
                // is swept or checkpointed this round. Sweeping as a follower would drop
                // the deadlines a keep-alive confirmed meanwhile had just taken over.
                continue;
            }
        }
        let now = Instant::now();
        // One batch of revokes at a time: on a keyspace in ranges each locks the first
        // range, so running them side by side only makes them wait for each other (and
        // a lease still being revoked would be swept again).
        if revoking.as_ref().is_none_or(|batch| batch.is_finished()) {
            let expired = lessor.sweep(&store, leading, now);
            if !expired.is_empty() {
                let term = leading.expect("only a leader finds leases expired");
                revoking = Some(tokio::spawn(revoke_all_expired(
                    handle.clone(),
                    group,
                    term,
                    expired,
                )));
            }
        }
        // Checkpoints only from the deadlines of the term confirmed: while a batch of
        // revokes runs the sweep (which brings the lessor up to date) is skipped, and the
        // lessor may still hold an earlier term's (found by review).
        let Some(term) = leading.filter(|term| lessor.keeps_term(*term)) else {
            continue;
        };
        if checkpointing
            .as_ref()
            .is_some_and(|write| !write.is_finished())
        {
            continue;
        }
        // The leases whose checkpoint is due (`Lessor::checkpoint_gap`), and a cleared
        // one not in the same write.
        let (mut checkpoints, clears_taken) = lessor.take_checkpoint_clears(term);
        let cleared: std::collections::HashSet<i64> = checkpoints.iter().map(|c| c.id).collect();
        checkpoints.extend(
            lessor
                .checkpoints(&store, now)
                .into_iter()
                .filter(|c| !cleared.contains(&c.id)),
        );
        if !checkpoints.is_empty() {
            let handle = handle.clone();
            let lessor = lessor.clone();
            checkpointing = Some(tokio::spawn(async move {
                let clears: Vec<i64> = checkpoints
                    .iter()
                    .filter(|c| c.remaining_ttl == 0)
                    .map(|c| c.id)
                    .collect();
                // What a deposed leader knows of deadlines is stale: it records none.
                let written = handle.confirm_leading(group, term).await && {
                    let request = write_request::Request::LeaseCheckpoint(LeaseCheckpointRequest {
                        checkpoints,
                    });
                    // Proposed here only, never forwarded nor retried elsewhere: a
                    // deposed leader's checkpoint landing after its successor renewed
                    // the lease would record less than the holder was promised (found
                    // by review). An entry of this term that commits is applied before
                    // a successor takes the deadlines over; in an entry of a later term
                    // of this member's (deposed and elected again meanwhile, a renewal
                    // in between) it is refused at apply (found by review).
                    matches!(
                        handle.write_local_in_term(group, request, term).await,
                        Ok(outcome) if !matches!(outcome, WriteOutcome::Error(_))
                    )
                };
                if written {
                    lessor.clears_written_upto(clears_taken);
                } else {
                    lessor.requeue_clears(term, &clears);
                }
            }));
        }
    }
}
