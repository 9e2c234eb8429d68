//! The checks made once the faults have healed: every range quiesces and fails over
//! when the node leading it dies, every range makes progress, and every range's
//! replicas converge.

use std::collections::BTreeMap;

use ostrakon_raft::{GroupId, NodeId, Role};

use crate::invariants::Violation;
use crate::node::{Input, Waiting};
use crate::simulation::{trace, Simulation, PROBE_CLIENT, PROBE_KEY};

/// How long after healing and settling the probe writes may take to apply everywhere.
const PROBE_DEADLINE_US: u64 = 3_000_000;
/// How long after healing idle ranges must have quiesced.
const QUIESCE_DEADLINE_US: u64 = 1_000_000;
/// How long after a quiesced leader's node dies its ranges must have new leaders.
const QUIESCED_FAILOVER_DEADLINE_US: u64 = 3_000_000;
/// How long the members of every range get to apply what their leaders committed last.
const CONVERGE_DEADLINE_US: u64 = 1_000_000;

impl Simulation {
    /// Progress: a write proposed at each range's leader after the faults healed is
    /// applied by every member of the range within the deadline.
    pub(crate) fn check_progress(&mut self) {
        let deadline_us = self.now_us + PROBE_DEADLINE_US;
        let has_probe = |sim: &Simulation, id: NodeId, group: GroupId| {
            sim.replica_ref(id, group)
                .is_some_and(|r| r.kv.registers.contains_key(&PROBE_KEY))
        };
        while self.now_us < deadline_us && self.violation.is_none() {
            let mut everywhere = true;
            for group in self.groups() {
                let members = self.latest_conf[&group].1.members();
                if members.iter().all(|&id| has_probe(self, id, group)) {
                    continue;
                }
                everywhere = false;
                let anyone_applied = self.nodes.keys().any(|&id| has_probe(self, id, group));
                if !anyone_applied {
                    if let Some(leader) = self.current_leader(group) {
                        self.input(leader, group, Input::Probe);
                    }
                }
            }
            if everywhere {
                return;
            }
            self.run_until(self.now_us + 100_000);
        }
        if self.violation.is_none() {
            self.fail(Violation(format!(
                "no progress: a write proposed after healing was not applied by every member \
                 of every range within {} ms",
                PROBE_DEADLINE_US / 1000
            )));
        }
    }

    /// Whether every member's replica of every range is quiesced, and who leads each.
    fn quiesced_leaders(&self) -> Option<BTreeMap<GroupId, NodeId>> {
        let mut leaders = BTreeMap::new();
        for group in self.groups() {
            for id in self.latest_conf[&group].1.members() {
                let replica = self.replica_ref(id, group)?;
                if !replica.raw.is_quiesced() || replica.busy.is_some() {
                    return None;
                }
            }
            leaders.insert(group, self.current_leader(group)?);
        }
        Some(leaders)
    }

    /// The replicas keeping `quiesced_leaders` from answering, for the failure message.
    fn awake_replicas(&self) -> String {
        let mut awake = Vec::new();
        for group in self.groups() {
            for id in self.latest_conf[&group].1.members() {
                let Some(replica) = self.replica_ref(id, group) else {
                    awake.push(format!("{id:?} holds no replica of {group:?}"));
                    continue;
                };
                if !replica.raw.is_quiesced() || replica.busy.is_some() {
                    awake.push(format!(
                        "{id:?} {group:?} {:?} of {:?} (leader {:?}, commit {:?}, applied {:?}, busy {})",
                        replica.raw.role(),
                        replica.raw.term(),
                        replica.raw.leader(),
                        replica.raw.commit(),
                        replica.applied,
                        replica.busy.is_some()
                    ));
                }
            }
            if self.current_leader(group).is_none() {
                awake.push(format!("{group:?} has no leader"));
            }
        }
        awake.join("; ")
    }

