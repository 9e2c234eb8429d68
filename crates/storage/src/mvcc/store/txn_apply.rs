//! How a range applies the commands of two-phase commit (docs/RANGES.md, "Writes across
//! ranges in the node"), identically on every replica: a prepare locks keys for a
//! transaction at the revision the range's leader fetched for it; the primary's commit
//! or abort decides the transaction; a resolve writes a committed transaction's part
//! and a release forgets an aborted one's lock. While a lock is held, no other write
//! changes the range's keys (`MvccError::Locked`), so the transaction's part is written
//! above everything the range holds, and what its coordinator read stays true.

use std::sync::Arc;

use ostrakon_proto::peer as pb;
use ostrakon_raft::{LogIndex, Term};
use ostrakon_ranges::frozen_txn::{self, PartStep, PrepareRefusal, PrepareStep};
use ostrakon_ranges::txn::{Decided, KeySpan as LockSpan, Lock, TxnId, TxnOutcome};
use ostrakon_ranges::RangeId;

use super::{LocalChange, MvccStore};
use crate::fatal::engine;
use crate::mvcc::txn_tables::{self, txn_id_of};
use crate::mvcc::{MvccError, Revision};

fn span_contains(span: &LockSpan, key: &[u8]) -> bool {
    span.start.as_slice() <= key && span.end.as_deref().is_none_or(|end| key < end)
}

fn named_txn(record: Option<&pb::TxnIdRecord>) -> TxnId {
    txn_id_of(record.expect("a transaction command names its transaction"))
}

impl MvccStore {
    /// Whether a transaction across ranges holds a lock here.
    pub fn has_txn_locks(&self) -> bool {
        !self.txn_locks.lock().unwrap().is_empty()
    }

    /// The lock table, as of the last applied entry.
    pub fn txn_lock_table(&self) -> Arc<ostrakon_ranges::txn::LockTable> {
        self.txn_locks.lock().unwrap().clone()
    }

    /// The locks held here, as of the last applied entry.
    pub fn txn_locks(&self) -> Vec<Lock> {
        self.txn_locks.lock().unwrap().locks().cloned().collect()
    }

    /// Applies a prepare at (`index`, `term`) with the revision the write came with:
    /// locks its spans, which must be the range's, if no lock is held here and the
    /// revision is above the range's current one. Preparing the same lock again (an
    /// entry retried through the log) answers as the first time.
    pub fn apply_txn_prepare(
        &self,
        index: LogIndex,
        term: Term,
        prepare: &pb::TxnPrepare,
        revision: Revision,
    ) -> Result<pb::TxnPrepared, MvccError> {
        let txn = named_txn(prepare.txn.as_ref());
        let spans: Vec<LockSpan> = prepare
            .spans
            .iter()
            .map(txn_tables::span_of_record)
            .collect();
        let span = self.span();
        let inside = spans
            .iter()
            .all(|lock| span.covers(&lock.start, lock.end.as_deref().unwrap_or(&[0])));
        let lock = Lock {
            txn,
            revision: u64::try_from(revision.0).unwrap_or(0),
            primary: RangeId(prepare.primary),
            spans,
        };
        let locks = self.txn_locks.lock().unwrap().clone();
        let current = self.current_revision();
        let current_revision = u64::try_from(current.0).unwrap_or(0);
        match frozen_txn::decide_prepare(&locks, &lock, inside, current_revision) {
            PrepareStep::Lock => {}
            PrepareStep::Again { revision } => {
                self.set_applied(index, term);
                return Ok(pb::TxnPrepared {
                    revision: i64::try_from(revision).expect("revisions below 2^63"),
                    index: index.0,
                });
            }
            PrepareStep::Refused(PrepareRefusal::OutsideSpan) => {
                return Err(MvccError::WrongRange {
                    group: self.group().0,
                })
            }
            PrepareStep::Refused(PrepareRefusal::Locked) => return Err(MvccError::Locked),
            PrepareStep::Refused(PrepareRefusal::Stale { .. }) => {
                return Err(MvccError::StaleRevision {
                    given: revision,
                    current,
                })
            }
        }
        let mut held = (*locks).clone();
        held.prepare(lock.clone(), u64::try_from(current.0).unwrap_or(0))
            .expect("a range without locks takes one above its revision");
        let mut batch = self.keyspace.batch();
        self.put_local_changes(&mut batch, [txn_tables::store_lock(&lock)]);
        self.put_applied(&mut batch, index, term);
        engine("committing a prepare", batch.commit());
        {
            let _latest = self.latest.lock().unwrap();
            *self.txn_locks.lock().unwrap() = Arc::new(held);
        }
        self.set_applied(index, term);
        Ok(pb::TxnPrepared {
            revision: revision.0,
            index: index.0,
        })
    }

