//! The range layer's deciding logic, as plain state machines without I/O, so that the
//! node runtime and the deterministic simulator run the same code.
//!
//! - [`descriptor`]: a range, its span and its generation.
//! - [`directory`]: the routing cache that maps keys to ranges.
//! - [`split`]: splitting a range, and the span check that keeps the left half from
//!   serving the keys that moved.
//! - [`merge`]: merging a range into its left neighbour: the merged range, and what
//!   each replica of the left range decides when the merge reaches it.
//! - [`leader_balance`]: which range leadership a node hands to another, so that every
//!   node leads about as many ranges.
//! - [`txn`]: writes across ranges, the replicated half of their two-phase commit: a
//!   range's locks and a primary range's transaction records.
//! - [`frozen_txn`]: the node's variant of those writes, where a transaction's lock
//!   freezes its whole range: what each replica decides as their commands apply.
//! - [`read_wait`]: the writes of a keyspace in ranges waiting for the oracle's
//!   revisions, one fetch in flight at a time, and the reads that wait for it.
//! - [`read_floor`]: the revision below which a range's leader takes no more writes,
//!   raised by every read at a revision.
//! - [`timestamp`]: the cluster-wide revision as a hybrid timestamp (milliseconds and a
//!   logical counter), as TiKV's placement driver hands them out.
//! - [`oracle`]: the timestamp oracle on range 0's leader: strictly increasing
//!   timestamps that survive leader changes and crashes, with the bound it may hand out
//!   below persisted through range 0's log in batches, so handing one out costs no disk
//!   write.
//! - [`watch_merge`]: which revisions a watcher of keys in several ranges may be sent:
//!   those every range has resolved, each revision whole.
#![deny(missing_docs)]

pub mod descriptor;
pub mod directory;
pub mod frozen_txn;
pub mod leader_balance;
pub mod merge;
pub mod oracle;
pub mod read_floor;
pub mod read_wait;
pub mod split;
pub mod timestamp;
pub mod txn;
pub mod watch_merge;

pub use descriptor::{RangeDescriptor, RangeId};
pub use directory::Directory;
#[cfg(feature = "planted-bugs")]
pub use oracle::OracleBug;
pub use oracle::{Allocation, Oracle, OracleBound, OracleConfig};
#[cfg(feature = "planted-bugs")]
pub use split::RangeBug;
pub use split::{split, SpanCheck, Split, SplitRefused, SplitRequest};
pub use timestamp::{Timestamp, TimestampRange};
