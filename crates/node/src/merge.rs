//! A merge as the left range's replicas apply it (docs/RANGES.md, "Merges"): the checks
//! every replica makes alike, and the wait for this node's replica of the right range
//! to reach its freeze.

use std::sync::Arc;

use ostrakon_proto::peer::{write_request::Request, Error, MergeRange, WriteRequest};
use ostrakon_raft::{ConfState, Entry, EntryPayload, GroupId, LogIndex, Term};
use ostrakon_ranges::merge::{
    FreezeMark, LeftRange, MergeCheck, MergeStep as Decision, RightReplica,
};
use ostrakon_ranges::RangeId;
use ostrakon_storage::mvcc::{KeySpan, MvccStore};
use prost::Message as _;

/// Whether applying a merge skips the snapshot it starts (`OSTRAKON_FAILPOINT_MERGE` set
/// to `no-snapshot`; tests only): as if the member restarted before it was taken.
pub(crate) fn skips_snapshot_after_merge() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| {
        std::env::var("OSTRAKON_FAILPOINT_MERGE").is_ok_and(|value| value == "no-snapshot")
    })
}

/// Whether a write is a merge (applied by the event loop, which holds both ranges).
pub(crate) fn is_merge(write: &WriteRequest) -> bool {
    matches!(write.request, Some(Request::MergeRange(_)))
}

/// The merge command of an entry a replica held (the first one it holds is a merge).
pub(crate) fn held_command(entry: &Entry) -> MergeRange {
    let EntryPayload::Normal(data) = &entry.payload else {
        unreachable!("a held merge is a normal entry")
    };
    match WriteRequest::decode(data.as_ref())
        .expect("a held merge decodes")
        .request
    {
        Some(Request::MergeRange(merge)) => merge,
        _ => unreachable!("the first held entry is a merge"),
    }
}

/// What a left range's replica does with a merge entry.
#[derive(Debug, PartialEq)]
pub(crate) enum MergeStep {
    /// It does not fit (alike on every replica): refused, nothing changes.
    Refused(Error),
    /// This node's replica of the right range has not applied its freeze yet: the left
    /// range applies nothing more until it has (its log holds the freeze, committed:
    /// the merge was proposed only once every replica had it).
    Wait {
        right: GroupId,
        freeze_index: LogIndex,
        freeze_term: Term,
    },
    /// Take the right range over.
    Apply(GroupId),
    /// This node holds no replica of the right range: the merge cannot apply here
    /// (`ostrakon_ranges::merge::MergeStep::MissingRight`).
    MissingRight { right: GroupId },
}

