//! Forgets the records of transactions across ranges decided without their
//! coordinator (docs/RANGES.md, "Forgetting transaction records"). A primary range
//! records an abort when an outcome had to be decided without the transaction's
//! coordinator (a pusher's abort, or a coordinator that lost track of its commit), and
//! keeps the record of a committed transaction a pusher finished until no coordinator
//! can still ask about it; without more, those records would pile up for ever. One task per node: every second it looks at the ranges this node leads
//! that kept records after a change (`range_work`), for as long as they keep some
//! (counted in `ostrakon_txn_records_aborted` and `_committed`), and proposes a horizon `horizon_lag_ms` behind the oracle's time as this node
//! knows it, the clock transactions are born by (`txn_coordinator::oracle_clock`; at most
//! once per `horizon_every`, and only when it forgets a record). Every replica applies
//! it alike: from then on a transaction born below it is aborted, recorded or not, so
//! forgetting its record changes no answer (`ostrakon_ranges::txn::TxnRecords`).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use ostrakon_proto::peer::{self as pb, write_request::Request};
use ostrakon_raft::GroupId;
use ostrakon_ranges::txn::TxnId;
use ostrakon_ranges::Timestamp;

use crate::handle::NodeHandle;
use crate::txn_coordinator::propose;
use crate::DEFAULT_GROUP;

