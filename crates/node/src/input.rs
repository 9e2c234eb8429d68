//! What the event loop reacts to, and how it answers: the types every sender of inputs
//! (the node's handle, the peer transport, snapshot threads) shares with the loop, kept
//! in a leaf module so that none of them imports the loop.

use std::path::PathBuf;

use ostrakon_proto::peer::WriteRequest;
use ostrakon_raft::{ConfChange, ConfState, GroupId, LogIndex, Message, NodeId, SnapshotMeta};
use ostrakon_storage::mvcc::{FrozenState, WriteOutcome};
use tokio::sync::oneshot;

use crate::error::NodeError;

/// Where a proposer waits for its write's outcome.
pub type WriteResponder = oneshot::Sender<Result<WriteOutcome, NodeError>>;
/// Where a reader waits for its read index.
pub type ReadResponder = oneshot::Sender<Result<LogIndex, NodeError>>;
/// Where a fresh read of a range waits for its revision and the index to read at.
pub type FreshReadResponder = oneshot::Sender<Result<(LogIndex, u64), NodeError>>;

/// Who waits for a read index: a reader, or a fresh read that also gets its revision.
pub enum ReadWaiter {
    Index(ReadResponder),
    Fresh {
        respond: FreshReadResponder,
        revision: u64,
    },
}

impl ReadWaiter {
    pub fn answer(self, index: Result<LogIndex, NodeError>) {
        match self {
            ReadWaiter::Index(respond) => drop(respond.send(index)),
            ReadWaiter::Fresh { respond, revision } => {
                drop(respond.send(index.map(|index| (index, revision))))
            }
        }
    }
}

impl From<ReadResponder> for ReadWaiter {
    fn from(respond: ReadResponder) -> ReadWaiter {
        ReadWaiter::Index(respond)
    }
}

/// Where a membership change waits for the membership it produced.
pub type ConfResponder = oneshot::Sender<Result<ConfState, NodeError>>;

/// How sending a snapshot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSent {
    /// The receiver took it.
    Delivered,
    /// The stream failed (the receiver is down or busy, ...): raft sends it again.
    Failed,
    /// The receiver refused it: it overlaps another range there
    /// (`SnapshotVerdict::Overlaps`).
    RefusedAsOverlapping,
    /// No file holds it: a range's first snapshot is written when a follower first needs
    /// it, not by every member at every split.
    NoFile,
}

/// What a node did with a received snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotVerdict {
    /// Handed to raft (which may still find it stale and ignore it).
    Taken,
    /// Dropped: another range here holds some of its keys. Either that range has not
    /// applied the split that gave them to the snapshot's range (it catches up), or the
    /// snapshot predates a split of its range whose new range is here already: then only
    /// a snapshot taken after that split can go in, and its leader takes one.
    Overlaps(GroupId),
}

