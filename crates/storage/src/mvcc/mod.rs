//! The key-value state machine of one raft group, with etcd's MVCC semantics, on fjall.
//!
//! Every range of a node keeps its versions in one shared data partition keyed by user
//! key, each store within its span (`span`), and its own state under its id in the shared
//! `local` partition (`local`): a split cuts a span and copies nothing.
//!
//! Every write transaction that changes something gets the next revision; each key keeps
//! its versions (`create_revision`, `mod_revision`, `version`) until compaction. Reads can
//! ask for any revision between the compacted one and the current one. The applied raft
//! index is written in the same atomic batch as the data it covers, so after a crash the
//! state machine resumes exactly after the last entry it applied.

pub mod auth;
pub(crate) mod compaction;
mod compactor;
mod error;
mod etcd;
mod events;
mod history;
pub(crate) mod keys;
pub(crate) mod latest;
mod local;
mod members;
mod request_keys;
mod span;
mod store;
pub mod txn_tables;
mod value;

pub use compactor::Compactor;
pub use error::MvccError;
pub use etcd::{
    adds_data, apply_write, etcd_status, evaluate_across, evaluate_revoke_across,
    held_off_by_locks, held_off_by_locks_unless_unlocking, locked_outcome, range, range_across,
    read_txn, read_txn_across, txn_is_read_only, txn_is_serializable, WriteOutcome,
};
pub use events::{EventSink, History, RevisionEvents};
pub use local::LOCAL_PARTITION;
pub use members::{MemberChange, MemberRegistry};
pub use request_keys::{txn_intervals, write_intervals, KeyInterval};
pub use span::{spans_cover, KeySpan};
pub use store::{
    checked_auth, AppliedState, FreezeMark, FrozenState, LeaseRecord, MvccStore, ReadView,
    SpanListener, WriteRules, WriteTxn, CHECKED_WHILE_AUTH_OFF, DATA_PARTITION,
    FIRST_SPLIT_RANGE_ID, NEVER_COMPACTED,
};
pub use value::StoredVersion;

/// An etcd revision: the store's logical clock, increased by one per write transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision(pub i64);

/// The revision of an empty store, as in etcd (the first write is revision 2).
pub const INITIAL_REVISION: Revision = Revision(1);

#[cfg(test)]
mod gate_tests;
#[cfg(test)]
mod shared_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
