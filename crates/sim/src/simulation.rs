//! One seed's run: the event loop, the nodes' Ready cycles, the clients and the nemesis.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ostrakon_check::{
    History, Outcome, RegisterInput, RegisterOutput, TimestampCount, TimestampGrant,
};
use ostrakon_raft::{
    ConfState, Config, EntryPayload, GroupId, InitialState, LogIndex, Message, MessageBody, NodeId,
    RawNode, Role,
};

use crate::clients::{ClientState, TimestampClient, TIMESTAMP_CLIENT_BASE};
use crate::events::{Event, EventQueue, Reply};
use crate::invariants::{Invariants, Violation};
use crate::kv::{self, Command};
use crate::node::{Disk, Input, Request, Running, SimNode, Waiting};
use crate::rng::Rng;
use crate::scenario::{Bug, Scenario};

/// Lines of trace kept for a failing seed (the most recent ones).
pub(crate) const TRACE_LINES_MAX: usize = 4_000;
/// The key of the write the simulator itself makes after healing to prove the cluster
/// still makes progress; outside the clients' keys.
const PROBE_KEY: u64 = u64::MAX;
/// That write.
/// The pseudo-client of the simulator's own reads: its answers go to no client.
const PROBE_CLIENT: u64 = u64::MAX;
const PROBE_COMMAND: Command = Command::Put {
    key: PROBE_KEY,
    value: 0,
};
/// How long after healing and settling the probe write may take to apply everywhere.
const PROBE_DEADLINE_US: u64 = 3_000_000;
/// Raft election timeout in ticks for every simulated node.
const ELECTION_TICKS: u32 = 10;
/// Raft heartbeat interval in ticks.
const HEARTBEAT_TICKS: u32 = 2;
/// How long after healing an idle group must have quiesced.
const QUIESCE_DEADLINE_US: u64 = 1_000_000;
/// How long after a quiesced leader's node dies the group must have a new leader.
const QUIESCED_FAILOVER_DEADLINE_US: u64 = 3_000_000;
const _: () = assert!(HEARTBEAT_TICKS < ELECTION_TICKS);

/// The history the clients record: register operations keyed by register.
pub type RegisterHistory = History<(u64, RegisterInput), RegisterOutput>;

/// The history of the timestamp clients: how many asked for, what was granted.
pub type TimestampHistory = History<TimestampCount, TimestampGrant>;

/// The simulated world of one seed.
pub struct Simulation {
    pub(crate) now_us: u64,
    pub(crate) rng: Rng,
    pub(crate) scenario: Scenario,
    pub(crate) events: EventQueue,
    pub(crate) nodes: BTreeMap<NodeId, SimNode>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Blocked links on which node liveness pings still pass (raft messages are lost
    /// while the receiver's liveness hears the sender).
    pings_pass: BTreeSet<(NodeId, NodeId)>,
    partition_id: u64,
    clients: Vec<ClientState>,
    pub(crate) history: RegisterHistory,
    pub(crate) timestamp_clients: Vec<TimestampClient>,
    /// What the timestamp clients asked the oracle and got.
    pub(crate) timestamps: TimestampHistory,
    invariants: Invariants,
    pub(crate) trace: Option<VecDeque<String>>,
    next_value: u64,
    pub(crate) next_request_id: u64,
    next_node_id: u64,
    /// The membership applied at the highest index seen anywhere.
    latest_conf: (LogIndex, ConfState),
    pub(crate) healed_at_us: Option<u64>,
    pub(crate) clients_stopped: bool,
    pub(crate) violation: Option<Violation>,
}

macro_rules! trace {
    ($sim:expr, $($arg:tt)*) => {
        if let Some(trace) = $sim.trace.as_mut() {
            if trace.len() >= $crate::simulation::TRACE_LINES_MAX {
                trace.pop_front();
            }
            trace.push_back(format!("{:>9}us {}", $sim.now_us, format!($($arg)*)));
        }
    };
}
pub(crate) use trace;

impl Simulation {
    /// A world for `seed`. With `keep_trace`, a readable trace of the run is kept.
    pub fn new(seed: u64, bug: Option<Bug>, keep_trace: bool) -> Simulation {
        let mut rng = Rng::new(seed);
        let scenario = Scenario::from_seed(&mut rng, bug);
        let voters: Vec<NodeId> = (1..=scenario.node_count).map(NodeId).collect();
        let mut sim = Simulation {
            now_us: 0,
            rng,
            events: EventQueue::default(),
            nodes: BTreeMap::new(),
            blocked: BTreeSet::new(),
            pings_pass: BTreeSet::new(),
            partition_id: 0,
            clients: Vec::new(),
            history: History::new(),
            timestamp_clients: Vec::new(),
            timestamps: History::new(),
            invariants: Invariants::default(),
            trace: keep_trace.then(VecDeque::new),
            next_value: 1,
            next_request_id: 1,
            next_node_id: scenario.node_count + 1,
            latest_conf: (LogIndex(0), ConfState::with_voters(voters.iter().copied())),
            healed_at_us: None,
            clients_stopped: false,
            violation: None,
            scenario,
        };
        trace!(sim, "seed {seed}: {:?}", sim.scenario);
        for &id in &voters {
            let state = InitialState::bootstrap(voters.iter().copied());
            sim.add_node(id, state);
        }
        for client in 0..sim.scenario.client_count {
            sim.clients.push(ClientState {
                believed_leader: NodeId::NONE,
                outstanding: None,
                last_seen: BTreeMap::new(),
            });
            let start = sim.rng.range(0, 100_000);
            sim.events.push(start, Event::ClientNext(client));
        }
        for client in 0..sim.scenario.timestamp_client_count {
            sim.timestamp_clients.push(TimestampClient {
                believed_leader: NodeId::NONE,
                outstanding: None,
            });
            let start = sim.rng.range(0, 100_000);
            sim.events
                .push(start, Event::ClientNext(TIMESTAMP_CLIENT_BASE + client));
        }
        sim.events
            .push(sim.scenario.faults.nemesis_interval_us, Event::Nemesis);
        sim.events.push(sim.scenario.active_us, Event::HealAll);
        sim.events.push(
            sim.scenario.active_us + sim.scenario.settle_us / 2,
            Event::StopClients,
        );
        sim
    }

