//! Drives a merge of a range into the range before it (docs/RANGES.md, "Merges"), on
//! the node that leads the right range: the one member that sees how far every replica
//! of it got.
//!
//! 1. The right range freezes (`FreezeRange`): from that entry on it applies nothing but
//!    its thaw, so every replica's copy of it ends in the same state.
//! 2. Every replica of it holds the freeze in its log (the leader's progress of each).
//! 3. The left range applies the merge (`MergeRange`): each replica waits until its
//!    replica of the right range has applied the freeze, then takes it over.
//!
//! A merge given up (the replicas do not catch up in time, the left range refuses it, or
//! its answer is lost) is fenced in the left range (`RefuseMerge`) before the right
//! range thaws (`UnfreezeRange`): the left range's log decides, once, whether the merge
//! happened, so a late merge entry can never take over a range that thawed. A node that
//! finds a range frozen for long (its coordinator died) does the same.

use std::time::Duration;

use ostrakon_proto::peer::{
    write_request::Request, FreezeRange, MergeRange, RefuseMerge, UnfreezeRange,
};
use ostrakon_raft::{GroupId, LogIndex, Role};
use ostrakon_storage::mvcc::WriteOutcome;

use crate::error::NodeError;
use crate::handle::NodeHandle;
use crate::txn_coordinator::propose;

/// How long the right range's replicas get to take in its freeze.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the leader looks at the replicas' progress meanwhile.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// How long, before freezing anything, the right range's replicas get to have every
/// committed entry: a leadership that just began knows no follower's progress until its
/// first appends are answered, and right after a split the new range's leadership moves
/// (leaders spread) and its last writes may be a fsync away on a member.
pub(crate) const CAUGHT_UP_BEFORE_FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a coordinator whose freeze went unanswered watches for it to apply here.
const LOST_FREEZE_WAIT: Duration = Duration::from_secs(2);

/// Whether the coordinator drops its freeze's answer (`OSTRAKON_FAILPOINT_MERGE` set to
/// `lose-freeze-answer`; tests only): as if it timed out while the freeze committed.
fn loses_freeze_answer() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| {
        std::env::var("OSTRAKON_FAILPOINT_MERGE").is_ok_and(|value| value == "lose-freeze-answer")
    })
}

/// Whether a peer's merge request is answered "leader changed" at once while the merge
/// goes on, once per process (`OSTRAKON_FAILPOINT_MERGE` set to `lose-peer-answer`;
/// tests only): as if the call's connection broke or its deadline passed.
pub(crate) fn loses_peer_answer() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    *ARMED.get_or_init(|| {
        std::env::var("OSTRAKON_FAILPOINT_MERGE").is_ok_and(|value| value == "lose-peer-answer")
    }) && !FIRED.swap(true, std::sync::atomic::Ordering::Relaxed)
}

fn refused(message: impl Into<String>) -> NodeError {
    NodeError::Refused {
        code: tonic::Code::FailedPrecondition as i32,
        message: message.into(),
    }
}

fn refusal_of(outcome: WriteOutcome) -> NodeError {
    match outcome {
        WriteOutcome::Error(error) => NodeError::Refused {
            code: error.code,
            message: error.message,
        },
        other => refused(format!("ostrakon: unexpected answer {other:?}")),
    }
}

/// `merge_here` on a task of its own: a caller that gives up (a client's deadline, a
/// peer's dropped call) must not stop it between its freeze and its merge or thaw, which
/// would leave the right range frozen until a node found it frozen for long.
pub(crate) async fn merge_detached(
    handle: &NodeHandle,
    left: GroupId,
    right: GroupId,
) -> Result<(), NodeError> {
    let handle = handle.clone();
    tokio::spawn(async move { merge_here(&handle, left, right).await })
        .await
        .expect("a merge coordinator panicked")
}

