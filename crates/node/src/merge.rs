//! A merge as the left range's replicas apply it (docs/RANGES.md, "Merges"): the checks
//! every replica makes alike, and the wait for this node's replica of the right range
//! to reach its freeze.

use std::sync::Arc;

use ostrakon_proto::peer::{write_request::Request, Error, MergeRange, WriteRequest};
use ostrakon_raft::{ConfState, Entry, EntryPayload, GroupId, LogIndex, Term};
use ostrakon_storage::mvcc::{KeySpan, MvccStore};
use prost::Message as _;

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
}

fn refused(message: String) -> MergeStep {
    MergeStep::Refused(Error {
        code: tonic::Code::FailedPrecondition as i32,
        message,
        retry: ostrakon_proto::peer::Retry::None as i32,
    })
}

/// Decides what the left range (`left`, with membership `conf` as of the entry) does
/// with `merge`; `right` is this node's replica of the right range, if it has one.
/// The refusals depend only on the left range's state, so every replica refuses alike;
/// the wait only on this node's right replica.
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
    if left.frozen().is_some() {
        return refused("ostrakon: the left range is being merged itself".into());
    }
    if left.has_merge_fence(right_group, freeze_index) {
        return refused(format!(
            "ostrakon: the merge of range {} was given up",
            right_group.0
        ));
    }
    if left.span().end() != Some(right_span.start()) {
        return refused(format!(
            "ostrakon: range {} no longer ends where range {} starts",
            left.group().0,
            right_group.0
        ));
    }
    if *conf != merge_conf {
        return refused("ostrakon: the two ranges' memberships differ".into());
    }
    let Some(right) = right else {
        // Every member of the left range held the right range's log up to its freeze
        // when the merge was proposed, and a replica goes only by this merge.
        panic!(
            "range {} merges range {}, of which this node holds no replica",
            left.group().0,
            right_group.0
        );
    };
    if right.applied_index() < freeze_index {
        return MergeStep::Wait {
            right: right_group,
            freeze_index,
            freeze_term: Term(merge.freeze_term),
        };
    }
    let mark = right.frozen();
    assert!(
        mark.is_some_and(|m| m.index == freeze_index && m.left == left.group()),
        "range {} past its freeze at {freeze_index} for range {} is frozen at {mark:?}, and no fence stopped the merge",
        right_group.0,
        left.group().0
    );
    MergeStep::Apply(right_group)
}
