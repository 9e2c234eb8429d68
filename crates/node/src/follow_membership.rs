//! The meta range's membership follows the data range's.
//!
//! Until placement exists every member holds a replica of every range, and the member
//! registry (MemberAdd, MemberPromote, MemberRemove) changes the data range's group, as it
//! did when there was one group. The meta range's leader then brings its own group to the
//! same members, one step at a time, as CockroachDB's replicate queue brings a range to
//! its zone's replica count: a new member first joins as a learner and is made a voter
//! once it holds the meta range's log, and a member the registry marks removed leaves.
//!
//! Why a follower and not one change applied to both groups: the two groups' changes
//! cannot commit atomically, and a crash between them must not leave them apart for
//! good. A follower converges from any pair of memberships, whatever crashed when.
//! (MemberRemove still removes a member from the meta range first, see `cluster.rs`: a
//! member removed from the data range stops, and a two-member meta range that waited for
//! it would have lost its quorum.)

use ostrakon_raft::{ConfChangeStep, ConfState, NodeId};

/// The next step that brings `current` (the meta range's membership) toward `target`
/// (the data range's), or `None` if there is none to take now. `removed`: whether the
/// member registry marks a node removed; only those leave (a node missing from a stale
/// view of the data range may have just been added). `caught_up`: whether a learner of
/// the meta range holds enough of its log to vote.
pub fn next_step(
    target: &ConfState,
    current: &ConfState,
    removed: impl Fn(NodeId) -> bool,
    caught_up: impl Fn(NodeId) -> bool,
) -> Option<ConfChangeStep> {
    if current.is_joint() || target.is_joint() {
        // The leader leaves a joint configuration by itself; the data range's settles too.
        return None;
    }
    let members = current.members();
    let wanted = target.members();
    if let Some(&gone) = members.iter().find(|&&id| removed(id)) {
        return Some(ConfChangeStep::Remove(gone));
    }
    if let Some(&new) = wanted
        .iter()
        .find(|&&id| !members.contains(&id) && !removed(id))
    {
        return Some(ConfChangeStep::AddLearner(new));
    }
    target
        .voters
        .iter()
        .find(|&&id| current.is_learner(id) && caught_up(id))
        .map(|&id| ConfChangeStep::AddVoter(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.iter().map(|&id| NodeId(id)).collect(),
            learners: learners.iter().map(|&id| NodeId(id)).collect(),
            ..ConfState::default()
        }
    }

    #[test]
    fn a_new_member_joins_as_a_learner_then_votes_once_caught_up() {
        let target = conf(&[1, 2, 3, 4], &[]);
        let step = next_step(&target, &conf(&[1, 2, 3], &[]), |_| false, |_| true);
        assert_eq!(step, Some(ConfChangeStep::AddLearner(NodeId(4))));
        let learner = conf(&[1, 2, 3], &[4]);
        assert_eq!(next_step(&target, &learner, |_| false, |_| false), None);
        assert_eq!(
            next_step(&target, &learner, |_| false, |_| true),
            Some(ConfChangeStep::AddVoter(NodeId(4)))
        );
        assert_eq!(next_step(&target, &target, |_| false, |_| true), None);
    }

    #[test]
    fn a_learner_of_the_data_range_stays_a_learner() {
        let target = conf(&[1, 2, 3], &[4]);
        let current = conf(&[1, 2, 3], &[4]);
        assert_eq!(next_step(&target, &current, |_| false, |_| true), None);
    }

    #[test]
    fn only_members_the_registry_removed_leave() {
        // A stale view of the data range lacks 4, which was just added: it stays.
        let stale = conf(&[1, 2, 3], &[]);
        let current = conf(&[1, 2, 3], &[4]);
        assert_eq!(next_step(&stale, &current, |_| false, |_| true), None);
        let removed: BTreeSet<NodeId> = [NodeId(2)].into();
        let after_removal = conf(&[1, 3], &[]);
        assert_eq!(
            next_step(
                &after_removal,
                &conf(&[1, 2, 3], &[]),
                |id| removed.contains(&id),
                |_| true
            ),
            Some(ConfChangeStep::Remove(NodeId(2)))
        );
        // A removed node is never added back, whatever a stale view says.
        assert_eq!(
            next_step(
                &conf(&[1, 2, 3], &[]),
                &after_removal,
                |id| removed.contains(&id),
                |_| true
            ),
            None
        );
    }

    #[test]
    fn nothing_while_either_is_joint() {
        let joint = ConfState {
            voters: [NodeId(1), NodeId(2)].into(),
            voters_outgoing: [NodeId(1), NodeId(2), NodeId(3)].into(),
            ..ConfState::default()
        };
        let plain = conf(&[1, 2], &[]);
        assert_eq!(next_step(&plain, &joint, |_| false, |_| true), None);
        assert_eq!(next_step(&joint, &plain, |_| false, |_| true), None);
    }
}