    /// Applies a commit in the transaction's primary: the commit point, unless someone
    /// aborted it first. Writes the primary's own part with the record.
    pub fn apply_txn_commit(
        &self,
        index: LogIndex,
        term: Term,
        decide: &pb::TxnDecide,
    ) -> pb::TxnDecided {
        let txn = named_txn(decide.txn.as_ref());
        let writes = decide.writes.clone().expect("a commit carries its writes");
        let decided = self
            .txn_outcomes
            .lock()
            .unwrap()
            .commit(txn, writes.clone());
        match decided {
            Ok(recorded) => {
                // Stored only if recorded now: a copy of the commit applied again (a
                // proposal retried through the log) must not store a record a pusher
                // marked finished since as unfinished; memory and disk would disagree.
                let record = recorded.then(|| {
                    txn_tables::store_outcome(txn, &TxnOutcome::Committed(writes.clone()), false)
                });
                self.write_locked(index, term, txn, &writes, record.into_iter().collect());
                pb::TxnDecided {
                    committed: true,
                    writes: Some(writes),
                    forgotten: false,
                }
            }
            Err(Decided::Aborted) => {
                self.set_applied(index, term);
                pb::TxnDecided::default()
            }
            Err(Decided::Forgotten) => {
                // Below the horizon it can never commit: its lock here goes now, as an
                // abort answered by the horizon releases it (the coordinator releases
                // the other ranges'), rather than freeze the range until a pusher comes.
                self.release_lock(index, term, txn, Vec::new(), 0, Revision(0));
                pb::TxnDecided {
                    forgotten: true,
                    ..Default::default()
                }
            }
            Err(Decided::Committed(standing)) => {
                self.set_applied(index, term);
                pb::TxnDecided {
                    committed: true,
                    writes: Some(standing),
                    forgotten: false,
                }
            }
        }
    }

    /// Applies an abort in the transaction's primary (by its coordinator, or by whoever
    /// found one of its locks stale): it will never commit, unless it did already, in
    /// which case the record is answered (and the primary's part written if its lock is
    /// still held).
    pub fn apply_txn_abort(
        &self,
        index: LogIndex,
        term: Term,
        txn: &pb::TxnIdRecord,
    ) -> pb::TxnDecided {
        let txn = txn_id_of(txn);
        let decided = self.txn_outcomes.lock().unwrap().abort(txn);
        match decided {
            Ok(recorded) => {
                // Stored only if recorded now.
                let record =
                    recorded.then(|| txn_tables::store_outcome(txn, &TxnOutcome::Aborted, false));
                self.release_lock(
                    index,
                    term,
                    txn,
                    record.into_iter().collect(),
                    0,
                    Revision(0),
                );
                pb::TxnDecided::default()
            }
            Err(Decided::Forgotten) => {
                // Below the horizon: nothing recorded, on disk as in memory; a lock of it
                // here is a late copy of a prepare.
                self.release_lock(index, term, txn, Vec::new(), 0, Revision(0));
                pb::TxnDecided {
                    forgotten: true,
                    ..Default::default()
                }
            }
            Err(Decided::Committed(writes)) => {
                self.write_locked(index, term, txn, &writes, Vec::new());
                pb::TxnDecided {
                    committed: true,
                    writes: Some(writes),
                    forgotten: false,
                }
            }
            Err(Decided::Aborted) => unreachable!("an abort is refused only when committed"),
        }
    }

