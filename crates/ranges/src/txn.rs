//! Writes across ranges, the replicated half of their two-phase commit (docs/RANGES.md,
//! "Writes across ranges"): the locks a participant range holds for transactions that
//! prepared there, and the records a transaction's primary range keeps of how each one
//! ended. Both change only as raft entries apply, identically on every replica, so they
//! are plain data with the rules that decide each change.
//!
//! - A transaction takes its revision T from the oracle first, then prepares on every
//!   range it touches: each locks the keys the transaction compares, reads or may write
//!   (`LockTable::prepare`), refusing a T not above its last revision (a newer write
//!   applied there) and a lock that overlaps another transaction's (no waiting, so no
//!   deadlock: the coordinator aborts and tries again).
//! - It commits when its primary range records it committed (`TxnRecords::commit`);
//!   then every participant writes its versions at T and releases its locks.
//! - Whoever meets a lock it cannot pass (a read at or above T, a write) and finds it
//!   stale asks the primary: a committed record is finished, a missing one is aborted
//!   (`TxnRecords::abort`), after which the commit is refused. So a coordinator that dies
//!   leaves nothing stuck, and no reader sees part of a transaction.
//! - Records decided without the coordinator are forgotten below a *horizon*
//!   (`TxnRecords::raise_horizon`): a transaction born below it with no record can no
//!   longer commit, and is answered `Decided::Forgotten` (its locks are released; its
//!   coordinator tells its client the outcome is unknown).

use std::collections::{BTreeMap, BTreeSet};

use ostrakon_raft::NodeId;

#[cfg(feature = "planted-bugs")]
use crate::RangeBug;
use crate::RangeId;

/// A transaction: the member coordinating it and a number unique on that member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId {
    /// The member that coordinates it.
    pub coordinator: NodeId,
    /// Unique among that member's transactions (across its restarts too).
    pub number: u64,
    /// A timestamp of the oracle's from about when the transaction began (0: unknown),
    /// the same in every command of it. Once its primary's horizon passes it, the
    /// transaction can only be aborted (`TxnRecords::raise_horizon`).
    pub born: u64,
}

/// The keys `[start, end)` (`end` None: to the end of the keyspace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpan {
    /// The first key.
    pub start: Vec<u8>,
    /// The first key after the span.
    pub end: Option<Vec<u8>>,
}

impl KeySpan {
    /// One key.
    pub fn key(key: &[u8]) -> KeySpan {
        let mut end = key.to_vec();
        end.push(0);
        KeySpan {
            start: key.to_vec(),
            end: Some(end),
        }
    }

    /// `[start, end)`; asserts the span is not empty.
    pub fn span(start: &[u8], end: Option<&[u8]>) -> KeySpan {
        if let Some(end) = end {
            assert!(start < end, "an empty or reversed key span");
        }
        KeySpan {
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
        }
    }

    /// Whether the two spans share a key.
    pub fn overlaps(&self, other: &KeySpan) -> bool {
        let starts_before =
            |start: &[u8], end: &Option<Vec<u8>>| end.as_deref().is_none_or(|end| start < end);
        starts_before(&self.start, &other.end) && starts_before(&other.start, &self.end)
    }
}

/// A prepared transaction's hold on some of a range's keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    /// The transaction.
    pub txn: TxnId,
    /// The revision every write of the transaction takes.
    pub revision: u64,
    /// The range holding the transaction's record: where to ask how it ended.
    pub primary: RangeId,
    /// The keys it compares, reads or may write in this range.
    pub spans: Vec<KeySpan>,
}

impl Lock {
    fn overlaps(&self, spans: &[KeySpan]) -> bool {
        self.spans
            .iter()
            .any(|held| spans.iter().any(|span| held.overlaps(span)))
    }
}

