//! Transactions across ranges in the simulated state machine: the commands of two-phase
//! commit and how a range applies them, with the range layer's real lock table and
//! transaction records (`ostrakon_ranges::txn`). A participant locks the registers a
//! transaction touches at its revision T (`Prepare`); the primary range's record decides
//! it (`Commit`, or `Abort` by whoever finds it stale); the other participants write
//! their part at T and release (`Resolve`), or just release (`Release`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ostrakon_raft::NodeId;
use ostrakon_ranges::frozen_txn::{self, PartStep, PrepareStep};
use ostrakon_ranges::txn::{Decided, KeySpan, Lock, LockTable, TxnId, TxnOutcome, TxnRecords};
use ostrakon_ranges::RangeId;

use crate::kv::{routing_key, KvState};
use crate::scenario::TxnProtocol;

/// A transaction's writes: (register, value).
pub type Writes = Vec<(u64, u64)>;

/// What a primary range records of a committed transaction: its revision and writes.
pub type Record = (u64, Writes);

/// A range's share of the transactions: its locks, and, as a primary, their records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnState {
    /// The locks of transactions prepared here.
    pub locks: LockTable,
    /// How the transactions whose primary this range is ended.
    pub records: TxnRecords<Record>,
    /// How many records horizons have forgotten here.
    pub forgotten: u64,
    /// The committed records horizons forgot here (for the checks at the end only:
    /// nothing the range decides reads it).
    pub forgotten_committed: Vec<(TxnId, Record)>,
}

/// The entry tags of transaction commands (register commands use lower ones).
pub const TXN_TAG_BASE: u8 = 10;

/// A command of two-phase commit, replicated through a range's raft log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnCommand {
    /// Lock `keys` at `revision` for `txn`, whose record is in `primary`.
    Prepare {
        /// The transaction.
        txn: TxnId,
        /// Its revision.
        revision: u64,
        /// Its primary range.
        primary: RangeId,
        /// The registers it touches in this range.
        keys: Vec<u64>,
    },
    /// The commit point, in the primary: record the transaction committed with its
    /// writes in every range, and write this range's part.
    Commit {
        /// The transaction.
        txn: TxnId,
        /// Its revision.
        revision: u64,
        /// Every write of it, in every range.
        writes: Writes,
    },
    /// In the primary: the transaction will never commit, unless it did already.
    Abort {
        /// The transaction.
        txn: TxnId,
    },
    /// A committed transaction's part here: written at its revision, lock released.
    Resolve {
        /// The transaction.
        txn: TxnId,
        /// Its revision.
        revision: u64,
        /// Every write of it (this range writes those in its span).
        writes: Writes,
    },
    /// An aborted transaction's lock here, released; or, with `raise`, a read-only
    /// one's (under whole-range locks the range's revision moves up to `raise`, as the
    /// node's `frozen_txn::release_raises` says, if the range held the lock its prepare
    /// took: `frozen_txn::release_found`).
    Release {
        /// The transaction.
        txn: TxnId,
        /// The revision a read-only transaction read at (0: none).
        raise: u64,
        /// The revision its prepare took here (0: any lock of it).
        prepared: u64,
    },
    /// In a primary: transactions born below `below` can no longer commit, and their
    /// aborted records and finished committed ones are forgotten
    /// (`TxnRecords::raise_horizon`).
    Horizon {
        /// The new horizon (an oracle timestamp).
        below: u64,
    },
    /// In a primary: a pusher wrote every part of the committed transaction.
    Finished {
        /// The transaction.
        txn: TxnId,
    },
}

