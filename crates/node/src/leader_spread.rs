//! The event loop's side of spreading range leaders over the nodes
//! (`ostrakon_ranges::leader_balance` decides): what this node knows of its ranges'
//! leaders and loads, how often it looks, and when it holds back. Each look also sets
//! this node's load as leader, which the transport sends its peers (`node_load`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ostrakon_raft::{GroupId, NodeId, Role};
use ostrakon_ranges::leader_balance::{
    LeaderBalance, LeaderMove, MoveRule, RangeLeadership, RecentHandoffs, LOAD_GAP_MIN_PER_SECOND,
    TAKEN_LATELY_MS,
};
use ostrakon_ranges::RangeId;

use crate::handle::SharedGroups;
use crate::node_load::NodeLoads;
use crate::replica::Replica;

/// How often a node looks at its ranges' leaders, give or take `JITTER_MAX`.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Spreads the nodes' looks apart, so that they seldom decide at once from the same
/// counts (several nodes handing the same node a range each overshoot).
const JITTER_MAX: Duration = Duration::from_millis(250);
/// The least a node waits after a move before the next (and after an operator's
/// MoveLeader, so spreading does not undo it at once): the transfer takes an election
/// round, and the other nodes' views must catch up with it, or they would count the
/// moved leadership twice. Two election timeouts where those are longer.
const AFTER_MOVE_PAUSE_MIN: Duration = Duration::from_secs(2);
/// Once a look found nothing to move, the next looks only after a leadership changed
/// here or in a range this node holds, a node went down or came back, or a range came or
/// went, or after this long (a membership change or a voter catching up, which are not
/// signalled, then waits for it). A look visits every range: at rest, with thousands of
/// ranges, looking twice a second was most of an idle node's work.
const SETTLED_RECHECK: Duration = Duration::from_secs(10);
/// The same while this node serves enough as leader for a move by load to start from
/// it: loads change without a signal, and the looks that find them are what spreads
/// them (and what refreshes the figure the peers see).
const LOADED_RECHECK: Duration = Duration::from_secs(2);
/// How long moves by load must have been due, look after look, before one is made: a
/// load measured over a 10 s window swings with bursts (the side-by-side benchmark's
/// 2-second workloads, one after another, made 11 moves where counts alone made 2, and
/// each move stalls its range for an election round); balancing is for load that lasts.
const LOAD_DUE_FOR: Duration = Duration::from_secs(10);
/// `TAKEN_LATELY_MS` on this clock.
const TAKEN_LATELY: Duration = Duration::from_millis(TAKEN_LATELY_MS);

/// When this node next looks.
pub struct LeaderSpread {
    next_check: Instant,
    after_move_pause: Duration,
    election_ticks: u64,
    /// Varies the jitter from look to look (a counter mixed with the node id).
    looks: u64,
    /// The last look found nothing to move, and nothing signalled has changed since.
    settled: bool,
    /// The loads this node handed over lately, counted toward their takers.
    handoffs: RecentHandoffs,
    /// The clock `handoffs` counts on.
    started: Instant,
    /// Since when (as the looks saw) this node leads each range it leads.
    led_since: HashMap<GroupId, Instant>,
    /// Since when every look found a move by load due (none made yet).
    load_due_since: Option<Instant>,
    /// The last look was a drain's (`drain_moves`).
    draining: bool,
}

impl LeaderSpread {
    /// A spreader that looks at once, for nodes whose election timeout is
    /// `election_ticks` ticks of `tick_interval`.
    pub fn new(tick_interval: Duration, election_ticks: u32) -> LeaderSpread {
        LeaderSpread {
            next_check: Instant::now(),
            after_move_pause: AFTER_MOVE_PAUSE_MIN.max(tick_interval * election_ticks * 2),
            election_ticks: u64::from(election_ticks),
            looks: 0,
            settled: false,
            handoffs: RecentHandoffs::default(),
            started: Instant::now(),
            led_since: HashMap::new(),
            load_due_since: None,
            draining: false,
        }
    }