/// Why a range refused to prepare a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareRefused {
    /// The range has applied a write at or above the transaction's revision: it must
    /// take a new one.
    Stale {
        /// The range's last revision.
        last_revision: u64,
    },
    /// Another transaction holds some of the keys.
    Conflict {
        /// That transaction.
        holder: TxnId,
    },
    /// The transaction holds a different lock here already (its id was reused for
    /// another attempt: every attempt must take a new id). Refused, never asserted: the
    /// entry is in the log, and asserting would stop every replica at it for good.
    Mismatch {
        /// The lock it holds.
        held: Box<Lock>,
    },
}

/// The locks of one range, as of its applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockTable {
    locks: BTreeMap<TxnId, Lock>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl LockTable {
    /// An empty table, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> LockTable {
        LockTable {
            locks: BTreeMap::new(),
            bug,
        }
    }

    /// Applies a prepare: records `lock` if its revision is above `last_revision` and it
    /// overlaps no other transaction's lock. `last_revision` is the higher of the
    /// range's last revision and its read floor (the highest revision a read of the
    /// range was served at, docs/RANGES.md). The caller then raises the range's last
    /// revision to the lock's, so that no later write of the range takes a revision at
    /// or below it. Preparing the same lock again (a prepare retried through the log) is
    /// accepted as it is; a different lock under the same transaction is refused.
    pub fn prepare(&mut self, lock: Lock, last_revision: u64) -> Result<(), PrepareRefused> {
        if let Some(held) = self.locks.get(&lock.txn) {
            if *held != lock {
                return Err(PrepareRefused::Mismatch {
                    held: Box::new(held.clone()),
                });
            }
            return Ok(());
        }
        if lock.revision <= last_revision {
            return Err(PrepareRefused::Stale { last_revision });
        }
        if let Some(holder) = self.locks.values().find(|held| held.overlaps(&lock.spans)) {
            return Err(PrepareRefused::Conflict { holder: holder.txn });
        }
        self.locks.insert(lock.txn, lock);
        Ok(())
    }

    /// The lock a write of `spans` meets, if any: a single-range write waits (it is
    /// refused and tried again) until the lock is released, whatever the lock's revision.
    pub fn blocking_write(&self, spans: &[KeySpan]) -> Option<&Lock> {
        self.locks.values().find(|held| held.overlaps(spans))
    }

    /// The lock a read of `spans` at `revision` meets, if any: one at or below the
    /// revision, whose writes the read must see or know absent. Locks above it do not
    /// matter to it.
    pub fn blocking_read(&self, spans: &[KeySpan], revision: u64) -> Option<&Lock> {
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::ReadIgnoresPendingLock) {
            return None;
        }
        self.locks
            .values()
            .filter(|held| held.revision <= revision)
            .find(|held| held.overlaps(spans))
    }

    /// Releases the transaction's lock (committed and written, or aborted); None if it
    /// holds none here (released already, or never prepared here).
    pub fn release(&mut self, txn: TxnId) -> Option<Lock> {
        self.locks.remove(&txn)
    }

    /// The revision up to which the range's history is final, given its current
    /// revision: below the lowest pending lock's revision, whose writes will enter the
    /// history under revisions the range has already passed. What watchers may be sent
    /// up to.
    pub fn resolved_revision(&self, current_revision: u64) -> u64 {
        self.locks
            .values()
            .map(|held| held.revision - 1)
            .min()
            .map_or(current_revision, |below| below.min(current_revision))
    }

    /// Every lock, by transaction (for snapshots).
    pub fn locks(&self) -> impl Iterator<Item = &Lock> {
        self.locks.values()
    }

    /// Whether no lock is held.
    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }

    /// A split at `at`: the locks' holds on keys from `at` on move to the table this
    /// returns (the right half's), the rest stay. A lock holding keys on both sides is
    /// in both, each with its side's part, and each side resolves its part.
    pub fn split_off(&mut self, at: &[u8]) -> LockTable {
        let mut right = LockTable {
            locks: BTreeMap::new(),
            #[cfg(feature = "planted-bugs")]
            bug: self.bug,
        };
        for lock in self.locks.values_mut() {
            let mut left_spans = Vec::new();
            let mut right_spans = Vec::new();
            for span in lock.spans.drain(..) {
                let starts_left = span.start.as_slice() < at;
                let ends_right = span.end.as_deref().is_none_or(|end| end > at);
                match (starts_left, ends_right) {
                    (true, true) => {
                        left_spans.push(KeySpan::span(&span.start, Some(at)));
                        right_spans.push(KeySpan::span(at, span.end.as_deref()));
                    }
                    (true, false) => left_spans.push(span),
                    (false, _) => right_spans.push(span),
                }
            }
            if !right_spans.is_empty() {
                let moved = Lock {
                    spans: right_spans,
                    ..lock.clone()
                };
                right.locks.insert(lock.txn, moved);
            }
            lock.spans = left_spans;
        }
        self.locks.retain(|_, lock| !lock.spans.is_empty());
        right
    }
}

