//! The node's variant of writes across ranges (docs/RANGES.md, "Writes across ranges in
//! the node"): a transaction's lock freezes the whole range it prepared in, not only its
//! keys, and its revision T is the highest of the revisions its participants' leaders
//! fetched for their prepares. The decisions each replica makes as the transaction's
//! commands apply live here, as plain functions over the range's [`LockTable`], so that
//! the node's stores and the simulator make the same ones (the store does the I/O).
//!
//! Invariants, and why:
//! - *At most one lock per range, and only above the range's current revision.* A
//!   prepare is refused while another transaction holds the range, and when its revision
//!   is not above the range's (a write applied since the leader fetched it). So while a
//!   lock is held no write lands in the range (`holds_off`), and T, the highest of the
//!   prepares' revisions, is above every range's current revision: the transaction
//!   writes above everything each range holds, and revisions stay in apply order.
//! - *A prepare applied twice answers as the first time* (an entry retried through the
//!   log): the same transaction with the same spans and primary gets the revision its
//!   lock holds.
//! - *A lock above T is a late copy of a prepare* (a proposal that reached a leader
//!   after its transaction committed and wrote its part here): it is only forgotten.
//! - *A range that writes nothing at T is raised to T* (its part was only read, or a
//!   path wrote nothing): a write fetched while the lock held must not land at or below
//!   the revision the transaction was answered at.

use crate::txn::{Lock, LockTable, TxnId};

/// What a range does with a prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareStep {
    /// Lock the range for the transaction at the prepare's revision.
    Lock,
    /// The same prepare applied before: answer the revision its lock holds.
    Again {
        /// The revision of the lock held.
        revision: u64,
    },
    /// Refuse it.
    Refused(PrepareRefusal),
}

/// Why a range refused a prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareRefusal {
    /// Some of its spans are outside the range (a split moved them): routed again.
    OutsideSpan,
    /// Another transaction holds the range, or this one holds it with another lock.
    Locked,
    /// The range applied a write at or above the prepare's revision: fetch again.
    Stale {
        /// The range's current revision.
        current_revision: u64,
    },
}

/// Decides a prepare of `lock` in a range holding `locks` at `current_revision`;
/// `inside_span` says whether every span of the lock is within the range's span.
pub fn decide_prepare(
    locks: &LockTable,
    lock: &Lock,
    inside_span: bool,
    current_revision: u64,
) -> PrepareStep {
    if !inside_span {
        return PrepareStep::Refused(PrepareRefusal::OutsideSpan);
    }
    if let Some(held) = locks.locks().find(|held| held.txn == lock.txn) {
        if held.spans == lock.spans && held.primary == lock.primary {
            return PrepareStep::Again {
                revision: held.revision,
            };
        }
        return PrepareStep::Refused(PrepareRefusal::Locked);
    }
    if !locks.is_empty() {
        return PrepareStep::Refused(PrepareRefusal::Locked);
    }
    if lock.revision <= current_revision {
        return PrepareStep::Refused(PrepareRefusal::Stale { current_revision });
    }
    PrepareStep::Lock
}

/// A write reaching a range, as far as its locks are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeWrite {
    /// A prepare of this transaction.
    Prepare(TxnId),
    /// A write that changes keys: a Put, a DeleteRange, a Txn, the revoke of a lease
    /// with keys attached.
    ChangesKeys,
    /// A write that changes no key (a lease granted, a revoke of a lease without keys,
    /// range and transaction bookkeeping).
    ChangesNoKey,
}

/// Whether the range's locks hold `write` off: it is refused (and tried again by the
/// node) while a transaction holds the range. Asked where the write applies, on every
/// replica alike, and by the range's leader before it proposes.
pub fn holds_off(locks: &LockTable, write: RangeWrite) -> bool {
    if locks.is_empty() {
        return false;
    }
    match write {
        RangeWrite::Prepare(txn) => !locks.locks().any(|lock| lock.txn == txn),
        RangeWrite::ChangesKeys => true,
        RangeWrite::ChangesNoKey => false,
    }
}

/// [`holds_off`] as a range's leader asks it before it proposes `write`, knowing which
/// transactions' resolves or releases it has already put in the log ahead of it
/// (`unlocking`): their locks are gone by the time a prepare queued behind them applies,
/// so they hold no prepare off. (A client's next transaction over the same ranges would
/// otherwise wait for its last one's resolve to apply before it could even propose.)
/// Where the write applies, [`holds_off`] decides, on every replica alike: a prepare let
/// through here that still meets a lock there is refused then.
pub fn holds_off_unless_unlocking(
    locks: &LockTable,
    write: RangeWrite,
    unlocking: impl Fn(TxnId) -> bool,
) -> bool {
    match write {
        RangeWrite::Prepare(_) => {
            holds_off(locks, write) && locks.locks().any(|lock| !unlocking(lock.txn))
        }
        RangeWrite::ChangesKeys | RangeWrite::ChangesNoKey => holds_off(locks, write),
    }
}