/// What applying a transaction command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnApplied {
    /// Prepared at `revision` (the prepare's own; or, applied again under whole-range
    /// locks, the lock's), with the locked registers' values (as of the revision, since
    /// nothing below it can still be written and nothing above can pass the lock).
    Prepared {
        /// The revision of the lock.
        revision: u64,
        /// The values.
        values: Vec<(u64, Option<u64>)>,
    },
    /// Not prepared (why, for the trace).
    Refused(String),
    /// The transaction committed (its record, from a commit or an abort that found it).
    Committed(Record),
    /// The transaction aborted.
    Aborted,
    /// Born below the primary's horizon with no record: it can no longer commit, but
    /// whether it did is not known.
    Forgotten,
    /// Done (nothing to answer).
    Done,
    /// Resolved: the registers of its writes the range's span held when the resolve
    /// applied (their part is written, now or before; a split may have moved others,
    /// and their locks, to another range).
    Resolved {
        /// See above.
        registers: Vec<u64>,
    },
    /// Released: whether the range still held the lock the release named (a pusher may
    /// have ended it; a late copy of a prepare may have taken another since, at a later
    /// revision: `frozen_txn::release_found`).
    Released {
        /// See above.
        held: bool,
    },
}

fn put_txn(buf: &mut BytesMut, txn: TxnId) {
    buf.put_u64(txn.coordinator.0);
    buf.put_u64(txn.number);
    buf.put_u64(txn.born);
}

fn get_txn(buf: &mut Bytes) -> TxnId {
    TxnId {
        coordinator: NodeId(buf.get_u64()),
        number: buf.get_u64(),
        born: buf.get_u64(),
    }
}

fn put_writes(buf: &mut BytesMut, writes: &Writes) {
    buf.put_u64(writes.len() as u64);
    for &(key, value) in writes {
        buf.put_u64(key);
        buf.put_u64(value);
    }
}

fn get_writes(buf: &mut Bytes) -> Writes {
    let count = buf.get_u64();
    (0..count).map(|_| (buf.get_u64(), buf.get_u64())).collect()
}

impl TxnCommand {
    /// The wire form: a tag byte then the fields, lists prefixed by their length.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            TxnCommand::Prepare {
                txn,
                revision,
                primary,
                keys,
            } => {
                buf.put_u8(TXN_TAG_BASE);
                put_txn(&mut buf, *txn);
                buf.put_u64(*revision);
                buf.put_u64(primary.0);
                buf.put_u64(keys.len() as u64);
                for &key in keys {
                    buf.put_u64(key);
                }
            }
            TxnCommand::Commit {
                txn,
                revision,
                writes,
            }
            | TxnCommand::Resolve {
                txn,
                revision,
                writes,
            } => {
                let commit = matches!(self, TxnCommand::Commit { .. });
                buf.put_u8(TXN_TAG_BASE + if commit { 1 } else { 3 });
                put_txn(&mut buf, *txn);
                buf.put_u64(*revision);
                put_writes(&mut buf, writes);
            }
            TxnCommand::Abort { txn } => {
                buf.put_u8(TXN_TAG_BASE + 2);
                put_txn(&mut buf, *txn);
            }
            TxnCommand::Release {
                txn,
                raise,
                prepared,
            } => {
                buf.put_u8(TXN_TAG_BASE + 4);
                put_txn(&mut buf, *txn);
                buf.put_u64(*raise);
                buf.put_u64(*prepared);
            }
            TxnCommand::Finished { txn } => {
                buf.put_u8(TXN_TAG_BASE + 6);
                put_txn(&mut buf, *txn);
            }
            TxnCommand::Horizon { below } => {
                buf.put_u8(TXN_TAG_BASE + 5);
                buf.put_u64(*below);
            }
        }
        buf.freeze()
    }

    /// Parses the wire form (only what `encode` wrote: anything else is a bug).
    pub fn decode(data: &[u8]) -> TxnCommand {
        let mut buf = Bytes::copy_from_slice(data);
        let tag = buf.get_u8();
        if tag == TXN_TAG_BASE + 5 {
            return TxnCommand::Horizon {
                below: buf.get_u64(),
            };
        }
        let txn = get_txn(&mut buf);
        match tag - TXN_TAG_BASE {
            0 => {
                let revision = buf.get_u64();
                let primary = RangeId(buf.get_u64());
                let count = buf.get_u64();
                let keys = (0..count).map(|_| buf.get_u64()).collect();
                TxnCommand::Prepare {
                    txn,
                    revision,
                    primary,
                    keys,
                }
            }
            1 => TxnCommand::Commit {
                txn,
                revision: buf.get_u64(),
                writes: get_writes(&mut buf),
            },
            2 => TxnCommand::Abort { txn },
            3 => TxnCommand::Resolve {
                txn,
                revision: buf.get_u64(),
                writes: get_writes(&mut buf),
            },
            4 => TxnCommand::Release {
                txn,
                raise: buf.get_u64(),
                prepared: buf.get_u64(),
            },
            6 => TxnCommand::Finished { txn },
            other => panic!("unknown transaction command tag {}", other + TXN_TAG_BASE),
        }
    }

    /// The revision a write of it takes, if it is a prepare (which the leader checks
    /// against its read floor before proposing it).
    pub fn prepare_revision(&self) -> Option<u64> {
        match self {
            TxnCommand::Prepare { revision, .. } => Some(*revision),
            _ => None,
        }
    }
}

