//! Merges on the node's own initiative (docs/RANGES.md, "Merges"): every few seconds the
//! node looks at the data ranges it leads, and one that stayed small and cold together
//! with the range before it is merged into it. Small: the two hold less than a quarter
//! of `--range-max-bytes` (so the merged range is far from a split by size, and the two
//! do not split and merge in turn); cold: together under a quarter of
//! `--range-split-qps`. A range an operator split off is merged only by an operator.
//!
//! Every look also thaws a range frozen for a merge whose coordinator is gone (frozen
//! for longer than a merge takes): the merge is fenced off in the left range first. The
//! frozen ranges are few and the stores tell the node of them, so each look checks all
//! of them, whatever part of the keyspace its paced pass is at.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ostrakon_raft::{GroupId, LogIndex};

use crate::handle::NodeHandle;
use crate::DEFAULT_GROUP;

/// How often the node looks at the ranges it leads.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How many pairs of neighbours one look visits at most: the next look goes on where it
/// stopped. Up to this many ranges, each look visits every pair; beyond, a pass over the
/// keyspace takes several looks (as CockroachDB's replica scanner paces its queues), so
/// the cost of a look stays the same at 100,000 ranges.
const PAIRS_PER_LOOK: usize = 1_000;
/// How many looks in a row a pair must be small and cold (about 10 s with at most
/// `PAIRS_PER_LOOK` ranges; passes in a row beyond).
const COLD_LOOKS: u32 = 5;
/// A range frozen this long is thawed (its coordinator is gone): a merge takes a few
/// seconds at most.
const ABANDONED_AFTER: Duration = Duration::from_secs(15);

/// How long a pair whose merge failed rests (a replica down fails every attempt, and
/// each freezes the right range for a few seconds).
const FAILED_MERGE_REST: Duration = Duration::from_secs(60);

/// The part of the split limits below which two ranges together merge.
const MERGE_SHARE: u64 = 4;

/// Whether two neighbours together are small and cold enough to merge.
pub fn merge_due(
    live_bytes: u64,
    requests_per_second: f64,
    range_max_bytes: u64,
    range_split_qps: u64,
) -> bool {
    let small = live_bytes < range_max_bytes / MERGE_SHARE;
    let cold =
        range_split_qps == 0 || requests_per_second < range_split_qps as f64 / MERGE_SHARE as f64;
    small && cold
}

