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
//!
//! Counts alone leave two hot ranges on one node whenever the counts are even. So when
//! the counts call for no move, the loads are looked at (`next_load_move`): each node
//! knows the requests per second it serves as leader of its ranges, and learns the
//! others' figures from them (the runtime gossips them on the peer streams). A node far
//! more loaded than the least loaded one hands it a range carrying about half the gap,
//! never more than three quarters of it: every such move lowers the sum of the squared
//! loads by at least an eighth of the squared gap, so with steady loads the moves end,
//! and a range hotter than that is left to the split by load rather than passed back
//! and forth. The count rule hands over its coldest candidates, so that a count move
//! after a load move carries little load.

use std::collections::{BTreeMap, BTreeSet};

use ostrakon_raft::NodeId;

#[cfg(feature = "planted-bugs")]
use crate::RangeBug;
use crate::RangeId;

/// One range, as a node sees it.
#[derive(Clone, Debug, PartialEq)]
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
    /// For a range led here: the requests per second this node serves as its leader (0
    /// for the others; never negative).
    pub load_per_second: f64,
    /// For a range led here: this node took its leadership lately (`TAKEN_LATELY_MS`),
    /// so its load here is still ramping up over the rate's window and says little. It
    /// moves by load not at all, and by count last: handed over as cold at once, a hot
    /// range would go back where the load rule had just sent it, for ever (the
    /// simulator found it).
    pub taken_lately: bool,
}

/// How long after taking a range's leadership its load here still ramps up: the rate's
/// window (10 s) and the time a look may take to notice the change.
pub const TAKEN_LATELY_MS: u64 = 12_000;

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

/// The least gap between two nodes' loads, in requests per second, that moves a range
/// by load: below it, a move costs more (an election round, caches moving) than it
/// evens out.
pub const LOAD_GAP_MIN_PER_SECOND: f64 = 100.0;

/// The least gap as a share of the moving node's load (a quarter): loads that are
/// within noise of each other stay where they are.
const LOAD_GAP_MIN_SHARE: f64 = 0.25;

/// The most a count move may add to the sum of the squared loads, in (requests/s)²,
/// halved: a move of a range carrying `l` from a node with load `L` to one with load
/// `T` adds `2·l·(T + l − L)`. With it, every move lowers `Σ load² + K·Σ count²` (K =
/// this): a count move lowers `Σ count²` by at least 2 and adds less than `2K` to the
/// loads' sum; a load move goes only to a node leading no more ranges (adding at most
/// 2 to `Σ count²`, so at most `2K`) and lowers `Σ load²` by at least `gap² / 8`, which
/// `LOAD_GAP_MIN_PER_SECOND` makes 1,250 > 2K. So the two rules never undo each other
/// for ever: with steady loads the moves end. With every load 0 (a cluster at rest) the
/// count rule is what it was without loads.
const COUNT_MOVE_LOAD_COST_MAX: f64 = 500.0;