/// Applies a transaction command to a range's state, the same on every replica, under
/// `protocol`'s rules.
pub fn apply_txn(state: &mut KvState, command: &TxnCommand, protocol: TxnProtocol) -> TxnApplied {
    match command {
        TxnCommand::Prepare {
            txn,
            revision,
            primary,
            keys,
        } => {
            let Some(descriptor) = state.descriptor.as_ref() else {
                return TxnApplied::Refused("no span".into());
            };
            if let Some(key) = keys
                .iter()
                .find(|&&k| !descriptor.contains(&routing_key(k)))
            {
                return TxnApplied::Refused(format!("register {key} moved"));
            }
            let lock = Lock {
                txn: *txn,
                revision: *revision,
                primary: *primary,
                spans: keys
                    .iter()
                    .map(|&k| KeySpan::key(&routing_key(k)))
                    .collect(),
            };
            let values = keys
                .iter()
                .map(|&k| (k, state.registers.get(&k).copied()))
                .collect();
            if protocol == TxnProtocol::WholeRange {
                return prepare_whole_range(state, lock, values);
            }
            match state.txns.locks.prepare(lock, state.last_revision) {
                Ok(()) => {
                    // Every later write of the range takes a revision above it.
                    state.last_revision = state.last_revision.max(*revision);
                    TxnApplied::Prepared {
                        revision: *revision,
                        values,
                    }
                }
                Err(refused) => TxnApplied::Refused(format!("{refused:?}")),
            }
        }
        TxnCommand::Commit {
            txn,
            revision,
            writes,
        } => match state.txns.records.commit(*txn, (*revision, writes.clone())) {
            Ok(_) => {
                write_part(state, *txn, *revision, writes, protocol);
                TxnApplied::Committed((*revision, writes.clone()))
            }
            Err(Decided::Aborted) => TxnApplied::Aborted,
            Err(Decided::Forgotten) => {
                // Below the horizon it can never commit: its lock here goes now, as the
                // node's store releases it, rather than wait for a pusher.
                state.txns.locks.release(*txn);
                TxnApplied::Forgotten
            }
            Err(Decided::Committed(other)) => {
                TxnApplied::Refused(format!("committed already with {other:?}"))
            }
        },
        TxnCommand::Abort { txn } => match state.txns.records.abort(*txn) {
            Ok(_) => {
                state.txns.locks.release(*txn);
                TxnApplied::Aborted
            }
            Err(Decided::Committed(record)) => {
                // Its own part was written when it committed, unless a split moved the
                // lock here since (then it is written now).
                write_part(state, *txn, record.0, &record.1, protocol);
                TxnApplied::Committed(record)
            }
            Err(Decided::Forgotten) => {
                state.txns.locks.release(*txn);
                TxnApplied::Forgotten
            }
            Err(Decided::Aborted) => unreachable!("abort refuses only a committed record"),
        },
        TxnCommand::Resolve {
            txn,
            revision,
            writes,
        } => {
            write_part(state, *txn, *revision, writes, protocol);
            let registers = writes
                .iter()
                .map(|&(register, _)| register)
                .filter(|&register| {
                    state
                        .descriptor
                        .as_ref()
                        .is_some_and(|descriptor| descriptor.contains(&routing_key(register)))
                })
                .collect();
            TxnApplied::Resolved { registers }
        }
        TxnCommand::Release {
            txn,
            raise,
            prepared,
        } => {
            let lock_revision = state.txns.locks.release(*txn).map(|lock| lock.revision);
            let held = frozen_txn::release_found(lock_revision, *prepared);
            if protocol == TxnProtocol::WholeRange
                && frozen_txn::release_raises(held, *raise, state.last_revision)
            {
                state.last_revision = *raise;
            }
            TxnApplied::Released { held }
        }
        TxnCommand::Horizon { below } => {
            for (txn, outcome) in state.txns.records.raise_horizon(*below) {
                state.txns.forgotten += 1;
                if let TxnOutcome::Committed(record) = outcome {
                    state.txns.forgotten_committed.push((txn, record));
                }
            }
            TxnApplied::Done
        }
        TxnCommand::Finished { txn } => {
            state.txns.records.mark_finished(*txn);
            TxnApplied::Done
        }
    }
}

