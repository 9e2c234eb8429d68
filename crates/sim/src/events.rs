//! The event queue: virtual time in microseconds, ties broken by insertion order so a
//! seed replays exactly.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use ostrakon_check::OpId;
use ostrakon_raft::{GroupId, Message, NodeId};

use crate::kv::KvState;
use crate::node::Request;

/// A client's view of how a request ended.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Done, with the register model's output.
    Ok(ostrakon_check::RegisterOutput),
    /// Timestamps from the oracle, with the granting node's word of each range it
    /// holds, read as it granted them (the node's grant carries the word of the ranges
    /// the ask names: those whose fresh reads wait for the fetch).
    Timestamps(
        ostrakon_check::TimestampGrant,
        Vec<(ostrakon_raft::GroupId, crate::node::AskWord)>,
    ),
    /// A command of two-phase commit applied.
    Txn(crate::txn_kv::TxnApplied),
    /// A read at a revision: the range's span when it read, and each register in it
    /// that has a version (at the revision: None if none at or below it).
    Scanned {
        /// The span read.
        descriptor: ostrakon_ranges::RangeDescriptor,
        /// The registers' values at the revision.
        values: Vec<(u64, Option<u64>)>,
    },
    /// A watcher's round in one range.
    Watched(crate::clients::RangeWatchAnswer),
    /// Definitely not done: the key is not in the range the client sent it to (split
    /// off, or the node holds no replica of that range). The descriptors of every range
    /// the answering node holds, for the client's directory.
    Mismatch {
        /// What the node knows.
        ranges: Vec<ostrakon_ranges::RangeDescriptor>,
    },
    /// Definitely not done: the write's revision is at or below a read the range served
    /// or a write it applied; it may take a new one.
    Stale,
    /// Definitely not done; try `leader_hint` if known.
    Failed {
        /// Where the node thinks the leader is.
        leader_hint: NodeId,
    },
}

/// Something that happens at a point in virtual time. Fields are named for what they hold.
#[allow(missing_docs)]
#[derive(Clone, Debug)]
pub enum Event {
    /// A node's clock ticks (ignored if the node's epoch moved on).
    Tick(NodeId, u64),
    /// A raft message arrives.
    Deliver(Message, Option<Box<KvState>>),
    /// A node-level liveness heartbeat arrives (one per node pair, whatever the groups).
    Ping { from: NodeId, to: NodeId },
    /// A node's disk finished persisting a replica's Ready.
    PersistDone(NodeId, GroupId, u64),
    /// A client request arrives at a node, for one range.
    Request {
        node: NodeId,
        range: GroupId,
        client: u64,
        op: OpId,
        request: Request,
    },
    /// A node's answer arrives at a client.
    Reply { client: u64, op: OpId, reply: Reply },
    /// A range leader's answer to a read barrier arrives at the follower that sent it:
    /// the index to read at once applied, or the reply for its client (a failure).
    BarrierAnswer {
        from: crate::node::BarrierFrom,
        answer: Result<ostrakon_raft::LogIndex, Reply>,
    },
    /// A client gives up waiting.
    ClientTimeout { client: u64, op: OpId },
    /// A node asks the oracle again for a fetch a non-leader refused (its request id).
    RetryRevisionFetch(u64),
    /// A client starts its next operation.
    ClientNext(u64),
    /// A slow bank client goes on with its transfer (its prepares, or its commit).
    ResumeTransfer {
        index: usize,
        txn: ostrakon_ranges::txn::TxnId,
    },
    /// A slow client sends its write, with the revision it got a while ago.
    SendWrite {
        client: u64,
        op: OpId,
        command: crate::kv::Command,
    },
    /// The transport reports how a snapshot stream from `from` to `to` ended.
    SnapshotReport {
        group: GroupId,
        from: NodeId,
        to: NodeId,
        delivered: bool,
    },
    /// A node crashes (ignored if its epoch moved on).
    Crash(NodeId, u64),
    /// A crashed node comes back.
    Restart(NodeId),
    /// The nemesis acts.
    Nemesis,
    /// The nemesis moves a range's leadership away right after its leader served a read
    /// at a revision: the next leader must learn that read's floor anew.
    TransferAfterRead(GroupId),
    /// A slow writer parked for its range's next leadership move sends its write now
    /// (if it was not sent already: `Simulation::parked_writes`).
    SendParkedWrite(OpId),
    /// A partition ends.
    HealPartition(u64),
    /// A slow disk recovers.
    DiskRecovers(NodeId, u64),
    /// A node removed from a range's group destroys its replica (and shuts down for
    /// good once it holds none).
    DestroyReplica(NodeId, GroupId),
    /// The merge driver looks at the merge in flight (`merges`).
    MergeStep,
    /// The faulty phase ends.
    HealAll,
    /// Clients stop issuing operations.
    StopClients,
}

struct Scheduled {
    at_us: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_us, self.seq) == (other.at_us, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.at_us, other.seq).cmp(&(self.at_us, self.seq))
    }
}

/// Pending events ordered by time, then by scheduling order.
#[derive(Default)]
pub struct EventQueue {
    heap: BinaryHeap<Scheduled>,
    next_seq: u64,
}

impl EventQueue {
    /// Schedules `event` at `at_us`.
    pub fn push(&mut self, at_us: u64, event: Event) {
        self.next_seq += 1;
        self.heap.push(Scheduled {
            at_us,
            seq: self.next_seq,
            event,
        });
    }

    /// The earliest event.
    pub fn pop(&mut self) -> Option<(u64, Event)> {
        self.heap.pop().map(|s| (s.at_us, s.event))
    }
}
