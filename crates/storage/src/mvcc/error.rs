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
    /// The auth store refused the request.
    #[error(transparent)]
    Auth(#[from] super::auth::AuthError),
}
