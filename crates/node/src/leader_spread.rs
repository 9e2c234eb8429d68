//! The event loop's side of spreading range leaders over the nodes
//! (`ostrakon_ranges::leader_balance` decides): what this node knows of its ranges'
//! leaders, how often it looks, and when it holds back.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ostrakon_raft::{GroupId, NodeId, Role};
use ostrakon_ranges::leader_balance::{next_leader_move, LeaderMove, RangeLeadership};
use ostrakon_ranges::RangeId;

use crate::replica::Replica;

/// How often a node looks at its ranges' leaders.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// After a move, how long the node waits before the next one: the transfer takes an
/// election round, and the other nodes' views must catch up with it, or they would
/// count the moved leadership twice.
const AFTER_MOVE_PAUSE: Duration = Duration::from_secs(2);

/// When this node next looks.
pub struct LeaderSpread {
    next_check: Instant,
}

impl LeaderSpread {
    /// A spreader that looks at once.
    pub fn new() -> LeaderSpread {
        LeaderSpread {
            next_check: Instant::now(),
        }
    }

    /// The leadership this node should hand over now, if it is time to look and a move
    /// is due. Only a keyspace split into several data ranges spreads its leaders (with
    /// one data range, the meta range's leader has almost nothing to do). Nothing moves
    /// while a range changes its membership or has no replica here yet that knows it.
    pub fn next_move(
        &mut self,
        me: NodeId,
        replicas: &HashMap<GroupId, Replica>,
        may_lead: impl Fn(NodeId) -> bool,
        now: Instant,
    ) -> Option<(GroupId, NodeId)> {
        if now < self.next_check {
            return None;
        }
        self.next_check = now + CHECK_INTERVAL;
        // The meta range and at least two data ranges.
        if replicas.len() < 3 {
            return None;
        }
        let mut ranges = Vec::with_capacity(replicas.len());
        for (&group, replica) in replicas {
            let conf = replica.node.conf_state();
            if conf.voters.is_empty() || conf.is_joint() || replica.has_conf_proposal() {
                return None;
            }
            let leader = replica.node.leader();
            ranges.push(RangeLeadership {
                range: RangeId(group.0),
                leader: (leader != NodeId::NONE).then_some(leader),
                voters: conf.voters.iter().copied().collect(),
            });
        }
        let LeaderMove { range, to } = next_leader_move(me, &ranges, may_lead)?;
        let group = GroupId(range.0);
        // What this node knows of its own role is first-hand; a stale view of another
        // range's leader is not, but it only delays a move.
        if replicas[&group].node.role() != Role::Leader {
            return None;
        }
        self.next_check = now + AFTER_MOVE_PAUSE;
        Some((group, to))
    }
}

/// The nodes that may take a leadership: up (not reported down) and not being removed.
pub fn may_lead<'a>(
    nodes_down: &'a BTreeSet<NodeId>,
    is_leaving: impl Fn(NodeId) -> bool + 'a,
) -> impl Fn(NodeId) -> bool + 'a {
    move |node| !nodes_down.contains(&node) && !is_leaving(node)
}
