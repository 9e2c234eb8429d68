//! Spreading range leaders over the nodes, so that each leads about as many ranges as
//! the others: a range's leader does its writes' work (proposing, replicating, applying
//! first, answering), so ranges all led by one node leave the others idle.
//!
//! Every node runs this for the ranges it leads, from what it knows locally (each of its
//! replicas knows its range's leader), and hands leaderships to the node that leads the
//! fewest: as PD's leader-count balancing in TiKV, without a central scheduler. A move is
//! made only from a node leading at least two more ranges than the target, so every move
//! made alone lowers the sum of squared leader counts and the moves end, with leaders
//! never bouncing between two nodes that lead about as many.
//!
//! A look hands over several leaderships when the counts are far apart: each one the
//! move a look would choose after the ones before it were made, up to a share of the gap
//! (`MOVES_PER_LOOK_MAX` at most). A keyspace split by hand into 100,000 ranges leaves
//! them all led by one node; one move per look took hours to spread them, each look
//! visiting every range.
//! Nodes that decide at once may overshoot (four nodes each handing the fifth one range
//! raise the sum); the runtime spaces its looks with jitter, and later moves undo the
//! overshoot. A move goes only to a node that is caught up with the range's log, as
//! raft refuses writes until the target catches up: a target far behind would stall the
//! range for an election timeout and keep the leadership.

use std::collections::{BTreeMap, BTreeSet};

use ostrakon_raft::NodeId;

#[cfg(feature = "planted-bugs")]
use crate::RangeBug;
use crate::RangeId;

/// One range, as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeLeadership {
    /// The range.
    pub range: RangeId,
    /// Its leader as this node knows it; None while it elects.
    pub leader: Option<NodeId>,
    /// The voters of its group (only a voter can lead); shared by the ranges that have
    /// the same (most do: a look at 100,000 ranges made as many lists).
    pub voters: std::sync::Arc<[NodeId]>,
    /// For a range led here: the voters caught up with its log and heard from within an
    /// election timeout, which may take its leadership (empty for the others).
    pub caught_up: Vec<NodeId>,
    /// A membership change or a leadership transfer of the range is in flight: nothing
    /// moves meanwhile.
    pub changing: bool,
}

/// A leadership to hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderMove {
    /// The range whose leadership moves.
    pub range: RangeId,
    /// The node to hand it to.
    pub to: NodeId,
}

/// The most leaderships one look hands over.
pub const MOVES_PER_LOOK_MAX: usize = 1_000;

/// The rule, where a bug may be planted.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeaderBalance {
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl LeaderBalance {
    /// The same rule, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> LeaderBalance {
        LeaderBalance { bug }
    }

    /// The move node `me` should make now, given the ranges it holds a replica of, if
    /// any. `eligible` says whether a node may take a leadership (up, not being
    /// removed). Only a keyspace split into several data ranges spreads its leaders
    /// (the meta range and at least two others): with one data range, the meta range's
    /// leader has almost nothing to do. Nothing moves while a range elects (the counts
    /// are not known) or changes its membership.
    pub fn next_move(
        &self,
        me: NodeId,
        ranges: &[RangeLeadership],
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<LeaderMove> {
        self.next_moves(me, ranges, eligible).into_iter().next()
    }

    /// The moves node `me` should make now, in order: the first is `next_move`'s, each
    /// next one the move after those before it were made. As many as the gap between
    /// `me` and the node leading the fewest allows shared among the nodes (so that nodes
    /// deciding at once hand the same node no more than the gap), at least one, at most
    /// `MOVES_PER_LOOK_MAX`.
    pub fn next_moves(
        &self,
        me: NodeId,
        ranges: &[RangeLeadership],
        eligible: impl Fn(NodeId) -> bool,
    ) -> Vec<LeaderMove> {
        if ranges.len() < 3 || ranges.iter().any(|range| range.changing) {
            return Vec::new();
        }
        #[allow(unused_mut)]
        let mut apart = 2;
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::MoveLeadersOneApart) {
            apart = 1;
        }
        next_leader_moves(me, ranges, eligible, apart)
    }
}