/// Merges `right` into `left`, the range before it; this node must lead `right`.
pub(crate) async fn merge_here(
    handle: &NodeHandle,
    left: GroupId,
    right: GroupId,
) -> Result<(), NodeError> {
    let (left_store, right_store) = (handle.store(left)?, handle.store(right)?);
    if left_store.span().end() != Some(right_store.span().start()) {
        return Err(refused(format!(
            "ostrakon: range {} does not end where range {} starts",
            left.0, right.0
        )));
    }
    let status = handle.status(right)?;
    if !status.is_leader {
        return Err(NodeError::NotLeader(status.leader));
    }
    if left_store.frozen().is_some() || right_store.frozen().is_some() {
        // ABORTED, gRPC's "a concurrency conflict, try again": `merge_ranges_at` waits
        // for that merge's fate.
        return Err(NodeError::Refused {
            code: tonic::Code::Aborted as i32,
            message: "ostrakon: one of the two ranges is being merged already; merge again later"
                .into(),
        });
    }
    if left_store.applied().conf_state != right_store.applied().conf_state {
        return Err(refused(
            "ostrakon: the two ranges' memberships differ; merge them once they agree",
        ));
    }
    if !replicas_catch_up(handle, right, CAUGHT_UP_BEFORE_FREEZE_TIMEOUT).await? {
        // Likely one is down: a freeze would hold the range up for nothing.
        return Err(replicas_behind());
    }
    let freezer = new_freezer(handle);
    let freeze = Request::FreezeRange(FreezeRange {
        left_range_id: left.0,
        freezer,
    });
    let frozen = match propose(handle, right, &freeze, 0).await {
        Ok(WriteOutcome::RangeFrozen(_)) if loses_freeze_answer() => {
            return thaw_if_frozen(handle, left, right, freezer, NodeError::Timeout).await;
        }
        Ok(WriteOutcome::RangeFrozen(frozen)) => frozen,
        Ok(other) => return Err(refusal_of(other)),
        Err(error) => return thaw_if_frozen(handle, left, right, freezer, error).await,
    };
    let freeze_index = LogIndex(frozen.freeze_index);
    if frozen.left_range_id != left.0 {
        return Err(refused(format!(
            "ostrakon: range {} is being merged into range {}",
            right.0, frozen.left_range_id
        )));
    }
    let frozen_conf = frozen
        .conf_state
        .as_ref()
        .and_then(|c| ostrakon_raft::ConfState::try_from(c).ok())
        .expect("a freeze answers the range's membership");
    if let Err(error) = replicas_hold(handle, right, freeze_index, &frozen_conf).await {
        return match give_up(handle, left, right, freeze_index).await? {
            true => Ok(()),
            false => Err(error),
        };
    }
    let merge = Request::MergeRange(MergeRange {
        right_range_id: right.0,
        freeze_index: freeze_index.0,
        freeze_term: frozen.freeze_term,
        right_span: frozen.span,
        conf_state: frozen.conf_state,
    });
    match propose(handle, left, &merge, 0).await {
        Ok(WriteOutcome::RangesMerged(_)) => Ok(()),
        answer => {
            // Refused, or the answer was lost: the left range's log decides.
            tracing::info!(
                left = left.0,
                right = right.0,
                ?answer,
                "a merge did not go through; fencing it off"
            );
            match give_up(handle, left, right, freeze_index).await? {
                true => Ok(()),
                false => Err(match answer {
                    Ok(outcome) => refusal_of(outcome),
                    Err(error) => error,
                }),
            }
        }
    }
}

/// A name for a freeze no other coordinator's freeze has: this node's id in the high
/// bits, the wall clock's nanoseconds in the low ones (unique within a node as long as
/// its clock moves between two merges it drives; a repeat would only let a lost
/// answer's fence waste another coordinator's merge, which is tried again).
fn new_freezer(handle: &NodeHandle) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    // Strictly increasing within this process, whatever the clock does.
    let mut last = LAST.load(Ordering::Relaxed);
    let low = loop {
        let next = nanos.max(last + 1);
        match LAST.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(actual) => last = actual,
        }
    };
    (handle.id().0 << 48) ^ (low & ((1 << 48) - 1))
}