/// The requests per second other nodes serve as leaders of their ranges, as this node
/// knows them (fresh figures only: a node without one takes no range by load).
pub type PeerLoads = BTreeMap<NodeId, f64>;

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
        peer_loads: &PeerLoads,
    ) -> Option<LeaderMove> {
        self.next_moves(me, ranges, eligible, peer_loads)
            .into_iter()
            .next()
    }

    /// The moves node `me` should make now, in order: the first is `next_move`'s, each
    /// next one the move after those before it were made. As many as the gap between
    /// `me` and the node leading the fewest allows shared among the nodes (so that nodes
    /// deciding at once hand the same node no more than the gap), at least one, at most
    /// `MOVES_PER_LOOK_MAX`. When the counts call for nothing, at most one move by load
    /// (`next_load_move`), from the other nodes' loads in `peer_loads`.
    pub fn next_moves(
        &self,
        me: NodeId,
        ranges: &[RangeLeadership],
        eligible: impl Fn(NodeId) -> bool,
        peer_loads: &PeerLoads,
    ) -> Vec<LeaderMove> {
        self.next_moves_by_rule(me, ranges, eligible, peer_loads).0
    }

    /// `next_moves`, and the rule that chose them: the runtime makes a move by load only
    /// once one has been due for a while, as loads are measured over a window and swing
    /// with bursts, where counts do not.
    pub fn next_moves_by_rule(
        &self,
        me: NodeId,
        ranges: &[RangeLeadership],
        eligible: impl Fn(NodeId) -> bool,
        peer_loads: &PeerLoads,
    ) -> (Vec<LeaderMove>, MoveRule) {
        let none = (Vec::new(), MoveRule::Count);
        if ranges.len() < 3
            || ranges
                .iter()
                .any(|range| range.changing || range.leader.is_none())
        {
            return none;
        }
        #[allow(unused_mut)]
        let mut apart = 2;
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::MoveLeadersOneApart) {
            apart = 1;
        }
        let Some(counted) = counted_nodes(me, ranges, eligible) else {
            return none;
        };
        let moves = next_leader_moves(me, ranges, counted.clone(), peer_loads, apart);
        if !moves.is_empty() {
            return (moves, MoveRule::Count);
        }
        #[allow(unused_mut)]
        let mut band = LoadBand::CORRECT;
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::MoveLeadersHotterThanGap) {
            band = LoadBand::PAST_THE_GAP;
        }
        let moves = next_load_move(me, ranges, &counted, peer_loads, band)
            .into_iter()
            .collect();
        (moves, MoveRule::Load)
    }
}

/// Which rule chose a look's moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveRule {
    /// Leader counts (or nothing was due).
    Count,
    /// Loads: the counts called for nothing.
    Load,
}

/// How long a node adds the load of a range it handed over to the figure of the node it
/// handed it to (less and less as it ages): that node's own rate of the range ramps up
/// over its 10 s window, and its figure may be a look old.
pub const HANDOFF_COUNTED_FOR_MS: u64 = 12_000;

/// The loads this node handed other nodes lately (`HANDOFF_COUNTED_FOR_MS`), so that it
/// does not hand the same node more before that node's figure shows what it took.
#[derive(Debug, Default)]
pub struct RecentHandoffs {
    /// When (ms on the caller's clock), to whom, how much.
    handed: Vec<(u64, NodeId, f64)>,
}

impl RecentHandoffs {
    /// A range carrying `load_per_second` was handed to `to` at `now_ms`.
    pub fn record(&mut self, now_ms: u64, to: NodeId, load_per_second: f64) {
        self.handed.push((now_ms, to, load_per_second));
    }

    /// Adds the loads handed over lately to the figures of the nodes they went to (a
    /// node without a figure stays without one), and forgets the older ones. Each in
    /// full at first, less as it ages, as the taker's own figure comes to show it.
    pub fn add_to(&mut self, now_ms: u64, loads: &mut PeerLoads) {
        self.handed
            .retain(|&(at_ms, _, _)| now_ms.saturating_sub(at_ms) < HANDOFF_COUNTED_FOR_MS);
        for &(at_ms, to, load) in &self.handed {
            if let Some(figure) = loads.get_mut(&to) {
                let age_ms = now_ms.saturating_sub(at_ms);
                *figure += load * (1.0 - age_ms as f64 / HANDOFF_COUNTED_FOR_MS as f64);
            }
        }
    }
}

/// The nodes counted, each with the ranges it leads here: those that vote in every
/// range here (also when they lead nothing yet) and may lead (`eligible`, and `me`).
/// None if `me` is not one of them.
///
/// A node missing from some range here may lead ranges this node does not hold, which
/// it cannot count: two nodes holding different ranges would each see the other lead
/// fewer, and hand one range back and forth for ever (the simulator found it, with
/// memberships changed range by range). The distinct voters first, then each checked
/// against every range once: checking every range's every voter against every range
/// was quadratic, most of an idle node's work at 3,000 ranges.
fn counted_nodes(
    me: NodeId,
    ranges: &[RangeLeadership],
    eligible: impl Fn(NodeId) -> bool,
) -> Option<BTreeMap<NodeId, usize>> {
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
    led.contains_key(&me).then_some(led)
}