/// A prepare under whole-range locks (`ostrakon_ranges::frozen_txn`, as the node's
/// store applies it): the range's revision is not raised, the part raises it.
fn prepare_whole_range(
    state: &mut KvState,
    lock: Lock,
    values: Vec<(u64, Option<u64>)>,
) -> TxnApplied {
    // The span was checked by the caller.
    match frozen_txn::decide_prepare(&state.txns.locks, &lock, true, state.last_revision) {
        PrepareStep::Lock => {
            let revision = lock.revision;
            state
                .txns
                .locks
                .prepare(lock, state.last_revision)
                .expect("a range without locks takes a lock above its revision");
            TxnApplied::Prepared { revision, values }
        }
        PrepareStep::Again { revision } => TxnApplied::Prepared { revision, values },
        PrepareStep::Refused(refused) => TxnApplied::Refused(format!("{refused:?}")),
    }
}

/// Writes a committed transaction's part here at its revision, under `protocol`.
fn write_part(
    state: &mut KvState,
    txn: TxnId,
    revision: u64,
    writes: &Writes,
    protocol: TxnProtocol,
) {
    if protocol == TxnProtocol::KeyLocks {
        write_locked(state, txn, revision, writes);
        return;
    }
    match frozen_txn::decide_part(&state.txns.locks, txn, revision) {
        PartStep::NotHeld => {}
        PartStep::ForgetLateLock => {
            state.txns.locks.release(txn);
        }
        PartStep::Write => {
            let current = state.last_revision;
            let changes_keys = write_locked(state, txn, revision, writes);
            // Asserts nothing landed at or above the revision while the lock held.
            frozen_txn::part_raises(changes_keys, revision, current);
            state.last_revision = state.last_revision.max(revision);
        }
    }
}

