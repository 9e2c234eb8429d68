//! The in-memory raft log: entries after the last snapshot plus the commit, apply and
//! persistence cursors. The application persists what `Ready` hands out; on restart it
//! hands the durable state back (as etcd's MemoryStorage does, the log since the last
//! compaction lives in memory).

use crate::ids::{LogIndex, Term};
use crate::types::{Entry, SnapshotMeta};

/// The log of one group.
///
/// Invariants, asserted where they change:
/// `snapshot.index <= applied <= committed <= last_index()`,
/// `persisted <= last_index()`, and `entries[k].index == snapshot.index + 1 + k`.
#[derive(Debug)]
pub struct RaftLog {
    /// The latest snapshot; entries up to and including its index are compacted away.
    snapshot: SnapshotMeta,
    /// Entries `(snapshot.index, last_index()]`, contiguous.
    entries: Vec<Entry>,
    /// Highest index known to be committed.
    committed: LogIndex,
    /// Highest index handed to the application to apply.
    applied: LogIndex,
    /// Highest index known to be durable locally.
    persisted: LogIndex,
    /// First index not yet handed out in a `Ready` for persisting.
    unstable_from: LogIndex,
    /// A snapshot received from the leader that the application must install.
    pending_snapshot: Option<SnapshotMeta>,
    /// What `entries` weigh in memory (`entry_bytes` of each): the runtime bounds the
    /// sum over its groups.
    bytes: u64,
}

/// What an entry held in the log weighs: its payload and its place in the vector.
fn entry_bytes(entry: &Entry) -> u64 {
    entry.payload_bytes() + std::mem::size_of::<Entry>() as u64
}

fn entries_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(entry_bytes).sum()
}