/// The freeze of `right` for a merge into `left`, named `freezer`, went unanswered
/// (`error`: a timeout, a leadership change): it may have committed all the same. If
/// this node's replica applies it within `LOST_FREEZE_WAIT`, the merge is fenced off and
/// the range thawed at once, instead of staying frozen until `merge_queue` finds it
/// abandoned (15 s). The merge still fails (`error`): the merge queue tries it again
/// later. A freeze of the same pair by another coordinator (a new leader's merge queue)
/// is left alone: fencing it would only waste that merge.
async fn thaw_if_frozen(
    handle: &NodeHandle,
    left: GroupId,
    right: GroupId,
    freezer: u64,
    error: NodeError,
) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + LOST_FREEZE_WAIT;
    loop {
        let mark = handle.store(right).ok().and_then(|store| store.frozen());
        if let Some(mark) = mark.filter(|mark| mark.left == left && mark.freezer == freezer) {
            tracing::info!(
                left = left.0,
                right = right.0,
                %error,
                "a freeze's answer was lost; fencing the merge off"
            );
            // Merged all the same: a coordinator on the range's next leader froze it
            // (this node's lost leadership may be what lost the answer) and went on.
            return match give_up(handle, left, right, mark.index).await? {
                true => Ok(()),
                false => Err(error),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(error);
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Waits until every replica of `group` holds its log up to `index`, while this node
/// leads it: `NotLeader` if it stops leading (the merge is tried again through the new
/// leader), refused if a replica does not catch up in time (one is down).
async fn replicas_hold(
    handle: &NodeHandle,
    group: GroupId,
    index: LogIndex,
    frozen_conf: &ostrakon_raft::ConfState,
) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let status = handle.raft_status(group).await?;
        if status.role != Role::Leader {
            return Err(NodeError::NotLeader(status.leader));
        }
        if status.conf_state != *frozen_conf {
            // A membership change that was in flight when the range froze: the left
            // range would refuse the merge.
            return Err(refused(
                "ostrakon: the right range's membership changed as it froze; merge again later",
            ));
        }
        let members = frozen_conf.members();
        let behind = members.iter().any(|member| {
            *member != status.id
                && !status
                    .progress
                    .iter()
                    .any(|(id, matched, _, _)| id == member && *matched >= index)
        });
        if !behind && status.last_index >= index {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(replicas_behind());
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Waits up to `timeout` until every replica of `group` has every committed entry, while
/// this node leads it; returns whether they did (`NotLeader` if it stops leading).
pub(crate) async fn replicas_catch_up(
    handle: &NodeHandle,
    group: GroupId,
    timeout: Duration,
) -> Result<bool, NodeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if replicas_caught_up(handle, group).await {
            return Ok(true);
        }
        let status = handle.raft_status(group).await?;
        if status.role != Role::Leader {
            return Err(NodeError::NotLeader(status.leader));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Whether every replica of `group` (led here) has every committed entry.
async fn replicas_caught_up(handle: &NodeHandle, group: GroupId) -> bool {
    let Ok(status) = handle.raft_status(group).await else {
        return false;
    };
    status.conf_state.members().iter().all(|member| {
        *member == status.id
            || status
                .progress
                .iter()
                .any(|(id, matched, _, _)| id == member && *matched >= status.commit)
    })
}

fn replicas_behind() -> NodeError {
    refused(
        "ostrakon: a replica of the right range is behind (every replica must be up to \
         merge); merge again later",
    )
}

/// Fences off the merge of `right` frozen at `freeze_index` in `left`, then thaws
/// `right`; returns true if the merge had applied instead (nothing to thaw).
pub(crate) async fn give_up(
    handle: &NodeHandle,
    left: GroupId,
    right: GroupId,
    freeze_index: LogIndex,
) -> Result<bool, NodeError> {
    let fence = Request::RefuseMerge(RefuseMerge {
        right_range_id: right.0,
        freeze_index: freeze_index.0,
    });
    let merged = match propose(handle, left, &fence, 0).await {
        Ok(WriteOutcome::MergeFence(fence)) => fence.merged,
        // The left range merged into the range before it here. Its log ended with its
        // own freeze, and a merge of `right` before that would have removed `right`
        // here already: the merge can no longer happen, unless a range that absorbed
        // the left one lists `right` too (it merged, this replica lags).
        Err(NodeError::UnknownGroup) if handle.absorbing_range(left).is_some() => {
            handle.absorbing_range(right).is_some()
        }
        Ok(other) => return Err(refusal_of(other)),
        Err(error) => return Err(error),
    };
    if merged {
        return Ok(true);
    }
    let thaw = Request::UnfreezeRange(UnfreezeRange {
        freeze_index: freeze_index.0,
    });
    match propose(handle, right, &thaw, 0).await? {
        WriteOutcome::RangeUnfrozen(_) => {
            tracing::info!(
                left = left.0,
                right = right.0,
                "a merge was given up; the range thawed"
            );
            Ok(false)
        }
        other => Err(refusal_of(other)),
    }
}
