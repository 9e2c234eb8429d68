//! Messages exchanged between the members of one group.

use crate::ids::{GroupId, LogIndex, NodeId, Term};
use crate::types::{Entry, SnapshotMeta};

/// A message from one member of a group to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The group; a node hosting many groups routes on it.
    pub group: GroupId,
    /// The sender.
    pub from: NodeId,
    /// The recipient.
    pub to: NodeId,
    /// The sender's term (for pre-votes: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// Why a follower refused an append, with a hint that lets the leader skip a whole
/// term of mismatching entries at once instead of probing one index at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RejectHint {
    /// The follower's last index, or the index it checked, whichever is lower.
    pub index: LogIndex,
    /// The term of the follower's entry at `index`.
    pub term: Term,
}

/// The kinds of messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Leader → follower: append `entries` after (prev_index, prev_term).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: LogIndex,
        /// Term of that entry; the follower must have it or reject.
        prev_term: Term,
        /// Entries to append; possibly empty (a probe).
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: LogIndex,
    },
    /// Follower → leader: answer to `Append` or `InstallSnapshot`.
    AppendResponse {
        /// On success, the index the follower's log now matches up to. On rejection, the
        /// `prev_index` that did not match.
        index: LogIndex,
        /// Present when the append was rejected.
        reject: Option<RejectHint>,
    },
    /// Candidate → voter: vote for me (or, with `pre_vote`, would you vote for me?).
    RequestVote {
        /// A pre-vote changes no state on either side.
        pre_vote: bool,
        /// The candidate's last log index.
        last_index: LogIndex,
        /// The candidate's last log term.
        last_term: Term,
        /// Set during leadership transfer: voters disregard their leader lease.
        transfer: bool,
    },
    /// Voter → candidate.
    VoteResponse {
        /// Answers a pre-vote.
        pre_vote: bool,
        /// Whether the vote is granted.
        granted: bool,
    },
    /// Leader → follower: I am alive; here is the commit index you may apply up to.
    Heartbeat {
        /// min(leader commit, follower's match): never beyond what the follower has.
        commit: LogIndex,
        /// The read-index round this heartbeat confirms (0 = none).
        read_round: u64,
        /// The leader's tick count when it sent this heartbeat (for lease reads).
        sent_tick: u64,
        /// The group is idle and the leader stops ticking: a follower that holds every
        /// entry up to `commit` stops too (quiescence), until a message wakes it or its
        /// runtime reports the leader's node down.
        quiesce: bool,
    },
    /// Follower → leader.
    HeartbeatResponse {
        /// Echo of the heartbeat's `read_round`.
        read_round: u64,
        /// Echo of the heartbeat's `sent_tick`.
        sent_tick: u64,
    },
    /// Leader → follower: install the snapshot described here; the runtime ships the bytes.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
    },
    /// Leader → transfer target: start an election now, ignoring leases.
    TimeoutNow,
    /// Follower → leader: confirm leadership for a read and tell me the commit index.
    ReadIndex {
        /// The follower's request id, echoed back.
        request_id: u64,
    },
    /// Leader → follower: the read may be served once the follower applied `index`.
    ReadIndexResponse {
        /// Echo of the request id.
        request_id: u64,
        /// The read index; `None` when the leader could not serve it (it lost leadership).
        index: Option<LogIndex>,
    },
}

impl MessageBody {
    /// Messages a leader sends to replicate its log. They may leave before the leader's
    /// own write of the same entries is durable (thesis 10.2.1): the leader counts itself
    /// only once its write completes.
    pub fn may_send_before_persist(&self) -> bool {
        matches!(
            self,
            MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
                | MessageBody::TimeoutNow
        )
    }

    /// A short name for logs and traces.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::RequestVote { pre_vote: true, .. } => "RequestPreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Heartbeat { quiesce: true, .. } => "QuiesceHeartbeat",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
        }
    }
}
