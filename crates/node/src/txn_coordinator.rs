//! The coordinator of a write whose keys fall in several ranges (docs/RANGES.md, "Writes
//! across ranges in the node"), run by the member that got the request:
//!
//! 1. **Prepare** in every range it touches, in parallel: each locks the request's keys
//!    there at a revision its leader fetches from the oracle, as for any write (so the
//!    read-wait rule covers it), and no other write changes the range's keys until the
//!    lock goes.
//! 2. **Evaluate** the request at T, the highest of those revisions, over this member's
//!    replicas of the ranges once they applied the prepares (`mvcc::evaluate_across`):
//!    the ranges are frozen, so compares, reads and writes see one consistent state.
//! 3. **Commit** at the primary (the first range): the commit point; it writes its part.
//! 4. **Resolve** in the others: each writes its part at T. Then the client is answered.
//!
//! Any refusal before the commit releases the locks and the request is tried again with
//! a new transaction (a lock held by another transaction: after a short pause). A
//! coordinator that dies leaves locks that whoever leads their range ends
//! (`txn_pusher`): it asks the primary to abort, and learns a commit instead if one was
//! recorded.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ostrakon_proto::peer::{self as pb, write_request::Request, Retry};
use ostrakon_raft::GroupId;
use ostrakon_ranges::txn::TxnId;
use ostrakon_storage::mvcc::txn_tables::{lock_span, span_record, txn_id_record};
use ostrakon_storage::mvcc::{adds_data, etcd_status, write_intervals, Revision, WriteOutcome};

use crate::error::NodeError;
use crate::handle::NodeHandle;

/// Transaction numbers: random at start (so a restarted member does not reuse its past
/// ones), then counted up.
fn next_txn_number() -> u64 {
    static NEXT: OnceLock<AtomicU64> = OnceLock::new();
    NEXT.get_or_init(|| {
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write_u64(std::process::id().into());
        AtomicU64::new(seed.finish() >> 1)
    })
    .fetch_add(1, Ordering::Relaxed)
}

/// Where a coordinator stops as if it died (`OSTRAKON_FAILPOINT_TXN_COORDINATOR`:
/// `after-prepare` or `after-commit`; tests only): it answers a timeout and leaves its
/// locks for the pushers.
fn failpoint(at: &str) -> bool {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("OSTRAKON_FAILPOINT_TXN_COORDINATOR").ok())
        .as_deref()
        == Some(at)
}

/// The answer that sends the request round again (`write_routed` pauses, then routes
/// it anew): a lock of another transaction was in the way, or this one was aborted.
fn try_again() -> WriteOutcome {
    WriteOutcome::Error(pb::Error {
        code: tonic::Code::Unavailable as i32,
        message: "ostrakon: keys are locked by a transaction across ranges; retry".into(),
        retry: Retry::Locked as i32,
    })
}

/// Proposes `request` in `group`, again while its revision was stale or the range
/// elects a leader.
pub(crate) async fn propose(
    handle: &NodeHandle,
    group: GroupId,
    request: &Request,
    auth_revision: u64,
) -> Result<WriteOutcome, NodeError> {
    let deadline = tokio::time::Instant::now() + handle.request_timeout();
    loop {
        match handle
            .write_checked(group, request.clone(), auth_revision)
            .await
        {
            Ok(WriteOutcome::Error(error))
                if error.retry == Retry::StaleRevision as i32
                    && tokio::time::Instant::now() < deadline => {}
            Err(NodeError::NoLeader)
                if tokio::time::Instant::now() < deadline
                    && handle.await_new_range_leader(group).await => {}
            other => return other,
        }
    }
}

/// Proposes `request` in every group of `groups` at once; their outcomes in order.
async fn propose_each(
    handle: &NodeHandle,
    groups: &[GroupId],
    request_in: impl Fn(GroupId) -> Request,
    auth_revision: u64,
) -> Vec<Result<WriteOutcome, NodeError>> {
    let mut proposals = tokio::task::JoinSet::new();
    for (at, &group) in groups.iter().enumerate() {
        let handle = handle.clone();
        let request = request_in(group);
        proposals
            .spawn(async move { (at, propose(&handle, group, &request, auth_revision).await) });
    }
    let mut outcomes: Vec<_> = (0..groups.len()).map(|_| Err(NodeError::Dropped)).collect();
    while let Some(done) = proposals.join_next().await {
        let (at, outcome) = done.expect("a transaction's proposal panicked");
        outcomes[at] = outcome;
    }
    outcomes
}

/// Releases the transaction's locks in `groups` (an aborted or never committed one).
/// A release that fails is left to the pushers.
async fn release(handle: &NodeHandle, txn: TxnId, groups: &[GroupId]) {
    let record = txn_id_record(txn);
    for outcome in propose_each(handle, groups, |_| Request::TxnRelease(record), 0).await {
        if let Err(error) = outcome {
            tracing::debug!(?txn, %error, "a release failed; the range's pusher ends the lock");
        }
    }
}

/// Writes a committed transaction's parts in `groups`; those that fail are left to the
/// pushers (the locks hold readers and writers off until then). Returns whether every
/// part is written.
async fn resolve(
    handle: &NodeHandle,
    txn: TxnId,
    writes: &pb::TxnWrites,
    groups: &[GroupId],
) -> bool {
    let decide = pb::TxnDecide {
        txn: Some(txn_id_record(txn)),
        writes: Some(writes.clone()),
    };
    let mut written = true;
    for outcome in propose_each(handle, groups, |_| Request::TxnResolve(decide.clone()), 0).await {
        if let Err(error) = outcome {
            written = false;
            tracing::warn!(?txn, %error, "a resolve failed; the range's pusher finishes it");
        }
    }
    written
}

