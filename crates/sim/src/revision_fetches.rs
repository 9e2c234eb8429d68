//! The node's variant of revisions (`TxnProtocol::WholeRange`): a range's leader holds
//! each register write and transaction prepare it receives until its node's fetcher
//! (`ostrakon_ranges::read_wait::RevisionFetcher`, the node's own code) has a revision
//! for it from the oracle, then proposes it if the leadership that fetched still leads
//! (`read_wait::grant_step`). A read at a revision waits for the fetch in flight when it
//! arrived (a barrier), then reads once the fetch's writes are proposed.
//!
//! One fetcher per node, shared by its ranges, as in the node's event loop. It is
//! volatile: a crash loses what waits in it, and those clients time out.

use ostrakon_raft::{NodeId, Role};
use ostrakon_ranges::read_wait::{grant_step, GrantStep};
use ostrakon_ranges::{Timestamp, TimestampRange};

use crate::clients::REVISION_FETCH_BASE;
use crate::events::Reply;
use crate::node::{AskWord, FetchedWrite, FreshRead, HeldRead, Input, Request, Waiting};
use crate::simulation::{trace, Simulation, META};
use crate::txn_kv::TxnCommand;

/// At most this many timestamps per fetch (small, so that busy nodes split their writes
/// over several fetches, as the node does past its limit).
pub(crate) const TIMESTAMPS_PER_FETCH_MAX: u64 = 8;
/// How long a node waits for the oracle's answer; then the writes of the fetch fail.
const REVISION_FETCH_TIMEOUT_US: u64 = 300_000;
/// How often, while faults run, the oracle's answer to a fetch is slow to reach its node
/// (a loaded link, a paused process): reads arrive meanwhile, and other nodes' writes
/// take later timestamps and are acknowledged.
const SLOW_FETCH_ANSWER_PROBABILITY: f64 = 0.1;
/// How slow at most (within the fetch's timeout).
const SLOW_FETCH_ANSWER_US_MAX: u64 = 150_000;
/// After a refusal, a node asks again this much later, within the fetch's timeout (as
/// the node's `NodeHandle::timestamps` does while the meta range's leadership moves).
const FETCH_RETRY_PAUSE_US: u64 = 20_000;

/// A node's fetch waiting for the oracle, by request id.
pub(crate) struct FetchInFlight {
    pub(crate) node: NodeId,
    /// Timestamps asked.
    count: u64,
    /// When the node gives up on it: its writes fail.
    deadline_us: u64,
    /// A refusal was answered with a retry not sent yet (a copy of the refusal must
    /// not send another).
    retry_pending: bool,
    /// The member asked.
    target: NodeId,
}

impl Simulation {
    /// A write or prepare reached the leader of its range: it waits for the node's next
    /// fetch.
    pub(crate) fn fetch_revision_for(&mut self, id: NodeId, write: FetchedWrite) {
        trace!(
            self,
            "{id:?} {:?} fetches a revision for {:?} of client {}",
            write.group,
            write.request,
            write.waiting.client
        );
        self.writes_fetched += 1;
        self.running(id).revisions.wait(write);
        self.start_revision_fetch(id);
    }

    /// A register read reached the leader of its range: it waits for the node's next
    /// fetch, whose last timestamp is its revision.
    pub(crate) fn read_fresh_for(&mut self, id: NodeId, read: FreshRead) {
        self.running(id).revisions.wait_fresh(read);
        self.start_revision_fetch(id);
    }

