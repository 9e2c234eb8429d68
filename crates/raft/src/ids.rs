//! Newtypes for the numbers that must never be mixed up.

use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_newtype!(
    /// A member of a raft group. `NodeId(0)` is reserved for "none".
    NodeId,
    "n"
);
id_newtype!(
    /// A raft group (a range of the keyspace). Every message carries one.
    GroupId,
    "g"
);
id_newtype!(
    /// A raft term: a logical clock that increases with every election.
    Term,
    "t"
);
id_newtype!(
    /// A position in the replicated log. Index 0 is the empty prefix; entries start at 1.
    LogIndex,
    "i"
);

impl NodeId {
    /// The absent node: no leader, no vote.
    pub const NONE: NodeId = NodeId(0);

    /// Whether this id names a real node.
    pub fn is_some(self) -> bool {
        self != Self::NONE
    }
}

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one. Panics at zero: there is nothing before the empty prefix.
    pub fn prev(self) -> LogIndex {
        assert!(self.0 > 0, "LogIndex(0) has no predecessor");
        LogIndex(self.0 - 1)
    }

    /// `self + count`.
    pub fn plus(self, count: u64) -> LogIndex {
        LogIndex(self.0 + count)
    }
}