/// Looks at the ranges this node leads until the node stops.
pub(crate) async fn run(handle: NodeHandle, range_max_bytes: u64, range_split_qps: u64) {
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Passes in a row each right range was due to merge.
    let mut due_looks: HashMap<GroupId, u32> = HashMap::new();
    // When this node first saw each range frozen, by the freeze's index, while leading
    // it (a range thawed and frozen again between looks is a new freeze).
    let mut frozen_since: HashMap<(GroupId, LogIndex), Instant> = HashMap::new();
    // When each right range's last merge failed.
    let mut failed: HashMap<GroupId, Instant> = HashMap::new();
    // Where the next look starts: the index of a pair's right range in the directory
    // (ranges come and go between looks; an index off by some only shifts the pass).
    let mut next_pair = 0;
    loop {
        check.tick().await;
        if handle.status(DEFAULT_GROUP).is_err() {
            return; // the node stopped
        }
        let ranges = handle.data_ranges();
        thaw_abandoned(&handle, &mut frozen_since).await;
        let pairs = ranges.len().saturating_sub(1);
        if next_pair >= pairs {
            next_pair = 0;
            // A new pass: forget what is known of ranges no longer here.
            let here: std::collections::HashSet<GroupId> =
                ranges.iter().map(|(group, _)| *group).collect();
            due_looks.retain(|group, _| here.contains(group));
        }
        // A look stops at the end of the keyspace: the next starts a new pass (a look
        // that wrapped around would count some pairs twice towards `COLD_LOOKS`).
        let looked = (pairs - next_pair).min(PAIRS_PER_LOOK);
        let mut merge = None;
        for index in next_pair..next_pair + looked {
            let (left, right) = (ranges[index].0, ranges[index + 1].0);
            let (Ok(status), Ok(store)) = (handle.status(right), handle.store(right)) else {
                continue;
            };
            if !status.is_leader || store.frozen().is_some() {
                due_looks.remove(&right);
                continue;
            }
            if range_max_bytes == 0
                || store.split_by_hand()
                || failed
                    .get(&right)
                    .is_some_and(|at| at.elapsed() < FAILED_MERGE_REST)
            {
                due_looks.remove(&right);
                continue;
            }
            let Ok(left_store) = handle.store(left) else {
                continue;
            };
            let live_bytes = left_store.live_bytes() + store.live_bytes();
            // Every member's load (what the others report of ranges led here), as splits
            // by load count it: halves split by the followers' reads must not merge back.
            let remote = |group| handle.remote_load().load(group).per_second;
            let rate = handle.requests_per_second(left).unwrap_or(f64::MAX)
                + handle.requests_per_second(right).unwrap_or(f64::MAX)
                + remote(left)
                + remote(right);
            if !merge_due(live_bytes, rate, range_max_bytes, range_split_qps) {
                due_looks.remove(&right);
                continue;
            }
            let looks = due_looks.entry(right).or_insert(0);
            *looks += 1;
            if *looks >= COLD_LOOKS && merge.is_none() {
                merge = Some((left, right, live_bytes));
            }
        }
        next_pair += looked;
        failed.retain(|_, at| at.elapsed() < FAILED_MERGE_REST);
        if let Some((left, right, live_bytes)) = merge {
            due_looks.remove(&right);
            // A leadership that just began (leaders spread after every merge) knows no
            // follower's progress until its first appends are answered: a single look
            // here rested pairs for a minute right after a merge. The coordinator waits
            // for them instead, and refuses only if one stays behind (likely down).
            let caught_up = crate::merge_coordinator::replicas_catch_up(
                &handle,
                right,
                crate::merge_coordinator::CAUGHT_UP_BEFORE_FREEZE_TIMEOUT,
            )
            .await;
            match caught_up {
                Ok(true) => {}
                Ok(false) => {
                    failed.insert(right, Instant::now());
                    continue;
                }
                // No longer leading the right range: its next leader's queue decides.
                Err(_) => continue,
            }
            match crate::merge_coordinator::merge_here(&handle, left, right).await {
                Ok(()) => tracing::info!(
                    left = left.0,
                    right = right.0,
                    live_bytes,
                    "merged a small, cold range into the one before it"
                ),
                // Due again after as many looks (two neighbours merging into each other
                // at once give one up); a replica that did not take the freeze in fails
                // the check above next time, and the pair then rests.
                Err(error) => {
                    tracing::debug!(left = left.0, right = right.0, %error, "merging small ranges failed; will retry")
                }
            }
        }
    }
}

/// Thaws each range this node leads that has been frozen, at the same freeze, for longer
/// than a merge takes (`frozen_since`: when each freeze was first seen here).
async fn thaw_abandoned(
    handle: &NodeHandle,
    frozen_since: &mut HashMap<(GroupId, LogIndex), Instant>,
) {
    let mut frozen_now = Vec::new();
    for right in handle.frozen_ranges() {
        let (Ok(status), Ok(store)) = (handle.status(right), handle.store(right)) else {
            continue;
        };
        match store.frozen() {
            Some(mark) if status.is_leader => frozen_now.push((right, mark)),
            _ => {}
        }
    }
    frozen_since.retain(|(right, index), _| {
        frozen_now
            .iter()
            .any(|(now, mark)| now == right && mark.index == *index)
    });
    for (right, mark) in frozen_now {
        let since = *frozen_since
            .entry((right, mark.index))
            .or_insert_with(Instant::now);
        if since.elapsed() >= ABANDONED_AFTER {
            thaw(handle, mark.left, right, mark.index).await;
        }
    }
}

/// Fences off and thaws a merge whose coordinator is gone.
async fn thaw(handle: &NodeHandle, left: GroupId, right: GroupId, freeze_index: LogIndex) {
    match crate::merge_coordinator::give_up(handle, left, right, freeze_index).await {
        Ok(merged) => tracing::info!(
            left = left.0,
            right = right.0,
            merged,
            "ended a merge whose coordinator was gone"
        ),
        Err(error) => {
            tracing::warn!(left = left.0, right = right.0, %error, "a range stays frozen for an abandoned merge; will retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_ranges_merge_only_when_small_and_cold_together() {
        let mib = 1 << 20;
        assert!(merge_due(mib, 10.0, 64 * mib, 2_500));
        assert!(
            !merge_due(16 * mib, 10.0, 64 * mib, 2_500),
            "a quarter is not small"
        );
        assert!(
            !merge_due(mib, 625.0, 64 * mib, 2_500),
            "a quarter is not cold"
        );
        assert!(
            merge_due(mib, 1e9, 64 * mib, 0),
            "no load limit: size alone"
        );
    }
}