/// Everything the event loop reacts to.
pub enum Input {
    /// A raft message from a peer.
    Raft(Message),
    /// A client write to propose.
    Propose {
        /// The group.
        group: GroupId,
        /// The write, stamped with this node as origin.
        write: WriteRequest,
        /// Answered when applied, or on failure.
        respond: WriteResponder,
        /// Whether a plain write may wait in its range's line while a transaction holds
        /// the range; not one another member forwarded in a batch, whose answer the
        /// batch's other writes wait for (answered "locked" at once instead).
        may_wait: bool,
    },
    /// A linearizable read wants a read index.
    ReadIndex {
        /// The group.
        group: GroupId,
        /// Answered with the index to wait for.
        respond: ReadResponder,
    },
    /// A read at a revision of a range that takes its revisions from the oracle, on the
    /// range's leader: answered with a log index after which every write that can take a
    /// revision at or below the read's has applied (docs/RANGES.md, "the read-wait rule").
    ReadBarrier {
        /// The range.
        group: GroupId,
        /// Answered with the index to wait for.
        respond: ReadResponder,
        /// The word of the member that sent it, if another (`crate::member_word`).
        word: Option<crate::member_word::MemberWord>,
    },
    /// A linearizable read of a range that takes its revisions from the oracle, on the
    /// range's leader: answered with a revision R from a fetch started after it arrived
    /// and a log index after which every write of the range at or below R has applied
    /// (a read barrier at R; docs/RANGES.md, "the read-wait rule").
    FreshReadPoint {
        /// The range.
        group: GroupId,
        respond: FreshReadResponder,
    },
    /// A snapshot's data arrived and is durable at `path`; `message` is its InstallSnapshot.
    SnapshotReceived {
        /// The InstallSnapshot message.
        message: Message,
        /// The received file.
        path: PathBuf,
        /// The user keys the snapshot's range holds (None: a snapshot from before ranges
        /// recorded their span).
        span: Option<ostrakon_storage::mvcc::KeySpan>,
        /// The ranges merged into the snapshot's range (their replicas here go).
        absorbed: Vec<GroupId>,
        /// Told whether the node took it, for the sender (`SnapshotVerdict`).
        verdict: oneshot::Sender<SnapshotVerdict>,
    },
    /// A snapshot stream to `to` ended.
    SnapshotReport {
        /// The group.
        group: GroupId,
        /// The receiver.
        to: NodeId,
        /// How it ended.
        outcome: SnapshotSent,
        /// The index of the snapshot sent.
        index: LogIndex,
    },
    /// A snapshot file at `meta` is durable, and so is the state machine up to it: the
    /// raft log before it may go.
    SnapshotCreated {
        /// The group.
        group: GroupId,
        /// Its position.
        meta: SnapshotMeta,
        /// The file's size.
        file_bytes: u64,
    },
    /// The state machine is durable up to each of these positions (one sync of the
    /// engine, `log_budget`): each group's raft log before its position may go.
    LogsCompactable {
        /// Each group's position.
        metas: Vec<(GroupId, SnapshotMeta)>,
    },
    /// A snapshot file could not be written (logged where it failed): the group may
    /// start another.
    SnapshotFailed {
        /// The group.
        group: GroupId,
    },
    /// Hand leadership to `target` (this node must lead).
    TransferLeader {
        /// The group.
        group: GroupId,
        /// The voter to hand leadership to.
        target: NodeId,
        /// Refused if `target` is reported down (silent for an election timeout): a
        /// drain's moves, which must not wait on a member that died (the first range's
        /// move, as etcd's, starts regardless).
        only_to_a_live_voter: bool,
        /// Answered once the transfer has started (or could not).
        respond: tokio::sync::oneshot::Sender<Result<(), NodeError>>,
    },
    /// Change the group's membership (this node must lead).
    ChangeMembership {
        /// The group.
        group: GroupId,
        /// The change.
        change: ConfChange,
        /// Answered with the membership once the change applied (or why it could not).
        respond: ConfResponder,
    },
    /// Freeze the group's state for a backup (`Maintenance.Snapshot`).
    Freeze {
        /// The group.
        group: GroupId,
        /// Answered with the frozen state.
        respond: tokio::sync::oneshot::Sender<FrozenState>,
    },
    /// Freeze several groups' states in one round of the loop (a backup of a keyspace in
    /// ranges, while its transaction locks them all).
    FreezeEvery {
        /// The groups, in the order of the answer.
        groups: Vec<GroupId>,
        /// Answered with their frozen states, if this node holds every one.
        respond: tokio::sync::oneshot::Sender<Vec<FrozenState>>,
    },
    /// The group's raft status, with each follower's progress when this member leads.
    RaftStatus {
        /// The group.
        group: GroupId,
        /// Answered with the status.
        respond: tokio::sync::oneshot::Sender<ostrakon_raft::Status>,
    },
    /// Timestamps from the oracle (this node must lead the meta range).
    Timestamps {
        /// How many (at least one).
        count: u64,
        /// Answered with the timestamps, or why not.
        respond: crate::timestamps::TimestampResponder,
        /// The asking member's word of its meta term, if another member asked.
        word: Option<crate::member_word::MemberWord>,
    },
    /// The oracle's answer to a fetch of revisions for waiting writes
    /// (`revisions::RevisionFetcher`).
    RevisionsGranted {
        /// The fetch.
        fetch: u64,
        /// The timestamps, or why there are none.
        granted: Result<ostrakon_ranges::TimestampRange, NodeError>,
        /// The granter's word of ranges whose fresh reads the fetch is for
        /// (`NodeHandle::timestamps_vouched`).
        vouched: Vec<(GroupId, crate::member_word::MemberWord)>,
    },
    /// Messages to `to` could not be delivered.
    Unreachable(NodeId),
    /// A peer refused this member's messages: the cluster removed it.
    RemovedByPeer(NodeId),
    /// Stop: sync, persist, answer everyone waiting.
    Shutdown,
}

/// The sender half of the loop's input channel (bounded: `event_loop::INPUT_QUEUE_MAX`).
pub type InputSender = flume::Sender<Input>;

impl Input {
    /// A short name for logs: the raft message's kind, or the input's.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Input::Raft(message) => message.body.kind_name(),
            Input::Propose { .. } => "Propose",
            Input::ReadIndex { .. } => "ReadIndex",
            Input::ReadBarrier { .. } => "ReadBarrier",
            Input::FreshReadPoint { .. } => "FreshReadPoint",
            Input::SnapshotReceived { .. } => "SnapshotReceived",
            Input::SnapshotReport { .. } => "SnapshotReport",
            Input::SnapshotCreated { .. } => "SnapshotCreated",
            Input::SnapshotFailed { .. } => "SnapshotFailed",
            Input::LogsCompactable { .. } => "LogsCompactable",
            Input::TransferLeader { .. } => "TransferLeader",
            Input::ChangeMembership { .. } => "ChangeMembership",
            Input::Freeze { .. } => "Freeze",
            Input::FreezeEvery { .. } => "FreezeEvery",
            Input::RaftStatus { .. } => "RaftStatus",
            Input::Timestamps { .. } => "Timestamps",
            Input::RevisionsGranted { .. } => "RevisionsGranted",
            Input::Unreachable(_) => "Unreachable",
            Input::RemovedByPeer(_) => "RemovedByPeer",
            Input::Shutdown => "Shutdown",
        }
    }

    /// The group the input is for, if it is for one group.
    pub fn group(&self) -> Option<GroupId> {
        match self {
            Input::Raft(message) | Input::SnapshotReceived { message, .. } => Some(message.group),
            Input::Propose { group, .. }
            | Input::ReadIndex { group, .. }
            | Input::ReadBarrier { group, .. }
            | Input::FreshReadPoint { group, .. }
            | Input::SnapshotReport { group, .. }
            | Input::SnapshotCreated { group, .. }
            | Input::SnapshotFailed { group }
            | Input::TransferLeader { group, .. }
            | Input::ChangeMembership { group, .. }
            | Input::Freeze { group, .. }
            | Input::RaftStatus { group, .. } => Some(*group),
            Input::Timestamps { .. } => Some(crate::META_GROUP),
            Input::Unreachable(_)
            | Input::LogsCompactable { .. }
            | Input::FreezeEvery { .. }
            | Input::RemovedByPeer(_)
            | Input::RevisionsGranted { .. }
            | Input::Shutdown => None,
        }
    }
}