    /// Applies a resolve: a committed transaction's writes in the range, at its revision,
    /// if the range still holds its lock (else they were written already). Returns
    /// whether it held it.
    pub fn apply_txn_resolve(&self, index: LogIndex, term: Term, decide: &pb::TxnDecide) -> bool {
        let txn = named_txn(decide.txn.as_ref());
        let writes = decide
            .writes
            .as_ref()
            .expect("a resolve carries its writes");
        self.write_locked(index, term, txn, writes, Vec::new())
    }

    /// Applies a release: the lock of an aborted transaction, or of one whose path
    /// wrote nothing, forgotten, and the range's revision raised as the release asks.
    /// Returns whether the range held the lock the release names (its prepare's; if
    /// not, nothing is raised: `frozen_txn::release_found`).
    pub fn apply_txn_release(&self, index: LogIndex, term: Term, release: &pb::TxnRelease) -> bool {
        let txn = named_txn(release.txn.as_ref());
        let raise = Revision(release.raise_revision);
        let prepared_revision = u64::try_from(release.prepared_revision).unwrap_or(0);
        self.release_lock(index, term, txn, Vec::new(), prepared_revision, raise)
    }

    /// Applies a forget in the primary: a committed transaction's record dropped, every
    /// range having written its part.
    pub fn apply_txn_forget(&self, index: LogIndex, term: Term, txn: &pb::TxnIdRecord) {
        let txn = txn_id_of(txn);
        let forgotten = self.txn_outcomes.lock().unwrap().forget_committed(txn);
        let changes = if forgotten {
            vec![(
                txn_tables::txn_name(txn_tables::OUTCOME_NAME_PREFIX, txn),
                None,
            )]
        } else {
            Vec::new()
        };
        self.write_txn().commit_with(index, term, changes, None);
    }

    /// Applies a pusher's word in a primary that every part of a committed transaction
    /// is written: its record stays, marked, until a horizon passes its birth.
    pub fn apply_txn_finished(&self, index: LogIndex, term: Term, txn: &pb::TxnIdRecord) {
        let txn = txn_id_of(txn);
        let mut outcomes = self.txn_outcomes.lock().unwrap();
        let changes = if outcomes.mark_finished(txn) {
            let outcome = outcomes.outcome(txn).expect("a finished record").clone();
            vec![txn_tables::store_outcome(txn, &outcome, true)]
        } else {
            Vec::new()
        };
        drop(outcomes);
        self.write_txn().commit_with(index, term, changes, None);
    }

    /// Applies a horizon in a primary: transactions born below it are aborted from now
    /// on, and the aborted records it passes are forgotten, in one batch with the new
    /// horizon (`TxnRecords::raise_horizon`).
    pub fn apply_txn_horizon(&self, index: LogIndex, term: Term, below: u64) {
        let mut outcomes = self.txn_outcomes.lock().unwrap();
        let forgotten = outcomes.raise_horizon(below);
        let changes = forgotten
            .iter()
            .map(|(txn, _)| {
                (
                    txn_tables::txn_name(txn_tables::OUTCOME_NAME_PREFIX, *txn),
                    None,
                )
            })
            .chain([txn_tables::store_horizon(outcomes.horizon())])
            .collect();
        drop(outcomes);
        if !forgotten.is_empty() {
            tracing::debug!(
                group = self.group().0,
                below,
                forgotten = forgotten.len(),
                "forgot aborted transaction records below the horizon"
            );
        }
        self.write_txn().commit_with(index, term, changes, None);
    }

    /// The earliest birth of an aborted record a horizon at `below` would forget.
    pub fn oldest_forgettable_txn(&self, below: u64) -> Option<u64> {
        self.txn_outcomes.lock().unwrap().oldest_forgettable(below)
    }

    /// The committed records nobody finished, of transactions born below `below`, at
    /// most `limit`, oldest first (`TxnRecords::unfinished_committed_below`).
    pub fn txn_unfinished_committed_below(
        &self,
        below: u64,
        limit: usize,
    ) -> Vec<(TxnId, pb::TxnWrites)> {
        self.txn_outcomes
            .lock()
            .unwrap()
            .unfinished_committed_below(below, limit)
            .into_iter()
            .map(|(txn, writes)| (txn, writes.clone()))
            .collect()
    }

