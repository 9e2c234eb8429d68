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
//! 3. **Commit** at the primary (a range this member leads if there is one, so that the
//!    commit round goes through no other member; else the first): the commit point; it
//!    writes its part.
//! 4. **Resolve** in the others: each writes its part at T. Then the client is answered.
//!
//! Any refusal before the commit releases the locks and the request is tried again with
//! a new transaction (a lock held by another transaction: after a short pause). A
//! coordinator that dies leaves locks that whoever leads their range ends
//! (`txn_pusher`): it asks the primary to abort, and learns a commit instead if one was
//! recorded.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use ostrakon_proto::peer::{self as pb, write_request::Request, Retry};
use ostrakon_raft::GroupId;
use ostrakon_ranges::txn::TxnId;
use ostrakon_storage::mvcc::txn_tables::{lock_span, span_record, txn_id_record};
use ostrakon_storage::mvcc::{
    adds_data, etcd_status, write_intervals, MvccError, MvccStore, ReadView, Revision, WriteOutcome,
};

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

/// A new transaction over `groups`, born at the oracle's time as this member knows it
/// (`oracle_clock`), or at this member's wall clock less half the horizon's lag if that
/// is later (`wall_clock_floor`): with no round trip, and compared with its primary's
/// horizon, 10 minutes behind.
pub(crate) fn new_txn(handle: &NodeHandle, groups: &[GroupId]) -> TxnId {
    let born = oracle_clock(handle, groups).max(wall_clock_floor());
    TxnId {
        coordinator: handle.id(),
        number: next_txn_number(),
        born,
    }
}

/// This member's wall clock, half a horizon lag back, as a timestamp: the lowest birth
/// a transaction takes. The oracle's bound stands still while nobody asks it for
/// timestamps, so after an idle spell `oracle_clock` may lie far in the past, and a
/// transaction born there would meet the horizon its own prepares moved up (its commit
/// answered "forgotten", its client a timeout; found by review). Born too late is safe
/// (its aborted record is only forgotten later): a member whose clock runs ahead keeps
/// its aborted records by as much longer.
fn wall_clock_floor() -> u64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
    let lag_ms = crate::txn_horizon::horizon_lag_ms() / 2;
    ostrakon_ranges::Timestamp::from_physical_ms(now_ms.saturating_sub(lag_ms)).0
}

