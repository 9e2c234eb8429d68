//! A tiny in-memory cluster for scenario tests: synchronous delivery, per-link cuts and a
//! message filter, durable storage per node for crash-and-restart.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use ostrakon_raft::*;

/// What a node has made durable.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    pub entries: Vec<Entry>,
}

pub type Filter = Box<dyn Fn(&Message) -> bool>;

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RawNode>,
    pub disks: BTreeMap<NodeId, Disk>,
    /// Commands applied by each node, in order: (index, data).
    pub applied: BTreeMap<NodeId, Vec<(LogIndex, Bytes)>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub in_flight: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes that are down: they neither send nor receive.
    pub down: BTreeSet<NodeId>,
    /// Messages for which this returns true are dropped.
    pub filter: Option<Filter>,
    pub configure: fn(&mut Config),
    /// Every message delivered, for tests that inspect traffic.
    pub delivered: Vec<Message>,
}

pub fn id(n: u64) -> NodeId {
    NodeId(n)
}

fn default_configure(_: &mut Config) {}

impl Cluster {
    pub fn new(size: u64) -> Cluster {
        Cluster::with_config(size, default_configure)
    }

    pub fn with_config(size: u64, configure: fn(&mut Config)) -> Cluster {
        let voters: Vec<NodeId> = (1..=size).map(NodeId).collect();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            in_flight: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            filter: None,
            configure,
            delivered: Vec::new(),
        };
        for &node in &voters {
            cluster.start(node, InitialState::bootstrap(voters.clone()));
        }
        cluster
    }

    pub fn config(&self, node: NodeId) -> Config {
        let mut config = Config::new(node, GroupId(1));
        (self.configure)(&mut config);
        config
    }

    fn start(&mut self, node: NodeId, state: InitialState) {
        let disk = Disk {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            entries: state.entries.clone(),
        };
        self.disks.insert(node, disk);
        let raw = RawNode::new(self.config(node), state, node.0 * 7919).unwrap();
        self.nodes.insert(node, raw);
        self.applied.entry(node).or_default();
    }

    /// Adds a brand-new, empty node (not yet a member).
    pub fn add_empty_node(&mut self, node: NodeId) {
        self.start(node, InitialState::joining());
    }

    pub fn node(&self, node: NodeId) -> &RawNode {
        &self.nodes[&node]
    }

    pub fn node_mut(&mut self, node: NodeId) -> &mut RawNode {
        self.nodes.get_mut(&node).unwrap()
    }

    /// Drains one node's Ready loop: persist, send, apply.
    pub fn process(&mut self, node: NodeId) {
        for _ in 0..100 {
            let raw = self.nodes.get_mut(&node).unwrap();
            if !raw.has_ready() {
                return;
            }
            let ready = raw.ready();
            self.in_flight.extend(ready.messages);
            let disk = self.disks.get_mut(&node).unwrap();
            if let Some(snapshot) = &ready.snapshot {
                disk.snapshot = snapshot.clone();
                disk.entries.clear();
                self.applied.get_mut(&node).unwrap().clear();
            }
            if let Some(first) = ready.entries.first() {
                disk.entries.retain(|e| e.index < first.index);
                disk.entries.extend(ready.entries.iter().cloned());
            }
            if let Some(hard_state) = ready.hard_state {
                disk.hard_state = hard_state;
            }
            self.in_flight.extend(ready.persisted_messages);
            for entry in ready.committed_entries {
                match entry.payload {
                    EntryPayload::Normal(data) => self
                        .applied
                        .get_mut(&node)
                        .unwrap()
                        .push((entry.index, data)),
                    EntryPayload::ConfChange(change) => {
                        let _ = raw.apply_conf_change(&change);
                    }
                    EntryPayload::Empty => {}
                }
            }
            self.read_states
                .entry(node)
                .or_default()
                .extend(ready.read_states);
            raw.advance();
        }
        panic!("node {node:?} never ran out of ready work");
    }

    fn deliverable(&self, m: &Message) -> bool {
        !self.down.contains(&m.from)
            && !self.down.contains(&m.to)
            && !self.cut.contains(&(m.from, m.to))
            && self.nodes.contains_key(&m.to)
            && !self.filter.as_ref().is_some_and(|f| f(m))
    }

    /// Processes every node and delivers every message until the cluster is quiet.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for &node in &ids {
                if !self.down.contains(&node) {
                    self.process(node);
                }
            }
            if self.in_flight.is_empty() {
                return;
            }
            while let Some(m) = self.in_flight.pop_front() {
                if self.deliverable(&m) {
                    self.delivered.push(m.clone());
                    let to = m.to;
                    self.nodes.get_mut(&to).unwrap().step(m);
                }
            }
        }
        panic!("cluster did not stabilize");
    }

    pub fn tick(&mut self, node: NodeId, ticks: u32) {
        for _ in 0..ticks {
            self.node_mut(node).tick();
            self.stabilize();
        }
    }

    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self
                .nodes
                .keys()
                .copied()
                .filter(|n| !self.down.contains(n))
                .collect();
            for node in ids {
                self.node_mut(node).tick();
            }
            self.stabilize();
        }
    }

    /// Makes `node` campaign at once (no pre-vote) and settles the cluster.
    pub fn elect(&mut self, node: NodeId) {
        self.node_mut(node).force_campaign();
        self.stabilize();
        assert_eq!(
            self.node(node).role(),
            Role::Leader,
            "{node:?} should have won"
        );
    }

    pub fn propose(&mut self, node: NodeId, data: &str) -> Result<Proposal, ProposeError> {
        let result = self.node_mut(node).propose(Bytes::from(data.to_string()));
        self.stabilize();
        result
    }

    pub fn isolate(&mut self, node: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != node {
                self.cut.insert((node, other));
                self.cut.insert((other, node));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.filter = None;
    }

    /// Kills `node`, losing nothing durable, and restarts it from its disk.
    pub fn crash_restart(&mut self, node: NodeId) {
        let disk = self.disks[&node].clone();
        let state = InitialState {
            hard_state: disk.hard_state,
            applied: disk.snapshot.index,
            conf_state: disk.snapshot.conf_state.clone(),
            snapshot: disk.snapshot,
            entries: disk.entries,
        };
        self.applied.insert(node, Vec::new());
        let raw = RawNode::new(self.config(node), state, node.0 * 104_729).unwrap();
        self.nodes.insert(node, raw);
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.role() == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }

    pub fn applied_data(&self, node: NodeId) -> Vec<String> {
        self.applied[&node]
            .iter()
            .map(|(_, d)| String::from_utf8(d.to_vec()).unwrap())
            .collect()
    }
}
