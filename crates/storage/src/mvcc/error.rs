//! What can go wrong in the state machine, in etcd's terms.

use super::Revision;

/// A request the state machine refuses; nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MvccError {
    /// The revision asked for was compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The store's compacted revision.
        compacted: Revision,
    },
    /// The revision asked for does not exist yet.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A lease with that id exists already.
    #[error("lease already exists")]
    LeaseExists,
    /// The lease does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// The NOSPACE alarm is raised: only reads, deletes and compaction are applied.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// The write's revision is not above the range's current one (it was chosen before a
    /// later write took a higher one), or the range takes its revisions from the oracle
    /// and the write came without one: the node proposes it again with a new timestamp.
    #[error("ostrakon: the write's revision {given:?} is not above the range's {current:?}")]
    StaleRevision {
        /// The revision the write came with (0: none).
        given: Revision,
        /// The range's current revision.
        current: Revision,
    },
    /// A key of the request is not in the range (a split moved it, or the request was
    /// routed by a stale view): the node routes it again.
    #[error("ostrakon: a key of the request is not in range {group}")]
    WrongRange {
        /// The range's group.
        group: u64,
    },
    /// A transaction across ranges holds a lock in the range: no other write changes its
    /// keys until the transaction ends (the node tries the write again shortly).
    #[error("ostrakon: the range is locked by a transaction across ranges")]
    Locked,
    /// The write was for one leadership's term and its entry is of another
    /// (`WriteRequest::only_in_term`): what it carries was read under a leadership that
    /// ended.
    #[error("ostrakon: a write for term {expected} landed in an entry of term {entry}")]
    OtherTerm {
        /// The term the write was for.
        expected: u64,
        /// Its entry's term.
        entry: u64,
    },
    /// The auth store refused the request.
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
}