    /// The clients' history so far.
    pub fn history(&self) -> &RegisterHistory {
        &self.history
    }

    /// The readable trace, if kept.
    pub fn trace_lines(&self) -> Vec<String> {
        self.trace
            .as_ref()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn raft_config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id, GroupId(1));
        config.election_ticks = ELECTION_TICKS;
        config.heartbeat_ticks = HEARTBEAT_TICKS;
        config.transfer_timeout_ticks = ELECTION_TICKS;
        config.append_entries_max = self.scenario.append_entries_max;
        config.inflight_msgs_max = self.scenario.inflight_msgs_max;
        config.read_mode = self.scenario.read_mode;
        config.planted_bug = self.scenario.bug.and_then(Bug::raft);
        config.quiesce = self.scenario.quiesce;
        config
    }

    fn add_node(&mut self, id: NodeId, state: InitialState) {
        let disk = Disk {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            snapshot_data: kv::KvState::default(),
            entries: state.entries.clone(),
        };
        // Clocks drift: each node ticks faster or slower than nominal.
        let drift = self.scenario.tick_us * self.scenario.faults.clock_drift_percent_max / 100;
        let tick_us = self
            .rng
            .range(self.scenario.tick_us - drift, self.scenario.tick_us + drift);
        let clock_offset_ms = self.rng.range(0, self.scenario.clock_offset_ms_max);
        let node = SimNode {
            disk,
            running: None,
            epoch: 0,
            tick_us,
            fsync_latency_us_max: self.scenario.faults.fsync_latency_us_max,
            decommissioned: false,
            clock_offset_ms,
        };
        self.nodes.insert(id, node);
        self.start_node(id);
    }

