//! The register clients: each routes its key to a range through the range layer's
//! `Directory`, sends the request to the node it believes leads that range, and records
//! what it saw for the linearizability check. The node side serves the request on its
//! replica of the range, which first checks that the key is in its span.

use ostrakon_check::{OpId, Outcome, RegisterInput, RegisterOutput};
use ostrakon_raft::{GroupId, NodeId, Role};
use ostrakon_ranges::read_floor::FloorRefused;

use crate::events::{Event, Reply};
use crate::kv::{routing_key, Command};
use crate::node::{FetchedWrite, FreshRead, HeldRead, Request, Waiting};
use crate::scenario::TxnProtocol;
use crate::simulation::{trace, Simulation, META};
use crate::txn_kv::{TxnApplied, TxnCommand};
use ostrakon_ranges::frozen_txn::{holds_off, holds_off_unless_unlocking, RangeWrite};

/// How often a client pauses between getting its write's revision and sending it.
const SLOW_WRITER_PROBABILITY: f64 = 0.2;
/// How long it pauses at most.
const SLOW_WRITER_PAUSE_US_MAX: u64 = 500_000;
/// How often a request of the range layer's own clients (reads at a revision,
/// transactions, pushes, floors) arrives late.
const LATE_REQUEST_PROBABILITY: f64 = 0.03;
/// How late at most.
const LATE_REQUEST_DELAY_US_MAX: u64 = 1_000_000;
/// How many revisions a write takes at most before it gives up (each refused as below
/// a read served or a write applied).
const WRITE_ATTEMPTS_MAX: u32 = 4;
/// How often, while faults run, the nemesis moves a range's leadership away right after
/// it served a read at a revision: the moment a new leader that skipped learning its
/// floor would take a slow writer's revision below that read. Crashes and partitions
/// reach that moment too, but how often depends on how long failover takes.
const TRANSFER_AFTER_READ_PROBABILITY: f64 = 0.3;
/// How long after the read at most.
const TRANSFER_AFTER_READ_DELAY_US_MAX: u64 = 30_000;
/// How long after a read above a parked slow writer's revision its range's leadership
/// moves.
const PARKED_TRANSFER_DELAY_US: u64 = 1_000;
/// How long after such a move a slow writer parked for it sends its write.
const PARKED_WRITE_AFTER_TRANSFER_US: u64 = 5_000;

