//! The timestamp oracle as the meta range's leader serves it (the design and its safety
//! argument: docs/RANGES.md, "The oracle").
//!
//! A request is answered only after a read index taken after it arrived has applied
//! here: the read index confirms that this member still led after the request began (a
//! deposed leader that does not know it must not hand out timestamps below those its
//! successor gave away), and applying up to it makes the bound this member reads the
//! latest committed one. Requests that arrive in the same round of the event loop share
//! one read index. Then `ostrakon_ranges::Oracle` (the code the simulator proves) hands
//! out timestamps below the applied bound, and asks for the next bound, which this module
//! proposes through the meta range's log. A request with no room below the bound waits
//! for the next one to apply, in arrival order.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use ostrakon_proto::peer::{write_request::Request, OracleBound as OracleBoundWrite, WriteRequest};
use ostrakon_raft::{LogIndex, NodeId, RawNode, ReadState, Role};
use ostrakon_ranges::{Oracle, OracleBound, OracleConfig, Timestamp, TimestampRange};
use prost::Message as _;
use tokio::sync::oneshot;

use crate::error::NodeError;
use crate::member_word::MemberWord;

/// Where a timestamp request waits for its timestamps.
pub enum TimestampResponder {
    /// A caller on this member, waiting on a channel.
    Local(oneshot::Sender<Result<TimestampRange, NodeError>>),
    /// A peer's ask, answered on the peer stream back to it (the closure queues the
    /// answer there; it never blocks the event loop).
    Peer(Box<dyn FnOnce(Result<TimestampRange, NodeError>) + Send>),
}

impl TimestampResponder {
    /// Answers the request (a caller that gave up is not an error).
    pub fn answer(self, result: Result<TimestampRange, NodeError>) {
        match self {
            TimestampResponder::Local(respond) => drop(respond.send(result)),
            TimestampResponder::Peer(respond) => respond(result),
        }
    }
}

/// The bit that marks the oracle's read indexes apart from the replica's own reads in
/// raft's one space of read request ids.
pub const CONFIRMATION_ID_BIT: u64 = 1 << 63;

/// Bound on requests waiting, all stages together.
const WAITING_MAX: usize = 65_536;

struct Waiting {
    count: u64,
    respond: TimestampResponder,
}

/// The oracle and its waiting requests, on every replica of the meta range (only its
/// leader serves).
pub struct TimestampService {
    oracle: Oracle,
    /// Arrived since the last read index was asked for.
    arrived: Vec<Waiting>,
    /// Waiting for their read index: the read request id to the requests it confirms.
    confirming: HashMap<u64, Vec<Waiting>>,
    /// Confirmed at a read index this member has not applied yet, in order.
    confirmed_at: VecDeque<(LogIndex, Vec<Waiting>)>,
    /// Confirmed and applied: waiting for room below the bound, in order.
    ready: VecDeque<Waiting>,
    waiting: usize,
    next_confirmation: u64,
}

impl TimestampService {
    /// A service whose oracle persists its bound `window_ms` ahead of its clock.
    pub fn new(window_ms: u64) -> TimestampService {
        TimestampService {
            oracle: Oracle::new(OracleConfig { window_ms }),
            arrived: Vec::new(),
            confirming: HashMap::new(),
            confirmed_at: VecDeque::new(),
            ready: VecDeque::new(),
            waiting: 0,
            next_confirmation: 0,
        }
    }

    /// A request for `count` timestamps (at least one) reached this member, with the
    /// asking member's word of its meta term if it gave one (`MemberWord`).
    pub fn request(
        &mut self,
        node: &mut RawNode,
        count: u64,
        respond: TimestampResponder,
        word: Option<MemberWord>,
    ) {
        assert!(count > 0, "a request for no timestamps");
        if node.role() != Role::Leader {
            respond.answer(Err(NodeError::NotLeader(node.leader())));
            return;
        }
        if self.waiting >= WAITING_MAX {
            respond.answer(Err(NodeError::Overloaded));
            return;
        }
        self.waiting += 1;
        let waiting = Waiting { count, respond };
        let Some(word) = word else {
            self.arrived.push(waiting);
            return;
        };
        // Its own read index: when the word stands for the heartbeat round, raft
        // answers it in this round's Ready, with no round to wait for.
        let id = self.next_confirmation_id();
        match node.read_index_confirmed_by(id, word.member, word.term) {
            Ok(confirmed) => {
                if confirmed {
                    crate::metrics::metrics()
                        .oracle_asks_confirmed_by_word
                        .inc();
                }
                self.confirming.insert(id, vec![waiting]);
            }
            Err(error) => self.fail(vec![waiting], crate::replica::propose_error(error)),
        }
    }

