//! Ends the locks that transactions across ranges leave behind when their coordinator
//! dies, pauses or loses its messages (docs/RANGES.md, "Writes across ranges in the
//! node"). One task per node: every second it looks at the data ranges this node
//! leads that held a lock after a change (`range_work`), for as long as they hold one,
//! and a lock seen held for `LOCK_STALE` is pushed (several at once): the transaction's
//! primary is asked to abort it (`TxnAbort`), which answers the committed record instead
//! if the commit came first; then the lock's range writes the transaction's part
//! (`TxnResolve`) or forgets the lock (`TxnRelease`). Aborting a transaction whose coordinator is only
//! slow is safe: its commit is then refused and it tries again. A committed one is
//! finished in every range it prepared in, and its record then forgotten at the primary.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use ostrakon_proto::peer::{self as pb, write_request::Request};
use ostrakon_raft::GroupId;
use ostrakon_ranges::txn::TxnId;
use ostrakon_storage::mvcc::txn_tables::txn_id_record;
use ostrakon_storage::mvcc::WriteOutcome;

use crate::handle::NodeHandle;
use crate::txn_coordinator::{propose, resolve, tell_primary};
use crate::DEFAULT_GROUP;

/// How often the node looks for stale locks.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a lock is held before it is pushed: a coordinator finishes within a few
/// round trips.
pub(crate) const LOCK_STALE: Duration = Duration::from_secs(2);

/// How many pushes one node runs at once.
const PUSHES_IN_FLIGHT_MAX: usize = 16;

/// Pushes stale locks in the ranges this node leads until the node stops.
pub(crate) async fn run(handle: NodeHandle) {
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When this node first saw each lock held (while leading its range).
    let mut first_seen: HashMap<(GroupId, TxnId), Instant> = HashMap::new();
    // The ranges led here that held a lock at the last look, or were noticed since.
    let mut locked = BTreeSet::new();
    loop {
        check.tick().await;
        if handle.status(DEFAULT_GROUP).is_err() {
            return; // the node stopped
        }
        let now = Instant::now();
        let mut held = HashMap::new();
        locked.append(&mut handle.range_work().locked.take());
        let mut still_locked = BTreeSet::new();
        let mut stale = Vec::new();
        for group in locked {
            let (Ok(status), Ok(store)) = (handle.status(group), handle.store(group)) else {
                continue;
            };
            // A range led elsewhere now is pushed there (one led here again is noticed
            // again, locks and all).
            if !status.is_leader || !store.has_txn_locks() {
                continue;
            }
            still_locked.insert(group);
            for lock in store.txn_locks() {
                let seen = *first_seen.get(&(group, lock.txn)).unwrap_or(&now);
                held.insert((group, lock.txn), seen);
                if now.duration_since(seen) >= LOCK_STALE {
                    stale.push((group, lock.txn, GroupId(lock.primary.0)));
                }
            }
        }
        // Pushed side by side: a push whose primary has no leader waits out a request
        // timeout, and must not hold back the others' (a few at a time, so a node with
        // many stale locks does not flood the primaries).
        futures_util::stream::iter(stale)
            .for_each_concurrent(PUSHES_IN_FLIGHT_MAX, |(group, txn, primary)| {
                push(&handle, group, txn, primary)
            })
            .await;
        first_seen = held;
        locked = still_locked;
    }
}

/// Ends `txn`'s lock in `group`: abort at the primary (or learn its commit), then
/// resolve or release here.
async fn push(handle: &NodeHandle, group: GroupId, txn: TxnId, primary: GroupId) {
    let record = txn_id_record(txn);
    // A primary merged into another range: that range keeps its outcomes.
    let primary = handle.live_range(primary);
    let decided = match propose(handle, primary, &Request::TxnAbort(record), 0).await {
        Ok(WriteOutcome::TxnDecided(decided)) => decided,
        other => {
            tracing::debug!(
                ?txn,
                group = group.0,
                ?other,
                "pushing a stale lock failed; will retry"
            );
            return;
        }
    };
    let participants = decided
        .writes
        .as_ref()
        .map_or(0, |writes| writes.participants.len());
    if decided.committed && participants > 0 {
        finish_committed(handle, group, txn, primary, decided).await;
        return;
    }
    let finish = if decided.committed {
        Request::TxnResolve(pb::TxnDecide {
            txn: Some(record),
            writes: decided.writes,
        })
    } else {
        Request::TxnRelease(pb::TxnRelease {
            txn: Some(record),
            raise_revision: 0,
            // Whichever lock of it the range holds: the transaction is over.
            prepared_revision: 0,
        })
    };
    let outcome = propose(handle, group, &finish, 0).await;
    crate::metrics::metrics().txn_locks_pushed.inc();
    tracing::info!(
        ?txn,
        group = group.0,
        committed = decided.committed,
        ok = outcome.is_ok(),
        "ended a stale lock of a transaction across ranges"
    );
}

/// Finishes a committed transaction its coordinator left: writes its part in every
/// range it prepared in but the primary (which wrote its own with the record; a range
/// whose part is written already takes the resolve as a no-op), then, every part
/// written, marks the record finished at the primary, which forgets it once its horizon
/// passes the transaction's birth. Not at once: the coordinator may be alive, its
/// commit's answer lost, and about to ask the primary how its transaction ended (a
/// forgotten record would answer "aborted", and it would run the request again). Until
/// a part is written the record stays unmarked: forgotten, a lock left standing would
/// be taken for aborted.
async fn finish_committed(
    handle: &NodeHandle,
    group: GroupId,
    txn: TxnId,
    primary: GroupId,
    decided: pb::TxnDecided,
) {
    let writes = decided
        .writes
        .expect("a committed record carries its writes");
    let finished = finish_record(handle, txn, primary, &writes).await;
    crate::metrics::metrics().txn_locks_pushed.inc();
    tracing::info!(
        ?txn,
        group = group.0,
        finished,
        "finished a committed transaction across ranges its coordinator left"
    );
}

/// Writes a committed transaction's part in every participant of `writes` but the
/// primary, and, every part written, marks its record finished at `primary`. Returns
/// whether it did both (else the record stays unfinished, for a later try).
pub(crate) async fn finish_record(
    handle: &NodeHandle,
    txn: TxnId,
    primary: GroupId,
    writes: &pb::TxnWrites,
) -> bool {
    // A record from a build before `TxnWrites::participants` names no participant: it
    // cannot be finished from here (its locks' pushers finish its parts), and marking it
    // finished would let the horizon forget a commit some range has not written yet.
    if writes.participants.is_empty() {
        tracing::warn!(?txn, "a committed record names no participants: left kept");
        return false;
    }
    // A range merged since it wrote its part is resolved in the range that took it in.
    let others: Vec<GroupId> = writes
        .participants
        .iter()
        .map(|&participant| GroupId(participant))
        .filter(|&participant| participant != primary)
        .map(|participant| handle.live_range(participant))
        .collect();
    if !resolve(handle, txn, writes, &others).await {
        return false;
    }
    let finished = Request::TxnFinished(txn_id_record(txn));
    tell_primary(handle, txn, primary, &finished).await
}