/// Decides what the left range (`left`, with membership `conf` as of the entry) does
/// with `merge`; `right` is this node's replica of the right range, if it has one.
/// The decision is the range layer's (`ostrakon_ranges::merge`), which the simulator
/// runs too: the refusals depend only on the left range's state, so every replica
/// refuses alike; the wait only on this node's right replica.
pub(crate) fn step(
    left: &MvccStore,
    conf: &ConfState,
    merge: &MergeRange,
    right: Option<&Arc<MvccStore>>,
) -> MergeStep {
    let right_group = GroupId(merge.right_range_id);
    let freeze_index = LogIndex(merge.freeze_index);
    let right_span = merge
        .right_span
        .as_ref()
        .map(KeySpan::from_record)
        .expect("a merge names the right range's span");
    let merge_conf = merge
        .conf_state
        .as_ref()
        .and_then(|c| ConfState::try_from(c).ok())
        .expect("a merge names the right range's membership");
    let facts = LeftRange {
        id: RangeId(left.group().0),
        absorbed_right: left.absorbed_ranges().contains(&right_group),
        frozen: left.frozen().is_some(),
        holds_locks: left.has_txn_locks(),
        fenced: left.has_merge_fence(right_group, freeze_index),
        ends_where_right_starts: left.span().end() == Some(right_span.start()),
        same_membership: *conf == merge_conf,
    };
    let right_replica = right.map(|store| RightReplica {
        applied_index: store.applied_index().0,
        frozen: store.frozen().map(|mark| FreezeMark {
            left: RangeId(mark.left.0),
            index: mark.index.0,
            term: mark.term.0,
        }),
    });
    let decision = MergeCheck::default().step(
        &facts,
        RangeId(right_group.0),
        freeze_index.0,
        right_replica.as_ref(),
    );
    match decision {
        Decision::Refused(refusal) => MergeStep::Refused(Error {
            code: tonic::Code::FailedPrecondition as i32,
            message: refusal.to_string(),
            retry: ostrakon_proto::peer::Retry::None as i32,
        }),
        Decision::Wait => MergeStep::Wait {
            right: right_group,
            freeze_index,
            freeze_term: Term(merge.freeze_term),
        },
        Decision::Apply => MergeStep::Apply(right_group),
        Decision::MissingRight => MergeStep::MissingRight { right: right_group },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::peer::{write_request::Request, FreezeRange, TxnIdRecord, TxnPrepare};
    use ostrakon_raft::NodeId;
    use ostrakon_storage::mvcc::{apply_write, AppliedState, WriteOutcome};

    fn write(store: &MvccStore, index: u64, request: Request, revision: i64) -> WriteOutcome {
        let write = WriteRequest {
            origin: 1,
            id: index,
            request: Some(request),
            revision,
            ..Default::default()
        };
        apply_write(store, LogIndex(index), Term(1), &write)
    }

    /// Two ranges split at "m", the right one frozen for a merge into the left: the
    /// merge command, the left and right stores and the membership.
    fn frozen_pair(
        keyspace: &fjall::Keyspace,
    ) -> (MergeRange, Arc<MvccStore>, Arc<MvccStore>, ConfState) {
        let conf = ConfState::with_voters([NodeId(1)]);
        let left = Arc::new(MvccStore::open(keyspace, GroupId(1), KeySpan::whole()));
        let right_applied = AppliedState {
            index: LogIndex(5),
            term: Term(1),
            conf_state: conf.clone(),
        };
        let right = Arc::new(
            left.split(b"m", LogIndex(1), Term(1), GroupId(2), right_applied, false)
                .expect("a new right range"),
        );
        let freeze = Request::FreezeRange(FreezeRange {
            left_range_id: 1,
            freezer: 7,
        });
        let WriteOutcome::RangeFrozen(frozen) = write(&right, 6, freeze, 0) else {
            panic!("the right range freezes");
        };
        let merge = MergeRange {
            right_range_id: 2,
            freeze_index: frozen.freeze_index,
            freeze_term: frozen.freeze_term,
            right_span: frozen.span,
            conf_state: Some((&conf).into()),
        };
        (merge, left, right, conf)
    }

    #[test]
    fn a_merge_applies_once_the_right_range_reached_its_freeze_and_fits() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let (merge, left, right, conf) = frozen_pair(&keyspace);
        assert_eq!(
            step(&left, &conf, &merge, Some(&right)),
            MergeStep::Apply(GroupId(2))
        );
        // A replica whose right range has not applied the freeze yet waits for it.
        let ahead = MergeRange {
            freeze_index: merge.freeze_index + 3,
            ..merge.clone()
        };
        assert_eq!(
            step(&left, &conf, &ahead, Some(&right)),
            MergeStep::Wait {
                right: GroupId(2),
                freeze_index: LogIndex(merge.freeze_index + 3),
                freeze_term: Term(merge.freeze_term),
            }
        );
        // Another membership, or a left range that no longer touches the right one:
        // refused alike on every replica.
        let other = ConfState::with_voters([NodeId(1), NodeId(2)]);
        assert!(matches!(
            step(&left, &other, &merge, Some(&right)),
            MergeStep::Refused(_)
        ));
        let apart = MergeRange {
            right_span: Some(KeySpan::new(b"n".to_vec(), None).to_record()),
            ..merge.clone()
        };
        assert!(matches!(
            step(&left, &conf, &apart, Some(&right)),
            MergeStep::Refused(_)
        ));
    }

    #[test]
    fn the_same_merge_again_after_a_split_at_its_key_is_refused() {
        // A merge proposed again after a lost answer may apply after the first copy
        // and a split at the same key: the left range ends where the right one began
        // again, and no replica holds the right range any more (a review found every
        // replica of the left range then panicked).
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let (merge, left, right, conf) = frozen_pair(&keyspace);
        assert_eq!(
            step(&left, &conf, &merge, Some(&right)),
            MergeStep::Apply(GroupId(2))
        );
        left.apply_merge(LogIndex(2), Term(1), &right);
        let again_applied = AppliedState {
            index: LogIndex(5),
            term: Term(1),
            conf_state: conf.clone(),
        };
        left.split(b"m", LogIndex(3), Term(1), GroupId(3), again_applied, false)
            .expect("a new right range at the same key");
        assert_eq!(left.span().end(), Some(&b"m"[..]));
        let refused = step(&left, &conf, &merge, None);
        assert!(
            matches!(&refused, MergeStep::Refused(e) if e.message.contains("merged already")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_merge_into_a_range_a_transaction_holds_is_refused() {
        // A transaction's part is written at its lock's revision, which the right
        // range's higher revision would overtake (a review found every replica would
        // then crash at the transaction's commit).
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let (merge, left, right, conf) = frozen_pair(&keyspace);
        let prepare = Request::TxnPrepare(TxnPrepare {
            txn: Some(TxnIdRecord {
                coordinator: 1,
                number: 1,
                born: 0,
            }),
            primary: 1,
            spans: vec![ostrakon_storage::mvcc::txn_tables::span_record(
                &ostrakon_storage::mvcc::txn_tables::lock_span(b"a", b"").unwrap(),
            )],
            adds_data: true,
            waits_in_line: false,
        });
        let revision = left.current_revision().0 + 1_000;
        let prepared = write(&left, 2, prepare, revision);
        assert!(
            matches!(prepared, WriteOutcome::TxnPrepared(_)),
            "{prepared:?}"
        );
        let refused = step(&left, &conf, &merge, Some(&right));
        assert!(
            matches!(&refused, MergeStep::Refused(e) if e.message.contains("transaction")),
            "{refused:?}"
        );
    }
}
