//! Range leaders spread over the nodes, as the runtime spreads them: each running node
//! looks every few ticks at the ranges it holds, and the range layer's real rule
//! (`ostrakon_ranges::leader_balance`) says which leadership it hands over; after a move
//! it waits, as the runtime does. Each range carries a steady load drawn from the seed
//! (most cold, some warm, a few hot); a node's load is what its ranges carry while it
//! leads them, set at each look and read by the others as the runtime gossips it, and a
//! node counts what it handed over lately toward the taker, as the runtime does. The
//! end check: once the faults healed, the moves end with no move due anywhere.

use ostrakon_raft::{GroupId, NodeId, Role};
use ostrakon_ranges::leader_balance::{LeaderMove, PeerLoads, RangeLeadership, TAKEN_LATELY_MS};
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
/// Beyond the 20 s counts alone took, the hold-backs of the load rule: a range taken
/// lately is not moved by load for `TAKEN_LATELY_MS`, and a handed-over load counts
/// toward its taker for `HANDOFF_COUNTED_FOR_MS`, each of which a chain of moves may
/// meet in turn.
const SPREAD_DEADLINE_US: u64 = 45_000_000;
/// How long no move may be due, by the true leaders, for the spreading to count as done.
const SPREAD_STABLE_US: u64 = 3_000_000;
/// How long a node's reported load counts for the others (the runtime's
/// `PEER_LOAD_FRESH_FOR`).
const LOAD_FRESH_FOR_US: u64 = 10_000_000;
/// The window a range's rate is averaged over in the runtime (`request_rate`): a node's
/// rate of a range it just took grows over it.
const RATE_WINDOW_US: u64 = 10_000_000;

/// A range's steady load in requests per second, drawn from the seed and its id: four in
/// ten cold, four warm (up to 400), two hot (up to 3,000).
pub(crate) fn range_load(salt: u64, group: GroupId) -> f64 {
    let mut mixed = salt ^ group.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^= mixed >> 31;
    let (kind, amount) = (mixed % 10, (mixed >> 8) % 3_000);
    match kind {
        0..=3 => 0.0,
        4..=7 => (amount % 400) as f64,
        _ => amount as f64,
    }
}

impl Simulation {
    /// At `id`'s tick: the leadership move it makes, if it is time to look and one is due.
    pub(crate) fn spread_leaders(&mut self, id: NodeId) {
        if !self.spreading_leaders {
            return;
        }
        let tick_us = self.nodes[&id].tick_us;
        let now_us = self.now_us;
        let salt = self.load_salt;
        let running = self.running(id);
        if now_us < running.next_spread_us {
            return;
        }
        running.next_spread_us = now_us + CHECK_EVERY_TICKS * tick_us;
        let down = running.down.clone();
        let mut ranges = Vec::new();
        let mut mine = 0.0;
        for (&group, replica) in &running.replicas {
            let conf = replica.raw.conf_state();
            if conf.voters.is_empty() {
                return;
            }
            let leader = replica.raw.leader();
            let (load_per_second, taken_lately) = if leader == id {
                let since_us = *running.led_since_us.entry(group).or_insert(now_us);
                let ramp = (now_us - since_us) as f64 / RATE_WINDOW_US as f64;
                (
                    range_load(salt, group) * ramp.min(1.0),
                    now_us - since_us < TAKEN_LATELY_MS * 1_000,
                )
            } else {
                running.led_since_us.remove(&group);
                (0.0, false)
            };
            mine += load_per_second;
            ranges.push(RangeLeadership {
                range: RangeId(group.0),
                leader: (leader != NodeId::NONE).then_some(leader),
                voters: conf.voters.iter().copied().collect::<Vec<_>>().into(),
                caught_up: replica.raw.caught_up_voters(u64::from(ELECTION_TICKS)),
                changing: conf.is_joint() || replica.raw.transfer_target().is_some(),
                load_per_second,
                taken_lately,
            });
        }
        running.leading_load = Some((mine, now_us));
        // The others' figures, as gossip brings them: fresh ones from nodes that are up.
        let mut peer_loads: PeerLoads = self
            .nodes
            .iter()
            .filter(|&(&node, _)| node != id)
            .filter_map(|(&node, sim_node)| {
                let (load, at_us) = sim_node.running.as_ref()?.leading_load?;
                (now_us.saturating_sub(at_us) < LOAD_FRESH_FOR_US).then_some((node, load))
            })
            .collect();
        self.running(id)
            .handoffs
            .add_to(now_us / 1_000, &mut peer_loads);
        let moves =
            self.leader_balance
                .next_moves(id, &ranges, |node| !down.contains(&node), &peer_loads);
        for LeaderMove { range, to } in moves {
            let group = range.group();
            if self.replica(id, group).raw.role() != Role::Leader {
                continue;
            }
            let load = range_load(salt, group);
            let running = self.running(id);
            running.handoffs.record(now_us / 1_000, to, load);
            running.next_spread_us = now_us + AFTER_MOVE_TICKS * tick_us;
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
                // The rule reads only the loads of the ranges the deciding node leads.
                load_per_second: range_load(self.load_salt, group),
                taken_lately: false,
            });
        }
        // Each node's true load: what the ranges it leads carry.
        let loads: PeerLoads = self
            .nodes
            .keys()
            .filter(|&&id| self.is_up(id))
            .map(|&id| {
                let led = ranges.iter().filter(|r| r.leader == Some(id));
                (id, led.map(|r| r.load_per_second).sum())
            })
            .collect();
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
                let mut others = loads.clone();
                others.remove(&id);
                self.leader_balance
                    .next_move(id, &holds, |node| self.is_up(node), &others)
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
