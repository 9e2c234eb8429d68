//! The replica runtime of an ostrakon node.
//!
//! One event loop thread ([`event_loop`]) owns every raft group hosted on the node and the
//! node's write-ahead log. It takes inputs (peer messages, proposals, read requests,
//! snapshot transfers) from one channel, ticks every group, and then handles the groups'
//! `Ready`s together: messages that may leave early are sent, all groups' entries and hard
//! states go into the WAL with one `fdatasync`, then the rest of the messages are sent and
//! committed entries are applied to each group's MVCC store. There is no task or thread
//! per group; everything carries its group id.
//!
//! [`NodeHandle`] is the way in for the client-facing server: propose a write (forwarded
//! to the leader when this node is not it), wait for a linearizable read point, read the
//! group's status. [`transport`] moves raft messages between nodes, batched per
//! destination node, and streams snapshots.

// tonic::Status is large, and it is what every gRPC handler returns.
#![allow(clippy::result_large_err)]

mod coalesce;
pub mod coalesced_io;
pub mod config;
mod consistent_point;
pub mod error;
pub mod event_loop;
pub mod events;
mod failpoints;
mod follow_membership;
pub mod handle;
pub mod host_cpu;
pub mod identity;
pub mod input;
pub mod layout;
mod leader_spread;
mod lease_expiry;
pub mod lessor;
pub mod liveness;
pub mod load_split;
pub mod local_directory;
mod log_budget;
pub mod member_word;
pub(crate) mod merge;
mod merge_coordinator;
mod merge_queue;
pub mod metrics;
pub mod node_load;
mod prepare_line;
pub mod range_work;
pub mod reconfig_check;
pub mod remote_load;
mod replica;
pub mod request_rate;
pub mod restore;
pub mod revisions;
pub mod routing;
mod size_split;
pub mod snapshot_files;
pub mod spans;
pub mod split;
pub mod status;
pub mod timestamps;
pub mod tls;
pub mod transport;
mod txn_coordinator;
mod txn_forgets;
mod txn_horizon;
mod txn_pusher;
pub(crate) mod write_gates;

pub use config::{member_id, NodeConfig};
pub use error::NodeError;
pub use handle::{GroupStatus, MemberDescription, NodeHandle};

/// The single group that covers the whole keyspace until ranges split.
pub const DEFAULT_GROUP: ostrakon_raft::GroupId = ostrakon_raft::GroupId(1);
/// The meta range's group (range 0): what is cluster-wide and no user keys. Today it
/// holds the timestamp oracle's bound.
pub const META_GROUP: ostrakon_raft::GroupId = ostrakon_raft::GroupId(0);

/// The user keys a new group's store holds: the first data range all of them; the meta
/// range none; a range a split creates none until the split or its first snapshot gives
/// it its span.
pub fn group_span(group: ostrakon_raft::GroupId) -> ostrakon_storage::mvcc::KeySpan {
    if group == DEFAULT_GROUP {
        ostrakon_storage::mvcc::KeySpan::whole()
    } else {
        ostrakon_storage::mvcc::KeySpan::none()
    }
}