impl RaftLog {
    /// A log restored from durable state: the latest snapshot, the entries after it, the
    /// persisted commit index and the index the application has applied up to.
    pub fn restore(
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
        committed: LogIndex,
        applied: LogIndex,
    ) -> RaftLog {
        for (k, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot.index.plus(k as u64 + 1),
                "restored entries must be contiguous after the snapshot"
            );
        }
        let last = entries.last().map_or(snapshot.index, |e| e.index);
        let committed = committed.max(snapshot.index);
        assert!(
            committed <= last,
            "committed {committed:?} beyond durable log end {last:?}"
        );
        let applied = applied.max(snapshot.index);
        assert!(
            applied <= committed,
            "applied {applied:?} beyond committed {committed:?}"
        );
        RaftLog {
            snapshot,
            bytes: entries_bytes(&entries),
            entries,
            committed,
            applied,
            persisted: last,
            unstable_from: last.next(),
            pending_snapshot: None,
        }
    }

    /// What the entries held in memory weigh.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The first index still in the log (after the snapshot).
    pub fn first_index(&self) -> LogIndex {
        self.snapshot.index.next()
    }

    /// The last index in the log, or the snapshot index when there are no entries.
    pub fn last_index(&self) -> LogIndex {
        self.entries.last().map_or(self.snapshot.index, |e| e.index)
    }

    /// The term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term of the entry at `index`: `None` when compacted away or beyond the end.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The entry at `index`, if present.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot.index || index > self.last_index() {
            return None;
        }
        let entry = &self.entries[(index.0 - self.first_index().0) as usize];
        debug_assert_eq!(entry.index, index);
        Some(entry)
    }

    /// Whether the log has an entry at `index` with `term`.
    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft's "at least as up-to-date" rule (5.4.1): compare last terms, then lengths.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Highest committed index.
    pub fn committed(&self) -> LogIndex {
        self.committed
    }

    /// Highest index handed out for applying.
    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    /// Highest index durable locally.
    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Entries in `[lo, hi)`, stopping early once `bytes_max` payload bytes or
    /// `count_max` entries are collected (always at least one entry if the range is
    /// non-empty). `None` if `lo` is compacted away.
    pub fn slice(
        &self,
        lo: LogIndex,
        hi: LogIndex,
        bytes_max: u64,
        count_max: usize,
    ) -> Option<Vec<Entry>> {
        if lo < self.first_index() {
            return None;
        }
        let hi = hi.min(self.last_index().next());
        if lo >= hi {
            return Some(Vec::new());
        }
        let base = self.first_index().0;
        let range = &self.entries[(lo.0 - base) as usize..(hi.0 - base) as usize];
        let mut total_bytes = 0u64;
        let mut taken = 0usize;
        for entry in range.iter().take(count_max) {
            total_bytes += entry.payload_bytes();
            if taken > 0 && total_bytes > bytes_max {
                break;
            }
            taken += 1;
        }
        Some(range[..taken].to_vec())
    }

    /// Appends entries created by this node as leader. They follow the last entry.
    pub fn append_own(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.last_index().next(),
            "leader appends must be contiguous"
        );
        assert!(
            entry.term >= self.last_term(),
            "leader appends must not go back in term"
        );
        self.bytes += entry_bytes(&entry);
        self.entries.push(entry);
    }

    /// The first index in `entries` whose term differs from ours (or that we lack), if any.
    /// Entries before it are already in the log and are skipped.
    pub fn find_conflict(&self, entries: &[Entry]) -> Option<LogIndex> {
        entries
            .iter()
            .find(|e| !self.matches(e.index, e.term))
            .map(|e| e.index)
    }

    /// Writes `entries` (from a leader) into the log, truncating a conflicting suffix.
    /// The caller has checked that the entry before `entries[0]` matches.
    pub fn append_from_leader(&mut self, entries: &[Entry], keep_conflicts: bool) {
        let Some(conflict) = self.find_conflict(entries) else {
            return;
        };
        assert!(
            conflict > self.committed,
            "conflict at {conflict:?} would overwrite committed entries (committed {:?})",
            self.committed
        );
        let start = (conflict.0 - entries[0].index.0) as usize;
        if keep_conflicts {
            // Planted bug: keep our conflicting entries, append only beyond our end.
            let last = self.last_index();
            for entry in &entries[start..] {
                if entry.index > last {
                    self.bytes += entry_bytes(entry);
                    self.entries.push(entry.clone());
                }
            }
            self.unstable_from = self.unstable_from.min(last.next());
            return;
        }
        self.truncate_from(conflict);
        self.bytes += entries_bytes(&entries[start..]);
        self.entries.extend_from_slice(&entries[start..]);
    }

    fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.snapshot.index,
            "cannot truncate into the snapshot"
        );
        assert!(
            index <= self.last_index().next(),
            "truncation beyond the end"
        );
        let keep = (index.0 - self.first_index().0) as usize;
        self.bytes -= entries_bytes(&self.entries[keep..]);
        self.entries.truncate(keep);
        if self.persisted >= index {
            // The durable copy of these entries is now stale; the application overwrites
            // it when it persists the replacements.
            self.persisted = index.prev();
        }
        self.unstable_from = self.unstable_from.min(index);
    }

    /// Raises the commit index (never lowers it).
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index:?} beyond last index {:?}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Fast backtracking (etcd's findConflictByTerm): the largest index `<= index` whose
    /// term is `<= term`. Entries after it cannot match the log the hint came from.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut index = index.min(self.last_index());
        while index > self.snapshot.index {
            match self.term(index) {
                Some(t) if t <= term => return index,
                _ => index = index.prev(),
            }
        }
        index
    }

    /// Installs a snapshot from the leader: the log becomes empty after it.
    pub fn restore_snapshot(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.index > self.committed,
            "snapshot {:?} not ahead of commit {:?}",
            meta.index,
            self.committed
        );
        self.entries = Vec::new();
        self.bytes = 0;
        self.committed = meta.index;
        self.applied = meta.index;
        self.persisted = meta.index;
        self.unstable_from = meta.index.next();
        self.snapshot = meta.clone();
        self.pending_snapshot = Some(meta);
    }

    /// Drops entries up to `meta.index`, which the application has captured in a snapshot.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.index <= self.applied,
            "compacting {:?} beyond applied {:?}",
            meta.index,
            self.applied
        );
        if meta.index <= self.snapshot.index {
            return;
        }
        assert_eq!(
            self.term(meta.index),
            Some(meta.term),
            "snapshot term must match the log"
        );
        let drop_count = (meta.index.0 - self.snapshot.index.0) as usize;
        self.bytes -= entries_bytes(&self.entries[..drop_count]);
        self.entries.drain(..drop_count);
        // A log that was long keeps its vector's room otherwise (100,000 entries of a
        // busy range are megabytes with nothing in them).
        if self.entries.capacity() > 2 * self.entries.len() + 1024 {
            self.entries.shrink_to(2 * self.entries.len() + 1024);
        }
        self.snapshot = meta;
    }

    // --- Ready bookkeeping --------------------------------------------------------------

    /// Whether entries or a snapshot wait to be persisted or applied.
    pub fn has_ready_work(&self) -> bool {
        self.pending_snapshot.is_some()
            || self.unstable_from <= self.last_index()
            || self.committed > self.applied
    }

    /// Takes the snapshot to install, if any.
    pub fn take_pending_snapshot(&mut self) -> Option<SnapshotMeta> {
        self.pending_snapshot.take()
    }

    /// Entries not yet handed out for persisting; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let lo = self.unstable_from;
        let hi = self.last_index().next();
        self.unstable_from = hi;
        if lo >= hi {
            return Vec::new();
        }
        let base = self.first_index().0;
        self.entries[(lo.0 - base) as usize..].to_vec()
    }

    /// Committed entries not yet handed out for applying, up to `bytes_max`.
    pub fn take_committed(&mut self, bytes_max: u64) -> Vec<Entry> {
        let entries = self
            .slice(
                self.applied.next(),
                self.committed.next(),
                bytes_max,
                usize::MAX,
            )
            .expect("entries after applied are never compacted");
        if let Some(last) = entries.last() {
            self.applied = last.index;
        }
        entries
    }

    /// Everything handed out so far is durable now.
    pub fn mark_persisted(&mut self) {
        self.persisted = self.unstable_from.prev();
        assert!(self.persisted <= self.last_index());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Empty,
        }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(k, &t)| entry(k as u64 + 1, t))
            .collect();
        RaftLog::restore(SnapshotMeta::default(), entries, LogIndex(0), LogIndex(0))
    }

    #[test]
    fn conflict_truncates_suffix() {
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        log.append_from_leader(&[entry(3, 3), entry(4, 3), entry(5, 3)], false);
        let terms: Vec<u64> = (1..=5).map(|i| log.term(LogIndex(i)).unwrap().0).collect();
        assert_eq!(terms, vec![1, 1, 3, 3, 3]);
        assert_eq!(
            log.persisted(),
            LogIndex(2),
            "overwritten entries are no longer durable"
        );
    }

    #[test]
    fn matching_prefix_is_not_rewritten() {
        let mut log = log_with_terms(&[1, 1, 2]);
        log.take_unstable();
        log.mark_persisted();
        log.append_from_leader(&[entry(2, 1), entry(3, 2)], false);
        assert!(log.take_unstable().is_empty(), "nothing new to persist");
    }

    #[test]
    fn find_conflict_by_term_skips_whole_terms() {
        let log = log_with_terms(&[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]);
        // Leader's hint: follower has term 5 entries up to 7; find largest index with term <= 5.
        assert_eq!(
            log.find_conflict_by_term(LogIndex(10), Term(5)),
            LogIndex(7)
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(10), Term(3)),
            LogIndex(3)
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(10), Term(0)),
            LogIndex(0)
        );
    }

    #[test]
    fn slice_respects_byte_and_count_limits() {
        let entries: Vec<Entry> = (1..=5)
            .map(|i| Entry {
                term: Term(1),
                index: LogIndex(i),
                payload: EntryPayload::Normal(bytes::Bytes::from(vec![0u8; 10])),
            })
            .collect();
        let log = RaftLog::restore(SnapshotMeta::default(), entries, LogIndex(0), LogIndex(0));
        assert_eq!(
            log.slice(LogIndex(1), LogIndex(6), 25, 100).unwrap().len(),
            2
        );
        assert_eq!(
            log.slice(LogIndex(1), LogIndex(6), 1, 100).unwrap().len(),
            1,
            "always one"
        );
        assert_eq!(
            log.slice(LogIndex(1), LogIndex(6), 1000, 3).unwrap().len(),
            3
        );
    }

    #[test]
    fn compaction_keeps_terms_answerable_at_the_boundary() {
        let mut log = log_with_terms(&[1, 2, 3]);
        log.commit_to(LogIndex(3));
        log.take_committed(u64::MAX);
        log.compact(SnapshotMeta {
            index: LogIndex(2),
            term: Term(2),
            conf_state: Default::default(),
        });
        assert_eq!(log.term(LogIndex(2)), Some(Term(2)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert_eq!(log.first_index(), LogIndex(3));
        assert!(log.slice(LogIndex(2), LogIndex(4), u64::MAX, 10).is_none());
    }

    #[test]
    fn the_log_weighs_what_it_holds_through_appends_truncations_and_compactions() {
        let with_data = |index: u64, term: u64, len: usize| Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Normal(bytes::Bytes::from(vec![7u8; len])),
        };
        let slot = std::mem::size_of::<Entry>() as u64;
        let mut log = RaftLog::restore(
            SnapshotMeta::default(),
            Vec::new(),
            LogIndex(0),
            LogIndex(0),
        );
        assert_eq!(log.bytes(), 0);
        log.append_own(with_data(1, 1, 100));
        log.append_own(with_data(2, 1, 200));
        log.append_own(with_data(3, 1, 300));
        assert_eq!(log.bytes(), 600 + 3 * slot);
        // A leader of term 2 replaces entry 3 with one of 50 bytes, and adds one of 10.
        log.append_from_leader(&[with_data(3, 2, 50), with_data(4, 2, 10)], false);
        assert_eq!(log.bytes(), 360 + 4 * slot);
        log.commit_to(LogIndex(4));
        log.take_committed(u64::MAX);
        log.compact(SnapshotMeta {
            index: LogIndex(2),
            term: Term(1),
            ..SnapshotMeta::default()
        });
        assert_eq!(log.bytes(), 60 + 2 * slot);
        let restored = RaftLog::restore(
            SnapshotMeta::default(),
            vec![with_data(1, 1, 5), with_data(2, 1, 6)],
            LogIndex(0),
            LogIndex(0),
        );
        assert_eq!(restored.bytes(), 11 + 2 * slot);
        log.restore_snapshot(SnapshotMeta {
            index: LogIndex(9),
            term: Term(2),
            ..SnapshotMeta::default()
        });
        assert_eq!(log.bytes(), 0);
    }

    #[test]
    #[should_panic(expected = "would overwrite committed entries")]
    fn overwriting_committed_entries_is_a_bug() {
        let mut log = log_with_terms(&[1, 1]);
        log.commit_to(LogIndex(2));
        log.append_from_leader(&[entry(2, 2)], false);
    }
}