/// How a transaction ended, as its primary range records it. `M` is what a committed
/// record keeps so that anyone can finish the transaction: every range's writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome<M> {
    /// Committed: its writes take effect at its revision in every range.
    Committed(M),
    /// Aborted: nothing it prepared takes effect.
    Aborted,
}

/// How a transaction ended, as the answer to a commit or an abort that did not take
/// effect as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decided<M> {
    /// Committed (its record).
    Committed(M),
    /// Aborted (recorded so).
    Aborted,
    /// Born below the primary's horizon with no record: it can no longer commit, but it
    /// may have committed, its record forgotten once every part was written. Whoever
    /// holds a lock of it releases it (a lock left is a late copy of a prepare); its
    /// coordinator cannot tell its client more than that the outcome is unknown.
    Forgotten,
}

/// The outcomes a primary range has recorded, as of its applied index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecords<M> {
    records: BTreeMap<TxnId, TxnOutcome<M>>,
    /// Committed transactions a pusher finished (every part written): forgotten below
    /// the horizon, not at once, since their coordinator may still ask how they ended.
    finished: BTreeSet<TxnId>,
    /// Transactions born below it are aborted, recorded or not (0: none).
    horizon: u64,
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl<M> Default for TxnRecords<M> {
    fn default() -> Self {
        TxnRecords {
            records: BTreeMap::new(),
            finished: BTreeSet::new(),
            horizon: 0,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }
}

impl<M> TxnRecords<M> {
    /// No records, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> TxnRecords<M> {
        TxnRecords {
            bug,
            ..TxnRecords::default()
        }
    }

    /// No records, with the same planted bug (the right half of a split, a primary for
    /// transactions to come).
    pub fn fresh(&self) -> TxnRecords<M> {
        TxnRecords {
            #[cfg(feature = "planted-bugs")]
            bug: self.bug,
            ..TxnRecords::default()
        }
    }

    /// Whether the horizon has passed the transaction's birth: it can only be aborted.
    fn beyond_horizon(&self, txn: TxnId) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::HorizonForgetsOnly) {
            return false;
        }
        txn.born != 0 && txn.born < self.horizon
    }

    /// The horizon: transactions born below it are aborted, recorded or not.
    pub fn horizon(&self) -> u64 {
        self.horizon
    }

    /// Applies a horizon: from now on a transaction born below `below` with no record
    /// is answered "aborted" and its commit refused, which is what an aborted record
    /// says, so the aborted records of such transactions are forgotten, and so are the
    /// committed ones a pusher finished (no coordinator is still waiting for their
    /// outcome that long after they began); returns them. Other committed records stay:
    /// a lock of the transaction may still stand in a range that was unavailable, and
    /// its part must be written. The horizon only rises, and a transaction of unknown
    /// birth is never forgotten.
    pub fn raise_horizon(&mut self, below: u64) -> Vec<(TxnId, TxnOutcome<M>)> {
        self.horizon = self.horizon.max(below);
        let forgotten: Vec<TxnId> = self
            .records
            .keys()
            .filter(|&&txn| self.forgettable(txn, self.horizon))
            .copied()
            .collect();
        forgotten
            .into_iter()
            .map(|txn| {
                self.finished.remove(&txn);
                let outcome = self.records.remove(&txn).expect("listed above");
                (txn, outcome)
            })
            .collect()
    }

    /// Whether a horizon at `below` forgets the transaction's record.
    fn forgettable(&self, txn: TxnId, below: u64) -> bool {
        let done = matches!(self.records.get(&txn), Some(TxnOutcome::Aborted))
            || self.finished.contains(&txn);
        done && txn.born != 0 && txn.born < below
    }

    /// The committed records nobody marked finished whose transactions were born below
    /// `below`, oldest first, at most `limit`: a record whose coordinator's forget and
    /// pushers' finished mark were all lost, or that a late copy of its commit recorded
    /// again after the forget (no lock of it is left for a pusher to find). Born that
    /// long ago, its coordinator has given up; the range's leader finishes them
    /// (resolves every participant, then marks them), and the horizon then forgets them.
    pub fn unfinished_committed_below(&self, below: u64, limit: usize) -> Vec<(TxnId, &M)> {
        let mut unfinished: Vec<(TxnId, &M)> = self
            .records
            .iter()
            .filter(|(txn, _)| txn.born != 0 && txn.born < below && !self.finished.contains(txn))
            .filter_map(|(txn, outcome)| match outcome {
                TxnOutcome::Committed(writes) => Some((*txn, writes)),
                TxnOutcome::Aborted => None,
            })
            .collect();
        unfinished.sort_by_key(|(txn, _)| txn.born);
        unfinished.truncate(limit);
        unfinished
    }

    /// Whether a pusher finished the committed transaction (`mark_finished`).
    pub fn is_finished(&self, txn: TxnId) -> bool {
        self.finished.contains(&txn)
    }

    /// Applies a pusher's word that every part of a committed transaction is written:
    /// its record stays until a horizon passes the transaction's birth. Returns whether
    /// it marked a committed record (not one forgotten, aborted or marked already).
    pub fn mark_finished(&mut self, txn: TxnId) -> bool {
        matches!(self.records.get(&txn), Some(TxnOutcome::Committed(_)))
            && self.finished.insert(txn)
    }

    /// How many records are kept (O(1): looked at after every change of a led range).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many aborted records are kept.
    pub fn aborted_count(&self) -> usize {
        self.records
            .values()
            .filter(|outcome| matches!(outcome, TxnOutcome::Aborted))
            .count()
    }

    /// The earliest birth among the records a horizon at `below` would forget (a
    /// range's leader proposes a horizon only when it forgets something).
    pub fn oldest_forgettable(&self, below: u64) -> Option<u64> {
        self.records
            .keys()
            .filter(|&&txn| self.forgettable(txn, below))
            .map(|txn| txn.born)
            .min()
    }
}

