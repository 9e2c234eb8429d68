//! The timestamp oracle under simulation: clients ask the group's leader for
//! timestamps, and the leader serves them with the range layer's real `Oracle`, its
//! bound persisted through the group's log like any command.
//!
//! A request is served as the runtime will serve it: the leader takes a read index
//! after the request arrived (confirming it still leads), waits until it has applied up
//! to it (so the bound it reads is the latest committed), then allocates; a request
//! that would reach the bound waits for the next bound to apply. The checker
//! (`ostrakon_check::check_timestamps`) then holds every answer to uniqueness and
//! real-time order.

use ostrakon_check::{OpId, Outcome, TimestampGrant};
use ostrakon_raft::{GroupId, NodeId, Role, Term};

use crate::clients::TIMESTAMP_CLIENT_BASE;
use crate::events::{Event, Reply};
use crate::kv::Command;
use crate::node::{AskWord, Request, Waiting};
use crate::simulation::{trace, Simulation, META};

/// How often, while faults run, the nemesis crashes the oracle's leader right after it
/// answered and proposed a new bound, before the bound left the node: the moment a leader that
/// handed out timestamps beyond its persisted bound leaves its successor below them.
/// Random crashes reach that moment too, but rarely (it lasts until the next Ready).
const CRASH_AFTER_BOUND_PROBABILITY: f64 = 0.15;
/// At most one such crash in this long: with a short window a bound is proposed every
/// few ms, and the oracle would hardly ever serve.
const CRASH_AFTER_BOUND_INTERVAL_US_MIN: u64 = 300_000;

/// What every node's wall clock reads at the start of a run (before its skew): a
/// realistic epoch, so timestamps look like the ones a real cluster hands out.
const WALL_CLOCK_START_MS: u64 = 1_780_000_000_000;

impl Simulation {
    /// `id`'s wall clock: running fast or slow with its tick rate, and set ahead by its
    /// skew.
    fn wall_clock_ms(&self, id: NodeId) -> u64 {
        let node = &self.nodes[&id];
        let local_us =
            u128::from(self.now_us) * u128::from(self.scenario.tick_us) / u128::from(node.tick_us);
        WALL_CLOCK_START_MS + node.clock_offset_ms + (local_us / 1_000) as u64
    }

    /// A timestamp request arrived at `id`: only the leader serves the oracle, once a
    /// read index taken now confirms it still leads (or the asking member's word does,
    /// as in the node: `word`).
    pub(crate) fn confirm_for_timestamps(
        &mut self,
        id: NodeId,
        request_id: u64,
        waiting: Waiting,
        word: Option<AskWord>,
    ) {
        let replica = self.replica(id, META);
        let leader_hint = replica.raw.leader();
        if replica.raw.role() != Role::Leader {
            // As the node's `TimestampService::request`: no read index forwarded.
            self.reply(waiting, Reply::Failed { leader_hint });
            return;
        }
        let leading_in = replica.raw.term();
        let confirming = match word {
            Some(AskWord { member, term, .. }) => {
                let result = replica
                    .raw
                    .read_index_confirmed_by(request_id, member, term);
                if leading_in < term {
                    self.words_of_other_terms += 1;
                }
                if result == Ok(true) {
                    self.asks_confirmed_by_word += 1;
                }
                result.map(|_| ())
            }
            None => replica.raw.read_index(request_id),
        };
        let replica = self.replica(id, META);
        if confirming.is_err() {
            self.reply(waiting, Reply::Failed { leader_hint });
            return;
        }
        replica.reads.insert(request_id, waiting);
    }

    /// `id`'s word of every range it holds, for a grant it answers now.
    fn grant_words(&mut self, id: NodeId) -> Vec<(GroupId, AskWord)> {
        self.groups_on(id)
            .into_iter()
            .filter_map(|group| Some((group, self.range_word(id, group)?)))
            .collect()
    }

