//! Which ranges the node's periodic range tasks look at: splits by size
//! (`size_split`), splits by load (`load_split`), the pusher of stale transaction
//! locks (`txn_pusher`) and the horizons that forget aborted records (`txn_horizon`). A range is noticed where its state changes: a round of the
//! event loop that applied its entries or made this node its leader, or the first
//! request it serves after its load was last looked at. So each task looks at the
//! ranges that may need it, not at every range every second or two: with many ranges at
//! rest, those scans were most of what an idle node did (docs/RANGES.md, "Ranges in the
//! node at rest").

use std::collections::BTreeSet;
use std::sync::Mutex;

use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::MvccStore;

/// The ranges noticed for each task since it last looked.
#[derive(Debug, Default)]
pub struct RangeWork {
    /// Led here and past `--range-max-bytes` after a change.
    pub past_size: Noticed,
    /// Served a request (with a key) since their load was last looked at.
    pub served: Noticed,
    /// Led here and holding a transaction's lock after a change.
    pub locked: Noticed,
    /// Led here and keeping transaction records after a change (`txn_horizon`).
    pub recorded: Noticed,
}

impl RangeWork {
    /// After a change to `group`, a range this node leads (entries applied, or the
    /// leadership just won): notices it for the tasks its state calls for.
    pub fn after_change(&self, group: GroupId, store: &MvccStore, range_max_bytes: u64) {
        if range_max_bytes > 0 && store.live_bytes() > range_max_bytes {
            self.past_size.notice(group);
        }
        if store.has_txn_locks() {
            self.locked.notice(group);
        }
        if store.txn_outcome_count() > 0 {
            self.recorded.notice(group);
        }
    }
}

/// A set of ranges noticed for one task, taken whole when it looks.
#[derive(Debug, Default)]
pub struct Noticed {
    groups: Mutex<BTreeSet<GroupId>>,
}

impl Noticed {
    pub fn notice(&self, group: GroupId) {
        self.groups
            .lock()
            .expect("noticed ranges lock")
            .insert(group);
    }

    /// The ranges noticed since the last call.
    pub fn take(&self) -> BTreeSet<GroupId> {
        std::mem::take(&mut *self.groups.lock().expect("noticed ranges lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_noticed_twice_is_looked_at_once_and_only_until_taken() {
        let noticed = Noticed::default();
        noticed.notice(GroupId(7));
        noticed.notice(GroupId(3));
        noticed.notice(GroupId(7));
        assert_eq!(
            noticed.take().into_iter().collect::<Vec<_>>(),
            vec![GroupId(3), GroupId(7)]
        );
        assert!(noticed.take().is_empty());
    }
}