/// The transaction's revision: the highest of its prepares' (every participant's lock is
/// at or below it, and every participant's current revision below its lock).
pub fn txn_revision(prepared: impl IntoIterator<Item = u64>) -> u64 {
    prepared
        .into_iter()
        .max()
        .expect("a transaction prepared in a range at least")
}

/// [`txn_revision`], or with [`crate::RangeBug::TxnTakesLowestPrepare`] planted the lowest of the
/// prepares' revisions (for the simulator, which runs the coordinator's choice).
#[cfg(feature = "planted-bugs")]
pub fn txn_revision_with_bug(
    prepared: impl IntoIterator<Item = u64>,
    bug: Option<crate::split::RangeBug>,
) -> u64 {
    if bug == Some(crate::split::RangeBug::TxnTakesLowestPrepare) {
        return prepared
            .into_iter()
            .min()
            .expect("a transaction prepared in a range at least");
    }
    txn_revision(prepared)
}

/// What a range does with a committed transaction's part (a commit at the primary, a
/// resolve elsewhere) written at `txn_revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartStep {
    /// The range holds no lock of it: the part was written already (or the lock ended).
    NotHeld,
    /// The lock is above the transaction's revision, taken by a late copy of a prepare:
    /// only forget it.
    ForgetLateLock,
    /// Write the part at the transaction's revision and forget the lock.
    Write,
}

/// Decides a committed transaction's part in a range holding `locks`.
pub fn decide_part(locks: &LockTable, txn: TxnId, txn_revision: u64) -> PartStep {
    match locks.locks().find(|held| held.txn == txn) {
        None => PartStep::NotHeld,
        Some(lock) if lock.revision > txn_revision => PartStep::ForgetLateLock,
        Some(_) => PartStep::Write,
    }
}

/// Whether a part being written raises the range's revision to the transaction's
/// without a key changed: when it changes no key here and the revision is above the
/// range's. A part that changes keys must be above the range's current revision (no
/// write landed while the lock was held, and the lock was above it): a broken invariant
/// otherwise, asserted.
pub fn part_raises(changes_keys: bool, txn_revision: u64, current_revision: u64) -> bool {
    assert!(
        !changes_keys || txn_revision > current_revision,
        "a transaction writes at {txn_revision}, not above its range's revision \
         {current_revision}"
    );
    !changes_keys && txn_revision > current_revision
}

/// Whether a release found the lock it names: the transaction's lock taken at
/// `prepared_revision`, or any lock of it when that is 0 (an abort's release, a
/// pusher's). `held_revision` is the revision of the transaction's lock the range held,
/// if it held one. A lock at another revision is not the one the transaction read
/// under: a pusher ended that one, which let writes in, and a late copy of the prepare
/// took this one since (review, 2026-12-04). Either way the release forgets it.
pub fn release_found(held_revision: Option<u64>, prepared_revision: u64) -> bool {
    held_revision.is_some_and(|held| prepared_revision == 0 || held == prepared_revision)
}

/// Whether a release raises the range's revision to `raise`: only if the range held the
/// lock (a pusher may have ended it first and let a write in) and `raise` is above it.
pub fn release_raises(held: bool, raise: u64, current_revision: u64) -> bool {
    held && raise > current_revision
}

#[cfg(test)]
mod tests {
    use ostrakon_raft::NodeId;

    use super::*;
    use crate::txn::KeySpan;
    use crate::RangeId;

    fn txn(number: u64) -> TxnId {
        TxnId {
            coordinator: NodeId(1),
            number,
            born: 0,
        }
    }

    fn lock(number: u64, revision: u64) -> Lock {
        Lock {
            txn: txn(number),
            revision,
            primary: RangeId(1),
            spans: vec![KeySpan::key(b"a")],
        }
    }

    fn holding(held: Lock) -> LockTable {
        let mut locks = LockTable::default();
        locks.prepare(held, 0).expect("an empty table takes a lock");
        locks
    }

    #[test]
    fn a_range_takes_one_lock_above_its_revision() {
        let empty = LockTable::default();
        assert_eq!(
            decide_prepare(&empty, &lock(1, 10), true, 9),
            PrepareStep::Lock
        );
        assert_eq!(
            decide_prepare(&empty, &lock(1, 10), true, 10),
            PrepareStep::Refused(PrepareRefusal::Stale {
                current_revision: 10
            })
        );
        assert_eq!(
            decide_prepare(&empty, &lock(1, 10), false, 9),
            PrepareStep::Refused(PrepareRefusal::OutsideSpan)
        );
        // Another transaction's lock freezes the whole range, whatever keys it holds.
        let mut other = lock(2, 5);
        other.spans = vec![KeySpan::key(b"z")];
        assert_eq!(
            decide_prepare(&holding(other), &lock(1, 10), true, 4),
            PrepareStep::Refused(PrepareRefusal::Locked)
        );
    }