    /// How many transaction outcomes this range keeps as a primary.
    pub fn txn_outcome_count(&self) -> usize {
        self.txn_outcomes.lock().unwrap().len()
    }

    /// How many of them are aborted records.
    pub fn txn_aborted_count(&self) -> usize {
        self.txn_outcomes.lock().unwrap().aborted_count()
    }

    /// Writes the transaction's writes that its lock here covers, at its revision, and
    /// forgets the lock, with `local_changes`, in one batch.
    fn write_locked(
        &self,
        index: LogIndex,
        term: Term,
        txn: TxnId,
        writes: &pb::TxnWrites,
        mut local_changes: Vec<LocalChange>,
    ) -> bool {
        let locks = self.txn_locks.lock().unwrap().clone();
        let revision = Revision(writes.revision);
        let txn_revision = u64::try_from(revision.0).unwrap_or(0);
        let step = frozen_txn::decide_part(&locks, txn, txn_revision);
        if step == PartStep::NotHeld {
            self.write_txn()
                .commit_with(index, term, local_changes, None);
            return false;
        }
        let mut remaining = (*locks).clone();
        let lock = remaining.release(txn).expect("decided on a lock held");
        local_changes.push(txn_tables::forget_lock(txn));
        if step == PartStep::ForgetLateLock {
            // A lock above the transaction's own revision (the highest of its locks)
            // was taken by a copy of its prepare that applied after its part here was
            // written (a proposal that reached a leader late): only forgotten.
            tracing::info!(
                ?txn,
                group = self.group().0,
                "forgot a lock a late prepare took"
            );
            self.write_txn()
                .commit_with(index, term, local_changes, Some(remaining));
            return false;
        }
        let mut write = self.write_txn_at(revision);
        let numbered_here = writes.writes.len() > 1 && writes.writes.iter().all(|w| w.sub == 0);
        for one in &writes.writes {
            if lock.spans.iter().any(|span| span_contains(span, &one.key)) {
                write.set_version(one, numbered_here);
            }
        }
        for &lease in &writes.revoked_leases {
            write.forget_lease(lease);
        }
        // No write changed the range's keys while the lock was held, and the lock's
        // revision was above the range's: so is the transaction's (the highest lock's).
        // A range that wrote nothing but was read at the revision (its compares, or only
        // a lease) is raised to it: no write fetched before may land at or below it now.
        let current = u64::try_from(self.current_revision().0).unwrap_or(0);
        if frozen_txn::part_raises(write.has_changes(), txn_revision, current) {
            write.raise_revision();
        }
        write.commit_with(index, term, local_changes, Some(remaining));
        true
    }

    /// Forgets the transaction's lock, if held, with `local_changes`, in one batch; if
    /// it was the lock taken at `prepared_revision` (any, if 0), the range's revision
    /// moves up to `raise` (when above it). Returns whether it was.
    fn release_lock(
        &self,
        index: LogIndex,
        term: Term,
        txn: TxnId,
        mut local_changes: Vec<LocalChange>,
        prepared_revision: u64,
        raise: Revision,
    ) -> bool {
        let mut remaining = (**self.txn_locks.lock().unwrap()).clone();
        let mut held_revision = None;
        let released = remaining.release(txn).map(|lock| {
            held_revision = Some(lock.revision);
            local_changes.push(txn_tables::forget_lock(txn));
            remaining
        });
        let held = frozen_txn::release_found(held_revision, prepared_revision);
        let current = u64::try_from(self.current_revision().0).unwrap_or(0);
        let raise_revision = u64::try_from(raise.0).unwrap_or(0);
        let write = if frozen_txn::release_raises(held, raise_revision, current) {
            let mut write = self.write_txn_at(raise);
            write.raise_revision();
            write
        } else {
            self.write_txn()
        };
        write.commit_with(index, term, local_changes, released);
        held
    }
}