impl Simulation {
    /// A client's request reached the replica of `group` on `id`.
    pub(crate) fn handle_request(
        &mut self,
        id: NodeId,
        group: GroupId,
        client: u64,
        op: OpId,
        request: Request,
    ) {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let read_floor = match &request {
            // A worded ask began when its word was given, before it arrived.
            Request::Timestamps {
                word: Some(word), ..
            }
            | Request::ScanAt {
                word: Some(word), ..
            } => word.commit_floor,
            _ => self.highest_commit(group),
        };
        // A read barrier a follower sent: every answer goes back to the follower.
        let answer_to = match &request {
            Request::ScanAt {
                barrier: Some((follower, barrier)),
                ..
            } => Some(crate::node::BarrierFrom {
                follower: *follower,
                leader: id,
                barrier: *barrier,
            }),
            _ => None,
        };
        let waiting = Waiting {
            answer_to,
            ..Waiting::register(client, op, request.key().unwrap_or(0), read_floor)
        };
        let span_check = self.span_check;
        let replica = self.replica(id, group);
        let leader_hint = replica.raw.leader();
        if let Some(key) = request.key() {
            let in_span = span_check.on_arrival(replica.kv.descriptor.as_ref(), &routing_key(key));
            if !in_span {
                // Not (or not yet) this replica's key: the client routes again.
                trace!(self, "{id:?} {group:?} refuses key {key}: not in its span");
                let ranges = self.local_descriptors(id);
                self.reply(waiting, Reply::Mismatch { ranges });
                return;
            }
        }
        if self.replica(id, group).kv.frozen.is_some() {
            // Frozen for a merge: routed again (to the merged range, or here once
            // thawed); a transaction's command is tried again.
            trace!(self, "{id:?} {group:?} refuses {request:?}: frozen");
            let reply = match request {
                Request::Txn(_) => Reply::Failed { leader_hint },
                _ => Reply::Mismatch {
                    ranges: self.local_descriptors(id),
                },
            };
            self.reply(waiting, reply);
            return;
        }
        if client < crate::clients::TIMESTAMP_CLIENT_BASE {
            if let Some(key) = request.key() {
                self.maybe_split_under_request(id, group, key);
            }
        }
        let whole_range = self.scenario.txn_protocol == TxnProtocol::WholeRange;
        // In the node's variant a follower sends half the reads at a revision it gets on
        // to the leader it knows, with its word, as the node's read barrier does.
        let send_on = whole_range
            && matches!(
                request,
                Request::ScanAt {
                    word: None,
                    barrier: None,
                    ..
                }
            )
            && self.replica(id, group).raw.role() != Role::Leader
            && leader_hint.is_some()
            && leader_hint != id
            && self.rng.chance(0.5);
        let scan_word = match &request {
            Request::ScanAt { word, .. } => *word,
            _ => None,
        };

        let replica = self.replica(id, group);
        let watch_from = match &request {
            Request::WatchAt {
                from, events_max, ..
            } => Some((*from, *events_max)),
            _ => None,
        };
        match request {
            Request::Write(command) => {
                let waiting = Waiting {
                    read_floor: ostrakon_raft::LogIndex(0),
                    ..waiting
                };
                if whole_range {
                    let request = Request::Write(command);
                    return self.hold_for_revision(id, group, request, waiting);
                }
                // A write with a revision fetched elsewhere lands only above every read
                // the leader served (`read_floor`).
                if let (Some(revision), Role::Leader) = (command.revision(), replica.raw.role()) {
                    replica.floor.lead(replica.raw.term());
                    if let Err(refused) = replica.floor.admit(revision) {
                        trace!(
                            self,
                            "{id:?} {group:?} refuses op {} of client {client}: {refused}",
                            op.index()
                        );
                        let reply = match refused {
                            FloorRefused::Unknown => Reply::Failed { leader_hint },
                            FloorRefused::BelowFloor { .. } => Reply::Stale,
                        };
                        self.reply(waiting, reply);
                        return;
                    }
                }
                let result = replica.raw.propose(command.encode());
                match result {
                    Ok(proposal) => {
                        replica
                            .proposals
                            .insert(proposal.index, (proposal.term, waiting));
                    }
                    Err(_) => self.reply(waiting, Reply::Failed { leader_hint }),
                }
                trace!(
                    self,
                    "{id:?} {group:?} proposes op {} of client {client}: {result:?}",
                    op.index()
                );
                if result.is_ok() {
                    self.maybe_freeze_behind_write(id, group);
                }
            }
            // At its leader, in the node's variant, a read takes its revision from the
            // node's next fetch (a follower's read goes through ReadIndex, as before).
            Request::Read { .. } if whole_range && replica.raw.role() == Role::Leader => {
                let read = FreshRead {
                    group,
                    request_id,
                    waiting,
                    term: replica.raw.term(),
                };
                self.read_fresh_for(id, read);
            }
            Request::Read { .. } => match replica.raw.read_index(request_id) {
                Ok(()) => {
                    replica.reads.insert(request_id, waiting);
                }
                Err(_) => self.reply(waiting, Reply::Failed { leader_hint }),
            },
            Request::Timestamps { count, word } => {
                assert_eq!(group, META, "timestamps are asked of the meta range");
                let waiting = Waiting {
                    timestamps: Some(count),
                    ..waiting
                };
                self.confirm_for_timestamps(id, request_id, waiting, word);
            }
            Request::Txn(command) => {
                if replica.raw.role() != Role::Leader {
                    self.reply(waiting, Reply::Failed { leader_hint });
                    return;
                }
                if let crate::txn_kv::TxnCommand::Prepare { keys, .. } = &command {
                    let descriptor = replica.kv.descriptor.as_ref();
                    let moved = keys
                        .iter()
                        .any(|&key| !span_check.on_arrival(descriptor, &routing_key(key)));
                    if moved {
                        // A split moved an account: the coordinator routes again.
                        let ranges = self.local_descriptors(id);
                        self.reply(waiting, Reply::Mismatch { ranges });
                        return;
                    }
                }
                let waiting_txn = Waiting {
                    read_floor: ostrakon_raft::LogIndex(0),
                    ..waiting
                };
                if whole_range && command.prepare_revision().is_some() {
                    // Its leader fetches its revision, as a write's.
                    return self.hold_for_revision(id, group, Request::Txn(command), waiting_txn);
                }
                // A prepare's revision was fetched by its coordinator: it must land above
                // every read the leader served, as a write's.
                if let Some(revision) = command.prepare_revision() {
                    replica.floor.lead(replica.raw.term());
                    if let Err(refused) = replica.floor.admit(revision) {
                        trace!(self, "{id:?} {group:?} refuses {command:?}: {refused}");
                        self.reply(waiting, Reply::Failed { leader_hint });
                        return;
                    }
                }
                let waiting = waiting_txn;
                let result = replica.raw.propose(command.encode());
                trace!(self, "{id:?} {group:?} proposes {command:?}: {result:?}");
                match result {
                    Ok(proposal) => {
                        let replica = self.replica(id, group);
                        if let TxnCommand::Resolve { txn, .. } | TxnCommand::Release { txn, .. } =
                            &command
                        {
                            replica.unlocks_in_log.insert(proposal.index, *txn);
                        }
                        replica
                            .proposals
                            .insert(proposal.index, (proposal.term, waiting));
                    }
                    Err(_) => self.reply(waiting, Reply::Failed { leader_hint }),
                }
            }
            Request::ScanAt {
                key,
                revision,
                word: None,
                ..
            } if send_on => {
                // The word is read now, after the client had the revision from the oracle.
                let word = self.range_word(id, group);
                self.forwarded_reads += 1;
                trace!(
                    self,
                    "{id:?} {group:?} sends client {client}'s read at {revision} on to {leader_hint:?} with {word:?} (barrier {request_id})"
                );
                // The client's read waits here for the leader's index, then reads this
                // replica (`barrier_answered`).
                let waiting = Waiting {
                    scan_at: Some(revision),
                    ..waiting
                };
                self.running(id)
                    .barriers_sent
                    .insert(request_id, (group, waiting));
                let faults = &self.scenario.faults;
                if self.rng.chance(faults.drop_probability) {
                    return; // Lost: the client times out.
                }
                let faults = &self.scenario.faults;
                let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
                let request = Request::ScanAt {
                    key,
                    revision,
                    word,
                    barrier: Some((id, request_id)),
                };
                let event = Event::Request {
                    node: leader_hint,
                    range: group,
                    client,
                    op,
                    request,
                };
                self.events.push(self.now_us + latency, event);
            }
            Request::ScanAt { revision, .. } | Request::WatchAt { revision, .. } => {
                // Served by the leader only: its floor rises first, then it answers once
                // it has applied every entry in its log now and its read index.
                if replica.raw.role() != Role::Leader {
                    self.reply(waiting, Reply::Failed { leader_hint });
                    return;
                }
                let read = HeldRead {
                    group,
                    request_id,
                    waiting: Waiting {
                        scan_at: Some(revision),
                        watch_from,
                        ..waiting
                    },
                    word: scan_word,
                };
                if whole_range {
                    // No floor: the read waits for the node's fetch in flight instead.
                    return self.read_behind_barrier(id, read);
                }
                replica.floor.lead(replica.raw.term());
                if let Err(refused) = replica.floor.raise(revision) {
                    trace!(
                        self,
                        "{id:?} {group:?} defers a read at {revision}: {refused}"
                    );
                    self.reply(waiting, Reply::Failed { leader_hint });
                    return;
                }
                self.read_at(id, read);
            }
        }
    }