    /// A fresh read with its revision, behind its fetch's writes: read once the replica
    /// has applied its log now and a read index, if the leadership it arrived at still
    /// leads (as the node's `fresh_read_point`). The read index takes a heartbeat round,
    /// or `granter_word`: the word of the member that granted the fetch, read after it
    /// handed `revision` out.
    pub(crate) fn read_fresh(
        &mut self,
        id: NodeId,
        read: FreshRead,
        revision: u64,
        granter_word: Option<AskWord>,
    ) {
        let replica = self.replica(id, read.group);
        let leader_hint = replica.raw.leader();
        let leading_in = (replica.raw.role() == Role::Leader).then(|| replica.raw.term());
        if grant_step(leading_in, read.term) != GrantStep::Propose {
            return self.reply(read.waiting, Reply::Failed { leader_hint });
        }
        let waiting = Waiting {
            fresh_at: Some(revision),
            wait_index: replica.raw.last_index(),
            ..read.waiting
        };
        let asked = match granter_word {
            Some(word) => {
                replica
                    .raw
                    .read_index_confirmed_by(read.request_id, word.member, word.term)
            }
            None => replica.raw.read_index(read.request_id).map(|()| false),
        };
        match asked {
            Ok(confirmed) => {
                replica.reads.insert(read.request_id, waiting);
                self.fresh_reads_confirmed_by_grant += u64::from(confirmed);
                trace!(
                    self,
                    "{id:?} {:?} reads register {} fresh at {revision} (after {:?})",
                    read.group,
                    waiting.key,
                    waiting.wait_index
                );
            }
            Err(_) => self.reply(waiting, Reply::Failed { leader_hint }),
        }
    }

    /// A read at a revision reached the leader of its range: read now, unless a fetch is
    /// in flight (which may grant a revision at or below the read's).
    pub(crate) fn read_behind_barrier(&mut self, id: NodeId, read: HeldRead) {
        // The node proposes a granted write at once; here it may wait in the replica's
        // inbox while a Ready persists (this read, queued before it, is handled first):
        // the read goes behind it, as in the node it would find it in the log.
        let grant_queued = self
            .replica(id, read.group)
            .inbox
            .iter()
            .any(|input| matches!(input, Input::Granted(_)));
        let fetch_in_flight = self.running(id).revisions.fetch_in_flight();
        let barrier = self.running(id).revisions.barrier(read);
        if fetch_in_flight && barrier.is_some() {
            // Only the planted `barrier-skips-fetch-in-flight` answers a read the fetch
            // in flight could still write below: counted, to see how often it had the
            // chance to be caught.
            self.barriers_skipped += 1;
        }
        match barrier {
            Some(read) if grant_queued => {
                trace!(self, "{id:?} {:?} reads behind granted writes", read.group);
                self.replica(id, read.group)
                    .inbox
                    .push_back(Input::ReadAt(read));
            }
            Some(read) => self.read_at(id, read),
            None => {
                self.barriers_held += 1;
                trace!(
                    self,
                    "{id:?} {:?} holds a read at {:?} for the fetch in flight",
                    read.group,
                    read.waiting.scan_at
                );
            }
        }
    }

    /// The member a node's fetch asks: the meta range's leader as its replica knows it,
    /// or, while fetchers stick to the oracle, the member that last granted it.
    fn fetch_target(&mut self, id: NodeId) -> NodeId {
        let sticky = self.running(id).last_oracle;
        match sticky {
            Some(member) if self.scenario.fetch_sticks_to_oracle => member,
            _ => self.pick_node_as_known_on(id, META),
        }
    }

    /// Starts the node's next fetch if none is in flight and writes wait.
    fn start_revision_fetch(&mut self, id: NodeId) {
        let Some((fetch, count)) = self.running(id).revisions.start() else {
            return;
        };
        let number = self.next_internal_request;
        self.next_internal_request += 1;
        self.running(id).fetch_request = Some((number, fetch));
        let in_flight = FetchInFlight {
            node: id,
            count,
            deadline_us: self.now_us + REVISION_FETCH_TIMEOUT_US,
            retry_pending: false,
            target: self.fetch_target(id),
        };
        let target = in_flight.target;
        self.revision_fetches.insert(number, in_flight);
        trace!(
            self,
            "{id:?} fetch {fetch} asks {target:?} for {count} revisions"
        );
        let request = Request::Timestamps {
            count,
            word: self.ask_word(id),
        };
        let client = REVISION_FETCH_BASE + number;
        self.push_request(client, target, META, request, REVISION_FETCH_TIMEOUT_US);
    }

