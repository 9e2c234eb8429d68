//! Carries the first data range's cluster-wide write rules (the auth store's revision
//! and whether auth is enabled, the NOSPACE alarm) into every other data range's log as
//! `WriteGate` entries, which each range enforces at apply in its own log's order
//! (`ostrakon_storage`'s `gate_apply`; docs/RANGES.md, "Auth and alarms on a keyspace in
//! ranges").
//!
//! Two carriers. The member that applied an auth or alarm change for a client carries
//! it before it answers, so a change acknowledged holds in every range: a write
//! checked against the old permissions (on a member that had not applied the change yet)
//! is refused in whatever range its keys are. And the first range's leader looks once a
//! second whether its rules moved since it last carried them, which finishes the work
//! of a member that died between its change and its gates (the change is in the first
//! range's log, unacknowledged, and must hold everywhere all the same).

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;

use ostrakon_proto::peer::{self as pb, write_request::Request};
use ostrakon_raft::{GroupId, LogIndex};
use ostrakon_storage::mvcc::WriteOutcome;

use crate::error::NodeError;
use crate::handle::NodeHandle;
use crate::DEFAULT_GROUP;

/// How often the first range's leader looks whether its rules moved.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Every this many looks, the first range's leader also looks at every range's gate,
/// whether or not its rules moved: a range its carriers did not know of yet (one this
/// member had no replica of while a change went round) gets its gate within this
/// many seconds. One comparison per range; nothing is proposed where nothing lacks.
const FULL_LOOK_EVERY: u32 = 10;

/// How many gates one carrier proposes at once (a keyspace of many ranges takes one
/// entry per range per change; auth changes are rare). With 10,000 ranges an auth
/// change answered in 0.7-1.0 s with 256, 1.3-1.8 s with 32 (docs/BENCHMARKS.md).
const GATES_IN_FLIGHT_MAX: usize = 256;

/// Whether applying `request` may change the rules the gates carry (an Authenticate
/// only records a token).
pub(crate) fn changes_write_rules(request: &Request) -> bool {
    match request {
        Request::Alarm(_) => true,
        Request::Auth(auth) => !matches!(auth.op, Some(pb::auth_write::Op::Authenticate(_)) | None),
        _ => false,
    }
}

/// Proposes the first range's current rules (as this member's replica of it holds them)
/// to every other data range that lacks them, until none does. A range split off while
/// the gates go round starts with its parent's gate, and is looked at again.
pub(crate) async fn carry(handle: &NodeHandle) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + handle.request_timeout();
    let mut carried_gate = pb::WriteGate::default();
    let mut carried: HashSet<GroupId> = HashSet::new();
    loop {
        let gate = handle.store(DEFAULT_GROUP)?.gate_to_carry();
        if gate.source_index != carried_gate.source_index {
            carried.clear();
            carried_gate = gate;
        }
        let lacking: Vec<GroupId> = handle
            .data_ranges()
            .into_iter()
            .map(|(group, _)| group)
            .filter(|group| *group != DEFAULT_GROUP && !carried.contains(group))
            .filter(|group| {
                handle
                    .store(*group)
                    .is_ok_and(|store| store.lacks_gate(&gate))
            })
            .collect();
        if lacking.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::Timeout);
        }
        let proposed: Vec<(GroupId, Result<(), NodeError>)> = futures_util::stream::iter(lacking)
            .map(|group| async move { (group, propose(handle, group, gate, deadline).await) })
            .buffer_unordered(GATES_IN_FLIGHT_MAX)
            .collect()
            .await;
        for (group, result) in proposed {
            result?;
            carried.insert(group);
        }
    }
}

/// Proposes `gate` to `group` until it applies (taken in or not: a later one may be
/// there already) and this member's replica has applied it too, or the range merged
/// into another (which is listed itself, and kept the newer of the two ranges' gates).
/// The wait matters: a split of the range before the gate, which this replica has not
/// applied yet, made a range that started with the old gate; once the gate is applied
/// here, so is the split, and the carrier's next look finds the new range.
async fn propose(
    handle: &NodeHandle,
    group: GroupId,
    gate: pb::WriteGate,
    deadline: tokio::time::Instant,
) -> Result<(), NodeError> {
    let mut locked_retries = 0;
    loop {
        match handle.write(group, Request::WriteGate(gate)).await {
            Ok(WriteOutcome::GateApplied(applied)) => {
                return match handle.wait_applied(group, LogIndex(applied.index)).await {
                    Ok(()) | Err(NodeError::UnknownGroup) => Ok(()),
                    // Merged into another meanwhile: its replica here is gone.
                    Err(_) if handle.store(group).is_err() => Ok(()),
                    Err(error) => Err(error),
                };
            }
            Err(NodeError::UnknownGroup) => return Ok(()),
            // Frozen for a merge: it thaws, or merges, within a few round trips.
            Ok(WriteOutcome::Error(error))
                if error.retry == pb::Retry::Locked as i32
                    && tokio::time::Instant::now() < deadline =>
            {
                locked_retries += 1;
                tokio::time::sleep(crate::handle::locked_pause(locked_retries)).await;
            }
            Err(NodeError::NoLeader)
                if tokio::time::Instant::now() < deadline
                    && handle.await_new_range_leader(group).await => {}
            Ok(WriteOutcome::Error(error)) => {
                return Err(NodeError::Refused {
                    code: error.code,
                    message: error.message,
                })
            }
            Ok(other) => unreachable!("a write gate answered {other:?}"),
            Err(error) => return Err(error),
        }
    }
}

/// On the first range's leader, once a second: carries its rules if they moved since
/// it last carried them (or since it started), and every `FULL_LOOK_EVERY` looks
/// anyway, until the node stops.
pub(crate) async fn run(handle: NodeHandle) {
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_carried: Option<pb::WriteGate> = None;
    let mut looks = 0u32;
    loop {
        check.tick().await;
        looks = looks.wrapping_add(1);
        let Ok(status) = handle.status(DEFAULT_GROUP) else {
            return; // the node stopped
        };
        if !status.is_leader || handle.directory().len() < 2 {
            continue;
        }
        let Ok(first) = handle.store(DEFAULT_GROUP) else {
            return;
        };
        let gate = first.gate_to_carry();
        if last_carried.is_some_and(|last| last.source_index == gate.source_index)
            && !looks.is_multiple_of(FULL_LOOK_EVERY)
        {
            continue;
        }
        match carry(&handle).await {
            Ok(()) => last_carried = Some(gate),
            Err(error) => tracing::warn!(%error, "carrying the write rules to every range"),
        }
    }
}