    /// A read at a revision on the leader of its range: answered once the replica has
    /// applied every entry in its log now and its read index.
    pub(crate) fn read_at(&mut self, id: NodeId, read: HeldRead) {
        let HeldRead {
            group,
            request_id,
            waiting,
            word,
        } = read;
        let revision = waiting.scan_at.expect("a read at a revision");
        let client = waiting.client;
        let replica = self.replica(id, group);
        let leader_hint = replica.raw.leader();
        if replica.raw.role() != Role::Leader {
            self.reply(waiting, Reply::Failed { leader_hint });
            return;
        }
        let waiting = Waiting {
            wait_index: replica.raw.last_index(),
            ..waiting
        };
        // A follower's word stands for the heartbeat round where it can, as in the
        // node's `Replica::read_index_at_least`.
        let asked = match word {
            Some(word) => replica
                .raw
                .read_index_confirmed_by(request_id, word.member, word.term),
            None => replica.raw.read_index(request_id).map(|()| false),
        };
        match asked {
            Ok(confirmed) => {
                replica.reads.insert(request_id, waiting);
                self.reads_confirmed_by_word += u64::from(confirmed);
            }
            Err(_) => return self.reply(waiting, Reply::Failed { leader_hint }),
        }
        trace!(
            self,
            "{id:?} {group:?} reads at {revision} for client {client} (after {:?})",
            waiting.wait_index
        );
        if self.healed_at_us.is_none() && self.rng.chance(TRANSFER_AFTER_READ_PROBABILITY) {
            let delay_us = self.rng.range(0, TRANSFER_AFTER_READ_DELAY_US_MAX);
            self.events
                .push(self.now_us + delay_us, Event::TransferAfterRead(group));
        } else if self.healed_at_us.is_none()
            && self.parked_writes.values().any(|(parked_for, _, command)| {
                *parked_for == group && command.revision().is_some_and(|w| w < revision)
            })
        {
            // A slow writer parked for this range holds a revision below the read's:
            // the leadership moves now, and the writer follows it
            // (`release_parked_writes`).
            self.events.push(
                self.now_us + PARKED_TRANSFER_DELAY_US,
                Event::TransferAfterRead(group),
            );
        }
    }