    /// The oracle answered a node's fetch.
    pub(crate) fn handle_revision_fetch_reply(&mut self, client: u64, reply: Reply) {
        let number = client - REVISION_FETCH_BASE;
        let answered = matches!(reply, Reply::Timestamps(..));
        if answered
            && self.healed_at_us.is_none()
            && self.revision_fetches.contains_key(&number)
            && self.slow_fetch_answers.insert(number)
            && self.rng.chance(SLOW_FETCH_ANSWER_PROBABILITY)
        {
            let delay_us = self.rng.range(1, SLOW_FETCH_ANSWER_US_MAX);
            trace!(self, "the answer to revision fetch {number} is slow");
            let event = crate::events::Event::Reply {
                client,
                op: ostrakon_check::OpId::NONE,
                reply,
            };
            self.events.push(self.now_us + delay_us, event);
            return;
        }
        if let Some(in_flight) = self.revision_fetches.get(&number) {
            let (id, target) = (in_flight.node, in_flight.target);
            if self.is_up(id) {
                self.running(id).last_oracle = answered.then_some(target);
            }
        }
        if let (Reply::Failed { .. }, Some(in_flight)) =
            (&reply, self.revision_fetches.get_mut(&number))
        {
            // Refused (asked a member that does not lead the meta range): asked again
            // while the fetch's time lasts, as the node does.
            if self.now_us + FETCH_RETRY_PAUSE_US < in_flight.deadline_us {
                if !in_flight.retry_pending {
                    in_flight.retry_pending = true;
                    self.fetches_retried += 1;
                    trace!(self, "revision fetch {number} refused: asked again shortly");
                    let event = crate::events::Event::RetryRevisionFetch(client);
                    self.events.push(self.now_us + FETCH_RETRY_PAUSE_US, event);
                }
                return;
            }
        }
        let Some((id, fetch)) = self.end_revision_fetch(client) else {
            return;
        };
        let (granted, vouched) = match reply {
            Reply::Timestamps(grant, vouched) => {
                let range = TimestampRange {
                    first: Timestamp(grant.first),
                    count: grant.count,
                };
                (Some(range), vouched)
            }
            _ => (None, Vec::new()),
        };
        self.revisions_granted(id, fetch, granted, &vouched);
    }

    /// Asks the oracle again for a fetch a member refused, if its node still waits for
    /// it (not crashed since). Under a new request number, as the node has one attempt
    /// out at a time: a late copy of the refusal, or any answer or timeout of the first
    /// request, then finds nothing to end.
    pub(crate) fn retry_revision_fetch(&mut self, client: u64) {
        let number = client - REVISION_FETCH_BASE;
        let Some(mut in_flight) = self.revision_fetches.remove(&number) else {
            return;
        };
        let id = in_flight.node;
        let waiting = self.is_up(id)
            && self.running(id).fetch_request.map(|(request, _)| request) == Some(number);
        if !waiting {
            return;
        }
        in_flight.retry_pending = false;
        in_flight.target = self.fetch_target(id);
        let (count, deadline_us, target) =
            (in_flight.count, in_flight.deadline_us, in_flight.target);
        let retry = self.next_internal_request;
        self.next_internal_request += 1;
        self.revision_fetches.insert(retry, in_flight);
        let fetch = self.running(id).fetch_request.expect("waiting").1;
        self.running(id).fetch_request = Some((retry, fetch));
        trace!(
            self,
            "{id:?} asks {target:?} again for revision fetch {number}, now {retry}"
        );
        let request = Request::Timestamps {
            count,
            word: self.ask_word(id),
        };
        // Within the fetch's time: its timeout comes at the same deadline.
        let timeout_us = deadline_us.saturating_sub(self.now_us);
        self.push_request(
            REVISION_FETCH_BASE + retry,
            target,
            META,
            request,
            timeout_us,
        );
    }

    pub(crate) fn revision_fetch_timed_out(&mut self, client: u64) {
        if let Some((id, fetch)) = self.end_revision_fetch(client) {
            self.revisions_granted(id, fetch, None, &[]);
        }
    }

