//! A range's share of the transactions across ranges, as stored: the locks of those
//! prepared in it and the outcomes of those whose primary it is (docs/RANGES.md, "Writes
//! across ranges in the node"). The rules live in `ostrakon_ranges::txn`; this module
//! maps them to the wire records and to names in the range's `local` state.

use ostrakon_proto::peer as pb;
use ostrakon_raft::NodeId;
use ostrakon_ranges::txn::{KeySpan as LockSpan, Lock, LockTable, TxnId, TxnOutcome, TxnRecords};
use ostrakon_ranges::RangeId;
use prost::Message as _;

use super::local::LocalState;

/// Names of the locks in a range's local state (then the transaction id).
pub(crate) const LOCK_NAME_PREFIX: &[u8] = b"txn_lock/";
/// Names of the outcomes a primary keeps (then the transaction id).
pub(crate) const OUTCOME_NAME_PREFIX: &[u8] = b"txn_outcome/";
/// The name of a primary's transaction horizon (big-endian).
pub(crate) const HORIZON_NAME: &[u8] = b"txn_horizon";

/// How the transactions a range is the primary of ended: a committed one keeps every
/// range's writes, so whoever finds one of its locks can finish it.
pub type TxnOutcomes = TxnRecords<pb::TxnWrites>;

/// The transaction a wire record names.
pub fn txn_id_of(record: &pb::TxnIdRecord) -> TxnId {
    TxnId {
        coordinator: NodeId(record.coordinator),
        number: record.number,
        born: record.born,
    }
}

/// The wire record of a transaction id.
pub fn txn_id_record(txn: TxnId) -> pb::TxnIdRecord {
    pb::TxnIdRecord {
        coordinator: txn.coordinator.0,
        number: txn.number,
        born: txn.born,
    }
}

/// The lock span of an etcd key interval (`range_end` empty: the key alone; `"\0"`: to
/// the end of the keyspace); None if the interval holds no key.
pub fn lock_span(key: &[u8], range_end: &[u8]) -> Option<LockSpan> {
    match range_end {
        [] => Some(LockSpan::key(key)),
        [0] => Some(LockSpan::span(key, None)),
        end if key < end => Some(LockSpan::span(key, Some(end))),
        _ => None,
    }
}

/// A lock span as a wire record.
pub fn span_record(span: &LockSpan) -> pb::KeySpanRecord {
    pb::KeySpanRecord {
        start: span.start.clone().into(),
        end: span.end.clone().map(Into::into),
    }
}

/// The lock span of a wire record (a record this server wrote: a bad one is a bug).
pub fn span_of_record(record: &pb::KeySpanRecord) -> LockSpan {
    LockSpan::span(&record.start, record.end.as_deref())
}

/// A lock as a wire record.
pub(crate) fn lock_record(lock: &Lock) -> pb::TxnLockRecord {
    pb::TxnLockRecord {
        txn: Some(txn_id_record(lock.txn)),
        revision: i64::try_from(lock.revision).expect("revisions stay below 2^63"),
        primary: lock.primary.0,
        spans: lock.spans.iter().map(span_record).collect(),
    }
}

/// The lock of a wire record.
pub(crate) fn lock_of_record(record: &pb::TxnLockRecord) -> Lock {
    Lock {
        txn: txn_id_of(record.txn.as_ref().expect("a lock names its transaction")),
        revision: u64::try_from(record.revision).expect("a lock's revision is positive"),
        primary: RangeId(record.primary),
        spans: record.spans.iter().map(span_of_record).collect(),
    }
}

/// An outcome as a wire record.
pub(crate) fn outcome_record(
    txn: TxnId,
    outcome: &TxnOutcome<pb::TxnWrites>,
    finished: bool,
) -> pb::TxnOutcomeRecord {
    let (committed, writes) = match outcome {
        TxnOutcome::Committed(writes) => (true, Some(writes.clone())),
        TxnOutcome::Aborted => (false, None),
    };
    pb::TxnOutcomeRecord {
        txn: Some(txn_id_record(txn)),
        committed,
        writes,
        finished,
    }
}

/// The name a transaction's lock or outcome is stored under.
pub(crate) fn txn_name(prefix: &[u8], txn: TxnId) -> Vec<u8> {
    let mut name = prefix.to_vec();
    name.extend_from_slice(&txn.coordinator.0.to_be_bytes());
    name.extend_from_slice(&txn.number.to_be_bytes());
    name
}