/// How often the node looks at the ranges keeping records.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How far behind the oracle's time a range's horizon stays, in the oracle's milliseconds: a
/// transaction still running this long after it began is long past its request's
/// deadline. `OSTRAKON_TXN_HORIZON_LAG_MS` sets it (tests only).
pub(crate) fn horizon_lag_ms() -> u64 {
    static LAG_MS: OnceLock<u64> = OnceLock::new();
    *LAG_MS.get_or_init(|| {
        std::env::var("OSTRAKON_TXN_HORIZON_LAG_MS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(10 * 60 * 1000)
    })
}

/// How often a range's horizon is proposed at most: a tenth of the lag, at least a second
/// (once a minute by default).
fn horizon_every() -> Duration {
    Duration::from_millis(horizon_lag_ms() / 10).max(CHECK_INTERVAL)
}

/// The horizon at the oracle's time `clock`: `lag_ms` before it. Before the keyspace
/// first split, the clock is a small count, not a timestamp: the horizon is 0 (no
/// transaction across ranges ran yet).
fn horizon_below(clock: u64, lag_ms: u64) -> u64 {
    let physical_ms = Timestamp(clock).physical_ms();
    if physical_ms <= lag_ms {
        return 0;
    }
    Timestamp::from_physical_ms(physical_ms - lag_ms).0
}

/// How many committed records nobody finished a range's leader finishes at one look.
const FINISHES_PER_LOOK_MAX: usize = 16;

/// A record the node failed to finish is tried again after this long: records that
/// cannot be finished yet (a participant without a leader, a record naming no
/// participants) must not keep the others from the looks' few places.
const FINISH_RETRY_PAUSE: Duration = Duration::from_secs(60);

/// The records to finish at one look, oldest first, out of `candidates` (oldest first,
/// up to `FINISHES_PER_LOOK_MAX` more than `failed_at` holds): those not failed within
/// `FINISH_RETRY_PAUSE` of `now`.
fn pick_to_finish<W>(
    candidates: Vec<(TxnId, W)>,
    failed_at: &HashMap<TxnId, Instant>,
    now: Instant,
) -> Vec<(TxnId, W)> {
    candidates
        .into_iter()
        .filter(|(txn, _)| {
            failed_at
                .get(txn)
                .is_none_or(|&at| now.duration_since(at) >= FINISH_RETRY_PAUSE)
        })
        .take(FINISHES_PER_LOOK_MAX)
        .collect()
}

/// Finishes committed records of `group` that nobody finished and whose transactions
/// were born below the horizon about to be proposed: their coordinator's forget was lost
/// (every try failed), or a late copy of their commit recorded them again after it. No
/// lock of them is left for a pusher to find, so without this they would be kept for
/// good. Every participant is resolved (a range whose part is written takes it as a
/// no-op), then the record is marked finished, and the horizon forgets it.
async fn finish_unfinished(
    handle: &NodeHandle,
    group: GroupId,
    unfinished: Vec<(TxnId, pb::TxnWrites)>,
) -> Vec<TxnId> {
    futures_util::stream::iter(unfinished)
        .map(|(txn, writes)| async move {
            let finished = crate::txn_pusher::finish_record(handle, txn, group, &writes).await;
            if finished {
                crate::metrics::metrics().txn_records_finished_late.inc();
            }
            tracing::info!(
                ?txn,
                group = group.0,
                finished,
                "finished an old committed transaction record nobody finished"
            );
            (!finished).then_some(txn)
        })
        .buffer_unordered(FINISHES_PER_LOOK_MAX)
        .filter_map(std::future::ready)
        .collect()
        .await
}

/// Raises the horizons of the ranges this node leads until the node stops.
pub(crate) async fn run(handle: NodeHandle) {
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The ranges led here that kept records at the last look, or were noticed since.
    let mut recorded = BTreeSet::new();
    let mut proposed_at: HashMap<GroupId, Instant> = HashMap::new();
    // Records the node failed to finish, and when (`pick_to_finish`).
    let mut failed_at: HashMap<TxnId, Instant> = HashMap::new();
    loop {
        check.tick().await;
        if handle.status(DEFAULT_GROUP).is_err() {
            return; // the node stopped
        }
        recorded.append(&mut handle.range_work().recorded.take());
        let mut still_recorded = BTreeSet::new();
        let (mut aborted_kept, mut committed_kept) = (0, 0);
        for group in recorded {
            let (Ok(status), Ok(store)) = (handle.status(group), handle.store(group)) else {
                continue;
            };
            // A range led elsewhere now is looked at there.
            if !status.is_leader {
                continue;
            }
            let kept = store.txn_outcome_count();
            if kept == 0 {
                continue;
            }
            still_recorded.insert(group);
            let aborted = store.txn_aborted_count();
            aborted_kept += aborted;
            committed_kept += kept - aborted;
            // The same clock transactions are born by.
            let clock = crate::txn_coordinator::oracle_clock(&handle, &[group]);
            let below = horizon_below(clock, horizon_lag_ms());
            let due = proposed_at
                .get(&group)
                .is_none_or(|at| at.elapsed() >= horizon_every());
            if !due {
                continue;
            }
            let now = Instant::now();
            failed_at.retain(|_, at| now.duration_since(*at) < FINISH_RETRY_PAUSE);
            let candidates = store
                .txn_unfinished_committed_below(below, FINISHES_PER_LOOK_MAX + failed_at.len());
            let unfinished = pick_to_finish(candidates, &failed_at, now);
            if !unfinished.is_empty() {
                for txn in finish_unfinished(&handle, group, unfinished).await {
                    failed_at.insert(txn, Instant::now());
                }
            }
            if store.oldest_forgettable_txn(below).is_none() {
                continue;
            }
            proposed_at.insert(group, Instant::now());
            let horizon = Request::TxnHorizon(pb::TxnHorizon { below });
            let outcome = propose(&handle, group, &horizon, 0).await;
            tracing::debug!(
                group = group.0,
                below,
                ok = outcome.is_ok(),
                "proposed a transaction horizon"
            );
        }
        proposed_at.retain(|group, _| still_recorded.contains(group));
        let metrics = crate::metrics::metrics();
        metrics
            .txn_records_aborted
            .set(i64::try_from(aborted_kept).unwrap_or(i64::MAX));
        metrics
            .txn_records_committed
            .set(i64::try_from(committed_kept).unwrap_or(i64::MAX));
        recorded = still_recorded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_that_failed_to_finish_leave_their_places_to_others_for_a_while() {
        let txn = |number| TxnId {
            coordinator: ostrakon_raft::NodeId(1),
            number,
            born: number,
        };
        let now = Instant::now();
        // Twenty unfinishable records ahead of two others, all failed just now.
        let failed_at: HashMap<TxnId, Instant> = (0..20).map(|n| (txn(n), now)).collect();
        let candidates: Vec<(TxnId, ())> = (0..22).map(|n| (txn(n), ())).collect();
        let picked: Vec<u64> = pick_to_finish(candidates.clone(), &failed_at, now)
            .into_iter()
            .map(|(txn, ())| txn.number)
            .collect();
        assert_eq!(picked, vec![20, 21]);
        // Their pause over, they are tried again, the oldest first, up to a look's share.
        let later = now + FINISH_RETRY_PAUSE;
        let picked = pick_to_finish(candidates, &failed_at, later);
        assert_eq!(picked.len(), FINISHES_PER_LOOK_MAX);
        assert_eq!(picked[0].0, txn(0));
    }

    #[test]
    fn the_horizon_stays_its_lag_behind_the_revision_in_the_oracle_time() {
        let revision = Timestamp::from_physical_ms(1_000_000).plus(7).0;
        assert_eq!(
            horizon_below(revision, 600_000),
            Timestamp::from_physical_ms(400_000).0
        );
        // A keyspace that never split counts its revisions from 1: no horizon.
        assert_eq!(horizon_below(12_345, 600_000), 0);
    }
}
