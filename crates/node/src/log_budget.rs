//! A node-wide bound on the raft log held in memory (`--raft-log-memory-bytes`).
//!
//! Each group keeps the entries after its last compaction in memory, and compacted only
//! when it wrote a snapshot file: every 100,000 entries or 64 MiB of log, per group. A
//! node with many busy ranges held each one's log, and a member's memory grew with the
//! number of ranges written to (a keyspace in four ranges held about twice the log of
//! one in two). Now, when the logs of all groups together weigh more than the budget,
//! the heaviest are compacted until they weigh at most half of it.
//!
//! Compacting needs no snapshot file: every range's state lives in the node's one
//! storage engine, so the log up to the state machine's applied position may go once
//! that position is durable there (one sync of the engine covers every group). A
//! follower that later needs entries before the compaction gets a snapshot file written
//! then (`SnapshotSent::NoFile`), as a range made by a split does. A leader compacts
//! only up to what its followers that keep up hold (`RawNode::compaction_floor`), so
//! they are not sent snapshots for a few entries in flight.

use ostrakon_raft::{EntryPayload, GroupId, LogIndex, SnapshotMeta};

use crate::replica::Replica;

/// How the heaviest logs are picked for compaction.
#[derive(Clone, Copy, Debug)]
pub struct LogBudget {
    /// Above this, logs are compacted (0: no bound).
    pub bytes_max: u64,
}

impl LogBudget {
    /// The groups to try to compact, heaviest first, and how many bytes their
    /// compactions should free: nothing while the total is within the budget; else down
    /// to half the budget (the rest is room for the writes until the next look). The
    /// caller takes groups in order until it freed that much: some cannot be compacted
    /// now (a follower behind, a merge holding entries).
    pub fn candidates(&self, logs: Vec<(GroupId, u64)>) -> (Vec<(GroupId, u64)>, u64) {
        let total: u64 = logs.iter().map(|&(_, bytes)| bytes).sum();
        if self.bytes_max == 0 || total <= self.bytes_max {
            return (Vec::new(), 0);
        }
        let mut logs: Vec<(GroupId, u64)> = logs.into_iter().filter(|&(_, b)| b > 0).collect();
        logs.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        (logs, total - self.bytes_max / 2)
    }
}

/// Where `replica`'s log may be compacted to now, if anywhere past its snapshot: the
/// state machine's applied position, or below it a leader's compaction floor (its
/// followers heard from within `follower_window_ticks`). None for a range holding
/// entries for a merge (its store is behind its log), writing a snapshot file (a
/// follower waits for it), or whose membership changed between the two positions (the
/// snapshot position's membership must be the one at its index).
pub(crate) fn compactable(replica: &Replica, follower_window_ticks: u64) -> Option<SnapshotMeta> {
    if !replica.held_entries.is_empty() || replica.snapshot_in_progress {
        return None;
    }
    let applied = replica.store.applied();
    let floor = replica.node.compaction_floor(follower_window_ticks);
    let index = applied.index.min(floor);
    // Raft's own snapshot position first: one just received is installed in the store
    // (and `snapshot_index`) only when its Ready is handled.
    let snapshot = replica
        .snapshot_index
        .max(replica.node.snapshot_meta().index);
    if index <= snapshot {
        return None;
    }
    let conf_changed = (index.0 + 1..=applied.index.0).any(|i| {
        matches!(
            replica
                .node
                .log_entry(LogIndex(i))
                .map(|entry| &entry.payload),
            Some(EntryPayload::ConfChange(_))
        )
    });
    if conf_changed {
        return None;
    }
    let term = replica.node.log_term(index)?;
    Some(SnapshotMeta {
        index,
        term,
        conf_state: applied.conf_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_compacted_within_the_budget() {
        let budget = LogBudget { bytes_max: 100 };
        let (groups, to_free) = budget.candidates(vec![(GroupId(1), 60), (GroupId(2), 40)]);
        assert!(groups.is_empty());
        assert_eq!(to_free, 0);
        let unbounded = LogBudget { bytes_max: 0 };
        assert_eq!(unbounded.candidates(vec![(GroupId(1), 1 << 40)]).1, 0);
    }

    #[test]
    fn the_heaviest_logs_come_first_until_half_the_budget_is_left() {
        let budget = LogBudget { bytes_max: 100 };
        let logs = vec![
            (GroupId(1), 10),
            (GroupId(2), 70),
            (GroupId(3), 30),
            (GroupId(4), 30),
            (GroupId(5), 0),
        ];
        // 140 in all: 90 to free to be left with 50.
        let (groups, to_free) = budget.candidates(logs);
        assert_eq!(to_free, 90);
        let order: Vec<GroupId> = groups.iter().map(|&(group, _)| group).collect();
        assert_eq!(order, vec![GroupId(2), GroupId(3), GroupId(4), GroupId(1)]);
    }
}
