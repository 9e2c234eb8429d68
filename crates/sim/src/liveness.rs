//! Node liveness, as the runtime does it: one ping per node pair per tick, whatever the
//! number of ranges, through the same faulty network; a node silent for an election
//! timeout is reported down to every replica here, and up when heard from again.

use ostrakon_raft::NodeId;

use crate::events::Event;
use crate::node::Input;
use crate::simulation::{Simulation, ELECTION_TICKS};

impl Simulation {
    /// `node` heard from `from`: it is up, as far as `node` can tell.
    pub(crate) fn heard(&mut self, node: NodeId, from: NodeId) {
        let now_us = self.now_us;
        let running = self.running(node);
        running.heard_us.insert(from, now_us);
        if running.down.remove(&from) {
            for group in self.groups_on(node) {
                self.input(node, group, Input::NodeUp(from));
            }
        }
    }

    /// At each tick: pings every other node, and reports to every replica each node not
    /// heard from for an election timeout of this node's clock (once per silence, as a
    /// runtime reports a node going down).
    pub(crate) fn tick_liveness(&mut self, id: NodeId) {
        let tick_us = self.nodes[&id].tick_us;
        let others: Vec<NodeId> = self
            .nodes
            .keys()
            .filter(|&&other| other != id)
            .copied()
            .collect();
        let now_us = self.now_us;
        let running = self.running(id);
        let silence_us = u64::from(ELECTION_TICKS) * tick_us;
        let mut newly_down = Vec::new();
        for &other in &others {
            let last_us = running
                .heard_us
                .get(&other)
                .copied()
                .unwrap_or(running.started_us);
            if now_us.saturating_sub(last_us) > silence_us && running.down.insert(other) {
                newly_down.push(other);
            }
        }
        for other in newly_down {
            for group in self.groups_on(id) {
                self.input(id, group, Input::NodeDown(other));
            }
        }
        for other in others {
            if self.rng.chance(self.scenario.faults.drop_probability) {
                continue;
            }
            let faults = &self.scenario.faults;
            let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
            self.events.push(
                self.now_us + latency,
                Event::Ping {
                    from: id,
                    to: other,
                },
            );
        }
    }
}