/// Drops a committed transaction's record at its primary once every part is written
/// (in the background: the client has its answer; a record left behind costs only
/// space).
fn forget(handle: &NodeHandle, txn: TxnId, primary: GroupId) {
    let handle = handle.clone();
    tokio::spawn(async move {
        let forget = Request::TxnForget(txn_id_record(txn));
        if let Err(error) = propose(&handle, primary, &forget, 0).await {
            tracing::debug!(?txn, %error, "forgetting a transaction's record failed");
        }
    });
}

/// One attempt at `request`, whose keys fall in `groups` (in key order, two or more):
/// the outcome for the client, or one marked to be tried again.
pub(crate) async fn attempt(
    handle: &NodeHandle,
    request: &Request,
    auth_revision: u64,
    groups: &[GroupId],
) -> Result<WriteOutcome, NodeError> {
    assert!(groups.len() > 1, "a transaction across one range");
    let txn = TxnId {
        coordinator: handle.id(),
        number: next_txn_number(),
    };
    let primary = groups[0];
    let intervals = write_intervals(request);
    let mut prepares = Vec::with_capacity(groups.len());
    for &group in groups {
        let span = handle.store(group)?.span();
        let spans = intervals
            .iter()
            .filter_map(|&(key, range_end)| span.clip(key, range_end))
            .filter_map(|(key, range_end)| lock_span(&key, &range_end))
            .map(|span| span_record(&span))
            .collect();
        prepares.push(pb::TxnPrepare {
            txn: Some(txn_id_record(txn)),
            primary: primary.0,
            spans,
            adds_data: adds_data(request),
        });
    }
    let outcomes = propose_each(
        handle,
        groups,
        |group| {
            let at = groups
                .iter()
                .position(|&g| g == group)
                .expect("one of the groups");
            Request::TxnPrepare(prepares[at].clone())
        },
        auth_revision,
    )
    .await;
    let mut prepared = Vec::with_capacity(groups.len());
    let mut refusal = None;
    for outcome in outcomes {
        match outcome {
            Ok(WriteOutcome::TxnPrepared(done)) => prepared.push(done),
            // Refused (a lock in the way, keys moved, auth, space): nothing to commit.
            Ok(other) => drop(refusal.get_or_insert(Ok(other))),
            // Maybe prepared: released below all the same.
            Err(error) => drop(refusal.get_or_insert(Err(error))),
        }
    }
    if let Some(refusal) = refusal {
        release(handle, txn, groups).await;
        return refusal;
    }
    if failpoint("after-prepare") {
        return Err(NodeError::Timeout);
    }
    let revision = prepared
        .iter()
        .map(|done| done.revision)
        .max()
        .expect("two prepares at least");
    // This member's replicas, once they applied the prepares, hold what the ranges hold
    // until the locks go.
    let mut views = Vec::with_capacity(groups.len());
    for (&group, done) in groups.iter().zip(&prepared) {
        handle
            .wait_applied(group, ostrakon_raft::LogIndex(done.index))
            .await?;
        views.push(handle.store(group)?.read_view());
    }
    let lease_store = handle.store(crate::DEFAULT_GROUP)?;
    let evaluate_request = request.clone();
    let evaluated = tokio::task::spawn_blocking(move || {
        ostrakon_storage::mvcc::evaluate_across(
            &lease_store,
            views,
            Revision(revision),
            &evaluate_request,
        )
    })
    .await
    .expect("evaluating a transaction panicked");
    let (outcome, writes) = match evaluated {
        Ok(evaluated) => evaluated,
        Err(error) => {
            release(handle, txn, groups).await;
            let (code, message) = etcd_status(&error);
            return Ok(WriteOutcome::Error(pb::Error {
                code,
                message,
                retry: Retry::None as i32,
            }));
        }
    };
    if writes.writes.is_empty() {
        // Its path only compared and read: nothing to commit.
        release(handle, txn, groups).await;
        return Ok(outcome);
    }
    let commit = Request::TxnCommit(pb::TxnDecide {
        txn: Some(txn_id_record(txn)),
        writes: Some(writes.clone()),
    });
    let decided = match propose(handle, primary, &commit, 0).await {
        Ok(decided) => decided,
        // Whether the commit applied is unknown: an abort answers how it ended.
        Err(error) => {
            let abort = Request::TxnAbort(txn_id_record(txn));
            match propose(handle, primary, &abort, 0).await {
                Ok(decided) => decided,
                Err(_) => return Err(error),
            }
        }
    };
    match decided {
        WriteOutcome::TxnDecided(decided)
            if decided.committed && decided.writes.as_ref() == Some(&writes) =>
        {
            if failpoint("after-commit") {
                return Err(NodeError::Timeout);
            }
            if resolve(handle, txn, &writes, &groups[1..]).await {
                forget(handle, txn, primary);
            }
            crate::metrics::metrics().txns_committed_across_ranges.inc();
            Ok(outcome)
        }
        WriteOutcome::TxnDecided(decided) => {
            // Aborted first by a pusher that found a lock stale; a record with other
            // writes would be a reused transaction number, which is never committed.
            assert!(
                !decided.committed,
                "transaction {txn:?} committed with writes it did not make"
            );
            release(handle, txn, &groups[1..]).await;
            Ok(try_again())
        }
        other => panic!("a commit answered with {other:?}"),
    }
}