    /// Serves the confirmed timestamp requests at `id` (after its Ready is advanced:
    /// allocating may propose a new bound). Returns whether the node is to crash now,
    /// before its new bound is persisted or sent.
    pub(crate) fn allocate_confirmed_timestamps(&mut self, id: NodeId, group: GroupId) -> bool {
        if self.replica(id, group).timestamps_confirmed.is_empty() {
            return false;
        }
        assert_eq!(group, META, "only the meta range serves timestamps");
        let now_ms = self.wall_clock_ms(id);
        let replica = self.replica(id, group);
        let confirmed = std::mem::take(&mut replica.timestamps_confirmed);
        let leader_hint = replica.raw.leader();
        if replica.raw.role() != Role::Leader {
            for waiting in confirmed {
                self.reply(waiting, Reply::Failed { leader_hint });
            }
            return false;
        }
        let term = replica.raw.term();
        let mut granted = Vec::new();
        let mut proposals = Vec::new();
        for waiting in confirmed {
            let count = waiting.timestamps.expect("a timestamp request");
            let bound = replica.kv.oracle_bound;
            let allocation = replica.oracle.allocate(term, bound, now_ms, count);
            if let Some(bound) = allocation.propose_bound {
                let command = Command::OracleBound { bound: bound.0 };
                let result = replica.raw.propose(command.encode());
                if result.is_err() {
                    replica.oracle.bound_not_proposed();
                }
                proposals.push((bound, result));
            }
            match allocation.granted {
                Some(range) => granted.push((waiting, range)),
                None => replica.timestamps_confirmed.push(waiting),
            }
        }
        let mut crashes = false;
        for (bound, result) in proposals {
            trace!(self, "{id:?} proposes oracle bound {}: {result:?}", bound.0);
            crashes |= result.is_ok()
                && !granted.is_empty()
                && self.healed_at_us.is_none()
                && self.now_us >= self.next_crash_after_bound_us
                && self.rng.chance(CRASH_AFTER_BOUND_PROBABILITY);
        }
        if crashes {
            self.next_crash_after_bound_us = self.now_us + CRASH_AFTER_BOUND_INTERVAL_US_MIN;
        }
        for (waiting, range) in granted {
            trace!(
                self,
                "{id:?} grants client {} timestamps {}+{}",
                waiting.client,
                range.first.0,
                range.count
            );
            let grant = TimestampGrant {
                first: range.first.0,
                count: range.count,
            };
            // Read now, after the timestamps were handed out: the word vouches for an
            // asking range leader's leadership after that (`read_fresh`). Only a range
            // leader's fetch uses it.
            let vouched = if waiting.client < crate::clients::REVISION_FETCH_BASE {
                Vec::new()
            } else {
                self.grant_words(id)
            };
            self.reply(waiting, Reply::Timestamps(grant, vouched));
        }
        crashes
    }

    /// `id`'s word for an ask of the oracle made now (after whatever it asks for
    /// began): the meta term its event loop last raised (`Running::meta_word`). None
    /// before it has one.
    pub(crate) fn ask_word(&mut self, id: NodeId) -> Option<AskWord> {
        let term = self.running(id).meta_word;
        (term > Term(0)).then(|| AskWord {
            member: id,
            term,
            commit_floor: self.highest_commit(META),
        })
    }

    /// `id`'s word for a read of `group` it sends on now (after the read began): the
    /// term its replica last raised (`Replica::term_word`). None before it has one.
    pub(crate) fn range_word(&mut self, id: NodeId, group: GroupId) -> Option<AskWord> {
        let term = self.replica(id, group).term_word;
        (term > Term(0)).then(|| AskWord {
            member: id,
            term,
            commit_floor: self.highest_commit(group),
        })
    }

    // --- The timestamp clients ----------------------------------------------------------

    pub(crate) fn start_timestamp_request(&mut self, client: u64) {
        let index = (client - TIMESTAMP_CLIENT_BASE) as usize;
        if self.clients_stopped || self.timestamp_clients[index].outstanding.is_some() {
            return;
        }
        let count = self.rng.range(1, 3);
        let op = self.timestamps.invoke(client, count, self.now_us);
        let believed = self.timestamp_clients[index].believed_leader;
        let target = self.pick_node(META, believed, true);
        trace!(
            self,
            "timestamp client {client} op {} asks {target:?} for {count}",
            op.index()
        );
        self.timestamp_clients[index].outstanding = Some(op);
        self.send_request(
            target,
            META,
            client,
            op,
            Request::Timestamps { count, word: None },
        );
    }

    pub(crate) fn handle_timestamp_reply(&mut self, client: u64, op: OpId, reply: Reply) {
        let index = (client - TIMESTAMP_CLIENT_BASE) as usize;
        if self.timestamp_clients[index].outstanding != Some(op) {
            return; // Timed out already.
        }
        match reply {
            Reply::Timestamps(grant, _) => {
                self.complete_timestamp_request(client, Outcome::Ok(grant))
            }
            Reply::Failed { leader_hint } => {
                self.complete_timestamp_request(client, Outcome::Failed);
                self.timestamp_clients[index].believed_leader = leader_hint;
            }
            Reply::Ok(_)
            | Reply::Mismatch { .. }
            | Reply::Scanned { .. }
            | Reply::Watched(_)
            | Reply::Txn(_)
            | Reply::Stale => {
                panic!("a register answer {reply:?} to a timestamp request")
            }
        }
    }

    pub(crate) fn timestamp_request_timed_out(&mut self, client: u64, op: OpId) {
        let index = (client - TIMESTAMP_CLIENT_BASE) as usize;
        if self.timestamp_clients[index].outstanding == Some(op) {
            self.complete_timestamp_request(client, Outcome::Unknown);
            self.timestamp_clients[index].believed_leader = NodeId::NONE;
        }
    }

    fn complete_timestamp_request(&mut self, client: u64, outcome: Outcome<TimestampGrant>) {
        let index = (client - TIMESTAMP_CLIENT_BASE) as usize;
        let op = self.timestamp_clients[index]
            .outstanding
            .take()
            .expect("a request in flight");
        trace!(
            self,
            "timestamp client {client} op {} ends {outcome:?}",
            op.index()
        );
        self.timestamps.complete(op, outcome, self.now_us);
        let think_us = self.rng.range(0, self.scenario.client_think_us_max);
        self.events
            .push(self.now_us + think_us, Event::ClientNext(client));
    }
}
