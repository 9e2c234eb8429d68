//! Quorum arithmetic as pure functions over plain data, independent of messages and roles.

use std::collections::BTreeSet;

use crate::ids::{LogIndex, NodeId};
use crate::types::ConfState;

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
    /// Undecided: not enough answers yet.
    Pending,
}

/// The highest index that a majority of `voters` has, given each voter's acknowledged
/// index. Voters without an entry in `acked` count as index 0. An empty voter set
/// places no constraint (returns `LogIndex(u64::MAX)`), so that a joint configuration
/// whose outgoing half is empty reduces to its incoming half.
pub fn majority_index(voters: &BTreeSet<NodeId>, acked: impl Fn(NodeId) -> LogIndex) -> LogIndex {
    if voters.is_empty() {
        return LogIndex(u64::MAX);
    }
    let mut indexes: Vec<LogIndex> = voters.iter().map(|&id| acked(id)).collect();
    // Sort descending: the majority-th largest index is held by a majority.
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    let majority = voters.len() / 2 + 1;
    indexes[majority - 1]
}

/// The committed index of a (possibly joint) configuration: both halves must agree.
pub fn committed_index(conf: &ConfState, acked: impl Fn(NodeId) -> LogIndex) -> LogIndex {
    let incoming = majority_index(&conf.voters, &acked);
    let outgoing = majority_index(&conf.voters_outgoing, &acked);
    incoming.min(outgoing)
}

/// Counts votes of one majority configuration. `vote(id)` is `Some(granted)` once `id`
/// answered. An empty voter set wins (it places no constraint).
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    vote: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0, 0);
    for &id in voters {
        match vote(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let majority = voters.len() / 2 + 1;
    if granted >= majority {
        VoteResult::Won
    } else if granted + missing >= majority {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// Counts votes of a (possibly joint) configuration: both halves must win.
pub fn vote_result(conf: &ConfState, vote: impl Fn(NodeId) -> Option<bool>) -> VoteResult {
    let incoming = majority_vote(&conf.voters, &vote);
    let outgoing = majority_vote(&conf.voters_outgoing, &vote);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    #[test]
    fn majority_index_table() {
        // (voters, acked indexes by voter position, expected)
        let cases: &[(&[u64], &[u64], u64)] = &[
            (&[1], &[5], 5),
            (&[1, 2], &[5, 3], 3),
            (&[1, 2, 3], &[5, 3, 1], 3),
            (&[1, 2, 3], &[5, 5, 1], 5),
            (&[1, 2, 3, 4], &[9, 8, 7, 6], 7),
            (&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5], 3),
            (&[1, 2, 3, 4, 5], &[0, 0, 0, 9, 9], 0),
        ];
        for (voters, acked, expected) in cases {
            let voters_set = set(voters);
            let index = majority_index(&voters_set, |id| {
                let pos = voters.iter().position(|&v| v == id.0).unwrap();
                LogIndex(acked[pos])
            });
            assert_eq!(
                index,
                LogIndex(*expected),
                "voters {voters:?} acked {acked:?}"
            );
        }
    }

    #[test]
    fn joint_commit_needs_both_halves() {
        let conf = ConfState {
            voters: set(&[1, 2, 3]),
            voters_outgoing: set(&[1, 4, 5]),
            ..Default::default()
        };
        // Incoming majority {1,2} at 10, outgoing only node 1 at 10 and others at 2.
        let acked = |id: NodeId| LogIndex(if id.0 <= 3 { 10 } else { 2 });
        assert_eq!(committed_index(&conf, acked), LogIndex(2));
    }

    #[test]
    fn vote_table() {
        let voters = set(&[1, 2, 3]);
        let v = |grants: &'static [(u64, bool)]| {
            move |id: NodeId| grants.iter().find(|(n, _)| *n == id.0).map(|(_, g)| *g)
        };
        assert_eq!(majority_vote(&voters, v(&[(1, true)])), VoteResult::Pending);
        assert_eq!(
            majority_vote(&voters, v(&[(1, true), (2, true)])),
            VoteResult::Won
        );
        assert_eq!(
            majority_vote(&voters, v(&[(1, true), (2, false)])),
            VoteResult::Pending
        );
        assert_eq!(
            majority_vote(&voters, v(&[(2, false), (3, false)])),
            VoteResult::Lost
        );
    }

    #[test]
    fn joint_vote_lost_if_either_half_lost() {
        let conf = ConfState {
            voters: set(&[1, 2, 3]),
            voters_outgoing: set(&[4, 5, 6]),
            ..Default::default()
        };
        let grants = |id: NodeId| Some(id.0 <= 3);
        assert_eq!(vote_result(&conf, grants), VoteResult::Lost);
    }
}
