//! Reads served by the ranges holding their keys: one range's view, or the views of
//! several ranges at one revision (docs/RANGES.md, "Reads across ranges").

use ostrakon_node::{NodeError, NodeHandle};
use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::{spans_cover, KeyInterval, MvccError, ReadView, Revision};

use crate::errors::ApiError;

/// How long a read across ranges waits before trying a range whose leader moved again.
const LEADER_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// How long a read that met a transaction's lock waits before it looks again (the
/// transaction ends within a few round trips, or its lock is pushed as stale).
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a read waits before it is routed again after a split or merge moved keys.
const ROUTE_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Where a read finds its keys.
pub enum RoutedRead {
    /// One range holds every key, and the read is as on a keyspace of one range: the
    /// view is read at the request's revision.
    One(ReadView),
    /// The views of every range the read touches, in key order, to be read at `at`
    /// (`mvcc::range_across`); `header` is the revision for the response's header.
    Across {
        views: Vec<ReadView>,
        at: Revision,
        header: Revision,
    },
}

/// The first key a read names (what a split by load samples).
fn first_key<'a>(intervals: &[KeyInterval<'a>]) -> &'a [u8] {
    intervals.first().map_or(&[][..], |(key, _)| *key)
}

/// The views a Range of `intervals` at `requested` (0: current) reads. Within one range,
/// as on a keyspace of one range; across ranges (or, on a keyspace that split, at a
/// revision the one range here has not reached), one revision for all: the current one
/// from the oracle, or the requested one, after every range has applied every write at
/// or below it (the read-wait rule).
pub async fn read_at(
    node: &NodeHandle,
    intervals: &[KeyInterval<'_>],
    linearizable: bool,
    requested: i64,
) -> Result<RoutedRead, ApiError> {
    let deadline = tokio::time::Instant::now() + node.request_timeout();
    loop {
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Timeout.into());
        }
        let groups = node.ranges_touched(intervals).await?;
        if let [group] = groups[..] {
            let Ok(store) = node.store(group) else {
                // The range merged into another since it was routed: routed again.
                tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
                continue;
            };
            // On a keyspace that split, a linearizable read of the current state reads at
            // the oracle's current revision, as a read across ranges does, so that its
            // answer's revision is at or above every revision answered before it began
            // (the range's own current revision can be below another range's).
            let current_from_oracle = store.oracle_revisions() && linearizable && requested <= 0;
            let answered_here = !store.oracle_revisions()
                || (!current_from_oracle && requested <= store.current_revision().0);
            if answered_here {
                let took_oracle_revisions = store.oracle_revisions();
                match view_of(node, group, intervals, linearizable).await? {
                    // The wait applied the keyspace's first split (this member lagged):
                    // the range's own revision may now be below one answered elsewhere
                    // before this read began. Decided again, from the oracle (found by
                    // review).
                    Some(_)
                        if linearizable && !took_oracle_revisions && store.oracle_revisions() =>
                    {
                        continue
                    }
                    Some(view) => {
                        node.record_read(group, first_key(intervals));
                        return Ok(RoutedRead::One(view));
                    }
                    None => continue,
                }
            }
        }
        match read_across(node, &groups, intervals, linearizable, requested).await {
            Ok(Some(read)) => {
                for &group in &groups {
                    // Where the read enters the range: its first key, or the range's.
                    let start = node.store(group).map(|store| store.span().start().to_vec());
                    let first = first_key(intervals);
                    match start {
                        Ok(start) if first < start.as_slice() => node.record_read(group, &start),
                        _ => node.record_read(group, first),
                    }
                }
                return Ok(read);
            }
            // A split or merge moved keys: routed again once this node follows.
            Ok(None) => tokio::time::sleep(ROUTE_RETRY_PAUSE).await,
            // A range's leadership moving (or not known here yet): tried again, within
            // the deadline.
            Err(ApiError::Node(
                NodeError::NoLeader
                | NodeError::NotLeader(_)
                | NodeError::LeaderChanged
                | NodeError::Dropped
                | NodeError::UnknownGroup,
            )) => tokio::time::sleep(LEADER_RETRY_PAUSE).await,
            Err(error) => return Err(error),
        }
    }
}