    fn next_confirmation_id(&mut self) -> u64 {
        let id = CONFIRMATION_ID_BIT | self.next_confirmation;
        self.next_confirmation += 1;
        id
    }

    /// Asks raft for one read index for every request that arrived since the last (before
    /// the group's Ready is taken, so the read goes out this round).
    pub fn confirm_arrived(&mut self, node: &mut RawNode) {
        if self.arrived.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.arrived);
        let id = self.next_confirmation_id();
        match node.read_index(id) {
            Ok(()) => {
                self.confirming.insert(id, batch);
            }
            Err(error) => self.fail(batch, crate::replica::propose_error(error)),
        }
    }

    /// A read index raft answered; returns `false` if it is not one of the oracle's.
    pub fn read_state(&mut self, state: &ReadState) -> bool {
        if state.request_id & CONFIRMATION_ID_BIT == 0 {
            return false;
        }
        if let Some(batch) = self.confirming.remove(&state.request_id) {
            match state.index {
                Some(index) => self.confirmed_at.push_back((index, batch)),
                None => self.fail(batch, NodeError::LeaderChanged),
            }
        }
        true
    }

    /// Hands out timestamps to the confirmed requests whose read index has applied, and
    /// proposes the next bound when the oracle asks for one. Call after the group's Ready
    /// is advanced (it may propose). `bound`: the applied bound; `applied`: the applied
    /// index; `me`: this member, the proposal's origin.
    pub fn serve(&mut self, node: &mut RawNode, bound: u64, applied: LogIndex, me: NodeId) {
        if node.role() != Role::Leader {
            self.fail_all(NodeError::NotLeader(node.leader()));
            return;
        }
        while self
            .confirmed_at
            .front()
            .is_some_and(|(index, _)| *index <= applied)
        {
            let (_, batch) = self.confirmed_at.pop_front().expect("checked above");
            self.ready.extend(batch);
        }
        let term = node.term();
        let bound = OracleBound::new(Timestamp(bound));
        let now_ms = wall_clock_ms();
        while let Some(next) = self.ready.front() {
            let allocation = self.oracle.allocate(term, bound, now_ms, next.count);
            if let Some(next_bound) = allocation.propose_bound {
                let write = WriteRequest {
                    origin: me.0,
                    request: Some(Request::OracleBound(OracleBoundWrite {
                        bound: next_bound.0,
                    })),
                    ..WriteRequest::default()
                };
                if node.propose(Bytes::from(write.encode_to_vec())).is_err() {
                    self.oracle.bound_not_proposed();
                }
            }
            let Some(granted) = allocation.granted else {
                break; // waits for the next bound to apply
            };
            let waiting = self.ready.pop_front().expect("checked above");
            self.waiting -= 1;
            let metrics = crate::metrics::metrics();
            metrics.oracle_timestamps.add(granted.count);
            metrics.oracle_requests.inc();
            waiting.respond.answer(Ok(granted));
        }
    }

    /// Whether requests wait for something this member must do (serve them once their
    /// read index applies, or once the next bound does).
    pub fn has_waiting(&self) -> bool {
        self.waiting > 0
    }

    /// Fails every waiting request.
    pub fn fail_all(&mut self, error: NodeError) {
        let mut all: Vec<Waiting> = std::mem::take(&mut self.arrived);
        all.extend(self.confirming.drain().flat_map(|(_, batch)| batch));
        all.extend(self.confirmed_at.drain(..).flat_map(|(_, batch)| batch));
        all.extend(self.ready.drain(..));
        self.fail(all, error);
    }

    fn fail(&mut self, batch: Vec<Waiting>, error: NodeError) {
        self.waiting -= batch.len();
        for waiting in batch {
            waiting.respond.answer(Err(error.clone()));
        }
    }
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}
