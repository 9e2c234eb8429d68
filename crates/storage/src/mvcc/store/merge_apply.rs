//! How ranges apply a merge (docs/RANGES.md, "Merges"), identically on every replica.
//!
//! The right range freezes first: from its freeze entry on it applies nothing but its
//! thaw, so every replica's copy of it stops at the same state. The left range then
//! takes it over in one batch: its span grows to cover both, its revision and compacted
//! revision become the higher of the two, it keeps the right range's transaction
//! outcomes (a lock elsewhere may still ask for one), and the right range's local state
//! goes. No data moves: both spans' versions are in the one data partition already.
//! A merge given up is fenced in the left range (`apply_merge_fence`) before the right
//! range thaws, so the left range's log decides, once, whether the merge happened.

use std::sync::atomic::Ordering;

use ostrakon_proto::peer as pb;
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::{MvccStore, META_COMPACTED_PHYSICALLY, META_COMPACT_REVISION, META_SPAN};
use crate::fatal::engine;
use crate::mvcc::span::KeySpan;
use crate::mvcc::txn_tables;
use crate::mvcc::MvccError;

/// Where a frozen range froze, and for which left range.
const META_FROZEN: &[u8] = b"frozen";
/// The ranges merged into this one (then the id), which no replica may bring back.
const ABSORBED_NAME_PREFIX: &[u8] = b"absorbed/";
/// Merges this range refused for good (then the right range's id and the freeze index).
const FENCE_NAME_PREFIX: &[u8] = b"merge_fence/";
/// The range began at an operator's split: never merged on its own.
pub(super) const META_SPLIT_BY_HAND: &[u8] = b"split_by_hand";

/// A range frozen for a merge: the entry that froze it and the range to merge into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezeMark {
    /// The freeze's log index and term.
    pub index: LogIndex,
    pub term: Term,
    /// The range it is to be merged into.
    pub left: GroupId,
    /// Who froze it (`FreezeRange::freezer`; 0 if not named).
    pub freezer: u64,
}

impl FreezeMark {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0; 32];
        out[..8].copy_from_slice(&self.index.0.to_be_bytes());
        out[8..16].copy_from_slice(&self.term.0.to_be_bytes());
        out[16..24].copy_from_slice(&self.left.0.to_be_bytes());
        out[24..].copy_from_slice(&self.freezer.to_be_bytes());
        out
    }

    /// Reads a stored mark: 32 bytes, or 24 as builds before `freezer` stored it.
    pub(super) fn decode(stored: &[u8]) -> FreezeMark {
        assert!(
            stored.len() == 24 || stored.len() == 32,
            "a freeze mark of {} bytes",
            stored.len()
        );
        let word =
            |at: usize| u64::from_be_bytes(stored[at..at + 8].try_into().expect("checked above"));
        FreezeMark {
            index: LogIndex(word(0)),
            term: Term(word(8)),
            left: GroupId(word(16)),
            freezer: if stored.len() == 32 { word(24) } else { 0 },
        }
    }
}

fn fence_name(right: GroupId, freeze_index: LogIndex) -> Vec<u8> {
    let mut name = FENCE_NAME_PREFIX.to_vec();
    name.extend_from_slice(&right.0.to_be_bytes());
    name.extend_from_slice(&freeze_index.0.to_be_bytes());
    name
}

fn absorbed_name(group: GroupId) -> Vec<u8> {
    let mut name = ABSORBED_NAME_PREFIX.to_vec();
    name.extend_from_slice(&group.0.to_be_bytes());
    name
}

fn id_after(name: &[u8], prefix: &[u8], at: usize) -> u64 {
    let start = prefix.len() + at;
    u64::from_be_bytes(name[start..start + 8].try_into().expect("an 8-byte id"))
}

impl MvccStore {
    /// Where the range froze for a merge, if it is frozen.
    pub fn frozen(&self) -> Option<FreezeMark> {
        *self.frozen.lock().unwrap()
    }

    /// The stored freeze mark (at open).
    pub(super) fn load_freeze_mark(local: &super::LocalState) -> Option<FreezeMark> {
        local.get(META_FROZEN).map(|v| FreezeMark::decode(&v))
    }

    /// Applies a freeze by `freezer` for a merge into `left` at (`index`, `term`).
    /// Refused while a transaction across ranges holds a lock here (its keys must stay
    /// put until it ends). A range frozen already answers its mark.
    pub fn apply_freeze(
        &self,
        index: LogIndex,
        term: Term,
        left: GroupId,
        freezer: u64,
    ) -> Result<FreezeMark, MvccError> {
        if let Some(mark) = self.frozen() {
            self.set_applied(index, term);
            return Ok(mark);
        }
        if self.has_txn_locks() {
            self.set_applied(index, term);
            return Err(MvccError::Locked);
        }
        let mark = FreezeMark {
            index,
            term,
            left,
            freezer,
        };
        let mut batch = self.keyspace.batch();
        self.local.insert(&mut batch, META_FROZEN, mark.encode());
        self.put_applied(&mut batch, index, term);
        engine("committing a freeze", batch.commit());
        self.set_frozen(Some(mark));
        self.set_applied(index, term);
        Ok(mark)
    }