/// The oracle's time as this member knows it: its persisted bound as the meta range's
/// replica here applied it (up to a window, 3 s, ahead of the timestamps handed out),
/// or the highest revision the replicas of `groups` applied, if higher (a lagging meta
/// replica). The bound moves only while timestamps are handed out: see
/// `wall_clock_floor`.
pub(crate) fn oracle_clock(handle: &NodeHandle, groups: &[GroupId]) -> u64 {
    let bound = handle
        .store(crate::META_GROUP)
        .map_or(0, |meta| meta.oracle_bound());
    groups
        .iter()
        .filter_map(|&group| handle.store(group).ok())
        .map(|store| u64::try_from(store.current_revision().0).unwrap_or(0))
        .fold(bound, u64::max)
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
pub(crate) async fn release(handle: &NodeHandle, txn: TxnId, groups: &[GroupId]) {
    release_each(handle, txn, groups, |_| 0, 0).await;
}

/// Releases the locks of a transaction whose path wrote nothing, read at `revision`
/// under the locks its prepares took (`prepared`, in the order of `groups`); each range
/// is raised to `revision`. Returns whether every range still held the lock its prepare
/// took when its release applied: otherwise a pusher ended one, and a write may have
/// landed there at or below `revision` after the read.
pub(crate) async fn release_read_at(
    handle: &NodeHandle,
    txn: TxnId,
    groups: &[GroupId],
    prepared: &[pb::TxnPrepared],
    revision: i64,
) -> bool {
    assert_eq!(groups.len(), prepared.len(), "one prepare per range");
    let prepared_revision = |group: GroupId| {
        let at = groups
            .iter()
            .position(|&one| one == group)
            .expect("a range of the transaction");
        prepared[at].revision
    };
    release_each(handle, txn, groups, prepared_revision, revision).await
}

/// Proposes the transaction's release in every group of `groups`, naming the lock
/// `prepared_revision` says (0: any) and raising to `raise_revision` (0: none).
async fn release_each(
    handle: &NodeHandle,
    txn: TxnId,
    groups: &[GroupId],
    prepared_revision: impl Fn(GroupId) -> i64,
    raise_revision: i64,
) -> bool {
    let release = |group| {
        Request::TxnRelease(pb::TxnRelease {
            txn: Some(txn_id_record(txn)),
            raise_revision,
            prepared_revision: prepared_revision(group),
        })
    };
    let mut all_held = true;
    for outcome in propose_each(handle, groups, release, 0).await {
        match outcome {
            Ok(WriteOutcome::TxnDone(done)) => all_held &= done.held,
            // Refused: the range froze for a merge, which it does only when it holds no
            // lock, so it holds none of this transaction's.
            Ok(WriteOutcome::Error(error)) => {
                all_held = false;
                tracing::debug!(
                    ?txn,
                    ?error,
                    "a release was refused; the range holds no lock"
                );
            }
            Ok(other) => panic!("a release answered with {other:?}"),
            Err(error) => {
                all_held = false;
                tracing::debug!(?txn, %error, "a release failed; the range's pusher ends the lock");
            }
        }
    }
    all_held
}

/// Writes a committed transaction's parts in `groups`; those that fail are left to the
/// pushers (the locks hold readers and writers off until then). Returns whether every
/// part is written.
pub(crate) async fn resolve(
    handle: &NodeHandle,
    txn: TxnId,
    writes: &pb::TxnWrites,
    groups: &[GroupId],
) -> bool {
    let part_of = |group: GroupId| {
        let span = handle.store(group).map(|store| store.span());
        // The primary forgot the revoked leases with its commit: they live there.
        let writes = pb::TxnWrites {
            revision: writes.revision,
            writes: writes
                .writes
                .iter()
                .filter(|write| span.as_ref().map_or(true, |span| span.contains(&write.key)))
                .cloned()
                .collect(),
            revoked_leases: Vec::new(),
            participants: Vec::new(),
        };
        Request::TxnResolve(pb::TxnDecide {
            txn: Some(txn_id_record(txn)),
            writes: Some(writes),
        })
    };
    let mut written = true;
    for outcome in propose_each(handle, groups, part_of, 0).await {
        match outcome {
            // Refused (frozen for a merge): the record stays, as for a failure; the range
            // held no lock when it froze, so a pusher wrote the part already.
            Ok(WriteOutcome::Error(error)) => {
                written = false;
                tracing::debug!(?txn, ?error, "a resolve was refused");
            }
            Ok(_) => {}
            Err(error) => {
                written = false;
                tracing::warn!(?txn, %error, "a resolve failed; the range's pusher finishes it");
            }
        }
    }
    written
}

/// Drops a committed transaction's record at its primary once every part is written
/// (in the background: the client has its answer; a record left behind costs only
/// space until the primary's leader finishes it). Forgets go in bursts, one fsync for
/// all of a burst (`txn_forgets`).
fn forget(handle: &NodeHandle, txn: TxnId, primary: GroupId) {
    if failpoint("lose-forget") {
        return; // as if every try of it failed
    }
    if !handle.txn_forgets().push(txn, primary) {
        return; // its burst is on its way
    }
    let handle = handle.clone();
    tokio::spawn(async move {
        tokio::time::sleep(crate::txn_forgets::FORGET_GATHER).await;
        // Each told at once, so that they reach their primaries' leaders together.
        for (txn, primary) in handle.txn_forgets().take() {
            let handle = handle.clone();
            tokio::spawn(async move {
                let forget = Request::TxnForget(txn_id_record(txn));
                // Lost, it is finished by the horizon (`txn_horizon`).
                let _ = tell_primary(&handle, txn, primary, &forget).await;
            });
        }
    });
}

/// How many times a word to a primary that nobody will ask again is tried.
const TELL_PRIMARY_ATTEMPTS: u32 = 5;

/// Proposes `request` (a forget, or a pusher's finished mark) in the transaction's
/// primary, or the range that merged it, tried again after a growing pause while it fails
/// or is refused (no leader; frozen for a merge). Once every lock of a committed
/// transaction is gone no pusher comes back to its record: a word lost here leaves it
/// until the primary's leader finishes it, once its transaction was born below the
/// horizon (`txn_horizon::finish_unfinished`). Returns whether it applied.
pub(crate) async fn tell_primary(
    handle: &NodeHandle,
    txn: TxnId,
    primary: GroupId,
    request: &Request,
) -> bool {
    let mut pause = std::time::Duration::from_millis(100);
    for attempt in 1..=TELL_PRIMARY_ATTEMPTS {
        let failure = match propose(handle, handle.live_range(primary), request, 0).await {
            Ok(WriteOutcome::Error(error)) => error.message,
            Ok(_) => return true,
            Err(error) => error.to_string(),
        };
        tracing::debug!(
            ?txn,
            attempt,
            failure,
            "telling a transaction's primary failed"
        );
        if attempt < TELL_PRIMARY_ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    false
}

/// How long a coordinator that could not learn its transaction's outcome waits before
/// asking the primary again.
const DECIDE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// The transaction's outcome, asked of its primary by an abort (which answers a recorded
/// commit instead), again while the primary refuses (frozen for a merge: it froze only
/// once the transaction's lock there was gone, so the outcome is recorded, and the range
/// that merges it keeps the record), until `deadline`.
async fn decide_by_abort(
    handle: &NodeHandle,
    txn: TxnId,
    primary: GroupId,
    deadline: tokio::time::Instant,
) -> Result<pb::TxnDecided, NodeError> {
    let abort = Request::TxnAbort(txn_id_record(txn));
    loop {
        let refused = match propose(handle, handle.live_range(primary), &abort, 0).await {
            Ok(WriteOutcome::TxnDecided(decided)) => return Ok(decided),
            Ok(WriteOutcome::Error(error)) => NodeError::Refused {
                code: error.code,
                message: error.message,
            },
            Ok(other) => panic!("an abort answered with {other:?}"),
            Err(NodeError::UnknownGroup) => NodeError::UnknownGroup,
            Err(error) => return Err(error),
        };
        if tokio::time::Instant::now() >= deadline {
            tracing::debug!(?txn, %refused, "a transaction's outcome stays unknown");
            return Err(NodeError::Timeout);
        }
        tokio::time::sleep(DECIDE_RETRY_PAUSE).await;
    }
}

/// This member's replicas of `groups`, once they applied the prepares, with their views:
/// what the ranges hold while the transaction's locks stand. None if a lock is gone
/// already (a pusher found it stale, while this member lagged).
async fn frozen_views(
    handle: &NodeHandle,
    txn: TxnId,
    groups: &[GroupId],
    prepared: &[pb::TxnPrepared],
) -> Result<Option<Vec<(Arc<MvccStore>, ReadView)>>, NodeError> {
    let mut frozen = Vec::with_capacity(groups.len());
    for (&group, done) in groups.iter().zip(prepared) {
        handle
            .wait_applied(group, ostrakon_raft::LogIndex(done.index))
            .await?;
        let store = handle.store(group)?;
        let view = store.read_view();
        let revision = u64::try_from(done.revision).expect("a prepare's revision is positive");
        if !view.holds_lock_at(txn, revision) {
            return Ok(None);
        }
        frozen.push((store, view));
    }
    Ok(Some(frozen))
}

/// The views of the ranges the request reads (`reads`, those it locked keys in; not the
/// first range joined only for a lease), merged into one holding the keys of
/// `intervals` (the request's: all it reads or writes). None if a compaction moved
/// while the views were taken (the merged view's data must hold what every view's
/// compacted revision promises).
fn merged_view(
    frozen: Vec<(Arc<MvccStore>, ReadView)>,
    reads: &[bool],
    intervals: &[ostrakon_storage::mvcc::KeyInterval<'_>],
) -> Option<ReadView> {
    let (stores, views): (Vec<_>, Vec<_>) = frozen
        .into_iter()
        .zip(reads)
        .filter(|(_, &read)| read)
        .map(|(frozen, _)| frozen)
        .unzip();
    if views.is_empty() {
        return None; // its keys moved meanwhile: routed again
    }
    let compacted: Vec<_> = views.iter().map(|view| view.compact_revision()).collect();
    let merged = stores[0].merged_view(views, intervals);
    let compaction_moved = stores
        .iter()
        .zip(compacted)
        .any(|(store, compacted)| store.compact_revision() != compacted);
    (!compaction_moved).then_some(merged)
}

/// How many ranges a revoke checks at once (each check is a read index: the event
/// loop's input queue is bounded).
const BYSTANDER_CHECKS_AT_ONCE: usize = 256;

/// Whether no data range but `groups` (a revoke's, which hold the first range locked
/// here, each over `locked_spans`) holds a key of `lease`: each other range is read at
/// its read index, and the spans locked and read must cover the keyspace. Sound
/// because the first range's lock came first: no transaction can attach the lease
/// after it (an attach outside the first range is a transaction with it, which the lock
/// holds off), and one that committed before it had prepared its other ranges before,
/// so each range's log shows its key or its lock by the read index. Splits and merges
/// move keys only between neighbouring ranges: a range new to this member since the
/// look is checked too; one gone (merged) sends the revoke round again, and so does a
/// gap in what was read (a range this member has not got yet, found by review:
/// without this, keys a split moved into it would have been left behind).
async fn revoke_bystanders_clear(
    handle: &NodeHandle,
    lease: i64,
    groups: &[GroupId],
    locked_spans: &[Arc<ostrakon_storage::mvcc::KeySpan>],
) -> Result<bool, NodeError> {
    let mut checked: std::collections::HashSet<GroupId> = groups.iter().copied().collect();
    let mut spans = locked_spans.to_vec();
    loop {
        let unchecked: Vec<GroupId> = handle
            .data_ranges()
            .into_iter()
            .map(|(group, _)| group)
            .filter(|group| !checked.contains(group))
            .collect();
        if unchecked.is_empty() {
            return Ok(covers(&spans, &[(&b""[..], &b"\0"[..])]));
        }
        for chunk in unchecked.chunks(BYSTANDER_CHECKS_AT_ONCE) {
            let mut barriers = tokio::task::JoinSet::new();
            for &group in chunk {
                let handle = handle.clone();
                barriers.spawn(async move { handle.linearizable_read_point(group).await });
            }
            while let Some(done) = barriers.join_next().await {
                match done.expect("a read barrier panicked") {
                    Ok(()) => {}
                    // Merged into another range meanwhile (destroyed here while waited
                    // for), or this member's queue is full: the revoke goes round again.
                    Err(NodeError::UnknownGroup | NodeError::Stopped | NodeError::Overloaded) => {
                        return Ok(false)
                    }
                    Err(error) => return Err(error),
                }
            }
            let mut clears = tokio::task::JoinSet::new();
            for &group in chunk {
                let handle = handle.clone();
                clears.spawn(async move { bystander_clear(&handle, group, lease).await });
            }
            while let Some(done) = clears.join_next().await {
                match done.expect("a range's check panicked") {
                    Some(span) => spans.push(span),
                    None => return Ok(false),
                }
            }
            checked.extend(chunk.iter().copied());
        }
    }
}

/// How long a revoke waits for the locks a range left out held at its read index.
const BYSTANDER_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// `group`'s span if, read here after its read index, it holds no key of `lease` once
/// the transactions with the first range as primary that held locks in it then are gone
/// (their parts written, or released). Only those can attach the lease there (an attach
/// keeps its record in the first range), and one that locks the range later cannot
/// attach it while the revoke holds the first range. A holder waiting for the first
/// range gave up its later ranges (`prepare_every`), so this wait is short; it is
/// bounded all the same (a holder waiting for a range the revoke holds, below it in key
/// order, waits for it), and the revoke is routed again after it.
async fn bystander_clear(
    handle: &NodeHandle,
    group: GroupId,
    lease: i64,
) -> Option<Arc<ostrakon_storage::mvcc::KeySpan>> {
    let store = handle.store(group).ok()?; // merged meanwhile: None
    let first = crate::handle::first_range_id();
    let holders = store.read_view().lock_holders_of(first);
    let give_up = tokio::time::Instant::now() + BYSTANDER_LOCK_WAIT;
    loop {
        let view = store.read_view();
        if !view.lease_keys(lease).is_empty() {
            return None;
        }
        let held = view.lock_holders_of(first);
        if !holders.iter().any(|txn| held.contains(txn)) {
            return Some(Arc::new(view.span().clone()));
        }
        if tokio::time::Instant::now() >= give_up {
            return None;
        }
        tokio::time::sleep(PREPARE_WAIT_PAUSE).await;
    }
}

/// Whether the ranges' spans hold every key of `intervals`.
pub(crate) fn covers(
    spans: &[Arc<ostrakon_storage::mvcc::KeySpan>],
    intervals: &[ostrakon_storage::mvcc::KeyInterval<'_>],
) -> bool {
    let spans: Vec<&ostrakon_storage::mvcc::KeySpan> = spans.iter().map(|span| &**span).collect();
    intervals
        .iter()
        .all(|(key, range_end)| ostrakon_storage::mvcc::spans_cover(&spans, key, range_end))
}

/// Every key a request's transaction locks: its keys, or, for a lease revoke (whose
/// keys are known only once the ranges are frozen), every key.
fn lock_intervals(request: &Request) -> Vec<ostrakon_storage::mvcc::KeyInterval<'_>> {
    match request {
        Request::LeaseRevoke(_) => vec![(&b""[..], &b"\0"[..])],
        other => write_intervals(other),
    }
}

/// Evaluates the request at `revision` over the frozen ranges: a revoke range by range
/// (it reads nothing across them, and merging every range's index would cost the
/// keyspace's size), anything else over the merged views of the ranges it reads.
/// None if the merged view could not be taken (tried again).
async fn evaluate(
    handle: &NodeHandle,
    request: &Request,
    revision: Revision,
    frozen: Vec<(Arc<MvccStore>, ReadView)>,
    reads: Vec<bool>,
) -> Result<Option<Result<(WriteOutcome, pb::TxnWrites), MvccError>>, NodeError> {
    let lease_store = handle.store(crate::DEFAULT_GROUP)?;
    let request = request.clone();
    let evaluated = tokio::task::spawn_blocking(move || match &request {
        Request::LeaseRevoke(revoke) => {
            let views = frozen.into_iter().map(|(_, view)| view).collect();
            Some(ostrakon_storage::mvcc::evaluate_revoke_across(
                &lease_store,
                views,
                revision,
                revoke.id,
            ))
        }
        other => merged_view(frozen, &reads, &lock_intervals(other)).map(|view| {
            ostrakon_storage::mvcc::evaluate_across(&lease_store, view, revision, other)
        }),
    })
    .await
    .expect("evaluating a transaction panicked");
    Ok(evaluated)
}

/// How long a prepare waits before trying a range another transaction holds again. (A
/// wait woken by this member's replica applying the entry that ends the lock was tried,
/// 2026-12-03: 64 clients over two ranges got 15 % more Txn/s but some starved past
/// their deadline, as every waiter woke at once and the quickest won each time.)
const PREPARE_WAIT_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Proposes a prepare in `group`, again while another transaction holds the range, until
/// `deadline`.
async fn prepare_waiting(
    handle: &NodeHandle,
    group: GroupId,
    request: &Request,
    auth_revision: u64,
    deadline: tokio::time::Instant,
) -> Result<WriteOutcome, NodeError> {
    loop {
        match propose(handle, group, request, auth_revision).await {
            Ok(WriteOutcome::Error(error))
                if error.retry == Retry::Locked as i32
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(PREPARE_WAIT_PAUSE).await;
            }
            // Answered while waiting in the line of a leader that lost the range (never
            // proposed): asked again of the new one, however long it waited in line.
            Err(NodeError::Dropped | NodeError::NoLeader)
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(PREPARE_WAIT_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Prepares `prepares` (one per range of `groups`, in key order) in parallel; a range
/// another transaction holds is waited for in key order. The prepared locks, or the
/// outcome that refused one (every lock taken then released).
pub(crate) async fn prepare_every(
    handle: &NodeHandle,
    txn: TxnId,
    groups: &[GroupId],
    prepares: &[pb::TxnPrepare],
    auth_revision: u64,
    deadline: tokio::time::Instant,
) -> Result<Result<Vec<pb::TxnPrepared>, WriteOutcome>, NodeError> {
    // A client's last transaction over these ranges may still be writing its parts
    // here: its resolves went to the ranges' leaders as its client was answered, so
    // these prepares usually queue behind them in the ranges' logs and find the locks
    // gone as they apply (`Replica::unlocking`); one that gets there first is held off
    // and tried again in key order below.
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
    let mut prepared: Vec<Option<pb::TxnPrepared>> = Vec::with_capacity(groups.len());
    let mut refusal = None;
    let mut first_locked = None;
    for (at, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(WriteOutcome::TxnPrepared(done)) => prepared.push(Some(done)),
            // Held by another transaction: waited for below.
            Ok(WriteOutcome::Error(error)) if error.retry == Retry::Locked as i32 => {
                first_locked.get_or_insert(at);
                prepared.push(None);
            }
            // Refused (keys moved, auth, space): nothing to commit.
            Ok(other) => {
                refusal.get_or_insert(Ok(other));
                prepared.push(None);
            }
            // Maybe prepared: released below all the same.
            Err(error) => {
                refusal.get_or_insert(Err(error));
                prepared.push(None);
            }
        }
    }
    if let Some(refusal) = refusal {
        release(handle, txn, groups).await;
        return refusal.map(Err);
    }
    if let Some(first_locked) = first_locked {
        // Another transaction holds a range: this one keeps the ranges before it, gives
        // up those after, and takes the rest in key order, each waited for while held.
        // Every waiter then holds only ranges before the one it waits for, so no two
        // transactions wait for each other, and a busy range serves its transactions
        // one after the other instead of turning them all away.
        let later = &groups[first_locked + 1..];
        release(handle, txn, later).await;
        for at in first_locked..groups.len() {
            // Holding no range after this one, it may wait in the range's line.
            let request = Request::TxnPrepare(pb::TxnPrepare {
                waits_in_line: true,
                ..prepares[at].clone()
            });
            match prepare_waiting(handle, groups[at], &request, auth_revision, deadline).await {
                Ok(WriteOutcome::TxnPrepared(done)) => prepared[at] = Some(done),
                other => {
                    release(handle, txn, groups).await;
                    return other.map(Err);
                }
            }
        }
    }
    Ok(Ok(prepared
        .into_iter()
        .map(|done| done.expect("every range prepared"))
        .collect()))
}

/// The transaction's primary among `groups` (in key order): the first this member leads,
/// so that the commit, the round the client waits for after the prepares, is proposed
/// here rather than forwarded; else the first. A request that revokes or attaches a
/// lease keeps the first data range, which holds the leases, as its primary: its commit
/// there forgets the revoked leases (`TxnWrites::revoked_leases`).
fn primary_among(handle: &NodeHandle, request: &Request, groups: &[GroupId]) -> GroupId {
    let leases =
        matches!(request, Request::LeaseRevoke(_)) || crate::handle::attaches_lease(request);
    if leases {
        // `handle::write_participants` puts the first data range first for these.
        assert_eq!(
            groups[0],
            crate::DEFAULT_GROUP,
            "a transaction over leases without the range that holds them"
        );
        return groups[0];
    }
    let leads = |group: GroupId| handle.status(group).is_ok_and(|status| status.is_leader);
    groups
        .iter()
        .copied()
        .find(|&group| leads(group))
        .unwrap_or(groups[0])
}

/// Times the steps of one transaction into `ostrakon_txn_across_phase_seconds`.
struct PhaseTimer(std::time::Instant);

impl PhaseTimer {
    fn start() -> PhaseTimer {
        PhaseTimer(std::time::Instant::now())
    }

    /// Records the step that ends now, and starts the next.
    fn done(self, phase: &str) -> PhaseTimer {
        crate::metrics::metrics()
            .txn_across_phase
            .with(&[phase])
            .observe(self.0.elapsed());
        PhaseTimer::start()
    }
}

/// One attempt at `request`, whose keys fall in `groups` (in key order, two or more):
/// the outcome for the client, or one marked to be tried again.
pub(crate) async fn attempt(
    handle: &NodeHandle,
    request: &Request,
    auth_revision: u64,
    groups: &[GroupId],
) -> Result<WriteOutcome, NodeError> {
    assert!(
        groups.len() > 1 || matches!(request, Request::LeaseRevoke(_)),
        "a transaction across one range"
    );
    let deadline = tokio::time::Instant::now() + handle.request_timeout();
    let txn = new_txn(handle, groups);
    let primary = primary_among(handle, request, groups);
    let others: Vec<GroupId> = groups.iter().copied().filter(|&g| g != primary).collect();
    let intervals = lock_intervals(request);
    let mut prepares = Vec::with_capacity(groups.len());
    let mut reads = Vec::with_capacity(groups.len());
    let mut range_spans = Vec::with_capacity(groups.len());
    for &group in groups {
        let span = handle.store(group)?.span();
        range_spans.push(span.clone());
        let spans: Vec<_> = intervals
            .iter()
            .filter_map(|&(key, range_end)| span.clip(key, range_end))
            .filter_map(|(key, range_end)| lock_span(&key, &range_end))
            .map(|span| span_record(&span))
            .collect();
        reads.push(!spans.is_empty());
        prepares.push(pb::TxnPrepare {
            txn: Some(txn_id_record(txn)),
            primary: primary.0,
            spans,
            adds_data: adds_data(request),
            waits_in_line: false,
        });
    }
    // A revoke locks only the ranges that may hold the lease's keys; the others are
    // checked below, once the first range is locked.
    let revoke = match request {
        Request::LeaseRevoke(revoke) => Some(revoke.id),
        _ => None,
    };
    if revoke.is_none() && !covers(&range_spans, &intervals) {
        // A split moved keys to a range not among `groups` (or this member has not got
        // its replica yet) after they were routed: locking the rest would leave those
        // keys out. Routed again. (A split after this point is refused at the prepare.)
        return Ok(try_again());
    }
    let phases = PhaseTimer::start();
    let prepared =
        match prepare_every(handle, txn, groups, &prepares, auth_revision, deadline).await? {
            Ok(prepared) => prepared,
            Err(refused) => return Ok(refused),
        };
    if failpoint("after-prepare") {
        return Err(NodeError::Timeout);
    }
    let phases = phases.done("prepare");
    let revision = i64::try_from(ostrakon_ranges::frozen_txn::txn_revision(
        prepared
            .iter()
            .map(|done| u64::try_from(done.revision).expect("a prepare's revision is positive")),
    ))
    .expect("revisions below 2^63");
    let frozen = match frozen_views(handle, txn, groups, &prepared).await {
        Ok(Some(frozen)) => frozen,
        // A pusher ended a lock meanwhile (this member lagged): the ranges may have
        // moved on, so what it would read is not one state.
        Ok(None) => {
            release(handle, txn, groups).await;
            return Ok(try_again());
        }
        Err(error) => {
            release(handle, txn, groups).await;
            return Err(error);
        }
    };
    if let Some(lease) = revoke {
        // A participant whose span changed since its prepare was cut (a merge this
        // member had not applied) holds keys outside its lock, which its commit would
        // not delete (found by review): routed again.
        let drifted = groups.iter().zip(&range_spans).any(|(&group, locked)| {
            handle
                .store(group)
                .map_or(true, |store| *store.span() != **locked)
        });
        if drifted {
            release(handle, txn, groups).await;
            return Ok(try_again());
        }
        match revoke_bystanders_clear(handle, lease, groups, &range_spans).await {
            Ok(true) => {}
            // A range left out may hold a key of the lease: routed again, with it.
            Ok(false) => {
                release(handle, txn, groups).await;
                return Ok(try_again());
            }
            Err(error) => {
                release(handle, txn, groups).await;
                return Err(error);
            }
        }
    }
    let evaluated = match evaluate(handle, request, Revision(revision), frozen, reads).await {
        Ok(Some(evaluated)) => evaluated,
        Ok(None) => {
            release(handle, txn, groups).await;
            return Ok(try_again());
        }
        Err(error) => {
            release(handle, txn, groups).await;
            return Err(error);
        }
    };
    let (outcome, mut writes) = match evaluated {
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
    let phases = phases.done("evaluate");
    if writes.writes.is_empty() && writes.revoked_leases.is_empty() {
        // Its path only compared and read: nothing to commit. The ranges' revisions move
        // up to the one it read at, so that no write lands below it later (a write
        // fetched before the prepares but refused while they held) and the answer's
        // revision stays true.
        if !release_read_at(handle, txn, groups, &prepared, revision).await {
            // A pusher ended a lock before the release: a write may have landed in that
            // range below the revision read at, so the answer would not hold.
            return Ok(try_again());
        }
        return Ok(outcome);
    }
    writes.participants = groups.iter().map(|group| group.0).collect();
    let commit = Request::TxnCommit(pb::TxnDecide {
        txn: Some(txn_id_record(txn)),
        writes: Some(writes.clone()),
    });
    // The outcome is worth a wait of its own: without it the client hears only that
    // its request may or may not have applied.
    let deadline = tokio::time::Instant::now() + handle.request_timeout();
    // Checked against the auth store the prepares were: a commit that lands after an
    // auth change's gate in the primary's log aborts (`apply_write`), as a write would be
    // refused there.
    let decided = match propose(handle, primary, &commit, auth_revision).await {
        Ok(WriteOutcome::TxnDecided(decided)) => decided,
        // Refused: the primary froze for a merge, so a pusher had ended the lock there
        // (or an earlier copy of this commit applied): the record says which.
        Ok(WriteOutcome::Error(_)) => match decide_by_abort(handle, txn, primary, deadline).await {
            Ok(decided) => decided,
            Err(error) => return Err(error),
        },
        Ok(other) => panic!("a commit answered with {other:?}"),
        // Whether the commit applied is unknown: an abort answers how it ended.
        Err(error) => match decide_by_abort(handle, txn, primary, deadline).await {
            Ok(decided) => decided,
            Err(_) => return Err(error),
        },
    };
    phases.done("commit");
    match decided {
        decided if decided.committed && decided.writes.as_ref() == Some(&writes) => {
            if failpoint("after-commit") {
                return Err(NodeError::Timeout);
            }
            // Committed: the client is answered now. The other ranges' locks hold their
            // readers and writers until they write their parts (a linearizable read
            // waits for a lock on its keys), so nobody can tell the resolves came after.
            let resolver = handle.clone();
            tokio::spawn(async move {
                let written = resolve(&resolver, txn, &writes, &others).await;
                if written {
                    forget(&resolver, txn, primary);
                }
            });
            crate::metrics::metrics().txns_committed_across_ranges.inc();
            Ok(outcome)
        }
        decided if decided.forgotten => {
            // Born below the primary's horizon (a coordinator paused for minutes, or an
            // oracle clock that jumped): it may have committed, its record forgotten
            // since, so the request is neither answered nor run again.
            release(handle, txn, &others).await;
            tracing::warn!(
                ?txn,
                "a transaction's outcome was forgotten before it learned it"
            );
            Err(NodeError::Timeout)
        }
        decided => {
            // Aborted first by a pusher that found a lock stale; a record with other
            // writes would be a reused transaction number, which is never committed.
            assert!(
                !decided.committed,
                "transaction {txn:?} committed with writes it did not make"
            );
            release(handle, txn, &others).await;
            Ok(try_again())
        }
    }
}