    /// A write or prepare at the leader of its range (the node's variant): refused at
    /// once while a transaction holds the range, else held for a revision from the
    /// node's next fetch.
    fn hold_for_revision(
        &mut self,
        id: NodeId,
        group: GroupId,
        request: Request,
        waiting: Waiting,
    ) {
        let replica = self.replica(id, group);
        let leader_hint = replica.raw.leader();
        if replica.raw.role() != Role::Leader {
            self.reply(waiting, Reply::Failed { leader_hint });
            return;
        }
        let write = match &request {
            Request::Write(command) => {
                assert!(
                    command.revision().is_none(),
                    "a client fetched a revision the leader's barriers do not cover"
                );
                RangeWrite::ChangesKeys
            }
            Request::Txn(TxnCommand::Prepare { txn, .. }) => RangeWrite::Prepare(*txn),
            other => panic!("{other:?} takes no revision"),
        };
        // As the node's leader asks: a prepare held off only by locks whose resolve or
        // release it proposed already goes in behind them. Where it applies, the locks
        // then in place decide (`holds_off`), on every replica alike.
        let unlocking = |txn| replica.unlocking(txn);
        let behind_unlock = holds_off(&replica.kv.txns.locks, write);
        if holds_off_unless_unlocking(&replica.kv.txns.locks, write, unlocking) {
            trace!(self, "{id:?} {group:?} refuses {request:?}: locked");
            let reply = match request {
                Request::Write(_) => Reply::Stale,
                _ => Reply::Txn(TxnApplied::Refused("locked".into())),
            };
            self.reply(waiting, reply);
            return;
        }
        if behind_unlock {
            trace!(
                self,
                "{id:?} {group:?} lets {request:?} in behind an unlock"
            );
            self.prepares_behind_unlocks += 1;
        }
        let term = self.replica(id, group).raw.term();
        let write = FetchedWrite {
            group,
            request,
            waiting,
            term,
        };
        self.fetch_revision_for(id, write);
    }