/// Which loads may move, as shares of the gap between two nodes' loads.
#[derive(Clone, Copy, Debug)]
struct LoadBand {
    /// The least share of the gap a moved range carries.
    low: f64,
    /// The most.
    high: f64,
}

impl LoadBand {
    /// A quarter to three quarters: each move lowers the sum of squared loads by at
    /// least `gap² / 8`.
    const CORRECT: LoadBand = LoadBand {
        low: 0.25,
        high: 0.75,
    };
    /// The planted bug: up to twice the gap, so a range hotter than the gap moves, and
    /// moves back.
    #[cfg(feature = "planted-bugs")]
    const PAST_THE_GAP: LoadBand = LoadBand {
        low: 0.25,
        high: 2.0,
    };
}

/// The move by load node `me` should make now, if any: to the least loaded counted node
/// with a fresh figure that leads no more ranges than `me` (the next least loaded if it
/// is caught up in no range that fits), if the gap between them is at least `LOAD_GAP_MIN_PER_SECOND` and a quarter of
/// this node's load; the range led here whose load lies in the band of the gap and is
/// nearest half of it (ties to the higher id, as the count rule's).
fn next_load_move(
    me: NodeId,
    ranges: &[RangeLeadership],
    counted: &BTreeMap<NodeId, usize>,
    peer_loads: &PeerLoads,
    band: LoadBand,
) -> Option<LeaderMove> {
    let led_here: Vec<&RangeLeadership> = ranges
        .iter()
        .filter(|range| range.leader == Some(me))
        .collect();
    let mine = load_led_by(me, ranges);
    // Only to a node leading no more ranges than this one (`COUNT_MOVE_LOAD_COST_MAX`).
    let mut targets: Vec<(f64, NodeId)> = counted
        .iter()
        .filter(|&(&node, &count)| node != me && count <= counted[&me])
        .filter_map(|(&node, _)| Some((usable_load(peer_loads.get(&node))?, node)))
        .collect();
    targets.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let gap_min = LOAD_GAP_MIN_PER_SECOND.max(mine * LOAD_GAP_MIN_SHARE);
    for (load, to) in targets {
        let gap = mine - load;
        if gap < gap_min {
            // The targets come least loaded first: the others are nearer still.
            return None;
        }
        let (low, high) = (gap * band.low, gap * band.high);
        let best = led_here
            .iter()
            .filter(|range| !range.taken_lately && range.caught_up.contains(&to))
            .filter(|range| (low..=high).contains(&range.load_per_second))
            .min_by(|a, b| {
                let off = |range: &RangeLeadership| (range.load_per_second - gap / 2.0).abs();
                off(a).total_cmp(&off(b)).then(b.range.cmp(&a.range))
            });
        #[cfg(feature = "planted-bugs")]
        let best = if band.high > 1.0 {
            // The bug prefers the hottest range it allows.
            led_here
                .iter()
                .filter(|range| !range.taken_lately && range.caught_up.contains(&to))
                .filter(|range| (low..=high).contains(&range.load_per_second))
                .max_by(|a, b| a.load_per_second.total_cmp(&b.load_per_second))
        } else {
            best
        };
        if let Some(range) = best {
            return Some(LeaderMove {
                range: range.range,
                to,
            });
        }
    }
    None
}

