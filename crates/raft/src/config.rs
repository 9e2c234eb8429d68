//! Per-group configuration, validated before a group starts.

use crate::ids::{GroupId, NodeId};

/// How the leader confirms that it still leads before answering a linearizable read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// ReadIndex: a heartbeat round to a quorum confirms leadership for every read queued
    /// before the round started. Safe without any assumption about clocks.
    #[default]
    ReadIndex,
    /// Lease-based: a leader that heard from a quorum within the last election timeout
    /// answers at once. Saves a round trip but relies on bounded clock drift between
    /// members, and is only safe with check-quorum (validated).
    LeaseBased,
}

/// Configuration of one raft group on one node.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id. Must not be `NodeId::NONE`.
    pub id: NodeId,
    /// The group this instance belongs to; stamped on every message it sends.
    pub group: GroupId,
    /// Ticks without hearing from a leader before a follower starts an election. The
    /// actual timeout is drawn at random from `[election_ticks, 2 * election_ticks)`
    /// using the caller's randomness (see `RawNode::set_randomness`). Default 10.
    pub election_ticks: u32,
    /// Ticks between the leader's heartbeats. Must be below `election_ticks`
    /// (typically a tenth of it). Default 1.
    pub heartbeat_ticks: u32,
    /// Pre-vote (thesis 9.6): a candidate first asks whether it could win, without bumping
    /// its term, so a node rejoining after a partition does not depose a healthy leader.
    /// Default true.
    pub pre_vote: bool,
    /// Check-quorum: a leader that has not heard from a quorum within an election timeout
    /// steps down, and followers that heard from a leader within that timeout ignore vote
    /// requests. Default true.
    pub check_quorum: bool,
    /// How linearizable reads are confirmed. Default `ReadMode::ReadIndex`.
    pub read_mode: ReadMode,
    /// Bound on the number of append messages in flight to one follower in the replicate
    /// state (the pipeline window). Default 256.
    pub inflight_msgs_max: usize,
    /// Bound on the payload bytes of the entries in one append message. At least one entry
    /// is always sent, however large. Default 1 MiB.
    pub append_bytes_max: u64,
    /// Bound on the number of entries in one append message. Default 4096.
    pub append_entries_max: usize,
    /// Bound on the payload bytes of committed entries handed out in one `Ready`.
    /// At least one entry is always handed out. Default 16 MiB.
    pub apply_bytes_max: u64,
    /// Bound on proposals not yet committed, in payload bytes; beyond it proposals are
    /// refused with `ProposeError::Overloaded` instead of growing memory. Default 64 MiB.
    pub uncommitted_bytes_max: u64,
    /// A leadership transfer that has not completed within this many ticks is abandoned
    /// and the leader accepts proposals again. Default: equal to `election_ticks`.
    pub transfer_timeout_ticks: u32,
    /// Quiescence: once every member holds and knows every committed entry and nothing
    /// is pending, the leader stops ticking and heartbeating, and so do its followers,
    /// until a message or a proposal wakes the group. Only correct when the runtime
    /// reports nodes whose process is down (`RawNode::report_node_down`), since a
    /// quiesced follower no longer times out by itself. Default false.
    pub quiesce: bool,
    /// Knob for the simulator's self-test only: deliberately break one protocol rule.
    #[cfg(feature = "planted-bugs")]
    pub planted_bug: Option<PlantedBug>,
}

/// A deliberate protocol violation used to prove that the simulator's checkers catch bugs.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Acknowledge appended entries (and count the leader's own) before they are durable.
    AckBeforePersist,
    /// Answer read-index requests from local state without confirming leadership.
    ReadWithoutReadIndex,
    /// Commit entries of an earlier term by counting replicas (the Figure 8 mistake).
    CommitPreviousTerm,
    /// Send votes before persisting them, and leave the vote out of the hard state.
    VoteNotPersisted,
    /// Keep conflicting entries instead of truncating the log on a conflict.
    NoTruncateOnConflict,
    /// A leader woken from quiescence keeps the lease evidence it had before it slept,
    /// though its followers may have voted for another leader meanwhile.
    QuiescedLeaseKept,
    /// A quiesced follower ignores the report that its leader's node is down, so the
    /// group never elects a new leader.
    NodeDownIgnored,
    /// A read index confirmed by a member's word (`RawNode::read_index_confirmed_by`)
    /// takes that word whatever term it was given in, though the member may have voted
    /// for a later leader since.
    ConfirmationIgnoresTerm,
}