    pub(crate) fn reply(&mut self, waiting: Waiting, reply: Reply) {
        if waiting.client == crate::simulation::PROBE_CLIENT {
            return;
        }
        if let Some(from) = waiting.answer_to {
            // A read barrier's failure goes to the follower, which answers its client.
            return self.answer_barrier(from, Err(reply));
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

    /// Answers a request that reached a node without a replica of its range.
    pub(crate) fn reply_mismatch(
        &mut self,
        client: u64,
        op: OpId,
        ranges: Vec<ostrakon_ranges::RangeDescriptor>,
    ) {
        let waiting = Waiting::register(client, op, 0, ostrakon_raft::LogIndex(0));
        let scan_request = (crate::clients::SCAN_REQUEST_BASE..crate::clients::FLOOR_CLIENT_BASE)
            .contains(&client);
        let reply = if client >= crate::clients::TIMESTAMP_CLIENT_BASE && !scan_request {
            Reply::Failed {
                leader_hint: NodeId::NONE,
            }
        } else {
            Reply::Mismatch { ranges }
        };
        self.reply(waiting, reply);
    }

    /// The range a client's directory routes `key` to; with a gap in the directory (a
    /// range it has not heard of yet), the known range before the key, whose replicas
    /// will answer with what they know.
    fn route(&self, client: u64, key: u64) -> GroupId {
        route_in(&self.clients[client as usize].directory, key)
    }

    pub(crate) fn start_operation(&mut self, client: u64) {
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
                    let command = Command::Cas {
                        key,
                        expected,
                        new: value,
                        revision: 0,
                    };
                    (input, Request::Write(command))
                }
                _ => (
                    RegisterInput::Write(value),
                    Request::Write(Command::Put {
                        key,
                        value,
                        revision: 0,
                    }),
                ),
            }
        };
        let is_write = !matches!(input, RegisterInput::Read);
        let op = self.history.invoke(client, (key, input), self.now_us);
        if let Request::Write(command) = request {
            self.clients[client as usize].outstanding = Some(op);
            self.clients[client as usize].write_attempts = 0;
            if self.scenario.txn_protocol == TxnProtocol::WholeRange {
                // The range's leader fetches its revision.
                self.send_write(client, op, command);
            } else {
                self.fetch_revision(client, op, command);
            }
            return;
        }
        let group = self.route(client, key);
        let believed = self.clients[client as usize]
            .believed_leader
            .get(&group)
            .copied()
            .unwrap_or(NodeId::NONE);
        let target = self.pick_node(group, believed, is_write);
        trace!(
            self,
            "client {client} op {} {:?} on key {key} -> {target:?} {group:?}",
            op.index(),
            request
        );
        self.clients[client as usize].outstanding = Some(op);
        self.send_request(target, group, client, op, request);
    }

    /// Sends a client's request over the network, and starts its timeout.
    pub(crate) fn send_request(
        &mut self,
        target: NodeId,
        range: GroupId,
        client: u64,
        op: OpId,
        request: Request,
    ) {
        let faults = &self.scenario.faults;
        let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
        self.events.push(
            self.now_us + latency,
            Event::Request {
                node: target,
                range,
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

    /// A request over the simulated network, with a timeout for its sender.
    pub(crate) fn push_request(
        &mut self,
        client: u64,
        target: NodeId,
        group: GroupId,
        request: Request,
        timeout_us: u64,
    ) {
        let faults = &self.scenario.faults;
        let op = ostrakon_check::OpId::NONE;
        // Delivered once, twice (a retransmission), or late (past its sender's timeout:
        // a prepare may then arrive after its transaction was released).
        let copies = if self.rng.chance(faults.duplicate_probability) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let faults = &self.scenario.faults;
            let mut latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
            if self.rng.chance(LATE_REQUEST_PROBABILITY) {
                latency += self.rng.range(0, LATE_REQUEST_DELAY_US_MAX);
            }
            let request = Event::Request {
                node: target,
                range: group,
                client,
                op,
                request: request.clone(),
            };
            self.events.push(self.now_us + latency, request);
        }
        self.events.push(
            self.now_us + timeout_us,
            Event::ClientTimeout { client, op },
        );
    }

    /// Where node `id` sends its own request for `group`: the leader its replica of the
    /// range knows of, if it holds one and anyone leads, else any member.
    pub(crate) fn pick_node_as_known_on(&mut self, id: NodeId, group: GroupId) -> NodeId {
        let hint = self
            .replica_ref(id, group)
            .map(|replica| replica.raw.leader())
            .unwrap_or(NodeId::NONE);
        self.pick_node(group, hint, true)
    }

    /// `believed` if it is still a member of `group` (for reads, not always: they
    /// sometimes go to any member, exercising forwarded ReadIndex), else any member.
    pub(crate) fn pick_node(&mut self, group: GroupId, believed: NodeId, is_write: bool) -> NodeId {
        let any_member = !is_write && self.rng.chance(0.2);
        let members = self.latest_conf[&group].1.members();
        if believed.is_some() && !any_member && members.contains(&believed) {
            return believed;
        }
        let members: Vec<NodeId> = members.into_iter().collect();
        self.rng.pick(&members)
    }

    pub(crate) fn handle_reply(&mut self, client: u64, op: OpId, reply: Reply) {
        if self.clients[client as usize].outstanding != Some(op) {
            return; // Timed out already.
        }
        let (key, input) = self.history.ops()[op.index()].input.clone();
        if let Some(command) = self.clients[client as usize].awaiting_revision.take() {
            return self.revision_reply(client, op, command, reply);
        }
        match reply {
            Reply::Ok(output) => {
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
            Reply::Timestamps(grant, _) => {
                panic!("timestamps {grant:?} answer a register operation")
            }
            Reply::Stale => {
                // Definitely not done: its revision was below a read served or a write
                // applied. It takes a new one, a few times.
                let Request::Write(command) = self.pending_write(op) else {
                    unreachable!("only writes are stale")
                };
                let state = &mut self.clients[client as usize];
                state.write_attempts += 1;
                let attempts = u64::from(state.write_attempts);
                if state.write_attempts < WRITE_ATTEMPTS_MAX {
                    trace!(
                        self,
                        "client {client} op {} takes a new revision",
                        op.index()
                    );
                    if self.scenario.txn_protocol == TxnProtocol::WholeRange {
                        // Sent again after a pause that grows (the node's
                        // `write_routed`): a transaction holds the range meanwhile.
                        let pause_us = self.rng.range(1_000, 20_000 * attempts);
                        let at = self.now_us + pause_us;
                        self.events.push(
                            at,
                            Event::SendWrite {
                                client,
                                op,
                                command,
                            },
                        );
                    } else {
                        self.fetch_revision(client, op, command);
                    }
                } else {
                    self.complete(client, Outcome::Failed);
                }
            }
            Reply::Scanned { .. } | Reply::Watched(_) | Reply::Txn(_) => {
                panic!("{reply:?} answers a register operation")
            }
            Reply::Mismatch { ranges } => {
                trace!(
                    self,
                    "client {client} op {} failed: key {key} not in that range; learns {ranges:?}",
                    op.index()
                );
                self.complete(client, Outcome::Failed);
                let state = &mut self.clients[client as usize];
                for range in ranges {
                    state.directory.learn(range);
                }
            }
            Reply::Failed { leader_hint } => {
                trace!(
                    self,
                    "client {client} op {} failed (leader hint {leader_hint:?})",
                    op.index()
                );
                self.complete(client, Outcome::Failed);
                let group = self.route(client, key);
                self.clients[client as usize]
                    .believed_leader
                    .insert(group, leader_hint);
            }
        }
    }

    pub(crate) fn request_timed_out(&mut self, client: u64, op: OpId) {
        if self.clients[client as usize].outstanding != Some(op) {
            return;
        }
        trace!(self, "client {client} op {} times out", op.index());
        self.clients[client as usize].awaiting_revision = None;
        let key = self.history.ops()[op.index()].input.0;
        self.complete(client, Outcome::Unknown);
        let group = self.route(client, key);
        self.clients[client as usize].believed_leader.remove(&group);
    }

    /// The oracle answered a write's request for its revision: the write goes to its
    /// range with it; without one, it definitely did not happen.
    fn revision_reply(&mut self, client: u64, op: OpId, command: Command, reply: Reply) {
        let revision = match reply {
            Reply::Timestamps(grant, _) => grant.first,
            Reply::Failed { leader_hint } => {
                trace!(self, "client {client} op {} got no revision", op.index());
                self.clients[client as usize]
                    .believed_leader
                    .insert(META, leader_hint);
                return self.complete(client, Outcome::Failed);
            }
            // The node it asked holds no replica of the meta range (any more).
            Reply::Mismatch { .. } => {
                self.clients[client as usize].believed_leader.remove(&META);
                return self.complete(client, Outcome::Failed);
            }
            other => panic!("{other:?} answers a timestamp request"),
        };
        let command = command.with_revision(revision);
        if self.rng.chance(SLOW_WRITER_PROBABILITY) {
            // A slow client (or a transaction's coordinator): its revision may be below
            // reads served meanwhile, by this leader or the next.
            let pause_us = self.rng.range(0, SLOW_WRITER_PAUSE_US_MAX);
            if pause_us >= SLOW_WRITER_PAUSE_US_MAX / 2 {
                // The slower half waits for its range's next leadership move after a
                // read at a revision (`TransferAfterRead`), and reaches the new leader
                // just after it took over: the one moment a leadership that did not
                // learn its floor takes a revision below a read served before it. By
                // chance alone that was caught in 1 to 3 seeds of 200.
                let group = self.route(client, command.key().expect("a register write"));
                self.parked_writes.insert(op, (group, client, command));
                self.events
                    .push(self.now_us + pause_us, Event::SendParkedWrite(op));
                return;
            }
            self.events.push(
                self.now_us + pause_us,
                Event::SendWrite {
                    client,
                    op,
                    command,
                },
            );
            return;
        }
        self.send_write(client, op, command);
    }

    /// A write first takes its revision from the oracle, as a transaction's coordinator
    /// does; then it goes to its range.
    fn fetch_revision(&mut self, client: u64, op: OpId, command: Command) {
        self.clients[client as usize].awaiting_revision = Some(command);
        let believed = self.clients[client as usize]
            .believed_leader
            .get(&META)
            .copied()
            .unwrap_or(NodeId::NONE);
        let target = self.pick_node(META, believed, true);
        trace!(
            self,
            "client {client} op {} {command:?} asks {target:?} for a revision",
            op.index()
        );
        self.send_request(
            target,
            META,
            client,
            op,
            Request::Timestamps {
                count: 1,
                word: None,
            },
        );
    }

    /// The write of a register operation in flight, as its client built it.
    fn pending_write(&self, op: OpId) -> Request {
        let (key, input) = self.history.ops()[op.index()].input.clone();
        let command = match input {
            RegisterInput::Write(value) => Command::Put {
                key,
                value,
                revision: 0,
            },
            RegisterInput::Cas { expected, new } => Command::Cas {
                key,
                expected,
                new,
                revision: 0,
            },
            RegisterInput::Read => return Request::Read { key },
        };
        Request::Write(command)
    }

    /// Sends a write with its revision to its range.
    /// Sends a parked slow writer's write, unless it was sent already.
    pub(crate) fn send_parked_write(&mut self, op: OpId) {
        if let Some((_, client, command)) = self.parked_writes.remove(&op) {
            self.send_write(client, op, command);
        }
    }

    /// The nemesis moved `group`'s leadership after a read at a revision: the writers
    /// parked for it go a few milliseconds later, once the new leader took over.
    pub(crate) fn release_parked_writes(&mut self, group: GroupId) {
        let parked: Vec<OpId> = self
            .parked_writes
            .iter()
            .filter(|(_, (parked_for, _, _))| *parked_for == group)
            .map(|(op, _)| *op)
            .collect();
        for op in parked {
            trace!(
                self,
                "op {} parked for {group:?}'s leadership move goes",
                op.index()
            );
            self.events.push(
                self.now_us + PARKED_WRITE_AFTER_TRANSFER_US,
                Event::SendParkedWrite(op),
            );
        }
    }

    pub(crate) fn send_write(&mut self, client: u64, op: OpId, command: Command) {
        if self.clients[client as usize].outstanding != Some(op) {
            return; // Timed out meanwhile.
        }
        let key = command.key().expect("a register write");
        let group = self.route(client, key);
        let believed = self.clients[client as usize]
            .believed_leader
            .get(&group)
            .copied()
            .unwrap_or(NodeId::NONE);
        let target = self.pick_node(group, believed, true);
        trace!(
            self,
            "client {client} op {} {command:?} -> {target:?} {group:?}",
            op.index()
        );
        self.send_request(target, group, client, op, Request::Write(command));
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
}

/// The range `directory` routes register `key` to; with a gap in the directory (a range
/// it has not heard of yet), the known range before the key, whose replicas will answer
/// with what they know.
pub(crate) fn route_in(directory: &ostrakon_ranges::Directory, key: u64) -> GroupId {
    let key = routing_key(key);
    match directory.lookup(&key) {
        Some(range) => range.id.group(),
        None => directory
            .ranges()
            .take_while(|range| range.start.as_slice() <= key.as_slice())
            .last()
            .or_else(|| directory.ranges().next())
            .expect("a directory is never empty")
            .id
            .group(),
    }
}
