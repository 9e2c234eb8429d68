//! What the simulated clients remember between operations.

use std::collections::BTreeMap;

use ostrakon_check::OpId;
use ostrakon_raft::{GroupId, NodeId};
use ostrakon_ranges::Directory;

/// Client ids from here on are timestamp clients (`id - TIMESTAMP_CLIENT_BASE` indexes
/// them); below it, register clients.
pub const TIMESTAMP_CLIENT_BASE: u64 = 1 << 32;

/// A client of the registers.
pub struct ClientState {
    /// Where it sends each range's requests.
    pub believed_leader: BTreeMap<GroupId, NodeId>,
    /// Which range holds which register (the range layer's routing cache).
    pub directory: Directory,
    /// Its operation in flight, if any (at most one).
    pub outstanding: Option<OpId>,
    /// The value it last saw on each register (the expected value of its next CAS).
    pub last_seen: BTreeMap<u64, Option<u64>>,
}

/// A client of the timestamp oracle.
pub struct TimestampClient {
    /// Where it sends requests.
    pub believed_leader: NodeId,
    /// Its request in flight, if any (at most one), in the timestamp history.
    pub outstanding: Option<OpId>,
}