/// The tables of the wire records (a snapshot's, or the stored ones), with the
/// horizon the outcomes were kept under.
pub(crate) fn tables_of_records(
    locks: &[pb::TxnLockRecord],
    outcomes: &[pb::TxnOutcomeRecord],
    horizon: u64,
) -> (LockTable, TxnOutcomes) {
    let mut table = LockTable::default();
    for record in locks {
        table
            .prepare(lock_of_record(record), 0)
            .expect("stored locks do not overlap");
    }
    let mut records = TxnOutcomes::default();
    for record in outcomes {
        let txn = txn_id_of(
            record
                .txn
                .as_ref()
                .expect("an outcome names its transaction"),
        );
        let outcome = if record.committed {
            TxnOutcome::Committed(record.writes.clone().unwrap_or_default())
        } else {
            TxnOutcome::Aborted
        };
        records.restore(txn, outcome, record.finished);
    }
    records.restore_horizon(horizon);
    (table, records)
}

/// The wire records of the tables (for a snapshot).
pub(crate) fn records_of_tables(
    locks: &LockTable,
    outcomes: &TxnOutcomes,
) -> (Vec<pb::TxnLockRecord>, Vec<pb::TxnOutcomeRecord>) {
    (
        locks.locks().map(lock_record).collect(),
        outcomes
            .records()
            .map(|(txn, outcome)| outcome_record(*txn, outcome, outcomes.is_finished(*txn)))
            .collect(),
    )
}

/// The tables as stored in a range's local state.
pub(crate) fn load(local: &LocalState) -> (LockTable, TxnOutcomes) {
    let locks: Vec<pb::TxnLockRecord> = local
        .scan(LOCK_NAME_PREFIX)
        .iter()
        .map(|(_, value)| pb::TxnLockRecord::decode(value.as_ref()).expect("stored lock decodes"))
        .collect();
    let outcomes: Vec<pb::TxnOutcomeRecord> = local
        .scan(OUTCOME_NAME_PREFIX)
        .iter()
        .map(|(_, value)| {
            pb::TxnOutcomeRecord::decode(value.as_ref()).expect("stored outcome decodes")
        })
        .collect();
    let horizon = local.get(HORIZON_NAME).map_or(0, |value| {
        u64::from_be_bytes(value.as_ref().try_into().expect("8 bytes"))
    });
    tables_of_records(&locks, &outcomes, horizon)
}

/// A change to a range's local state, made in the same batch as the write it goes with:
/// a name set to a value, or removed.
pub(crate) type LocalChange = (Vec<u8>, Option<Vec<u8>>);

/// The local change that stores a lock.
pub(crate) fn store_lock(lock: &Lock) -> LocalChange {
    (
        txn_name(LOCK_NAME_PREFIX, lock.txn),
        Some(lock_record(lock).encode_to_vec()),
    )
}

/// The local change that forgets a lock.
pub(crate) fn forget_lock(txn: TxnId) -> LocalChange {
    (txn_name(LOCK_NAME_PREFIX, txn), None)
}

/// The local change that stores the horizon.
pub(crate) fn store_horizon(horizon: u64) -> LocalChange {
    (HORIZON_NAME.to_vec(), Some(horizon.to_be_bytes().to_vec()))
}

/// The local change that stores an outcome.
pub(crate) fn store_outcome(
    txn: TxnId,
    outcome: &TxnOutcome<pb::TxnWrites>,
    finished: bool,
) -> LocalChange {
    (
        txn_name(OUTCOME_NAME_PREFIX, txn),
        Some(outcome_record(txn, outcome, finished).encode_to_vec()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_become_lock_spans_as_etcd_reads_them() {
        assert_eq!(lock_span(b"a", b""), Some(LockSpan::key(b"a")));
        assert_eq!(lock_span(b"a", b"\0"), Some(LockSpan::span(b"a", None)));
        assert_eq!(
            lock_span(b"a", b"c"),
            Some(LockSpan::span(b"a", Some(b"c")))
        );
        assert_eq!(lock_span(b"c", b"a"), None);
    }

    #[test]
    fn tables_survive_their_records() {
        let txn = TxnId {
            coordinator: NodeId(3),
            number: 9,
            born: 30,
        };
        let lock = Lock {
            txn,
            revision: 40,
            primary: RangeId(2),
            spans: vec![LockSpan::key(b"k"), LockSpan::span(b"x", None)],
        };
        let mut locks = LockTable::default();
        locks.prepare(lock, 10).unwrap();
        let mut outcomes = TxnOutcomes::default();
        let writes = pb::TxnWrites {
            revision: 40,
            writes: vec![pb::TxnWrite {
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            }],
            revoked_leases: Vec::new(),
            participants: Vec::new(),
        };
        outcomes.commit(txn, writes).unwrap();
        assert!(outcomes.mark_finished(txn));
        outcomes
            .abort(TxnId {
                coordinator: NodeId(3),
                number: 10,
                born: 35,
            })
            .unwrap();
        outcomes.raise_horizon(20);
        let (lock_records, outcome_records) = records_of_tables(&locks, &outcomes);
        let (locks_again, outcomes_again) =
            tables_of_records(&lock_records, &outcome_records, outcomes.horizon());
        assert_eq!(locks_again, locks);
        assert_eq!(outcomes_again, outcomes);
    }
}