/// `group`'s view, if it still holds every key of `intervals`.
async fn view_of(
    node: &NodeHandle,
    group: GroupId,
    intervals: &[KeyInterval<'_>],
    linearizable: bool,
) -> Result<Option<ReadView>, ApiError> {
    if linearizable && !crate::planted::stale_reads() {
        match node.linearizable_read_point(group).await {
            Err(NodeError::NoLeader) if node.await_new_range_leader(group).await => {
                return Ok(None)
            }
            other => other?,
        }
    }
    let Ok(store) = node.store(group) else {
        // Merged into another range meanwhile: routed again.
        tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
        return Ok(None);
    };
    let view = store.read_view();
    let holds_all = intervals
        .iter()
        .all(|(key, range_end)| view.span().covers(key, range_end));
    if !holds_all {
        // A split or a merge moves the keys (a range frozen for a merge reads nothing):
        // routed again shortly.
        tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
    }
    if linearizable && view.locked(intervals, None) && !crate::planted::reads_ignore_locks() {
        // A transaction across ranges holds some of the keys, and may have committed:
        // a linearizable read must not miss it (its part here is written when the lock
        // goes). A serializable read may be stale, and reads what is here.
        tokio::time::sleep(LOCK_RETRY_PAUSE).await;
        return Ok(None);
    }
    Ok(holds_all.then_some(view))
}

/// The views of `groups` at one revision; None if they no longer hold every key of
/// `intervals` (a split moved some: routed again).
async fn read_across(
    node: &NodeHandle,
    groups: &[GroupId],
    intervals: &[KeyInterval<'_>],
    linearizable: bool,
    requested: i64,
) -> Result<Option<RoutedRead>, ApiError> {
    let stores = groups
        .iter()
        .map(|&group| node.store(group))
        .collect::<Result<Vec<_>, _>>()?;
    if !linearizable && requested <= 0 {
        // What this member has: at the lowest of its ranges' current revisions, each of
        // them holds every write at or below it that will ever apply (revisions rise in
        // a range's log, and the apply refuses one that does not).
        let views: Vec<ReadView> = stores.iter().map(|store| store.read_view()).collect();
        let at = lowest_current(&views);
        if views.iter().all(|view| view.compact_revision() <= at) {
            return Ok(covering(views, intervals).map(|views| RoutedRead::Across {
                views,
                at,
                header: at,
            }));
        }
        // A range compacted past what another has applied here: read as a
        // linearizable read does.
    }
    let every_range_reached = requested > 0
        && stores
            .iter()
            .all(|store| store.current_revision().0 >= requested);
    // The current state of one range: its leader gives the revision and the barrier at
    // once (`NodeHandle::fresh_read_point`).
    let fresh_one = match groups[..] {
        [group] if linearizable && requested <= 0 => Some(group),
        _ => None,
    };
    let at = if let Some(group) = fresh_one {
        match node.fresh_read_point(group).await {
            Err(NodeError::NoLeader) if node.await_new_range_leader(group).await => {
                return Ok(None)
            }
            other => other?,
        }
    } else if every_range_reached {
        Revision(requested)
    } else {
        let now = node.current_timestamp().await?;
        let now = Revision(i64::try_from(now).expect("timestamps stay below 2^63"));
        if requested > now.0 {
            return Err(MvccError::FutureRevision.into());
        }
        if requested > 0 {
            Revision(requested)
        } else {
            now
        }
    };
    // Every range's barrier at once (a task each; one range needs none of its own).
    let mut waits = tokio::task::JoinSet::new();
    let mut results = Vec::new();
    if fresh_one.is_some() {
        // Its barrier came with its revision.
    } else if let [group] = groups[..] {
        results.push((group, node.read_point_at(group, at).await));
    } else {
        for &group in groups {
            let node = node.clone();
            waits.spawn(async move { (group, node.read_point_at(group, at).await) });
        }
    }
    while let Some(done) = waits.join_next().await {
        results.push(done.expect("a read barrier panicked"));
    }
    for (group, result) in results {
        match result {
            Err(NodeError::NoLeader) if node.await_new_range_leader(group).await => {
                return Ok(None)
            }
            other => other?,
        }
    }
    let views: Vec<ReadView> = stores.iter().map(|store| store.read_view()).collect();
    if views.iter().any(|view| view.locked(intervals, Some(at)))
        && !crate::planted::reads_ignore_locks()
    {
        // A transaction across ranges with a lock at or below `at` writes at or below
        // it, maybe: the read waits for the lock to go, so it sees all of its writes or
        // none.
        tokio::time::sleep(LOCK_RETRY_PAUSE).await;
        return Ok(None);
    }
    // A read of the current revision answers with the revision it read, so that pages
    // read at it see the same keyspace (a range may have applied later writes since);
    // one at a given revision answers with the current one, as etcd does.
    let header = if requested > 0 {
        highest_current(&views).max(at)
    } else {
        at
    };
    Ok(covering(views, intervals).map(|views| RoutedRead::Across { views, at, header }))
}

fn lowest_current(views: &[ReadView]) -> Revision {
    let lowest = views.iter().map(ReadView::current_revision).min();
    lowest.expect("a read touches at least one range")
}

fn highest_current(views: &[ReadView]) -> Revision {
    let highest = views.iter().map(ReadView::current_revision).max();
    highest.expect("a read touches at least one range")
}

/// The views, if together they still hold every key of `intervals`.
fn covering(views: Vec<ReadView>, intervals: &[KeyInterval<'_>]) -> Option<Vec<ReadView>> {
    let spans: Vec<_> = views.iter().map(ReadView::span).collect();
    intervals
        .iter()
        .all(|&(key, range_end)| spans_cover(&spans, key, range_end))
        .then_some(views)
}