    /// Something a look depends on changed (a leader, the nodes up, the ranges held):
    /// the next look is at the usual interval again.
    pub fn unsettle(&mut self) {
        if self.settled {
            self.settled = false;
            self.next_check = self.next_check.min(Instant::now() + CHECK_INTERVAL);
        }
    }

    /// An operator moved a leadership: no move of this node's for a while.
    pub fn pause_after_operator_move(&mut self, now: Instant) {
        self.next_check = self.next_check.max(now + self.after_move_pause);
    }

    /// The leaderships this node should hand over now, if it is time to look and moves
    /// are due (`LeaderBalance::next_moves`: only a keyspace split into several data
    /// ranges spreads its leaders, and nothing moves while a range elects, changes its
    /// membership or transfers its leadership). Nor while a replica here has not
    /// learned its range's membership yet. Each look sets this node's load in `loads`
    /// (the requests per second of the ranges it leads, from `groups`), and reads the
    /// peers' there.
    pub fn next_moves(
        &mut self,
        me: NodeId,
        replicas: &HashMap<GroupId, Replica>,
        groups: &SharedGroups,
        loads: &NodeLoads,
        may_lead: impl Fn(NodeId) -> bool,
        now: Instant,
    ) -> Vec<(GroupId, NodeId)> {
        self.draining = false;
        if now < self.next_check {
            return Vec::new();
        }
        self.looks += 1;
        self.next_check = now + CHECK_INTERVAL + self.jitter(me);
        // Settled unless this look moves something (or stops short of moving because
        // this node's view of a range is behind, which a leadership change ends).
        self.settled = true;
        let mut ranges = Vec::with_capacity(replicas.len());
        // The voters of the range before, shared with the next if they are the same.
        let mut voters: Arc<[NodeId]> = Arc::new([]);
        let mut mine = 0.0;
        let mut led_since = HashMap::with_capacity(self.led_since.len());
        {
            let shared = groups.read().expect("groups lock");
            for (&group, replica) in replicas {
                let conf = replica.node.conf_state();
                if conf.voters.is_empty() {
                    // An empty replica waiting for its range's first snapshot: not counted.
                    continue;
                }
                if !conf.voters.iter().eq(voters.iter()) {
                    voters = conf.voters.iter().copied().collect();
                }
                let leader = replica.node.leader();
                let (load_per_second, taken_lately) = if leader == me {
                    let since = *self.led_since.get(&group).unwrap_or(&now);
                    led_since.insert(group, since);
                    let load = shared
                        .get(&group)
                        .map_or(0.0, |shared| shared.requests.per_second());
                    (load, now.saturating_duration_since(since) < TAKEN_LATELY)
                } else {
                    (0.0, false)
                };
                mine += load_per_second;
                ranges.push(RangeLeadership {
                    range: RangeId(group.0),
                    leader: (leader != NodeId::NONE).then_some(leader),
                    voters: voters.clone(),
                    caught_up: replica.node.caught_up_voters(self.election_ticks),
                    changing: conf.is_joint()
                        || replica.has_conf_proposal()
                        || replica.node.transfer_target().is_some(),
                    load_per_second,
                    taken_lately,
                });
            }
        }
        self.led_since = led_since;
        loads.set_mine(mine);
        crate::metrics::metrics()
            .leading_requests_per_second
            .set(mine.round() as i64);
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u64;
        let mut peer_loads = loads.fresh(now);
        self.handoffs.add_to(now_ms, &mut peer_loads);
        // What this node knows of its own role is first-hand; a stale view of another
        // range's leader is not, but it only delays a move.
        let (moves, rule) =
            LeaderBalance::default().next_moves_by_rule(me, &ranges, may_lead, &peer_loads);
        let moves: Vec<(GroupId, NodeId)> = moves
            .into_iter()
            .map(|LeaderMove { range, to }| (GroupId(range.0), to))
            .filter(|(group, _)| replicas[group].node.role() == Role::Leader)
            .collect();
        if rule == MoveRule::Load && !moves.is_empty() {
            let since = *self.load_due_since.get_or_insert(now);
            if now.saturating_duration_since(since) < LOAD_DUE_FOR {
                // Due, not for long enough yet: looked at again soon.
                self.settled = false;
                self.next_check = now + LOADED_RECHECK;
                return Vec::new();
            }
        }
        self.load_due_since = None;
        if moves.is_empty() {
            let recheck = if mine >= LOAD_GAP_MIN_PER_SECOND {
                LOADED_RECHECK
            } else {
                SETTLED_RECHECK
            };
            self.next_check = now + recheck;
            return moves;
        }
        for &(group, to) in &moves {
            let load = ranges
                .iter()
                .find(|range| range.range == RangeId(group.0))
                .map_or(0.0, |range| range.load_per_second);
            if load > 0.0 {
                self.handoffs.record(now_ms, to, load);
            }
        }
        self.settled = false;
        self.next_check = now + self.after_move_pause + self.jitter(me);
        moves
    }