/// The moves node `me` should make now: each from `me` leading at least `apart` more
/// ranges than the target (2; 1 is the planted bug that moves leaderships back and forth
/// for ever), as counted after the moves before it.
fn next_leader_moves(
    me: NodeId,
    ranges: &[RangeLeadership],
    eligible: impl Fn(NodeId) -> bool,
    apart: usize,
) -> Vec<LeaderMove> {
    if ranges.iter().any(|range| range.leader.is_none()) {
        return Vec::new();
    }
    // The nodes that vote in every range here count, also when they lead nothing yet;
    // only they take a leadership from here. A node missing from some range here may
    // lead ranges this node does not hold, which it cannot count: two nodes holding
    // different ranges would each see the other lead fewer, and hand one range back and
    // forth for ever (the simulator found it, with memberships changed range by range).
    // The distinct voters first, then each checked against every range once: checking
    // every range's every voter against every range was quadratic, most of an idle
    // node's work at 3,000 ranges.
    let voters: BTreeSet<NodeId> = ranges
        .iter()
        .flat_map(|range| range.voters.iter().copied())
        .collect();
    let mut led: BTreeMap<NodeId, usize> = voters
        .into_iter()
        .filter(|&node| node == me || eligible(node))
        .filter(|node| ranges.iter().all(|range| range.voters.contains(node)))
        .map(|node| (node, 0))
        .collect();
    for range in ranges {
        if let Some(count) = range.leader.and_then(|leader| led.get_mut(&leader)) {
            *count += 1;
        }
    }
    let Some(&mine_before) = led.get(&me) else {
        return Vec::new();
    };
    let mut mine = mine_before;
    let fewest = led.values().copied().min().unwrap_or(mine);
    let limit = ((mine - fewest) / (2 * led.len())).clamp(1, MOVES_PER_LOOK_MAX);
    // For each node that may take one, the ranges led here it is caught up in, by id.
    let mut takes: BTreeMap<NodeId, Vec<RangeId>> = BTreeMap::new();
    for range in ranges.iter().filter(|range| range.leader == Some(me)) {
        for &node in &range.caught_up {
            if node != me && led.contains_key(&node) {
                takes.entry(node).or_default().push(range.range);
            }
        }
    }
    for ids in takes.values_mut() {
        ids.sort_unstable();
    }
    // Each move: of the ranges led here, the one whose best target leads the fewest;
    // ties go to the higher range id (the meta range, which serves the oracle, and the
    // first data range, whose leader etcd's Status reports, move last) and then the lower
    // node id, so the choice is deterministic. Each node's highest range not moved yet
    // is its best; the nodes are few.
    let mut moved: BTreeSet<RangeId> = BTreeSet::new();
    let mut moves = Vec::new();
    while moves.len() < limit {
        let mut best: Option<(usize, std::cmp::Reverse<RangeId>, NodeId)> = None;
        for (&node, ids) in takes.iter_mut() {
            while ids.last().is_some_and(|id| moved.contains(id)) {
                ids.pop();
            }
            if let Some(&id) = ids.last() {
                let candidate = (led[&node], std::cmp::Reverse(id), node);
                if best.is_none_or(|best| candidate < best) {
                    best = Some(candidate);
                }
            }
        }
        let Some((count, std::cmp::Reverse(range), to)) = best else {
            break;
        };
        if count + apart > mine {
            break;
        }
        moved.insert(range);
        *led.get_mut(&to).expect("a counted node") += 1;
        mine -= 1;
        moves.push(LeaderMove { range, to });
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: u64, leader: u64, voters: &[u64]) -> RangeLeadership {
        RangeLeadership {
            range: RangeId(id),
            leader: (leader != 0).then_some(NodeId(leader)),
            voters: voters.iter().map(|&v| NodeId(v)).collect(),
            caught_up: voters.iter().map(|&v| NodeId(v)).collect(),
            changing: false,
        }
    }

    fn next_leader_move(
        me: NodeId,
        ranges: &[RangeLeadership],
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<LeaderMove> {
        LeaderBalance::default().next_move(me, ranges, eligible)
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
        // The highest range: the meta range and the first data range move last.
        assert_eq!(
            next_leader_move(NodeId(1), &ranges, everyone),
            Some(LeaderMove {
                range: RangeId(2),
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
    fn nothing_moves_while_a_range_elects_or_changes_its_membership() {
        let mut ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 0, &[1, 2, 3]),
        ];
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
        ranges[2].leader = Some(NodeId(1));
        assert!(next_leader_move(NodeId(1), &ranges, everyone).is_some());
        ranges[0].changing = true;
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
    }

    #[test]
    fn fewer_than_two_data_ranges_keep_their_leaders() {
        let ranges = [range(0, 1, &[1, 2, 3]), range(1, 1, &[1, 2, 3])];
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
    }

    #[test]
    fn the_planted_bug_moves_between_nodes_one_apart() {
        let ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 2, &[1, 2, 3]),
            range(3, 3, &[1, 2, 3]),
        ];
        let buggy = LeaderBalance::with_bug(Some(RangeBug::MoveLeadersOneApart));
        assert!(buggy.next_move(NodeId(1), &ranges, everyone).is_some());
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
                range: RangeId(1),
                to: NodeId(3)
            })
        );
    }

    #[test]
    fn only_a_node_caught_up_with_the_range_takes_its_leadership() {
        let mut ranges = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2, 3]),
            range(2, 1, &[1, 2, 3]),
            range(3, 2, &[1, 2, 3]),
        ];
        // Node 3 is behind in range 2: range 1 goes to it instead.
        ranges[2].caught_up = vec![NodeId(1), NodeId(2)];
        assert_eq!(
            next_leader_move(NodeId(1), &ranges, everyone),
            Some(LeaderMove {
                range: RangeId(1),
                to: NodeId(3)
            })
        );
        // Behind in every range node 1 leads: node 2, two fewer, gets one instead.
        for range in &mut ranges[..3] {
            range.caught_up = vec![NodeId(1), NodeId(2)];
        }
        assert_eq!(
            next_leader_move(NodeId(1), &ranges, everyone),
            Some(LeaderMove {
                range: RangeId(2),
                to: NodeId(2)
            })
        );
        // Nobody caught up: nothing moves.
        for range in &mut ranges[..3] {
            range.caught_up = vec![NodeId(1)];
        }
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
    }

    #[test]
    fn only_a_node_voting_in_every_range_here_takes_a_leadership() {
        // Node 3 votes only in range 2, which node 2 leads.
        let ranges = [
            range(0, 1, &[1, 2]),
            range(1, 1, &[1, 2]),
            range(2, 2, &[2, 3]),
        ];
        assert_eq!(next_leader_move(NodeId(1), &ranges, everyone), None);
        // Node 3 holds range 0 and 3 only, and leads range 3, which node 1 does not
        // hold: node 1 cannot count it, so it hands node 3 nothing.
        let node_1_sees = [
            range(0, 1, &[1, 2, 3]),
            range(1, 1, &[1, 2]),
            range(2, 1, &[1, 2]),
        ];
        assert_eq!(
            next_leader_move(NodeId(1), &node_1_sees, everyone),
            Some(LeaderMove {
                range: RangeId(2),
                to: NodeId(2)
            })
        );
    }

    #[test]
    fn a_look_far_from_balance_moves_a_share_of_the_gap_each_as_one_at_a_time_would() {
        // Node 1 leads 60 ranges, nodes 2 and 3 none: a sixth of the gap, 10 moves.
        let ranges: Vec<RangeLeadership> = (0..60).map(|id| range(id, 1, &[1, 2, 3])).collect();
        let moves = LeaderBalance::default().next_moves(NodeId(1), &ranges, everyone);
        assert_eq!(moves.len(), 10);
        // The same as looks of one move each, the view updated after each.
        let mut view = ranges.clone();
        for step in &moves {
            assert_eq!(next_leader_move(NodeId(1), &view, everyone), Some(*step));
            view.iter_mut()
                .find(|r| r.range == step.range)
                .unwrap()
                .leader = Some(step.to);
        }
        let to = |node| moves.iter().filter(|m| m.to == NodeId(node)).count();
        assert_eq!(
            (to(2), to(3)),
            (5, 5),
            "alternately to the two that lead fewest"
        );
        // Far apart: at most MOVES_PER_LOOK_MAX.
        let many: Vec<RangeLeadership> = (0..20_000).map(|id| range(id, 1, &[1, 2, 3])).collect();
        let moves = LeaderBalance::default().next_moves(NodeId(1), &many, everyone);
        assert_eq!(moves.len(), MOVES_PER_LOOK_MAX);
        let distinct: BTreeSet<RangeId> = moves.iter().map(|m| m.range).collect();
        assert_eq!(distinct.len(), moves.len(), "each range moves once");
    }

    /// Every node deciding from the same view, one move at a time, in any order: the
    /// moves end, with every node within one range of the others.
    #[test]
    fn moves_end_balanced_from_any_start() {
        for nodes in 2..=5u64 {
            for range_count in 3..=12u64 {
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