    /// Thaws the range if it froze at `freeze_index` (a merge given up and fenced off in
    /// the left range); returns whether it did.
    pub fn apply_unfreeze(&self, index: LogIndex, term: Term, freeze_index: LogIndex) -> bool {
        let thawed = self.frozen().is_some_and(|mark| mark.index == freeze_index);
        let mut batch = self.keyspace.batch();
        if thawed {
            self.local.remove(&mut batch, META_FROZEN);
        }
        self.put_applied(&mut batch, index, term);
        engine("committing a thaw", batch.commit());
        if thawed {
            self.set_frozen(None);
        }
        self.set_applied(index, term);
        thawed
    }

    /// Whether the range began at an operator's split (it is then merged only by an
    /// operator, as CockroachDB keeps manual splits).
    pub fn split_by_hand(&self) -> bool {
        self.local.get(META_SPLIT_BY_HAND).is_some()
    }

    /// Every range merged into this one (and into those).
    pub fn absorbed_ranges(&self) -> Vec<GroupId> {
        self.local
            .scan(ABSORBED_NAME_PREFIX)
            .iter()
            .map(|(name, _)| GroupId(id_after(name, ABSORBED_NAME_PREFIX, 0)))
            .collect()
    }

    /// Every range merged into a range whose state `keyspace` holds: gone from this node
    /// for good (no message may bring a replica of it back).
    pub fn merged_away(keyspace: &fjall::Keyspace) -> std::collections::BTreeSet<GroupId> {
        super::LocalState::stored_groups(keyspace)
            .into_iter()
            .flat_map(|group| {
                super::LocalState::open(keyspace, group)
                    .scan(ABSORBED_NAME_PREFIX)
                    .into_iter()
                    .map(|(name, _)| GroupId(id_after(&name, ABSORBED_NAME_PREFIX, 0)))
            })
            .collect()
    }

    /// Whether this range fenced off the merge of `right` frozen at `freeze_index`.
    pub fn has_merge_fence(&self, right: GroupId, freeze_index: LogIndex) -> bool {
        self.local.get(fence_name(right, freeze_index)).is_some()
    }

    /// Applies the fence of the merge of `right` frozen at `freeze_index`: from now on
    /// this range refuses it. Returns whether the merge applied before (the right range
    /// is then part of this one, and must stay frozen where it lingers).
    pub fn apply_merge_fence(
        &self,
        index: LogIndex,
        term: Term,
        right: GroupId,
        freeze_index: LogIndex,
    ) -> bool {
        let merged = self.absorbed_ranges().contains(&right);
        let mut batch = self.keyspace.batch();
        if !merged {
            self.local
                .insert(&mut batch, fence_name(right, freeze_index), []);
        }
        self.put_applied(&mut batch, index, term);
        engine("committing a merge fence", batch.commit());
        self.set_applied(index, term);
        merged
    }

    /// Takes over `right`, the range after this one, frozen for this merge, at
    /// (`index`, `term`): one batch makes this range's span cover both, takes the higher
    /// revision and compacted revision, keeps the right range's transaction outcomes and
    /// records it as absorbed, and removes the right range's local state. The right
    /// store is left holding no keys (readers that still hold it route again). The
    /// caller checked that the merge fits (adjacent, same membership, not fenced).
    pub fn apply_merge(&self, index: LogIndex, term: Term, right: &MvccStore) {
        let left_span = self.span();
        let right_span = right.span();
        assert_eq!(
            left_span.end(),
            Some(right_span.start()),
            "a merge of ranges that do not touch"
        );
        assert!(
            right.frozen().is_some_and(|mark| mark.left == self.group),
            "a merge of a range not frozen for it"
        );
        assert!(
            !right.has_txn_locks(),
            "a frozen range holds a transaction's lock"
        );
        let merged_span = KeySpan::new(
            left_span.start().to_vec(),
            right_span.end().map(<[u8]>::to_vec),
        );
        let revision = self.current_revision().max(right.current_revision());
        let compacted = self.compact_revision().max(right.compact_revision());
        let mut batch = self.keyspace.batch();
        self.local
            .insert(&mut batch, META_SPAN, merged_span.encode());
        self.local.insert(
            &mut batch,
            META_COMPACT_REVISION,
            (compacted.0 as u64).to_be_bytes(),
        );
        let right_outcomes = right.txn_outcomes.lock().unwrap().clone();
        // The merged range keeps the higher horizon: what either range forgot stays
        // refused.
        let horizon = right_outcomes
            .horizon()
            .max(self.txn_outcomes.lock().unwrap().horizon());
        let taken_over = right_outcomes
            .records()
            .map(|(txn, outcome)| {
                txn_tables::store_outcome(*txn, outcome, right_outcomes.is_finished(*txn))
            })
            .chain([txn_tables::store_horizon(horizon)]);
        self.put_local_changes(&mut batch, taken_over);
        self.take_newer_gate(&mut batch, right);
        for absorbed in right.absorbed_ranges().into_iter().chain([right.group]) {
            self.local.insert(&mut batch, absorbed_name(absorbed), []);
        }
        for (name, _) in right.local.scan(b"") {
            right.local.remove(&mut batch, &name);
        }
        self.put_applied_at(&mut batch, index, term, revision);
        {
            let mut physical = self.physical_compaction.lock().unwrap();
            let mut right_physical = right.physical_compaction.lock().unwrap();
            // The compactor goes over the merged span from the lower of the two
            // progresses (the right span's garbage above it is not gone yet).
            let done = physical.done.min(right_physical.done);
            self.local.insert(
                &mut batch,
                META_COMPACTED_PHYSICALLY,
                (done.0 as u64).to_be_bytes(),
            );
            let mut latest = self.latest.lock().unwrap();
            let mut right_latest = right.latest.lock().unwrap();
            // Raised before the batch commits, as a compaction's: no reader trusts data
            // the compactor may now remove.
            self.compact_revision
                .fetch_max(compacted.0, Ordering::SeqCst);
            engine("committing a merge", batch.commit());
            let taken = std::mem::take(&mut *right_latest);
            *latest = std::mem::take(&mut *latest).merge(taken);
            self.revision.store(revision.0, Ordering::SeqCst);
            self.set_span(merged_span);
            right.set_span(KeySpan::none());
            self.txn_outcomes.lock().unwrap().absorb(right_outcomes);
            physical.installs += 1;
            physical.target = physical.target.max(compacted);
            physical.done = done;
            right_physical.installs += 1;
            // The right range's garbage is the merged range's now (its pass covers the
            // merged span): nothing is left to do in the right one, whose local state is
            // about to go, and a pass there would write its progress back into it.
            right_physical.done = right_physical.target;
            self.compaction_changed();
            right.physical_compaction_changed.notify_all();
        }
        self.set_applied(index, term);
    }

