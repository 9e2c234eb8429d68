//! The faults the nemesis injects during the faulty phase: partitions, crashes, slow
//! disks, membership changes and leadership transfers, each aimed at one range where
//! it matters which (the leader it isolates, the group it reconfigures).

use ostrakon_raft::{GroupId, NodeId};

use crate::events::Event;
use crate::node::Input;
use crate::simulation::{trace, Simulation};

/// How often, while faults run, a register client's request makes its range split at
/// the request's key just before the request is proposed.
const SPLIT_UNDER_REQUEST_PROBABILITY: f64 = 0.05;

impl Simulation {
    /// A range, the meta range included.
    fn pick_group(&mut self) -> GroupId {
        let groups = self.groups();
        self.rng.pick(&groups)
    }

    /// Asks the leader of a data range to split it at a register strictly inside it
    /// (the register right after the clients' keys splits off the probe's range).
    fn split_range(&mut self) {
        let groups: Vec<GroupId> = self.ranges.iter().map(|r| r.id.group()).collect();
        let group = self.rng.pick(&groups);
        let Some(leader) = self.current_leader(group) else {
            return;
        };
        let Some(current) = self.replica(leader, group).kv.descriptor.clone() else {
            return;
        };
        let candidates: Vec<u64> = (0..=self.scenario.total_keys())
            .filter(|&key| {
                let at = crate::kv::routing_key(key);
                current.contains(&at) && at.as_slice() > current.start.as_slice()
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let at = self.rng.pick(&candidates);
        let split = self.split_command(current.generation, at);
        self.input(leader, group, Input::Propose(split));
    }

    /// A register client's request reached the leader of `group`: sometimes the range
    /// splits at its key right then, before the request is proposed, so the request
    /// crosses the split (checked on arrival against the span before it, it takes
    /// effect after it: the race the span check where a request takes effect is for).
    pub(crate) fn maybe_split_under_request(&mut self, leader: NodeId, group: GroupId, key: u64) {
        if self.healed_at_us.is_some()
            || self.scenario.split_probability == 0.0
            || !self.rng.chance(SPLIT_UNDER_REQUEST_PROBABILITY)
        {
            return;
        }
        let replica = self.replica(leader, group);
        if replica.raw.role() != ostrakon_raft::Role::Leader {
            return;
        }
        let Some(current) = replica.kv.descriptor.clone() else {
            return;
        };
        let at = crate::kv::routing_key(key);
        if current.contains(&at) && at.as_slice() > current.start.as_slice() {
            trace!(
                self,
                "{leader:?} {group:?} splits at {key} under a request for it"
            );
            let split = self.split_command(current.generation, key);
            // Proposed at once, ahead of the request (the replica is handling an input,
            // so not persisting; its caller drives it after).
            self.handle_input(leader, group, Input::Propose(split));
        }
    }

    /// A split at register `at` of a range of `generation`, into a new range.
    fn split_command(&mut self, generation: u64, at: u64) -> crate::kv::Command {
        let right = self.next_range_id;
        self.next_range_id += 1;
        crate::kv::Command::Split {
            at,
            right,
            expected_generation: generation,
        }
    }

    /// Stops a node's process: everything it had not persisted is lost.
    pub(crate) fn stop(&mut self, id: NodeId) {
        let groups = self.groups_on(id);
        let node = self.nodes.get_mut(&id).expect("node");
        node.running = None;
        node.epoch += 1;
        for group in groups {
            self.forget_volatile(id, group);
        }
    }

    pub(crate) fn live_members(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub(crate) fn nemesis(&mut self) {
        let faults = self.scenario.faults.clone();
        if self.rng.chance(faults.partition_probability) {
            self.partition();
        }
        if self.rng.chance(faults.crash_probability) {
            self.crash_one();
        }
        if self.rng.chance(faults.membership_change_probability) {
            self.change_membership();
        }
        if self.rng.chance(faults.transfer_probability) {
            let group = self.pick_group();
            self.transfer_leadership(group);
        }
        if self.rng.chance(self.scenario.split_probability) {
            self.split_range();
        }
        if self.scenario.merge_probability > 0.0 {
            // A range left frozen by a merge given up before its freeze applied comes
            // first (one merge is in flight at a time).
            self.thaw_stray_freezes();
            if self.rng.chance(self.scenario.merge_probability) {
                self.start_merge();
            }
        }
        if self.rng.chance(faults.slow_disk_probability) {
            let nodes = self.live_members();
            let id = self.rng.pick(&nodes);
            let node = self.nodes.get_mut(&id).unwrap();
            node.fsync_latency_us_max = faults.fsync_latency_us_max * 10;
            let epoch = node.epoch;
            trace!(self, "{id:?}'s disk turns slow");
            let until = self.now_us + self.rng.range(500_000, 3_000_000);
            self.events.push(until, Event::DiskRecovers(id, epoch));
        }
    }

    /// Asks `group`'s leader, if it has one, to hand its leadership to another voter.
    pub(crate) fn transfer_leadership(&mut self, group: GroupId) {
        let Some(leader) = self.current_leader(group) else {
            return;
        };
        let voters: Vec<NodeId> = self.latest_conf[&group]
            .1
            .voters
            .iter()
            .copied()
            .filter(|&v| v != leader)
            .collect();
        if !voters.is_empty() {
            let target = self.rng.pick(&voters);
            trace!(
                self,
                "nemesis: {group:?} leadership {leader:?} -> {target:?}"
            );
            self.input(leader, group, Input::Transfer(target));
        }
    }

    fn partition(&mut self) {
        let nodes = self.live_members();
        self.blocked.clear();
        self.partition_id += 1;
        // Isolating the leader is the most telling partition, so it is the most common.
        let kind = match self.rng.below(20) {
            0..=7 => 0,
            8..=13 => 1,
            14..=16 => 2,
            _ => 3,
        };
        let description = match kind {
            0 => {
                let group = self.pick_group();
                let leader = self
                    .current_leader(group)
                    .unwrap_or_else(|| self.rng.pick(&nodes));
                self.cut_off(leader);
                format!("isolate leader {leader:?}")
            }
            1 => {
                let mut shuffled = nodes.clone();
                for i in (1..shuffled.len()).rev() {
                    let j = self.rng.below(i as u64 + 1) as usize;
                    shuffled.swap(i, j);
                }
                let minority = self.rng.range(1, (nodes.len() as u64 / 2).max(1)) as usize;
                let (small, large) = shuffled.split_at(minority);
                for &a in small {
                    for &b in large {
                        self.blocked.insert((a, b));
                        self.blocked.insert((b, a));
                    }
                }
                format!("split minority {small:?} from majority {large:?}")
            }
            2 => {
                let a = self.rng.pick(&nodes);
                for &b in &nodes {
                    if b != a {
                        self.blocked.insert((a, b));
                    }
                }
                format!("one-way: {a:?} cannot send to anyone but hears everyone")
            }
            _ => {
                let a = self.rng.pick(&nodes);
                let b = self.rng.pick(&nodes);
                if a != b {
                    self.blocked.insert((a, b));
                    self.blocked.insert((b, a));
                }
                format!("cut link {a:?} <-> {b:?}")
            }
        };
        trace!(self, "partition {}: {description}", self.partition_id);
        let until = self.now_us + self.rng.range(300_000, 3_000_000);
        self.events
            .push(until, Event::HealPartition(self.partition_id));
    }

    /// Blocks every link to and from `id` (messages in flight on them are lost).
    fn cut_off(&mut self, id: NodeId) {
        for other in self.live_members() {
            if other != id {
                self.blocked.insert((id, other));
                self.blocked.insert((other, id));
            }
        }
    }

    /// A one-way partition, until it heals: `id` hears every other node but cannot send
    /// to any (its messages in flight are lost).
    pub(crate) fn silence(&mut self, id: NodeId) {
        self.blocked.clear();
        self.partition_id += 1;
        for other in self.live_members() {
            if other != id {
                self.blocked.insert((id, other));
            }
        }
        trace!(self, "partition {}: {id:?} cannot send", self.partition_id);
        let until = self.now_us + self.rng.range(300_000, 3_000_000);
        self.events
            .push(until, Event::HealPartition(self.partition_id));
    }

    fn crash_one(&mut self) {
        let up: Vec<NodeId> = self
            .live_members()
            .into_iter()
            .filter(|&id| self.is_up(id))
            .collect();
        if up.is_empty() {
            return;
        }
        let group = self.pick_group();
        let victim = match self.current_leader(group) {
            Some(leader) if self.rng.chance(0.5) => leader,
            _ => self.rng.pick(&up),
        };
        self.crash(victim);
    }

    /// Kills a node: everything it had not persisted is lost; it restarts later.
    pub(crate) fn crash(&mut self, victim: NodeId) {
        self.stop(victim);
        trace!(self, "{victim:?} crashes, losing what it had not persisted");
        let restart_at = self.now_us + self.rng.range(100_000, 2_000_000);
        self.events.push(restart_at, Event::Restart(victim));
    }

    /// Changes one range's membership: promotes its learner, removes a voter, or adds
    /// a learner on a node that never held the range (a new node, or one holding other
    /// ranges).
    fn change_membership(&mut self) {
        use ostrakon_raft::{ConfChange, ConfChangeStep};
        let group = self.pick_group();
        let Some(leader) = self.current_leader(group) else {
            return;
        };
        if !self.may_change_membership(group) {
            return;
        }
        let conf = self.replica(leader, group).raw.conf_state().clone();
        if conf.is_joint() {
            return;
        }
        let step = if let Some(&learner) = conf.learners.iter().next() {
            ConfChangeStep::AddVoter(learner)
        } else if conf.voters.len() >= 3
            && (conf.voters.len() as u64 > self.scenario.node_count || self.rng.chance(0.5))
        {
            let voters: Vec<NodeId> = conf.voters.iter().copied().collect();
            ConfChangeStep::Remove(self.rng.pick(&voters))
        } else {
            let hosts_elsewhere: Vec<NodeId> = self
                .nodes
                .keys()
                .filter(|&&id| !self.ever_hosted.contains(&(id, group)))
                .copied()
                .collect();
            let id = if !hosts_elsewhere.is_empty() && self.rng.chance(0.5) {
                self.rng.pick(&hosts_elsewhere)
            } else {
                let id = NodeId(self.next_node_id);
                self.next_node_id += 1;
                self.add_node(id);
                id
            };
            let joining = ostrakon_raft::InitialState::joining();
            self.add_replica(id, group, joining, crate::kv::KvState::default());
            if !self.is_up(id) && self.nodes[&id].disks.len() == 1 {
                self.start_node(id);
            }
            ConfChangeStep::AddLearner(id)
        };
        self.input(
            leader,
            group,
            Input::ConfChange(ConfChange::Change(vec![step])),
        );
    }

    /// Whether a range's membership may change now: not while a merge involves it (the
    /// merge names the membership both ranges share, and a member added to the right
    /// range after its freeze would never see it merged), and not before every member
    /// snapshotted past the range's last merge (a member added later would otherwise be
    /// sent the log from before it, and replay the merge without the merged range's
    /// replica: the node's membership changes wait for the same).
    fn may_change_membership(&self, group: GroupId) -> bool {
        if let Some(attempt) = &self.merge_attempt {
            if attempt.involves(group) {
                return false;
            }
        }
        let frozen = self
            .current_leader(group)
            .and_then(|leader| self.replica_ref(leader, group))
            .is_some_and(|replica| replica.kv.frozen.is_some());
        if frozen {
            return false; // As the node's membership following skips frozen ranges.
        }
        let Some(&merged_at) = self.merged_at.get(&group) else {
            return true;
        };
        self.latest_conf[&group].1.members().into_iter().all(|id| {
            self.nodes[&id]
                .disks
                .get(&group)
                .is_some_and(|disk| disk.snapshot.index >= merged_at)
        })
    }

    pub(crate) fn heal_all(&mut self) {
        trace!(
            self,
            "heal: partitions end, crashed nodes restart, disks recover"
        );
        self.healed_at_us = Some(self.now_us);
        self.blocked.clear();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.nodes.get_mut(&id).unwrap().fsync_latency_us_max =
                self.scenario.faults.fsync_latency_us_max;
            let node = &self.nodes[&id];
            if node.running.is_none() {
                self.start_node(id);
            }
        }
    }
}