    /// The fetch ended (answered or not): the node that made it and its fetch number, if
    /// it is still the same life of it and waiting for this request (a copy or a late
    /// answer finds it ended).
    fn end_revision_fetch(&mut self, client: u64) -> Option<(NodeId, u64)> {
        let number = client - REVISION_FETCH_BASE;
        let id = self.revision_fetches.remove(&number)?.node;
        if !self.is_up(id) {
            return None;
        }
        let running = self.running(id);
        let (request, fetch) = running.fetch_request?;
        if request != number {
            return None;
        }
        running.fetch_request = None;
        Some((id, fetch))
    }

    /// Hands the fetch's writes to their replicas (to be proposed), then the reads it
    /// held, queued behind them; or, if it failed, answers its writes. `vouched`: the
    /// granting member's word of the ranges it holds, read after it granted the fetch.
    fn revisions_granted(
        &mut self,
        id: NodeId,
        fetch: u64,
        granted: Option<TimestampRange>,
        vouched: &[(ostrakon_raft::GroupId, AskWord)],
    ) {
        trace!(self, "{id:?} fetch {fetch} answered: {granted:?}");
        let result = self.running(id).revisions.granted(fetch, granted);
        // Taken now: a write handed on below may start the next fetch.
        let reads = self.running(id).revisions.released_barriers();
        let fresh_reads = self.running(id).revisions.released_fresh_reads();
        let failed = Reply::Failed {
            leader_hint: NodeId::NONE,
        };
        match result {
            Ok(writes) => {
                for write in writes {
                    let (group, waiting) = (write.group, write.waiting);
                    self.input_or_answer(id, group, Input::Granted(write), waiting, &failed);
                }
            }
            Err(unstamped) => {
                for write in unstamped.writes {
                    self.reply(write.waiting, failed.clone());
                }
                for read in unstamped.reads {
                    self.reply(read.waiting, failed.clone());
                }
            }
        }
        for read in reads {
            let (group, waiting) = (read.group, read.waiting);
            self.input_or_answer(id, group, Input::ReadAt(read), waiting, &failed);
        }
        for (read, revision) in fresh_reads {
            let (group, waiting) = (read.group, read.waiting);
            // The granter's word, unless it granted itself (as the node's own fetch,
            // which asks no member).
            let word = vouched
                .iter()
                .find(|(vouched_group, word)| *vouched_group == group && word.member != id)
                .map(|(_, word)| *word);
            let input = Input::FreshAt(read, revision, word);
            self.input_or_answer(id, group, input, waiting, &failed);
        }
        self.start_revision_fetch(id);
    }

    /// Hands `input` to the replica of `group` on `id`, or answers its client with
    /// `reply` if the replica is gone (destroyed, or merged away).
    fn input_or_answer(
        &mut self,
        id: NodeId,
        group: ostrakon_raft::GroupId,
        input: Input,
        waiting: crate::node::Waiting,
        reply: &Reply,
    ) {
        if self.hosts(id, group) {
            self.input(id, group, input);
        } else {
            self.reply(waiting, reply.clone());
        }
    }

