//! Spreading range leaders over the nodes, so that each leads about as many ranges as
//! the others: a range's leader does its writes' work (proposing, replicating, applying
//! first, answering), so ranges all led by one node leave the others idle.
//!
//! Every node runs this for the ranges it leads, from what it knows locally (each of its
//! replicas knows its range's leader), and hands one leadership at a time to the node
//! that leads the fewest: as PD's leader-count balancing in TiKV, without a central
//! scheduler. A move is made only from a node leading at least two more ranges than the
//! target, so every move lowers the sum of squared leader counts: the moves end, even
//! when nodes decide at once from views a little out of date, and leaders never bounce
//! between two nodes that lead about as many.

use std::collections::BTreeMap;

use ostrakon_raft::NodeId;

use crate::RangeId;

/// One range, as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeLeadership {
    /// The range.
    pub range: RangeId,
    /// Its leader as this node knows it; None while it elects.
    pub leader: Option<NodeId>,
    /// The voters of its group (only a voter can lead).
    pub voters: Vec<NodeId>,
}

/// A leadership to hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderMove {
    /// The range whose leadership moves.
    pub range: RangeId,
    /// The node to hand it to.
    pub to: NodeId,
}

/// The move node `me` should make now, if any. `eligible` says whether a node may take
/// a leadership (up, not being removed). Nothing moves while a range elects: the counts
/// are not known then.
pub fn next_leader_move(
    me: NodeId,
    ranges: &[RangeLeadership],
    eligible: impl Fn(NodeId) -> bool,
) -> Option<LeaderMove> {
    if ranges.iter().any(|range| range.leader.is_none()) {
        return None;
    }
    // Every node that may lead something counts, also when it leads nothing yet.
    let mut led: BTreeMap<NodeId, usize> = ranges
        .iter()
        .flat_map(|range| range.voters.iter().copied())
        .filter(|&node| node == me || eligible(node))
        .map(|node| (node, 0))
        .collect();
    for range in ranges {
        if let Some(count) = range.leader.and_then(|leader| led.get_mut(&leader)) {
            *count += 1;
        }
    }
    let mine = *led.get(&me)?;
    // Of the ranges led here, the one whose best target leads the fewest; ties go to the
    // lower range id and then the lower node id, so the choice is deterministic.
    ranges
        .iter()
        .filter(|range| range.leader == Some(me))
        .filter_map(|range| {
            range
                .voters
                .iter()
                .copied()
                .filter(|&node| node != me)
                .filter_map(|node| led.get(&node).map(|&count| (count, node)))
                .min()
                .map(|(count, to)| (count, range.range, to))
        })
        .filter(|&(count, _, _)| count + 2 <= mine)
        .min()
        .map(|(_, range, to)| LeaderMove { range, to })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: u64, leader: u64, voters: &[u64]) -> RangeLeadership {
        RangeLeadership {
            range: RangeId(id),
            leader: (leader != 0).then_some(NodeId(leader)),
            voters: voters.iter().map(|&v| NodeId(v)).collect(),
        }
    }

    fn everyone(_: NodeId) -> bool {
        true
    }

    #[test]
    fn a_node_leading_two_more_than_another_hands_one_over() {
        let ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 1, &[1, 2, 3]),
            range(3, 2, &[1, 2, 3]),
        ];
        assert_eq!(
            next_leader_move(NodeId(1), &ranges, everyone),
            Some(LeaderMove {
                range: RangeId(0),
                to: NodeId(3)
            })
        );
        // Only the node that leads too many moves anything.
        assert_eq!(next_leader_move(NodeId(2), &ranges, everyone), None);
        assert_eq!(next_leader_move(NodeId(3), &ranges, everyone), None);
    }

    #[test]
    fn counts_one_apart_are_balanced() {
        let ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 2, &[1, 2, 3]),
            range(3, 3, &[1, 2, 3]),
        ];
        for me in 1..=3 {
            assert_eq!(next_leader_move(NodeId(me), &ranges, everyone), None);
        }
    }

    #[test]
    fn nothing_moves_while_a_range_elects() {
        let ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 0, &[1, 2, 3]),
        ];
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
    }

    #[test]
    fn a_node_that_is_down_or_leaving_takes_nothing() {
        let ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 2, &[1, 2, 3]),
        ];
        assert_eq!(
            next_leader_move(NodeId(1), &ranges, |node| node != NodeId(3)),
            None
        );
        assert_eq!(
            next_leader_move(NodeId(1), &ranges, everyone),
            Some(LeaderMove {
                range: RangeId(0),
                to: NodeId(3)
            })
        );
    }

    #[test]
    fn only_a_voter_of_the_range_takes_its_leadership() {
        // Node 3 votes only in range 2, which node 2 leads.
        let ranges = [
            range(0, 1, &[1, 2]),
            range(1, 1, &[1, 2]),
            range(2, 2, &[2, 3]),
        ];
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
    }

    /// Every node deciding from the same view, one move at a time, in any order: the
    /// moves end, with every node within one range of the others.
    #[test]
    fn moves_end_balanced_from_any_start() {
        for nodes in 2..=5u64 {
            for range_count in 1..=12u64 {
                for first_leader in 1..=nodes {
                    let voters: Vec<u64> = (1..=nodes).collect();
                    let mut ranges: Vec<RangeLeadership> = (0..range_count)
                        .map(|id| range(id, first_leader, &voters))
                        .collect();
                    let mut moves = 0;
                    loop {
                        let next = (1..=nodes)
                            .find_map(|me| next_leader_move(NodeId(me), &ranges, everyone));
                        let Some(step) = next else { break };
                        let moved = ranges.iter_mut().find(|r| r.range == step.range).unwrap();
                        moved.leader = Some(step.to);
                        moves += 1;
                        assert!(moves <= range_count, "moves do not end");
                    }
                    let counts: Vec<usize> = (1..=nodes)
                        .map(|n| {
                            ranges
                                .iter()
                                .filter(|r| r.leader == Some(NodeId(n)))
                                .count()
                        })
                        .collect();
                    let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
                    assert!(
                        spread <= 1,
                        "{nodes} nodes, {range_count} ranges: {counts:?}"
                    );
                }
            }
        }
    }
}