    /// While this node drains its leaderships (an operator's MoveLeader, for
    /// `DRAIN_HOLD`): every range it leads, each handed to a voter caught up with it that
    /// may lead (`may_lead`: up, not being removed, not draining), the ranges spread
    /// over them in turn; up to `MOVES_PER_LOOK_MAX` a look. MoveLeader's own passes
    /// move what this node led then; a range whose election this node wins later (its
    /// leader died, and a drained voter campaigns as any other) would otherwise stay
    /// led here, as the count rule evens counts out and never empties a node. The pause
    /// after a move between moves; once nothing is led here, the next look when a
    /// leadership changes, as for spreading.
    pub fn drain_moves(
        &mut self,
        me: NodeId,
        replicas: &HashMap<GroupId, Replica>,
        may_lead: impl Fn(NodeId) -> bool,
        now: Instant,
    ) -> Vec<(GroupId, NodeId)> {
        // A drain's first look is at once: MoveLeader's passes ended, maybe early on a
        // target that died, and this node may lead ranges they did not move.
        if now < self.next_check && self.draining {
            return Vec::new();
        }
        self.draining = true;
        self.looks += 1;
        let mut moves = Vec::new();
        // A range led here that could not be handed away yet (a range won moments ago
        // has heard from no voter, or one is changing): looked at again soon.
        let mut kept = false;
        for (&group, replica) in replicas {
            if replica.node.role() != Role::Leader {
                continue;
            }
            if replica.node.transfer_target().is_some()
                || replica.node.conf_state().is_joint()
                || replica.has_conf_proposal()
            {
                kept = true;
                continue;
            }
            let targets: Vec<NodeId> = replica
                .node
                .caught_up_voters(self.election_ticks)
                .into_iter()
                .filter(|&voter| voter != me && may_lead(voter))
                .collect();
            if targets.is_empty() {
                kept = true;
                continue;
            }
            moves.push((group, targets[moves.len() % targets.len()]));
            if moves.len() >= ostrakon_ranges::leader_balance::MOVES_PER_LOOK_MAX {
                break;
            }
        }
        // Nothing led here: settled until a leadership changes (`unsettle`).
        self.settled = moves.is_empty() && !kept;
        let pause = if !moves.is_empty() {
            self.after_move_pause
        } else if kept {
            CHECK_INTERVAL
        } else {
            SETTLED_RECHECK
        };
        self.next_check = now + pause + self.jitter(me);
        moves
    }

    /// Up to `JITTER_MAX`, different per node and per look (a hash of both; no need for
    /// randomness that is more than uneven).
    fn jitter(&self, me: NodeId) -> Duration {
        let mixed = (me.0 ^ self.looks.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let max_ms = JITTER_MAX.as_millis() as u64;
        Duration::from_millis((mixed >> 32) % (max_ms + 1))
    }
}

/// The nodes that may take a leadership: up (not reported down) and not being removed.
pub fn may_lead<'a>(
    nodes_down: &'a BTreeSet<NodeId>,
    is_leaving: impl Fn(NodeId) -> bool + 'a,
) -> impl Fn(NodeId) -> bool + 'a {
    move |node| !nodes_down.contains(&node) && !is_leaving(node)
}