    /// A granted write at its replica: proposed by the leadership that fetched it, or
    /// fetched again by a later one.
    pub(crate) fn propose_fetched(&mut self, id: NodeId, write: FetchedWrite) {
        let group = write.group;
        let replica = self.replica(id, group);
        let leader_hint = replica.raw.leader();
        let leading_in = (replica.raw.role() == Role::Leader).then(|| replica.raw.term());
        match grant_step(leading_in, write.term) {
            GrantStep::Propose => {
                let (data, is_register_write) = match &write.request {
                    Request::Write(command) => (command.encode(), true),
                    Request::Txn(command) => (command.encode(), false),
                    other => panic!("{other:?} takes no revision"),
                };
                let result = replica.raw.propose(data);
                match result {
                    Ok(proposal) => {
                        replica
                            .proposals
                            .insert(proposal.index, (proposal.term, write.waiting));
                    }
                    Err(_) => self.reply(write.waiting, Reply::Failed { leader_hint }),
                }
                trace!(
                    self,
                    "{id:?} {group:?} proposes {:?} of client {}: {result:?}",
                    write.request,
                    write.waiting.client
                );
                if result.is_ok() && is_register_write {
                    self.maybe_freeze_behind_write(id, group);
                }
            }
            GrantStep::FetchAgain => {
                self.fetches_again += 1;
                let mut write = write;
                write.term = self.replica(id, group).raw.term();
                write.request = without_revision(write.request);
                trace!(self, "{id:?} {group:?} fetches again for a later term");
                self.running(id).revisions.wait(write);
                self.start_revision_fetch(id);
            }
            GrantStep::NotLeader => self.reply(write.waiting, Reply::Failed { leader_hint }),
        }
    }
}

/// The request as it was before a revision was stamped on it.
fn without_revision(request: Request) -> Request {
    match request {
        Request::Write(command) => Request::Write(command.with_revision(0)),
        Request::Txn(TxnCommand::Prepare {
            txn, primary, keys, ..
        }) => Request::Txn(TxnCommand::Prepare {
            txn,
            revision: 0,
            primary,
            keys,
        }),
        other => panic!("{other:?} takes no revision"),
    }
}

/// A fresh read as it was served: what the end checks against the registers' final
/// versions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FreshReadServed {
    pub(crate) key: u64,
    pub(crate) revision: u64,
    pub(crate) value: Option<u64>,
}

impl Simulation {
    /// Every fresh read answered was served at a revision at or above the revision of
    /// every register write acknowledged before it began, in any range: etcd's promise
    /// for a linearizable read (its header's revision), which the fetch a fresh read
    /// takes keeps (the next one, started after the read arrived).
    pub(crate) fn check_fresh_reads(&mut self) {
        let ops = self.history.ops();
        let acknowledged = |op: &ostrakon_check::OpId| {
            let op = &ops[op.index()];
            match op.outcome {
                ostrakon_check::Outcome::Ok(_) => op.completed_at,
                _ => None,
            }
        };
        let mut writes: Vec<(u64, u64)> = self
            .write_revisions
            .iter()
            .filter_map(|(op, &revision)| acknowledged(op).map(|at| (at, revision)))
            .collect();
        writes.sort_unstable();
        // The highest revision acknowledged up to each write's acknowledgement.
        let mut highest = 0;
        let highest_by: Vec<(u64, u64)> = writes
            .iter()
            .map(|&(at, revision)| {
                highest = highest.max(revision);
                (at, highest)
            })
            .collect();
        let mut checked = 0;
        for (op, &revision) in &self.fresh_read_revisions {
            if acknowledged(op).is_none() {
                continue;
            }
            checked += 1;
            let began = ops[op.index()].invoked_at;
            let before = highest_by.partition_point(|&(at, _)| at < began);
            let Some(&(_, acknowledged_revision)) = before.checked_sub(1).map(|i| &highest_by[i])
            else {
                continue;
            };
            if acknowledged_revision > revision {
                let message = format!(
                    "a fresh read (op {}) that began at {began} us was served at revision \
                     {revision}, below revision {acknowledged_revision} of a write \
                     acknowledged before it began",
                    op.index()
                );
                return self.fail(crate::invariants::Violation(message));
            }
        }
        self.fresh_reads_checked = checked;
        // And each read what the writes at or below its revision left (run once the
        // ranges converged): a leader deposed before its revision was handed out would
        // miss a write its successor committed below it.
        let versions = self.final_versions();
        for served in &self.fresh_read_values {
            let expected = crate::kv::value_at(&versions, served.key, served.revision);
            if served.value != expected {
                let message = format!(
                    "a fresh read of register {} at revision {} read {:?}; the writes at or \
                     below that revision leave it at {expected:?}",
                    served.key, served.revision, served.value
                );
                return self.fail(crate::invariants::Violation(message));
            }
        }
    }
}
