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