impl<M: Clone + PartialEq> TxnRecords<M> {
    /// Applies a commit: the commit point, unless the transaction was aborted first (by
    /// someone who found its locks stale). Committing the same writes again is
    /// accepted; different writes under the same transaction (a reused id) are refused
    /// with the record that stands. Ok(true) if it recorded the commit now (to be
    /// stored); Ok(false) if it was recorded already (the record stored stays as it is:
    /// marked finished, it must not be stored again unmarked).
    pub fn commit(&mut self, txn: TxnId, writes: M) -> Result<bool, Decided<M>> {
        match self.records.get(&txn) {
            None if self.beyond_horizon(txn) => Err(Decided::Forgotten),
            Some(TxnOutcome::Aborted) => Err(Decided::Aborted),
            Some(TxnOutcome::Committed(held)) => {
                if *held == writes {
                    Ok(false)
                } else {
                    Err(Decided::Committed(held.clone()))
                }
            }
            None => {
                self.records.insert(txn, TxnOutcome::Committed(writes));
                Ok(true)
            }
        }
    }

    /// Applies an abort: the transaction will never commit, unless it committed first,
    /// whose record this returns (the one who asked finishes it instead), or the horizon
    /// passed it (`Decided::Forgotten`). Ok(true) if it recorded the abort now (to be
    /// stored); Ok(false) if it was recorded already.
    pub fn abort(&mut self, txn: TxnId) -> Result<bool, Decided<M>> {
        match self.records.get(&txn) {
            Some(TxnOutcome::Committed(writes)) => Err(Decided::Committed(writes.clone())),
            Some(TxnOutcome::Aborted) => Ok(false),
            None if self.beyond_horizon(txn) => Err(Decided::Forgotten),
            None => {
                self.records.insert(txn, TxnOutcome::Aborted);
                Ok(true)
            }
        }
    }