    #[test]
    fn a_leader_lets_a_prepare_through_only_behind_the_unlock_of_every_lock() {
        let locks = holding(lock(2, 5));
        let none = |_: TxnId| false;
        let two = |unlocked: TxnId| unlocked == txn(2);
        // Held off, unless the lock's resolve or release is already in the log ahead.
        assert!(holds_off_unless_unlocking(
            &locks,
            RangeWrite::Prepare(txn(1)),
            none
        ));
        assert!(!holds_off_unless_unlocking(
            &locks,
            RangeWrite::Prepare(txn(1)),
            two
        ));
        // Where it applies, only the locks decide.
        assert!(holds_off(&locks, RangeWrite::Prepare(txn(1))));
        // A write of keys waits for the lock to go whatever is in the log: it would take
        // a revision of its own below the transaction's part, maybe.
        assert!(holds_off_unless_unlocking(
            &locks,
            RangeWrite::ChangesKeys,
            two
        ));
        assert!(!holds_off_unless_unlocking(
            &LockTable::default(),
            RangeWrite::Prepare(txn(1)),
            none
        ));
        // Its own lock never holds a transaction's prepare off (a prepare tried again).
        assert!(!holds_off_unless_unlocking(
            &locks,
            RangeWrite::Prepare(txn(2)),
            none
        ));
    }

    #[test]
    fn a_prepare_applied_again_answers_the_revision_its_lock_holds() {
        let locks = holding(lock(1, 10));
        // Retried through the log after another fetch: the same lock, a newer revision.
        assert_eq!(
            decide_prepare(&locks, &lock(1, 12), true, 9),
            PrepareStep::Again { revision: 10 }
        );
        let mut other_spans = lock(1, 10);
        other_spans.spans = vec![KeySpan::key(b"b")];
        assert_eq!(
            decide_prepare(&locks, &other_spans, true, 9),
            PrepareStep::Refused(PrepareRefusal::Locked)
        );
    }

    #[test]
    fn a_lock_holds_off_writes_of_keys_and_other_prepares_only() {
        let empty = LockTable::default();
        assert!(!holds_off(&empty, RangeWrite::ChangesKeys));
        assert!(!holds_off(&empty, RangeWrite::Prepare(txn(2))));
        let locks = holding(lock(1, 10));
        assert!(holds_off(&locks, RangeWrite::ChangesKeys));
        assert!(holds_off(&locks, RangeWrite::Prepare(txn(2))));
        assert!(!holds_off(&locks, RangeWrite::Prepare(txn(1))));
        assert!(!holds_off(&locks, RangeWrite::ChangesNoKey));
    }

    #[test]
    fn the_transaction_takes_the_highest_prepare_and_writes_above_every_range() {
        assert_eq!(txn_revision([7, 12, 9]), 12);
        let locks = holding(lock(1, 9));
        assert_eq!(decide_part(&locks, txn(1), 12), PartStep::Write);
        assert_eq!(decide_part(&locks, txn(2), 12), PartStep::NotHeld);
        // A late copy of a prepare locked above the revision the transaction wrote at.
        assert_eq!(decide_part(&locks, txn(1), 8), PartStep::ForgetLateLock);
        assert!(!part_raises(true, 12, 8));
        assert!(part_raises(false, 12, 8));
        assert!(!part_raises(false, 12, 12));
    }

    #[test]
    #[should_panic(expected = "not above its range's revision")]
    fn a_part_written_at_or_below_its_range_is_a_bug() {
        part_raises(true, 12, 12);
    }

    #[test]
    fn a_release_raises_only_a_range_that_still_held_the_lock() {
        assert!(release_raises(true, 12, 8));
        assert!(!release_raises(false, 12, 8));
        assert!(!release_raises(true, 8, 8));
    }

    #[test]
    fn a_release_finds_only_the_lock_its_prepare_took() {
        assert!(release_found(Some(12), 12));
        // A late copy of the prepare's lock, taken after a pusher ended the first.
        assert!(!release_found(Some(15), 12));
        assert!(!release_found(None, 12));
        // An abort's release names no revision: any lock of the transaction.
        assert!(release_found(Some(15), 0));
        assert!(!release_found(None, 0));
    }

    #[test]
    fn a_transaction_takes_its_highest_prepare_unless_the_bug_is_planted() {
        assert_eq!(txn_revision([7, 12, 9]), 12);
        assert_eq!(txn_revision_with_bug([7, 12, 9], None), 12);
        let bug = Some(crate::RangeBug::TxnTakesLowestPrepare);
        assert_eq!(txn_revision_with_bug([7, 12, 9], bug), 7);
    }
}
