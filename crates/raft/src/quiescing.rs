//! The state of a leader's quiescing heartbeats: plain data, so that `Raft` can hold it
//! without this module depending on `Raft` (the protocol is in `quiesce`).

use std::collections::BTreeSet;

use crate::ids::NodeId;

/// A leader's quiescing heartbeats in flight.
#[derive(Clone, Debug)]
pub(crate) struct Quiescing {
    /// The tick the first quiescing heartbeat was sent at: acknowledgements of heartbeats
    /// sent before it do not count.
    pub(crate) since_tick: u64,
    /// Members that acknowledged a quiescing heartbeat.
    pub(crate) acked: BTreeSet<NodeId>,
}
