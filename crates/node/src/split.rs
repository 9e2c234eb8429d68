//! A split applied by a data range: the checks every replica makes alike, the cut of the
//! store, and the new range the event loop then hosts.

use std::sync::Arc;

use ostrakon_proto::peer::{Error, RangeSplit, SplitRange};
use ostrakon_raft::{ConfState, GroupId, InitialState, LogIndex, Term};
use ostrakon_storage::mvcc::{AppliedState, MvccStore, WriteOutcome};

/// A range a split created, for the event loop to host.
pub struct SplitOff {
    /// The new range's group.
    pub group: GroupId,
    /// Its store, at the founding position; None if the range was here already (its own
    /// snapshot came first).
    pub store: Option<MvccStore>,
    /// The membership it starts with: the split range's.
    pub conf_state: ConfState,
}

/// Applies `split` to `store` at (`index`, `term`), the range having membership `conf`.
/// A split that does not fit (a key outside the range or at its start, an id in use, a
/// membership change half done) changes nothing, identically on every replica.
pub fn apply_split(
    store: &Arc<MvccStore>,
    index: LogIndex,
    term: Term,
    split: &SplitRange,
    conf: &ConfState,
) -> (WriteOutcome, Option<SplitOff>) {
    let span = store.span();
    let right = GroupId(split.right_range_id);
    let refusal = if store.frozen().is_some() {
        Some("ostrakon: the range is frozen for a merge; retry".into())
    } else if !span.contains(&split.key) || split.key.as_ref() == span.start() {
        Some(format!(
            "ostrakon: split key {:?} is not inside range {} ({:?})",
            String::from_utf8_lossy(&split.key),
            store.group().0,
            span
        ))
    } else if right.0 <= crate::DEFAULT_GROUP.0 || right == store.group() {
        Some(format!(
            "ostrakon: range id {} cannot be a split's",
            right.0
        ))
    } else if store.absorbed_ranges().contains(&right) {
        // A split proposed again after its range was merged back (a late duplicate):
        // founded anew, the range would be dropped at the next restart as the merged
        // range it was, and its keys left in none (found by review).
        Some(format!(
            "ostrakon: range id {} was merged into range {}; a split takes a new id",
            right.0,
            store.group().0
        ))
    } else if conf.is_joint() {
        Some("ostrakon: the range's membership is changing; split it once that is done".into())
    } else if store.has_txn_locks() {
        // A lock's spans are checked against the range when it is prepared; the keys
        // stay put until the transaction ends.
        Some("ostrakon: a transaction across ranges holds keys of the range; retry".into())
    } else {
        None
    };
    if let Some(message) = refusal {
        store.set_applied(index, term);
        let locked = store.has_txn_locks() || store.frozen().is_some();
        // Routed on a view of the ranges that a split or a merge has changed since.
        let moved = !span.contains(&split.key);
        let error = Error {
            code: tonic::Code::FailedPrecondition as i32,
            message,
            retry: if locked {
                ostrakon_proto::peer::Retry::Locked as i32
            } else if moved {
                ostrakon_proto::peer::Retry::WrongRange as i32
            } else {
                ostrakon_proto::peer::Retry::None as i32
            },
        };
        return (WriteOutcome::Error(error), None);
    }
    let founding = InitialState::founding(conf.clone());
    let right_applied = AppliedState {
        index: founding.snapshot.index,
        term: founding.snapshot.term,
        conf_state: conf.clone(),
    };
    let right_store = store.split(&split.key, index, term, right, right_applied, split.by_hand);
    let (left_span, right_span) = span.split_at(&split.key);
    let outcome = WriteOutcome::RangeSplit(RangeSplit {
        right_range_id: right.0,
        left: Some(left_span.to_record()),
        right: Some(right_span.to_record()),
    });
    let split_off = SplitOff {
        group: right,
        store: right_store,
        conf_state: conf.clone(),
    };
    (outcome, Some(split_off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::peer::{write_request::Request, FreezeRange, WriteRequest};
    use ostrakon_raft::NodeId;
    use ostrakon_storage::mvcc::{apply_write, KeySpan};

    #[test]
    fn a_split_to_the_id_of_a_range_merged_back_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let conf = ConfState::with_voters([NodeId(1)]);
        let left = Arc::new(MvccStore::open(&keyspace, GroupId(1), KeySpan::whole()));
        let split = SplitRange {
            key: "m".into(),
            right_range_id: 2,
            by_hand: false,
        };
        let (outcome, split_off) = apply_split(&left, LogIndex(1), Term(1), &split, &conf);
        assert!(
            matches!(outcome, WriteOutcome::RangeSplit(_)),
            "{outcome:?}"
        );
        let right = split_off.unwrap().store.expect("founded");
        let freeze = WriteRequest {
            origin: 1,
            id: 6,
            request: Some(Request::FreezeRange(FreezeRange {
                left_range_id: 1,
                freezer: 7,
            })),
            ..Default::default()
        };
        let frozen = apply_write(&right, LogIndex(6), Term(1), &freeze);
        assert!(matches!(frozen, WriteOutcome::RangeFrozen(_)), "{frozen:?}");
        left.apply_merge(LogIndex(2), Term(1), &right);
        assert!(left.span().contains(b"x"));

        // The same split again, late.
        let (outcome, split_off) = apply_split(&left, LogIndex(3), Term(1), &split, &conf);
        let WriteOutcome::Error(error) = outcome else {
            panic!("refused: {outcome:?}");
        };
        assert!(
            error.message.contains("was merged into range 1"),
            "{error:?}"
        );
        assert!(split_off.is_none());
        assert!(left.span().contains(b"x"), "the range keeps its keys");
        // A new id splits it.
        let again = SplitRange {
            right_range_id: 3,
            ..split
        };
        let (outcome, _) = apply_split(&left, LogIndex(4), Term(1), &again, &conf);
        assert!(
            matches!(outcome, WriteOutcome::RangeSplit(_)),
            "{outcome:?}"
        );
    }
}
