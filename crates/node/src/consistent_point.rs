//! One consistent point across every data range, for a backup of a keyspace in ranges
//! (`Maintenance.Snapshot`). One transaction locks every range whole (as a lease revoke
//! does: other writes and transactions wait, reads of the current state too); each
//! range is then frozen on this member (`MvccStore::freeze`, between two applies, after
//! its lock applied); then the locks go, each range's revision raised to the
//! transaction's, T. No range's keys changed while its lock stood, so the frozen states
//! together are the keyspace as of T, and no write lands at or below T afterwards. The
//! ranges are locked only while they are frozen (milliseconds); the backup is written
//! from the frozen states after.

use ostrakon_proto::peer as pb;
use ostrakon_storage::mvcc::txn_tables::{lock_span, span_record, txn_id_record};
use ostrakon_storage::mvcc::{FrozenState, Revision, WriteOutcome};

use crate::error::NodeError;
use crate::handle::NodeHandle;
use crate::txn_coordinator::{covers, new_txn, prepare_every, release, release_read_at};

/// How long the consistent point waits before trying again after a refusal that asks
/// for it (a split moving keys, a transaction's lock that outlived the wait).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Every data range's frozen state, in key order, at one revision (returned with them).
pub(crate) async fn freeze_every_range(
    handle: &NodeHandle,
) -> Result<(Revision, Vec<FrozenState>), NodeError> {
    let deadline = tokio::time::Instant::now() + handle.request_timeout();
    loop {
        if let Some(frozen) = attempt(handle, deadline).await? {
            return Ok(frozen);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Timeout);
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// One try; None to try again.
async fn attempt(
    handle: &NodeHandle,
    deadline: tokio::time::Instant,
) -> Result<Option<(Revision, Vec<FrozenState>)>, NodeError> {
    let groups: Vec<_> = handle
        .data_ranges()
        .into_iter()
        .map(|(group, _)| group)
        .collect();
    assert_eq!(
        groups.first(),
        Some(&crate::DEFAULT_GROUP),
        "the first data range starts the keyspace"
    );
    let txn = new_txn(handle, &groups);
    let mut prepares = Vec::with_capacity(groups.len());
    let mut range_spans = Vec::with_capacity(groups.len());
    for &group in &groups {
        // This member's replica catches up first, so that the ranges stay locked only
        // for the moment it takes to freeze them, not while it lags.
        handle.linearizable_read_point(group).await?;
        let span = handle.store(group)?.span();
        range_spans.push(span.clone());
        let spans = span
            .clip(b"", b"\0")
            .and_then(|(key, range_end)| lock_span(&key, &range_end))
            .map(|span| vec![span_record(&span)])
            .unwrap_or_default();
        prepares.push(pb::TxnPrepare {
            txn: Some(txn_id_record(txn)),
            primary: crate::DEFAULT_GROUP.0,
            spans,
            adds_data: false,
            waits_in_line: false,
        });
    }
    if !covers(&range_spans, &[(b"", b"\0")]) {
        // A range this member has no replica of yet (a split just made it): wait.
        return Ok(None);
    }
    let prepared = match prepare_every(handle, txn, &groups, &prepares, 0, deadline).await? {
        Ok(prepared) => prepared,
        Err(WriteOutcome::Error(error)) if error.retry != pb::Retry::None as i32 => {
            return Ok(None);
        }
        Err(WriteOutcome::Error(error)) => {
            return Err(NodeError::Refused {
                code: error.code,
                message: error.message,
            })
        }
        Err(other) => panic!("a prepare answered with {other:?}"),
    };
    let revision = i64::try_from(ostrakon_ranges::frozen_txn::txn_revision(
        prepared
            .iter()
            .map(|done| u64::try_from(done.revision).expect("a prepare's revision is positive")),
    ))
    .expect("revisions below 2^63");
    // Every range waited for at once, then frozen a chunk per round of the event loop:
    // the ranges stay locked about as long as the slowest takes to apply its lock (one
    // after the other, each cost an event-loop round trip while every range was locked).
    let applied = futures_util::future::try_join_all(
        groups
            .iter()
            .zip(&prepared)
            .map(|(&group, done)| handle.wait_applied(group, ostrakon_raft::LogIndex(done.index))),
    )
    .await;
    let frozen = match applied {
        Ok(_) => freeze_in_chunks(handle, &groups).await,
        Err(error) => Err(error),
    };
    let frozen = match frozen {
        Ok(frozen) => frozen,
        // A range merged away meanwhile: tried again with the ranges as they are now.
        Err(NodeError::UnknownGroup) => {
            release(handle, txn, &groups).await;
            return Ok(None);
        }
        Err(error) => {
            release(handle, txn, &groups).await;
            return Err(error);
        }
    };
    // Every range still held the lock its prepare took when its release applied (so
    // when it was frozen, before): otherwise a pusher ended one, and a write may have
    // landed below T.
    if release_read_at(handle, txn, &groups, &prepared, revision).await {
        Ok(Some((Revision(revision), frozen)))
    } else {
        Ok(None)
    }
}

/// How many ranges one round of the event loop freezes: each freeze commits a batch and
/// copies the range's tables, and every other group on the node waits for the round
/// (the locks, not one round, keep the frozen states at one point).
const FREEZE_CHUNK_RANGES: usize = 256;

/// This member's replicas of `groups`, frozen `FREEZE_CHUNK_RANGES` per round of the
/// event loop, in the order of `groups`.
async fn freeze_in_chunks(
    handle: &NodeHandle,
    groups: &[ostrakon_raft::GroupId],
) -> Result<Vec<FrozenState>, NodeError> {
    let mut frozen = Vec::with_capacity(groups.len());
    for chunk in groups.chunks(FREEZE_CHUNK_RANGES) {
        frozen.extend(handle.freeze_every(chunk.to_vec()).await?);
    }
    Ok(frozen)
}
