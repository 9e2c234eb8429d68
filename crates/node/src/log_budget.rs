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

use ostrakon_raft::GroupId;

/// How the heaviest logs are picked for compaction.
#[derive(Clone, Copy, Debug)]
pub struct LogBudget {
    /// Above this, logs are compacted (0: no bound).
    pub bytes_max: u64,
}

impl LogBudget {
    /// The groups to compact, heaviest first, given every group's log weight: none while
    /// the total is within the budget; else the fewest whose logs bring it down to half
    /// the budget (the rest of the budget is room for the writes until the next look).
    pub fn pick(&self, logs: impl IntoIterator<Item = (GroupId, u64)>) -> Vec<GroupId> {
        if self.bytes_max == 0 {
            return Vec::new();
        }
        let mut logs: Vec<(GroupId, u64)> = logs.into_iter().filter(|&(_, b)| b > 0).collect();
        let mut total: u64 = logs.iter().map(|&(_, bytes)| bytes).sum();
        if total <= self.bytes_max {
            return Vec::new();
        }
        logs.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let low_water = self.bytes_max / 2;
        let mut picked = Vec::new();
        for (group, bytes) in logs {
            if total <= low_water {
                break;
            }
            picked.push(group);
            total -= bytes;
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_compacted_within_the_budget() {
        let budget = LogBudget { bytes_max: 100 };
        assert!(budget.pick([(GroupId(1), 60), (GroupId(2), 40)]).is_empty());
        let unbounded = LogBudget { bytes_max: 0 };
        assert!(unbounded.pick([(GroupId(1), 1 << 40)]).is_empty());
    }

    #[test]
    fn the_heaviest_logs_go_until_half_the_budget_is_left() {
        let budget = LogBudget { bytes_max: 100 };
        let logs = [
            (GroupId(1), 10),
            (GroupId(2), 70),
            (GroupId(3), 30),
            (GroupId(4), 25),
            (GroupId(5), 0),
        ];
        // 135 in all: without group 2, 65; without group 3 too, 35 (at most 50).
        assert_eq!(budget.pick(logs), vec![GroupId(2), GroupId(3)]);
    }
}