/// The moves node `me` should make now: each from `me` leading at least `apart` more
/// ranges than the target (2; 1 is the planted bug that moves leaderships back and forth
/// for ever), as counted after the moves before it. `led` holds the counted nodes'
/// leaderships (`counted_nodes`); `peer_loads` the others' loads (0 where unknown), so
/// that a count move does not undo what the load rule evened out
/// (`COUNT_MOVE_LOAD_COST_MAX`).
fn next_leader_moves(
    me: NodeId,
    ranges: &[RangeLeadership],
    mut led: BTreeMap<NodeId, usize>,
    peer_loads: &PeerLoads,
    apart: usize,
) -> Vec<LeaderMove> {
    let mut mine = led[&me];
    let fewest = led.values().copied().min().unwrap_or(mine);
    let limit = ((mine - fewest) / (2 * led.len())).clamp(1, MOVES_PER_LOOK_MAX);
    let mut loads: BTreeMap<NodeId, f64> = led
        .keys()
        .map(|&node| (node, usable_load(peer_loads.get(&node)).unwrap_or(0.0)))
        .collect();
    loads.insert(me, load_led_by(me, ranges));
    // For each node that may take one, the ranges led here it is caught up in, the best
    // to hand over last: one not taken lately, the coldest, of those alike the highest
    // id.
    let mut takes: BTreeMap<NodeId, Vec<(bool, f64, RangeId)>> = BTreeMap::new();
    for range in ranges.iter().filter(|range| range.leader == Some(me)) {
        for &node in &range.caught_up {
            if node != me && led.contains_key(&node) {
                takes.entry(node).or_default().push((
                    range.taken_lately,
                    range.load_per_second,
                    range.range,
                ));
            }
        }
    }
    for ids in takes.values_mut() {
        ids.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
    }
    // Each move: of the ranges led here, the one whose best target leads the fewest;
    // ties go to the colder range (a count move after a load move then carries little
    // load), then to the higher range id (the meta range, which serves the oracle, and
    // the first data range, whose leader etcd's Status reports, move last) and then the
    // lower node id, so the choice is deterministic. Each node's coldest range not moved
    // yet is its best; the nodes are few. A node its coldest range would load too much
    // takes none (a hotter one would load it more).
    let mut moved: BTreeSet<RangeId> = BTreeSet::new();
    let mut moves = Vec::new();
    while moves.len() < limit {
        let mut best: Option<(usize, bool, f64, std::cmp::Reverse<RangeId>, NodeId)> = None;
        for (&node, ids) in takes.iter_mut() {
            while ids.last().is_some_and(|(_, _, id)| moved.contains(id)) {
                ids.pop();
            }
            let Some(&(lately, load, id)) = ids.last() else {
                continue;
            };
            if load * (loads[&node] + load - loads[&me]) >= COUNT_MOVE_LOAD_COST_MAX {
                continue;
            }
            let candidate = (led[&node], lately, load, std::cmp::Reverse(id), node);
            let better = best.is_none_or(|best| {
                (candidate.0, candidate.1)
                    .cmp(&(best.0, best.1))
                    .then(candidate.2.total_cmp(&best.2))
                    .then((candidate.3, candidate.4).cmp(&(best.3, best.4)))
                    .is_lt()
            });
            if better {
                best = Some(candidate);
            }
        }
        let Some((count, _, load, std::cmp::Reverse(range), to)) = best else {
            break;
        };
        if count + apart > mine {
            break;
        }
        moved.insert(range);
        *led.get_mut(&to).expect("a counted node") += 1;
        mine -= 1;
        *loads.get_mut(&to).expect("a counted node") += load;
        *loads.get_mut(&me).expect("counted") -= load;
        moves.push(LeaderMove { range, to });
    }
    moves
}

/// The requests per second `node` serves as leader of `ranges`.
fn load_led_by(node: NodeId, ranges: &[RangeLeadership]) -> f64 {
    ranges
        .iter()
        .filter(|range| range.leader == Some(node))
        .map(|range| range.load_per_second)
        .sum()
}