impl Config {
    /// A configuration with every default filled in.
    pub fn new(id: NodeId, group: GroupId) -> Config {
        Config {
            id,
            group,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::ReadIndex,
            inflight_msgs_max: 256,
            append_bytes_max: 1 << 20,
            append_entries_max: 4096,
            apply_bytes_max: 16 << 20,
            uncommitted_bytes_max: 64 << 20,
            transfer_timeout_ticks: 10,
            quiesce: false,
            #[cfg(feature = "planted-bugs")]
            planted_bug: None,
        }
    }

    /// Checks the relationships between fields; the error says what to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.id.is_some() {
            return Err(ConfigError(
                "id must be non-zero: NodeId(0) means \"no node\"".into(),
            ));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError("heartbeat_ticks must be at least 1".into()));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({}); \
                 use about ten heartbeats per election timeout",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.inflight_msgs_max == 0 {
            return Err(ConfigError("inflight_msgs_max must be at least 1".into()));
        }
        if self.append_entries_max == 0 {
            return Err(ConfigError("append_entries_max must be at least 1".into()));
        }
        if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            return Err(ConfigError(
                "read_mode LeaseBased requires check_quorum = true: without it a deposed \
                 leader cannot know that its lease expired"
                    .into(),
            ));
        }
        if self.transfer_timeout_ticks == 0 {
            return Err(ConfigError(
                "transfer_timeout_ticks must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether the planted bug `bug` is active. Always false without the feature.
    #[allow(unused_variables)]
    #[inline]
    pub(crate) fn has_bug(&self, bug: BugKind) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            return self.planted_bug.map(BugKind::from) == Some(bug);
        }
        #[allow(unreachable_code)]
        false
    }
}

/// Feature-independent mirror of `PlantedBug`, so call sites compile either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BugKind {
    AckBeforePersist,
    ReadWithoutReadIndex,
    CommitPreviousTerm,
    VoteNotPersisted,
    NoTruncateOnConflict,
    QuiescedLeaseKept,
    NodeDownIgnored,
    ConfirmationIgnoresTerm,
}

#[cfg(feature = "planted-bugs")]
impl From<PlantedBug> for BugKind {
    fn from(bug: PlantedBug) -> BugKind {
        match bug {
            PlantedBug::AckBeforePersist => BugKind::AckBeforePersist,
            PlantedBug::ReadWithoutReadIndex => BugKind::ReadWithoutReadIndex,
            PlantedBug::CommitPreviousTerm => BugKind::CommitPreviousTerm,
            PlantedBug::VoteNotPersisted => BugKind::VoteNotPersisted,
            PlantedBug::NoTruncateOnConflict => BugKind::NoTruncateOnConflict,
            PlantedBug::QuiescedLeaseKept => BugKind::QuiescedLeaseKept,
            PlantedBug::NodeDownIgnored => BugKind::NodeDownIgnored,
            PlantedBug::ConfirmationIgnoresTerm => BugKind::ConfirmationIgnoresTerm,
        }
    }
}

/// A configuration that cannot work; the message says which field to change and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid raft config: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::new(NodeId(1), GroupId(1)).validate().unwrap();
    }

    #[test]
    fn heartbeat_must_be_below_election() {
        let mut config = Config::new(NodeId(1), GroupId(1));
        config.heartbeat_ticks = 10;
        let err = config.validate().unwrap_err();
        assert!(err
            .0
            .contains("election_ticks (10) must be greater than heartbeat_ticks (10)"));
    }

    #[test]
    fn lease_reads_require_check_quorum() {
        let mut config = Config::new(NodeId(1), GroupId(1));
        config.read_mode = ReadMode::LeaseBased;
        config.check_quorum = false;
        assert!(config
            .validate()
            .unwrap_err()
            .0
            .contains("requires check_quorum"));
    }

    #[test]
    fn zero_id_is_refused() {
        let config = Config::new(NodeId::NONE, GroupId(1));
        assert!(config.validate().is_err());
    }
}
