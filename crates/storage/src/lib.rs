//! Durable state of one ostrakon node.
//!
//! - [`wal`]: one write-ahead log shared by every raft group on the node. Entries and hard
//!   states of many groups go out in one write and one `fdatasync` (group commit).
//! - [`mvcc`]: the key-value state machine of one group, with etcd's revision semantics,
//!   on fjall. The applied index is written in the same atomic batch as the data.
//! - [`snapshot`]: point-in-time copies of a state machine, as files that can be streamed
//!   to a follower in chunks and installed atomically.
//! - [`etcd_backup`] (on [`bolt`], bbolt's file format): backups in etcd's own format,
//!   written for `etcdutl` and read from etcd; [`backup`] reads a backup of either kind.

pub mod backup;
pub mod bolt;
pub mod etcd_backup;
pub mod fatal;
pub mod mvcc;
pub mod snapshot;
pub mod wal;