    /// Retires the store of a range merged into another (by a merge applied here, or by
    /// a snapshot of the merged range): it holds no keys any more, and its local state
    /// goes.
    pub fn retire(&self) {
        let mut batch = self.keyspace.batch();
        for (name, _) in self.local.scan(b"") {
            self.local.remove(&mut batch, &name);
        }
        engine("retiring a merged range", batch.commit());
        self.set_span(KeySpan::none());
    }

    /// The merge tables for a snapshot: the freeze mark, the absorbed ranges and the
    /// fences.
    pub(super) fn merge_tables(&self, tables: &mut pb::SnapshotTables) {
        if let Some(mark) = self.frozen() {
            tables.frozen_at = mark.index.0;
            tables.frozen_for = mark.left.0;
            tables.frozen_term = mark.term.0;
            tables.frozen_by = mark.freezer;
        }
        tables.split_by_hand = self.split_by_hand();
        tables.absorbed_ranges = self.absorbed_ranges().iter().map(|g| g.0).collect();
        tables.merge_fences = self
            .local
            .scan(FENCE_NAME_PREFIX)
            .iter()
            .map(|(name, _)| pb::MergeFenceRecord {
                right_range_id: id_after(name, FENCE_NAME_PREFIX, 0),
                freeze_index: id_after(name, FENCE_NAME_PREFIX, 8),
            })
            .collect();
    }

    /// Replaces the merge tables with a snapshot's, in `batch`; returns the freeze mark
    /// to hold once the batch commits.
    pub(super) fn install_merge_tables(
        &self,
        batch: &mut fjall::Batch,
        tables: &pb::SnapshotTables,
    ) -> Option<FreezeMark> {
        for prefix in [
            ABSORBED_NAME_PREFIX,
            FENCE_NAME_PREFIX,
            META_FROZEN,
            META_SPLIT_BY_HAND,
        ] {
            for (name, _) in self.local.scan(prefix) {
                self.local.remove(batch, &name);
            }
        }
        if tables.split_by_hand {
            self.local.insert(batch, META_SPLIT_BY_HAND, []);
        }
        for &absorbed in &tables.absorbed_ranges {
            self.local
                .insert(batch, absorbed_name(GroupId(absorbed)), []);
        }
        for fence in &tables.merge_fences {
            let name = fence_name(GroupId(fence.right_range_id), LogIndex(fence.freeze_index));
            self.local.insert(batch, name, []);
        }
        let mark = (tables.frozen_at != 0).then_some(FreezeMark {
            index: LogIndex(tables.frozen_at),
            term: Term(tables.frozen_term),
            left: GroupId(tables.frozen_for),
            freezer: tables.frozen_by,
        });
        if let Some(mark) = mark {
            self.local.insert(batch, META_FROZEN, mark.encode());
        }
        mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_mark_keeps_who_froze_it_and_reads_the_older_form() {
        let mark = FreezeMark {
            index: LogIndex(12),
            term: Term(3),
            left: GroupId(4),
            freezer: 77,
        };
        assert_eq!(FreezeMark::decode(&mark.encode()), mark);
        // Stored by a build before `freezer`: 24 bytes, nobody named.
        let older = &mark.encode()[..24];
        assert_eq!(FreezeMark::decode(older), FreezeMark { freezer: 0, ..mark });
    }
}