    /// Boots a node from its disk.
    fn start_node(&mut self, id: NodeId) {
        let config = self.raft_config(id);
        let seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).expect("node");
        assert!(node.running.is_none() && !node.decommissioned);
        let disk = &node.disk;
        let state = InitialState {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
            applied: disk.snapshot.index,
            conf_state: disk.snapshot.conf_state.clone(),
        };
        let raw = RawNode::new(config, state, seed).expect("valid config");
        let oracle = ostrakon_ranges::Oracle::new(ostrakon_ranges::OracleConfig {
            window_ms: self.scenario.oracle_window_ms,
        })
        .with_bug(self.scenario.bug.and_then(Bug::oracle));
        node.running = Some(Running {
            raw,
            kv: disk.snapshot_data.clone(),
            applied: disk.snapshot.index,
            busy: None,
            inbox: VecDeque::new(),
            incoming_snapshot: None,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_waiting_apply: Vec::new(),
            heard_us: BTreeMap::new(),
            started_us: self.now_us,
            down: BTreeSet::new(),
            conf_before_last_change: disk.snapshot.conf_state.clone(),
            oracle,
            timestamps_confirmed: Vec::new(),
        });
        let (epoch, tick_us) = (node.epoch, node.tick_us);
        let first_tick = self.now_us + self.rng.range(1, tick_us);
        self.events.push(first_tick, Event::Tick(id, epoch));
        trace!(self, "{id:?} starts (epoch {epoch})");
    }

    /// Runs the seed to the end. Returns early on the first violation.
    pub fn run(&mut self) {
        self.run_until(self.scenario.active_us + self.scenario.settle_us);
        if self.violation.is_none() && self.scenario.quiesce {
            self.check_quiesced_failover();
        }
        if self.violation.is_none() {
            self.check_progress();
        }
        if self.violation.is_none() {
            self.check_convergence();
        }
    }

    fn run_until(&mut self, end_us: u64) {
        while let Some((at_us, event)) = self.events.pop() {
            if at_us > end_us {
                self.events.push(at_us, event);
                self.now_us = end_us;
                return;
            }
            if self.violation.is_some() {
                return;
            }
            self.now_us = at_us;
            self.handle(event);
        }
    }

    fn fail(&mut self, violation: Violation) {
        if self.trace.is_some() {
            let statuses: Vec<String> = self
                .nodes
                .iter()
                .map(|(id, n)| match &n.running {
                    Some(r) => format!("{id:?}: {:?} applied {:?}", r.raw.status(), r.applied),
                    None => format!("{id:?}: down (decommissioned: {})", n.decommissioned),
                })
                .collect();
            for status in statuses {
                trace!(self, "status {status}");
            }
        }
        trace!(self, "VIOLATION: {}", violation.0);
        if self.violation.is_none() {
            self.violation = Some(violation);
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(id, epoch) => {
                let node = &self.nodes[&id];
                if node.epoch == epoch && node.running.is_some() {
                    let next = self.now_us + node.tick_us;
                    self.events.push(next, Event::Tick(id, epoch));
                    self.input(id, Input::Tick);
                    if self.is_up(id) {
                        self.tick_liveness(id);
                    }
                }
            }
            Event::Ping { from, to } => {
                let link = (from, to);
                let passes = !self.blocked.contains(&link) || self.pings_pass.contains(&link);
                if passes && self.is_up(to) {
                    self.heard(to, from);
                }
            }
            Event::Deliver(message, data) => {
                let delivered =
                    !self.blocked.contains(&(message.from, message.to)) && self.is_up(message.to);
                if delivered {
                    self.heard(message.to, message.from);
                }
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                    self.report_snapshot_stream(message.from, message.to, delivered);
                }
                if delivered {
                    self.input(message.to, Input::Message(message, data));
                }
            }
            Event::SnapshotReport {
                from,
                to,
                delivered,
            } => {
                if self.is_up(from) {
                    self.input(from, Input::SnapshotReport(to, delivered));
                }
            }
            Event::PersistDone(id, epoch) => {
                if self.nodes[&id].epoch == epoch && self.is_up(id) {
                    self.finish_persist(id);
                }
            }
            Event::Request {
                node,
                client,
                op,
                request,
            } => {
                if self.is_up(node) {
                    self.input(
                        node,
                        Input::Request {
                            client,
                            op,
                            request,
                        },
                    );
                }
            }
            Event::Reply { client, op, reply } if client >= TIMESTAMP_CLIENT_BASE => {
                self.handle_timestamp_reply(client, op, reply)
            }
            Event::Reply { client, op, reply } => self.handle_reply(client, op, reply),
            Event::ClientTimeout { client, op } if client >= TIMESTAMP_CLIENT_BASE => {
                self.timestamp_request_timed_out(client, op)
            }
            Event::ClientTimeout { client, op } => {
                if self.clients[client as usize].outstanding == Some(op) {
                    trace!(self, "client {client} op {} times out", op.index());
                    self.complete(client, Outcome::Unknown);
                    self.clients[client as usize].believed_leader = NodeId::NONE;
                }
            }
            Event::ClientNext(client) if client >= TIMESTAMP_CLIENT_BASE => {
                self.start_timestamp_request(client)
            }
            Event::ClientNext(client) => self.start_operation(client),
            Event::Crash(id, epoch) => {
                if self.nodes[&id].epoch == epoch && self.is_up(id) && self.healed_at_us.is_none() {
                    self.crash(id);
                }
            }
            Event::Restart(id) => {
                let node = &self.nodes[&id];
                if node.running.is_none() && !node.decommissioned {
                    self.start_node(id);
                }
            }
            Event::Nemesis => {
                if self.healed_at_us.is_none() {
                    self.nemesis();
                    let next = self.now_us + self.scenario.faults.nemesis_interval_us;
                    self.events.push(next, Event::Nemesis);
                }
            }
            Event::HealPartition(id) => {
                if id == self.partition_id && !self.blocked.is_empty() {
                    trace!(self, "partition {id} heals");
                    self.blocked.clear();
                }
            }
            Event::DiskRecovers(id, epoch) => {
                if self.nodes[&id].epoch == epoch {
                    self.nodes.get_mut(&id).unwrap().fsync_latency_us_max =
                        self.scenario.faults.fsync_latency_us_max;
                }
            }
            Event::Decommission(id) => {
                trace!(self, "{id:?} is decommissioned");
                let node = self.nodes.get_mut(&id).expect("node");
                node.decommissioned = true;
                node.running = None;
                node.epoch += 1;
                self.invariants.forget_volatile(id);
            }
            Event::HealAll => self.heal_all(),
            Event::StopClients => self.clients_stopped = true,
        }
    }

    pub(crate) fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.running.is_some())
    }

    pub(crate) fn running(&mut self, id: NodeId) -> &mut Running {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.running.as_mut())
            .expect("node is up")
    }

    // --- Node inputs and the Ready cycle ------------------------------------------------

    fn input(&mut self, id: NodeId, input: Input) {
        let running = self.running(id);
        if running.busy.is_some() {
            running.inbox.push_back(input);
            return;
        }
        self.handle_input(id, input);
        self.drive(id);
    }

    fn handle_input(&mut self, id: NodeId, input: Input) {
        match input {
            Input::Message(message, data) => {
                let running = self.running(id);
                if let MessageBody::InstallSnapshot { meta } = &message.body {
                    running.incoming_snapshot = Some((
                        meta.index,
                        data.expect("snapshot data travels with the message"),
                    ));
                }
                running.raw.step(message);
            }
            Input::Tick => self.running(id).raw.tick(),
            Input::Request {
                client,
                op,
                request,
            } => self.handle_request(id, client, op, request),
            Input::ConfChange(change) => {
                let result = self.running(id).raw.propose_conf_change(change.clone());
                trace!(self, "{id:?} proposes {change:?}: {result:?}");
            }
            Input::Probe => {
                let result = self.running(id).raw.propose(PROBE_COMMAND.encode());
                trace!(self, "{id:?} proposes the progress probe: {result:?}");
            }
            Input::SnapshotReport(to, delivered) => {
                self.running(id).raw.report_snapshot(to, delivered)
            }
            Input::NodeDown(node) => {
                trace!(self, "{id:?} sees {node:?} down");
                self.running(id).raw.report_node_down(node);
            }
            Input::NodeUp(node) => {
                trace!(self, "{id:?} sees {node:?} up again");
                self.running(id).raw.report_node_up(node);
            }
            Input::Transfer(target) => {
                let result = self.running(id).raw.transfer_leader(target);
                trace!(
                    self,
                    "{id:?} transfers leadership to {target:?}: {result:?}"
                );
            }
        }
        self.check_node(id);
    }

    fn check_node(&mut self, id: NodeId) {
        let raw = &self.nodes[&id].running.as_ref().expect("up").raw;
        if let Err(violation) = self.invariants.check_node(id, raw) {
            self.fail(violation);
        }
    }

    /// Starts persisting the next Ready, if any.
    fn drive(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("node");
        let epoch = node.epoch;
        let fsync_max = node.fsync_latency_us_max;
        let running = node.running.as_mut().expect("up");
        if running.busy.is_some() || !running.raw.has_ready() {
            return;
        }
        let mut ready = running.raw.ready();
        if let Err(violation) = self
            .invariants
            .check_new_entries(id, &running.raw, &ready.entries)
        {
            self.fail(violation);
        }
        let running = self.running(id);
        let data = ready.snapshot.as_ref().map(|meta| {
            let (index, data) = running.incoming_snapshot.take().expect("snapshot data");
            assert_eq!(index, meta.index, "snapshot data for another index");
            data
        });
        let messages = std::mem::take(&mut ready.messages);
        if let Some(soft) = ready.soft_state {
            trace!(
                self,
                "{id:?} is {:?} in {:?} (leader {:?})",
                soft.role,
                soft.term,
                soft.leader
            );
            let faults = &self.scenario.faults;
            if soft.role == Role::Leader
                && self.healed_at_us.is_none()
                && self
                    .rng
                    .chance(faults.leader_crash_after_election_probability)
            {
                let at = self.now_us + self.rng.range(0, faults.leader_crash_delay_us_max);
                self.events.push(at, Event::Crash(id, epoch));
            }
        }
        self.running(id).busy = Some((ready, data));
        for message in messages {
            self.send(message);
        }
        let latency = self.rng.range(0, fsync_max);
        self.events
            .push(self.now_us + latency, Event::PersistDone(id, epoch));
    }

    fn finish_persist(&mut self, id: NodeId) {
        let (mut ready, data) = self.running(id).busy.take().expect("a Ready in flight");
        let node = self.nodes.get_mut(&id).unwrap();
        node.disk.persist(&ready, data.clone());
        for message in std::mem::take(&mut ready.persisted_messages) {
            self.send(message);
        }
        if let (Some(meta), Some(data)) = (&ready.snapshot, data) {
            let running = self.running(id);
            running.kv = data;
            running.applied = meta.index;
            running.proposals.retain(|&index, _| index > meta.index);
            trace!(self, "{id:?} installed snapshot at {:?}", meta.index);
        }
        for entry in std::mem::take(&mut ready.committed_entries) {
            self.apply_entry(id, entry);
        }
        for read in std::mem::take(&mut ready.read_states) {
            self.handle_read_state(id, read);
        }
        self.release_reads(id);
        self.maybe_compact(id);
        let running = self.running(id);
        running.raw.advance();
        let applied = running.applied;
        self.allocate_confirmed_timestamps(id);
        if let Err(violation) = self.invariants.check_applied(id, applied) {
            self.fail(violation);
        }
        self.check_node(id);
        while let Some(input) = self.running(id).inbox.pop_front() {
            self.handle_input(id, input);
        }
        self.drive(id);
    }

    fn apply_entry(&mut self, id: NodeId, entry: ostrakon_raft::Entry) {
        let running = self.running(id);
        assert_eq!(
            entry.index,
            running.applied.next(),
            "entries apply in order without gaps"
        );
        running.applied = entry.index;
        let output = match &entry.payload {
            EntryPayload::Normal(data) => {
                let command = Command::decode(data);
                let took_effect = kv::apply(&mut running.kv, command);
                match command {
                    Command::Put { .. } => Some(RegisterOutput::Write),
                    Command::Cas { .. } => Some(RegisterOutput::Cas(took_effect)),
                    Command::OracleBound { .. } => None,
                }
            }
            EntryPayload::ConfChange(change) => {
                running.conf_before_last_change = running.raw.conf_state().clone();
                let result = running.raw.apply_conf_change(change);
                trace!(
                    self,
                    "{id:?} applies {change:?} at {:?}: {result:?}",
                    entry.index
                );
                if let Ok(conf) = result {
                    self.observe_conf(entry.index, conf);
                }
                None
            }
            EntryPayload::Empty => None,
        };
        let running = self.running(id);
        let Some((term, waiting)) = running.proposals.remove(&entry.index) else {
            return;
        };
        match output {
            Some(output) if term == entry.term => {
                let confs = [
                    running.raw.conf_state().clone(),
                    running.conf_before_last_change.clone(),
                ];
                let disks: BTreeMap<NodeId, &Disk> = self
                    .nodes
                    .iter()
                    .map(|(&n, node)| (n, &node.disk))
                    .collect();
                if let Err(violation) =
                    self.invariants
                        .check_acknowledged(entry.index, term, &confs, &disks)
                {
                    self.fail(violation);
                }
                self.reply(waiting, Reply::Ok(output));
            }
            _ => {
                // Another entry took the index: ours was overwritten and can never commit.
                let leader_hint = running.raw.leader();
                self.reply(waiting, Reply::Failed { leader_hint });
            }
        }
    }

    fn observe_conf(&mut self, index: LogIndex, conf: ConfState) {
        if index <= self.latest_conf.0 {
            return;
        }
        let removed: Vec<NodeId> = self
            .latest_conf
            .1
            .members()
            .difference(&conf.members())
            .copied()
            .collect();
        self.latest_conf = (index, conf);
        for id in removed {
            // Out of the group for good: shut it down, as an operator would, once the
            // current event (which may be that very node applying its removal) is done.
            self.events.push(self.now_us, Event::Decommission(id));
        }
    }

    pub(crate) fn handle_read_state(&mut self, id: NodeId, read: ostrakon_raft::ReadState) {
        let running = self.running(id);
        let Some(waiting) = running.reads.remove(&read.request_id) else {
            return;
        };
        match read.index {
            Some(index) if index < waiting.read_floor => {
                let message = format!(
                    "stale read: {id:?} answered client {}'s read with index {index:?}, below \
                     {:?}, committed before the read began",
                    waiting.client, waiting.read_floor
                );
                self.fail(Violation(message));
            }
            Some(index) => running.reads_waiting_apply.push((index, waiting)),
            None => {
                let leader_hint = running.raw.leader();
                self.reply(waiting, Reply::Failed { leader_hint });
            }
        }
    }

    fn release_reads(&mut self, id: NodeId) {
        let running = self.running(id);
        let applied = running.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = running
            .reads_waiting_apply
            .drain(..)
            .partition(|(i, _)| *i <= applied);
        running.reads_waiting_apply = waiting;
        let (timestamps, reads): (Vec<_>, Vec<_>) =
            ready.into_iter().partition(|(_, w)| w.timestamps.is_some());
        running
            .timestamps_confirmed
            .extend(timestamps.into_iter().map(|(_, w)| w));
        let answers: Vec<(Waiting, Option<u64>)> = reads
            .into_iter()
            .map(|(_, w)| (w, running.kv.registers.get(&w.key).copied()))
            .collect();
        for (waiting, value) in answers {
            self.reply(waiting, Reply::Ok(RegisterOutput::Read(value)));
        }
    }

    fn maybe_compact(&mut self, id: NodeId) {
        let every = self.scenario.snapshot_every_entries;
        let node = self.nodes.get_mut(&id).unwrap();
        let running = node.running.as_mut().expect("up");
        if running.applied.0 < node.disk.snapshot.index.0 + every {
            return;
        }
        let conf = running.raw.conf_state().clone();
        running.raw.compact(running.applied, conf);
        node.disk
            .compact(running.raw.snapshot_meta().clone(), running.kv.clone());
    }

    fn send(&mut self, message: Message) {
        let data = match &message.body {
            MessageBody::InstallSnapshot { meta } => {
                let disk = &self.nodes[&message.from].disk;
                assert_eq!(
                    disk.snapshot.index, meta.index,
                    "a leader sends the snapshot it has on disk"
                );
                Some(disk.snapshot_data.clone())
            }
            _ => None,
        };
        let faults = &self.scenario.faults;
        if self.rng.chance(faults.drop_probability) {
            if data.is_some() {
                self.report_snapshot_stream(message.from, message.to, false);
            }
            return;
        }
        let copies = if self.rng.chance(faults.duplicate_probability) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
            self.events.push(
                self.now_us + latency,
                Event::Deliver(message.clone(), data.clone()),
            );
        }
    }

    /// A real transport knows how each snapshot stream ended (a failed one after a
    /// timeout) and tells raft; without that report a follower could wait forever.
    fn report_snapshot_stream(&mut self, from: NodeId, to: NodeId, delivered: bool) {
        let delay_us = if delivered {
            self.scenario.faults.delay_us_max
        } else {
            self.scenario.faults.delay_us_max * 10
        };
        self.events.push(
            self.now_us + delay_us,
            Event::SnapshotReport {
                from,
                to,
                delivered,
            },
        );
    }

    // --- Clients ------------------------------------------------------------------------

    fn handle_request(
        &mut self,
        id: NodeId,
        client: u64,
        op: ostrakon_check::OpId,
        request: Request,
    ) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let read_floor = self
            .nodes
            .values()
            .filter_map(|n| n.running.as_ref())
            .map(|r| r.raw.commit())
            .max()
            .unwrap_or(LogIndex(0));
        let running = self.running(id);
        match request {
            Request::Write(command) => {
                let key = match command {
                    Command::Put { key, .. } | Command::Cas { key, .. } => key,
                    Command::OracleBound { .. } => unreachable!("clients write registers"),
                };
                let waiting = Waiting {
                    client,
                    op,
                    key,
                    read_floor: LogIndex(0),
                    timestamps: None,
                };
                let result = running.raw.propose(command.encode());
                match result {
                    Ok(proposal) => {
                        running
                            .proposals
                            .insert(proposal.index, (proposal.term, waiting));
                    }
                    Err(_) => {
                        let leader_hint = running.raw.leader();
                        self.reply(waiting, Reply::Failed { leader_hint });
                    }
                }
                trace!(
                    self,
                    "{id:?} proposes op {} of client {client}: {result:?}",
                    op.index()
                );
            }
            Request::Timestamps { count } => {
                let waiting = Waiting {
                    client,
                    op,
                    key: 0,
                    read_floor,
                    timestamps: Some(count),
                };
                self.confirm_for_timestamps(id, request_id, waiting);
            }
            Request::Read { key } => {
                let waiting = Waiting {
                    client,
                    op,
                    key,
                    read_floor,
                    timestamps: None,
                };
                match running.raw.read_index(request_id) {
                    Ok(()) => {
                        running.reads.insert(request_id, waiting);
                    }
                    Err(_) => {
                        let leader_hint = running.raw.leader();
                        self.reply(waiting, Reply::Failed { leader_hint });
                    }
                }
            }
        }
    }

    pub(crate) fn reply(&mut self, waiting: Waiting, reply: Reply) {
        if waiting.client == PROBE_CLIENT {
            return;
        }
        if self.rng.chance(self.scenario.faults.drop_probability) {
            return; // The client will time out: outcome unknown.
        }
        let faults = &self.scenario.faults;
        let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
        self.events.push(
            self.now_us + latency,
            Event::Reply {
                client: waiting.client,
                op: waiting.op,
                reply,
            },
        );
    }

    fn start_operation(&mut self, client: u64) {
        if self.clients_stopped || self.clients[client as usize].outstanding.is_some() {
            return;
        }
        let key = self.rng.below(self.scenario.key_count);
        let roll = self.rng.below(10);
        let value = self.next_value;
        let (input, request) = if roll < 5 {
            (RegisterInput::Read, Request::Read { key })
        } else {
            self.next_value += 1;
            // Compare-and-set against the value this client last saw; a client that has
            // seen nothing on the key writes blindly.
            match self.clients[client as usize].last_seen.get(&key).copied() {
                Some(expected) if roll >= 8 => {
                    let input = RegisterInput::Cas {
                        expected,
                        new: value,
                    };
                    (
                        input,
                        Request::Write(Command::Cas {
                            key,
                            expected,
                            new: value,
                        }),
                    )
                }
                _ => (
                    RegisterInput::Write(value),
                    Request::Write(Command::Put { key, value }),
                ),
            }
        };
        let is_write = !matches!(input, RegisterInput::Read);
        let op = self.history.invoke(client, (key, input), self.now_us);
        let target = self.pick_target(client, is_write);
        trace!(
            self,
            "client {client} op {} {:?} on key {key} -> {target:?}",
            op.index(),
            request
        );
        let state = &mut self.clients[client as usize];
        state.outstanding = Some(op);
        self.send_request(target, client, op, request);
    }

    /// Sends a client's request over the network, and starts its timeout.
    pub(crate) fn send_request(
        &mut self,
        target: NodeId,
        client: u64,
        op: ostrakon_check::OpId,
        request: Request,
    ) {
        let faults = &self.scenario.faults;
        let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
        self.events.push(
            self.now_us + latency,
            Event::Request {
                node: target,
                client,
                op,
                request,
            },
        );
        self.events.push(
            self.now_us + self.scenario.client_timeout_us,
            Event::ClientTimeout { client, op },
        );
    }

    fn pick_target(&mut self, client: u64, is_write: bool) -> NodeId {
        let believed = self.clients[client as usize].believed_leader;
        self.pick_node(believed, is_write)
    }

    /// `believed` if it is still a member (for reads, not always), else any member.
    pub(crate) fn pick_node(&mut self, believed: NodeId, is_write: bool) -> NodeId {
        // Reads sometimes go to any member, exercising forwarded ReadIndex.
        let any_member = !is_write && self.rng.chance(0.2);
        if believed.is_some() && !any_member && !self.nodes[&believed].decommissioned {
            return believed;
        }
        let members: Vec<NodeId> = self.latest_conf.1.members().into_iter().collect();
        self.rng.pick(&members)
    }

    fn handle_reply(&mut self, client: u64, op: ostrakon_check::OpId, reply: Reply) {
        if self.clients[client as usize].outstanding != Some(op) {
            return; // Timed out already.
        }
        match reply {
            Reply::Ok(output) => {
                let (key, input) = self.history.ops()[op.index()].input.clone();
                let seen = match (&input, &output) {
                    (_, RegisterOutput::Read(value)) => Some(*value),
                    (RegisterInput::Write(v), _) => Some(Some(*v)),
                    (RegisterInput::Cas { new, .. }, RegisterOutput::Cas(true)) => Some(Some(*new)),
                    _ => None,
                };
                if let Some(value) = seen {
                    self.clients[client as usize].last_seen.insert(key, value);
                }
                trace!(self, "client {client} op {} ok {output:?}", op.index());
                self.complete(client, Outcome::Ok(output));
            }
            Reply::Timestamps(grant) => panic!("timestamps {grant:?} answer a register operation"),
            Reply::Failed { leader_hint } => {
                trace!(
                    self,
                    "client {client} op {} failed (leader hint {leader_hint:?})",
                    op.index()
                );
                self.complete(client, Outcome::Failed);
                self.clients[client as usize].believed_leader = leader_hint;
            }
        }
    }

    fn complete(&mut self, client: u64, outcome: Outcome<RegisterOutput>) {
        let op = self.clients[client as usize]
            .outstanding
            .take()
            .expect("outstanding op");
        self.history.complete(op, outcome, self.now_us);
        let think_us = self.rng.range(0, self.scenario.client_think_us_max);
        self.events
            .push(self.now_us + think_us, Event::ClientNext(client));
    }

    // --- Node liveness ------------------------------------------------------------------

    /// `node` heard from `from`: it is up, as far as `node` can tell.
    fn heard(&mut self, node: NodeId, from: NodeId) {
        let now_us = self.now_us;
        let running = self.running(node);
        running.heard_us.insert(from, now_us);
        if running.down.remove(&from) {
            self.input(node, Input::NodeUp(from));
        }
    }

    /// At each tick: pings every other node, and reports to raft every
    /// node not heard from for an election timeout of this node's clock (once per
    /// silence, as a runtime reports a node going down).
    fn tick_liveness(&mut self, id: NodeId) {
        let tick_us = self.nodes[&id].tick_us;
        let others: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(&other, n)| other != id && !n.decommissioned)
            .map(|(&other, _)| other)
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
            self.input(id, Input::NodeDown(other));
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

    // --- Nemesis ------------------------------------------------------------------------

    pub(crate) fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| n.running.as_ref().map(|r| (id, r)))
            .filter(|(_, r)| r.raw.role() == Role::Leader)
            .max_by_key(|(_, r)| r.raw.term())
            .map(|(id, _)| id)
    }

    fn live_members(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| !n.decommissioned)
            .map(|(&id, _)| id)
            .collect()
    }

    fn nemesis(&mut self) {
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
            if let Some(leader) = self.current_leader() {
                let voters: Vec<NodeId> = self
                    .latest_conf
                    .1
                    .voters
                    .iter()
                    .copied()
                    .filter(|&v| v != leader)
                    .collect();
                if !voters.is_empty() {
                    let target = self.rng.pick(&voters);
                    self.input(leader, Input::Transfer(target));
                }
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
                let leader = self
                    .current_leader()
                    .unwrap_or_else(|| self.rng.pick(&nodes));
                for &other in &nodes {
                    if other != leader {
                        self.blocked.insert((leader, other));
                        self.blocked.insert((other, leader));
                    }
                }
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

    fn crash_one(&mut self) {
        let up: Vec<NodeId> = self
            .live_members()
            .into_iter()
            .filter(|&id| self.is_up(id))
            .collect();
        if up.is_empty() {
            return;
        }
        let victim = match self.current_leader() {
            Some(leader) if self.rng.chance(0.5) => leader,
            _ => self.rng.pick(&up),
        };
        self.crash(victim);
    }

    /// Kills a node: everything it had not persisted is lost; it restarts later.
    fn crash(&mut self, victim: NodeId) {
        let node = self.nodes.get_mut(&victim).unwrap();
        node.running = None;
        node.epoch += 1;
        self.invariants.forget_volatile(victim);
        trace!(self, "{victim:?} crashes, losing what it had not persisted");
        let restart_at = self.now_us + self.rng.range(100_000, 2_000_000);
        self.events.push(restart_at, Event::Restart(victim));
    }

    fn change_membership(&mut self) {
        use ostrakon_raft::{ConfChange, ConfChangeStep};
        let Some(leader) = self.current_leader() else {
            return;
        };
        let conf = self.running(leader).raw.conf_state().clone();
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
            let id = NodeId(self.next_node_id);
            self.next_node_id += 1;
            self.add_node(id, InitialState::joining());
            ConfChangeStep::AddLearner(id)
        };
        self.input(leader, Input::ConfChange(ConfChange::Change(vec![step])));
    }

    fn heal_all(&mut self) {
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
            if node.running.is_none() && !node.decommissioned {
                self.start_node(id);
            }
        }
    }

    // --- End of run ---------------------------------------------------------------------

    /// Progress: a write proposed at the leader after the faults healed is applied by
    /// every member within the deadline.
    fn check_progress(&mut self) {
        let deadline_us = self.now_us + PROBE_DEADLINE_US;
        while self.now_us < deadline_us && self.violation.is_none() {
            let members = self.latest_conf.1.members();
            let applied_everywhere = members.iter().all(|id| {
                self.nodes[id]
                    .running
                    .as_ref()
                    .is_some_and(|r| r.kv.registers.contains_key(&PROBE_KEY))
            });
            if applied_everywhere {
                return;
            }
            let anyone_applied = self.nodes.values().any(|n| {
                n.running
                    .as_ref()
                    .is_some_and(|r| r.kv.registers.contains_key(&PROBE_KEY))
            });
            if !anyone_applied {
                if let Some(leader) = self.current_leader() {
                    self.input(leader, Input::Probe);
                }
            }
            self.run_until(self.now_us + 100_000);
        }
        if self.violation.is_none() {
            self.fail(Violation(format!(
                "no progress: a write proposed after healing was not applied by every member within {} ms",
                PROBE_DEADLINE_US / 1000
            )));
        }
    }

    /// Quiescence, checked after healing and settling: the idle group quiesces; then its
    /// leader's node dies, and node liveness must get the quiesced followers to elect
    /// another leader (a quiesced follower never times out by itself). The old leader
    /// then restarts for the progress and convergence checks.
    fn check_quiesced_failover(&mut self) {
        let quiesce_deadline_us = self.now_us + QUIESCE_DEADLINE_US;
        let leader = loop {
            let members = self.latest_conf.1.members();
            let running: Vec<&Running> = self
                .nodes
                .iter()
                .filter(|(id, _)| members.contains(id))
                .filter_map(|(_, n)| n.running.as_ref())
                .collect();
            let all_quiesced = running
                .iter()
                .all(|r| r.raw.is_quiesced() && r.busy.is_none());
            if let (Some(leader), true) = (self.current_leader(), all_quiesced) {
                break leader;
            }
            if self.now_us >= quiesce_deadline_us {
                self.fail(Violation(format!(
                    "an idle, healed group did not quiesce within {} ms",
                    QUIESCE_DEADLINE_US / 1000
                )));
                return;
            }
            self.run_until(self.now_us + 10_000);
            if self.violation.is_some() {
                return;
            }
        };
        let voters = self.latest_conf.1.voters.len();
        if voters < 3 {
            return; // Losing the leader would leave no quorum.
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
                "the quiesced leader {leader:?} is cut off, though it still hears pings"
            );
            for other in self.nodes.keys().copied().collect::<Vec<_>>() {
                if other != leader {
                    self.blocked.insert((leader, other));
                    self.blocked.insert((other, leader));
                    self.pings_pass.insert((other, leader));
                }
            }
        } else {
            trace!(self, "the quiesced leader {leader:?} dies");
            let node = self.nodes.get_mut(&leader).expect("leader");
            node.running = None;
            node.epoch += 1;
            self.invariants.forget_volatile(leader);
        }
        let failover_deadline_us = self.now_us + QUIESCED_FAILOVER_DEADLINE_US;
        let new_leader_committed = |sim: &Simulation| {
            sim.nodes.iter().any(|(&id, n)| {
                id != leader
                    && n.running.as_ref().is_some_and(|r| {
                        r.raw.role() == Role::Leader
                            && r.raw.log_term(r.raw.commit()) == Some(r.raw.term())
                    })
            })
        };
        while !new_leader_committed(self) {
            if self.now_us >= failover_deadline_us {
                self.fail(Violation(format!(
                    "no new leader within {} ms after the quiesced leader's node died",
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
            self.read_at_deposed_leader(leader);
            self.blocked.clear();
            self.pings_pass.clear();
        } else {
            trace!(self, "{leader:?} restarts");
            self.start_node(leader);
        }
    }

    /// A read at a leader cut off while quiesced, after the others elected a new leader
    /// that committed an entry: it must not be answered below that entry (checked in
    /// `handle_read_state`), whatever its lease said before it slept.
    fn read_at_deposed_leader(&mut self, leader: NodeId) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let read_floor = self
            .nodes
            .values()
            .filter_map(|n| n.running.as_ref())
            .map(|r| r.raw.commit())
            .max()
            .unwrap_or(LogIndex(0));
        let waiting = Waiting {
            client: PROBE_CLIENT,
            op: ostrakon_check::OpId::NONE,
            key: PROBE_KEY,
            read_floor,
            timestamps: None,
        };
        let running = self.running(leader);
        if running.busy.is_some() || running.raw.read_index(request_id).is_err() {
            return;
        }
        running.reads.insert(request_id, waiting);
        trace!(
            self,
            "a read at the deposed leader {leader:?} (floor {read_floor:?})"
        );
        self.drive(leader);
        self.run_until(self.now_us + 200_000);
    }

    fn check_convergence(&mut self) {
        let members = self.latest_conf.1.members();
        let Some(leader) = self.current_leader() else {
            self.fail(Violation("no leader after healing and settling".into()));
            return;
        };
        let (leader_commit, leader_kv) = {
            let running = self.nodes[&leader].running.as_ref().unwrap();
            (running.raw.commit(), running.kv.clone())
        };
        for id in members {
            let Some(running) = self.nodes[&id].running.as_ref() else {
                self.fail(Violation(format!(
                    "member {id:?} is not running after healing"
                )));
                return;
            };
            if running.applied != leader_commit || running.kv != leader_kv {
                let message = format!(
                    "member {id:?} did not converge: applied {:?} (leader {leader:?} committed {leader_commit:?}), state {:?} vs {:?}",
                    running.applied, running.kv, leader_kv
                );
                self.fail(Violation(message));
                return;
            }
        }
    }
}