    /// Quiescence, checked after healing and settling: the idle ranges quiesce; then a
    /// node leading some of them dies (or is cut off), and node liveness must get the
    /// quiesced followers of each range it led to elect another leader (a quiesced
    /// follower never times out by itself). The old leader then restarts for the
    /// progress and convergence checks.
    pub(crate) fn check_quiesced_failover(&mut self) {
        let quiesce_deadline_us = self.now_us + QUIESCE_DEADLINE_US;
        let leaders = loop {
            if let Some(leaders) = self.quiesced_leaders() {
                break leaders;
            }
            if self.now_us >= quiesce_deadline_us {
                let awake = self.awake_replicas();
                self.fail(Violation(format!(
                    "idle, healed ranges did not all quiesce within {} ms: {awake}",
                    QUIESCE_DEADLINE_US / 1000
                )));
                return;
            }
            self.run_until(self.now_us + 10_000);
            if self.violation.is_some() {
                return;
            }
        };
        let leader_nodes: Vec<NodeId> = leaders.values().copied().collect();
        let victim = self.rng.pick(&leader_nodes);
        // Ranges with fewer than 3 voters would have no quorum without the victim.
        let failing_over: Vec<GroupId> = leaders
            .iter()
            .filter(|&(group, &leader)| {
                leader == victim && self.latest_conf[group].1.voters.len() >= 3
            })
            .map(|(&group, _)| group)
            .collect();
        if failing_over.is_empty() {
            return;
        }
        // Cut off rather than dead, the old leader is still up to answer a read: its
        // followers elected another leader meanwhile, so it must not answer from a lease.
        // Its raft messages are lost both ways while the others' pings still reach it (a
        // burst of losses that spares them): its node liveness sees nothing wrong, so it
        // stays quiesced until the read wakes it.
        let isolate = self.rng.chance(0.5);
        if isolate {
            trace!(
                self,
                "{victim:?}, leading {failing_over:?} quiesced, is cut off, though it still hears pings"
            );
            for other in self.nodes.keys().copied().collect::<Vec<_>>() {
                if other != victim {
                    self.blocked.insert((victim, other));
                    self.blocked.insert((other, victim));
                    self.pings_pass.insert((other, victim));
                }
            }
        } else {
            trace!(self, "{victim:?}, leading {failing_over:?} quiesced, dies");
            self.stop(victim);
        }
        let failover_deadline_us = self.now_us + QUIESCED_FAILOVER_DEADLINE_US;
        let new_leader_committed = |sim: &Simulation, group: GroupId| {
            sim.nodes.keys().any(|&id| {
                id != victim
                    && sim.replica_ref(id, group).is_some_and(|r| {
                        r.raw.role() == Role::Leader
                            && r.raw.log_term(r.raw.commit()) == Some(r.raw.term())
                    })
            })
        };
        while !failing_over.iter().all(|&g| new_leader_committed(self, g)) {
            if self.now_us >= failover_deadline_us {
                self.fail(Violation(format!(
                    "no new leader within {} ms after the node of the quiesced leader of \
                     {failing_over:?} died",
                    QUIESCED_FAILOVER_DEADLINE_US / 1000
                )));
                return;
            }
            self.run_until(self.now_us + 10_000);
            if self.violation.is_some() {
                return;
            }
        }
        if isolate {
            for &group in &failing_over {
                self.read_at_deposed_leader(victim, group);
            }
            self.run_until(self.now_us + 200_000);
            self.blocked.clear();
            self.pings_pass.clear();
        } else {
            trace!(self, "{victim:?} restarts");
            self.start_node(victim);
        }
    }

    /// A read at a leader cut off while quiesced, after the others elected a new leader
    /// that committed an entry: it must not be answered below that entry (checked in
    /// `handle_read_state`), whatever its lease said before it slept.
    fn read_at_deposed_leader(&mut self, leader: NodeId, group: GroupId) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let read_floor = self.highest_commit(group);
        let waiting = Waiting::register(
            PROBE_CLIENT,
            ostrakon_check::OpId::NONE,
            PROBE_KEY,
            read_floor,
        );
        let replica = self.replica(leader, group);
        if replica.busy.is_some() || replica.raw.read_index(request_id).is_err() {
            return;
        }
        replica.reads.insert(request_id, waiting);
        trace!(
            self,
            "a read at the deposed leader {leader:?} of {group:?} (floor {read_floor:?})"
        );
        self.drive(leader, group);
    }

    /// Every member of every range applied what its leader committed, and holds the
    /// same state.
    pub(crate) fn check_convergence(&mut self) {
        // A range leader's own work (a pusher's abort, a horizon) may have been proposed
        // just before: it gets a little time to reach every member.
        let deadline_us = self.now_us + CONVERGE_DEADLINE_US;
        loop {
            let Some((group, violation)) = self.divergence() else {
                return;
            };
            if self.now_us >= deadline_us || self.violation.is_some() {
                return self.fail_in(group, violation);
            }
            self.run_until(self.now_us + 100_000);
        }
    }

    /// The first range whose members differ from its leader, if any.
    fn divergence(&self) -> Option<(GroupId, Violation)> {
        for group in self.groups() {
            let members = self.latest_conf[&group].1.members();
            let Some(leader) = self.current_leader(group) else {
                return Some((
                    group,
                    Violation("no leader after healing and settling".into()),
                ));
            };
            let leader_replica = self.replica_ref(leader, group).expect("leader");
            let (leader_commit, leader_kv) = (leader_replica.raw.commit(), &leader_replica.kv);
            for id in members {
                let Some(replica) = self.replica_ref(id, group) else {
                    let message = format!("member {id:?} is not running after healing");
                    return Some((group, Violation(message)));
                };
                if replica.applied != leader_commit || &replica.kv != leader_kv {
                    let message = format!(
                        "member {id:?} did not converge: applied {:?} (leader {leader:?} \
                         committed {leader_commit:?}), state {:?} vs {:?}",
                        replica.applied, replica.kv, leader_kv
                    );
                    return Some((group, Violation(message)));
                }
            }
        }
        None
    }
}