/// A reported load, if it is one (a figure from the wire may be anything).
fn usable_load(load: Option<&f64>) -> Option<f64> {
    load.copied()
        .filter(|load| load.is_finite() && *load >= 0.0)
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
            load_per_second: 0.0,
            taken_lately: false,
        }
    }

    fn next_leader_move(
        me: NodeId,
        ranges: &[RangeLeadership],
        eligible: impl Fn(NodeId) -> bool,
    ) -> Option<LeaderMove> {
        LeaderBalance::default().next_move(me, ranges, eligible, &PeerLoads::new())
    }

    /// `range`, carrying `load` requests per second.
    fn loaded(id: u64, leader: u64, voters: &[u64], load: f64) -> RangeLeadership {
        RangeLeadership {
            load_per_second: load,
            ..range(id, leader, voters)
        }
    }

    /// Each node's load: the sum over the ranges it leads.
    fn loads_of(ranges: &[RangeLeadership], nodes: u64) -> PeerLoads {
        (1..=nodes)
            .map(|node| {
                let load = ranges
                    .iter()
                    .filter(|r| r.leader == Some(NodeId(node)))
                    .map(|r| r.load_per_second)
                    .sum();
                (NodeId(node), load)
            })
            .collect()
    }

    fn next_move_by(
        me: u64,
        ranges: &[RangeLeadership],
        peer_loads: &PeerLoads,
    ) -> Option<LeaderMove> {
        let mut others = peer_loads.clone();
        others.remove(&NodeId(me));
        LeaderBalance::default().next_move(NodeId(me), ranges, everyone, &others)
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
        assert!(buggy
            .next_move(NodeId(1), &ranges, everyone, &PeerLoads::new())
            .is_some());
    }

    #[test]
    fn a_node_leading_two_hot_ranges_hands_one_to_the_least_loaded() {
        // Counts even (2 each); node 1 leads both hot ranges.
        let ranges = [
            loaded(0, 3, &[1, 2, 3], 0.0),
            loaded(1, 1, &[1, 2, 3], 300.0),
            loaded(2, 1, &[1, 2, 3], 290.0),
            loaded(3, 2, &[1, 2, 3], 20.0),
            loaded(4, 2, &[1, 2, 3], 0.0),
            loaded(5, 3, &[1, 2, 3], 0.0),
        ];
        let loads = loads_of(&ranges, 3);
        // Gap 590 to node 3 (0): the range nearest 295.
        assert_eq!(
            next_move_by(1, &ranges, &loads),
            Some(LeaderMove {
                range: RangeId(2),
                to: NodeId(3)
            })
        );
        for me in [2, 3] {
            assert_eq!(next_move_by(me, &ranges, &loads), None);
        }
        // A node whose load is not known takes nothing by load: node 2 then (gap 570,
        // the range nearest 285).
        let mut unknown = loads.clone();
        unknown.remove(&NodeId(3));
        assert_eq!(
            next_move_by(1, &ranges, &unknown),
            Some(LeaderMove {
                range: RangeId(2),
                to: NodeId(2)
            })
        );
        // Nor a node behind in the ranges that would fit.
        let mut behind = ranges.clone();
        for range in &mut behind[1..3] {
            range.caught_up = vec![NodeId(1), NodeId(2)];
        }
        assert_eq!(
            next_move_by(1, &behind, &loads),
            Some(LeaderMove {
                range: RangeId(2),
                to: NodeId(2)
            })
        );
        // Nor a node leading more ranges than this one.
        let mut more = ranges.to_vec();
        more[0].leader = Some(NodeId(2));
        more.push(loaded(6, 3, &[1, 2, 3], 0.0));
        more.push(loaded(7, 3, &[1, 2, 3], 0.0));
        assert_eq!(next_move_by(1, &more, &loads_of(&more, 3)), None);
    }

    #[test]
    fn loads_near_each_other_or_one_hot_range_stay_put() {
        // A gap under 100 requests/s.
        let ranges = [
            loaded(0, 3, &[1, 2, 3], 0.0),
            loaded(1, 1, &[1, 2, 3], 45.0),
            loaded(2, 1, &[1, 2, 3], 45.0),
            loaded(3, 2, &[1, 2, 3], 0.0),
            loaded(4, 3, &[1, 2, 3], 0.0),
        ];
        assert_eq!(next_move_by(1, &ranges, &loads_of(&ranges, 3)), None);
        // A gap under a quarter of the load: 1,000 against 800.
        let ranges = [
            loaded(0, 3, &[1, 2, 3], 400.0),
            loaded(1, 1, &[1, 2, 3], 500.0),
            loaded(2, 1, &[1, 2, 3], 500.0),
            loaded(3, 2, &[1, 2, 3], 400.0),
            loaded(4, 2, &[1, 2, 3], 400.0),
            loaded(5, 3, &[1, 2, 3], 400.0),
        ];
        assert_eq!(next_move_by(1, &ranges, &loads_of(&ranges, 3)), None);
        // One range carrying nearly all: moving it only moves the problem (the split by
        // load is what spreads it).
        let ranges = [
            loaded(0, 3, &[1, 2, 3], 0.0),
            loaded(1, 1, &[1, 2, 3], 900.0),
            loaded(2, 1, &[1, 2, 3], 5.0),
            loaded(3, 2, &[1, 2, 3], 0.0),
            loaded(4, 3, &[1, 2, 3], 0.0),
        ];
        assert_eq!(next_move_by(1, &ranges, &loads_of(&ranges, 3)), None);
        // The planted bug moves it, and from the node it lands on, moves it back.
        let buggy = LeaderBalance::with_bug(Some(RangeBug::MoveLeadersHotterThanGap));
        let mut others = loads_of(&ranges, 3);
        others.remove(&NodeId(1));
        let step = buggy.next_move(NodeId(1), &ranges, everyone, &others);
        assert_eq!(
            step,
            Some(LeaderMove {
                range: RangeId(1),
                to: NodeId(2)
            })
        );
        let mut after = ranges.clone();
        after[1].leader = Some(NodeId(2));
        let mut others = loads_of(&after, 3);
        others.remove(&NodeId(2));
        let back = buggy.next_move(NodeId(2), &after, everyone, &others);
        assert_eq!(back.map(|m| m.range), Some(RangeId(1)));
    }

    #[test]
    fn the_count_rule_hands_over_its_coldest_range() {
        let ranges = [
            loaded(0, 1, &[1, 2, 3], 10.0),
            loaded(1, 1, &[1, 2, 3], 500.0),
            loaded(2, 1, &[1, 2, 3], 0.0),
            loaded(3, 1, &[1, 2, 3], 300.0),
            loaded(4, 2, &[1, 2, 3], 0.0),
            loaded(5, 3, &[1, 2, 3], 0.0),
        ];
        assert_eq!(
            next_move_by(1, &ranges, &loads_of(&ranges, 3)),
            Some(LeaderMove {
                range: RangeId(2),
                to: NodeId(2)
            })
        );
    }

    #[test]
    fn a_range_taken_lately_moves_by_count_last_and_not_by_load() {
        // Node 1 just took range 4 (its rate here still low) and leads two more than
        // node 3: a range it has led for long goes, even though warmer.
        let mut ranges = vec![
            loaded(0, 2, &[1, 2, 3], 0.0),
            loaded(1, 1, &[1, 2, 3], 20.0),
            loaded(2, 1, &[1, 2, 3], 30.0),
            loaded(3, 2, &[1, 2, 3], 0.0),
            loaded(4, 1, &[1, 2, 3], 1.0),
        ];
        ranges[4].taken_lately = true;
        assert_eq!(
            next_move_by(1, &ranges, &loads_of(&ranges, 3)),
            Some(LeaderMove {
                range: RangeId(1),
                to: NodeId(3)
            })
        );
        // By load: the range that fits the gap, unless taken lately.
        let mut ranges = vec![
            loaded(0, 2, &[1, 2, 3], 0.0),
            loaded(1, 1, &[1, 2, 3], 300.0),
            loaded(2, 1, &[1, 2, 3], 300.0),
            loaded(3, 2, &[1, 2, 3], 0.0),
            loaded(4, 3, &[1, 2, 3], 0.0),
            loaded(5, 3, &[1, 2, 3], 0.0),
        ];
        for range in &mut ranges[1..3] {
            range.taken_lately = true;
        }
        assert_eq!(next_move_by(1, &ranges, &loads_of(&ranges, 3)), None);
        ranges[1].taken_lately = false;
        assert_eq!(
            next_move_by(1, &ranges, &loads_of(&ranges, 3)),
            Some(LeaderMove {
                range: RangeId(1),
                to: NodeId(2)
            })
        );
    }

    #[test]
    fn handoffs_count_toward_the_taker_until_its_figure_shows_them() {
        let mut handoffs = RecentHandoffs::default();
        handoffs.record(1_000, NodeId(2), 300.0);
        let mut loads: PeerLoads = [(NodeId(2), 50.0)].into_iter().collect();
        handoffs.add_to(1_000, &mut loads);
        assert_eq!(loads[&NodeId(2)], 350.0);
        // Half way through, half of it.
        let mut loads: PeerLoads = [(NodeId(2), 200.0)].into_iter().collect();
        handoffs.add_to(1_000 + HANDOFF_COUNTED_FOR_MS / 2, &mut loads);
        assert_eq!(loads[&NodeId(2)], 350.0);
        let mut later: PeerLoads = [(NodeId(2), 350.0), (NodeId(3), 0.0)].into_iter().collect();
        handoffs.add_to(1_000 + HANDOFF_COUNTED_FOR_MS, &mut later);
        assert_eq!(later[&NodeId(2)], 350.0);
        assert_eq!(later[&NodeId(3)], 0.0);
    }

    /// Every start with random loads on 2 to 5 nodes, every node deciding from the true
    /// view, one move at a time: every move lowers `Σ load² + K·Σ count²`
    /// (`COUNT_MOVE_LOAD_COST_MAX`), so the moves end; and with no load anywhere the
    /// counts end within one of each other.
    #[test]
    fn moves_end_from_any_start_with_random_loads() {
        let mut random = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |below: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % below
        };
        let potential = |ranges: &[RangeLeadership], nodes: u64| -> f64 {
            (1..=nodes)
                .map(|n| {
                    let led = ranges.iter().filter(|r| r.leader == Some(NodeId(n)));
                    let load: f64 = led.clone().map(|r| r.load_per_second).sum();
                    let count = led.count() as f64;
                    load * load + COUNT_MOVE_LOAD_COST_MAX * count * count
                })
                .sum()
        };
        let mut load_moves = 0;
        for round in 0..3_000 {
            let nodes = 2 + next(4);
            let range_count = 3 + next(14);
            let voters: Vec<u64> = (1..=nodes).collect();
            let cold = round % 5 == 0;
            let mut ranges: Vec<RangeLeadership> = (0..range_count)
                .map(|id| {
                    // Most ranges cold, some warm, a few hot; every fifth round none.
                    let load = match next(10) {
                        _ if cold => 0.0,
                        0..=4 => next(5) as f64,
                        5..=8 => next(400) as f64,
                        _ => next(3_000) as f64,
                    };
                    loaded(id, 1 + next(nodes), &voters, load)
                })
                .collect();
            let mut moves = 0;
            loop {
                let loads = loads_of(&ranges, nodes);
                let before = potential(&ranges, nodes);
                let step = (1..=nodes).find_map(|me| next_move_by(me, &ranges, &loads));
                let Some(step) = step else { break };
                let counts_before: BTreeMap<NodeId, usize> = (1..=nodes)
                    .map(|n| {
                        let led = ranges.iter().filter(|r| r.leader == Some(NodeId(n)));
                        (NodeId(n), led.count())
                    })
                    .collect();
                let moved = ranges.iter_mut().find(|r| r.range == step.range).unwrap();
                let from = moved.leader.unwrap();
                moved.leader = Some(step.to);
                if counts_before[&from] < counts_before[&step.to] + 2 {
                    load_moves += 1;
                }
                let after = potential(&ranges, nodes);
                assert!(
                    after < before,
                    "round {round}: a move raised the potential ({before} to {after}): {step:?}"
                );
                moves += 1;
                assert!(moves <= 10 * range_count, "round {round}: moves do not end");
            }
            if cold {
                let counts: Vec<usize> = (1..=nodes)
                    .map(|n| {
                        ranges
                            .iter()
                            .filter(|r| r.leader == Some(NodeId(n)))
                            .count()
                    })
                    .collect();
                let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
                assert!(spread <= 1, "round {round}: {counts:?}");
            }
        }
        assert!(
            load_moves > 100,
            "the loads moved leaders {load_moves} times only"
        );
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
        let moves =
            LeaderBalance::default().next_moves(NodeId(1), &ranges, everyone, &PeerLoads::new());
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
        let moves =
            LeaderBalance::default().next_moves(NodeId(1), &many, everyone, &PeerLoads::new());
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