/// Writes a committed transaction's writes that fall in the range at its revision, if
/// the range still holds its lock (else they were written already, or never prepared
/// here), and releases the lock. Returns whether it wrote a register.
fn write_locked(state: &mut KvState, txn: TxnId, revision: u64, writes: &Writes) -> bool {
    let Some(lock) = state.txns.locks.release(txn) else {
        return false;
    };
    let mut wrote = false;
    for &(key, value) in writes {
        let held = lock
            .spans
            .iter()
            .any(|span| span == &KeySpan::key(&routing_key(key)));
        if held {
            // Nothing was written to the key above the revision while it was locked.
            state.versions.insert((key, revision), value);
            state.registers.insert(key, value);
            wrote = true;
        }
    }
    wrote
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_ranges::RangeDescriptor;

    const KEY_LOCKS: TxnProtocol = TxnProtocol::KeyLocks;

    fn txn(number: u64) -> TxnId {
        TxnId {
            coordinator: NodeId(7),
            number,
            born: 1000 + number,
        }
    }

    #[test]
    fn commands_round_trip() {
        for command in [
            TxnCommand::Prepare {
                txn: txn(1),
                revision: 9,
                primary: RangeId(2),
                keys: vec![3, 4],
            },
            TxnCommand::Commit {
                txn: txn(1),
                revision: 9,
                writes: vec![(3, 10), (4, 11)],
            },
            TxnCommand::Abort { txn: txn(2) },
            TxnCommand::Resolve {
                txn: txn(1),
                revision: 9,
                writes: vec![],
            },
            TxnCommand::Release {
                txn: txn(3),
                raise: 5,
                prepared: 4,
            },
            TxnCommand::Horizon { below: 1002 },
            TxnCommand::Finished { txn: txn(4) },
        ] {
            assert_eq!(TxnCommand::decode(&command.encode()), command);
        }
    }

    #[test]
    fn a_prepared_transaction_commits_at_its_revision_or_aborts_without_a_trace() {
        let mut state = KvState {
            descriptor: Some(RangeDescriptor::new(RangeId(1), Vec::new(), None, 1)),
            ..KvState::default()
        };
        let prepare = |number, revision| TxnCommand::Prepare {
            txn: txn(number),
            revision,
            primary: RangeId(1),
            keys: vec![1, 2],
        };
        assert_eq!(
            apply_txn(&mut state, &prepare(1, 5), KEY_LOCKS),
            TxnApplied::Prepared {
                revision: 5,
                values: vec![(1, None), (2, None)]
            }
        );
        assert_eq!(state.last_revision, 5);
        // Another transaction on the same registers is refused while the lock is held.
        assert!(matches!(
            apply_txn(&mut state, &prepare(2, 6), KEY_LOCKS),
            TxnApplied::Refused(_)
        ));
        let writes = vec![(1, 10), (2, 20)];
        let commit = TxnCommand::Commit {
            txn: txn(1),
            revision: 5,
            writes: writes.clone(),
        };
        assert_eq!(
            apply_txn(&mut state, &commit, KEY_LOCKS),
            TxnApplied::Committed((5, writes.clone()))
        );
        assert_eq!(crate::kv::value_at(&state.versions, 2, 5), Some(20));
        // An abort arriving late finds it committed.
        assert_eq!(
            apply_txn(&mut state, &TxnCommand::Abort { txn: txn(1) }, KEY_LOCKS),
            TxnApplied::Committed((5, writes))
        );
        // One aborted first can no longer commit, and leaves nothing.
        assert!(matches!(
            apply_txn(&mut state, &prepare(3, 8), KEY_LOCKS),
            TxnApplied::Prepared { .. }
        ));
        assert_eq!(
            apply_txn(&mut state, &TxnCommand::Abort { txn: txn(3) }, KEY_LOCKS),
            TxnApplied::Aborted
        );
        let late = TxnCommand::Commit {
            txn: txn(3),
            revision: 8,
            writes: vec![(1, 99)],
        };
        assert_eq!(apply_txn(&mut state, &late, KEY_LOCKS), TxnApplied::Aborted);
        assert_eq!(crate::kv::value_at(&state.versions, 1, 8), Some(10));
        assert!(state.txns.locks.is_empty());
        // A horizon above its birth forgets the aborted record, and the late commit is
        // still refused.
        apply_txn(&mut state, &TxnCommand::Horizon { below: 1004 }, KEY_LOCKS);
        assert_eq!(state.txns.forgotten, 1);
        assert_eq!(state.txns.records.outcome(txn(3)), None);
        assert_eq!(
            apply_txn(&mut state, &late, KEY_LOCKS),
            TxnApplied::Forgotten
        );
        assert_eq!(crate::kv::value_at(&state.versions, 1, 8), Some(10));
        // A late prepare of one born below the horizon locks; its commit, answered
        // forgotten, releases the lock (as the node's store does).
        assert!(matches!(
            apply_txn(&mut state, &prepare(2, 9), KEY_LOCKS),
            TxnApplied::Prepared { .. }
        ));
        let commit = TxnCommand::Commit {
            txn: txn(2),
            revision: 9,
            writes: vec![(1, 77)],
        };
        assert_eq!(
            apply_txn(&mut state, &commit, KEY_LOCKS),
            TxnApplied::Forgotten
        );
        assert!(
            state.txns.locks.is_empty(),
            "the forgotten commit's lock stays"
        );
        assert_eq!(crate::kv::value_at(&state.versions, 1, 9), Some(10));
    }

    #[test]
    fn under_whole_range_locks_a_part_raises_the_range_and_a_late_lock_is_forgotten() {
        const WHOLE: TxnProtocol = TxnProtocol::WholeRange;
        let mut state = KvState {
            descriptor: Some(RangeDescriptor::new(RangeId(1), Vec::new(), None, 1)),
            last_revision: 4,
            ..KvState::default()
        };
        let prepare = |number, revision, keys: Vec<u64>| TxnCommand::Prepare {
            txn: txn(number),
            revision,
            primary: RangeId(1),
            keys,
        };
        // Stale: the range applied a write at or above the prepare's revision.
        assert!(matches!(
            apply_txn(&mut state, &prepare(1, 4, vec![1]), WHOLE),
            TxnApplied::Refused(_)
        ));
        assert_eq!(
            apply_txn(&mut state, &prepare(1, 6, vec![1]), WHOLE),
            TxnApplied::Prepared {
                revision: 6,
                values: vec![(1, None)]
            }
        );
        assert_eq!(state.last_revision, 4, "a prepare does not raise the range");
        // Applied again (a copy fetched another revision): the lock's revision.
        assert!(matches!(
            apply_txn(&mut state, &prepare(1, 7, vec![1]), WHOLE),
            TxnApplied::Prepared { revision: 6, .. }
        ));
        // Another transaction, even on other keys, is refused: the whole range is held.
        assert!(matches!(
            apply_txn(&mut state, &prepare(2, 8, vec![2]), WHOLE),
            TxnApplied::Refused(_)
        ));
        // Committed at 9 (another range's prepare was higher): written at 9, raised.
        let commit = TxnCommand::Commit {
            txn: txn(1),
            revision: 9,
            writes: vec![(1, 10), (5, 50)],
        };
        assert!(matches!(
            apply_txn(&mut state, &commit, WHOLE),
            TxnApplied::Committed(_)
        ));
        assert_eq!(crate::kv::value_at(&state.versions, 1, 9), Some(10));
        assert_eq!(
            crate::kv::value_at(&state.versions, 5, 9),
            None,
            "not locked here"
        );
        assert_eq!(state.last_revision, 9);
        assert!(state.txns.locks.is_empty());
        // A late copy of a prepare of another transaction's part, fetched above its
        // revision, locks; the resolve at the transaction's revision only forgets it.
        let mut other = KvState {
            descriptor: Some(RangeDescriptor::new(RangeId(2), Vec::new(), None, 1)),
            ..KvState::default()
        };
        assert!(matches!(
            apply_txn(&mut other, &prepare(3, 12, vec![2]), WHOLE),
            TxnApplied::Prepared { .. }
        ));
        let resolve = TxnCommand::Resolve {
            txn: txn(3),
            revision: 11,
            writes: vec![(2, 20)],
        };
        assert_eq!(
            apply_txn(&mut other, &resolve, WHOLE),
            TxnApplied::Resolved { registers: vec![2] }
        );
        assert!(other.txns.locks.is_empty());
        assert_eq!(crate::kv::value_at(&other.versions, 2, 12), None);
        assert_eq!(other.last_revision, 0);
    }
}