    /// Forgets a committed transaction's record once every range wrote its part (no
    /// lock of it is left for anyone to ask about); returns whether it was there.
    /// Aborted records are kept: a prepare that applies after its coordinator gave up
    /// leaves a lock whose pusher must learn the abort.
    pub fn forget_committed(&mut self, txn: TxnId) -> bool {
        if matches!(self.records.get(&txn), Some(TxnOutcome::Committed(_))) {
            self.records.remove(&txn);
            self.finished.remove(&txn);
            return true;
        }
        false
    }

    /// Takes in the records of a range merged into this one: a lock elsewhere may still
    /// ask the merged range how a transaction whose primary was the absorbed range ended.
    /// A transaction has one primary, so no transaction is in both with different
    /// outcomes.
    /// The merged range keeps the higher horizon: what the absorbed range forgot must
    /// stay refused.
    pub fn absorb(&mut self, other: TxnRecords<M>) {
        self.horizon = self.horizon.max(other.horizon);
        for (txn, outcome) in other.records {
            let finished = other.finished.contains(&txn);
            self.restore(txn, outcome, finished);
        }
    }

    /// Puts back a record as stored (loading a range's tables, or taking in a merged
    /// range's), whatever the horizon: it was decided when it was written.
    pub fn restore(&mut self, txn: TxnId, outcome: TxnOutcome<M>, finished: bool) {
        if let Some(previous) = self.records.get(&txn) {
            assert!(
                *previous == outcome,
                "{txn:?} recorded twice, with different outcomes"
            );
        } else {
            self.records.insert(txn, outcome);
        }
        if finished {
            assert!(self.mark_finished(txn) || self.finished.contains(&txn));
        }
    }

    /// Sets the horizon as stored (loading a range's tables); it only rises.
    pub fn restore_horizon(&mut self, horizon: u64) {
        self.horizon = self.horizon.max(horizon);
    }

    /// How the transaction ended, if it did.
    pub fn outcome(&self, txn: TxnId) -> Option<&TxnOutcome<M>> {
        self.records.get(&txn)
    }

