//! The read-index bookkeeping a group keeps (the leader's pending reads and heartbeat
//! rounds, a follower's forwarded requests): plain data, so that `Raft` can hold it
//! without this module depending on `Raft` (the protocol is in `read_index`).

use std::collections::{BTreeMap, VecDeque};

use crate::ids::{LogIndex, NodeId};
use crate::types::ReadState;

#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    pub(crate) from: NodeId,
    pub(crate) request_id: u64,
    pub(crate) index: LogIndex,
}

/// Read-index bookkeeping of one group.
#[derive(Debug)]
pub(crate) struct ReadIndexState {
    /// Reads that arrived before the leader committed an entry of its term: until then
    /// it does not know the commit index of its predecessor.
    pub(crate) waiting_for_commit: Vec<PendingRead>,
    /// Reads to be confirmed by the next heartbeat round.
    pub(crate) unsent: Vec<PendingRead>,
    /// Reads whose round was sent, in round order.
    pub(crate) in_flight: VecDeque<(u64, PendingRead)>,
    /// The next round number; rounds start at 1 (0 in a heartbeat means "no round").
    pub(crate) next_round: u64,
    /// The highest round each member acknowledged.
    pub(crate) acked_rounds: BTreeMap<NodeId, u64>,
    /// Follower side: request ids forwarded to the leader, oldest first.
    pub(crate) forwarded: VecDeque<u64>,
    /// Answers to hand to the application in the next `Ready`.
    pub(crate) ready: Vec<ReadState>,
}

impl Default for ReadIndexState {
    fn default() -> Self {
        ReadIndexState {
            waiting_for_commit: Vec::new(),
            unsent: Vec::new(),
            in_flight: VecDeque::new(),
            next_round: 1,
            acked_rounds: BTreeMap::new(),
            forwarded: VecDeque::new(),
            ready: Vec::new(),
        }
    }
}

impl ReadIndexState {
    /// The latest round sent whose reads are still unconfirmed (0 if none): periodic
    /// heartbeats carry it so that a lost heartbeat does not strand reads.
    pub(crate) fn round_in_flight(&self) -> u64 {
        self.in_flight.back().map_or(0, |(round, _)| *round)
    }

    pub(crate) fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// No read waits for anything: a group with reads in progress must not quiesce.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiting_for_commit.is_empty()
            && self.unsent.is_empty()
            && self.in_flight.is_empty()
            && self.ready.is_empty()
    }
}
