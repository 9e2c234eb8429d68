//! etcd's `--strict-reconfig-check` (on by default): the leader refuses a voter change
//! after which the members that are up could not form a quorum, since the group would
//! then stop committing, this very change included, until someone restarted the missing
//! members. Learners do not vote, so adding or removing one is never refused.
//!
//! etcd asks its transport which peers have been connected for 5 s, and requires every
//! voter to be for an addition. Here the leader asks raft which members it heard from
//! within the last election timeout, and requires what the change needs: that
//! the new voter set, counting only members that are up, has a quorum. For the usual
//! cases the answers agree: with one of three members down, adding a fourth voter or
//! removing a live one is refused, and removing the dead one is allowed.

use std::collections::BTreeSet;

use ostrakon_raft::{ConfState, NodeId};

use crate::error::NodeError;

/// etcd's `ErrGRPCMemberNotEnoughStarted`.
pub const NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";
/// etcd's `ErrGRPCUnhealthy`.
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";

/// What the leader knows of the members when a change is proposed.
pub struct MemberLiveness<'a> {
    /// Members that have started and published their name at least once.
    pub started: &'a BTreeSet<NodeId>,
    /// Members the leader heard from recently, the leader included.
    pub active: &'a BTreeSet<NodeId>,
}

/// Refuses going from `current` to `next` when `next`'s voters that are started (etcd's
/// `ErrGRPCMemberNotEnoughStarted`), or up now (etcd's `ErrGRPCUnhealthy`), fall short of
/// a quorum of `next`.
pub fn check(
    current: &ConfState,
    next: &ConfState,
    liveness: &MemberLiveness,
) -> Result<(), NodeError> {
    if next.voters == current.voters {
        return Ok(());
    }
    let quorum = next.voters.len() / 2 + 1;
    // etcd's exception: a lone member may take a second voter, which is not started yet
    // by definition (how a cluster restored from a snapshot grows).
    if current.voters.len() == 1 && next.voters.len() == 2 {
        return Ok(());
    }
    let started = next.voters.intersection(liveness.started).count();
    if started < quorum {
        return Err(NodeError::Refused {
            code: tonic::Code::FailedPrecondition as i32,
            message: NOT_ENOUGH_STARTED.into(),
        });
    }
    let active = next.voters.intersection(liveness.active).count();
    if active < quorum {
        tracing::warn!(
            voters = ?next.voters,
            up = ?liveness.active,
            quorum,
            "membership change refused: the voters that are up would not form a quorum"
        );
        return Err(NodeError::Refused {
            code: tonic::Code::Unavailable as i32,
            message: UNHEALTHY.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(ns: &[u64]) -> BTreeSet<NodeId> {
        ns.iter().copied().map(NodeId).collect()
    }

    fn voters(ns: &[u64]) -> ConfState {
        ConfState::with_voters(ids(ns))
    }

    fn with_learners(ns: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            learners: ids(learners),
            ..voters(ns)
        }
    }

    /// The outcome as (code, message), or None when allowed.
    fn outcome(
        current: &ConfState,
        next: &ConfState,
        started: &[u64],
        active: &[u64],
    ) -> Option<String> {
        let (started, active) = (ids(started), ids(active));
        let liveness = MemberLiveness {
            started: &started,
            active: &active,
        };
        match check(current, next, &liveness) {
            Ok(()) => None,
            Err(NodeError::Refused { message, .. }) => Some(message),
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn a_healthy_cluster_may_add_and_remove_voters() {
        let all = [1, 2, 3];
        assert_eq!(
            outcome(&voters(&all), &voters(&[1, 2, 3, 4]), &all, &all),
            None
        );
        assert_eq!(outcome(&voters(&all), &voters(&[1, 2]), &all, &all), None);
        // Removing the leader itself: the other two are a quorum of two.
        assert_eq!(outcome(&voters(&all), &voters(&[2, 3]), &all, &all), None);
    }

    #[test]
    fn with_one_of_three_down_only_the_down_member_may_be_removed() {
        let started = [1, 2, 3];
        let up = [1, 2];
        assert_eq!(
            outcome(&voters(&started), &voters(&[1, 2]), &started, &up),
            None,
            "removing the down member leaves two of two up"
        );
        assert_eq!(
            outcome(&voters(&started), &voters(&[1, 3]), &started, &up).as_deref(),
            Some(UNHEALTHY),
            "removing a live member leaves one of two up"
        );
        assert_eq!(
            outcome(&voters(&started), &voters(&[1, 2, 3, 4]), &started, &up).as_deref(),
            Some(UNHEALTHY),
            "a fourth voter would need three of four up"
        );
    }

    #[test]
    fn members_that_never_started_do_not_count() {
        // 4 was added and never started: adding a fifth needs three started of five.
        let current = voters(&[1, 2, 3, 4]);
        assert_eq!(
            outcome(&current, &voters(&[1, 2, 3, 4, 5]), &[1, 2], &[1, 2]).as_deref(),
            Some(NOT_ENOUGH_STARTED)
        );
        assert_eq!(
            outcome(&current, &voters(&[1, 2, 3, 4, 5]), &[1, 2, 3], &[1, 2, 3]),
            None
        );
    }

    #[test]
    fn a_lone_member_may_add_a_second_voter() {
        assert_eq!(outcome(&voters(&[1]), &voters(&[1, 2]), &[1], &[1]), None);
    }

    #[test]
    fn learners_do_not_vote_so_their_changes_are_not_checked() {
        let current = voters(&[1, 2, 3]);
        assert_eq!(
            outcome(&current, &with_learners(&[1, 2, 3], &[4]), &[1, 2, 3], &[1]),
            None
        );
        // Promoting the learner makes it a voter: it must count among those up.
        let with_learner = with_learners(&[1, 2, 3], &[4]);
        assert_eq!(
            outcome(
                &with_learner,
                &voters(&[1, 2, 3, 4]),
                &[1, 2, 3, 4],
                &[1, 2, 4]
            ),
            None
        );
        assert_eq!(
            outcome(
                &with_learner,
                &voters(&[1, 2, 3, 4]),
                &[1, 2, 3, 4],
                &[1, 2]
            )
            .as_deref(),
            Some(UNHEALTHY)
        );
    }
}