    /// Every record, by transaction (for snapshots).
    pub fn records(&self) -> impl Iterator<Item = (&TxnId, &TxnOutcome<M>)> {
        self.records.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(number: u64) -> TxnId {
        TxnId {
            coordinator: NodeId(1),
            number,
            born: 100 + number,
        }
    }

    fn lock(number: u64, revision: u64, spans: Vec<KeySpan>) -> Lock {
        Lock {
            txn: txn(number),
            revision,
            primary: RangeId(1),
            spans,
        }
    }

    #[test]
    fn a_split_divides_the_locks_at_its_key() {
        let mut table = LockTable::default();
        table
            .prepare(lock(1, 10, vec![KeySpan::key(b"a"), KeySpan::key(b"x")]), 0)
            .unwrap();
        table
            .prepare(lock(2, 10, vec![KeySpan::key(b"b")]), 0)
            .unwrap();
        table
            .prepare(lock(3, 10, vec![KeySpan::span(b"k", Some(b"p"))]), 0)
            .unwrap();
        let right = table.split_off(b"m");
        let holds = |table: &LockTable| -> Vec<(u64, Vec<KeySpan>)> {
            table
                .locks()
                .map(|l| (l.txn.number, l.spans.clone()))
                .collect()
        };
        assert_eq!(
            holds(&table),
            [
                (1, vec![KeySpan::key(b"a")]),
                (2, vec![KeySpan::key(b"b")]),
                (3, vec![KeySpan::span(b"k", Some(b"m"))]),
            ]
        );
        assert_eq!(
            holds(&right),
            [
                (1, vec![KeySpan::key(b"x")]),
                (3, vec![KeySpan::span(b"m", Some(b"p"))]),
            ]
        );
        // Each side resolves its part on its own.
        assert!(right.blocking_write(&[KeySpan::key(b"x")]).is_some());
        assert!(table.blocking_write(&[KeySpan::key(b"x")]).is_none());
    }

    #[test]
    fn spans_overlap_when_they_share_a_key() {
        let a = KeySpan::key(b"a");
        assert!(a.overlaps(&KeySpan::key(b"a")));
        assert!(!a.overlaps(&KeySpan::key(b"a\0")));
        assert!(!a.overlaps(&KeySpan::key(b"b")));
        let a_to_c = KeySpan::span(b"a", Some(b"c"));
        assert!(a_to_c.overlaps(&KeySpan::key(b"b")));
        assert!(!a_to_c.overlaps(&KeySpan::key(b"c")));
        assert!(KeySpan::span(b"b", None).overlaps(&KeySpan::key(b"zzz")));
        assert!(KeySpan::span(b"b", None).overlaps(&a_to_c));
        assert!(!KeySpan::span(b"c", None).overlaps(&a_to_c));
    }

    #[test]
    fn a_prepare_is_refused_below_the_last_revision_and_on_another_lock() {
        let mut table = LockTable::default();
        assert_eq!(
            table.prepare(lock(1, 10, vec![KeySpan::key(b"a")]), 10),
            Err(PrepareRefused::Stale { last_revision: 10 })
        );
        table
            .prepare(lock(1, 11, vec![KeySpan::span(b"a", Some(b"c"))]), 10)
            .unwrap();
        assert_eq!(
            table.prepare(lock(2, 12, vec![KeySpan::key(b"b")]), 11),
            Err(PrepareRefused::Conflict { holder: txn(1) })
        );
        table
            .prepare(lock(2, 12, vec![KeySpan::key(b"c")]), 11)
            .unwrap();
        // The same prepare applied again (retried through the log) is accepted; another
        // lock under the same transaction is refused, not asserted.
        table
            .prepare(lock(1, 11, vec![KeySpan::span(b"a", Some(b"c"))]), 12)
            .unwrap();
        assert!(matches!(
            table.prepare(lock(1, 13, vec![KeySpan::key(b"x")]), 12),
            Err(PrepareRefused::Mismatch { .. })
        ));
        assert_eq!(table.locks().count(), 2);
    }

    #[test]
    fn reads_meet_locks_at_or_below_their_revision_and_writes_meet_any() {
        let mut table = LockTable::default();
        table
            .prepare(lock(1, 20, vec![KeySpan::key(b"k")]), 10)
            .unwrap();
        let k = [KeySpan::key(b"k")];
        assert_eq!(table.blocking_read(&k, 19), None);
        assert_eq!(table.blocking_read(&k, 20).map(|l| l.txn), Some(txn(1)));
        assert_eq!(table.blocking_read(&k, 30).map(|l| l.txn), Some(txn(1)));
        assert_eq!(table.blocking_read(&[KeySpan::key(b"j")], 30), None);
        assert_eq!(table.blocking_write(&k).map(|l| l.txn), Some(txn(1)));
        assert_eq!(table.release(txn(1)).map(|l| l.revision), Some(20));
        assert_eq!(table.blocking_read(&k, 30), None);
        assert_eq!(table.release(txn(1)), None);
        assert!(table.is_empty());
    }

    #[test]
    fn the_planted_bug_lets_reads_pass_locks() {
        let mut table = LockTable::with_bug(Some(RangeBug::ReadIgnoresPendingLock));
        table
            .prepare(lock(1, 20, vec![KeySpan::key(b"k")]), 10)
            .unwrap();
        assert_eq!(table.blocking_read(&[KeySpan::key(b"k")], 30), None);
    }

    #[test]
    fn the_resolved_revision_stays_below_every_pending_lock() {
        let mut table = LockTable::default();
        assert_eq!(table.resolved_revision(50), 50);
        table
            .prepare(lock(1, 40, vec![KeySpan::key(b"a")]), 30)
            .unwrap();
        table
            .prepare(lock(2, 45, vec![KeySpan::key(b"b")]), 40)
            .unwrap();
        assert_eq!(table.resolved_revision(50), 39);
        table.release(txn(1));
        assert_eq!(table.resolved_revision(50), 44);
        table.release(txn(2));
        assert_eq!(table.resolved_revision(50), 50);
    }

    #[test]
    fn a_transaction_ends_once_committed_or_aborted_whichever_applies_first() {
        let mut records: TxnRecords<&str> = TxnRecords::default();
        assert_eq!(records.commit(txn(1), "writes"), Ok(true));
        assert_eq!(
            records.commit(txn(1), "writes"),
            Ok(false),
            "recorded already"
        );
        assert_eq!(
            records.commit(txn(1), "other writes"),
            Err(Decided::Committed("writes"))
        );
        assert_eq!(records.abort(txn(1)), Err(Decided::Committed("writes")));
        assert_eq!(records.abort(txn(2)), Ok(true));
        assert_eq!(records.abort(txn(2)), Ok(false));
        assert_eq!(records.commit(txn(2), "late"), Err(Decided::Aborted));
        assert_eq!(records.outcome(txn(2)), Some(&TxnOutcome::Aborted));
        assert_eq!(records.outcome(txn(3)), None);
        assert_eq!(records.records().count(), 2);
    }

    #[test]
    fn a_merged_range_answers_for_the_records_of_the_range_it_absorbed() {
        let mut left: TxnRecords<&str> = TxnRecords::default();
        left.commit(txn(1), "a").unwrap();
        let mut right: TxnRecords<&str> = TxnRecords::default();
        right.abort(txn(2)).unwrap();
        left.absorb(right);
        assert_eq!(left.outcome(txn(2)), Some(&TxnOutcome::Aborted));
        assert_eq!(left.commit(txn(2), "b"), Err(Decided::Aborted));
        assert_eq!(left.outcome(txn(1)), Some(&TxnOutcome::Committed("a")));
    }
    #[test]
    fn below_the_horizon_aborted_records_are_forgotten_and_their_transactions_stay_aborted() {
        let mut records: TxnRecords<&str> = TxnRecords::default();
        records.commit(txn(1), "committed").unwrap();
        records.abort(txn(2)).unwrap();
        records.abort(txn(5)).unwrap();
        let unknown = TxnId { born: 0, ..txn(3) };
        records.abort(unknown).unwrap();
        assert_eq!(records.oldest_forgettable(104), Some(102));
        assert_eq!(records.oldest_forgettable(102), None);
        // Born at 101, 102 and 105: the horizon at 104 forgets the aborted 102 only.
        assert_eq!(
            records.raise_horizon(104),
            vec![(txn(2), TxnOutcome::Aborted)]
        );
        assert_eq!(records.horizon(), 104);
        assert_eq!(records.outcome(txn(2)), None);
        // A late commit of it is refused as its record would have refused it, and an
        // abort records nothing again; both answer that the outcome was forgotten.
        assert_eq!(records.commit(txn(2), "late"), Err(Decided::Forgotten));
        assert_eq!(records.abort(txn(2)), Err(Decided::Forgotten));
        assert_eq!(records.outcome(txn(2)), None);
        // Any transaction born below it, recorded or not, can no longer commit...
        assert_eq!(records.commit(txn(0), "new"), Err(Decided::Forgotten));
        // ...but a committed record stays, and one born above or of unknown birth too.
        assert_eq!(
            records.outcome(txn(1)),
            Some(&TxnOutcome::Committed("committed"))
        );
        assert_eq!(records.abort(txn(1)), Err(Decided::Committed("committed")));
        assert_eq!(records.outcome(txn(5)), Some(&TxnOutcome::Aborted));
        assert_eq!(records.outcome(unknown), Some(&TxnOutcome::Aborted));
        records.commit(txn(6), "above").unwrap();
        // The horizon never goes back.
        assert_eq!(records.raise_horizon(50), Vec::new());
        assert_eq!(records.horizon(), 104);
    }

    #[test]
    fn a_committed_record_a_pusher_finished_stays_until_the_horizon_passes() {
        let mut records: TxnRecords<&str> = TxnRecords::default();
        records.commit(txn(1), "one").unwrap();
        records.commit(txn(2), "two").unwrap();
        records.abort(txn(3)).unwrap();
        assert!(records.mark_finished(txn(1)));
        assert!(!records.mark_finished(txn(1)), "marked once");
        assert!(
            !records.mark_finished(txn(3)),
            "an aborted record is not finished"
        );
        assert!(!records.mark_finished(txn(9)), "nor a missing one");
        // Its coordinator, still asking, learns it committed.
        assert_eq!(records.abort(txn(1)), Err(Decided::Committed("one")));
        assert_eq!(records.oldest_forgettable(110), Some(101));
        // Past the horizon the finished record goes; the unfinished one stays.
        assert_eq!(
            records.raise_horizon(110),
            vec![
                (txn(1), TxnOutcome::Committed("one")),
                (txn(3), TxnOutcome::Aborted)
            ]
        );
        assert!(!records.is_finished(txn(1)));
        assert_eq!(records.outcome(txn(2)), Some(&TxnOutcome::Committed("two")));
        // A record carried whole (a merge, a snapshot) keeps its mark.
        records.mark_finished(txn(2));
        let mut merged: TxnRecords<&str> = TxnRecords::default();
        merged.absorb(records);
        assert!(merged.is_finished(txn(2)));
    }

    #[test]
    fn committed_records_nobody_finished_are_listed_once_born_below_a_time() {
        let mut records: TxnRecords<&str> = TxnRecords::default();
        // Born at 103, 101, 102, 105; a transaction of unknown birth (0) too.
        records.commit(txn(3), "three").unwrap();
        records.commit(txn(1), "one").unwrap();
        records.commit(txn(2), "two").unwrap();
        records.commit(txn(5), "five").unwrap();
        records.abort(txn(4)).unwrap();
        let unknown = TxnId { born: 0, ..txn(6) };
        records.commit(unknown, "unknown").unwrap();
        records.mark_finished(txn(2));
        let listed = |records: &TxnRecords<&str>, below, limit| -> Vec<u64> {
            records
                .unfinished_committed_below(below, limit)
                .into_iter()
                .map(|(txn, _)| txn.number)
                .collect()
        };
        // Oldest first; not the finished one, the aborted one, nor one born at 105.
        assert_eq!(listed(&records, 105, 10), [1, 3]);
        assert_eq!(listed(&records, 105, 1), [1]);
        assert_eq!(listed(&records, 101, 10), Vec::<u64>::new());
        assert_eq!(records.unfinished_committed_below(102, 1)[0].1, &"one");
        // Once marked, a horizon forgets them.
        records.mark_finished(txn(1));
        records.mark_finished(txn(3));
        assert_eq!(listed(&records, 105, 10), Vec::<u64>::new());
        assert_eq!(records.raise_horizon(105).len(), 4);
        assert_eq!(records.len(), 2, "born at 105, and of unknown birth");
    }

    #[test]
    fn a_merged_range_keeps_the_higher_horizon() {
        let mut left: TxnRecords<&str> = TxnRecords::default();
        left.raise_horizon(103);
        let mut right: TxnRecords<&str> = TxnRecords::default();
        right.abort(txn(4)).unwrap();
        right.raise_horizon(105);
        left.absorb(right);
        assert_eq!(left.horizon(), 105);
        assert_eq!(left.commit(txn(4), "late"), Err(Decided::Forgotten));
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn the_planted_bug_forgets_records_but_lets_late_commits_in() {
        let mut records: TxnRecords<&str> =
            TxnRecords::with_bug(Some(RangeBug::HorizonForgetsOnly));
        records.abort(txn(2)).unwrap();
        assert_eq!(
            records.raise_horizon(104),
            vec![(txn(2), TxnOutcome::Aborted)]
        );
        assert_eq!(records.commit(txn(2), "late"), Ok(true));
    }
}
