//! Membership transitions as pure functions: entering and leaving joint consensus.

use crate::ids::NodeId;
use crate::types::{ConfChange, ConfChangeStep, ConfState};

/// Why a membership change cannot be applied. The change entry is still in the log; the
/// configuration simply does not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChangeError {
    /// A change was proposed while already in a joint configuration.
    AlreadyJoint,
    /// `LeaveJoint` while not in a joint configuration.
    NotJoint,
    /// The change would leave the group without voters.
    NoVoters,
    /// The change names node 0.
    InvalidNode,
}

impl std::fmt::Display for ConfChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            ConfChangeError::AlreadyJoint => "already in a joint configuration; leave it first",
            ConfChangeError::NotJoint => "not in a joint configuration",
            ConfChangeError::NoVoters => "the change would remove every voter",
            ConfChangeError::InvalidNode => "node id 0 is not a valid member",
        };
        f.write_str(text)
    }
}

impl std::error::Error for ConfChangeError {}

/// The configuration after applying `change` to `current`.
pub fn apply(current: &ConfState, change: &ConfChange) -> Result<ConfState, ConfChangeError> {
    match change {
        ConfChange::LeaveJoint => leave_joint(current),
        ConfChange::Change(steps) => enter(current, steps),
    }
}

fn enter(current: &ConfState, steps: &[ConfChangeStep]) -> Result<ConfState, ConfChangeError> {
    if current.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    let mut next = current.clone();
    for step in steps {
        apply_step(&mut next, *step)?;
    }
    if next.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    if next.voters != current.voters {
        // Joint consensus: decisions need majorities of both the old and the new voters.
        next.voters_outgoing = current.voters.clone();
        // A demoted voter keeps voting in the outgoing half until the joint config is left.
        let demoted: Vec<NodeId> = next
            .learners
            .iter()
            .filter(|id| next.voters_outgoing.contains(id))
            .copied()
            .collect();
        for id in demoted {
            next.learners.remove(&id);
            next.learners_next.insert(id);
        }
    }
    assert_disjoint(&next);
    Ok(next)
}

fn apply_step(conf: &mut ConfState, step: ConfChangeStep) -> Result<(), ConfChangeError> {
    let id = match step {
        ConfChangeStep::AddVoter(id)
        | ConfChangeStep::AddLearner(id)
        | ConfChangeStep::Remove(id) => id,
    };
    if !id.is_some() {
        return Err(ConfChangeError::InvalidNode);
    }
    conf.voters.remove(&id);
    conf.learners.remove(&id);
    match step {
        ConfChangeStep::AddVoter(_) => {
            conf.voters.insert(id);
        }
        ConfChangeStep::AddLearner(_) => {
            conf.learners.insert(id);
        }
        ConfChangeStep::Remove(_) => {}
    }
    Ok(())
}

fn leave_joint(current: &ConfState) -> Result<ConfState, ConfChangeError> {
    if !current.is_joint() {
        return Err(ConfChangeError::NotJoint);
    }
    let mut next = current.clone();
    next.voters_outgoing.clear();
    let demoted = std::mem::take(&mut next.learners_next);
    next.learners.extend(demoted);
    assert_disjoint(&next);
    Ok(next)
}

fn assert_disjoint(conf: &ConfState) {
    for id in &conf.learners {
        assert!(
            !conf.is_voter(*id),
            "{id:?} is both learner and voter in {conf:?}"
        );
    }
    for id in &conf.learners_next {
        assert!(
            !conf.voters.contains(id),
            "{id:?} is in learners_next and voters in {conf:?}"
        );
        assert!(
            conf.voters_outgoing.contains(id),
            "{id:?} in learners_next but not outgoing in {conf:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[u64]) -> std::collections::BTreeSet<NodeId> {
        list.iter().map(|&i| NodeId(i)).collect()
    }

    #[test]
    fn adding_a_learner_does_not_enter_joint() {
        let cs = ConfState::with_voters(ids(&[1, 2, 3]));
        let next = apply(
            &cs,
            &ConfChange::Change(vec![ConfChangeStep::AddLearner(NodeId(4))]),
        )
        .unwrap();
        assert!(!next.is_joint());
        assert_eq!(next.learners, ids(&[4]));
    }

    #[test]
    fn replacing_a_voter_goes_through_joint() {
        let cs = ConfState::with_voters(ids(&[1, 2, 3]));
        let change = ConfChange::Change(vec![
            ConfChangeStep::AddVoter(NodeId(4)),
            ConfChangeStep::Remove(NodeId(1)),
        ]);
        let joint = apply(&cs, &change).unwrap();
        assert_eq!(joint.voters, ids(&[2, 3, 4]));
        assert_eq!(joint.voters_outgoing, ids(&[1, 2, 3]));
        assert_eq!(apply(&joint, &change), Err(ConfChangeError::AlreadyJoint));
        let left = apply(&joint, &ConfChange::LeaveJoint).unwrap();
        assert_eq!(left, ConfState::with_voters(ids(&[2, 3, 4])));
    }

    #[test]
    fn demoting_a_voter_keeps_it_voting_until_leave() {
        let cs = ConfState::with_voters(ids(&[1, 2, 3]));
        let joint = apply(
            &cs,
            &ConfChange::Change(vec![ConfChangeStep::AddLearner(NodeId(3))]),
        )
        .unwrap();
        assert!(joint.is_voter(NodeId(3)));
        assert_eq!(joint.learners_next, ids(&[3]));
        let left = apply(&joint, &ConfChange::LeaveJoint).unwrap();
        assert_eq!(left.learners, ids(&[3]));
        assert!(!left.is_voter(NodeId(3)));
    }

    #[test]
    fn cannot_remove_every_voter() {
        let cs = ConfState::with_voters(ids(&[1]));
        let change = ConfChange::Change(vec![ConfChangeStep::Remove(NodeId(1))]);
        assert_eq!(apply(&cs, &change), Err(ConfChangeError::NoVoters));
        assert_eq!(
            apply(&cs, &ConfChange::LeaveJoint),
            Err(ConfChangeError::NotJoint)
        );
    }
}
