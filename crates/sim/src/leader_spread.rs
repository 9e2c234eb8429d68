//! Range leaders spread over the nodes, as the runtime spreads them: each running node
//! looks every few ticks at the ranges it holds, and the range layer's real rule
//! (`ostrakon_ranges::leader_balance`) says which leadership it hands over; after a move
//! it waits, as the runtime does. The end check: once the faults healed, the moves end
//! with no move due anywhere.

use ostrakon_raft::{GroupId, NodeId, Role};
use ostrakon_ranges::leader_balance::{LeaderMove, RangeLeadership};
use ostrakon_ranges::RangeId;

use crate::invariants::Violation;
use crate::node::Input;
use crate::simulation::{trace, Simulation, ELECTION_TICKS};

/// A node looks every this many of its ticks (500 ms at the runtime's 100 ms tick).
const CHECK_EVERY_TICKS: u64 = 5;
/// After a move, a node waits this many ticks before the next (2 s in the runtime).
const AFTER_MOVE_TICKS: u64 = 20;
/// How long after healing the moves must have ended (no move due anywhere, by the true
/// leaders), and stayed ended.
const SPREAD_DEADLINE_US: u64 = 20_000_000;
/// How long no move may be due, by the true leaders, for the spreading to count as done.
const SPREAD_STABLE_US: u64 = 3_000_000;

impl Simulation {
    /// At `id`'s tick: the leadership move it makes, if it is time to look and one is due.
    pub(crate) fn spread_leaders(&mut self, id: NodeId) {
        if !self.spreading_leaders {
            return;
        }
        let tick_us = self.nodes[&id].tick_us;
        let now_us = self.now_us;
        let running = self.running(id);
        if now_us < running.next_spread_us {
            return;
        }
        running.next_spread_us = now_us + CHECK_EVERY_TICKS * tick_us;
        let down = running.down.clone();
        let mut ranges = Vec::new();
        for (&group, replica) in &running.replicas {
            let conf = replica.raw.conf_state();
            if conf.voters.is_empty() {
                return;
            }
            let leader = replica.raw.leader();
            ranges.push(RangeLeadership {
                range: RangeId(group.0),
                leader: (leader != NodeId::NONE).then_some(leader),
                voters: conf.voters.iter().copied().collect::<Vec<_>>().into(),
                caught_up: replica.raw.caught_up_voters(u64::from(ELECTION_TICKS)),
                changing: conf.is_joint() || replica.raw.transfer_target().is_some(),
            });
        }
        let moves = self
            .leader_balance
            .next_moves(id, &ranges, |node| !down.contains(&node));
        for LeaderMove { range, to } in moves {
            let group = range.group();
            if self.replica(id, group).raw.role() != Role::Leader {
                continue;
            }
            self.running(id).next_spread_us = now_us + AFTER_MOVE_TICKS * tick_us;
            trace!(self, "{id:?} spreads leaders: hands {group:?} to {to:?}");
            self.input(id, group, Input::Transfer(to));
        }
    }

    /// The move due somewhere by the true leaders and memberships (every node up), if
    /// any: what the nodes converge to once their views catch up. Err while a range has
    /// no leader (not settled, whatever the others do).
    fn move_due(&self) -> Result<Option<(NodeId, LeaderMove)>, GroupId> {
        let mut ranges = Vec::new();
        for group in self.groups() {
            let conf = &self.latest_conf[&group].1;
            let leader = self.current_leader(group).ok_or(group)?;
            let caught_up = self
                .replica_ref(leader, group)
                .map(|replica| replica.raw.caught_up_voters(u64::from(ELECTION_TICKS)))
                .unwrap_or_default();
            ranges.push(RangeLeadership {
                range: RangeId(group.0),
                leader: Some(leader),
                voters: conf.voters.iter().copied().collect::<Vec<_>>().into(),
                caught_up,
                changing: conf.is_joint(),
            });
        }
        Ok(self
            .nodes
            .keys()
            .filter(|&&id| self.is_up(id))
            .find_map(|&id| {
                let holds: Vec<RangeLeadership> = ranges
                    .iter()
                    .filter(|r| self.hosts(id, r.range.group()))
                    .cloned()
                    .collect();
                self.leader_balance
                    .next_move(id, &holds, |node| self.is_up(node))
                    .map(|step| (id, step))
            }))
    }

    /// After healing: within the deadline, the leaders reach a spread where no move is
    /// due, and stay there (moves that never end, or never happen, are caught here).
    pub(crate) fn check_leaders_spread(&mut self) {
        let deadline_us = self.now_us + SPREAD_DEADLINE_US;
        let mut settled_since: Option<u64> = None;
        while self.now_us < deadline_us && self.violation.is_none() {
            match self.move_due() {
                Ok(None) => {
                    let since = *settled_since.get_or_insert(self.now_us);
                    if self.now_us >= since + SPREAD_STABLE_US {
                        return;
                    }
                }
                Ok(Some(_)) | Err(_) => settled_since = None,
            }
            self.run_until(self.now_us + 100_000);
        }
        if self.violation.is_none() {
            let due = self.move_due();
            self.fail(Violation(format!(
                "range leaders did not settle spread over the nodes within {} ms after \
                 healing (a move still due: {due:?})",
                SPREAD_DEADLINE_US / 1000
            )));
        }
    }
}
